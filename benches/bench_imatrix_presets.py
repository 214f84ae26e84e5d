"""Our K-quant presets with our importance matrix vs llama.cpp's with its own, same text.

On SmolLM2-135M-Instruct (the float32 HF export of the default Q4_1 GGUF, converted to an
F32 GGUF for llama.cpp), from one calibration text (``wikitext-tail`` by default: the second
half of ``fixtures/wikitext-2-raw-test.txt``, which the evaluation windows never reach):

- ours: ``ferroquant imatrix F32.gguf --calib TEXT`` (our runtime, no torch; ``--ours-from
  hf`` computes it from the HF checkpoint with torch instead) then ``ferroquant convert HF
  --type P --imatrix ours.gguf``;
- llama.cpp: ``llama-imatrix -m F32.gguf -f TEXT -fa off`` (``--llama-fa``) then ``llama-quantize --imatrix
  theirs.gguf F32.gguf OUT P``;

for each preset P (default Q4_K_M, Q3_K_M, Q2_K), plus ours without an imatrix for scale and
(``--cross``) each quantizer with the other side's imatrix. Every file is scored by ONE
evaluator (``--evaluator llamacpp``: llama.cpp through llama-cpp-python, the default; or
``ours``: our runtime) against the F32 GGUF run by that same evaluator: KL divergence (the
main measure), perplexity and top-1 agreement over the first ``--chunks`` non-overlapping
512-token windows of the WikiText-2 test file (llama.cpp ``perplexity`` windows).

    python benches/bench_imatrix_presets.py --llama-bin /work/team/llama-tools \\
        [--hf /work/team/smollm2-f32] [--chunks 20] [--calib-chunks 32] [--work DIR]

Writes ``bench_imatrix_presets.json`` / ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(ROOT / "python"))


REUSE = False  # --reuse: keep outputs already in --work (their time is then 0)


def _run(cmd: list[str], log: Path, product: Optional[Path] = None) -> float:
    if REUSE and product is not None and product.is_file():
        return 0.0
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (rc {proc.returncode}); see {log}")
    return time.perf_counter() - t0


class Cached:
    """A LogitsModel whose logits are kept (scored second half only) after the first call:
    the reference, evaluated once per window whatever the number of files."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kept: dict[tuple[int, ...], np.ndarray] = {}
        for attr in ("bos_id", "add_bos", "n_vocab"):
            setattr(self, attr, getattr(inner, attr, None))

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def logits(self, tokens: list[int]) -> np.ndarray:
        key, half = tuple(tokens), len(tokens) // 2
        if key not in self.kept:
            self.kept[key] = np.asarray(self.inner.logits(tokens))[half:].astype(np.float32)
        kept = self.kept[key]
        return np.concatenate([np.zeros((half, kept.shape[1]), np.float32), kept])


def load(evaluator: str, path: Path, threads: int) -> Any:
    from ferroquant.eval import LlamaCppModel
    from ferroquant.runtime import Model

    if evaluator == "llamacpp":
        return LlamaCppModel(str(path), n_ctx=512, n_threads=threads)
    return Model.load(str(path), n_ctx=512, n_threads=threads)


def tensor_sha256(path: Path) -> str:
    """Hash of every tensor's name, type, shape and bytes (metadata left out: the two tools
    write different general.* keys), so equal hashes mean the same quantized model."""
    from gguf import GGUFReader

    h = hashlib.sha256()
    for t in sorted(GGUFReader(path).tensors, key=lambda t: t.name):
        h.update(f"{t.name}:{int(t.tensor_type)}:{list(t.shape)}".encode())
        h.update(np.ascontiguousarray(t.data).tobytes())
    return h.hexdigest()


