"""Reading GGUF files through gguf-py, with errors that name the file and the problem.

gguf-py owns the container format; this module adds checks (truncation, unknown types,
sizes) and a few summaries the rest of ferroquant needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from .quants import type_info

PathLike = Union[str, Path]


class GGUFError(ValueError):
    """A GGUF file that cannot be read: the message names the file and the problem."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: str
    # Shape in numpy order (rows, cols), i.e. GGUF's ne reversed.
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    offset: int


def open_gguf(path: PathLike) -> GGUFReader:
    """Open a GGUF file read-only (memory-mapped); raise GGUFError if it is not valid."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    try:
        reader = GGUFReader(path, "r")
    except Exception as err:  # gguf-py raises ValueError, KeyError, IndexError...
        raise GGUFError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from err
    size = path.stat().st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise GGUFError(
                f"{path}: tensor {t.name!r} ends at byte {end}, past the end of the file "
                f"({size} bytes): the file is truncated"
            )
    return reader


def field_value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """The Python value of a metadata field (str, int, float, bool or list)."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def metadata(reader: GGUFReader, max_array: int = 8) -> dict[str, Any]:
    """All metadata fields (minus the GGUF header counters); long arrays are summarized."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            n = len(field.data)
            head = field.contents(slice(0, min(n, max_array)))
            out[key] = {"array_length": n, "head": head}
        else:
            out[key] = field.contents()
    return out


def tensor_infos(reader: GGUFReader) -> list[TensorInfo]:
    infos = []
    for t in reader.tensors:
        qtype = GGMLQuantizationType(int(t.tensor_type)).name
        infos.append(
            TensorInfo(
                name=t.name,
                qtype=qtype,
                shape=tuple(int(v) for v in reversed(t.shape.tolist())),
                n_elements=int(t.n_elements),
                n_bytes=int(t.n_bytes),
                offset=int(t.data_offset),
            )
        )
    return infos


def tensor_bytes(reader: GGUFReader, name: str) -> np.ndarray:
    """The raw bytes of one tensor as a flat uint8 view of the memory map."""
    for t in reader.tensors:
        if t.name == name:
            return np.asarray(t.data).reshape(-1).view(np.uint8)
    raise GGUFError(
        f"{reader.data.filename if hasattr(reader.data, 'filename') else 'GGUF'}: no tensor {name!r}"
    )


def read_tensor_f32(reader: GGUFReader, name: str) -> np.ndarray:
    """One tensor dequantized to float32 with our kernels, in numpy shape order."""
    from . import quants

    info = next((i for i in tensor_infos(reader) if i.name == name), None)
    if info is None:
        raise GGUFError(f"no tensor {name!r}")
    type_info(info.qtype)  # raises a clear error for types we do not implement
    rows = info.n_elements // info.shape[-1]
    flat = quants.dequantize(tensor_bytes(reader, name), info.qtype, (rows, info.shape[-1]))
    return flat.reshape(info.shape)
