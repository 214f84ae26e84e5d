"""Our kernels against llama.cpp's own (ggml through llama-cpp-python): legacy quantizers are
byte-identical, every type's dequantize agrees with ggml's ``to_float``."""

from __future__ import annotations

import numpy as np
import pytest

from ferroquant import quants

pytestmark = pytest.mark.peer
ggml_peer = pytest.importorskip("ggml_peer")
pytest.importorskip("llama_cpp")

ALL_BLOCK_TYPES = [t.name for t in quants.types() if t.name != "F32"]


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16"])
def test_legacy_quantize_is_byte_identical_with_llama_cpp(name: str) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_t(3.0, (64, 1024)) * 0.02).astype(np.float32)
    ours = quants.quantize(x, name)
    ref = ggml_peer.quantize(x, name)
    rows = np.flatnonzero(np.any(ours != ref, axis=1))
    assert rows.size == 0, f"{name}: rows {rows[:10].tolist()} differ"


@pytest.mark.parametrize("name", ALL_BLOCK_TYPES)
def test_dequantize_agrees_with_llama_cpp(name: str) -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 1024)).astype(np.float32)
    q = ggml_peer.quantize(x, name)
    ours = quants.dequantize(q, name, x.shape)
    ref = ggml_peer.dequantize(q, name, x.shape)
    # ggml's C may contract a*b - c into one FMA: allow one rounding of difference.
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-7 * float(np.abs(ref).max()))


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_legacy_imatrix_quantize_is_byte_identical_with_llama_cpp(name: str) -> None:
    """With an imatrix, llama.cpp's legacy quantizers switch to a weighted search
    (``quantize_row_q4_0_impl`` ...); Q8_0 has none and ignores it."""
    rng = np.random.default_rng(15)
    x = (rng.standard_t(3.0, (64, 1024)) * 0.02).astype(np.float32)
    imatrix = np.exp(rng.standard_normal(1024) * 1.5).astype(np.float32)
    ours = quants.quantize(x, name, imatrix=imatrix)
    ref = ggml_peer.quantize(x, name, imatrix=imatrix)
    rows = np.flatnonzero(np.any(ours != ref, axis=1))
    assert rows.size == 0, f"{name}: rows {rows[:10].tolist()} differ"
    if name != "Q8_0":
        assert not np.array_equal(ours, quants.quantize(x, name))
