"""GPTQ vs RTN quality on SmolLM2 (float export), WikiText-2 test, 512-token windows.

KL divergence against the float model (the main measure) and perplexity beside it, over the
first ``--chunks`` windows of ``fixtures/wikitext-2-raw-test.txt`` (llama.cpp ``perplexity``
windows, see ``ferroquant.eval``). GPTQ calibrates on ``--calib`` (default ``wikitext-tail``:
the second half of that file, which those windows never reach) and/or ``self``.

    ferroquant export-hf "$(python fixtures/fetch.py --print-model)" -o /tmp/smol-f32 --dtype float32
    python benches/bench_gptq_quality.py /tmp/smol-f32 --out benches/results \\
        --settings 3:128,4:128,3:64,4:64 --calib wikitext-tail,self --chunks 20 --nsamples 32

Rows are appended to ``bench_gptq_quality.json`` / ``.md`` as each finishes.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferroquant.calib import load_calibration
from ferroquant.eval import evaluate
from ferroquant.methods.gptq import GridSpec, quantize_model
from ferroquant.methods.rtn import rtn_model
from ferroquant.quantize_api import load_hf

ROOT = Path(__file__).resolve().parent.parent


class TorchLM:
    """An in-memory transformers model as a ``ferroquant.eval`` LogitsModel."""

    def __init__(self, model: Any, tok: Any) -> None:
        self.model, self.tok = model, tok
        self.bos_id = tok.bos_token_id
        self.add_bos = bool(getattr(tok, "add_bos_token", False)) and self.bos_id is not None
        self.n_vocab = int(model.config.vocab_size)

    def tokenize(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return [self.bos_id, *ids] if self.add_bos else list(ids)

    def logits(self, tokens: list[int]) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.tensor([list(tokens)]), use_cache=False).logits[0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--out", default="benches/results")
    ap.add_argument("--settings", default="3:128,4:128,3:64,4:64", help="bits:group,...")
    ap.add_argument("--calib", default="wikitext-tail")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--device", default="cpu", help="where GPTQ runs each layer (cpu or cuda)")
    args = ap.parse_args()

    text = (ROOT / "fixtures" / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    float_model, tok = load_hf(args.model_dir)
    ref = TorchLM(float_model, tok)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    base = evaluate(ref, text, ctx=512, n_chunks=args.chunks, progress=False)
    rows.append({"method": "float", "ppl": base["ppl"], "kld": 0.0, "top1": 1.0})
    calibs = {}
    for src in args.calib.split(","):
        calibs[src] = load_calibration(
            src, tok, args.nsamples, args.seqlen, seed=0, model=float_model
        )

    def report() -> None:
        meta = {
            "model": str(args.model_dir),
            "chunks": args.chunks,
            "ctx": 512,
            "nsamples": args.nsamples,
            "seqlen": args.seqlen,
            "act_order": args.act_order,
            "sym": not args.asym,
            "eval": base["method"],
            "device": args.device,
        }
        (out / "bench_gptq_quality.json").write_text(
            json.dumps({"meta": meta, "rows": rows}, indent=2)
        )
        lines = [
            "# GPTQ vs RTN on SmolLM2-135M-Instruct (float export of the Q4_1 GGUF)",
            "",
            f"WikiText-2 test, first {args.chunks} windows of 512 tokens ({base['method']}); "
            f"KL divergence against the float model. GPTQ: {args.nsamples}×{args.seqlen} "
            f"calibration tokens, act-order {args.act_order}, "
            f"{'asymmetric' if args.asym else 'symmetric'} grids.",
            "",
            "| setting | method | calibration | KL div | PPL | top-1 | quantize s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r.get('setting', '-')} | {r['method']} | {r.get('calib', '-')} | "
                f"{r['kld']:.4f} | {r['ppl']:.2f} | {r['top1']:.3f} | "
                f"{r.get('seconds', 0):.0f} |"
            )
        (out / "bench_gptq_quality.md").write_text("\n".join(lines) + "\n")
        print(lines[-1], flush=True)

    report()
    for setting in args.settings.split(","):
        bits, group = (int(v) for v in setting.split(":"))
        spec = GridSpec(bits=bits, group_size=group, sym=not args.asym, act_order=args.act_order)
        runs = [("rtn", None)] + [("gptq", c) for c in calibs]
        for method, src in runs:
            model = copy.deepcopy(float_model)
            t0 = time.perf_counter()
            if method == "rtn":
                rtn_model(model, lambda _n, s=spec: s, progress=False)
            else:
                quantize_model(
                    model, calibs[src], lambda _n, s=spec: s, device=args.device, progress=False
                )
            secs = time.perf_counter() - t0
            res = evaluate(
                TorchLM(model, tok), text, ctx=512, n_chunks=args.chunks, ref=ref, progress=False
            )
            rows.append(
                {
                    "setting": f"{bits}-bit g{group}",
                    "method": method,
                    "calib": src or "-",
                    "kld": res["kld"],
                    "ppl": res["ppl"],
                    "top1": res["top1"],
                    "seconds": secs,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
            del model
            report()


if __name__ == "__main__":
    main()
