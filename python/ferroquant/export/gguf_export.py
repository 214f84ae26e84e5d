"""GGUF output of GPTQ onto GGUF grids: the GPTQ'd linears go in as the block bytes the Rust
core made (``blocks``), everything else through the HF→GGUF converter with the file type's
usual choices (:func:`ferroquant.convert.convert`, ``pre_quantized``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

from ..convert import Summary, convert

PathLike = Union[str, Path]


def write_gguf_model(
    model_dir: PathLike,
    out: PathLike,
    results: dict[str, dict[str, Any]],
    qtype: str,
    progress: bool = True,
) -> Summary:
    """Write ``model_dir`` as a GGUF of file type ``qtype`` with the GPTQ ``results``' blocks."""
    pre: dict[str, tuple[str, np.ndarray]] = {}
    for prefix, res in results.items():
        blocks = res.get("blocks")
        if blocks is None:
            raise ValueError(f"{prefix}: GPTQ result has no GGUF blocks (not a GGUF grid)")
        pre[f"{prefix}.weight"] = (qtype, np.ascontiguousarray(blocks))
    return convert(model_dir, out, qtype, progress=progress, pre_quantized=pre)
