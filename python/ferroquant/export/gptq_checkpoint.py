"""Hugging Face GPTQ checkpoints, in the layout AutoGPTQ / GPTQModel write and transformers'
GPTQ integration loads.

Per quantized linear ``P`` (out_features × in_features, ``bits`` ∈ {2, 3, 4, 8}, groups of
``group_size`` input columns, ``G = ceil(in / group_size)``):

| tensor        | dtype   | shape                    | content                                    |
|---------------|---------|--------------------------|--------------------------------------------|
| ``P.qweight`` | int32   | (in · bits / 32, out)    | codes packed along the input axis          |
| ``P.qzeros``  | int32   | (G, out · bits / 32)     | zero points packed along the output axis   |
| ``P.scales``  | float16 | (G, out)                 | group scales                               |
| ``P.g_idx``   | int32   | (in,)                    | group of each input column (act-order)     |

Packing: codes end to end, least significant bit first, in 32-bit words (for 3 bits, 32
codes fill 3 words). ``checkpoint_format: "gptq"`` (v1) stores ``zero - 1`` (AutoGPTQ's
historical offset); the weight is ``scales[g_idx[i], o] * (q[i, o] - (z[g_idx[i], o] + 1))``.
A zero point of 0 (asymmetric groups with no negative weight) does not survive the v1 offset,
so such checkpoints are written as ``gptq_v2`` (zeros stored as they are).

``config.json`` gets ``quantization_config`` (``quant_method: "gptq"``, bits, group_size,
desc_act, sym, ...). The directory is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .. import _native

PathLike = Union[str, Path]
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
)


def pack_linear(res: dict[str, Any], bits: int, v2: bool = False) -> dict[str, np.ndarray]:
    """qweight/qzeros/scales/g_idx of one GPTQ result (codes (out, in), scales (out, G))."""
    codes = np.ascontiguousarray(res["codes"], dtype=np.uint32)
    out_f, in_f = codes.shape
    if (in_f * bits) % 32 or (out_f * bits) % 32:
        raise ValueError(
            f"{out_f}x{in_f} weight: GPTQ packing needs in and out features to be multiples "
            f"of {32 // np.gcd(32, bits)} for {bits} bits"
        )
    qweight = _native.pack_bits(codes, bits).T
    zeros = np.rint(res["zeros"]).astype(np.int64).T  # (G, out)
    stored = zeros if v2 else zeros - 1
    if stored.min() < 0:
        raise ValueError("zero point 0 cannot be stored in the v1 GPTQ format; use v2")
    qzeros = _native.pack_bits(np.ascontiguousarray(stored, dtype=np.uint32), bits)
    return {
        "qweight": np.ascontiguousarray(qweight).view(np.int32),
        "qzeros": qzeros.view(np.int32),
        "scales": np.ascontiguousarray(res["scales"].T.astype(np.float16)),
        "g_idx": np.ascontiguousarray(res["g_idx"], dtype=np.int32),
    }


def unpack_linear(
    tensors: dict[str, np.ndarray], prefix: str, bits: int, v2: bool = False
) -> np.ndarray:
    """The float32 weight (out, in) of ``prefix`` in a GPTQ checkpoint's tensors."""
    try:
        qweight = tensors[f"{prefix}.qweight"]
        qzeros = tensors[f"{prefix}.qzeros"]
        scales = tensors[f"{prefix}.scales"].astype(np.float32)
        g_idx = tensors[f"{prefix}.g_idx"].astype(np.int64)
    except KeyError as err:
        raise ValueError(f"GPTQ checkpoint: tensor {err.args[0]!r} missing") from None
    n_groups, out_f = scales.shape
    in_f = qweight.shape[0] * 32 // bits
    if g_idx.shape != (in_f,) or g_idx.min() < 0 or g_idx.max() >= n_groups:
        raise ValueError(f"GPTQ checkpoint: {prefix}.g_idx does not match {in_f} columns")
    q = _native.unpack_bits(np.ascontiguousarray(qweight.T).view(np.uint32), bits, in_f)
    z = _native.unpack_bits(np.ascontiguousarray(qzeros).view(np.uint32), bits, out_f)
    z = z.astype(np.float32) + (0 if v2 else 1)
    zt, st = z[g_idx].T, scales[g_idx].T  # (out, in)
    return st * (q.astype(np.float32) - zt)


def quantization_config(
    bits: int, group_size: int, sym: bool, act_order: bool, static_groups: bool,
    percdamp: float, v2: bool
) -> dict[str, Any]:  # fmt: skip
    from .. import __version__

    return {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": act_order,
        "sym": sym,
        "static_groups": static_groups,
        "damp_percent": percdamp,
        "true_sequential": True,
        "checkpoint_format": "gptq_v2" if v2 else "gptq",
        "pack_dtype": "int32",
        "meta": {"quantizer": [f"ferroquant:{__version__}"]},
    }


def write_checkpoint(
    out_dir: PathLike,
    model: Any,
    results: dict[str, dict[str, Any]],
    qconfig: dict[str, Any],
    source_dir: Optional[PathLike] = None,
) -> Path:
    """Write ``model`` (its float tensors) with the GPTQ ``results`` as a GPTQ checkpoint."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"output {out_dir} exists and is not an empty directory")
    bits = int(qconfig["bits"])
    v2 = any(float(np.min(r["zeros"])) < 1 for r in results.values())
    qconfig = dict(qconfig, checkpoint_format="gptq_v2" if v2 else "gptq")
    tensors: dict[str, np.ndarray] = {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        prefix = name.rsplit(".", 1)[0]
        if prefix in results and name.endswith(".weight"):
            continue
        arr = t.detach().float().cpu().numpy()
        tensors[name] = np.ascontiguousarray(arr.astype(np.float16))
    for prefix, res in results.items():
        for k, v in pack_linear(res, bits, v2).items():
            tensors[f"{prefix}.{k}"] = v

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg["quantization_config"] = qconfig
        cfg["torch_dtype"] = "float16"
        cfg["dtype"] = "float16"
        cfg["use_cache"] = True
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        (tmp / "quantize_config.json").write_text(json.dumps(qconfig, indent=2) + "\n")
        if source_dir is not None:
            for fname in _TOKENIZER_FILES:
                src = Path(source_dir) / fname
                if src.is_file():
                    shutil.copy2(src, tmp / fname)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_checkpoint_weights(ckpt_dir: PathLike) -> dict[str, np.ndarray]:
    """Every weight of a GPTQ checkpoint as float32, quantized linears dequantized."""
    from safetensors.numpy import load_file

    ckpt_dir = Path(ckpt_dir)
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") != "gptq":
        raise ValueError(f"{ckpt_dir}/config.json: not a GPTQ checkpoint")
    bits = int(qc["bits"])
    v2 = qc.get("checkpoint_format") == "gptq_v2"
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(ckpt_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    out: dict[str, np.ndarray] = {}
    prefixes = {k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")}
    for p in prefixes:
        out[f"{p}.weight"] = unpack_linear(tensors, p, bits, v2)
    skip = (".qweight", ".qzeros", ".scales", ".g_idx")
    for k, v in tensors.items():
        if not k.endswith(skip):
            out[k] = v.astype(np.float32)
    return out
