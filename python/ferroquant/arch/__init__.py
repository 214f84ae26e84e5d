"""Architecture table: one module per model family, looked up by the HF ``architectures`` name.

Each :class:`~ferroquant.arch.base.Arch` knows how llama.cpp's ``convert_hf_to_gguf.py``
writes its family: the GGUF architecture, the metadata keys, the tensor names (through
gguf-py's :class:`gguf.TensorNameMap`) and the layout fixes (e.g. llama's Q/K rotary
permutation, gemma's ``norm + 1``). For GGUF -> HF the same modules give the inverse.
"""

from __future__ import annotations

from typing import Any

from .base import Arch, ArchError
from .gemma import Gemma2, Gemma3
from .llama import Llama, Mistral
from .phi3 import Phi3
from .qwen import Qwen2, Qwen3

__all__ = ["ARCHES", "Arch", "ArchError", "arch_for_config", "arch_for_gguf", "supported"]

ARCHES: tuple[type[Arch], ...] = (Llama, Mistral, Qwen2, Qwen3, Gemma2, Gemma3, Phi3)

_BY_HF = {name: cls for cls in ARCHES for name in cls.hf_architectures}


def supported() -> list[str]:
    """The HF architecture names ``convert`` accepts."""
    return sorted(_BY_HF)


def arch_for_config(config: dict[str, Any], config_path: str = "config.json") -> Arch:
    """The converter for a HF ``config.json``; a clear error names the supported ones."""
    names = config.get("architectures") or []
    if not isinstance(names, list) or not names:
        raise ArchError(
            f"{config_path}: no 'architectures' entry; supported: {', '.join(supported())}"
        )
    for name in names:
        cls = _BY_HF.get(str(name))
        if cls is not None:
            return cls(config)
    raise ArchError(
        f"{config_path}: unsupported architecture {names[0]!r}; supported: {', '.join(supported())}"
    )


def arch_for_gguf(gguf_arch: str) -> type[Arch]:
    """The family a GGUF ``general.architecture`` belongs to (for GGUF -> HF export)."""
    for cls in ARCHES:
        if cls.gguf_arch_name() == gguf_arch and cls.exportable:
            return cls
    known = sorted({c.gguf_arch_name() for c in ARCHES if c.exportable})
    raise ArchError(f"cannot export GGUF architecture {gguf_arch!r}; supported: {', '.join(known)}")
