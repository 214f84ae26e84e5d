"""``ferroquant eval MODEL --text FILE [--ctx 512] [--chunks N] [--ref REF] [--json]``:
perplexity over non-overlapping windows (llama.cpp's method: each window's second half is
scored), and with ``--ref`` the KL divergence and top-1 agreement against the reference's logits.
MODEL / REF: a GGUF (our runtime), ``llama.cpp:FILE.gguf`` (llama-cpp-python) or a Hugging Face
directory (transformers + torch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="GGUF file, llama.cpp:FILE.gguf, or HF directory")
    parser.add_argument("--text", required=True, help="a UTF-8 text file (e.g. WikiText-2 test)")
    parser.add_argument("--ctx", type=int, default=512, help="window length (default 512)")
    parser.add_argument("--chunks", type=int, default=0, help="windows to score (0: all)")
    parser.add_argument("--ref", default=None, help="reference model for KL divergence / top-1")
    parser.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..eval import evaluate, load_model

    text_path = Path(args.text)
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{text_path}: cannot read text ({err})") from err
    model = load_model(args.model, n_ctx=args.ctx, n_threads=args.threads)
    ref = load_model(args.ref, n_ctx=args.ctx, n_threads=args.threads) if args.ref else None
    result = evaluate(model, text, args.ctx, args.chunks, ref, progress=not args.no_progress)
    result.update({"model": args.model, "ref": args.ref, "text": str(text_path)})
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['method']}")
    print(f"ppl = {result['ppl']:.4f} ± {result['ppl_stderr']:.4f} over {result['tokens']} tokens")
    if ref is not None:
        print(
            f"reference ppl = {result['ref_ppl']:.4f}, KLD = {result['kld']:.6f}, "
            f"top-1 agreement = {100 * result['top1']:.2f}%"
        )
    return 0
