"""turbospec.engine.quant: TurboQuant weight formats TQ3_1S / TQ4_1S (GGML ids 45 / 46).

Modules: ``tq_format`` (constants, ``TQ_TYPES``), ``tq_reference`` (plain per-block reference),
``tq`` (vectorised quantize / dequantize, ``dequantize_tq``), ``linear`` (``TQLinear``: matvec /
matmul from the blocks), ``container`` / ``convert`` / ``recipes`` (``turbospec quantize``).

The names below are loaded on first use, so importing this package (e.g. from the CLI's
``register``) costs nothing.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "TQ_TYPES": "tq_format",
    "dequantize_tq": "tq",
    "quantize": "tq",
    "dequantize": "tq",
    "TQLinear": "linear",
    "quantize_gguf": "convert",
    "QuantizeConfig": "convert",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
