"""IQ4_NL and IQ4_XS against their peers.

- dequantize: bit-exact against gguf-py's numpy (``gguf.quants.dequantize``) on random blocks;
- quantize: against llama.cpp's own quantizer (``ggml_quantize_chunk`` through the ggml library
  that llama-cpp-python bundles), with and without an importance matrix, on random and real
  SmolLM2 weights: the share of byte-identical blocks and our RMSE over llama.cpp's.

The ggml base library is built without FMA contraction, so the same f32 operations in the same
order give the same bytes; the thresholds leave room for a few blocks that land on a rounding
tie differently in another build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq

from ferroquant import _native, gguf_io, quants

IQ4_TYPES = ["IQ4_NL", "IQ4_XS"]
# Share of blocks that must be byte-identical with llama.cpp, and the RMSE ratio bound.
MIN_IDENTICAL = 0.999
MAX_RMSE_RATIO = 1.0 + 1e-4


def _peer():
    pytest.importorskip("llama_cpp")
    return pytest.importorskip("ggml_peer")


def _random_blocks(name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random block bytes whose f16 scale is a finite number (any sign, any exponent)."""
    info = quants.type_info(name)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_blocks, info.type_size), dtype=np.uint8)
    d = rng.standard_normal(n_blocks).astype(np.float16)
    d[:8] = [0.0, -0.0, 6.1e-5, 5.9e-8, -65504.0, 1.0, -1.0, 0.5]  # zero, subnormal, extreme
    raw[:, :2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("name", IQ4_TYPES)
def test_dequantize_is_bit_exact_with_gguf_py(name: str) -> None:
    info = quants.type_info(name)
    raw = _random_blocks(name, 4096, seed=3)
    cols = info.block_size * 8
    rows = raw.size // info.row_bytes(cols)
    ours = quants.dequantize(raw, name, (rows, cols))
    ref = gq.dequantize(raw, GGMLQuantizationType[name]).reshape(rows, cols)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("name", IQ4_TYPES)
def test_dequantize_of_raw_random_bytes_agrees_with_gguf_py(name: str) -> None:
    """Unsanitized scales too: infinities and NaNs come out where gguf-py has them."""
    info = quants.type_info(name)
    raw = np.random.default_rng(4).integers(0, 256, (512, info.type_size), dtype=np.uint8)
    rows, cols = 64, info.block_size * 8
    ours = quants.dequantize(raw, name, (rows, cols))
    with np.errstate(invalid="ignore", over="ignore"):
        ref = gq.dequantize(raw, GGMLQuantizationType[name]).reshape(rows, cols)
    np.testing.assert_array_equal(ours, ref.astype(np.float32))


def _compare(name: str, x: np.ndarray, imatrix: Optional[np.ndarray]) -> tuple[float, float]:
    """(share of byte-identical blocks, our weighted RMSE / llama.cpp's)."""
    return _peer().compare_quantize(name, x, imatrix)


@pytest.mark.peer
@pytest.mark.parametrize("name", IQ4_TYPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
def test_quantize_matches_llama_cpp_on_random_weights(name: str, weighted: bool) -> None:
    rng = np.random.default_rng(11)
    cols = 2048
    x = (rng.standard_t(4.0, (96, cols)) * 0.02).astype(np.float32)
    x[0] = 0.0  # all-zero blocks: llama.cpp stores d = -0 for IQ4_XS
    x[1, :32] = 1e-20  # below GROUP_MAX_EPS: a zero scale
    x[1, 32:64] = 1e-14  # just above it: subnormal weights and sums
    x[2] *= 1e3
    imatrix = (rng.random(cols) ** 3 * 10).astype(np.float32) if weighted else None
    if imatrix is not None:
        imatrix[:32] = 0.0  # a block with no importance at all
    same, rmse_ratio = _compare(name, x, imatrix)
    assert same >= MIN_IDENTICAL, f"{name}: {same:.4%} of blocks identical"
    assert rmse_ratio <= MAX_RMSE_RATIO, f"{name}: RMSE ratio {rmse_ratio}"


@pytest.mark.peer
@pytest.mark.parametrize("name", IQ4_TYPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
def test_quantize_matches_llama_cpp_on_smollm2_weights(
    smollm2_path: Path, name: str, weighted: bool
) -> None:
    reader = gguf_io.open_gguf(smollm2_path)
    picked = ["blk.0.attn_q.weight", "blk.7.ffn_down.weight", "blk.29.ffn_gate.weight"]
    for tensor in picked:
        x = gguf_io.read_tensor_f32(reader, tensor)
        if x.shape[1] % quants.type_info(name).block_size:
            x = x.reshape(-1, 4 * x.shape[1])  # 576 columns: join rows into super-blocks
        x = np.ascontiguousarray(x[:256])
        imatrix = None
        if weighted:
            # A stand-in importance matrix: mean squared activations look like this (positive,
            # heavy-tailed, a few dominant channels).
            rng = np.random.default_rng(5)
            imatrix = (rng.lognormal(0.0, 1.5, x.shape[1]) ** 2).astype(np.float32)
        same, rmse_ratio = _compare(name, x, imatrix)
        assert same >= MIN_IDENTICAL, f"{name} {tensor}: {same:.4%} of blocks identical"
        assert rmse_ratio <= MAX_RMSE_RATIO, f"{name} {tensor}: RMSE ratio {rmse_ratio}"


@pytest.mark.peer
@pytest.mark.parametrize("name", IQ4_TYPES)
def test_vec_dot_matches_llama_cpp_dequantized_dot(name: str) -> None:
    ggml_peer = _peer()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    a = rng.standard_normal(1024).astype(np.float32)
    q = ggml_peer.quantize(x, name)
    ref = ggml_peer.dequantize(q, name, x.shape).astype(np.float64) @ a.astype(np.float64)
    for i in range(x.shape[0]):
        got = _native.vec_dot(np.ascontiguousarray(q[i]), name, a)
        assert abs(got - ref[i]) <= 1e-5 * np.abs(x[i]).sum(), (i, got, ref[i])
