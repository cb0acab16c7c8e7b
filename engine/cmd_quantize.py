"""`turbospec quantize`: convert a GGUF's weights to TQ3_1S / TQ4_1S."""

from __future__ import annotations

import argparse

HELP = (
    "Quantize a GGUF's weights to TurboQuant TQ4_1S (5.0 bits/weight) or TQ3_1S (4.0). Tensors are "
    "written as GGML type 46 (TQ4_1S) / 45 (TQ3_1S), the numbering of the llama.cpp fork "
    "AtomicBot-ai/atomic-llama-cpp-turboquant; other TurboQuant forks number these types "
    "differently and will not load the file. Norms, integer tensors and token_embd keep their type."
)


def register(sub) -> None:
    from turbospec.engine.quant.recipes import RECIPES  # small, no numpy kernels

    p = sub.add_parser("quantize", help="quantize a GGUF's weights to TQ3_1S / TQ4_1S", description=HELP)
    p.add_argument("input", metavar="IN.gguf", help="source model (any type gguf-py can dequantize)")
    p.add_argument("output", metavar="OUT.gguf", help="file to write (renamed into place when complete)")
    p.add_argument("--type", required=True, choices=["tq4_1s", "tq3_1s"], type=str.lower, help="target type")
    p.add_argument(
        "--keep",
        metavar="GLOB",
        action="append",
        default=[],
        help="keep tensors whose name matches this glob (repeatable), e.g. --keep 'blk.0.*'",
    )
    p.add_argument(
        "--recipe",
        default="all",
        choices=sorted(RECIPES),
        help="; ".join(f"{r.name}: {r.help}" for r in RECIPES.values()) + " (default: all)",
    )
    p.add_argument(
        "--quantize-embedding",
        action="store_true",
        help="also convert token_embd.weight (the tied LM head of Gemma models)",
    )
    p.add_argument("--force", action="store_true", help="overwrite OUT.gguf if it exists")
    p.set_defaults(func=run)


class _RichProgress:
    def __init__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.fields[i]:>7}"),
            TextColumn("[bold]{task.fields[tensor]}"),
            BarColumn(bar_width=20),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[mw]} Mw"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = None
        self.i = 0
        self.n = 0
        self.done = 0
        self.total = "0"

    def start(self, total_weights: int, n_tensors: int) -> None:
        self.n = n_tensors
        self.bar.start()
        self.total = f"{total_weights / 1e6:.1f}"
        self.task = self.bar.add_task("quantize", total=max(1, total_weights), tensor=" " * 24, mw="", i="")

    def tensor(self, name: str, converting: bool) -> None:
        self.i += 1
        label = name if converting else f"{name} (copy)"
        self.bar.update(self.task, tensor=f"{label[:24]:<24}", i=f"{self.i}/{self.n}")

    def advance(self, n_weights: int) -> None:
        self.done += n_weights
        self.bar.update(self.task, advance=n_weights, mw=f"{self.done / 1e6:.1f}/{self.total}")

    def stop(self) -> None:
        if self.task is not None:
            self.bar.stop()


def run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from turbospec.engine.quant.convert import QuantizeConfig, quantize_gguf

    cfg = QuantizeConfig(
        src=Path(args.input),
        dst=Path(args.output),
        type_name=args.type,
        recipe=args.recipe,
        keep=list(args.keep),
        embedding=args.quantize_embedding,
        force=args.force,
    )

    def _terminated(signum, frame):  # SIGTERM unwinds like Ctrl-C: the temporary file is removed
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, _terminated)
    prog = _RichProgress()
    try:
        res = quantize_gguf(cfg, prog)
    finally:
        prog.stop()
        signal.signal(signal.SIGTERM, old_handler)
    kept = ", ".join(f"{n} {why}" for why, n in sorted(res.kept.items())) or "none"
    ratio = res.converted_bytes_after / res.converted_bytes_before if res.converted_bytes_before else 1.0
    print(
        f"wrote {res.dst} ({res.bytes_out / 1e6:.1f} MB, input {res.bytes_in / 1e6:.1f} MB): "
        f"{res.n_converted} tensors / {res.weights_converted / 1e6:.1f}M weights converted to {args.type.upper()} "
        f"({ratio:.2f}x their source bytes) in {res.seconds:.1f}s; kept: {kept}"
    )
    return 0
