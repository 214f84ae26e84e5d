"""Tiny random Hugging Face checkpoints for the conversion tests (numpy only, no torch).

``make_model(dir, arch)`` writes config.json, model.safetensors and a small byte-level BPE
tokenizer trained on WikiText-2 lines, in the layout ``transformers`` saves for that family.
This module holds builders only; the tests are in test_convert.py and friends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
from safetensors.numpy import save_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ARCHES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n'}}{% endfor %}"
)
_TOKENIZER_CACHE: dict[int, Path] = {}


def wikitext_lines(n: Optional[int] = None, min_len: int = 1) -> list[str]:
    lines = [
        line.strip("\n")
        for line in (FIXTURES / "wikitext-2-raw-test.txt").read_text(encoding="utf-8").splitlines()
    ]
    lines = [ln for ln in lines if len(ln.strip()) >= min_len]
    return lines[:n] if n else lines


def train_tokenizer(out_dir: Path, vocab_size: int = 400) -> None:
    """A byte-level BPE like SmolLM2's (digits split, no prefix space), trained on WikiText."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    cached = _TOKENIZER_CACHE.get(vocab_size)
    if cached is None or not cached.exists():
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        tk.decoder = decoders.ByteLevel()
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tk.train_from_iterator(wikitext_lines(2000), trainer=trainer)
        cache = out_dir.parent / f".tok-{vocab_size}"
        cache.mkdir(exist_ok=True)
        tk.save(str(cache / "tokenizer.json"))
        _TOKENIZER_CACHE[vocab_size] = cache
        cached = cache
    shutil.copy(cached / "tokenizer.json", out_dir / "tokenizer.json")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "add_prefix_space": False,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 256,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def _config(
    arch: str, vocab: int, n_layer: int, hidden: int, n_ff: int, tied: bool, n_kv: int = 2
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hidden_size": hidden,
        "intermediate_size": n_ff,
        "num_hidden_layers": n_layer,
        "num_attention_heads": 4,
        "num_key_value_heads": n_kv,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    hd = hidden // 4
    extra: dict[str, dict[str, Any]] = {
        "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
        "mistral": {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "sliding_window": None,
            "head_dim": hd,
        },
        "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
        "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": hd},
        "gemma2": {
            "architectures": ["Gemma2ForCausalLM"],
            "model_type": "gemma2",
            "head_dim": hd,
            "hidden_activation": "gelu_pytorch_tanh",
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "sliding_window": 128,
            "query_pre_attn_scalar": hd,
            "tie_word_embeddings": True,
        },
        "gemma3": {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "head_dim": hd,
            "hidden_activation": "gelu_pytorch_tanh",
            "sliding_window": 128,
            # Gemma 3's pattern: every 6th layer global (llama.cpp assumes it too)
            "sliding_window_pattern": 6,
            "layer_types": [
                "full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                for i in range(n_layer)
            ],
            "rope_local_base_freq": 10000.0,
            "query_pre_attn_scalar": hd,
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "tie_word_embeddings": True,
        },
        "phi3": {
            "architectures": ["Phi3ForCausalLM"],
            "model_type": "phi3",
            "original_max_position_embeddings": 256,
            "rope_scaling": None,
            "sliding_window": None,
        },
    }
    return {**base, **extra[arch]}


def hf_tensors(
    cfg: dict[str, Any], rng: np.random.Generator, std: float = 0.3
) -> dict[str, np.ndarray]:
    """Random weights with HF's names and shapes for the config's family."""
    arch = cfg["model_type"]
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * std / np.sqrt(shape[-1]) * 4).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        if arch.startswith("gemma"):  # stored as (weight - 1)
            return (rng.standard_normal(n) * 0.1).astype(np.float32)
        return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)

    t: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": w(v, h) * 4,
        "model.norm.weight": norm(h),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(h)
        t[p + "post_attention_layernorm.weight"] = norm(h)
        t[p + "self_attn.o_proj.weight"] = w(h, nh * hd)
        t[p + "mlp.down_proj.weight"] = w(h, ff)
        if arch == "phi3":
            t[p + "self_attn.qkv_proj.weight"] = w((nh + 2 * nkv) * hd, h)
            t[p + "mlp.gate_up_proj.weight"] = w(2 * ff, h)
            continue
        t[p + "self_attn.q_proj.weight"] = w(nh * hd, h)
        t[p + "self_attn.k_proj.weight"] = w(nkv * hd, h)
        t[p + "self_attn.v_proj.weight"] = w(nkv * hd, h)
        t[p + "mlp.gate_proj.weight"] = w(ff, h)
        t[p + "mlp.up_proj.weight"] = w(ff, h)
        if arch == "qwen2":
            for x, n in (("q", nh), ("k", nkv), ("v", nkv)):
                t[p + f"self_attn.{x}_proj.bias"] = (rng.standard_normal(n * hd) * 0.1).astype(
                    np.float32
                )
        if arch in ("qwen3", "gemma3_text"):
            t[p + "self_attn.q_norm.weight"] = norm(hd)
            t[p + "self_attn.k_norm.weight"] = norm(hd)
        if arch.startswith("gemma"):
            t[p + "pre_feedforward_layernorm.weight"] = norm(h)
            t[p + "post_feedforward_layernorm.weight"] = norm(h)
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = w(v, h)
    return t


def make_model(
    out_dir: Path,
    arch: str = "llama",
    n_layer: int = 2,
    hidden: int = 64,
    n_ff: int = 128,
    tied: bool = False,
    seed: int = 0,
    vocab_size: int = 400,
    n_kv: int = 2,
) -> Path:
    """Write a tiny random checkpoint of ``arch`` into ``out_dir`` and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out_dir, vocab_size)
    n_vocab = len(
        json.loads((out_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    )
    cfg = _config(arch, n_vocab, n_layer, hidden, n_ff, tied, n_kv)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    tensors = hf_tensors(cfg, np.random.default_rng(seed))
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def make_spm_model(out_dir: Path, arch: str = "llama", vocab_size: int = 600) -> Path:
    """A tiny checkpoint whose tokenizer is a SentencePiece ``tokenizer.model`` (Llama 2 style:
    BPE pieces, byte fallback, dummy prefix, identity normalisation)."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(wikitext_lines(2000, min_len=2)),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.vocab").unlink()
    cfg_tok = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "tokenizer_class": "LlamaTokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg_tok), encoding="utf-8")
    cfg = _config(arch, vocab_size, 2, 64, 128, False)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    save_file(hf_tensors(cfg, np.random.default_rng(1)), str(out_dir / "model.safetensors"))
    return out_dir
