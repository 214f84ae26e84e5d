"""Load our AutoAWQ GEMM checkpoint with transformers' AWQ integration and compare its logits
with the weights the checkpoint holds (our reader) and with the float model.

transformers >= 5 runs AWQ checkpoints through gptqmodel (on the CPU, its torch kernel); it is
not in the default venv: install it beside, e.g.
``pip install --no-deps --target DIR gptqmodel pypcre logbar device-smi tokenicer defuser
threadpoolctl`` and run with ``PYTHONPATH=DIR``.

    python benches/awq_transformers_check.py /work/team/smollm2-f32 [--ckpt DIR] [--chunks 2]

Without ``--ckpt`` the float model is written as an RTN checkpoint (no calibration: the layout,
not the method, is what this checks). Writes ``awq_transformers_check.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from ferroquant.eval import windows  # noqa: E402
from ferroquant.export.awq_checkpoint import load_checkpoint_weights, write_checkpoint  # noqa: E402
from ferroquant.quantize_api import load_hf  # noqa: E402


def _kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    lp, lq = torch.log_softmax(ref.double(), -1), torch.log_softmax(other.double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ckpt", help="an AWQ checkpoint of model_dir (default: write RTN)")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benches" / "results"))
    args = ap.parse_args()
    import transformers

    float_model, tok = load_hf(args.model_dir)
    ckpt = Path(args.ckpt) if args.ckpt else Path(tempfile.mkdtemp()) / "rtn-awq"
    if not args.ckpt:
        write_checkpoint(ckpt, float_model, args.group_size, source_dir=args.model_dir)
    ours = copy.deepcopy(float_model)
    sd = {k: torch.from_numpy(v) for k, v in load_checkpoint_weights(ckpt).items()}
    ours.load_state_dict(sd, strict=False)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        ckpt, dtype=torch.float16, device_map="cpu"
    ).eval()
    kinds = sorted({type(m).__name__ for m in loaded.model.layers[0].modules()})
    text = (ROOT / "fixtures" / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    ids = tok(text[:200000], add_special_tokens=False)["input_ids"]
    res = {"checkpoint": str(ckpt), "layer0_module_types": kinds, "chunks": []}
    for w in windows(ids, 512, args.chunks, tok.bos_token_id):
        x = torch.tensor([w])
        with torch.no_grad():
            f = float_model(input_ids=x).logits[0]
            o = ours(input_ids=x).logits[0]
            t = loaded(input_ids=x).logits[0].float()
        res["chunks"].append(
            {
                "max_abs_diff_transformers_vs_ours": float((t - o).abs().max()),
                "max_abs_logit": float(o.abs().max()),
                "kl_ours_vs_transformers": _kl(o, t),
                "kl_float_vs_ours": _kl(f, o),
                "kl_float_vs_transformers": _kl(f, t),
                "top1_agree_transformers_vs_ours": float(
                    (t.argmax(-1) == o.argmax(-1)).float().mean()
                ),
            }
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "awq_transformers_check.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    agree = np.mean([c["top1_agree_transformers_vs_ours"] for c in res["chunks"]])
    return 0 if agree > 0.98 else 1


if __name__ == "__main__":
    sys.exit(main())
