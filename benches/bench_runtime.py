"""CPU runtime speed: prompt processing (pp, one batch) and generation (tg, one token at a time)
tokens/s of ferroquant's runtime against llama.cpp (llama-cpp-python) on the same GGUF files and
thread count, measured in the same run, plus the fraction of the memory-bandwidth limit reached
(weight bytes per token × tg tokens/s ÷ measured read bandwidth).

    python benches/bench_runtime.py [--models A.gguf B.gguf ...] [--variants] [--threads 1 2]
        [--accuracy [--chunks 6]]

``--variants`` also builds Q8_0, Q4_0, Q4_K_M and F16 requantizations of the default model with
``ferroquant quantize`` (cached next to it). ``--threads`` takes several counts (each model is
measured at each). ``--accuracy`` adds, per model, perplexity on WikiText-2 (ctx 512, ``--chunks``
windows, llama.cpp's method) of ours and llama.cpp's on the same file, with the KL divergence
and top-1 agreement of our logits against llama.cpp's. Writes
benches/results/bench_runtime.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ferroquant.commands.bench import bench_model

ROOT = Path(__file__).resolve().parent.parent


def default_model() -> Path:
    out = subprocess.run(
        [sys.executable, str(ROOT / "fixtures" / "fetch.py"), "--print-model"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def variants(base: Path) -> list[Path]:
    paths = []
    for t in ("Q8_0", "Q4_0", "Q4_K_M", "F16"):
        out = base.with_name(f"{base.stem}.requant-{t}.gguf")
        if not out.is_file():
            tmp = out.with_suffix(".tmp.gguf")
            subprocess.run(
                [sys.executable, "-m", "ferroquant", "quantize", str(base), "-o", str(tmp),
                 "--type", t, "--no-progress"],
                check=True,
            )  # fmt: skip
            tmp.rename(out)
        paths.append(out)
    return paths


def last_token_argmax(llm: Any) -> int:
    # Without logits_all, llama-cpp-python keeps no scores: read llama.cpp's logits buffer.
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def bench_llama_cpp(path: Path, threads: int, pp: int, tg: int, reps: int) -> Optional[dict]:
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=pp + tg + 8,
        n_batch=pp,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(0, llm.n_vocab(), pp)]
    llm.eval(prompt[:8])
    pp_best = tg_best = float("inf")
    for _ in range(reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        pp_best = min(pp_best, time.perf_counter() - t0)
        tok = last_token_argmax(llm)
        t0 = time.perf_counter()
        for _ in range(tg):
            llm.eval([tok])
            tok = last_token_argmax(llm)
        tg_best = min(tg_best, time.perf_counter() - t0)
    return {"pp_tps": pp / pp_best, "tg_tps": tg / tg_best}


def accuracy_row(path: Path, chunks: int) -> dict:
    """Perplexity of ours and llama.cpp's on one file, with KLD and top-1 of ours vs theirs."""
    from ferroquant.eval import LlamaCppModel, evaluate
    from ferroquant.runtime import Model

    text = (ROOT / "fixtures" / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    threads = os.cpu_count() or 1
    ours = Model.load(path, n_ctx=512, n_threads=threads)
    ref = LlamaCppModel(str(path), n_ctx=512, n_threads=threads)
    r = evaluate(ours, text, ctx=512, n_chunks=chunks, ref=ref, progress=False)
    row = {"model": path.name, **{k: r[k] for k in ("ppl", "ref_ppl", "kld", "top1", "tokens")}}
    print(json.dumps(row), flush=True)
    return row


def read_bandwidth(n_bytes: int = 1 << 29, reps: int = 3) -> float:
    """Bytes/s of one pass reading a buffer larger than the caches (numpy sum, one thread)."""
    a = np.ones(n_bytes // 8, dtype=np.float64)
    a.sum()
    best = min(_timed(a.sum) for _ in range(reps))
    return n_bytes / best


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=None, help="GGUF files (default: SmolLM2)")
    ap.add_argument("--variants", action="store_true", help="add Q8_0/Q4_0/Q4_K_M/F16 requants")
    ap.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1])
    ap.add_argument("--accuracy", action="store_true", help="ppl/KLD/top-1 vs llama.cpp")
    ap.add_argument("--chunks", type=int, default=6, help="windows of 512 for --accuracy")
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benches" / "results"))
    args = ap.parse_args()

    models = [Path(m) for m in args.models] if args.models else [default_model()]
    if args.variants:
        models += variants(models[0])
    bandwidth = read_bandwidth()
    rows = []
    for path in models:
        for threads in args.threads:
            ours = bench_model(str(path), threads, args.pp, args.tg, args.reps)
            peer = bench_llama_cpp(path, threads, args.pp, args.tg, args.reps)
            row: dict[str, Any] = {
                "model": path.name,
                "threads": threads,
                "isa": ours["isa"],
                "weight_bytes_per_token": ours["weight_bytes_per_token"],
                "ours": {"pp_tps": ours["pp_tps"], "tg_tps": ours["tg_tps"]},
                "llama_cpp": peer,
                "tg_bandwidth_fraction": ours["weight_bytes_per_token"]
                * ours["tg_tps"]
                / bandwidth,
            }
            if peer:
                row["pp_ratio"] = ours["pp_tps"] / peer["pp_tps"]
                row["tg_ratio"] = ours["tg_tps"] / peer["tg_tps"]
                row["llama_cpp_tg_bandwidth_fraction"] = (
                    ours["weight_bytes_per_token"] * peer["tg_tps"] / bandwidth
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    accuracy = []
    if args.accuracy:
        accuracy = [accuracy_row(path, args.chunks) for path in models]

    result = {
        "pp_tokens": args.pp,
        "tg_tokens": args.tg,
        "threads": args.threads,
        "read_bandwidth_gbps": bandwidth / 1e9,
        "bandwidth_method": "numpy float64 sum over 512 MiB, one thread, best of 3",
        "load_average": os.getloadavg(),
        "rows": rows,
        "accuracy": accuracy,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "bench_runtime.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.rename(out / "bench_runtime.json")
    lines = [
        f"# CPU runtime: pp{args.pp} / tg{args.tg} tokens/s",
        "",
        f"Read bandwidth {bandwidth / 1e9:.1f} GB/s ({result['bandwidth_method']}); "
        f"load average at the end {os.getloadavg()[0]:.1f}.",
        "",
        "| model | threads | ours pp | llama.cpp pp | pp ratio | ours tg | llama.cpp tg | tg ratio "
        "| tg bandwidth fraction (ours / llama.cpp) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["llama_cpp"] or {}
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['ours']['pp_tps']:.1f} | {p.get('pp_tps', float('nan')):.1f} "
            f"| {r.get('pp_ratio', float('nan')):.2f} | {r['ours']['tg_tps']:.1f} "
            f"| {p.get('tg_tps', float('nan')):.1f} | {r.get('tg_ratio', float('nan')):.2f} "
            f"| {r['tg_bandwidth_fraction']:.2f} / "
            f"{r.get('llama_cpp_tg_bandwidth_fraction', float('nan')):.2f} |"
        )
    if accuracy:
        lines += [
            "",
            f"Accuracy vs llama.cpp (WikiText-2 test, ctx 512, {args.chunks} windows, "
            "second halves scored):",
            "",
            "| model | ppl ours | ppl llama.cpp | diff | KLD | top-1 |",
            "|---|---|---|---|---|---|",
        ]
        for a in accuracy:
            lines.append(
                f"| {a['model']} | {a['ppl']:.4f} | {a['ref_ppl']:.4f} "
                f"| {100 * (a['ppl'] / a['ref_ppl'] - 1):+.3f}% | {a['kld']:.6f} "
                f"| {100 * a['top1']:.2f}% |"
            )
    tmp = out / "bench_runtime.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(out / "bench_runtime.md")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
