"""``ferroquant imatrix MODEL --calib FILE -o imatrix.gguf [--nsamples N --seqlen L]``.

Computes llama.cpp's importance matrix (per-input-column sum of squared activations of every
decoder-layer weight) from a Hugging Face checkpoint with torch, or from a GGUF model with our
own CPU runtime (no torch), and writes it in llama.cpp's GGUF form or the legacy ``.dat`` form
(``--format``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="a Hugging Face checkpoint directory (torch) or a GGUF file (our runtime)"
    )
    parser.add_argument("--calib", required=True, help="calibration text file (UTF-8)")
    parser.add_argument("-o", "--output", required=True, help="the imatrix file to write")
    parser.add_argument(
        "--nsamples", type=int, default=None, help="at most N windows (default: all)"
    )
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    parser.add_argument(
        "--format",
        choices=("gguf", "dat"),
        default=None,
        help="output format (default: by suffix, .dat -> legacy, else GGUF)",
    )
    parser.add_argument("--threads", type=int, help="torch / runtime threads")
    parser.add_argument(
        "--process-output",
        action="store_true",
        help="GGUF input: also collect output.weight (llama-imatrix --process-output)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    src = Path(args.model)
    if src.is_file():
        from ..imatrix import compute_gguf

        imat = compute_gguf(
            src,
            args.calib,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            n_threads=int(args.threads or 0),
            process_output=args.process_output,
            progress=not args.no_progress,
        )
    elif not src.is_dir():
        raise ValueError(f"{args.model}: neither a GGUF file nor a Hugging Face checkpoint")
    else:
        if args.threads:
            import torch

            torch.set_num_threads(int(args.threads))
        from ..imatrix import compute_hf

        imat = compute_hf(
            args.model,
            args.calib,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            progress=not args.no_progress,
        )
    path = imat.save(args.output, args.format)
    tokens = max(float(e.counts.max()) for e in imat.entries.values())
    print(
        f"wrote {path}: {len(imat)} tensors, {imat.chunk_count} chunks of {imat.chunk_size} "
        f"tokens ({tokens:.0f} tokens per tensor)"
    )
    return 0
