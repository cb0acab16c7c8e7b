"""Engine subcommands. Each feature module exposes ``register(subparsers)``; heavy imports
(numpy kernels, model code) happen inside the command functions, not here."""

from __future__ import annotations

FEATURE_MODULES = [
    "turbospec.engine.cmd_run",  # run, ppl, cache
    "turbospec.engine.cmd_live",  # demo, run --tui
    "turbospec.engine.cmd_quant_stats",  # quant-stats (KV codecs)
    "turbospec.engine.cmd_quantize",  # quantize (TQ3_1S / TQ4_1S weights)
    "turbospec.engine.cmd_sweep",  # sweep
    "turbospec.engine.cmd_train",  # train-assistant
]


def register(sub) -> None:
    from turbospec.cli import register_modules

    register_modules(sub, FEATURE_MODULES)
