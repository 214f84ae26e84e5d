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


def as_kernel_sees(x: np.ndarray) -> np.ndarray:
    """Activations after the kernels' 8-bit quantization (absmax/127 per 32, f16 scale)."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127
    inv = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)
    q = np.clip(np.round(blocks * inv), -127, 127)
    return (q * d.astype(np.float16).astype(np.float32)).reshape(x.shape)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("ntok", [1, 5])
def test_matmul_matches_dequantize_then_dot(qtype: str, ntok: int) -> None:
    rng = np.random.default_rng(abs(hash((qtype, ntok))) % 2**32)
    rows, cols = 9, 512
    w = random_weights(qtype, rows, cols, rng)
    wf = quants.dequantize(w, qtype, (rows, cols)).astype(np.float64)
    x = rng.standard_normal((ntok, cols)).astype(np.float32)
    xs = x if qtype in ("F32", "F16", "BF16") else as_kernel_sees(x)
    want = xs.astype(np.float64) @ wf.T
    tol = 1e-5 * (np.abs(xs) @ np.abs(wf).T).max() + 1e-6
    for portable in (False, True):
        got = _native.matmul(w, qtype, rows, cols, x, portable)
        assert got.shape == (ntok, rows)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=tol, err_msg=f"portable={portable}")


def test_matmul_rejects_bad_shapes() -> None:
    w = np.zeros((2, 18), dtype=np.uint8)
    with pytest.raises(ValueError, match="bytes"):
        _native.matmul(w, "Q4_0", 3, 32, np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match="columns"):
        _native.matmul(w, "Q4_0", 2, 32, np.zeros((1, 64), np.float32))
