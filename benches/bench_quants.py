"""Quantize / dequantize throughput per GGUF type, against the peers measured in the same run.

Peers: gguf-py's numpy kernels (``gguf.quants``) for every type it implements, and llama.cpp's
own quantizer (``ggml_quantize_chunk`` from the ggml library that llama-cpp-python bundles,
single-threaded) for all types. MB/s counts float32 input bytes (4 bytes per weight) for both
directions. The all-core numbers and gguf-py are timed in this process; the per-thread numbers
in a child process with ``RAYON_NUM_THREADS=1``, ours and llama.cpp's in turns. Dequantize is
put against a numpy copy of the same size and of 256 MB; the load average is recorded (the
machine is shared: compare the ratios of one run).

    python benches/bench_quants.py --rows 1024 --cols 4096 --out benches/results

Writes ``bench_quants.json`` and ``bench_quants.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gq

from ferroquant import quants

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
try:
    import ggml_peer  # type: ignore[import-not-found]
except Exception:  # llama-cpp-python missing: the llama.cpp column stays empty
    ggml_peer = None

GGUF_PY_QUANTIZES = {"F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}


def best_of(fn: Callable[[], object], min_time: float = 0.6, max_runs: int = 200) -> float:
    """Fastest wall time of repeated runs (at least 2, until ``min_time`` has passed or
    ``max_runs`` ran). The same rule for both sides: a sub-millisecond call (our dequantize)
    needs more than a few tries for its best to escape one page-fault or scheduler hiccup,
    and the slower peer gets the same ``min_time``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 2 or (time.perf_counter() - start < min_time and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def mbps(n_weights: int, seconds: float) -> float:
    return n_weights * 4 / seconds / 1e6


def copy_gbps(n_floats: int) -> float:
    """numpy copy bandwidth (read + write bytes, one thread) of ``n_floats`` float32."""
    src = np.ones(n_floats, dtype=np.float32)
    dst = np.empty_like(src)
    t = best_of(lambda: np.copyto(dst, src))
    return 2 * src.nbytes / t / 1e9


def load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def bench_type(name: str, x: np.ndarray) -> dict[str, Optional[float]]:
    rows, cols = x.shape
    n = x.size
    gt = GGMLQuantizationType[name]
    q = quants.quantize(x, name)
    row: dict[str, Optional[float]] = {
        "quantize_mbps": mbps(n, best_of(lambda: quants.quantize(x, name))),
        "dequantize_mbps": mbps(n, best_of(lambda: quants.dequantize(q, name, (rows, cols)))),
        "gguf_py_quantize_mbps": None,
        "gguf_py_dequantize_mbps": None,
        "llama_cpp_quantize_mbps": None,
    }
    if name in GGUF_PY_QUANTIZES:
        row["gguf_py_quantize_mbps"] = mbps(n, best_of(lambda: gq.quantize(x, gt)))
    if name != "F32":
        row["gguf_py_dequantize_mbps"] = mbps(n, best_of(lambda: gq.dequantize(q, gt)))
    return row


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def fmt(v: Optional[float], spec: str = ".0f") -> str:
    return "–" if v is None else format(v, spec)


def run(rows: int, cols: int, types: list[str]) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    results = {}
    for name in types:
        results[name] = bench_type(name, x)
        print(f"{name:7s} {json.dumps(results[name])}", file=sys.stderr)
    return results


def interleaved_best(fns: list[Callable[[], object]], min_time: float = 1.0) -> list[float]:
    """Fastest wall time of each function, run in turns (A B A B ...) so that a load
    change on a shared machine hits both sides alike."""
    best = [float("inf")] * len(fns)
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or (time.perf_counter() - start < min_time and rounds < 30):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
        rounds += 1
    return best


def single_thread_pair(x: np.ndarray, name: str) -> dict[str, Optional[float]]:
    """Ours on one rayon thread and llama.cpp's quantizer (one thread), in turns."""
    fns: list[Callable[[], object]] = [lambda: quants.quantize(x, name)]
    if ggml_peer is not None and name != "F32":
        fns.append(lambda: ggml_peer.quantize(x, name))
    times = interleaved_best(fns)
    return {
        "ours": mbps(x.size, times[0]),
        "llama_cpp": mbps(x.size, times[1]) if len(times) > 1 else None,
    }


def single_thread_quantize(rows: int, cols: int, types: list[str]) -> dict[str, dict]:
    """Re-run ourselves with one rayon thread for the per-thread numbers (llama.cpp's
    quantizer timed in the same process, in turns with ours)."""
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--single", "--rows", str(rows // 8), "--cols", str(cols)]
    cmd += ["--types", ",".join(types)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--types", default=",".join(t.name for t in quants.types()))
    parser.add_argument("--out", type=Path, default=Path("benches/results"))
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]

    if args.single:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
        print(json.dumps({n: single_thread_pair(x, n) for n in types}))
        return 0

    load_before = load_average()
    results = run(args.rows, args.cols, types)
    per_thread = single_thread_quantize(args.rows, args.cols, types)
    # Bandwidth references: a numpy copy of the dequantized size (what dequantize writes;
    # it may sit in the last-level cache) and of 256 MB (DRAM); the F32 row's dequantize
    # is our own copy on all cores.
    copy_same = copy_gbps(args.rows * args.cols)
    bandwidth = copy_gbps(64 << 20)
    load_after = load_average()
    for name, row in results.items():
        row["quantize_1thread_mbps"] = per_thread[name]["ours"]
        if per_thread[name]["llama_cpp"] is not None:
            row["llama_cpp_quantize_mbps"] = per_thread[name]["llama_cpp"]
        row["x_gguf_py_quantize"] = ratio(row["quantize_mbps"], row["gguf_py_quantize_mbps"])
        row["x_gguf_py_dequantize"] = ratio(row["dequantize_mbps"], row["gguf_py_dequantize_mbps"])
        row["x_llama_cpp_quantize_1thread"] = ratio(
            row["quantize_1thread_mbps"], row["llama_cpp_quantize_mbps"]
        )
        # Dequantize moves the quantized bytes in and 4 bytes per weight out.
        bpw = quants.type_info(name).bits_per_weight
        traffic = row["dequantize_mbps"] * (1 + bpw / 32) / 1e3  # GB/s
        row["dequantize_traffic_gbps"] = traffic
        row["dequantize_fraction_of_copy"] = traffic / copy_same
        row["dequantize_fraction_of_bandwidth"] = traffic / bandwidth

    doc = {
        "bench": "quants",
        "matrix": [args.rows, args.cols],
        "threads": os.cpu_count(),
        "machine": platform.machine(),
        "memory_copy_gbps": bandwidth,
        "memory_copy_same_size_gbps": copy_same,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "llama_cpp": ggml_peer.library_path() if ggml_peer is not None else None,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_quants.json").write_text(json.dumps(doc, indent=2))
    lines = [
        f"# Quantize / dequantize throughput ({args.rows}×{args.cols} f32, {os.cpu_count()} cores)",
        "",
        f"MB/s of f32 weights. numpy copy (read + write, one thread): {copy_same:.1f} GB/s at "
        f"the dequantized size, {bandwidth:.1f} GB/s at 256 MB. Dequantize GB/s counts the "
        'quantized bytes read and the f32 written; "of copy" divides it by the first. '
        "llama.cpp = `ggml_quantize_chunk`, one thread, timed in turns with ours on one "
        f"rayon thread ({args.rows // 8} rows). "
        f"Load average (1, 5, 15 min) before: {load_before}, after: {load_after}.",
        "",
        "| type | quantize | gguf-py | × | dequantize | gguf-py | × | dequantize GB/s "
        "| of copy | quantize 1 thread | llama.cpp 1 thread | × |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {fmt(r['quantize_mbps'])} | {fmt(r['gguf_py_quantize_mbps'])} "
            f"| {fmt(r['x_gguf_py_quantize'], '.1f')} | {fmt(r['dequantize_mbps'])} "
            f"| {fmt(r['gguf_py_dequantize_mbps'])} | {fmt(r['x_gguf_py_dequantize'], '.1f')} "
            f"| {fmt(r['dequantize_traffic_gbps'], '.1f')} "
            f"| {fmt(r['dequantize_fraction_of_copy'], '.2f')} "
            f"| {fmt(r['quantize_1thread_mbps'])} | {fmt(r['llama_cpp_quantize_mbps'])} "
            f"| {fmt(r['x_llama_cpp_quantize_1thread'], '.2f')} |"
        )
    md = "\n".join(lines) + "\n"
    (args.out / "bench_quants.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
