"""``ferroquant quantize HF_DIR -o OUT.gguf --method dynamic --target-bpw B | --target-size N``:
dynamic mixed precision (:mod:`ferroquant.dynamic`). ``commands/quantize.py`` adds these flags
to its parser and dispatches the method here. Stdlib only at import."""

from __future__ import annotations

import argparse
import logging
import re

_SUFFIX = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "KI": 1024, "MI": 1024**2, "GI": 1024**3}


def parse_size(text: str) -> int:
    """``123456``, ``95M``, ``95MB``, ``90MiB``, ``1.2G`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kKmMgG]?i?)[bB]?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(
            f"--target-size {text!r}: a number of bytes, optionally with K, M, G (or KiB, MiB)"
        )
    value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--target-size {text!r} must be positive")
    return int(value)


def add_dynamic_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("dynamic mixed precision (--method dynamic)")
    target = g.add_mutually_exclusive_group()
    target.add_argument(
        "--target-bpw",
        type=float,
        metavar="B",
        help="whole-file bits per weight (file bytes * 8 / parameters)",
    )
    target.add_argument(
        "--target-size", type=parse_size, metavar="BYTES", help="file size budget (e.g. 95M)"
    )
    g.add_argument(
        "--candidates",
        metavar="T1,T2,...",
        help="GGUF types to choose from (default Q2_K,Q3_K,IQ4_XS,Q4_K,Q5_K,Q6_K,Q4_0,Q4_1,"
        "IQ4_NL,Q5_0,Q5_1,Q8_0,F16; each tensor keeps the ones its rows can hold)",
    )
    g.add_argument(
        "--sensitivity-windows",
        type=int,
        default=16,
        metavar="N",
        help="calibration windows for the sensitivity statistics (default 16)",
    )
    g.add_argument(
        "--sensitivity-seqlen",
        type=int,
        default=256,
        metavar="L",
        help="tokens per sensitivity window (default 256)",
    )
    g.add_argument("--cache-dir", help="statistics cache (default ~/.cache/ferroquant/dynamic)")


def run(args: argparse.Namespace) -> int:
    from ..dynamic import quantize_dynamic

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.target_bpw is None and args.target_size is None:
        raise ValueError("--method dynamic needs --target-bpw B or --target-size BYTES")
    cands = None
    if getattr(args, "candidates", None):
        cands = tuple(c.strip() for c in args.candidates.split(",") if c.strip())
    summary = quantize_dynamic(
        args.input,
        args.output,
        target_bpw=args.target_bpw,
        target_size=args.target_size,
        calib=args.calib,
        imatrix=args.imatrix,
        candidates=cands,
        cache_dir=args.cache_dir,
        progress=not getattr(args, "no_progress", False),
        nsamples=args.sensitivity_windows,
        seqlen=args.sensitivity_seqlen,
        seed=getattr(args, "seed", 0) or 0,
    )
    print(summary.text())
    return 0
