"""The shared part of every architecture: metadata keys and tensor names as
llama.cpp's ``convert_hf_to_gguf.py`` (``TextModel``) writes them, and their inverse."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Optional

import gguf
import numpy as np


class ArchError(ValueError):
    """An architecture or config that cannot be converted; the message says why."""


# HF tensors llama.cpp never writes.
_SKIP_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


class Arch:
    """HF <-> GGUF rules for one model family. Subclasses override the hooks they need."""

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    # GGUF -> HF export support: the HF class and model_type written to config.json
    exportable: ClassVar[bool] = False
    hf_class: ClassVar[str] = ""
    hf_model_type: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any]) -> None:
        if isinstance(config.get("text_config"), dict):
            config = {**config, **config["text_config"]}
        self.cfg = config
        self.block_count = int(
            self.find(["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
        )
        self.name_map = gguf.get_tensor_name_map(self.gguf_arch, self.block_count)
        rope = config.get("rope_parameters", config.get("rope_scaling")) or {}
        self.rope = dict(rope)
        if "full_attention" not in self.rope and "sliding_attention" not in self.rope:
            theta = self.find(["rope_theta", "rotary_emb_base"], optional=True)
            if theta is not None and "rope_theta" not in self.rope:
                self.rope["rope_theta"] = theta
            if "rope_type" not in self.rope and self.rope.get("type") is not None:
                self.rope["rope_type"] = self.rope["type"]
            omax = config.get("original_max_position_embeddings")
            if omax is not None and "original_max_position_embeddings" not in self.rope:
                self.rope["original_max_position_embeddings"] = omax
            prf = config.get("partial_rotary_factor")
            if prf is not None and "partial_rotary_factor" not in self.rope:
                self.rope["partial_rotary_factor"] = prf

    # ---- HF -> GGUF ----------------------------------------------------------------------

    @classmethod
    def gguf_arch_name(cls) -> str:
        return gguf.MODEL_ARCH_NAMES[cls.gguf_arch]

    def find(self, keys: Sequence[str], optional: bool = False) -> Any:
        for key in keys:
            if key in self.cfg and self.cfg[key] is not None:
                return self.cfg[key]
        if optional:
            return None
        raise ArchError(f"config.json: none of the keys {list(keys)} is set")

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        """Hyperparameters, as ``TextModel.set_gguf_parameters`` writes them."""
        w.add_block_count(self.block_count)
        n_ctx = self.find(["max_position_embeddings", "n_ctx", "n_positions"], optional=True)
        if n_ctx is not None:
            w.add_context_length(int(n_ctx))
        n_embd = self.find(["hidden_size", "n_embd", "dim"], optional=True)
        if n_embd is not None:
            w.add_embedding_length(int(n_embd))
        n_ff = self.find(["intermediate_size", "n_inner", "hidden_dim"], optional=True)
        if n_ff is not None:
            w.add_feed_forward_length(int(n_ff))
        n_head = self.find(["num_attention_heads", "n_head", "n_heads"], optional=True)
        if n_head is not None:
            w.add_head_count(int(n_head))
        n_kv = self.find(["num_key_value_heads", "n_kv_heads"], optional=True)
        if n_kv is not None:
            w.add_head_count_kv(int(n_kv))
        rope = self.rope.get("full_attention", self.rope)
        rope_type = rope.get("rope_type")
        factor = rope.get("factor")
        if rope_type == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(factor))
        elif rope_type == "yarn" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(factor))
            w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        elif rope_type in ("su", "longrope"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        if rope.get("rope_theta") is not None:
            w.add_rope_freq_base(float(rope["rope_theta"]))
        swa_theta = self.rope.get("sliding_attention", {}).get("rope_theta")
        if swa_theta is not None:
            w.add_rope_freq_base_swa(float(swa_theta))
        eps = self.find(["rms_norm_eps", "norm_eps"], optional=True)
        if eps is not None:
            w.add_layer_norm_rms_eps(float(eps))
        head_dim = self.cfg.get("head_dim")
        if head_dim is not None:
            w.add_key_length(int(head_dim))
            w.add_value_length(int(head_dim))

    def skip_tensor(self, hf_name: str) -> bool:
        return hf_name.endswith(_SKIP_SUFFIXES)

    def gguf_name(self, hf_name: str) -> str:
        new = self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ArchError(f"tensor {hf_name!r} has no GGUF name for {self.gguf_arch_name()}")
        return new

    def out_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape written for a tensor (numpy order); most layout fixes keep it."""
        return shape

    def transform(self, hf_name: str, gguf_name: str, x: np.ndarray) -> np.ndarray:
        """Layout fixes applied to one float32 tensor before it is written."""
        return x

    def extra_tensors(self) -> Iterable[tuple[str, np.ndarray]]:
        """Tensors llama.cpp generates from the config (rope factors ...)."""
        return ()

    def required_tensors(self, have_lm_head: bool) -> list[str]:
        """GGUF names every checkpoint of this family must provide."""
        names = ["token_embd.weight", "output_norm.weight"]
        for i in range(self.block_count):
            names += [f"blk.{i}.attn_norm.weight", f"blk.{i}.ffn_down.weight"]
        return names

    # ---- GGUF -> HF ----------------------------------------------------------------------

    @classmethod
    def hf_config(cls, meta: dict[str, Any]) -> dict[str, Any]:
        raise ArchError(f"export of {cls.gguf_arch_name()} is not supported")

    @classmethod
    def hf_tensor_name(cls, gguf_name: str) -> Optional[str]:
        raise ArchError(f"export of {cls.gguf_arch_name()} is not supported")

    @classmethod
    def untransform(cls, gguf_name: str, x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        return x


# GGUF -> HF names shared by the llama-like families (llama, mistral, qwen2, qwen3).
LLAMA_LIKE_HF_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "model.layers.{bid}.input_layernorm",
    "attn_q": "model.layers.{bid}.self_attn.q_proj",
    "attn_k": "model.layers.{bid}.self_attn.k_proj",
    "attn_v": "model.layers.{bid}.self_attn.v_proj",
    "attn_output": "model.layers.{bid}.self_attn.o_proj",
    "attn_q_norm": "model.layers.{bid}.self_attn.q_norm",
    "attn_k_norm": "model.layers.{bid}.self_attn.k_norm",
    "ffn_norm": "model.layers.{bid}.post_attention_layernorm",
    "ffn_gate": "model.layers.{bid}.mlp.gate_proj",
    "ffn_up": "model.layers.{bid}.mlp.up_proj",
    "ffn_down": "model.layers.{bid}.mlp.down_proj",
}


def hf_name_from_table(gguf_name: str, table: dict[str, str]) -> Optional[str]:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (None: unknown)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    bid = None
    if stem.startswith("blk."):
        parts = stem.split(".", 2)
        if len(parts) != 3 or not parts[1].isdecimal():
            return None
        bid, stem = int(parts[1]), parts[2]
    template = table.get(stem)
    if template is None:
        return None
    return template.format(bid=bid) + "." + suffix
