"""llama-quantize's file types ("presets"): the tensor type each tensor gets.

A port of ``llama_tensor_get_type`` and its helpers in llama.cpp ``src/llama-quant.cpp``
(the version vendored by llama-cpp-python 0.3.36), restricted to the non-MoE, non-IQ1/2/3
file types ferroquant writes: the per-category rules (attn_v, ffn_down, attn_output,
output/token_embd with tied embeddings), the layer-dependent ``use_more_bits`` choice and
the fallback for rows that do not split into 256-blocks. ``tests/test_presets.py`` holds the
result equal to llama.cpp's own choice on the same file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["FILE_TYPES", "ModelShape", "TensorPlan", "file_type", "plan", "supported"]

T = GGMLQuantizationType


@dataclass(frozen=True)
class FileType:
    name: str
    ftype: int  # llama_ftype / gguf.LlamaFileType value written to general.file_type
    default: T


# name -> (llama_ftype, default tensor type), llama_ftype_get_default_type
FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        FileType("F32", 0, T.F32),
        FileType("F16", 1, T.F16),
        FileType("Q4_0", 2, T.Q4_0),
        FileType("Q4_1", 3, T.Q4_1),
        FileType("Q8_0", 7, T.Q8_0),
        FileType("Q5_0", 8, T.Q5_0),
        FileType("Q5_1", 9, T.Q5_1),
        FileType("Q2_K", 10, T.Q2_K),
        FileType("Q3_K_S", 11, T.Q3_K),
        FileType("Q3_K_M", 12, T.Q3_K),
        FileType("Q3_K_L", 13, T.Q3_K),
        FileType("Q4_K_S", 14, T.Q4_K),
        FileType("Q4_K_M", 15, T.Q4_K),
        FileType("Q5_K_S", 16, T.Q5_K),
        FileType("Q5_K_M", 17, T.Q5_K),
        FileType("Q6_K", 18, T.Q6_K),
        FileType("IQ4_NL", 25, T.IQ4_NL),
        FileType("IQ4_XS", 30, T.IQ4_XS),
        FileType("BF16", 32, T.BF16),
    )
}
# llama-quantize's short aliases
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def supported() -> list[str]:
    return list(FILE_TYPES) + list(_ALIASES)


def file_type(name: str) -> FileType:
    key = name.strip().upper()
    key = _ALIASES.get(key, key)
    ft = FILE_TYPES.get(key)
    if ft is None:
        raise ValueError(f"unknown type {name!r}; supported: {', '.join(supported())}")
    return ft


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters the rules look at."""

    arch: str  # GGUF general.architecture
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # numpy order
    src_type: T
    dst_type: T
    fallback: bool  # the preferred type did not fit the row length


def _n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: numpy shape reversed into ne, trailing 1s dropped."""
    ne = list(reversed(shape))
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return len(ne)


_NO_QUANT_PARTS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "attn_rel_b.weight",
    "time_mix_first.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
)


def allows_quantization(name: str, shape: Sequence[int]) -> bool:
    """tensor_allows_quantization (for the architectures ferroquant converts)."""
    if _n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if any(part in name for part in _NO_QUANT_PARTS):
        return False
    return name not in ("position_embd.weight", "token_types.weight")


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if part in name:
            return cat
    return "other"


_FALLBACK = {
    T.IQ4_XS: T.IQ4_NL,
    T.Q2_K: T.Q4_0,
    T.Q3_K: T.Q4_0,
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
}


def _block(t: T) -> int:
    return GGML_QUANT_SIZES[t][0]


def _is_quantized(t: T) -> bool:
    return t not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)


def _fallback(t: T, ncols: int) -> tuple[T, bool]:
    """tensor_type_fallback: a type whose block divides the row, else F16."""
    if ncols % _block(t) == 0:
        return t, False
    out = _FALLBACK.get(t)
    if out is None:
        if _block(t) > 32:
            raise ValueError(f"no fallback type is defined for {t.name}")
        out = t
    if ncols % _block(out):
        out = T.F16
    return out, True


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def _layer_order_key(name: str) -> tuple[int, str]:
    """llama_model_loader's weight_name_comparer: by block number, then by name."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


class _State:
    def __init__(self, names: Sequence[str], model: ModelShape, has_imatrix: bool) -> None:
        cats = [_category(n) for n in names]
        self.n_attention_wv = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in cats)
        self.has_tied_embeddings = "output" not in cats
        self.n_layer = model.n_layer
        self.i_attention_wv = 0
        self.i_ffn_down = 0
        self.i_ffn_gate = 0
        self.i_ffn_up = 0
        self.has_imatrix = has_imatrix


