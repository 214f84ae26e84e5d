"""Block kernels against gguf-py (``gguf.quants``), the reference implementation of the format.

- dequantize is bit-exact with ``gguf.quants.dequantize`` for every type, on random blocks;
- quantize is byte-identical with ``gguf.quants.quantize`` for every type gguf-py quantizes;
- every type round-trips real-valued data with an error its bit width allows;
- bad input raises ValueError with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

from ferroquant import quants

ALL = [t.name for t in quants.types()]
# Types gguf-py can quantize (the rest it only dequantizes).
GGUF_PY_QUANTIZES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
IMATRIX_TYPES = [
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
]

# Byte offsets of the f16 scale fields inside each block (the rest is codes or packed
# sub-scales, valid for any byte value).
F16_FIELDS = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
    "IQ4_NL": [0],
    "IQ4_XS": [0],
}


def gguf_type(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name]


def random_blocks(name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for ``n_blocks`` blocks, with finite scales so both sides compare."""
    info = quants.type_info(name)
    if name == "F32":
        return rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8)
    if name == "F16":
        return rng.standard_normal(n_blocks).astype(np.float16).view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, info.type_size), dtype=np.uint8)
    if name == "BF16":
        bits = raw.view(np.uint16)
        # Clear the top exponent bit: no inf/nan, every other bit pattern (subnormals too).
        bits &= np.uint16(0xBFFF)
        return bits.view(np.uint8).reshape(-1)
    scales = rng.standard_normal((n_blocks, len(F16_FIELDS[name]))).astype(np.float16) * 0.05
    for j, off in enumerate(F16_FIELDS[name]):
        raw[:, off : off + 2] = scales[:, j : j + 1].view(np.uint8)
    return raw.reshape(-1)


def test_type_table_matches_gguf_py() -> None:
    assert set(ALL) == {
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
    }  # fmt: skip
    for t in quants.types():
        gt = gguf_type(t.name)
        assert t.ggml_type == int(gt)
        assert (t.block_size, t.type_size) == GGML_QUANT_SIZES[gt]
        assert t.bits_per_weight == pytest.approx(t.type_size * 8 / t.block_size)


@pytest.mark.parametrize("name", ALL)
def test_dequantize_is_bit_exact_with_gguf_py(name: str) -> None:
    rng = np.random.default_rng(1234)
    info = quants.type_info(name)
    rows = 7
    blocks_per_row = 2048 // info.block_size if info.block_size > 1 else 96
    raw = random_blocks(name, rows * blocks_per_row, rng).reshape(rows, -1)
    cols = blocks_per_row * info.block_size
    ours = quants.dequantize(raw, name, (rows, cols))
    ref = gq.dequantize(raw, gguf_type(name)).astype(np.float32)
    assert ours.shape == (rows, cols) == ref.shape
    assert np.all(np.isfinite(ref))
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def _test_matrices(cols: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    gauss = rng.standard_normal((16, cols)).astype(np.float32)
    heavy = (rng.standard_t(2.5, (16, cols)) * 0.02).astype(np.float32)
    edge = np.zeros((6, cols), dtype=np.float32)
    edge[1] = 1.0  # constant row
    edge[2, ::7] = -3.0  # sparse, negative extreme
    edge[3] = np.tile(np.array([0.5, -0.5, 0.25, -0.25], np.float32), cols // 4)  # ties
    edge[4] = np.linspace(-1, 1, cols, dtype=np.float32)
    edge[5] = 1e-30  # tiny (f16 scale underflows)
    return {"gauss": gauss, "heavy": heavy, "edge": edge}


@pytest.mark.parametrize("name", GGUF_PY_QUANTIZES)
def test_quantize_is_byte_identical_with_gguf_py(name: str) -> None:
    for label, x in _test_matrices(1024).items():
        ours = quants.quantize(x, name)
        ref = np.asarray(gq.quantize(x, gguf_type(name))).reshape(x.shape[0], -1).view(np.uint8)
        assert ours.shape == (x.shape[0], quants.row_bytes(name, x.shape[1]))
        mismatched = np.flatnonzero(np.any(ours != ref, axis=1))
        assert mismatched.size == 0, f"{name} {label}: rows {mismatched.tolist()} differ"


# Relative RMS error bound (vs the RMS of the gaussian input) a sane quantizer of each
# type stays under; loose on purpose: it catches broken kernels, not small regressions.
REL_RMSE_BOUND = {
    "F32": 0.0,
    "F16": 1e-3,
    "BF16": 5e-3,
    "Q8_0": 0.01,
    "Q6_K": 0.03,
    "Q5_0": 0.06,
    "Q5_1": 0.06,
    "Q5_K": 0.05,
    "Q4_0": 0.12,
    "Q4_1": 0.12,
    "Q4_K": 0.10,
    "IQ4_NL": 0.11,
    "IQ4_XS": 0.11,
    "Q3_K": 0.22,
    "Q2_K": 0.45,
}


@pytest.mark.parametrize("name", ALL)
def test_round_trip_error_fits_the_bit_width(name: str) -> None:
    x = _test_matrices(2048)["gauss"]
    y = quants.dequantize(quants.quantize(x, name), name, x.shape)
    rel = float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x**2)))
    assert rel <= REL_RMSE_BOUND[name], f"{name}: relative RMSE {rel:.4f}"
    if name != "F32":
        assert rel > 0.0


