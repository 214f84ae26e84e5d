"""The torch GPTQ path on CUDA against the Rust CPU core: same layers, same settings.

    python benches/gptq_cuda_check.py --out benches/results

Writes ``gptq_cuda_check.json`` / ``.md``: the share of weights within 1e-4 of each other, the
layer losses of both, and the wall time of each (CUDA synchronised).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ferroquant import _native
from ferroquant.methods.gptq_torch import gptq_torch

CASES = [
    dict(bits=4, group_size=128, sym=True, act_order=False, static_groups=False),
    dict(bits=3, group_size=64, sym=False, act_order=True, static_groups=False),
    dict(bits=4, group_size=128, sym=False, act_order=True, static_groups=True),
    dict(bits=2, group_size=32, sym=False, act_order=False, static_groups=False),
    dict(bits=8, group_size=-1, sym=True, act_order=False, static_groups=False),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benches/results")
    ap.add_argument("--shape", default="2048x4096")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    rows, cols = (int(v) for v in args.shape.split("x"))
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(rows, cols, generator=g) * 0.02).numpy()
    x = torch.randn(4096, cols, generator=g) * torch.rand(cols, generator=g).add(0.1)
    h = ((2.0 / x.shape[0]) * (x.T @ x)).numpy()
    hd = torch.from_numpy(h).double()
    gptq_torch(w[:64], h, device="cuda")  # warm-up
    out = []
    for case in CASES:
        t0 = time.perf_counter()
        r = _native.gptq_quantize(w, h, **case)
        t_rust = time.perf_counter() - t0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        c = gptq_torch(w, h, device="cuda", **case)
        torch.cuda.synchronize()
        t_cuda = time.perf_counter() - t0

        def loss(q: np.ndarray) -> float:
            d = torch.from_numpy(w - q).double()
            return float(((d @ hd) * d).sum())

        row = {
            **case,
            "same": float(np.isclose(r["dequant"], c["dequant"], atol=1e-4).mean()),
            "loss_rust": loss(r["dequant"]),
            "loss_cuda": loss(c["dequant"]),
            "rust_s": t_rust,
            "cuda_s": t_cuda,
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    p = Path(args.out)
    p.mkdir(parents=True, exist_ok=True)
    (p / "gptq_cuda_check.json").write_text(
        json.dumps(
            {"shape": args.shape, "gpu": torch.cuda.get_device_name(), "rows": out}, indent=2
        )
    )
    lines = [
        f"# torch GPTQ on {torch.cuda.get_device_name()} vs Rust core, {args.shape}",
        "",
        "| bits | group | sym | act-order | static | same values | loss Rust | loss CUDA | Rust s "
        "| CUDA s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out:
        lines.append(
            f"| {r['bits']} | {r['group_size']} | {r['sym']} | {r['act_order']} | "
            f"{r['static_groups']} | {r['same']:.4f} | {r['loss_rust']:.5g} | "
            f"{r['loss_cuda']:.5g} | {r['rust_s']:.2f} | {r['cuda_s']:.2f} |"
        )
    (p / "gptq_cuda_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
