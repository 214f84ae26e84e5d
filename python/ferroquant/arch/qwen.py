"""Qwen2 and Qwen3 (``Qwen2Model`` / ``Qwen3Model`` in ``convert_hf_to_gguf.py``): no Q/K
permutation (llama.cpp runs them with NeoX rotary); Qwen2 has q/k/v biases, Qwen3 has
per-head q/k RMS norms instead."""

from __future__ import annotations

from typing import Any, Optional

import gguf

from .base import LLAMA_LIKE_HF_NAMES, Arch, hf_name_from_table
from .llama import llama_like_config


class Qwen2(Arch):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    exportable = True
    hf_class = "Qwen2ForCausalLM"
    hf_model_type = "qwen2"

    @classmethod
    def hf_config(cls, meta: dict[str, Any]) -> dict[str, Any]:
        cfg = llama_like_config(meta, cls.hf_class, cls.hf_model_type)
        cfg.pop("head_dim", None)
        return cfg

    @classmethod
    def hf_tensor_name(cls, gguf_name: str) -> Optional[str]:
        return hf_name_from_table(gguf_name, LLAMA_LIKE_HF_NAMES)


class Qwen3(Qwen2):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    hf_class = "Qwen3ForCausalLM"
    hf_model_type = "qwen3"

    @classmethod
    def hf_config(cls, meta: dict[str, Any]) -> dict[str, Any]:
        cfg = llama_like_config(meta, cls.hf_class, cls.hf_model_type)
        cfg["attention_bias"] = False
        return cfg
