"""The ``turbospec`` command: a thin dispatcher over each part's subcommands.

Each part owns a small command module exposing ``register(subparsers)``; that function adds
its subparsers and sets ``func`` (called with the parsed args, returns an exit code). Command
modules must import their heavy parts (numpy kernels, textual, pandas) lazily inside ``func``
so ``turbospec --help`` stays fast and ``tui``/``analysis`` never pull in the engine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from turbospec import __version__
from turbospec.errors import UserError

# (module, required) — a module that is missing is skipped, so parts can land one at a time.
COMMAND_MODULES = [
    "turbospec.engine.commands",  # run, ppl, cache, quant-stats, quantize, train-assistant, sweep
    "turbospec.tui.commands",  # top, stats
    "turbospec.analysis.commands",  # report, compare
]


def cache_dir_help() -> str:
    from turbospec.paths import cache_dir

    return str(cache_dir())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turbospec",
        description=(
            "Benchmark and observe LLM inference: TurboQuant KV caches, MTP speculative decoding, "
            "NDJSON traces and a live dashboard."
        ),
        epilog=(
            f"weight cache: {cache_dir_help()} (move it with TURBOSPEC_CACHE_DIR; "
            "clear it with `turbospec cache clear`)"
        ),
    )
    parser.add_argument("--version", action="version", version=f"turbospec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_modules(sub, COMMAND_MODULES)
    return parser


def register_modules(sub, names: list[str]) -> None:
    """Call ``register(sub)`` of each command module; a module that does not exist is skipped."""
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(argv) if argv is not None else sys.argv[1:]
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"turbospec: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("turbospec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # e.g. `turbospec run ... | head`: stop quietly.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
