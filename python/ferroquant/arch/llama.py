"""Llama family (Llama 2/3, TinyLlama, SmolLM2) and Mistral: ``gguf.MODEL_ARCH.LLAMA``.

llama.cpp applies rotary embeddings to adjacent pairs (GPT-J style) while HF Llama rotates
the two halves of each head (NeoX style), so ``convert_hf_to_gguf.py`` permutes the rows of
``q_proj``/``k_proj`` (``LlamaModel.permute``); export undoes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional

import gguf
import numpy as np

from .base import LLAMA_LIKE_HF_NAMES, Arch, ArchError, hf_name_from_table


def permute_qk(x: np.ndarray, n_head: int) -> np.ndarray:
    """HF (half-split) rows -> llama.cpp (interleaved) rows, per head."""
    rows = x.shape[0]
    if rows % (2 * n_head):
        raise ArchError(f"cannot permute {rows} rows into {n_head} rotary heads")
    return x.reshape(n_head, 2, rows // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def unpermute_qk(x: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`."""
    rows = x.shape[0]
    if rows % (2 * n_head):
        raise ArchError(f"cannot un-permute {rows} rows from {n_head} rotary heads")
    return x.reshape(n_head, rows // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def meta_get(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    arch = meta.get("general.architecture", "")
    return meta.get(f"{arch}.{key}", default)


def _f32_to_decimal(x: float) -> float:
    """The shortest decimal that rounds to the same float32."""
    f = np.float32(x)
    for digits in range(1, 10):
        v = float(f"{float(f):.{digits}g}")
        if np.float32(v) == f:
            return v
    return float(f)


def llama_like_config(meta: dict[str, Any], hf_class: str, model_type: str) -> dict[str, Any]:
    """The config.json fields every llama-like family shares, from GGUF metadata."""
    n_embd = int(meta_get(meta, "embedding_length"))
    n_head = int(meta_get(meta, "attention.head_count"))
    n_kv = int(meta_get(meta, "attention.head_count_kv", n_head))
    head_dim = meta_get(meta, "attention.key_length") or meta_get(meta, "rope.dimension_count")
    head_dim = int(head_dim) if head_dim else n_embd // n_head
    tokens = meta.get("tokenizer.ggml.tokens") or []
    vocab = int(meta_get(meta, "vocab_size", len(tokens)) or len(tokens))
    cfg: dict[str, Any] = {
        "architectures": [hf_class],
        "model_type": model_type,
        "hidden_size": n_embd,
        "intermediate_size": int(meta_get(meta, "feed_forward_length")),
        "num_hidden_layers": int(meta_get(meta, "block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": int(meta_get(meta, "context_length", 2048)),
        # GGUF stores float32: 9.999999747e-06 is the config's 1e-05
        "rms_norm_eps": _f32_to_decimal(meta_get(meta, "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": _f32_to_decimal(meta_get(meta, "rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "use_cache": True,
    }
    scaling = meta_get(meta, "rope.scaling.type")
    factor = meta_get(meta, "rope.scaling.factor")
    if scaling in ("linear", "yarn") and factor:
        rs: dict[str, Any] = {"rope_type": scaling, "factor": float(factor)}
        orig = meta_get(meta, "rope.scaling.original_context_length")
        if scaling == "yarn" and orig:
            rs["original_max_position_embeddings"] = int(orig)
        cfg["rope_scaling"] = rs
    for key, field in (
        ("bos_token_id", "bos"),
        ("eos_token_id", "eos"),
        ("pad_token_id", "padding"),
    ):
        value = meta.get(f"tokenizer.ggml.{field}_token_id")
        if value is not None:
            cfg[key] = int(value)
    return cfg


class Llama(Arch):
    hf_architectures = ("LlamaForCausalLM", "LLaMAForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    exportable = True
    hf_class = "LlamaForCausalLM"
    hf_model_type = "llama"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.n_head = int(self.find(["num_attention_heads", "n_heads"]))
        self.n_kv = int(
            self.find(["num_key_value_heads", "n_kv_heads"], optional=True) or self.n_head
        )

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        w.add_vocab_size(int(self.cfg["vocab_size"]))
        rope_dim = self.cfg.get("head_dim") or int(self.cfg["hidden_size"]) // self.n_head
        w.add_rope_dimension_count(int(rope_dim))

    def transform(self, hf_name: str, gguf_name: str, x: np.ndarray) -> np.ndarray:
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_qk(x, self.n_head)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_qk(x, self.n_kv)
        return x

    def extra_tensors(self) -> Iterable[tuple[str, np.ndarray]]:
        # Llama 3.1+ "llama3" rope scaling becomes a rope_freqs tensor (LlamaModel).
        rope = self.rope.get("full_attention", self.rope)
        if str(rope.get("rope_type", "")).lower() != "llama3":
            return ()
        base = float(rope.get("rope_theta", 10000.0))
        dim = int(self.cfg.get("head_dim") or int(self.cfg["hidden_size"]) // self.n_head)
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        factor = float(rope.get("factor", 8.0))
        low, high = (
            float(rope.get("low_freq_factor", 1.0)),
            float(rope.get("high_freq_factor", 4.0)),
        )
        old_ctx = float(rope.get("original_max_position_embeddings", 8192))
        low_wl, high_wl = old_ctx / low, old_ctx / high
        out = []
        for f in freqs:
            wl = 2 * math.pi / f
            if wl < high_wl:
                out.append(1.0)
            elif wl > low_wl:
                out.append(factor)
            else:
                smooth = (old_ctx / wl - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return [("rope_freqs.weight", np.asarray(out, dtype=np.float32))]

    @classmethod
    def hf_config(cls, meta: dict[str, Any]) -> dict[str, Any]:
        cfg = llama_like_config(meta, cls.hf_class, cls.hf_model_type)
        cfg.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
        return cfg

    @classmethod
    def hf_tensor_name(cls, gguf_name: str) -> Optional[str]:
        return hf_name_from_table(gguf_name, LLAMA_LIKE_HF_NAMES)

    @classmethod
    def untransform(cls, gguf_name: str, x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        if gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            return unpermute_qk(x, int(meta_get(meta, "attention.head_count")))
        if gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            n_head = int(meta_get(meta, "attention.head_count"))
            return unpermute_qk(x, int(meta_get(meta, "attention.head_count_kv", n_head)))
        return x


class Mistral(Llama):
    """Mistral checkpoints convert exactly like Llama (``convert_hf_to_gguf.py`` LlamaModel)."""

    hf_architectures = ("MistralForCausalLM",)
    exportable = False
