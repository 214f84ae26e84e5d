"""llama.cpp runs what we convert: logits against an HF-semantics reference.

The reference is a numpy transcription of transformers' Llama/Qwen2/Qwen3 forward pass (half-
split ``rotate_half`` rotary embedding, GQA, SwiGLU), so a wrong Q/K permutation or name shows
up as disagreement. When torch + transformers are installed, every family is also checked
against transformers itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ferroquant.convert import convert
from test_convert_models import ARCHES, make_model, wikitext_lines

pytestmark = pytest.mark.peer


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """transformers' apply_rotary_pos_emb on (heads, seq, dim)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    f = np.arange(x.shape[1])[:, None] * inv[None, :]
    emb = np.concatenate([f, f], axis=-1)
    half = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * np.cos(emb) + half * np.sin(emb)


def reference_logits(model_dir: Path, ids: list[int], f16_weights: bool = False) -> np.ndarray:
    """HF forward pass; ``f16_weights`` rounds the matrices as an F16 file stores them."""
    cfg = json.loads((model_dir / "config.json").read_text())
    t = {
        k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()
    }
    if f16_weights:
        t = {k: v.astype(np.float16).astype(np.float64) if v.ndim == 2 else v for k, v in t.items()}
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    n = len(ids)
    x = t["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, t[p + "input_layernorm.weight"], eps)

        def proj(name: str, h: np.ndarray = h, p: str = p) -> np.ndarray:
            y = h @ t[p + f"self_attn.{name}_proj.weight"].T
            return y + t.get(p + f"self_attn.{name}_proj.bias", 0.0)

        q = proj("q").reshape(n, nh, hd).transpose(1, 0, 2)
        k = proj("k").reshape(n, nkv, hd).transpose(1, 0, 2)
        v = proj("v").reshape(n, nkv, hd).transpose(1, 0, 2)
        if p + "self_attn.q_norm.weight" in t:
            q = _rms(q, t[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, t[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, theta), _rope(k, theta)
        k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(1, 0, 2).reshape(n, nh * hd) @ t[p + "self_attn.o_proj.weight"].T
        h = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        g = h @ t[p + "mlp.gate_proj.weight"].T
        u = h @ t[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ t[p + "mlp.down_proj.weight"].T
    x = _rms(x, t["model.norm.weight"], eps)
    return x @ t.get("lm_head.weight", t["model.embed_tokens.weight"]).T


def llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=256, logits_all=True, verbose=False)
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float64)


def _ids(model_dir: Path, n: int = 200) -> list[int]:
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return tk.encode(" ".join(wikitext_lines(30, min_len=20))).ids[:n]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("ftype", ["F32", "F16"])
def test_logits_match_reference(tmp_path: Path, arch: str, ftype: str) -> None:
    src = make_model(tmp_path / "hf", arch, tied=arch == "qwen3", n_layer=2, hidden=128, n_ff=256)
    out = tmp_path / "m.gguf"
    convert(src, out, ftype, progress=False)
    ids = _ids(src)
    ref = reference_logits(src, ids, f16_weights=ftype == "F16")
    got = llama_cpp_logits(out, ids)
    agree = np.mean(np.argmax(got, -1) == np.argmax(ref, -1))
    err = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
    assert agree >= 0.995, (agree, err)
    assert err < (1e-3 if ftype == "F32" else 2e-2), err


@pytest.mark.parametrize("arch", ARCHES)
def test_llama_cpp_runs_every_arch(tmp_path: Path, arch: str) -> None:
    src = make_model(tmp_path / "hf", arch)
    out = tmp_path / "m.gguf"
    convert(src, out, "F16", progress=False)
    got = llama_cpp_logits(out, _ids(src, 32))
    assert got.shape[0] == 32 and np.all(np.isfinite(got))
    assert np.std(got) > 0


@pytest.mark.parametrize("ftype", ["F32", "F16"])
@pytest.mark.parametrize("arch", ARCHES)
def test_logits_match_transformers(tmp_path: Path, arch: str, ftype: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    src = make_model(tmp_path / "hf", arch, hidden=128, n_ff=256)
    out = tmp_path / "m.gguf"
    convert(src, out, ftype, progress=False)
    ids = _ids(src)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    model.eval()
    if ftype == "F16":  # the matrices as the file stores them; norms stay float32
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim == 2:
                    param.copy_(param.half().float())
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].double().numpy()
    got = llama_cpp_logits(out, ids)
    agree = np.mean(np.argmax(got, -1) == np.argmax(ref, -1))
    err = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
    assert agree >= 0.995, (agree, err)
    assert err < (1e-3 if ftype == "F32" else 2e-2), err
