"""Our importance matrix against llama.cpp's ``llama-imatrix`` on the same text, same run.

On the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) exported to a float32 HF checkpoint
(``ferroquant export-hf``) and converted back to an F32 GGUF (``ferroquant convert``), so both
sides run the same float weights:

- ours: ``ferroquant imatrix HF --calib TEXT --nsamples N --seqlen L`` (torch, HF model);
- llama.cpp: ``llama-imatrix -m F32.gguf -f TEXT -c L -b L --chunks N --no-ppl`` (a binary
  built from the llama-cpp-python sdist: ``cmake --build B --target llama-imatrix``);

then per tensor the Pearson correlation of the per-column weights (in_sum2 / counts), the
relative L2 difference, whether the token counts agree, the tokenization of both sides, and the
wall times (ratio ours / llama.cpp). Our reader reads llama.cpp's GGUF and legacy .dat files.

    python benches/bench_imatrix.py --llama-imatrix /path/to/llama-imatrix \
        [--chunks 4] [--seqlen 512] [--threads 2] [--out benches/results]
        [--work DIR [--ours-only | --reuse]]   # ours first, llama.cpp later, same DIR

Writes ``bench_imatrix.json`` and ``bench_imatrix.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (rc {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def _tokens_agree(gguf_path: Path, hf_dir: Path, text: str, n: int) -> dict[str, Any]:
    """Whether llama.cpp's tokenizer (llama-cpp-python, vocab only) and the HF tokenizer give
    the same first ``n`` tokens of the calibration text."""
    try:
        import llama_cpp
    except ImportError:
        return {"checked": False}
    from transformers import AutoTokenizer

    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    theirs = llm.tokenize(text.encode(), add_bos=False, special=False)[:n]
    ours = AutoTokenizer.from_pretrained(hf_dir)(text, add_special_tokens=False)["input_ids"][:n]
    same = sum(int(a == b) for a, b in zip(ours, theirs))
    return {"checked": True, "n": n, "same": same}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--llama-imatrix", help="llama.cpp's llama-imatrix binary")
    ap.add_argument("--model", help="GGUF model (default: fixtures/fetch.py --print-model)")
    ap.add_argument("--text", default=str(ROOT / "fixtures" / "wikitext-2-raw-test.txt"))
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="directory for the exported model (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benches" / "results"))
    ap.add_argument("--reuse", action="store_true", help="reuse ours.gguf (and its time) in --work")
    ap.add_argument("--ours-only", action="store_true", help="compute ours and stop")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "python"))
    from ferroquant.imatrix import ImportanceMatrix, model_shapes_gguf

    model = (
        args.model
        or subprocess.run(
            [PY, str(ROOT / "fixtures" / "fetch.py"), "--print-model"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_imatrix_"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hf, f32 = work / "hf", work / "f32.gguf"
    fq = [PY, "-m", "ferroquant"]
    if not (hf / "config.json").is_file():
        _run([*fq, "export-hf", model, "-o", str(hf), "--dtype", "float32", "--no-progress"],
             work / "export.log")  # fmt: skip
    if not f32.is_file():
        _run([*fq, "convert", str(hf), "-o", str(f32), "--type", "F32", "--no-progress"],
             work / "convert.log")  # fmt: skip
    # the same text for both: a prefix long enough for the chunks (llama-imatrix wants 2 more)
    full = Path(args.text).read_text(encoding="utf-8")
    calib = work / "calib.txt"
    calib.write_text(full[: 12 * args.seqlen * (args.chunks + 2)], encoding="utf-8")

    ours_path, theirs_path = work / "ours.gguf", work / "llamacpp.gguf"
    timing = work / "ours.time.json"
    if args.reuse and ours_path.is_file() and timing.is_file():
        t_ours = float(json.loads(timing.read_text())["seconds"])
    else:
        t_ours = _run(
            [*fq, "imatrix", str(hf), "--calib", str(calib), "-o", str(ours_path),
             "--nsamples", str(args.chunks), "--seqlen", str(args.seqlen),
             "--threads", str(args.threads), "--no-progress"],
            work / "ours.log",
        )  # fmt: skip
        timing.write_text(json.dumps({"seconds": t_ours}))
    if args.ours_only:
        print(f"ours: {t_ours:.1f} s -> {ours_path}")
        return 0
    if not args.llama_imatrix:
        raise SystemExit("--llama-imatrix is required (except with --ours-only)")
    lcmd = [args.llama_imatrix, "-m", str(f32), "-f", str(calib), "-c", str(args.seqlen),
            "-b", str(args.seqlen), "--chunks", str(args.chunks), "--no-ppl",
            "-t", str(args.threads)]  # fmt: skip
    t_theirs = _run([*lcmd, "-o", str(theirs_path)], work / "llamacpp.log")
    dat_path = work / "llamacpp.dat"
    _run([*lcmd, "-o", str(dat_path), "--output-format", "dat"], work / "llamacpp_dat.log")

    ours = ImportanceMatrix.load(ours_path)
    theirs = ImportanceMatrix.load(theirs_path)
    theirs_dat = ImportanceMatrix.load(dat_path)
    shapes = model_shapes_gguf(f32)
    for m in (ours, theirs, theirs_dat):
        m.check_against(shapes, require_all=True)

    rows = []
    for name in theirs.names():
        a, b = ours.weights(name), theirs.weights(name)
        corr = float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])
        rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
        dat_rel = float(np.max(np.abs(theirs_dat.weights(name) - b) / np.maximum(b, 1e-30)))
        rows.append(
            {
                "tensor": name,
                "corr": corr,
                "rel_l2": rel,
                "counts_ours": float(ours.entries[name].counts[0]),
                "counts_llamacpp": float(theirs.entries[name].counts[0]),
                "dat_vs_gguf_max_rel": dat_rel,
            }
        )
    corrs = np.array([r["corr"] for r in rows])
    result = {
        "model": str(model),
        "chunks": args.chunks,
        "seqlen": args.seqlen,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "n_tensors_ours": len(ours),
        "n_tensors_llamacpp": len(theirs),
        "same_names": ours.names() == theirs.names(),
        "corr_min": float(corrs.min()),
        "corr_median": float(np.median(corrs)),
        "worst_tensor": rows[int(corrs.argmin())]["tensor"],
        "rel_l2_max": max(r["rel_l2"] for r in rows),
        "counts_agree": all(r["counts_ours"] == r["counts_llamacpp"] for r in rows),
        "dat_vs_gguf_max_rel": max(r["dat_vs_gguf_max_rel"] for r in rows),
        "tokens": _tokens_agree(f32, hf, calib.read_text(encoding="utf-8"), args.seqlen),
        "seconds_ours": t_ours,
        "seconds_llamacpp": t_theirs,
        "time_ratio_ours_over_llamacpp": t_ours / t_theirs,
        "pass_corr_0.99": bool(corrs.min() >= 0.99),
        "tensors": rows,
    }
    (out / "bench_imatrix.json").write_text(json.dumps(result, indent=2))
    md = [
        "# imatrix: ferroquant (HF, torch) vs llama-imatrix",
        "",
        f"{args.chunks} chunks x {args.seqlen} tokens, {args.threads} threads, {model}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| tensors (ours / llama.cpp) | {len(ours)} / {len(theirs)} |",
        f"| same tensor names | {result['same_names']} |",
        f"| per-tensor correlation min / median | {result['corr_min']:.5f} / "
        f"{result['corr_median']:.5f} ({result['worst_tensor']}) |",
        f"| max relative L2 difference | {result['rel_l2_max']:.4f} |",
        f"| token counts agree | {result['counts_agree']} |",
        f"| llama.cpp .dat vs .gguf (our reader), max rel diff | "
        f"{result['dat_vs_gguf_max_rel']:.2e} |",
        f"| tokens equal (first window) | {result['tokens']} |",
        f"| time ours / llama.cpp | {t_ours:.1f} s / {t_theirs:.1f} s = "
        f"{result['time_ratio_ours_over_llamacpp']:.2f} |",
        f"| correlation >= 0.99 | {result['pass_corr_0.99']} |",
    ]
    (out / "bench_imatrix.md").write_text("\n".join(md) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "tensors"}, indent=2))
    print("\n".join(md))
    return 0 if result["pass_corr_0.99"] else 1


if __name__ == "__main__":
    sys.exit(main())
