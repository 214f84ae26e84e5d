"""ferroquant: Rust-accelerated post-training quantization of large language models.

The public API:

- :mod:`ferroquant.quants`: GGUF block quantization (``quantize``, ``dequantize``, ``types``).
- :mod:`ferroquant.gguf_io`: reading GGUF files (metadata, tensors, sizes).
- :func:`ferroquant.cli.main`: the ``ferroquant`` command line.
"""

from __future__ import annotations

from . import quants
from ._native import __version__

__all__ = ["__version__", "quants"]
