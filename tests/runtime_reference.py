"""A numpy (float64) forward pass of the llama / qwen2 / qwen3 decoders, written from the
llama.cpp graphs, used as the reference for the Rust runtime in tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def load_weights(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    reader = GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())
    hp = {
        k[len(arch) + 1 :]: f.contents()
        for k, f in reader.fields.items()
        if k.startswith(arch + ".")
    }
    hp["arch"] = arch
    weights = {
        t.name: dequantize(t.data, t.tensor_type)
        .astype(np.float64)
        .reshape([int(v) for v in reversed(t.shape.tolist())])
        for t in reader.tensors
    }
    return weights, hp


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(
    x: np.ndarray, pos: np.ndarray, dim: int, base: float, neox: bool, freq_scale: float = 1.0
) -> np.ndarray:
    # x: (n, heads, head_dim)
    half = dim // 2
    freq = freq_scale * base ** (-2.0 * np.arange(half) / dim)
    theta = pos[:, None] * freq[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:dim]
        out[..., :half] = a * cos - b * sin
        out[..., half:dim] = a * sin + b * cos
    else:
        a, b = x[..., 0:dim:2], x[..., 1:dim:2]
        out[..., 0:dim:2] = a * cos - b * sin
        out[..., 1:dim:2] = a * sin + b * cos
    return out


def forward(
    weights: dict[str, np.ndarray],
    hp: dict[str, Any],
    tokens: list[int],
    stats: Any = None,
) -> np.ndarray:
    """Logits (n, vocab) of ``tokens`` from an empty context. With a dict ``stats``, adds
    ``{tensor name: [sums of squared inputs per column, token count]}`` (llama-imatrix)."""

    def record(names: list[str], x: np.ndarray) -> None:
        if stats is None:
            return
        for name in names:
            e = stats.setdefault(name, [np.zeros(x.shape[-1]), 0])
            e[0] += (x * x).sum(0)
            e[1] += x.shape[0]

    arch = hp["arch"]
    n_head = int(hp["attention.head_count"])
    n_kv = int(hp.get("attention.head_count_kv", n_head))
    d = int(hp["embedding_length"])
    hd = int(hp.get("attention.key_length", d // n_head))
    rope_dim = int(hp.get("rope.dimension_count", hd))
    base = float(hp.get("rope.freq_base", 10000.0))
    eps = float(hp.get("attention.layer_norm_rms_epsilon", 1e-5))
    neox = arch in ("qwen2", "qwen3")
    scaling = str(hp.get("rope.scaling.type", "none"))
    fs = 1.0 / float(hp.get("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    x = weights["token_embd.weight"][np.asarray(tokens)]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(int(hp["block_count"])):
        w = {k[len(f"blk.{i}.") :]: v for k, v in weights.items() if k.startswith(f"blk.{i}.")}
        h = _rms(x, w["attn_norm.weight"], eps)
        record([f"blk.{i}.attn_{p}.weight" for p in "qkv"], h)
        q = h @ w["attn_q.weight"].T + w.get("attn_q.bias", 0.0)
        k = h @ w["attn_k.weight"].T + w.get("attn_k.bias", 0.0)
        v = h @ w["attn_v.weight"].T + w.get("attn_v.bias", 0.0)
        q, k, v = q.reshape(n, n_head, hd), k.reshape(n, n_kv, hd), v.reshape(n, n_kv, hd)
        if "attn_q_norm.weight" in w:
            q = _rms(q, w["attn_q_norm.weight"], eps)
            k = _rms(k, w["attn_k_norm.weight"], eps)
        q, k = _rope(q, pos, rope_dim, base, neox, fs), _rope(k, pos, rope_dim, base, neox, fs)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", s, v).reshape(n, n_head * hd)
        record([f"blk.{i}.attn_output.weight"], att)
        x = x + att @ w["attn_output.weight"].T
        h = _rms(x, w["ffn_norm.weight"], eps)
        record([f"blk.{i}.ffn_gate.weight", f"blk.{i}.ffn_up.weight"], h)
        g = h @ w["ffn_gate.weight"].T
        u = h @ w["ffn_up.weight"].T
        act = g / (1 + np.exp(-g)) * u
        record([f"blk.{i}.ffn_down.weight"], act)
        x = x + act @ w["ffn_down.weight"].T
    x = _rms(x, weights["output_norm.weight"], eps)
    if "output.weight" in weights:
        record(["output.weight"], x)
    head = weights.get("output.weight", weights["token_embd.weight"])
    return x @ head.T
