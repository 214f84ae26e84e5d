"""``ferroquant bench MODEL.gguf [--threads N] [--pp 128] [--tg 64] [--json]``: tokens/s of
prompt processing (one batch of ``pp`` tokens) and generation (``tg`` tokens one at a time)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


def bench_model(path: str, threads: int = 0, pp: int = 128, tg: int = 64, reps: int = 2) -> dict:
    """Best-of-``reps`` pp and tg speed of our runtime on ``path``."""
    from .. import _native
    from ..runtime import Model

    model = Model.load(path, n_ctx=pp + tg + 8, n_threads=threads)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(0, model.n_vocab, pp)]
    model.logits(prompt[:8])  # warm the map and the thread pool
    pp_best = tg_best = float("inf")
    for _ in range(reps):
        model.reset()
        t0 = time.perf_counter()
        logits = model.eval_next(prompt)
        pp_best = min(pp_best, time.perf_counter() - t0)
        tok = int(np.argmax(logits))
        t0 = time.perf_counter()
        for _ in range(tg):
            tok = int(np.argmax(model.eval_next([tok])))
        tg_best = min(tg_best, time.perf_counter() - t0)
    return {
        "model": str(path),
        "threads": model.n_threads,
        "isa": _native.simd_isa(),
        "pp_tokens": pp,
        "tg_tokens": tg,
        "pp_tps": pp / pp_best,
        "tg_tps": tg / tg_best,
        "weight_bytes_per_token": model.weight_bytes_per_token,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a GGUF file")
    parser.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    parser.add_argument("--pp", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--tg", type=int, default=64, help="generated tokens (default 64)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions, best kept (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    result: dict[str, Any] = bench_model(args.model, args.threads, args.pp, args.tg, args.reps)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['model']}: pp{args.pp} {result['pp_tps']:.1f} tok/s, "
            f"tg{args.tg} {result['tg_tps']:.1f} tok/s ({result['threads']} threads, "
            f"{result['isa']})"
        )
    return 0
