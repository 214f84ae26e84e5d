"""Stubs for the Rust extension ``ferroquant._native``."""

import numpy as np
import numpy.typing as npt

__version__: str

def quantize(
    x: npt.NDArray[np.float32], qtype: str, imatrix: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.uint8]:
    """Quantize a C-contiguous (rows, cols) float32 matrix to GGUF blocks of ``qtype``.

    Returns a (rows, row_bytes) uint8 array. Releases the GIL and uses all cores.
    Raises ValueError on an unknown type, a row length that does not divide into blocks,
    a non-finite value, or an imatrix of the wrong length.
    """

def dequantize(
    data: npt.NDArray[np.uint8], qtype: str, rows: int, cols: int
) -> npt.NDArray[np.float32]:
    """Dequantize ``rows * row_bytes`` contiguous bytes of ``qtype`` to a (rows, cols) float32 array."""

def vec_dot(row: npt.NDArray[np.uint8], qtype: str, x: npt.NDArray[np.float32]) -> float:
    """Dot product of one quantized row with float32 activations."""

def types() -> list[tuple[str, int, int, int]]:
    """Supported types as (name, ggml_type_id, block_size, type_size)."""
