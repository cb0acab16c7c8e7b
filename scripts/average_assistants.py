#!/usr/bin/env python
"""Average MTP assistants of one shape (weights: sum_i w_i x file_i; see engine/assistant_average.py).

    python scripts/average_assistants.py A.gguf B.gguf [--weights 0.5 0.5] -o OUT.gguf [--type q8_0]

The shipped assistant was made with
    python scripts/average_assistants.py NINTH.gguf TENTH.gguf -o engine/data/mtp-gemma3-270m.gguf
(NINTH = the ninth leg's file, TENTH = the tenth leg fine-tuned from it; README "How it was built").
"""

from __future__ import annotations

import argparse
import sys

from turbospec.engine.assistant_average import average_assistants
from turbospec.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="assistant GGUFs of one shape and one token_ordering")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per file (default equal)")
    p.add_argument("-o", "--out", required=True, help="output GGUF (written atomically)")
    p.add_argument("--type", default="q8_0", choices=["f32", "f16", "q8_0"], help="matrix type (default q8_0)")
    a = p.parse_args(argv)
    try:
        out = average_assistants(a.files, a.weights, a.out, qtype=a.type)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
