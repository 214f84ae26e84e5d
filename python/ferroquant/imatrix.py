"""Importance matrices: per-input-column activation statistics of each weight tensor.

llama.cpp's ``llama-imatrix`` accumulates, for every matrix multiplication ``W @ x`` with a
``blk.*`` weight, the sum of ``x_j**2`` over the tokens it saw (``in_sum2``) and the token
count (``counts``); ``llama-quantize`` divides the two to get a per-column weight for the
K-quant and IQ scale searches. This module holds that data (:class:`ImportanceMatrix`), reads
and writes both of llama.cpp's file forms and computes it from a Hugging Face model.

File forms (``tools/imatrix/imatrix.cpp``, ``save_imatrix`` / ``save_imatrix_legacy``):

* GGUF (current): ``general.type = "imatrix"``, ``imatrix.datasets`` (string array),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32); per weight tensor NAME the F32
  tensors ``NAME.in_sum2`` with ne = [n_cols, n_mat] and ``NAME.counts`` with ne = [1, n_mat];
  newer versions add ``NAME.in_sum`` (sum of x, same shape as ``in_sum2``).
* legacy ``.dat`` (all little-endian)::

      int32 n_entries
      n_entries x { int32 name_len; name bytes; int32 ncall; int32 nval;
                    float32 values[nval] }     # values = mean(x**2) * ncall
      int32 last_chunk; int32 dataset_len; dataset bytes   # optional trailer

  ``ncall`` is the number of chunks (``ceil(max count / chunk_size)``); reading turns it back
  into ``counts = ncall * chunk_size`` and ``in_sum2 = values * chunk_size`` as llama.cpp does.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

GENERAL_TYPE = "imatrix"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUM2 = ".in_sum2"
SUFFIX_COUNTS = ".counts"
SUFFIX_SUM = ".in_sum"
# llama-imatrix's default context (chunk size); used for legacy files, which do not store it
DEFAULT_CHUNK_SIZE = 512
_MAX_ENTRIES = 1_000_000
_MAX_NAME = 4096


class ImatrixError(ValueError):
    """An importance matrix that cannot be used; the message names the file, tensor, problem."""


@dataclass
class ImatrixEntry:
    """Statistics of one weight tensor: ``n_mat`` matrices (experts) of ``n_cols`` inputs."""

    in_sum2: np.ndarray  # float64 (n_mat, n_cols): sum of x**2 per input column
    counts: np.ndarray  # float64 (n_mat,): tokens seen by each matrix
    in_sum: Optional[np.ndarray] = None  # float64 (n_mat, n_cols): sum of x (newer files)

    @property
    def n_mat(self) -> int:
        return int(self.in_sum2.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.in_sum2.shape[1])


@dataclass
class ImportanceMatrix:
    """Per GGUF tensor name, llama.cpp's importance statistics, plus the file's metadata."""

    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    source: str = "<memory>"  # the file it came from, for error messages

    # ---- building -------------------------------------------------------------------------

    def add(
        self,
        name: str,
        sum2: np.ndarray,
        count: Union[float, np.ndarray],
        sum1: Optional[np.ndarray] = None,
    ) -> None:
        """Accumulate ``sum2`` ((n_cols,) or (n_mat, n_cols)) seen by ``count`` tokens."""
        s2 = np.asarray(sum2, dtype=np.float64)
        if s2.ndim == 1:
            s2 = s2.reshape(1, -1)
        cnt = np.broadcast_to(np.asarray(count, dtype=np.float64), (s2.shape[0],)).copy()
        s1 = None if sum1 is None else np.asarray(sum1, dtype=np.float64).reshape(s2.shape)
        e = self.entries.get(name)
        if e is None:
            self.entries[name] = ImatrixEntry(s2.copy(), cnt, None if s1 is None else s1.copy())
            return
        if e.in_sum2.shape != s2.shape:
            raise ImatrixError(
                f"{self.source}: tensor {name!r}: statistics of shape {s2.shape} added to "
                f"{e.in_sum2.shape}"
            )
        e.in_sum2 += s2
        e.counts += cnt
        if e.in_sum is not None:
            e.in_sum = e.in_sum + s1 if s1 is not None else None

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    # ---- what the quantizers take ---------------------------------------------------------

    def weights(self, name: str) -> np.ndarray:
        """Per-column importance ``in_sum2 / counts`` as float32: shape (n_cols,) for a
        plain matrix, (n_mat, n_cols) for stacked experts. A matrix that saw no token gets
        weight 1 everywhere (neutral), as llama-quantize does for partial data."""
        e = self.entries.get(name)
        if e is None:
            raise ImatrixError(f"{self.source}: no importance data for tensor {name!r}")
        out = np.ones(e.in_sum2.shape, dtype=np.float64)
        seen = e.counts > 0
        out[seen] = e.in_sum2[seen] / e.counts[seen, None]
        w = out.astype(np.float32)
        return w[0] if e.n_mat == 1 else w

    def weights_dict(self) -> dict[str, np.ndarray]:
        """``{name: weights(name).reshape(-1)}`` for every entry."""
        return {name: self.weights(name).reshape(-1) for name in self.names()}

    def check_against(
        self, shapes: Mapping[str, tuple[int, ...]], require_all: bool = False
    ) -> None:
        """Raise :class:`ImatrixError` unless every entry names a tensor of ``shapes`` (numpy
        order, e.g. ``(rows, cols)`` or ``(n_expert, rows, cols)``) whose input width and
        matrix count match. A legacy entry of a stacked tensor (one row of n_mat * n_cols
        values) is reshaped in place. ``require_all``: also every 2-D+ ``blk.*`` weight
        must have an entry."""
        for name in self.names():
            e = self.entries[name]
            shape = shapes.get(name)
            if shape is None:
                raise ImatrixError(
                    f"{self.source}: tensor {name!r} is not in the model: the importance "
                    f"matrix is for another model"
                )
            if len(shape) < 2:
                raise ImatrixError(
                    f"{self.source}: tensor {name!r} has shape {tuple(shape)}, not a matrix"
                )
            n_cols = int(shape[-1])
            n_mat = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
            if e.n_mat == 1 and n_mat > 1 and e.n_cols == n_cols * n_mat:
                # legacy files store stacked experts as one row with one count
                e.in_sum2 = e.in_sum2.reshape(n_mat, n_cols)
                e.counts = np.repeat(e.counts, n_mat)
                if e.in_sum is not None:
                    e.in_sum = e.in_sum.reshape(n_mat, n_cols)
            if e.n_cols != n_cols or e.n_mat != n_mat:
                raise ImatrixError(
                    f"{self.source}: tensor {name!r}: importance data for {e.n_mat} x "
                    f"{e.n_cols} inputs, the model tensor of shape {tuple(shape)} has "
                    f"{n_mat} x {n_cols}: the importance matrix is for another model"
                )
        if require_all:
            missing = [
                n
                for n, s in shapes.items()
                if n.startswith("blk.") and n.endswith(".weight") and len(s) >= 2
                if n not in self.entries
            ]
            if missing:
                raise ImatrixError(
                    f"{self.source}: no importance data for {len(missing)} model tensor(s), "
                    f"e.g. {missing[0]!r}"
                )

    # ---- files ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: PathLike, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ImportanceMatrix:
        """Read a GGUF or legacy ``.dat`` imatrix (told apart by the GGUF magic).
        ``chunk_size`` is assumed for legacy files, which do not record it."""
        path = Path(path)
        if not path.is_file():
            raise ImatrixError(f"{path}: no such imatrix file")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return _load_gguf(path)
        return _load_legacy(path, chunk_size)

    def save(self, path: PathLike, fmt: Optional[str] = None) -> Path:
        """Write as llama.cpp does; ``fmt`` "gguf" or "dat" (default: by the suffix, .dat ->
        legacy, anything else -> GGUF). Written under a temporary name, then renamed."""
        path = Path(path)
        if fmt is None:
            fmt = "dat" if path.suffix.lower() == ".dat" else "gguf"
        if fmt not in ("gguf", "dat"):
            raise ImatrixError(f"{path}: unknown imatrix format {fmt!r} (gguf or dat)")
        if not self.entries:
            raise ImatrixError(f"{path}: refusing to write an empty importance matrix")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            if fmt == "gguf":
                self._write_gguf(tmp)
            else:
                tmp.write_bytes(self._legacy_bytes())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def _write_gguf(self, path: Path) -> None:
        import gguf

        logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
        w = gguf.GGUFWriter(path, "")
        # imatrix files carry no architecture (gguf_init_empty in save_imatrix)
        w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
        w.add_type(GENERAL_TYPE)
        w.add_array(KEY_DATASETS, list(self.datasets))
        w.add_uint32(KEY_CHUNK_COUNT, int(self.chunk_count))
        w.add_uint32(KEY_CHUNK_SIZE, int(self.chunk_size))
        for name in self.names():
            e = self.entries[name]
            # numpy (n_mat, n_cols) is GGUF ne = [n_cols, n_mat]
            w.add_tensor(name + SUFFIX_SUM2, np.ascontiguousarray(e.in_sum2, dtype=np.float32))
            counts = np.ascontiguousarray(e.counts.reshape(-1, 1), dtype=np.float32)
            w.add_tensor(name + SUFFIX_COUNTS, counts)
            if e.in_sum is not None:
                w.add_tensor(name + SUFFIX_SUM, np.ascontiguousarray(e.in_sum, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    def _legacy_bytes(self) -> bytes:
        chunk = max(int(self.chunk_size), 1)
        parts = [struct.pack("<i", len(self.entries))]
        for name in self.names():
            e = self.entries[name]
            raw = name.encode("utf-8")
            ncall = int(np.ceil(float(e.counts.max()) / chunk)) if e.counts.size else 0
            counts = np.repeat(e.counts, e.n_cols).reshape(e.in_sum2.shape)
            values = np.where(counts > 0, e.in_sum2 / np.where(counts > 0, counts, 1.0), 1.0)
            values = (values * ncall).astype("<f4").reshape(-1)
            parts.append(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size))
            parts.append(values.tobytes())
        dataset = (self.datasets[-1] if self.datasets else "").encode("utf-8")
        parts.append(struct.pack("<ii", int(self.chunk_count), len(dataset)) + dataset)
        return b"".join(parts)


# ---- readers ----------------------------------------------------------------------------


def _load_gguf(path: Path) -> ImportanceMatrix:
    from gguf import GGMLQuantizationType

    from .gguf_io import GGUFError, field_value, open_gguf

    try:
        reader = open_gguf(path)
        gtype = field_value(reader, "general.type")
        datasets = field_value(reader, KEY_DATASETS, [])
        chunk_count = field_value(reader, KEY_CHUNK_COUNT, 0)
        chunk_size = field_value(reader, KEY_CHUNK_SIZE, DEFAULT_CHUNK_SIZE)
    except GGUFError as err:
        raise ImatrixError(f"corrupt imatrix file: {err}") from err
    except Exception as err:  # gguf-py field decoding on a damaged file
        raise ImatrixError(f"{path}: corrupt imatrix file ({type(err).__name__}: {err})") from err
    if gtype is not None and gtype != GENERAL_TYPE:
        raise ImatrixError(f"{path}: a GGUF file of type {gtype!r}, not an imatrix")
    if not isinstance(datasets, list):
        datasets = [str(datasets)]
    parts: dict[str, dict[str, Any]] = {}
    for t in reader.tensors:
        for suffix in (SUFFIX_SUM2, SUFFIX_COUNTS, SUFFIX_SUM):
            if t.name.endswith(suffix):
                parts.setdefault(t.name[: -len(suffix)], {})[suffix] = t
                break
    if not parts:
        raise ImatrixError(f"{path}: no '<tensor>.in_sum2' / '.counts' tensors: not an imatrix")
    out = ImportanceMatrix(
        datasets=[str(d) for d in datasets],
        chunk_count=int(chunk_count),
        chunk_size=int(chunk_size),
        source=str(path),
    )
    for name in sorted(parts):
        p = parts[name]
        if SUFFIX_SUM2 not in p or SUFFIX_COUNTS not in p:
            raise ImatrixError(f"{path}: tensor {name!r}: mismatched sums and counts")
        arrays = {}
        for suffix, t in p.items():
            if int(t.tensor_type) != int(GGMLQuantizationType.F32):
                raise ImatrixError(
                    f"{path}: tensor {t.name!r} has type "
                    f"{GGMLQuantizationType(int(t.tensor_type)).name}, F32 expected"
                )
            ne = [int(v) for v in t.shape.tolist()]
            if len(ne) > 2:
                raise ImatrixError(
                    f"{path}: tensor {t.name!r} has {len(ne)} dimensions, 2 expected"
                )
            arrays[suffix] = (np.asarray(t.data, dtype=np.float64).reshape(-1), ne)
        sums, ne2 = arrays[SUFFIX_SUM2]
        counts, _ = arrays[SUFFIX_COUNTS]
        n_mat = counts.size
        if n_mat == 0 or sums.size == 0 or sums.size % n_mat:
            raise ImatrixError(
                f"{path}: tensor {name!r}: {sums.size} sums do not split into {n_mat} matrices"
            )
        if len(ne2) == 2 and ne2[1] != n_mat:
            raise ImatrixError(
                f"{path}: tensor {name!r}: in_sum2 has ne {ne2}, {n_mat} matrices counted"
            )
        if not (np.all(np.isfinite(sums)) and np.all(np.isfinite(counts))):
            raise ImatrixError(f"{path}: tensor {name!r}: non-finite values")
        if np.any(sums < 0) or np.any(counts < 0):
            raise ImatrixError(f"{path}: tensor {name!r}: negative sums or counts")
        sum1 = None
        if SUFFIX_SUM in arrays:
            sum1 = arrays[SUFFIX_SUM][0]
            if sum1.size != sums.size:
                raise ImatrixError(f"{path}: tensor {name!r}: in_sum and in_sum2 sizes differ")
            sum1 = sum1.reshape(n_mat, -1)
        out.entries[name] = ImatrixEntry(
            sums.reshape(n_mat, -1), np.round(counts).astype(np.float64), sum1
        )
    return out


def _load_legacy(path: Path, chunk_size: int) -> ImportanceMatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str, what: str) -> tuple[int, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ImatrixError(f"{path}: truncated imatrix file at byte {pos} (reading {what})")
        vals = struct.unpack_from(fmt, data, pos)
        pos += size
        return vals

    (n_entries,) = take("<i", "the entry count")
    if n_entries < 1 or n_entries > _MAX_ENTRIES or n_entries * 16 > len(data):
        raise ImatrixError(
            f"{path}: not an imatrix file (neither GGUF nor a legacy .dat with a plausible "
            f"entry count; read {n_entries})"
        )
    chunk = max(int(chunk_size), 1)
    out = ImportanceMatrix(chunk_size=chunk, source=str(path))
    for i in range(n_entries):
        (name_len,) = take("<i", f"entry {i}'s name length")
        if name_len <= 0 or name_len > _MAX_NAME:
            raise ImatrixError(
                f"{path}: corrupt entry {i} at byte {pos - 4}: name length {name_len}"
            )
        if pos + name_len > len(data):
            raise ImatrixError(f"{path}: truncated imatrix file at byte {pos} (entry {i}'s name)")
        try:
            name = data[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError as err:
            raise ImatrixError(
                f"{path}: corrupt entry {i} at byte {pos}: name is not UTF-8"
            ) from err
        pos += name_len
        ncall, nval = take("<ii", f"tensor {name!r}'s counts")
        if nval < 1:
            raise ImatrixError(f"{path}: tensor {name!r}: corrupt value count {nval}")
        if pos + 4 * nval > len(data):
            raise ImatrixError(
                f"{path}: truncated imatrix file: tensor {name!r} needs {nval} values at byte "
                f"{pos}, the file has {len(data)} bytes"
            )
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float64)
        pos += 4 * nval
        if not np.all(np.isfinite(vals)) or np.any(vals < 0):
            raise ImatrixError(f"{path}: tensor {name!r}: non-finite or negative values")
        if name in out.entries:
            raise ImatrixError(f"{path}: tensor {name!r} appears twice")
        # values = mean * ncall; llama.cpp rebuilds sums over ncall * chunk_size tokens
        if ncall > 0:
            out.add(name, vals * chunk, float(ncall) * chunk)
        else:
            out.add(name, vals * chunk, float(chunk))
    # optional trailer: last chunk, dataset name
    if pos + 4 <= len(data):
        (out.chunk_count,) = take("<i", "the chunk count")
        if pos + 4 <= len(data):
            (ds_len,) = take("<i", "the dataset name length")
            if 0 < ds_len <= len(data) - pos:
                out.datasets.append(data[pos : pos + ds_len].decode("utf-8", errors="replace"))
    else:
        out.chunk_count = int(max(float(e.counts.max()) for e in out.entries.values()) // chunk)
    return out


def load_imatrix(path: PathLike) -> ImportanceMatrix:
    """:meth:`ImportanceMatrix.load`."""
    return ImportanceMatrix.load(path)


def model_shapes_gguf(path: PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> numpy-order shape of a GGUF model, for :meth:`check_against`."""
    from .gguf_io import open_gguf, tensor_infos

    return {i.name: i.shape for i in tensor_infos(open_gguf(path))}


