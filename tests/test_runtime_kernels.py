"""The runtime's matmul kernels (dispatched SIMD and portable) against dequantize-then-f32-dot
on random blocks of every GGUF type, through the Python binding."""

from __future__ import annotations

import numpy as np
import pytest

from ferroquant import _native, quants

TYPES = [name for name, *_ in _native.types()]
# Byte offsets of the f16 scales inside one block, to keep random blocks finite.
F16_FIELDS = {
    "Q4_0": [0], "Q5_0": [0], "Q8_0": [0], "IQ4_NL": [0], "IQ4_XS": [0],
    "Q4_1": [0, 2], "Q5_1": [0, 2], "Q4_K": [0, 2], "Q5_K": [0, 2],
    "Q2_K": [80, 82], "Q3_K": [108], "Q6_K": [208],
}  # fmt: skip


def random_weights(qtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    if qtype in ("F32", "F16", "BF16"):
        return quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    info = {n: (bs, ts) for n, _, bs, ts in _native.types()}[qtype]
    n_blocks = rows * cols // info[0]
    raw = rng.integers(0, 256, (n_blocks, info[1]), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = (rng.uniform(-1, 1, n_blocks) * 0.05).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, -1)


K_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}


def rne(v: np.ndarray) -> np.ndarray:
    return np.rint(v)  # numpy rounds half to even, as ggml's nearest_int


def as_kernel_sees(x: np.ndarray, qtype: str) -> np.ndarray:
    """The activations in the weight type's ggml ``vec_dot_type``, as f32."""
    if qtype == "F32":
        return x
    if qtype == "F16":
        return x.astype(np.float16).astype(np.float32)
    if qtype == "BF16":
        bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
        return bits.astype(np.uint32).view(np.float32)
    if qtype in K_TYPES:  # block_q8_K: signed max of each 256, iscale = -127 / max
        b = x.reshape(-1, 256).astype(np.float32)
        idx = np.abs(b).argmax(axis=1)
        mx = b[np.arange(len(b)), idx][:, None]
        iscale = np.where(mx != 0, np.float32(-127) / np.where(mx != 0, mx, 1), 0).astype(
            np.float32
        )
        q = np.minimum(rne(b * iscale), 127)
        d = np.where(mx != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0)
        return (q * d.astype(np.float32)).reshape(x.shape)
    # block_q8_0 / q8_1: d = amax/127 kept at f16, codes round(x * 127/amax)
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.clip(rne(blocks * inv), -127, 127)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return (q * d).reshape(x.shape)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("ntok", [1, 5])
def test_matmul_matches_dequantize_then_dot(qtype: str, ntok: int) -> None:
    rng = np.random.default_rng(abs(hash((qtype, ntok))) % 2**32)
    rows, cols = 9, 512
    w = random_weights(qtype, rows, cols, rng)
    wf = quants.dequantize(w, qtype, (rows, cols)).astype(np.float64)
    x = rng.standard_normal((ntok, cols)).astype(np.float32)
    xs = as_kernel_sees(x, qtype)
    want = xs.astype(np.float64) @ wf.T
    tol = 1e-5 * (np.abs(xs) @ np.abs(wf).T).max() + 1e-6
    portable = _native.matmul(w, qtype, rows, cols, x, True)
    for tier in _native.simd_tiers():
        got = _native.matmul(w, qtype, rows, cols, x, isa=tier)
        assert got.shape == (ntok, rows)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=tol, err_msg=f"tier {tier}")
        # The same integer sums in every tier: only the order of float additions differs.
        np.testing.assert_allclose(got, portable, rtol=1e-5, atol=tol / 4, err_msg=tier)


def test_simd_tiers_include_portable() -> None:
    tiers = _native.simd_tiers()
    assert tiers[0] == "portable"
    assert _native.simd_isa()
    with pytest.raises(ValueError, match="tier"):
        _native.matmul(np.zeros((1, 18), np.uint8), "Q4_0", 1, 32, np.zeros((1, 32), np.float32),
                       isa="sse9")  # fmt: skip


def test_matmul_rejects_bad_shapes() -> None:
    w = np.zeros((2, 18), dtype=np.uint8)
    with pytest.raises(ValueError, match="bytes"):
        _native.matmul(w, "Q4_0", 3, 32, np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match="columns"):
        _native.matmul(w, "Q4_0", 2, 32, np.zeros((1, 64), np.float32))
