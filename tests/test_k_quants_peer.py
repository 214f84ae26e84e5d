"""The K-quants (Q2_K .. Q6_K) against their peers.

- dequantize: bit-exact against gguf-py's numpy ``gguf.quants.dequantize`` on random blocks
  (finite scales, and raw bytes where infinities and NaNs must land where gguf-py has them);
- quantize: against llama.cpp's own quantizer (``ggml_quantize_chunk`` in the ggml library that
  llama-cpp-python bundles), without an importance matrix (``quantize_row_q*_K_ref``) and with
  one (the weighted ``quantize_row_q*_K_impl``), on gaussian and real SmolLM2 weights: the
  share of byte-identical blocks and our RMSE over llama.cpp's.

ggml-base is compiled without FMA contraction, so the same f32 operations in the same order give
the same bytes; the threshold leaves room for a block landing on a rounding tie differently in
another build of the peer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq

from ferroquant import _native, gguf_io, quants

K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
MIN_IDENTICAL = 0.999
MAX_RMSE_RATIO = 1.0 + 1e-4
# Byte offsets of the f16 scales inside each block (d, and dmin where the type has one).
SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _peer():
    pytest.importorskip("llama_cpp")
    return pytest.importorskip("ggml_peer")


def _random_blocks(name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random blocks whose f16 scales are finite (any sign, zero, subnormal, extreme)."""
    info = quants.type_info(name)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_blocks, info.type_size), dtype=np.uint8)
    for k, off in enumerate(SCALE_OFFSETS[name]):
        d = rng.standard_normal(n_blocks).astype(np.float16)
        d[:8] = [0.0, -0.0, 6.1e-5, 5.9e-8, -65504.0, 1.0, -1.0, 0.5][k:] + [0.25] * k
        raw[:, off : off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("name", K_TYPES)
def test_dequantize_is_bit_exact_with_gguf_py(name: str) -> None:
    info = quants.type_info(name)
    raw = _random_blocks(name, 2048, seed=3)
    rows, cols = 256, info.block_size * 8
    ours = quants.dequantize(raw, name, (rows, cols))
    ref = gq.dequantize(raw, GGMLQuantizationType[name]).reshape(rows, cols)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("name", K_TYPES)
def test_dequantize_of_raw_random_bytes_agrees_with_gguf_py(name: str) -> None:
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
@pytest.mark.parametrize("name", K_TYPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
def test_quantize_matches_llama_cpp_on_gaussian_weights(name: str, weighted: bool) -> None:
    rng = np.random.default_rng(11)
    cols = 4096
    x = rng.standard_normal((64, cols)).astype(np.float32)
    x[0] = 0.0  # all-zero super-blocks
    x[1, :256] = 1e-20  # below GROUP_MAX_EPS
    x[1, 256:512] = 1e-14  # just above it: subnormal sums
    x[2, :512] = np.abs(x[2, :512])  # all-positive blocks: the min clamps to 0
    x[3] *= 1e3
    x[4, :256] = 0.5  # a constant block
    x[5] = (rng.standard_t(2.0, cols) * 0.01).astype(np.float32)  # heavy tails
    imatrix = None
    if weighted:
        imatrix = (rng.lognormal(0.0, 1.5, cols) ** 2).astype(np.float32)
        imatrix[:256] = 0.0  # a super-block with no importance at all
    same, rmse_ratio = _compare(name, x, imatrix)
    assert same >= MIN_IDENTICAL, f"{name}: {same:.4%} of blocks identical"
    assert rmse_ratio <= MAX_RMSE_RATIO, f"{name}: RMSE ratio {rmse_ratio}"


@pytest.mark.peer
@pytest.mark.parametrize("name", K_TYPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
def test_quantize_matches_llama_cpp_on_smollm2_ffn_down(
    smollm2_path: Path, name: str, weighted: bool
) -> None:
    reader = gguf_io.open_gguf(smollm2_path)
    for tensor in ["blk.0.ffn_down.weight", "blk.15.ffn_down.weight", "blk.29.ffn_down.weight"]:
        x = np.ascontiguousarray(gguf_io.read_tensor_f32(reader, tensor))
        assert x.shape[1] == 1536
        imatrix = None
        if weighted:
            # Stand-in for mean squared activations: positive, heavy-tailed.
            rng = np.random.default_rng(5)
            imatrix = (rng.lognormal(0.0, 1.5, x.shape[1]) ** 2).astype(np.float32)
        same, rmse_ratio = _compare(name, x, imatrix)
        assert same >= MIN_IDENTICAL, f"{name} {tensor}: {same:.4%} of blocks identical"
        assert rmse_ratio <= MAX_RMSE_RATIO, f"{name} {tensor}: RMSE ratio {rmse_ratio}"


@pytest.mark.peer
@pytest.mark.parametrize("name", K_TYPES)
def test_vec_dot_matches_llama_cpp_dequantized_dot(name: str) -> None:
    ggml_peer = _peer()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    a = rng.standard_normal(1024).astype(np.float32)
    q = ggml_peer.quantize(x, name)
    y = ggml_peer.dequantize(q, name, x.shape).astype(np.float64)
    ref = y @ a.astype(np.float64)
    for i in range(x.shape[0]):
        got = _native.vec_dot(np.ascontiguousarray(q[i]), name, a)
        assert abs(got - ref[i]) <= 1e-5 * np.abs(y[i] * a).sum(), (i, got, ref[i])
