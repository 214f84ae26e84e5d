"""A lean GGUF header reader: metadata and tensor table in plain Python values.

gguf-py's ``GGUFReader`` builds a numpy view for every part of every field (~100k objects for
a 49k-token vocabulary: seconds and ~150 MiB), which dominates requantizing a small model.
This reads the same header (GGUF v2/v3: magic, version, counts, key/value pairs, tensor infos,
aligned data start) with ``struct`` into a dict of ``(value type, sub type, value)``, checking
every length against the file size so a corrupt file is an error, never a huge allocation.
Tensor data is then taken from one ``np.memmap``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .gguf_io import GGUFError

_SCALAR = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class HeaderTensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order
    offset: int  # absolute, in the file
    n_bytes: int


@dataclass
class GGUFHeader:
    path: Path
    kv: dict[str, tuple[GGUFValueType, Optional[GGUFValueType], Any]]
    tensors: list[HeaderTensor]
    data: np.memmap

    def value(self, key: str, default: Any = None) -> Any:
        entry = self.kv.get(key)
        return default if entry is None else entry[2]

    def tensor_bytes(self, t: HeaderTensor) -> np.ndarray:
        return self.data[t.offset : t.offset + t.n_bytes]


class _Cursor:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated or corrupt header ({what} at byte {self.pos})")

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self, what: str) -> Union[str, bytes]:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw  # gguf-py's writer takes bytes as they are


def _value(c: _Cursor, vtype: GGUFValueType, key: str) -> tuple[Optional[GGUFValueType], Any]:
    if vtype == GGUFValueType.STRING:
        return None, c.string(key)
    if vtype in _SCALAR:
        return None, c.unpack(_SCALAR[vtype], key)
    if vtype != GGUFValueType.ARRAY:
        raise GGUFError(f"{c.path}: key {key!r} has unknown value type {int(vtype)}")
    try:
        sub = GGUFValueType(c.unpack("<I", key))
    except ValueError as err:
        raise GGUFError(f"{c.path}: key {key!r}: unknown array type") from err
    n = c.unpack("<Q", key)
    if sub == GGUFValueType.STRING:
        c.need(n * 8, key)  # at least a length per element
        return sub, [c.string(key) for _ in range(n)]
    if sub not in _NUMPY:
        raise GGUFError(f"{c.path}: key {key!r}: nested arrays are not supported")
    dt = np.dtype(_NUMPY[sub])
    c.need(n * dt.itemsize, key)
    arr = np.frombuffer(c.buf, dtype=dt, count=n, offset=c.pos)
    c.pos += n * dt.itemsize
    values = arr.astype(bool).tolist() if sub == GGUFValueType.BOOL else arr.tolist()
    return sub, values


def read_header(path: Union[str, Path]) -> GGUFHeader:
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    size = path.stat().st_size
    data = np.memmap(path, dtype=np.uint8, mode="r")
    c = _Cursor(memoryview(data), path)
    if bytes(c.buf[:4]) != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (bad magic)")
    c.pos = 4
    version = c.unpack("<I", "version")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported")
    n_tensors = c.unpack("<Q", "tensor count")
    n_kv = c.unpack("<Q", "key count")
    if n_tensors > size or n_kv > size:
        raise GGUFError(f"{path}: corrupt header counts")
    kv: dict[str, tuple[GGUFValueType, Optional[GGUFValueType], Any]] = {}
    for _ in range(n_kv):
        key = c.string("key")
        key = key if isinstance(key, str) else key.decode("utf-8", "replace")
        try:
            vtype = GGUFValueType(c.unpack("<I", key))
        except ValueError as err:
            raise GGUFError(f"{path}: key {key!r} has an unknown value type") from err
        sub, value = _value(c, vtype, key)
        kv[key] = (vtype, sub, value)
    raw_tensors = []
    for _ in range(n_tensors):
        name = c.string("tensor name")
        name = name if isinstance(name, str) else name.decode("utf-8", "replace")
        n_dims = c.unpack("<I", name)
        if n_dims > 4:
            raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions")
        ne = [c.unpack("<Q", name) for _ in range(n_dims)]
        try:
            qtype = GGMLQuantizationType(c.unpack("<I", name))
        except ValueError as err:
            raise GGUFError(f"{path}: tensor {name!r} has an unknown type") from err
        raw_tensors.append((name, qtype, tuple(reversed(ne)), c.unpack("<Q", name)))
    align = int(kv.get("general.alignment", (None, None, 32))[2])
    start = (c.pos + align - 1) // align * align
    tensors = []
    for name, qtype, shape, rel in raw_tensors:
        block, type_size = GGML_QUANT_SIZES[qtype]
        n = int(np.prod(shape, dtype=np.int64))
        if n % block:
            raise GGUFError(
                f"{path}: tensor {name!r} shape {list(shape)} does not fit {qtype.name} blocks"
            )
        n_bytes = n // block * type_size
        if start + rel + n_bytes > size:
            raise GGUFError(
                f"{path}: tensor {name!r} ends at byte {start + rel + n_bytes}, past the end of "
                f"the file ({size} bytes): the file is truncated"
            )
        tensors.append(HeaderTensor(name, qtype, shape, start + rel, n_bytes))
    return GGUFHeader(path, kv, tensors, data)
