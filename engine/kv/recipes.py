"""KV cache recipes: named combinations of cache types, equalization, outlier channels and
per-layer protection, and the small spec language the benchmarks use.

A recipe is a KVConfig the user picks by name (``--kv-recipe turbo3-k``) instead of spelling
out every knob. The knobs are KVConfig fields (engine/kv/cache.py), each also a flag:

    --kv-recipe NAME            one of RECIPES (sets K/V types and the knobs below)
    --kv-protect-layers LIST    comma-separated layer indices (negative = from the end, e.g. 0,-1)
                                whose K and V use --kv-protect-type (the fork protects first/last)
    --kv-protect-type TYPE      the cache type of protected layers (default q8_0)
    --kv-k-outliers N           keep the N highest-rms K channels per layer in f16 beside the
                                quantized K (zeroed before the codec; their bytes are counted)

Spec strings (benchmarks, tests): ``K/V`` then ``+``-separated modifiers, e.g.
``turbo3/turbo3+eq+out8+protect`` or ``q8_0/turbo3+eq0.5``: ``eq[STRENGTH]`` (0.5 when bare),
``outN``, ``protect[=L,L..]`` (0,-1 when bare), ``ptype=TYPE``. A recipe name is a spec too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from turbospec.engine.kv.cache import KVConfig
from turbospec.errors import UserError

DEFAULT_PROTECT = (0, -1)


@dataclass(frozen=True)
class Recipe:
    name: str
    spec: str
    help: str


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "turbo3-k",
            "turbo3/turbo3+eq+out8+protect",
            "turbo3 K and V, K equalized (0.5), 8 outlier K channels in f16, layers 0 and n-1 in q8_0",
        ),
        Recipe("turbo3-k-eq", "turbo3/turbo3+eq", "turbo3 K and V with K equalization 0.5"),
        Recipe("turbo4-eq", "turbo4/turbo4+eq", "turbo4 K and V (the fork's book) with K equalization 0.5"),
        Recipe("q8k-turbo3v", "q8_0/turbo3", "q8_0 K, turbo3 V (the fork's recommended asymmetric pair)"),
    )
}


def parse_spec(spec: str) -> KVConfig:
    """A spec string or recipe name -> KVConfig (UserError on anything malformed)."""
    from turbospec.engine.kv.cache import cache_type_names

    s = spec.strip()
    if s in RECIPES:
        cfg = parse_spec(RECIPES[s].spec)
        cfg.recipe = s
        return cfg
    head, *mods = s.split("+")
    if "/" not in head:
        raise UserError(
            f"KV spec {spec!r}: start with K/V types (e.g. turbo3/turbo3) or use a recipe: {', '.join(RECIPES)}"
        )
    tk, tv = (t.strip() for t in head.split("/", 1))
    names = cache_type_names()
    cfg = KVConfig(type_k=tk, type_v=tv)
    protect: tuple[int, ...] = ()
    ptype = "q8_0"
    try:
        for m in (x.strip() for x in mods):
            if m.startswith("eq") and not m.startswith("eqt"):
                cfg.equalize = float(m[2:].lstrip("=") or 0.5)
            elif m.startswith("out"):
                cfg.k_outliers = int(m[3:].lstrip("="))
            elif m.startswith("eqt"):
                cfg.equalize_tokens = int(m[3:].lstrip("="))
            elif m.startswith("ptype="):
                ptype = m[6:]
            elif m.startswith("protect"):
                rest = m[7:].lstrip("=")
                protect = tuple(int(x) for x in rest.split(",")) if rest else DEFAULT_PROTECT
            else:
                raise ValueError(m)
    except ValueError:
        raise UserError(f"KV spec {spec!r}: bad modifier; use eq[S], outN, protect[=L,L], ptype=TYPE") from None
    for t in (tk, tv, ptype):
        if t not in names:
            raise UserError(f"KV spec {spec!r}: unknown cache type {t!r}; choose one of {', '.join(names)}")
    cfg.layer_types = {layer: (ptype, ptype) for layer in protect}
    return cfg


def add_kv_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The recipe flags (to add beside -ctk/-ctv/--kv-equalize)."""
    g = parser.add_argument_group("KV cache recipes")
    g.add_argument(
        "--kv-recipe",
        default=None,
        metavar="NAME",
        help="a named KV cache recipe (overrides -ctk/-ctv): "
        + "; ".join(f"{r.name}: {r.help}" for r in RECIPES.values()),
    )
    g.add_argument(
        "--kv-protect-layers",
        default=None,
        metavar="LIST",
        help="layers (comma-separated, negative from the end, e.g. 0,-1) whose K and V use --kv-protect-type",
    )
    g.add_argument("--kv-protect-type", default="q8_0", metavar="TYPE", help="cache type of protected layers")
    g.add_argument(
        "--kv-k-outliers",
        type=int,
        default=None,
        metavar="N",
        help="keep the N highest-rms K channels per layer in f16 beside the quantized K (bytes counted)",
    )


def apply_recipe_args(args: argparse.Namespace, kvconfig: KVConfig) -> KVConfig:
    """Apply --kv-recipe / --kv-protect-* / --kv-k-outliers to a KVConfig built from -ctk/-ctv.

    A recipe replaces the types and knobs; explicit --kv-equalize (non-zero), --kv-protect-layers
    and --kv-k-outliers still override the recipe's values. Returns the (new) config.
    """
    from turbospec.engine.kv.cache import cache_type_names

    cfg = kvconfig
    name = getattr(args, "kv_recipe", None)
    if name:
        if name not in RECIPES:
            raise UserError(f"unknown --kv-recipe {name!r}; choose one of {', '.join(RECIPES)}")
        eq = kvconfig.equalize
        cfg = parse_spec(name)
        cfg.slack = kvconfig.slack
        cfg.equalize_tokens = kvconfig.equalize_tokens
        if eq:
            cfg.equalize = eq
    layers = getattr(args, "kv_protect_layers", None)
    if layers:
        ptype = getattr(args, "kv_protect_type", "q8_0") or "q8_0"
        if ptype not in cache_type_names():
            raise UserError(f"unknown --kv-protect-type {ptype!r}; choose one of {', '.join(cache_type_names())}")
        try:
            idx = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--kv-protect-layers {layers!r} is not a list of layer indices; e.g. 0,-1") from None
        cfg.layer_types = {i: (ptype, ptype) for i in idx}
        cfg.recipe = ""
    out = getattr(args, "kv_k_outliers", None)
    if out is not None:
        if out < 0:
            raise UserError(f"--kv-k-outliers {out} is negative; use 0 (off) or a channel count such as 8")
        cfg.k_outliers = out
        cfg.recipe = ""
    return cfg
