"""GPTQ onto a GGUF preset (default Q4_K_M, fallback types included) against RTN and against
llama.cpp's own quantization with an importance matrix from the same calibration text.

Files, all made from the same float export of SmolLM2 (``ferroquant export-hf``):

- ``rtn``: ``ferroquant convert HF --type T`` (llama.cpp's quantizers, no importance matrix);
- ``llama.cpp``: ``llama-quantize F32.gguf T`` (no importance matrix; checks the RTN row);
- ``llama.cpp imatrix``: ``llama-imatrix -m F32.gguf -f CALIB -c SEQLEN --chunks N`` then
  ``llama-quantize --imatrix``: what llama.cpp users get with calibration;
- ``gptq``: ``quantize(HF, format="gguf", gguf_type=T, calib=CALIB, nsamples=N)``, with the
  block scales fitted by llama.cpp's Hessian-diagonal-weighted search (``weighted_fit``) and,
  as a row of its own, with the plain scale rule.

``CALIB`` is ``fixtures/wikitext-2-raw-test.txt``'s second half (``--calib wikitext-tail``),
which the evaluation windows (from the start of that file) never reach. llama-imatrix reads
its first N chunks of SEQLEN tokens; GPTQ samples N windows at seeded offsets.

Every file is evaluated by one evaluator, our runtime (``ferroquant.eval.evaluate``), on the
first ``--chunks`` 512-token windows of WikiText-2 test; KL divergence against the F32 GGUF of
the float export (its logits computed once), perplexity and top-1 agreement beside it.

    python benches/bench_gptq_gguf.py /work/team/smollm2-f32 --llama-tools /work/team/llama-tools/build/bin \\
        --type Q4_K_M --nsamples 16 --chunks 10 --work /tmp/bench_gptq_gguf

Writes ``bench_gptq_gguf.json`` / ``.md`` into ``--out`` (rows appended as each finishes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class CachedRef:
    """A model whose logits are computed once per window."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: dict[tuple[int, ...], Any] = {}
        for attr in ("bos_id", "add_bos", "n_vocab"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def logits(self, tokens: Any) -> Any:
        key = tuple(tokens)
        if key not in self.cache:
            self.cache[key] = self.model.logits(tokens)
        return self.cache[key]


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (rc {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model_dir", help="float HF export (ferroquant export-hf --dtype float32)")
    ap.add_argument("--llama-tools", help="directory with llama-imatrix and llama-quantize")
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument(
        "--variants",
        default="rtn,llama,llama-imatrix,gptq,gptq-plain",
        help="rows to make: rtn, llama, llama-imatrix, gptq, gptq-plain",
    )
    ap.add_argument("--work", default="/tmp/bench_gptq_gguf")
    ap.add_argument("--out", default=str(ROOT / "benches" / "results"))
    ap.add_argument("--append", action="store_true", help="keep the rows of an earlier run")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "python"))
    from ferroquant.calib import wikitext_tail
    from ferroquant.convert import convert
    from ferroquant.eval import evaluate, load_model
    from ferroquant.quantize_api import QuantConfig, quantize

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = args.type
    variants = args.variants.split(",")
    calib = work / "calib-wikitext-tail.txt"
    calib.write_text(wikitext_tail(), encoding="utf-8")
    text = (ROOT / "fixtures" / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")

    f32 = work / "f32.gguf"
    if not f32.exists():
        convert(args.model_dir, f32, "F32", progress=False)
    ref = CachedRef(load_model(str(f32), n_ctx=512, n_threads=args.threads))
    tools = Path(args.llama_tools) if args.llama_tools else None

    rows: list[dict[str, Any]] = []
    prev = out / "bench_gptq_gguf.json"
    if args.append and prev.exists():
        rows = json.loads(prev.read_text())["rows"]

    def report() -> None:
        meta = {
            "model": args.model_dir,
            "type": t,
            "nsamples": args.nsamples,
            "seqlen": args.seqlen,
            "chunks": args.chunks,
            "calib": "wikitext-tail",
            "act_order": args.act_order,
            "evaluator": "ferroquant runtime, ferroquant.eval.evaluate, ref = F32 GGUF",
        }
        (out / "bench_gptq_gguf.json").write_text(
            json.dumps({"meta": meta, "rows": rows}, indent=2)
        )
        lines = [
            f"# GPTQ onto {t} vs RTN vs llama.cpp imatrix (SmolLM2, float export)",
            "",
            f"WikiText-2 test, first {args.chunks} windows of 512 tokens, one evaluator (our "
            f"runtime) for every file; KL divergence against the F32 GGUF. Calibration: "
            f"WikiText-2 test second half, {args.nsamples}×{args.seqlen} tokens "
            f"(llama-imatrix: its first {args.nsamples} chunks; GPTQ: {args.nsamples} seeded "
            f"windows); act-order {args.act_order}.",
            "",
            "| file | calib tokens | KL div | PPL | top-1 | size MiB | make s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['name']} | {r.get('calib_tokens', '-')} | {r['kld']:.5f} | "
                f"{r['ppl']:.3f} | {r['top1']:.4f} | {r['size_mib']:.2f} | {r['seconds']:.0f} |"
            )
        (out / "bench_gptq_gguf.md").write_text("\n".join(lines) + "\n")
        print(lines[-1], flush=True)

    def add(name: str, path: Path, seconds: float, extra: dict[str, Any]) -> None:
        m = load_model(str(path), n_ctx=512, n_threads=args.threads)
        res = evaluate(m, text, ctx=512, n_chunks=args.chunks, ref=ref, progress=False)
        rows.append(
            {
                "name": name,
                "file": str(path),
                "kld": res["kld"],
                "ppl": res["ppl"],
                "top1": res["top1"],
                "ref_ppl": res["ref_ppl"],
                "size_mib": path.stat().st_size / 2**20,
                "seconds": seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "act_order": args.act_order,
                **extra,
            }
        )
        report()

    if "rtn" in variants:
        p = work / f"rtn-{t}.gguf"
        t0 = time.perf_counter()
        convert(args.model_dir, p, t, progress=False)
        add(f"rtn {t} (ferroquant convert)", p, time.perf_counter() - t0, {})
    if tools is not None and ("llama" in variants or "llama-imatrix" in variants):
        quant = str(tools / "llama-quantize")
        if "llama" in variants:
            p = work / f"llama-{t}.gguf"
            secs = _run([quant, str(f32), str(p), t, str(args.threads)], work / "quantize.log")
            add(f"llama.cpp {t} (no imatrix)", p, secs, {})
        if "llama-imatrix" in variants:
            imat = work / f"imatrix-{args.nsamples}.gguf"
            secs_i = _run(
                [str(tools / "llama-imatrix"), "-m", str(f32), "-f", str(calib),
                 "-c", str(args.seqlen), "-b", str(args.seqlen), "--chunks", str(args.nsamples),
                 "-t", str(args.threads), "--no-ppl", "-o", str(imat)],
                work / "imatrix.log",
            )  # fmt: skip
            p = work / f"llama-imatrix{args.nsamples}-{t}.gguf"
            secs = _run(
                [quant, "--imatrix", str(imat), str(f32), str(p), t, str(args.threads)],
                work / "quantize-imatrix.log",
            )
            add(
                f"llama.cpp {t} + imatrix",
                p,
                secs_i + secs,
                {"calib_tokens": f"{args.nsamples}x{args.seqlen}"},
            )
    for v, weighted in (("gptq", True), ("gptq-plain", False)):
        if v not in variants:
            continue
        p = work / f"{v}{args.nsamples}-{t}.gguf"
        cfg = QuantConfig(
            method="gptq",
            format="gguf",
            gguf_type=t,
            calib=str(calib),
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            act_order=args.act_order,
            weighted_fit=weighted,
            progress=False,
        )
        s = quantize(args.model_dir, p, cfg)
        name = f"gptq {t} ({'H-diag weighted' if weighted else 'plain'} block scales)"
        if args.act_order:
            name += ", act-order"
        add(
            name,
            p,
            s.seconds,
            {
                "quantize_peak_rss_mb": s.peak_rss_mb,
                "calib_tokens": f"{args.nsamples}x{args.seqlen}",
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
