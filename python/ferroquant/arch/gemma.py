"""Gemma 2 and Gemma 3 (text), as ``Gemma2Model`` / ``Gemma3Model`` in
``convert_hf_to_gguf.py``: HF's Gemma RMSNorm multiplies by ``1 + weight``, llama.cpp by
``weight``, so every ``*norm.weight`` gets ``+ 1``; embeddings are tied (``lm_head`` skipped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import gguf
import numpy as np

from .base import Arch


class Gemma2(Arch):
    hf_architectures = ("Gemma2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA2

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        c = self.cfg
        w.add_context_length(int(c["max_position_embeddings"]))
        w.add_embedding_length(int(c["hidden_size"]))
        w.add_block_count(self.block_count)
        w.add_feed_forward_length(int(c["intermediate_size"]))
        w.add_head_count(int(c["num_attention_heads"]))
        w.add_head_count_kv(int(c.get("num_key_value_heads") or c["num_attention_heads"]))
        w.add_layer_norm_rms_eps(float(c["rms_norm_eps"]))
        w.add_key_length(int(c["head_dim"]))
        w.add_value_length(int(c["head_dim"]))
        w.add_attn_logit_softcapping(float(c["attn_logit_softcapping"]))
        w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        w.add_sliding_window(int(c["sliding_window"]))

    def skip_tensor(self, hf_name: str) -> bool:
        return hf_name == "lm_head.weight" or super().skip_tensor(hf_name)

    def transform(self, hf_name: str, gguf_name: str, x: np.ndarray) -> np.ndarray:
        return x + 1.0 if hf_name.endswith("norm.weight") else x


class Gemma3(Gemma2):
    hf_architectures = ("Gemma3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA3

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        local = self.find(["rope_local_base_freq", "local_rope_theta"], optional=True)
        if local is not None and "sliding_attention" not in self.rope:
            self.rope["sliding_attention"] = {"rope_theta": local}
        self.n_vocab_real: Optional[int] = None

    def set_model_dir(self, model_dir: Path) -> None:
        """Gemma 3 drops embedding rows past the real vocabulary (``Gemma3Model``)."""
        tj = model_dir / "tokenizer.json"
        if (model_dir / "tokenizer.model").is_file():
            import sentencepiece  # only on the SentencePiece path

            sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
            n = sp.vocab_size()
            added = model_dir / "added_tokens.json"
            if added.is_file():
                ids = json.loads(added.read_text(encoding="utf-8")).values()
                n = max([n - 1, *ids]) + 1
            self.n_vocab_real = int(max(n, int(self.cfg.get("vocab_size", n))))
        elif tj.is_file():
            data = json.loads(tj.read_text(encoding="utf-8"))
            self.n_vocab_real = len(data["model"]["vocab"]) + len(data.get("added_tokens", []))

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        Arch.add_metadata(self, w)
        # Gemma3Model overrides these with its own defaults: drop the generic values first
        arch = self.gguf_arch_name()
        for key in (
            gguf.Keys.LLM.CONTEXT_LENGTH,
            gguf.Keys.Attention.HEAD_COUNT,
            gguf.Keys.Attention.LAYERNORM_RMS_EPS,
            gguf.Keys.Attention.KEY_LENGTH,
            gguf.Keys.Attention.VALUE_LENGTH,
            gguf.Keys.Rope.FREQ_BASE,
            gguf.Keys.Attention.HEAD_COUNT_KV,
        ):
            w.kv_data[0].pop(key.format(arch=arch), None)
        c = self.cfg
        w.add_context_length(int(c.get("max_position_embeddings", 131072)))
        w.add_head_count(int(c.get("num_attention_heads", 8)))
        w.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
        w.add_key_length(int(c.get("head_dim", 256)))
        w.add_value_length(int(c.get("head_dim", 256)))
        rope = self.rope.get("full_attention", self.rope)
        w.add_rope_freq_base(float(rope.get("rope_theta", 1_000_000.0)))
        if c.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        if c.get("sliding_window_pattern") != 1:
            w.add_sliding_window(int(c["sliding_window"]))
        w.add_head_count_kv(int(c.get("num_key_value_heads", 4)))

    def out_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if gguf_name == "token_embd.weight" and self.n_vocab_real is not None:
            return (min(shape[0], self.n_vocab_real), *shape[1:])
        return shape

    def transform(self, hf_name: str, gguf_name: str, x: np.ndarray) -> np.ndarray:
        if gguf_name == "token_embd.weight" and self.n_vocab_real is not None:
            x = x[: self.n_vocab_real]
        return super().transform(hf_name, gguf_name, x)
