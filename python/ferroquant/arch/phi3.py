"""Phi-3 / Phi-4 (``Phi3MiniModel``): fused ``qkv_proj`` and ``gate_up_proj`` stay fused
(``attn_qkv``, ``ffn_up``); LongRoPE factors become ``rope_factors_long/short`` tensors."""

from __future__ import annotations

import math
from collections.abc import Iterable

import gguf
import numpy as np

from .base import Arch, ArchError


class Phi3(Arch):
    hf_architectures = ("Phi3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.PHI3

    def _dims(self) -> tuple[int, int, int]:
        n_embd = int(self.find(["hidden_size", "n_embd"]))
        n_head = int(self.find(["num_attention_heads", "n_head"]))
        rot = float(self.rope.get("partial_rotary_factor", 1.0))
        return n_embd, n_head, int(rot * n_embd) // n_head

    def _orig_ctx(self) -> int:
        value = self.rope.get("original_max_position_embeddings")
        if value is None:
            raise ArchError("config.json: Phi-3 needs original_max_position_embeddings")
        return int(value)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        n_embd, n_head, rope_dims = self._dims()
        w.add_context_length(int(self.find(["n_positions", "max_position_embeddings"])))
        w.add_rope_scaling_orig_ctx_len(self._orig_ctx())
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(int(self.find(["intermediate_size"])))
        w.add_block_count(self.block_count)
        w.add_head_count(n_head)
        w.add_head_count_kv(int(self.find(["num_key_value_heads", "n_head_kv"])))
        w.add_layer_norm_rms_eps(float(self.find(["rms_norm_eps"])))
        w.add_rope_dimension_count(rope_dims)
        w.add_rope_freq_base(float(self.rope.get("full_attention", self.rope)["rope_theta"]))
        w.add_sliding_window(int(self.cfg.get("sliding_window") or 0))
        long_f = self.rope.get("long_factor")
        if long_f:
            scale = int(self.find(["n_positions", "max_position_embeddings"])) / self._orig_ctx()
            kind = str(self.rope.get("rope_type", "")).lower()
            if kind in ("su", "longrope"):
                attn = (
                    math.sqrt(1 + math.log(scale) / math.log(self._orig_ctx()))
                    if scale > 1
                    else 1.0
                )
            elif kind == "yarn":
                attn = 0.1 * math.log(scale) + 1.0 if scale > 1 else 1.0
            else:
                raise ArchError(f"config.json: Phi-3 rope scaling {kind!r} is not supported")
            w.add_rope_scaling_attn_factors(attn)

    def extra_tensors(self) -> Iterable[tuple[str, np.ndarray]]:
        long_f, short_f = self.rope.get("long_factor"), self.rope.get("short_factor")
        if not long_f:
            return ()
        _, _, rope_dims = self._dims()
        if short_f is None or len(long_f) != len(short_f) or len(long_f) != rope_dims / 2:
            raise ArchError(
                f"config.json: rope long/short factors must have {rope_dims // 2} values"
            )
        return [
            ("rope_factors_long.weight", np.asarray(long_f, dtype=np.float32)),
            ("rope_factors_short.weight", np.asarray(short_f, dtype=np.float32)),
        ]
