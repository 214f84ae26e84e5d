"""GPTQ speed: the Rust CPU core against a straightforward torch CPU implementation of the
same algorithm (``ferroquant.methods.gptq_torch``: the reference gptq.py loop, three O(n³)
steps for the inverse Hessian factor), on the same layers in one run.

    python benches/bench_gptq.py --out benches/results [--shapes 4096x4096,4096x11008]

Shapes are (out_features, in_features); the Hessian is in × in. Both sides use every core
(torch.get_num_threads(), rayon's pool). Writes ``bench_gptq.json`` and ``bench_gptq.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ferroquant import _native
from ferroquant.methods.gptq_torch import gptq_torch


def layer(rows: int, cols: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    n = 2048
    x = torch.randn(n, cols, generator=g) * torch.rand(cols, generator=g).add(0.1)
    x += 0.5 * torch.randn(n, 1, generator=g)  # a shared direction: correlated columns
    h = (2.0 / n) * (x.T @ x)
    return w.numpy(), h.numpy()


def layer_loss(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    d = torch.from_numpy(w - q).double()
    return float(((d @ torch.from_numpy(h).double()) * d).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benches/results")
    ap.add_argument("--shapes", default="4096x4096,4096x11008")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    rows_out = []
    for shape in args.shapes.split(","):
        rows, cols = (int(v) for v in shape.lower().split("x"))
        w, h = layer(rows, cols)
        kw = dict(bits=args.bits, group_size=args.group_size, sym=True)
        t0 = time.perf_counter()
        r = _native.gptq_quantize(w, h, **kw)
        t_rust = time.perf_counter() - t0
        t0 = time.perf_counter()
        t = gptq_torch(w, h, **kw)
        t_torch = time.perf_counter() - t0
        same = float(np.isclose(r["dequant"], t["dequant"], atol=1e-5).mean())
        rtn = _native.rtn_quantize(w, **kw)
        row = {
            "shape": f"{rows}x{cols}",
            "rust_s": round(t_rust, 3),
            "torch_s": round(t_torch, 3),
            "speedup": round(t_torch / t_rust, 2),
            "agree": round(same, 5),
            "loss_gptq_rust": layer_loss(w, r["dequant"], h),
            "loss_gptq_torch": layer_loss(w, t["dequant"], h),
            "loss_rtn": layer_loss(w, rtn["dequant"], h),
        }
        print(json.dumps(row), flush=True)
        rows_out.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bits": args.bits,
        "group_size": args.group_size,
    }
    (out / "bench_gptq.json").write_text(json.dumps({"meta": meta, "rows": rows_out}, indent=2))
    lines = [
        f"# GPTQ speed: Rust core vs torch CPU ({args.bits}-bit, g{args.group_size}, sym)",
        "",
        f"{meta['cpus']} CPUs, torch {meta['torch']} with {meta['torch_threads']} threads.",
        "",
        "| shape (out×in) | Rust s | torch s | speed-up | same values | loss Rust | loss torch "
        "| loss RTN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows_out:
        lines.append(
            f"| {r['shape']} | {r['rust_s']:.2f} | {r['torch_s']:.2f} | {r['speedup']:.2f}× | "
            f"{r['agree']:.4f} | {r['loss_gptq_rust']:.4g} | {r['loss_gptq_torch']:.4g} | "
            f"{r['loss_rtn']:.4g} |"
        )
    (out / "bench_gptq.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