def file_types(path: Path) -> dict[str, int]:
    from ferroquant.gguf_io import open_gguf, tensor_infos

    out: dict[str, int] = {}
    for i in tensor_infos(open_gguf(path)):
        out[i.qtype] = out.get(i.qtype, 0) + 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--llama-bin", required=True, help="folder with llama-imatrix, llama-quantize")
    ap.add_argument("--hf", default="/work/team/smollm2-f32", help="float32 HF checkpoint")
    ap.add_argument("--presets", default="Q4_K_M,Q3_K_M,Q2_K")
    ap.add_argument("--calib", default="wikitext-tail", help="wikitext-tail or a text file")
    ap.add_argument("--calib-chunks", type=int, default=32, help="imatrix chunks of 512 tokens")
    ap.add_argument("--chunks", type=int, default=20, help="evaluation windows (>= 10)")
    ap.add_argument("--evaluator", choices=("llamacpp", "ours"), default="llamacpp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cross", action="store_true", help="also each quantizer x other imatrix")
    ap.add_argument("--work", default=str(ROOT / "benches" / "results" / "imatrix_presets"))
    ap.add_argument("--out", default=str(ROOT / "benches" / "results"))
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--llama-fa", choices=("off", "on", "auto"), default="off",
        help="llama-imatrix's flash attention; 'off' is the attention our runtime computes "
        "bit for bit, so the two imatrices (and the preset files) come out identical",
    )  # fmt: skip
    ap.add_argument(
        "--ours-from", choices=("gguf", "hf"), default="gguf",
        help="our imatrix from the F32 GGUF (our runtime) or the HF checkpoint (torch)",
    )  # fmt: skip
    ap.add_argument("--reuse", action="store_true", help="keep files already in --work")
    ap.add_argument("--ours-only", action="store_true", help="make our files, then stop")
    args = ap.parse_args()
    global REUSE
    REUSE = args.reuse
    if args.chunks < 10:
        raise SystemExit("--chunks: at least 10 windows")

    from ferroquant.calib import read_text, wikitext_tail
    from ferroquant.eval import evaluate
    from ferroquant.imatrix import ImportanceMatrix, model_shapes_gguf

    bin_dir = Path(args.llama_bin)
    imatrix_bin, quantize_bin = bin_dir / "llama-imatrix", bin_dir / "llama-quantize"
    for b in () if args.ours_only else (imatrix_bin, quantize_bin):
        if not b.is_file():
            raise SystemExit(f"{b}: not found (build llama.cpp's tools, see bench_imatrix.py)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hf = Path(args.hf)
    fq = [PY, "-m", "ferroquant"]
    t_start = time.perf_counter()

    f32 = work / "f32.gguf"
    if not f32.is_file():
        _run([*fq, "convert", str(hf), "-o", str(f32), "--type", "F32", "--no-progress"],
             work / "convert-f32.log", f32)  # fmt: skip
    # one calibration text for both sides (llama-imatrix wants a little more than N chunks)
    text = wikitext_tail() if args.calib == "wikitext-tail" else read_text(Path(args.calib))
    calib = work / "calib.txt"
    calib.write_text(text[: 12 * 512 * (args.calib_chunks + 2)], encoding="utf-8")
    ours_im, theirs_im = work / "imatrix-ours.gguf", work / "imatrix-llamacpp.gguf"
    times: dict[str, float] = {}
    im_model = f32 if args.ours_from == "gguf" else hf
    times["imatrix_ours"] = _run(
        [*fq, "imatrix", str(im_model), "--calib", str(calib), "-o", str(ours_im),
         "--nsamples", str(args.calib_chunks), "--seqlen", "512",
         "--threads", str(args.threads), "--no-progress"],
        work / "imatrix-ours.log",
        ours_im,
    )  # fmt: skip
    if args.ours_only:
        for p in args.presets.split(","):
            for im, tag in ((ours_im, "im-ours"), (None, "no-im")):
                dst = work / f"ours-{p}-{tag}.gguf"
                cmd = [*fq, "convert", str(hf), "-o", str(dst), "--type", p, "--no-progress",
                       "--threads", str(args.threads)]  # fmt: skip
                _run(cmd + (["--imatrix", str(im)] if im else []), work / f"{dst.stem}.log", dst)
        print(json.dumps(times))
        return 0
    times["imatrix_llamacpp"] = _run(
        [str(imatrix_bin), "-m", str(f32), "-f", str(calib), "-c", "512", "-b", "512",
         "--chunks", str(args.calib_chunks), "--no-ppl", "-t", str(args.threads),
         "-fa", args.llama_fa,
         "-o", str(theirs_im)],
        work / "imatrix-llamacpp.log",
        theirs_im,
    )  # fmt: skip
    a, b = ImportanceMatrix.load(ours_im), ImportanceMatrix.load(theirs_im)
    shapes = model_shapes_gguf(f32)
    a.check_against(shapes, require_all=True)
    b.check_against(shapes, require_all=True)
    corrs = [
        float(np.corrcoef(a.weights(n).astype(np.float64), b.weights(n).astype(np.float64))[0, 1])
        for n in b.names()
    ]
    va = np.concatenate([a.entries[n].in_sum2.reshape(-1) for n in b.names()])
    vb = np.concatenate([b.entries[n].in_sum2.reshape(-1) for n in b.names()])
    rel = np.abs(va - vb) / np.maximum(np.abs(vb), 1e-30)
    imatrix_info = {
        "ours_from": args.ours_from,
        "llama_fa": args.llama_fa,
        "identical_fraction": float(np.mean(va.astype(np.float32) == vb.astype(np.float32))),
        "max_rel_diff": float(rel.max()),
        "median_rel_diff": float(np.median(rel)),
        "tensors": [len(a), len(b)],
        "corr_min": min(corrs),
        "counts_ours": float(next(iter(a.entries.values())).counts[0]),
        "counts_llamacpp": float(next(iter(b.entries.values())).counts[0]),
    }

    def ours_file(preset: str, im: Optional[Path], tag: str) -> Path:
        dst = work / f"ours-{preset}-{tag}.gguf"
        cmd = [*fq, "convert", str(hf), "-o", str(dst), "--type", preset, "--no-progress",
               "--threads", str(args.threads)]  # fmt: skip
        if im is not None:
            cmd += ["--imatrix", str(im)]
        times[dst.name] = _run(cmd, work / f"{dst.stem}.log", dst)
        return dst

    def theirs_file(preset: str, im: Path, tag: str) -> Path:
        dst = work / f"llamacpp-{preset}-{tag}.gguf"
        cmd = [str(quantize_bin), "--imatrix", str(im), str(f32), str(dst), preset,
               str(args.threads)]  # fmt: skip
        times[dst.name] = _run(cmd, work / f"{dst.stem}.log", dst)
        return dst

    jobs: list[tuple[str, str, str, Path]] = []  # preset, quantizer, imatrix, file
    for p in args.presets.split(","):
        jobs.append((p, "ours", "ours", ours_file(p, ours_im, "im-ours")))
        jobs.append((p, "llama.cpp", "llama.cpp", theirs_file(p, theirs_im, "im-llamacpp")))
        jobs.append((p, "ours", "none", ours_file(p, None, "no-im")))
        if args.cross:
            jobs.append((p, "ours", "llama.cpp", ours_file(p, theirs_im, "im-llamacpp")))
            jobs.append((p, "llama.cpp", "ours", theirs_file(p, ours_im, "im-ours")))

    eval_text = (ROOT / "fixtures" / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    ref = Cached(load(args.evaluator, f32, args.threads))
    base = evaluate(ref, eval_text, ctx=512, n_chunks=args.chunks, progress=False)
    rows: list[dict[str, Any]] = []
    meta = {
        "hf": str(hf),
        "f32_gguf": str(f32),
        "calib": args.calib,
        "calib_chunks": args.calib_chunks,
        "evaluator": args.evaluator,
        "eval": base["method"],
        "chunks": base["chunks"],
        "tokens_scored": base["tokens"],
        "f32_ppl": base["ppl"],
        "threads": args.threads,
        "loadavg_start": os.getloadavg(),
        "imatrix": imatrix_info,
    }
    stem = f"bench_imatrix_presets{args.tag}"

    def report() -> None:
        meta["loadavg_end"] = os.getloadavg()
        meta["seconds_total"] = time.perf_counter() - t_start
        verdict = {}
        for p in args.presets.split(","):
            o = next((r for r in rows if r["preset"] == p and r["quantizer"] == "ours"
                      and r["imatrix"] == "ours"), None)  # fmt: skip
            t = next((r for r in rows if r["preset"] == p and r["quantizer"] == "llama.cpp"
                      and r["imatrix"] == "llama.cpp"), None)  # fmt: skip
            if o and t:
                verdict[p] = {
                    "kld_ours": o["kld"],
                    "kld_llamacpp": t["kld"],
                    "kld_ratio_ours_over_llamacpp": o["kld"] / t["kld"],
                    "ours_at_least_as_good": bool(o["kld"] <= t["kld"]),
                    "same_bytes": o["sha256"] == t["sha256"],
                }
        (out / f"{stem}.json").write_text(
            json.dumps({"meta": meta, "times": times, "rows": rows, "verdict": verdict}, indent=2)
        )
        lines = [
            "# K-quant presets with an importance matrix: ferroquant vs llama.cpp",
            "",
            f"SmolLM2-135M-Instruct ({hf}, F32 GGUF for llama.cpp). Importance matrices from the "
            f"same text ({args.calib}, {args.calib_chunks} chunks of 512 tokens): ours "
            f"(`ferroquant imatrix` from the {args.ours_from} model) and llama.cpp's "
            f"(`llama-imatrix`): per-tensor correlation min {imatrix_info['corr_min']:.6f}, "
            f"{100 * imatrix_info['identical_fraction']:.2f}% of the sums bit-identical, "
            f"max relative difference {imatrix_info['max_rel_diff']:.2e}. Evaluator for every file: "
            f"{args.evaluator}, against the F32 GGUF on the same evaluator (PPL "
            f"{base['ppl']:.3f}); {base['method']}.",
            "",
            "| preset | quantizer | imatrix | KL div | PPL | top-1 | MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['preset']} | {r['quantizer']} | {r['imatrix']} | {r['kld']:.5f} | "
                f"{r['ppl']:.3f} | {r['top1']:.4f} | {r['bytes'] / 2**20:.1f} |"
            )
        lines.append("")
        for p, v in verdict.items():
            lines.append(
                f"- {p}: KL ours / llama.cpp = {v['kld_ratio_ours_over_llamacpp']:.4f} "
                f"({v['kld_ours']:.5f} vs {v['kld_llamacpp']:.5f}); ours at least as good: "
                f"{v['ours_at_least_as_good']}; identical tensors: {v['same_bytes']}"
            )
        lines += [
            "",
            f"{args.threads} threads; load average {meta['loadavg_start'][0]:.1f} at the "
            f"start, {meta['loadavg_end'][0]:.1f} at the end; {meta['seconds_total']:.0f} s.",
        ]
        (out / f"{stem}.md").write_text("\n".join(lines) + "\n")

    for preset, quantizer, im, path in jobs:
        model = load(args.evaluator, path, args.threads)
        res = evaluate(model, eval_text, ctx=512, n_chunks=args.chunks, ref=ref, progress=False)
        del model
        rows.append(
            {
                "preset": preset,
                "quantizer": quantizer,
                "imatrix": im,
                "file": str(path),
                "bytes": path.stat().st_size,
                "sha256": tensor_sha256(path),
                "types": file_types(path),
                "kld": res["kld"],
                "ppl": res["ppl"],
                "top1": res["top1"],
            }
        )
        report()
        print(f"{preset} {quantizer} imatrix={im}: KL {res['kld']:.5f} PPL {res['ppl']:.3f}",
              flush=True)  # fmt: skip
    print((out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