def merge(matrices: Iterable[ImportanceMatrix]) -> ImportanceMatrix:
    """Sum several importance matrices (as ``llama-imatrix --in-file a --in-file b``)."""
    out = ImportanceMatrix()
    for m in matrices:
        for name in m.names():
            e = m.entries[name]
            out.add(name, e.in_sum2, e.counts, e.in_sum)
        out.datasets += m.datasets
        out.chunk_count += m.chunk_count
        out.chunk_size = m.chunk_size
    return out


# ---- computing from a Hugging Face model ----------------------------------------------------


def token_windows(
    ids: list[int], seqlen: int, nsamples: Optional[int], bos_id: Optional[int] = None
) -> list[list[int]]:
    """Consecutive ``seqlen``-token chunks of ``ids`` as llama-imatrix makes them: the first
    token of each chunk is replaced by BOS when the model adds one; at most ``nsamples``."""
    if seqlen < 16:
        raise ImatrixError(f"--seqlen {seqlen}: at least 16 tokens (llama.cpp ignores less)")
    n = len(ids) // seqlen
    if nsamples is not None:
        n = min(n, int(nsamples))
    if n < 1:
        raise ImatrixError(
            f"the calibration text has {len(ids)} tokens, fewer than one window of {seqlen}"
        )
    out = []
    for i in range(n):
        w = list(ids[i * seqlen : (i + 1) * seqlen])
        if bos_id is not None:
            w[0] = int(bos_id)
        out.append(w)
    return out


