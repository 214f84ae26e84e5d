"""Dynamic mixed precision against the uniform presets, with and without an importance matrix,
on one evaluator; and how well the sensitivity proxy tracks the real single-tensor KL.

On the float HF export of the default model (SmolLM2-135M-Instruct, ``/work/team/smollm2-f32``
or ``--model``):

1. reference: the float export converted to an F32 GGUF, run by our runtime;
2. budgets: the file sizes of our Q3_K_M, Q4_K_M and Q5_K_M conversions (our convert gives
   llama.cpp's preset types exactly, so the sizes are llama.cpp's), plus a curve of budgets
   below them (``--curve``, whole-file bits per weight);
3. at each preset budget: the uniform preset, the preset with the importance matrix from the
   same calibration text (our convert ``--imatrix``: llama.cpp's quantizers byte for byte; and
   llama.cpp's own ``llama-quantize --imatrix`` when ``--llama-quantize`` is given), and the
   dynamic file of that size;
4. every file evaluated by ``ferroquant.eval.evaluate`` with our runtime: WikiText-2 test from
   its start, ``--chunks`` windows of ``--ctx`` tokens, KL divergence / top-1 against the
   reference, perplexity. Calibration is ``wikitext-tail`` (the second half of the same file),
   which the evaluation windows never reach;
5. proxy check: on ``--pairs`` (tensor, type) pairs drawn at random, the real KL of the float HF
   model with that one tensor quantized (torch, ``--kl-windows`` calibration windows) against the
   predicted damage; Spearman and Pearson (of logs) correlations. And per dynamic file the
   predicted (summed) KL against the measured one.

    python benches/bench_dynamic.py [--model DIR] [--chunks 8] [--windows 16] [--sens-seqlen 256] [--pairs 24]
        [--curve 4.4,4.8,5.2] [--llama-quantize BIN] [--work DIR] [--out benches/results]

Writes ``bench_dynamic.json`` and ``bench_dynamic.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "wikitext-2-raw-test.txt"
PRESETS = ("Q3_K_M", "Q4_K_M", "Q5_K_M")


class CachedRef:
    """The reference model's logits per window, computed once and kept on disk (only the
    scored second half; the first half is zeros, which the evaluator never reads)."""

    def __init__(self, model: Any, ctx: int, store: Path) -> None:
        self.model = model
        self.ctx = ctx
        self.n_vocab = model.n_vocab
        self.store = store
        store.mkdir(parents=True, exist_ok=True)

    def logits(self, tokens: list[int]) -> np.ndarray:
        import hashlib

        key = hashlib.sha256(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:20]
        path = self.store / f"{key}.npy"
        half = self.ctx // 2
        if path.is_file():
            scored = np.load(path)
        else:
            full = np.asarray(self.model.logits(tokens), dtype=np.float32)
            scored = full[half:]
            tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
            np.save(tmp, scored)
            tmp.replace(path)
        out = np.zeros((len(tokens), scored.shape[1]), dtype=np.float32)
        out[half:] = scored
        return out


def _eval(path: Path, text: str, ref: CachedRef, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate one GGUF (cached next to it by file size, mtime and settings)."""
    from ferroquant.eval import evaluate
    from ferroquant.runtime import Model

    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, args.chunks, args.ctx]
    cache = path.with_name(path.name + f".eval-{args.chunks}x{args.ctx}.json")
    if cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("stamp") == stamp:
            return got["result"]
    t0 = time.perf_counter()
    m = Model.load(path, n_ctx=args.ctx)
    r = evaluate(m, text, ctx=args.ctx, n_chunks=args.chunks, ref=ref, progress=False)
    del m
    res = {
        "file": path.name,
        "bytes": st.st_size,
        "kld": r["kld"],
        "ppl": r["ppl"],
        "top1": r["top1"],
        "ref_ppl": r["ref_ppl"],
        "tokens": r["tokens"],
        "eval_s": time.perf_counter() - t0,
    }
    cache.write_text(json.dumps({"stamp": stamp, "result": res}))
    print(
        f"  eval {path.name}: KL {res['kld']:.5f} ppl {res['ppl']:.3f} "
        f"top-1 {res['top1']:.4f} ({res['eval_s']:.0f} s)",
        flush=True,
    )
    return res