@pytest.mark.parametrize("name", IMATRIX_TYPES)
def test_imatrix_steers_the_search(name: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 1024)).astype(np.float32)
    imatrix = np.exp(rng.standard_normal(1024) * 1.5).astype(np.float32)
    plain = quants.dequantize(quants.quantize(x, name), name, x.shape)
    weighted = quants.dequantize(quants.quantize(x, name, imatrix=imatrix), name, x.shape)
    err_plain = float(np.sum(imatrix * (x - plain) ** 2))
    err_weighted = float(np.sum(imatrix * (x - weighted) ** 2))
    assert not np.array_equal(plain, weighted)
    assert err_weighted < err_plain, f"{name}: {err_weighted} !< {err_plain}"


@pytest.mark.parametrize("name", ALL)
def test_vec_dot_matches_dequantize_then_dot(name: str) -> None:
    from ferroquant import _native

    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    a = rng.standard_normal(512).astype(np.float32)
    q = quants.quantize(x, name)
    w = quants.dequantize(q, name, x.shape)
    for r in range(x.shape[0]):
        got = _native.vec_dot(np.ascontiguousarray(q[r]), name, a)
        want = float(np.dot(w[r].astype(np.float64), a.astype(np.float64)))
        assert got == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_quantize_accepts_float64_and_1d() -> None:
    x = np.linspace(-1, 1, 64)
    q = quants.quantize(x, "q8_0")
    assert q.shape == (1, quants.row_bytes("Q8_0", 64))
    np.testing.assert_array_equal(q, quants.quantize(x.astype(np.float32).reshape(1, -1), "Q8_0"))


def test_dequantize_accepts_non_contiguous_views_and_other_dtypes() -> None:
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    q = quants.quantize(x, "Q4_0")
    wide = np.zeros((8, q.shape[1] * 2), np.uint8)
    wide[:, ::2] = q
    np.testing.assert_array_equal(
        quants.dequantize(wide[:, ::2], "Q4_0", x.shape), quants.dequantize(q, "Q4_0", x.shape)
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: quants.quantize(np.zeros((2, 32), np.int32), "Q8_0"), "float"),
        (lambda: quants.quantize(np.zeros((2, 2, 32), np.float32), "Q8_0"), "2-D"),
        (lambda: quants.quantize(np.zeros((2, 33), np.float32), "Q8_0"), "multiple of the block"),
        (lambda: quants.quantize(np.zeros((2, 128), np.float32), "Q4_K"), "multiple of the block"),
        (lambda: quants.quantize(np.zeros((2, 32), np.float32), "Q9_9"), "unknown"),
        (
            lambda: quants.quantize(np.array([[0.0] * 31 + [np.nan]], np.float32), "Q4_0"),
            "non-finite",
        ),
        (
            lambda: quants.quantize(np.array([[np.inf] + [0.0] * 31], np.float32), "F16"),
            "non-finite",
        ),
        (
            lambda: quants.quantize(np.zeros((2, 256), np.float32), "Q4_K", np.ones(255)),
            "imatrix",
        ),
        (
            lambda: quants.quantize(np.zeros((2, 256), np.float32), "Q4_K", -np.ones(256)),
            "imatrix",
        ),
        (lambda: quants.dequantize(np.zeros(35, np.uint8), "Q8_0", (1, 32)), "bytes"),
        (lambda: quants.dequantize(np.zeros(68, np.uint8), "Q8_0", (1, 33)), "multiple"),
        (lambda: quants.dequantize(np.zeros(0, np.uint8), "Q8_0", (1, 0)), "column"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_empty_matrix_is_fine() -> None:
    q = quants.quantize(np.zeros((0, 64), np.float32), "Q4_0")
    assert q.shape == (0, quants.row_bytes("Q4_0", 64))
    assert quants.dequantize(q, "Q4_0", (0, 64)).shape == (0, 64)
