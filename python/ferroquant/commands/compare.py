"""``ferroquant compare HF_DIR --methods rtn,gptq,awq,imatrix,dynamic --types Q4_K_M,Q4_0
--out DIR [--calib FILE] [--chunks N] [--text FILE]``: quantize with each method at each type,
evaluate every file with one evaluator (perplexity, KL divergence and top-1 agreement against
the float model, size, bits per weight, quantize time, CPU tokens/s) and write
``DIR/report.md``, ``DIR/report.json`` and ``DIR/report.png`` (size vs KL divergence with the
Pareto frontier). A re-run with the same settings reuses what ``DIR`` already holds."""

from __future__ import annotations

import argparse

DEFAULT_METHODS = "rtn,imatrix,gptq,awq,dynamic"
DEFAULT_TYPES = "Q4_K_M,Q4_0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a Hugging Face checkpoint directory (float weights)")
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated: rtn, imatrix, gptq, awq, dynamic (default {DEFAULT_METHODS})",
    )
    parser.add_argument(
        "--types",
        default=DEFAULT_TYPES,
        help=f"comma-separated GGUF file types, e.g. Q3_K_M,Q4_K_M,Q5_K_M (default {DEFAULT_TYPES})",
    )
    parser.add_argument("--out", required=True, help="output directory (files, cache, report)")
    parser.add_argument(
        "--calib",
        default=None,
        help="calibration text/JSONL file, or wikitext-tail (default: the second half of "
        "fixtures/wikitext-2-raw-test.txt, which the evaluation windows never reach)",
    )
    parser.add_argument(
        "--imatrix", default=None, help="use this importance matrix instead of computing one"
    )
    parser.add_argument("--text", default=None, help="evaluation text (default: WikiText-2 test)")
    parser.add_argument("--chunks", type=int, default=8, help="evaluation windows (default 8)")
    parser.add_argument("--ctx", type=int, default=512, help="window length (default 512)")
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    parser.add_argument(
        "--seqlen", type=int, default=512, help="tokens per calibration window (default 512)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="runtime threads (0: all cores)")
    parser.add_argument("--no-bench", action="store_true", help="skip the tokens/s runs")
    parser.add_argument("--bench-pp", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--bench-tg", type=int, default=32, help="generated tokens (default 32)")
    parser.add_argument("--no-plot", action="store_true", help="no report.png")
    parser.add_argument("--force", action="store_true", help="ignore the cache, redo everything")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--quiet", action="store_true", help="do not print the table at the end")


def run(args: argparse.Namespace) -> int:
    from ..compare import DEFAULT_TEXT, compare

    report = compare(
        args.model_dir,
        args.methods,
        args.types,
        args.out,
        calib=args.calib,
        imatrix=args.imatrix,
        chunks=args.chunks,
        ctx=args.ctx,
        text=args.text or DEFAULT_TEXT,
        threads=args.threads,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        bench=not args.no_bench,
        bench_pp=args.bench_pp,
        bench_tg=args.bench_tg,
        force=args.force,
        plot=not args.no_plot,
        progress=not args.no_progress,
    )
    if not args.quiet:
        print()
        print(report.table())
        print("Which to choose: " + report.recommendation())
        print()
    for e in report.failed():
        print(f"{e.name}: {e.status}: {e.error}")
    print(
        "wrote "
        + ", ".join(
            report.files.get(k, "") for k in ("markdown", "json", "png") if k in report.files
        )
        + f" ({report.wall_s:.0f} s)"
    )
    return 1 if any(e.status == "failed" for e in report.entries) else 0
