"""llama.cpp's own block quantizers, called through ctypes on the ggml library that
llama-cpp-python bundles. The peer for the types gguf-py cannot quantize (K-quants, IQ4).

    from ggml_peer import quantize, dequantize
    q = quantize(x, "Q4_K", imatrix=None)   # (rows, row_bytes) uint8, like ferroquant's

``ggml_quantize_chunk`` (ggml.c) runs one thread; with ``imatrix=None`` it calls the
``quantize_row_*_ref`` reference quantizers, with an imatrix their weighted variants.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits (ggml.h): name, block size, interleave, type size, is_quantized,
    # to_float, from_float_ref.
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@lru_cache(maxsize=1)
def library_path() -> str:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "libggml.so", "libllama.so"):
        if (lib_dir / name).exists():
            return str(lib_dir / name)
    raise ImportError(f"no ggml library found under {lib_dir}")


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(library_path(), mode=ctypes.RTLD_GLOBAL)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    return lib


def quantize(x: np.ndarray, qtype: str, imatrix: Optional[np.ndarray] = None) -> np.ndarray:
    """llama.cpp's quantization of a (rows, cols) float32 matrix: (rows, row_bytes) uint8."""
    gt = GGMLQuantizationType[qtype.upper()]
    block, type_size = GGML_QUANT_SIZES[gt]
    src = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = src.shape
    dst = np.zeros((rows, cols // block * type_size), dtype=np.uint8)
    weights = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    lib = _lib()
    lib.ggml_quantize_init(int(gt))
    written = lib.ggml_quantize_chunk(
        int(gt),
        src.ctypes.data,
        dst.ctypes.data,
        0,
        rows,
        cols,
        None if weights is None else weights.ctypes.data,
    )
    if written != dst.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {dst.nbytes}")
    return dst


def dequantize(data: np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    """llama.cpp's dequantization (the type's ``to_float``) into a float32 matrix."""
    gt = GGMLQuantizationType[qtype.upper()]
    traits = _lib().ggml_get_type_traits(int(gt)).contents
    raw = np.ascontiguousarray(data, dtype=np.uint8)
    out = np.zeros(shape, dtype=np.float32)
    _TO_FLOAT(traits.to_float)(raw.ctypes.data, out.ctypes.data, out.size)
    return out


def compare_quantize(
    name: str, x: np.ndarray, imatrix: Optional[np.ndarray] = None
) -> tuple[float, float]:
    """ferroquant's quantization of ``x`` against llama.cpp's: (share of byte-identical
    blocks, our imatrix-weighted RMSE / llama.cpp's)."""
    from ferroquant import quants

    ours = quants.quantize(x, name, imatrix)
    ref = quantize(x, name, imatrix)
    if ours.shape != ref.shape:
        raise AssertionError(f"{name}: shapes {ours.shape} != {ref.shape}")
    type_size = quants.type_info(name).type_size
    same = np.all(ours.reshape(-1, type_size) == ref.reshape(-1, type_size), axis=1).mean()
    w = np.ones(x.shape[1], np.float32) if imatrix is None else imatrix

    def err(q: np.ndarray) -> float:
        y = quants.dequantize(q, name, x.shape)
        return float(np.sqrt(np.mean(w * (x.astype(np.float64) - y) ** 2)))

    ref_err = err(ref)
    return float(same), (err(ours) / ref_err if ref_err > 0 else 1.0)
