"""``ferroquant export-hf IN.gguf -o HF_DIR [--dtype float16|bfloat16|float32]``."""

from __future__ import annotations

import argparse

from ..hf_export import DTYPES, export_hf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a GGUF model file")
    parser.add_argument(
        "-o", "--output", required=True, help="the HF checkpoint directory to write"
    )
    parser.add_argument("--dtype", default="float16", choices=list(DTYPES), help="tensor dtype")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    s = export_hf(args.file, args.output, dtype=args.dtype, progress=not args.no_progress)
    print(
        f"wrote {s.out_dir}: {s.n_tensors} tensors, {s.n_bytes / 2**20:.1f} MiB model.safetensors "
        f"({args.dtype}) in {s.seconds:.1f} s"
    )
    return 0
