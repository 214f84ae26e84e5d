"""Round-trip every tensor of a GGUF through our dequantize and compare with gguf-py.

Prints, per tensor type: tensors, weights, max |ours - gguf-py| (0 means bit-exact), and the
time each side took. Then re-quantizes the float weights of the 2-D tensors to a few types and
prints the relative RMS error each type costs on this model.

    python benches/roundtrip_model.py MODEL.gguf [--requant Q8_0,Q4_K,...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
from gguf import GGUFReader
from gguf import quants as gq
from tqdm import tqdm

from ferroquant import quants

DEFAULT_REQUANT = "Q8_0,Q6_K,Q5_0,Q4_K,Q4_0,IQ4_NL,Q3_K,Q2_K"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--requant", default=DEFAULT_REQUANT, help="types to re-quantize into")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    reader = GGUFReader(args.model)
    per_type: dict[str, dict[str, float]] = defaultdict(
        lambda: {"tensors": 0, "weights": 0, "max_abs_diff": 0.0, "ours_s": 0.0, "gguf_py_s": 0.0}
    )
    floats: dict[str, np.ndarray] = {}
    for t in tqdm(reader.tensors, desc="dequantize", unit="tensor"):
        name = t.tensor_type.name
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        cols = int(t.shape[0])
        t0 = time.perf_counter()
        ours = quants.dequantize(t.data, name, (rows, cols))
        t1 = time.perf_counter()
        ref = gq.dequantize(np.asarray(t.data), t.tensor_type).reshape(rows, cols)
        t2 = time.perf_counter()
        row = per_type[name]
        row["tensors"] += 1
        row["weights"] += rows * cols
        row["max_abs_diff"] = max(row["max_abs_diff"], float(np.max(np.abs(ours - ref))))
        row["ours_s"] += t1 - t0
        row["gguf_py_s"] += t2 - t1
        if rows > 1:
            floats[t.name] = ours

    print(f"\n{args.model.name}: dequantize, ours vs gguf-py")
    print(
        f"{'type':<8}{'tensors':>8}{'weights':>13}{'max|diff|':>11}{'ours s':>9}{'gguf-py s':>11}"
    )
    for name, r in sorted(per_type.items()):
        print(
            f"{name:<8}{r['tensors']:>8}{r['weights']:>13,}{r['max_abs_diff']:>11.3g}"
            f"{r['ours_s']:>9.3f}{r['gguf_py_s']:>11.3f}"
        )

    requant: dict[str, dict[str, float]] = {}
    targets = [t.strip().upper() for t in args.requant.split(",") if t.strip()]
    for qtype in tqdm(targets, desc="re-quantize", unit="type"):
        block = quants.type_info(qtype).block_size
        err = ref_energy = 0.0
        n = 0
        t0 = time.perf_counter()
        for w in floats.values():
            if w.shape[1] % block:
                continue  # 576-wide rows do not split into 256-blocks
            y = quants.dequantize(quants.quantize(w, qtype), qtype, w.shape)
            err += float(np.sum((w.astype(np.float64) - y) ** 2))
            ref_energy += float(np.sum(w.astype(np.float64) ** 2))
            n += w.size
        requant[qtype] = {
            "weights": n,
            "rel_rmse": (err / ref_energy) ** 0.5 if ref_energy else float("nan"),
            "seconds": time.perf_counter() - t0,
        }
    print("\nre-quantizing the file's float values (tensors whose rows divide into blocks):")
    print(f"{'type':<8}{'weights':>13}{'rel RMSE':>10}{'seconds':>9}")
    for qtype, r in requant.items():
        print(f"{qtype:<8}{r['weights']:>13,}{r['rel_rmse']:>10.4f}{r['seconds']:>9.2f}")

    if args.json:
        args.json.write_text(json.dumps({"dequantize": per_type, "requantize": requant}, indent=2))
    bad = [n for n, r in per_type.items() if r["max_abs_diff"] != 0.0]
    if bad:
        print(f"NOT bit-exact: {bad}", file=sys.stderr)
        return 1
    print("\nall tensors bit-exact with gguf-py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
