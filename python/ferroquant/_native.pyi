"""Stubs for the Rust extension ``ferroquant._native``."""

from typing import Any

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

# ---- runtime (rust/bindings/runtime.rs) ----

class Runtime:
    """A memory-mapped GGUF model with its KV cache and thread pool (one sequence)."""

    def __init__(
        self,
        path: str,
        arch: str,
        hparams: dict[str, float],
        tensors: list[tuple[str, int, list[int], int]],
        n_ctx: int,
        n_threads: int = 0,
    ) -> None:
        """``hparams``: ``{arch}.*`` keys without the prefix; ``tensors``: (name, ggml type id,
        GGUF shape ``ne``, absolute byte offset). Every tensor is checked against the file."""
    def forward(self, tokens: list[int], all_logits: bool = False) -> npt.NDArray[np.float32]:
        """Append ``tokens`` to the sequence; logits (n or 1, vocab). Releases the GIL."""
    def collect_stats(self, on: bool) -> None:
        """Start (True) or stop (False, dropping them) gathering, on every forward call, the
        per-column sums of squared inputs of every weight matrix (llama-imatrix's statistic)."""
    def take_stats(self) -> dict[str, tuple[npt.NDArray[np.float64], int]]:
        """``{tensor name: (sums of squares per input column, token count)}`` gathered since
        ``collect_stats(True)`` (then reset). ValueError when not collecting."""
    def truncate(self, n: int) -> None: ...
    def reset(self) -> None: ...
    @property
    def n_past(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def vocab(self) -> int: ...
    @property
    def n_threads(self) -> int: ...
    @property
    def weight_bytes_per_token(self) -> int: ...

class Sampler:
    def __init__(self, seed: int) -> None: ...
    def sample(
        self, logits: npt.NDArray[np.float32], temperature: float, top_k: int, top_p: float
    ) -> int:
        """Greedy when temperature <= 0; top-k (0: off), top-p (1: off), then temperature."""

def matmul(
    weight: npt.NDArray[np.uint8],
    qtype: str,
    rows: int,
    cols: int,
    x: npt.NDArray[np.float32],
    portable: bool = False,
    isa: str | None = None,
) -> npt.NDArray[np.float32]:
    """The runtime kernel: (ntok, cols) activations times quantized (rows, cols) -> (ntok, rows).

    The activations are first converted to the type's ggml ``vec_dot_type`` (Q8_0/Q8_1 per 32,
    Q8_K per 256, f16, bf16). ``isa``: "portable", "avx2", "avx512" or "neon" (at most what
    the CPU runs); ``portable=True`` is ``isa="portable"``."""

def simd_isa() -> str:
    """The instruction set the kernels dispatch to ("avx512f+bw+vl+vnni", "avx2+fma+f16c",
    "neon" or "portable"; ``FERROQUANT_SIMD=portable|avx2`` caps it)."""

def simd_tiers() -> list[str]:
    """The kernel tiers this CPU runs, lowest first ("portable", "avx2", "avx512", "neon")."""

def gptq_quantize(
    w: npt.NDArray[np.float32],
    h: npt.NDArray[np.float32],
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
    qtype: str | None = None,
    weighted_fit: bool = False,
) -> dict[str, Any]:
    """GPTQ of ``w`` (out, in) with Hessian ``h`` (in, in); GIL released, all cores.

    ``weighted_fit``: GGUF grids take their block scales from llama.cpp's importance-weighted
    search with ``diag(h)`` as the importance matrix.

    Returns codes (out, in) uint8, scales/zeros/mins (out, groups) float32, g_idx (in,) int32,
    perm (in,) int64 or None, dequant (out, in) float32, loss, damp, dead, and blocks
    (out, row_bytes) uint8 when ``qtype`` names a GGUF grid (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K).
    """

def rtn_quantize(
    w: npt.NDArray[np.float32],
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = False,
    qtype: str | None = None,
) -> dict[str, Any]:
    """Round-to-nearest on the same grids as :func:`gptq_quantize` (same dictionary)."""

def pack_bits(codes: npt.NDArray[np.uint32], bits: int) -> npt.NDArray[np.uint32]:
    """Pack (rows, cols) codes LSB first into (rows, cols * bits / 32) 32-bit words."""

def unpack_bits(words: npt.NDArray[np.uint32], bits: int, cols: int) -> npt.NDArray[np.uint32]:
    """Inverse of :func:`pack_bits`."""

def gptq_block_size(block_size: int, group_size: int) -> int:
    """The lazy block GPTQ uses: ``block_size`` rounded up to a multiple of ``group_size``."""
