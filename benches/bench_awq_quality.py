"""AWQ vs RTN quality on SmolLM2 (float export), WikiText-2 test, 512-token windows.

Both methods go through the AutoAWQ GEMM checkpoint this package writes (``--format awq``:
4-bit, zero point, groups of ``--group-size``) and are read back with
:func:`ferroquant.export.awq_checkpoint.load_checkpoint_weights`, so the rows measure exactly
what the checkpoints hold, on one grid: RTN is the float model written as it is, AWQ the
float model after the scale search, folding and clipping search. KL divergence against the
float model (the main measure), perplexity and top-1 agreement over the first ``--chunks``
non-overlapping 512-token windows of ``fixtures/wikitext-2-raw-test.txt`` (llama.cpp
``perplexity`` windows, :mod:`ferroquant.eval`). AWQ calibrates on each of ``--calib``:
``wikitext-tail`` (the second half of that file, which the windows never reach) and ``self``
(the built-in default: text the float model samples itself).

    ferroquant export-hf "$(python fixtures/fetch.py --print-model)" -o /tmp/smol-f32 --dtype float32
    python benches/bench_awq_quality.py /tmp/smol-f32 --chunks 40 --nsamples 64 --group-size 64 \
        [--device cuda]

Writes ``bench_awq_quality.json`` / ``.md`` into ``--out`` (rows appended as they finish).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from ferroquant.calib import load_calibration  # noqa: E402
from ferroquant.eval import evaluate  # noqa: E402
from ferroquant.export.awq_checkpoint import load_checkpoint_weights, write_checkpoint  # noqa: E402
from ferroquant.methods.awq import AWQConfig, awq_model  # noqa: E402
from ferroquant.quantize_api import load_hf  # noqa: E402


class TorchLM:
    """An in-memory transformers model as a ``ferroquant.eval`` LogitsModel."""

    def __init__(self, model: Any, tok: Any) -> None:
        self.model, self.tok = model, tok
        self.bos_id = tok.bos_token_id
        self.add_bos = bool(getattr(tok, "add_bos_token", False)) and self.bos_id is not None
        self.n_vocab = int(model.config.vocab_size)
        self.cache: Optional[dict[tuple[int, ...], np.ndarray]] = {}

    def tokenize(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return [self.bos_id, *ids] if self.add_bos else list(ids)

    def logits(self, tokens: list[int]) -> np.ndarray:
        # the float reference is evaluated once per window; only the scored second half
        # (``ferroquant.eval`` reads rows ctx/2 .. ctx-2) is kept, the first half is zeros
        key = tuple(tokens)
        half = len(tokens) // 2
        if self.cache is not None and key in self.cache:
            kept = self.cache[key]
            return np.concatenate([np.zeros((half, kept.shape[1]), np.float32), kept])
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model(torch.tensor([list(tokens)], device=dev), use_cache=False)
        arr = out.logits[0].float().cpu().numpy()
        if self.cache is not None:
            self.cache[key] = arr[half:].copy()
        return arr


def through_checkpoint(model: Any, group_size: int, work: Path, name: str) -> tuple[Any, int]:
    """Write ``model`` as an AWQ GEMM checkpoint, read it back into a copy: what it holds."""
    ckpt = work / name
    res = write_checkpoint(ckpt, model, group_size)
    weights = load_checkpoint_weights(ckpt)
    out = copy.deepcopy(model)
    dev = next(out.parameters()).device
    sd = {k: torch.from_numpy(v).to(dev) for k, v in weights.items()}
    missing, unexpected = out.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SystemExit(f"{ckpt}: missing {missing}, unexpected {unexpected}")
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    return out.eval(), size if res["linears"] else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", default="/work/team/smollm2-f32")
    ap.add_argument("--out", default=str(ROOT / "benches" / "results"))
    ap.add_argument("--calib", default="wikitext-tail,self")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-clip", action="store_true", help="AWQ without the clipping search")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    args = ap.parse_args()
    if args.chunks < 10:
        raise SystemExit("--chunks: at least 10 windows")
    if args.threads:
        torch.set_num_threads(args.threads)

    text = (ROOT / "fixtures" / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    float_model, tok = load_hf(args.model_dir)
    float_model = float_model.to(args.device)
    ref = TorchLM(float_model, tok)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_awq_"))
    stem = f"bench_awq_quality{args.tag}"
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    base = evaluate(ref, text, ctx=512, n_chunks=args.chunks, progress=False)
    rows.append({"method": "float", "ppl": base["ppl"], "kld": 0.0, "top1": 1.0})
    setting = f"{args.bits}-bit g{args.group_size}"
    meta = {
        "model": str(args.model_dir),
        "setting": setting,
        "chunks": base["chunks"],
        "tokens_scored": base["tokens"],
        "ctx": 512,
        "eval": base["method"],
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "clip": not args.no_clip,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_start": os.getloadavg(),
        "torch": torch.__version__,
    }

    def report() -> None:
        meta["loadavg_end"] = os.getloadavg()
        verdict = {}
        rtn = next((r for r in rows if r["method"] == "rtn"), None)
        for r in rows:
            if r["method"] == "awq" and rtn is not None:
                verdict[r["calib"]] = {
                    "kld_ratio_awq_over_rtn": r["kld"] / rtn["kld"],
                    "ppl_awq_minus_rtn": r["ppl"] - rtn["ppl"],
                    "awq_beats_rtn": bool(r["kld"] < rtn["kld"] and r["ppl"] < rtn["ppl"]),
                }
        (out / f"{stem}.json").write_text(
            json.dumps({"meta": meta, "rows": rows, "verdict": verdict}, indent=2)
        )
        lines = [
            f"# AWQ vs RTN ({setting}, AutoAWQ GEMM checkpoints) on SmolLM2-135M-Instruct",
            "",
            f"WikiText-2 test, first {base['chunks']} windows of 512 tokens ({base['method']}; "
            f"{base['tokens']} scored tokens); KL divergence against the float model "
            f"({args.model_dir}). AWQ: {args.nsamples}x{args.seqlen} calibration tokens, "
            f"alpha grid of 20, clipping search {'off' if args.no_clip else 'on'}. Both rows "
            f"are the weights the written checkpoints hold (read back from the files).",
            "",
            "| method | calibration | KL div | PPL | top-1 | KL / RTN | quantize s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            ratio = f"{r['kld'] / rtn['kld']:.3f}" if rtn and r["method"] != "float" else "-"
            lines.append(
                f"| {r['method']} | {r.get('calib', '-')} | {r['kld']:.5f} | {r['ppl']:.3f} | "
                f"{r['top1']:.4f} | {ratio} | {r.get('seconds', 0):.0f} |"
            )
        for c, v in verdict.items():
            lines.append("")
            lines.append(
                f"- {c}: AWQ KL / RTN KL = {v['kld_ratio_awq_over_rtn']:.3f}, PPL AWQ - RTN = "
                f"{v['ppl_awq_minus_rtn']:+.3f}: AWQ beats RTN in both: {v['awq_beats_rtn']}"
            )
        lines += [
            "",
            f"{meta['device']}, {meta['threads']} torch threads, load average "
            f"{meta['loadavg_start'][0]:.1f} at the start, {meta['loadavg_end'][0]:.1f} now.",
        ]
        (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
        r = rows[-1]
        print(
            f"{r['method']} {r.get('calib', '-')}: KL {r['kld']:.5f} PPL {r['ppl']:.3f}", flush=True
        )

    def run(method: str, calib: str, model: Any, secs: float) -> None:
        q, size = through_checkpoint(model, args.group_size, work, f"{method}-{calib}")
        lm = TorchLM(q, tok)
        lm.cache = None
        res = evaluate(lm, text, ctx=512, n_chunks=args.chunks, ref=ref, progress=False)
        rows.append(
            {
                "method": method,
                "calib": calib,
                "kld": res["kld"],
                "ppl": res["ppl"],
                "ppl_stderr": res["ppl_stderr"],
                "top1": res["top1"],
                "seconds": secs,
                "checkpoint_bytes": size,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        report()
        del q

    run("rtn", "-", float_model, 0.0)
    cfg = AWQConfig(bits=args.bits, group_size=args.group_size, clip=not args.no_clip)
    for src in args.calib.split(","):
        windows = load_calibration(src, tok, args.nsamples, args.seqlen, seed=0, model=float_model)
        model = copy.deepcopy(float_model)
        t1 = time.perf_counter()
        groups = awq_model(model, windows, cfg, progress=False)
        secs = time.perf_counter() - t1
        run("awq", src, model, secs)
        rows[-1]["mean_alpha"] = float(np.mean([g["alpha"] for g in groups.values()]))
        rows[-1]["alphas"] = {k: g["alpha"] for k, g in groups.items()}
        report()
        del model
    meta["seconds_total"] = time.perf_counter() - t0
    report()
    print((out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