def _proxy_check(
    model_dir: Path, summary: Any, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    """Real single-tensor KL (torch) vs the predicted damage on random (tensor, type) pairs."""
    from ferroquant.calib import load_calibration
    from ferroquant.dynamic import _Model
    from ferroquant.quantize_api import load_hf
    from ferroquant.sensitivity import SingleTensorKL, roundtrip, spearman

    hf, tok = load_hf(model_dir)
    windows = load_calibration(
        "wikitext-tail", tok, args.kl_windows, args.sens_seqlen, seed=12345, model=hf
    )
    real = SingleTensorKL(hf, windows)
    m = _Model(model_dir)
    by_name = {t.name: t for t in m.tensors}
    rows = [t for t in summary.tensors if t["quantizable"]]
    pairs = []
    for _ in range(args.pairs):
        t = rows[int(rng.integers(len(rows)))]
        opts = [c for c in t["options"] if c != "F16"]
        pairs.append((t["name"], opts[int(rng.integers(len(opts)))]))
    pairs = list(dict.fromkeys(pairs))
    from ferroquant.imatrix import ImportanceMatrix

    imat = ImportanceMatrix.load(summary.imatrix).weights_dict() if summary.imatrix else {}
    out = []
    t0 = time.perf_counter()
    for name, qt in pairs:
        t = by_name[name]
        hf_w = hf.get_parameter(t.hf_name).detach().numpy()
        # quantize in the GGUF layout (the imatrix is per column, layouts differ by rows only)
        q = roundtrip(hf_w.reshape(-1, hf_w.shape[-1]), qt, imat.get(name))
        kl = real.kl(t.hf_name, q)
        pred = next(r for r in rows if r["name"] == name)["options"][qt][1]
        out.append({"tensor": name, "type": qt, "predicted": pred, "real_kl": kl})
        print(f"  proxy {name} {qt}: predicted {pred:.3e} real {kl:.3e}", flush=True)
    m.close()
    pred = [r["predicted"] for r in out]
    kl = [r["real_kl"] for r in out]
    lp, lk = np.log(np.maximum(pred, 1e-12)), np.log(np.maximum(kl, 1e-12))
    return {
        "pairs": out,
        "n": len(out),
        "spearman": spearman(pred, kl),
        "pearson_log": float(np.corrcoef(lp, lk)[0, 1]),
        "pearson": float(np.corrcoef(pred, kl)[0, 1]),
        "median_ratio_real_over_predicted": float(np.median(np.asarray(kl) / np.asarray(pred))),
        "kl_windows": args.kl_windows,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/work/team/smollm2-f32")
    ap.add_argument("--work", default=str(ROOT / "build" / "bench_dynamic"))
    ap.add_argument("--out", default=str(ROOT / "benches" / "results"))
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=16, help="sensitivity windows")
    ap.add_argument("--sens-seqlen", type=int, default=256, help="tokens per sensitivity window")
    ap.add_argument("--calib", default="wikitext-tail")
    ap.add_argument("--curve", default="4.4,4.8,5.2", help="extra budgets, bits per weight")
    ap.add_argument("--pairs", type=int, default=24, help="proxy check pairs (0: skip)")
    ap.add_argument("--kl-windows", type=int, default=2)
    ap.add_argument("--llama-quantize", help="llama.cpp's llama-quantize binary (optional)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--candidates", help="candidate types of the dynamic files (default: all)")
    ap.add_argument("--tag", default="", help="suffix of the dynamic files and the results")
    ap.add_argument(
        "--stage",
        default="all",
        choices=("all", "uniform", "imatrix", "dynamic", "proxy", "curve"),
        help="run one part only (results are cached in --work; a later 'all' collects them)",
    )
    args = ap.parse_args(argv)

    from ferroquant.convert import convert
    from ferroquant.dynamic import quantize_dynamic
    from ferroquant.runtime import Model

    model_dir = Path(args.model)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    text = FIXTURE.read_text(encoding="utf-8")
    t_start = time.perf_counter()
    load = os.getloadavg()

    ref_path = work / "ref-F32.gguf"
    if not ref_path.is_file():
        convert(model_dir, ref_path, "F32", progress=False)
    ref = CachedRef(Model.load(ref_path, n_ctx=args.ctx), args.ctx, work / f"ref-logits-{args.ctx}")
    from ferroquant.dynamic import _Model

    probe = _Model(model_dir)
    n_weights = probe.n_weights
    probe.close()
    results: dict[str, Any] = {"budgets": [], "curve": []}

    cands = tuple(args.candidates.split(",")) if args.candidates else None

    def dyn(name: str, **target: Any) -> Any:
        """quantize_dynamic, or the file already made for this budget (its report)."""
        from ferroquant.dynamic import DynamicSummary, report_paths

        out = work / f"{name}.gguf"
        jpath, _ = report_paths(out)
        if jpath.is_file() and out.is_file():
            d = json.loads(jpath.read_text())
            want = target.get("target_size") or int(
                float(target["target_bpw"]) * int(d["n_weights"]) / 8
            )
            if d["target_bytes"] == want and d["n_bytes"] == out.stat().st_size:
                for k in ("out_path", "report_json", "report_md"):
                    d[k] = Path(d[k]) if d[k] else None
                return DynamicSummary(**d)
        if args.stage not in ("all", "dynamic", "curve"):
            return None
        t0 = time.perf_counter()
        s = quantize_dynamic(
            model_dir, out, calib=args.calib, cache_dir=str(cache), progress=False,
            nsamples=args.windows, seqlen=args.sens_seqlen, candidates=cands, **target,
        )  # fmt: skip
        print(f"{name}: {s.text()} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return s

    imat_file: Optional[str] = None
    summaries = {}

    def save(final: bool = False) -> None:
        if args.stage != "all":
            return
        results["settings"] = {
            "model": str(model_dir),
            "n_weights": n_weights,
            "chunks": args.chunks,
            "ctx": args.ctx,
            "calib": args.calib,
            "sensitivity_windows": args.windows,
            "sensitivity_seqlen": args.sens_seqlen,
            "imatrix": imat_file,
            "candidates": args.candidates or "default",
            "reference": "F32 GGUF of the float export, our runtime",
            "eval_text": "fixtures/wikitext-2-raw-test.txt from its start",
            "loadavg_start": load,
            "loadavg_end": os.getloadavg(),
            "cpus": os.cpu_count(),
            "machine": platform.platform(),
            "wall_s": time.perf_counter() - t_start,
            "complete": final,
            "command": " ".join([sys.executable, *sys.argv]),
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"bench_dynamic{args.tag}.json").write_text(json.dumps(results, indent=1))
        (out / f"bench_dynamic{args.tag}.md").write_text(_markdown(results))
        if final:
            print((out / f"bench_dynamic{args.tag}.md").read_text())

    def want(stage: str) -> bool:
        return args.stage in ("all", stage)

    for preset in args.presets.split(","):
        p_path = work / f"{preset}.gguf"
        if not p_path.is_file():
            convert(model_dir, p_path, preset, progress=False)
        budget = p_path.stat().st_size
        entry: dict[str, Any] = {"preset": preset, "budget_bytes": budget}
        if want("uniform"):
            entry["uniform"] = _eval(p_path, text, ref, args)
        s = dyn(f"dynamic{args.tag}-{preset}", target_size=budget)
        if s is not None:
            summaries[preset] = s
            imat_file = s.imatrix
        else:
            for j in sorted(work.glob("dynamic-*.dynamic.json")):
                d = json.loads(j.read_text())
                imat_file = d.get("imatrix")
        pi_path = work / f"{preset}-imatrix.gguf"
        # only the stage that evaluates it writes it (parallel stages raced on this file once)
        if imat_file and want("imatrix") and not pi_path.is_file():
            convert(model_dir, pi_path, preset, imatrix=imat_file, progress=False)
        if imat_file and want("imatrix"):
            entry["imatrix"] = _eval(pi_path, text, ref, args)
        if args.llama_quantize and imat_file and want("imatrix"):
            lq_path = work / f"{preset}-llama-quantize-imatrix.gguf"
            f16 = work / "ref-F16.gguf"
            if not f16.is_file():
                convert(model_dir, f16, "F16", progress=False)
            if not lq_path.is_file():
                subprocess.run(
                    [args.llama_quantize, "--imatrix", imat_file, str(f16), str(lq_path), preset],
                    check=True,
                    capture_output=True,
                )
            entry["llama_quantize_imatrix"] = _eval(lq_path, text, ref, args)
        if want("dynamic") and s is not None:
            entry["dynamic"] = _eval(s.out_path, text, ref, args)
            entry["dynamic"]["predicted_kld"] = s.predicted_kld
            entry["dynamic"]["type_counts"] = s.type_counts
            entry["dynamic"]["quantize_s"] = s.seconds
        for k in ("uniform", "imatrix", "llama_quantize_imatrix", "dynamic"):
            if k in entry:
                entry[k]["bpw"] = entry[k]["bytes"] * 8 / n_weights
        if args.stage == "all":
            results["budgets"].append(entry)
            print(json.dumps(entry, indent=1), flush=True)
            save()
    if args.pairs > 0 and summaries and want("proxy"):
        pj = work / f"proxy{args.tag}-{args.pairs}x{args.kl_windows}.json"
        if pj.is_file():
            results["proxy"] = json.loads(pj.read_text())
        else:
            s = summaries[next(iter(summaries))]
            results["proxy"] = _proxy_check(model_dir, s, args, np.random.default_rng(0))
            pj.write_text(json.dumps(results["proxy"], indent=1))
        save()
    for bpw in [float(x) for x in args.curve.split(",") if x.strip()]:
        if not want("curve"):
            break
        try:
            s = dyn(f"dynamic{args.tag}-{bpw:.2f}bpw", target_bpw=bpw)
        except ValueError as err:
            results["curve"].append({"target_bpw": bpw, "error": str(err)})
            continue
        e = _eval(s.out_path, text, ref, args)
        e.update(target_bpw=bpw, bpw=s.bits_per_weight, predicted_kld=s.predicted_kld)
        e["type_counts"] = s.type_counts
        results["curve"].append(e)
        print(json.dumps(e), flush=True)
        save()

    if args.stage == "all":
        save(final=True)
    return 0


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        "# Dynamic mixed precision vs uniform presets",
        "",
        f"Model `{s['model']}` ({s['n_weights']} parameters); evaluation: our runtime, "
        f"{s['chunks']} windows of {s['ctx']} tokens of WikiText-2 test from its start, KL and "
        f"top-1 against the F32 GGUF of the float export. Calibration: `{s['calib']}` "
        f"({s['sensitivity_windows']} windows of {s['sensitivity_seqlen']} tokens; the same importance matrix for the preset+imatrix "
        f"files and the dynamic files). Load average {s['loadavg_start'][0]:.1f} -> "
        f"{s['loadavg_end'][0]:.1f} on {s['cpus']} CPUs; {s['wall_s']:.0f} s"
        f"{'' if s.get('complete') else ' (PARTIAL: the run is still going or stopped)'}. "
        f"Dynamic candidate types: {s.get('candidates', 'default')}.",
        "",
        "| budget (preset size) | file | bytes | bpw | KL | top-1 | ppl |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in r["budgets"]:
        for k in ("uniform", "imatrix", "llama_quantize_imatrix", "dynamic"):
            if k not in b:
                continue
            e = b[k]
            lines.append(
                f"| {b['preset']} ({b['budget_bytes']}) | {k} | {e['bytes']} | {e['bpw']:.3f} | "
                f"{e['kld']:.5f} | {e['top1']:.4f} | {e['ppl']:.3f} |"
            )
    lines += ["", "Verdict per budget (dynamic KL below both uniform and preset+imatrix):", ""]
    for b in r["budgets"]:
        d = b["dynamic"]["kld"]
        others = {
            k: b[k]["kld"] for k in ("uniform", "imatrix", "llama_quantize_imatrix") if k in b
        }
        ok = all(d < v for v in others.values())
        ratio = ", ".join(f"{k} / dynamic = {v / d:.2f}x" for k, v in others.items())
        lines.append(f"- {b['preset']}: {'yes' if ok else 'NO'} ({ratio})")
    if r["curve"]:
        lines += [
            "",
            "## Curve (dynamic only)",
            "",
            "| target bpw | bytes | bpw | KL | predicted KL | top-1 | ppl |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for e in r["curve"]:
            if "error" in e:
                lines.append(f"| {e['target_bpw']} | - | - | {e['error']} | | | |")
                continue
            lines.append(
                f"| {e['target_bpw']} | {e['bytes']} | {e['bpw']:.3f} | {e['kld']:.5f} | "
                f"{e['predicted_kld']:.5f} | {e['top1']:.4f} | {e['ppl']:.3f} |"
            )
    lines += [
        "",
        "Predicted (sum of single-tensor damages) vs measured KL of the dynamic files:",
        "",
    ]
    for b in r["budgets"]:
        d = b["dynamic"]
        lines.append(
            f"- {b['preset']}: predicted {d['predicted_kld']:.5f}, measured {d['kld']:.5f}"
        )
    p = r.get("proxy")
    if p:
        lines += [
            "",
            "## Proxy vs real single-tensor KL",
            "",
            f"{p['n']} random (tensor, type) pairs, real KL of the float HF model with that tensor "
            f"quantized alone on {p['kl_windows']} calibration windows: Spearman "
            f"{p['spearman']:.3f}, Pearson of logs {p['pearson_log']:.3f}, Pearson "
            f"{p['pearson']:.3f}, median real/predicted {p['median_ratio_real_over_predicted']:.2f}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
