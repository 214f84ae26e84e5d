"""``ferroquant quantize IN -o OUT --type TYPE [--imatrix FILE]``.

The input decides the route:

- a GGUF file -> :func:`ferroquant.convert.requantize` (llama-quantize's file types);
- a Hugging Face checkpoint directory -> a calibration method (``--method``). Methods
  register in :data:`HF_METHODS` as ``name -> "module:function"``; the function is called as
  ``fn(args) -> int``. This is the extension point for GPTQ/AWQ/RTN.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Callable

from .. import presets
from .convert import set_threads

# --method name -> "module:function" taking the parsed args (HF directory input).
HF_METHODS: dict[str, str] = {
    "gptq": "ferroquant.commands.quantize_hf:run",
    "rtn": "ferroquant.commands.quantize_hf:run",
    "awq": "ferroquant.methods.awq:run_cli",
    "dynamic": "ferroquant.commands.quantize_dynamic:run",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a GGUF file (requantize) or a HF checkpoint directory")
    parser.add_argument("-o", "--output", required=True, help="the file or directory to write")
    parser.add_argument(
        "--type",
        default="Q4_K_M",
        metavar="TYPE",
        help=f"GGUF file type: {', '.join(presets.supported())} (default Q4_K_M)",
    )
    parser.add_argument("--imatrix", help="llama.cpp importance matrix (GGUF or legacy .dat)")
    parser.add_argument("--threads", type=int, help="worker threads for quantization")
    parser.add_argument(
        "--method", help="calibration method for a HF checkpoint input (e.g. gptq, awq, rtn)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .quantize_hf import add_method_arguments

    add_method_arguments(parser)
    from .quantize_dynamic import add_dynamic_arguments

    add_dynamic_arguments(parser)


def _hf_method(name: str | None) -> Callable[[argparse.Namespace], int]:
    if not name:
        raise ValueError(
            "a Hugging Face directory input needs --method "
            f"({', '.join(sorted(HF_METHODS)) or 'none available yet'}); "
            "use `ferroquant convert` for a plain GGUF conversion"
        )
    target = HF_METHODS.get(name.lower())
    if target is None:
        raise ValueError(
            f"unknown --method {name!r}; available: {', '.join(sorted(HF_METHODS)) or 'none yet'}"
        )
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    src = Path(args.input)
    if src.is_dir():
        return int(_hf_method(args.method)(args) or 0)
    if args.method:
        raise ValueError("--method applies to a Hugging Face directory input, not a GGUF file")
    from ..convert import requantize

    summary = requantize(
        src, args.output, args.type, imatrix=args.imatrix, progress=not args.no_progress
    )
    print(summary.text())
    return 0