def collect_hf(
    model: Any,
    gguf_name: Any,
    windows: Iterable[list[int]],
    progress: bool = True,
    total: Optional[int] = None,
) -> ImportanceMatrix:
    """Run ``model`` (a torch causal LM) on each token window with forward pre-hooks on every
    ``nn.Linear`` whose weight has a ``blk.*`` GGUF name (``gguf_name(hf_weight_name)``,
    raising or returning None for others), accumulating sum x**2 per input column and the
    token count per tensor (per-call sums in float32, running totals in float64)."""
    import torch
    from tqdm import tqdm

    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name: str) -> Any:
        def hook(_mod: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach()
            flat = x.reshape(-1, x.shape[-1]).float()
            # one call's sum in float32 (a few thousand tokens), the running total in float64
            s = (flat * flat).sum(dim=0).to(torch.float64)
            if name in sums:
                sums[name] += s
            else:
                sums[name] = s
            counts[name] = counts.get(name, 0) + int(flat.shape[0])

        return hook

    for mod_name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        try:
            target = gguf_name(mod_name + ".weight")
        except ValueError:
            continue
        if target is None or not target.startswith("blk."):
            continue
        hooks.append(mod.register_forward_pre_hook(hook_for(target)))
    if not hooks:
        raise ImatrixError("no nn.Linear inside the decoder layers has a GGUF tensor name")
    n_windows = 0
    # the decoder stack alone: the LM head's logits are not needed (llama-imatrix skips
    # output.weight by default)
    body = getattr(model, "base_model", None) or model
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.inference_mode():
            for w in tqdm(windows, desc="imatrix", unit="chunk", total=total, disable=not progress):
                ids = torch.tensor([w], dtype=torch.long, device=device)
                body(input_ids=ids, use_cache=False)
                n_windows += 1
    finally:
        for h in hooks:
            h.remove()
    out = ImportanceMatrix(chunk_count=n_windows)
    for name in sorted(sums):
        out.add(name, sums[name].cpu().numpy(), float(counts[name]))
    return out


def _read_calib_text(path: PathLike) -> str:
    """The calibration text, through the shared loader (plain text or JSONL ``text``)."""
    from .calib import read_text

    return read_text(Path(path))


def _tokenize_prefix(tok: Any, text: str, need: Optional[int]) -> list[int]:
    """Token ids of ``text``; with ``need``, of a prefix long enough for ``need`` tokens
    (grown until it is), so a few windows do not tokenize a whole corpus."""
    if need is None:
        return list(tok(text, add_special_tokens=False)["input_ids"])
    n_chars = max(need * 8, 4096)
    while True:
        ids = list(tok(text[:n_chars], add_special_tokens=False)["input_ids"])
        if len(ids) > need or n_chars >= len(text):
            return ids
        n_chars *= 2


def compute_hf(
    model_dir: PathLike,
    calib: PathLike,
    nsamples: Optional[int] = None,
    seqlen: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
) -> ImportanceMatrix:
    """Compute an importance matrix from a HF checkpoint directory on a calibration text,
    as ``llama-imatrix -m MODEL -f CALIB -c SEQLEN [--chunks NSAMPLES]`` does."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .arch import arch_for_config

    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ImatrixError(f"{model_dir}: no config.json (not a Hugging Face checkpoint)")
    arch = arch_for_config(json.loads(cfg_path.read_text()), str(cfg_path))
    text = _read_calib_text(calib)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = _tokenize_prefix(tok, text, None if nsamples is None else int(nsamples) * seqlen)
    probe = tok("a", add_special_tokens=True)["input_ids"]
    bos = (
        tok.bos_token_id
        if tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
        else None
    )
    windows = token_windows(ids, seqlen, nsamples, bos)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = collect_hf(model, arch.gguf_name, windows, progress=progress, total=len(windows))
    out.chunk_size = seqlen
    out.datasets = [str(calib)]
    out.source = str(model_dir)
    return out


# ---- computing from a GGUF model with our runtime -------------------------------------------


def compute_gguf(
    model_path: PathLike,
    calib: PathLike,
    nsamples: Optional[int] = None,
    seqlen: int = DEFAULT_CHUNK_SIZE,
    n_threads: int = 0,
    process_output: bool = False,
    progress: bool = True,
) -> ImportanceMatrix:
    """Compute an importance matrix from a GGUF model with our CPU runtime (no torch), as
    ``llama-imatrix -m MODEL -f CALIB -c SEQLEN -b SEQLEN [--chunks NSAMPLES]`` does: the
    text tokenized by the model's own tokenizer, consecutive chunks of ``seqlen`` tokens
    (BOS first when the model adds one), each evaluated from an empty context.
    ``output.weight`` is left out unless ``process_output`` (llama-imatrix's default)."""
    from .runtime import Model

    model_path = Path(model_path)
    model = Model.load(model_path, n_ctx=seqlen, n_threads=n_threads)
    collect = getattr(model, "collect_activation_stats", None)
    if collect is None:
        raise ImatrixError(
            f"{model_path}: this build's runtime cannot collect activation statistics; "
            "compute the imatrix from the Hugging Face checkpoint instead"
        )
    text = _read_calib_text(calib)

    def tok(t: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": model.tokenize(t, add_special=add_special_tokens)}

    ids = _tokenize_prefix(tok, text, None if nsamples is None else int(nsamples) * seqlen)
    bos = model.bos_id if model.add_bos else None
    windows = token_windows(ids, seqlen, nsamples, bos)
    try:
        raw = collect(windows, progress=progress)
    except AttributeError as err:  # a Python layer newer than the built extension
        raise ImatrixError(
            f"{model_path}: this build's runtime cannot collect activation statistics ({err})"
        ) from err
    out = ImportanceMatrix(chunk_count=len(windows), chunk_size=seqlen, source=str(model_path))
    for name in sorted(raw):
        if name == "output.weight" and not process_output:
            continue
        sums, count = raw[name]
        out.add(name, np.asarray(sums, dtype=np.float64), float(count))
    if not out.entries:
        raise ImatrixError(f"{model_path}: the runtime gathered no statistics")
    out.datasets = [str(calib)]
    return out