def _layer(st_index: int, model: ModelShape, name: str) -> int:
    if model.n_expert > 1:
        m = re.match(r"blk\.(\d+)\.", name)
        if not m:
            raise ValueError(f"cannot find the layer of tensor {name!r}")
        return int(m.group(1))
    return st_index


def _impl(st: _State, new: T, name: str, ncols: int, ft: str, model: ModelShape) -> T:
    """llama_tensor_get_type_impl for the supported file types."""
    cat = _category(name)
    n_layer = st.n_layer
    falcon = model.arch == "falcon"
    if cat == "output" or (st.has_tied_embeddings and cat == "token_embd"):
        if falcon or ncols % _block(new):
            return T.Q8_0
        return new if new == T.Q8_0 else T.Q6_K
    if cat == "token_embd":
        return new
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        gqa = model.n_gqa
        if ft == "Q2_K":
            new = T.Q4_K if gqa >= 4 else T.Q3_K
        elif ft == "Q3_K_M":
            new = T.Q5_K if st.i_attention_wv < 2 else T.Q4_K
        elif ft == "Q3_K_L":
            new = T.Q5_K
        elif ft in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
            new = T.Q5_K
        elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(st.i_attention_wv, st.n_attention_wv):
            new = T.Q6_K
        elif ft == "Q4_K_S" and st.i_attention_wv < 4:
            new = T.Q5_K
        if model.is_70b and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K
        if model.n_expert == 8:
            new = T.Q8_0
        st.i_attention_wv += 1
        return new
    if cat == "attn_k":
        return T.Q8_0 if model.n_expert == 8 else new
    if cat == "ffn_down":
        i = _layer(st.i_ffn_down, model, name)
        if ft == "Q2_K":
            new = T.Q3_K
        elif ft == "Q3_K_M":
            if i < n_layer // 16:
                new = T.Q5_K
            elif not falcon or _use_more_bits(i, n_layer):
                new = T.Q4_K
            else:
                new = T.Q3_K
        elif ft == "Q3_K_L":
            new = T.Q4_K if falcon else T.Q5_K
        elif ft == "Q4_K_M":
            if falcon:
                new = (
                    T.Q6_K
                    if i < n_layer // 16
                    else T.Q5_K
                    if _use_more_bits(i, n_layer)
                    else T.Q4_K
                )
            elif _use_more_bits(i, n_layer):
                new = T.Q6_K
        elif i < n_layer // 8 and ft in ("IQ4_NL", "IQ4_XS") and not st.has_imatrix:
            new = T.Q5_K
        elif ft == "Q5_K_M" and _use_more_bits(i, n_layer):
            new = T.Q6_K
        elif ft == "Q4_K_S" and not falcon and i < n_layer // 8:
            new = T.Q5_K
        elif ft in ("Q4_0", "Q5_0") and st.has_imatrix and i < n_layer // 8:
            new = T.Q4_1 if ft == "Q4_0" else T.Q5_1
        st.i_ffn_down += 1
        return new
    if cat == "attn_output":
        if not falcon:
            if model.n_expert == 8:
                if ft in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS"):
                    new = T.Q5_K
            elif ft == "Q2_K":
                new = T.Q3_K
            elif ft == "Q3_K_M":
                new = T.Q4_K
            elif ft == "Q3_K_L":
                new = T.Q5_K
        elif ft == "Q3_K_L":
            new = T.Q4_K
        return new
    if cat == "ffn_gate":
        st.i_ffn_gate += 1
    elif cat == "ffn_up":
        st.i_ffn_up += 1
    return new


def plan(
    tensors: Sequence[tuple[str, tuple[int, ...], T]],
    ftype_name: str,
    model: ModelShape,
    has_imatrix: bool = False,
) -> list[TensorPlan]:
    """Each tensor's target type for ``ftype_name``, in the input order.

    ``tensors`` holds (GGUF name, numpy shape, current type). The rules run in llama.cpp's
    tensor order (block number, then name) because some depend on a running count.
    """
    ft = file_type(ftype_name)
    names = [t[0] for t in tensors]
    st = _State(names, model, has_imatrix)
    out: dict[str, TensorPlan] = {}
    for name, shape, src in sorted(tensors, key=lambda t: _layer_order_key(t[0])):
        shape = tuple(int(v) for v in shape)
        if not allows_quantization(name, shape):
            out[name] = TensorPlan(name, shape, src, src, False)
            continue
        new = ft.default
        fell_back = False
        if _is_quantized(new):
            new = _impl(st, new, name, shape[-1], ft.name, model)
            new, fell_back = _fallback(new, shape[-1])
        out[name] = TensorPlan(name, shape, src, new, fell_back)
    return [out[n] for n in names]
