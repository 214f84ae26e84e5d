"""``ferroquant inspect FILE.gguf [--json]``: metadata, tensor table, size and bits per weight."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from ..gguf_io import metadata, open_gguf, tensor_infos


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a GGUF file")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--no-tensors", action="store_true", help="leave the per-tensor table out")


def summarize(path: str) -> dict:
    reader = open_gguf(path)
    infos = tensor_infos(reader)
    n_weights = sum(i.n_elements for i in infos)
    n_bytes = sum(i.n_bytes for i in infos)
    return {
        "file": str(path),
        "metadata": metadata(reader),
        "tensors": [
            {"name": i.name, "type": i.qtype, "shape": list(i.shape), "bytes": i.n_bytes}
            for i in infos
        ],
        "n_tensors": len(infos),
        "n_weights": n_weights,
        "tensor_bytes": n_bytes,
        "bits_per_weight": n_bytes * 8 / n_weights if n_weights else 0.0,
        "types": dict(Counter(i.qtype for i in infos)),
    }


def run(args: argparse.Namespace) -> int:
    summary = summarize(args.file)
    if args.json:
        if args.no_tensors:
            summary.pop("tensors")
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"file: {summary['file']}")
    print("metadata:")
    for key, value in summary["metadata"].items():
        text = json.dumps(value, default=str, ensure_ascii=False)
        print(f"  {key} = {text[:120] + '...' if len(text) > 120 else text}")
    if not args.no_tensors:
        print(f"tensors ({summary['n_tensors']}):")
        print(f"  {'name':<40} {'type':<7} {'shape':<20} {'bytes':>12}")
        for t in summary["tensors"]:
            shape = "x".join(str(v) for v in t["shape"])
            print(f"  {t['name']:<40} {t['type']:<7} {shape:<20} {t['bytes']:>12}")
    types = ", ".join(f"{k}: {v}" for k, v in sorted(summary["types"].items()))
    print(f"types: {types}")
    print(
        f"total: {summary['n_weights']:,} weights, {summary['tensor_bytes']:,} bytes, "
        f"{summary['bits_per_weight']:.3f} bits per weight"
    )
    return 0
