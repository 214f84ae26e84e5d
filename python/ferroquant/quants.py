"""GGUF block quantization, backed by the Rust kernels in ``ferroquant._native``.

Type names are GGUF's (``"Q4_K"``, ``"Q8_0"``, ``"IQ4_XS"``, ...). Every call checks its
input and raises :class:`ValueError` with the reason rather than crashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import numpy.typing as npt

from . import _native

__all__ = ["QuantType", "dequantize", "quantize", "row_bytes", "type_info", "types"]


@dataclass(frozen=True)
class QuantType:
    """Size facts of one GGUF tensor type."""

    name: str
    ggml_type: int
    block_size: int
    type_size: int

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    def row_bytes(self, cols: int) -> int:
        if cols % self.block_size:
            raise ValueError(
                f"{self.name}: row length {cols} is not a multiple of the block size "
                f"{self.block_size}"
            )
        return cols // self.block_size * self.type_size


_TYPES = {name: QuantType(name, gid, bs, ts) for name, gid, bs, ts in _native.types()}
_BY_ID = {t.ggml_type: t for t in _TYPES.values()}


def types() -> list[QuantType]:
    """The supported types with block size, bytes per block and bits per weight."""
    return list(_TYPES.values())


def type_info(qtype: str | int) -> QuantType:
    """Look a type up by GGUF name (case-insensitive) or ggml type id."""
    if isinstance(qtype, str):
        found = _TYPES.get(qtype.strip().upper())
    else:
        found = _BY_ID.get(int(qtype))
    if found is None:
        known = ", ".join(_TYPES)
        raise ValueError(f"unknown quantization type {qtype!r}; supported: {known}")
    return found


def row_bytes(qtype: str | int, cols: int) -> int:
    """Bytes one row of ``cols`` weights takes in ``qtype``."""
    return type_info(qtype).row_bytes(cols)


def _as_matrix(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    arr = np.asarray(x)
    if arr.dtype != np.float32:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"x must be a float array, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"x must be a 2-D (rows, cols) matrix, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def quantize(
    x: npt.ArrayLike, qtype: str, imatrix: Optional[npt.ArrayLike] = None
) -> npt.NDArray[np.uint8]:
    """Quantize a (rows, cols) float matrix to ``qtype`` blocks.

    Returns a (rows, row_bytes) uint8 array holding the blocks as GGUF stores them.
    ``imatrix`` gives one importance weight per column (llama.cpp's importance matrix);
    the K-quant, IQ4 and legacy 4/5-bit searches weight their error by it, as llama.cpp does.
    """
    info = type_info(qtype)
    mat = _as_matrix(x)
    weights = None
    if imatrix is not None:
        weights = np.ascontiguousarray(np.asarray(imatrix, dtype=np.float32).reshape(-1))
    return _native.quantize(mat, info.name, weights)


def dequantize(data: npt.ArrayLike, qtype: str, shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Dequantize GGUF blocks of ``qtype`` holding a ``shape`` = (rows, cols) matrix."""
    info = type_info(qtype)
    rows, cols = (int(v) for v in shape)
    raw = np.asarray(data)
    if raw.dtype != np.uint8:
        raw = (
            raw.view(np.uint8)
            if raw.flags.c_contiguous
            else np.ascontiguousarray(raw).view(np.uint8)
        )
    raw = np.ascontiguousarray(raw).reshape(-1)
    expected = rows * info.row_bytes(cols)
    if raw.size != expected:
        raise ValueError(
            f"{info.name} data for shape ({rows}, {cols}) must hold {expected} bytes, got {raw.size}"
        )
    return _native.dequantize(raw, info.name, rows, cols)
