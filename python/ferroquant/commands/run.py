"""``ferroquant run MODEL.gguf -p PROMPT [-n N] [--temp T --top-k K --top-p P --seed S]
[--threads N] [--ctx N] [--chat]``: stream generated text to stdout."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a GGUF file")
    parser.add_argument("-p", "--prompt", default="", help="the prompt (default: empty, from BOS)")
    parser.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate")
    parser.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=40, help="top-k filter (0: off)")
    parser.add_argument("--top-p", type=float, default=0.95, help="top-p filter (1: off)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    parser.add_argument("--ctx", type=int, default=None, help="context size (default ≤ 2048)")
    parser.add_argument("--chat", action="store_true", help="apply the GGUF's chat template")


def run(args: argparse.Namespace) -> int:
    from ..runtime import Model

    model = Model.load(args.model, n_ctx=args.ctx, n_threads=args.threads)
    if not args.chat:
        sys.stdout.write(args.prompt)
    for piece in model.generate(
        args.prompt,
        max_tokens=args.n_predict,
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        chat=args.chat,
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
