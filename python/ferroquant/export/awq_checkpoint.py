"""Hugging Face AWQ checkpoints in AutoAWQ's GEMM layout (``version: "gemm"``), which
transformers' AWQ integration, AutoAWQ and vLLM load.

Per quantized linear ``P`` (``out`` × ``in`` weight, 4 bits, groups of ``group_size`` input
columns, ``G = in / group_size``):

| tensor        | dtype   | shape            | content                                        |
|---------------|---------|------------------|------------------------------------------------|
| ``P.qweight`` | int32   | (in, out / 8)    | codes, 8 output columns per word               |
| ``P.qzeros``  | int32   | (G, out / 8)     | zero points, packed like ``qweight``           |
| ``P.scales``  | float16 | (G, out)         | group scales                                   |
| ``P.bias``    | float16 | (out,)           | when the linear has one                        |

Packing (both ``qweight`` and ``qzeros``): along the *output* axis; word ``c`` of a row holds
the 4-bit values of output columns ``8c .. 8c+7`` in the interleaved order
``[0, 2, 4, 6, 1, 3, 5, 7]``: nibble ``k`` (bits ``4k .. 4k+3``) is column ``8c + ORDER[k]``
(the order the GEMM kernel dequantizes in). The weight is
``W[o, i] = scales[g, o] * (q[i, o] - z[g, o])`` with ``g = i // group_size`` (zero points are
stored as they are, ``0 .. 15``; no GPTQ-style offset).

The grid is AWQ's asymmetric one: per group ``scale = max(max - min, 1e-5) / 15``,
``zero = clamp(round(-min / scale), 0, 15)``, ``q = clamp(round(w / scale) + zero, 0, 15)``,
with ``scale`` rounded to float16 first, so the stored scales give back exactly the weights
the codes were rounded for. ``min`` / ``max`` are those of the group extended to hold 0 (as in
GPTQ's asymmetric grid): AutoAWQ's plain ones clip a one-signed group at ``max - min``, since
its zero point cannot go below 0. The layout is the same either way.

``config.json`` gets ``quantization_config`` ``{quant_method: "awq", version: "gemm",
bits: 4, group_size, zero_point: true, modules_to_not_convert}``; only the decoder layers'
linears are quantized (the LM head and embeddings stay float16). The directory is written under
a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

PathLike = Union[str, Path]
BITS = 4
PACK = 32 // BITS  # values per int32 word
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k holds column 8c + ORDER[k]
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


def quantize_weight(w: np.ndarray, group_size: int) -> dict[str, np.ndarray]:
    """AWQ's 4-bit zero-point grid for one weight (out, in): ``codes`` (out, in) uint8,
    ``zeros`` (out, G) uint8, ``scales`` (out, G) float16 and ``dequant`` (out, in) float32,
    the weight the three stand for."""
    w = np.asarray(w, dtype=np.float32)
    out_f, in_f = w.shape
    gs = in_f if group_size == -1 else int(group_size)
    if gs <= 0 or in_f % gs:
        raise ValueError(f"{in_f} input columns do not split into groups of {gs}")
    qmax = 2**BITS - 1
    g = w.reshape(out_f, in_f // gs, gs)
    hi, lo = np.maximum(g.max(axis=2), 0), np.minimum(g.min(axis=2), 0)
    scales = (np.maximum(hi - lo, np.float32(1e-5)) / np.float32(qmax)).astype(np.float16)
    s = scales.astype(np.float32)
    zeros = np.clip(np.rint(-lo / s), 0, qmax)
    codes = np.clip(np.rint(g / s[..., None]) + zeros[..., None], 0, qmax)
    deq = (codes - zeros[..., None]) * s[..., None]
    return {
        "codes": codes.reshape(out_f, in_f).astype(np.uint8),
        "zeros": zeros.astype(np.uint8),
        "scales": scales,
        "dequant": deq.reshape(out_f, in_f).astype(np.float32),
    }


def pack_columns(values: np.ndarray) -> np.ndarray:
    """(rows, cols) 4-bit values -> (rows, cols / 8) int32 words in AWQ's interleaved order."""
    v = np.ascontiguousarray(values, dtype=np.uint32)
    rows, cols = v.shape
    if cols % PACK:
        raise ValueError(f"{cols} columns do not pack into words of {PACK}")
    if v.size and int(v.max()) > 2**BITS - 1:
        raise ValueError(f"values above {2**BITS - 1} do not fit {BITS} bits")
    v = v.reshape(rows, cols // PACK, PACK)[:, :, list(ORDER)]
    shifts = (np.arange(PACK, dtype=np.uint32) * BITS).reshape(1, 1, PACK)
    words = np.bitwise_or.reduce(v << shifts, axis=2).astype(np.uint32)
    return np.ascontiguousarray(words).view(np.int32)


def pack_linear(w: np.ndarray, group_size: int, bias: Optional[np.ndarray] = None) -> dict:
    """The checkpoint tensors of one linear (weight (out, in)), and its ``dequant`` weight."""
    out_f = np.shape(w)[0]
    if out_f % PACK:
        raise ValueError(f"{out_f} output features: the AWQ GEMM layout needs a multiple of 8")
    q = quantize_weight(w, group_size)
    tensors = {
        "qweight": pack_columns(q["codes"].T),
        "qzeros": pack_columns(q["zeros"].T),
        "scales": np.ascontiguousarray(q["scales"].T),
    }
    if bias is not None:
        tensors["bias"] = np.asarray(bias, dtype=np.float16)
    return {"tensors": tensors, "dequant": q["dequant"]}


def quantization_config(group_size: int, modules_to_not_convert: Optional[list[str]]) -> dict:
    """``config.json``'s ``quantization_config`` (transformers' ``AwqConfig`` fields)."""
    return {
        "quant_method": "awq",
        "version": "gemm",
        "bits": BITS,
        "group_size": group_size,
        "zero_point": True,
        "modules_to_not_convert": modules_to_not_convert,
    }


def autoawq_quant_config(qconfig: dict) -> dict:
    """``quant_config.json``: the same in AutoAWQ's own field names."""
    return {
        "zero_point": qconfig["zero_point"],
        "q_group_size": qconfig["group_size"],
        "w_bit": qconfig["bits"],
        "version": "GEMM",
        "modules_to_not_convert": qconfig["modules_to_not_convert"],
    }


def _decoder_linears(model: Any) -> dict[str, Any]:
    """Full name -> nn.Linear of every linear inside the decoder layers."""
    import torch

    from ..methods.gptq import decoder_layers

    layers = decoder_layers(model)
    by_id = {id(layer): i for i, layer in enumerate(layers)}
    out: dict[str, Any] = {}
    for name, mod in model.named_modules():
        if id(mod) in by_id:
            for sub, m in mod.named_modules():
                if isinstance(m, torch.nn.Linear):
                    out[f"{name}.{sub}"] = m
    if not out:
        raise ValueError("no linear layers found inside the decoder layers")
    return out


def write_checkpoint(
    out_dir: PathLike,
    model: Any,
    group_size: int,
    source_dir: Optional[PathLike] = None,
) -> dict[str, Any]:
    """Write the (AWQ-scaled) float ``model`` as an AutoAWQ GEMM checkpoint; returns
    ``{"dir", "linears", "dequant": {prefix: float32 weight}}`` (what the checkpoint holds)."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"output {out_dir} exists and is not an empty directory")
    linears = _decoder_linears(model)
    packed: dict[str, dict[str, Any]] = {}
    for prefix, lin in linears.items():
        w = lin.weight.detach().float().cpu().numpy()
        b = None if lin.bias is None else lin.bias.detach().float().cpu().numpy()
        try:
            packed[prefix] = pack_linear(w, group_size, b)
        except ValueError as err:
            raise ValueError(f"{prefix}: {err}") from None
    tensors: dict[str, np.ndarray] = {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        prefix = name.rsplit(".", 1)[0]
        if prefix in packed:
            continue
        arr = t.detach().float().cpu().numpy()
        tensors[name] = np.ascontiguousarray(arr.astype(np.float16))
    for prefix, p in packed.items():
        for k, v in p["tensors"].items():
            tensors[f"{prefix}.{k}"] = v
    skipped = ["lm_head"] if hasattr(model, "lm_head") else None
    qconfig = quantization_config(group_size, skipped)

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        from .. import __version__

        meta = {"format": "pt", "quantizer": f"ferroquant:{__version__}"}
        save_file(tensors, str(tmp / "model.safetensors"), metadata=meta)
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["quantization_config"] = qconfig
        cfg["torch_dtype"] = "float16"
        cfg["dtype"] = "float16"
        cfg["use_cache"] = True
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        aq = autoawq_quant_config(qconfig)
        (tmp / "quant_config.json").write_text(json.dumps(aq, indent=2) + "\n")
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
    return {
        "dir": out_dir,
        "linears": len(packed),
        "dequant": {k: v["dequant"] for k, v in packed.items()},
    }


def unpack_columns(words: np.ndarray, cols: int) -> np.ndarray:
    """Inverse of :func:`pack_columns`: (rows, cols / 8) int32 -> (rows, cols) uint8."""
    w = np.ascontiguousarray(words).view(np.uint32)
    rows, n_words = w.shape
    if n_words * PACK != cols:
        raise ValueError(f"{n_words} words per row hold {n_words * PACK} values, not {cols}")
    shifts = (np.arange(PACK, dtype=np.uint32) * BITS).reshape(1, 1, PACK)
    nib = (w[:, :, None] >> shifts) & np.uint32(2**BITS - 1)  # nibble k -> column ORDER[k]
    out = np.empty((rows, n_words, PACK), dtype=np.uint8)
    out[:, :, list(ORDER)] = nib
    return out.reshape(rows, cols)


def load_checkpoint_weights(ckpt_dir: PathLike) -> dict[str, np.ndarray]:
    """Every weight of an AWQ GEMM checkpoint as float32, quantized linears dequantized."""
    from safetensors.numpy import load_file

    ckpt_dir = Path(ckpt_dir)
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{ckpt_dir}: no config.json")
    qc = json.loads(cfg_path.read_text()).get("quantization_config") or {}
    if qc.get("quant_method") != "awq" or str(qc.get("version", "gemm")).lower() != "gemm":
        raise ValueError(f"{cfg_path}: not an AWQ GEMM checkpoint")
    if int(qc.get("bits", 4)) != BITS:
        raise ValueError(f"{cfg_path}: {qc.get('bits')} bits; only 4-bit AWQ GEMM is read")
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(ckpt_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    out: dict[str, np.ndarray] = {}
    for p in sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")):
        try:
            qweight, qzeros = tensors[f"{p}.qweight"], tensors[f"{p}.qzeros"]
            scales = tensors[f"{p}.scales"].astype(np.float32)
        except KeyError as err:
            raise ValueError(f"{ckpt_dir}: tensor {err.args[0]!r} missing") from None
        n_groups, out_f = scales.shape
        in_f = qweight.shape[0]
        if in_f % n_groups or qzeros.shape != (n_groups, out_f // PACK):
            raise ValueError(f"{ckpt_dir}: {p}: qweight/qzeros/scales shapes do not agree")
        gs = in_f // n_groups
        q = unpack_columns(qweight, out_f).astype(np.float32)  # (in, out)
        z = unpack_columns(qzeros, out_f).astype(np.float32)  # (G, out)
        w = (q - np.repeat(z, gs, axis=0)) * np.repeat(scales, gs, axis=0)
        out[f"{p}.weight"] = np.ascontiguousarray(w.T)
    for k, v in tensors.items():
        if not k.endswith((".qweight", ".qzeros", ".scales")):
            out[k] = v.astype(np.float32)
    return out


__all__ = [
    "ORDER",
    "autoawq_quant_config",
    "load_checkpoint_weights",
    "pack_columns",
    "pack_linear",
    "quantization_config",
    "quantize_weight",
    "unpack_columns",
    "write_checkpoint",
]
