"""Streaming safetensors reader and writer on plain numpy memory maps (no torch).

The format (https://github.com/huggingface/safetensors#format): 8 bytes little-endian header
length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}``
(plus an optional ``__metadata__`` string map), then the tensor bytes; offsets are relative
to the end of the header. Reading maps each file once and hands out views, so a tensor costs
memory only while it is being converted. BF16 (which numpy lacks) is widened to float32.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

PathLike = Union[str, Path]

# safetensors dtype -> (numpy dtype of the stored bytes, bytes per element)
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read; the message names the file and tensor."""


@dataclass(frozen=True)
class StTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def n_bytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> tuple[dict[str, StTensor], dict[str, str]]:
    """Parse and validate one file's header: dtypes, shapes, offsets inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise SafetensorsError(
                f"{path}: header length {n} does not fit the file ({size} bytes): "
                "not a safetensors file, or truncated"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{path}: corrupt safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    out: dict[str, StTensor] = {}
    for name, entry in header.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(v) for v in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise SafetensorsError(f"{path}: tensor {name!r}: malformed header entry") from err
        if dtype not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r}: unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        if end - begin != expected or begin < 0:
            raise SafetensorsError(
                f"{path}: tensor {name!r}: {end - begin} bytes stored for shape {list(shape)} "
                f"{dtype} ({expected} expected)"
            )
        if data_start + end > size:
            raise SafetensorsError(
                f"{path}: tensor {name!r} ends at byte {data_start + end}, past the end of the "
                f"file ({size} bytes): the file is truncated"
            )
        out[name] = StTensor(name, dtype, shape, path, data_start + begin, data_start + end)
    return out, {str(k): str(v) for k, v in meta.items()}


class SafetensorsDir:
    """All tensors of a Hugging Face checkpoint directory (single file or sharded)."""

    def __init__(self, model_dir: PathLike) -> None:
        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted({str(v) for v in weight_map.values()})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise SafetensorsError(f"{index}: corrupt index ({err})") from err
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            raise SafetensorsError(f"{self.dir}: no *.safetensors files (only safetensors is read)")
        self.files = [self.dir / f for f in files]
        self.tensors: dict[str, StTensor] = {}
        for f in self.files:
            if not f.is_file():
                raise SafetensorsError(f"{f}: listed in the index but missing")
            found, _ = read_header(f)
            for name, t in found.items():
                if name in self.tensors:
                    raise SafetensorsError(
                        f"{f}: tensor {name!r} also in {self.tensors[name].file}"
                    )
                self.tensors[name] = t
        self._maps: dict[Path, np.memmap] = {}

    def names(self) -> list[str]:
        return list(self.tensors)

    def _map(self, path: Path) -> np.memmap:
        m = self._maps.get(path)
        if m is None:
            m = np.memmap(path, dtype=np.uint8, mode="r")
            self._maps[path] = m
        return m

    def raw(self, name: str) -> np.ndarray:
        """The stored array (a view of the memory map; BF16 as uint16)."""
        t = self.tensors[name]
        view = self._map(t.file)[t.begin : t.end]
        return view.view(_DTYPES[t.dtype]).reshape(t.shape)

    def load_f32(self, name: str, release: bool = True) -> np.ndarray:
        """A float32 copy of one tensor; ``release`` drops its file pages from memory after."""
        t = self.tensors[name]
        arr = self.raw(name)
        if t.dtype == "BF16":
            # widen in place: one float32-sized buffer, no temporaries
            bits = np.empty(arr.shape, dtype=np.uint32)
            np.copyto(bits, arr, casting="safe")
            np.left_shift(bits, 16, out=bits)
            out = bits.view(np.float32)
        else:
            out = arr.astype(np.float32)
        if release:
            release_pages(self._map(t.file), t.begin, t.end)
        return out

    def close(self) -> None:
        self._maps.clear()


def release_pages(mm: np.memmap, begin: int, end: int) -> None:
    """Tell the kernel a read-only mapped range is done with (``MADV_DONTNEED``).

    The pages stay valid (re-read from the file if touched again) but leave the resident set,
    so streaming a model keeps RSS near one tensor rather than the whole file.
    """
    raw = getattr(mm, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if raw is None or advice is None:
        return
    page = mmap.PAGESIZE
    start = (begin + page - 1) // page * page  # whole pages inside the range only
    stop = end // page * page
    if stop > start:
        try:
            raw.madvise(advice, start, stop - start)
        except (OSError, ValueError):
            pass


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept quiet."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return out


def write_streaming(
    path: PathLike,
    specs: list[tuple[str, str, tuple[int, ...]]],
    arrays: Iterable[np.ndarray],
    metadata: Optional[dict[str, str]] = None,
) -> None:
    """Write a safetensors file from (name, dtype, shape) specs and the arrays in that order.

    The header is written first from the specs, then each array as it arrives, so only one
    tensor is in memory at a time. The file is written under a temporary name and renamed.
    """
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in specs:
        n = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            it: Iterator[np.ndarray] = iter(arrays)
            for name, dtype, shape in specs:
                arr = next(it)
                want = _DTYPES[dtype]
                if arr.dtype != want or tuple(arr.shape) != tuple(shape):
                    raise ValueError(
                        f"{path}: tensor {name!r} is {arr.dtype}{list(arr.shape)}, "
                        f"the header says {dtype}{list(shape)}"
                    )
                f.write(np.ascontiguousarray(arr).tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
