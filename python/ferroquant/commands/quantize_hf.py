"""``ferroquant quantize HF_DIR -o OUT --method gptq|rtn ...``: the calibrated route of
``quantize`` (``commands/quantize.py`` dispatches a directory input here through its
``HF_METHODS`` table and adds these flags to its parser)."""

from __future__ import annotations

import argparse
import logging

from ..quantize_api import GGUF_GRIDS, QuantConfig, quantize


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("GPTQ / RTN (Hugging Face directory input)")
    g.add_argument("--bits", type=int, default=4, help="2, 3, 4 or 8 (default 4)")
    g.add_argument(
        "--group-size", type=int, default=128, help="input columns per group, -1: per row"
    )
    g.add_argument("--act-order", action="store_true", help="columns by descending Hessian")
    g.add_argument(
        "--static-groups", action="store_true", help="fit group grids before the column loop"
    )
    sym = g.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=True, help="(default)")
    sym.add_argument("--asym", dest="sym", action="store_false")
    g.add_argument("--percdamp", type=float, default=0.01, help="damping (default 0.01)")
    g.add_argument(
        "--plain-scales",
        action="store_true",
        help="GPTQ onto GGUF: llama.cpp's plain block scale rule instead of its search "
        "weighted by the Hessian diagonal (the default)",
    )
    g.add_argument(
        "--format",
        choices=("gptq", "awq", "gguf"),
        default=None,
        help="gptq: HF GPTQ checkpoint (default for gptq/rtn); awq: AutoAWQ GEMM checkpoint "
        "(default for awq); gguf: GGUF of file type --type (GPTQ error feedback "
        f"on {', '.join(GGUF_GRIDS)} tensors, llama.cpp's quantizer on the others)",
    )
    g.add_argument(
        "--calib", help="calibration text/JSONL file, 'self' (default) or 'wikitext-tail'"
    )
    g.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    g.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu", help="cpu (Rust core) or cuda (torch)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = QuantConfig(
        method=(args.method or "gptq").lower(),
        bits=args.bits,
        group_size=args.group_size,
        sym=args.sym,
        act_order=args.act_order,
        static_groups=args.static_groups,
        percdamp=args.percdamp,
        weighted_fit=not getattr(args, "plain_scales", False),
        format=args.format or "gptq",
        gguf_type=args.type if args.format == "gguf" else None,
        calib=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        device=args.device,
        progress=not getattr(args, "no_progress", False),
    )
    summary = quantize(args.input, args.output, cfg)
    print(summary.text())
    return 0
