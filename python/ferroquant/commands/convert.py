"""``ferroquant convert HF_DIR -o OUT.gguf --type TYPE [--imatrix FILE] [--threads N]``."""

from __future__ import annotations

import argparse
import os

from .. import presets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a Hugging Face checkpoint directory (safetensors)")
    parser.add_argument("-o", "--output", required=True, help="the GGUF file to write")
    parser.add_argument(
        "--type",
        default="F16",
        metavar="TYPE",
        help=f"file type: {', '.join(presets.supported())} (default F16)",
    )
    parser.add_argument("--imatrix", help="llama.cpp importance matrix (GGUF or legacy .dat)")
    parser.add_argument("--threads", type=int, help="worker threads for quantization")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError("--threads must be at least 1")
        # read by rayon when the extension first runs in parallel
        os.environ["RAYON_NUM_THREADS"] = str(threads)


def run(args: argparse.Namespace) -> int:
    from ..convert import convert

    set_threads(args.threads)
    summary = convert(
        args.model_dir, args.output, args.type, imatrix=args.imatrix, progress=not args.no_progress
    )
    print(summary.text())
    return 0
