"""ferroquant: Rust-accelerated post-training quantization of large language models.

The public API:

- :mod:`ferroquant.quants`: GGUF block quantization (``quantize``, ``dequantize``, ``types``).
- :mod:`ferroquant.gguf_io`: reading GGUF files (metadata, tensors, sizes).
- :class:`ferroquant.Model`: run a GGUF model on the CPU (``load``, ``logits``, ``generate``).
- :func:`ferroquant.cli.main`: the ``ferroquant`` command line.
"""

from __future__ import annotations

from . import quants
from ._native import __version__
from .runtime import Model

__all__ = ["Model", "__version__", "quants"]
