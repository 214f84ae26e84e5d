"""Dynamic mixed precision: each tensor's GGUF type chosen from measured sensitivity under a
file-size budget.

>>> from ferroquant.dynamic import quantize_dynamic
>>> s = quantize_dynamic("SmolLM2-f32/", "out.gguf", target_bpw=5.5, calib="wikitext-tail")
>>> s.n_bytes, s.bits_per_weight, s.types["blk.0.attn_v.weight"]

Steps:

1. Sensitivity (:mod:`ferroquant.sensitivity`): the diagonal Fisher of the float model's
   output distribution and an importance matrix, from one forward + backward per calibration
   window (torch); cached under ``cache_dir``.
2. Damage table: for every quantizable tensor and every candidate type whose block divides
   its rows (K-quants and IQ4_XS need rows of a multiple of 256 values, the legacy types and
   IQ4_NL of 32), the second-order KL of quantizing that tensor alone with the exact GGUF
   quantizer (imatrix-weighted, as it will be written); cached per type.
3. Allocation (:mod:`ferroquant.allocate`): minimum summed damage with the whole file (GGUF
   header and metadata, the float tensors such as norms, every tensor's data with its
   alignment padding) at most the budget. ``target_bpw`` counts whole-file bits per weight,
   ``file bytes * 8 / parameters``, as the preset sizes in the issue do.
4. The GGUF is written by :func:`ferroquant.convert.write_gguf` with the chosen types (the
   importance matrix in each tensor's own quantization), then ``OUT.dynamic.json`` and
   ``OUT.dynamic.md`` report every choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

DEFAULT_CANDIDATES: tuple[str, ...] = (
    "Q2_K",
    "Q3_K",
    "IQ4_XS",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "Q4_0",
    "Q4_1",
    "IQ4_NL",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "F16",
)
DEFAULT_WINDOWS = 16
DEFAULT_SEQLEN = 256
CACHE_VERSION = 1
# llama_ftype written to general.file_type: that of the type holding the most weights
_FTYPE_OF = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K": 12,
    "Q4_K": 15,
    "Q5_K": 17,
    "Q6_K": 18,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
    "BF16": 32,
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferroquant" / "dynamic"


@dataclass
class DynamicSummary:
    """What :func:`quantize_dynamic` wrote and why."""

    out_path: Path
    n_bytes: int  # the file's size
    n_weights: int  # parameters in the file
    bits_per_weight: float  # whole file: n_bytes * 8 / n_weights
    tensor_bits_per_weight: float  # tensor data only (llama.cpp's "BPW"): header excluded
    target_bytes: int
    min_bytes: int  # smallest file the candidates allow
    max_bytes: int  # largest (every tensor at its best candidate)
    predicted_bytes: int  # the size the allocation accounted for (== n_bytes)
    predicted_kld: float  # summed damage of the choice (nats per token, second order)
    seconds: float
    types: dict[str, str] = field(default_factory=dict)  # tensor -> type (all tensors)
    type_counts: dict[str, int] = field(default_factory=dict)
    proxy: str = ""
    calib: Optional[str] = None
    imatrix: Optional[str] = None  # the importance matrix used in the quantization
    report_json: Optional[Path] = None
    report_md: Optional[Path] = None
    timings: dict[str, float] = field(default_factory=dict)
    tensors: list[dict[str, Any]] = field(default_factory=list)  # per tensor detail

    @property
    def n_tensors(self) -> int:
        return len(self.types)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        out = asdict(self)
        for k in ("out_path", "report_json", "report_md"):
            out[k] = None if out[k] is None else str(out[k])
        return out

    def text(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.type_counts.items()))
        return (
            f"wrote {self.out_path} (dynamic): {self.n_tensors} tensors [{counts}], "
            f"{self.n_bytes} bytes ({self.n_bytes / 2**20:.1f} MiB) of a {self.target_bytes}-byte "
            f"budget, {self.bits_per_weight:.3f} bits per weight (whole file), predicted KL "
            f"{self.predicted_kld:.5f}, {self.seconds:.1f} s; report {self.report_md}"
        )


# ---- the model: tensors, metadata, sizes ---------------------------------------------------


@dataclass
class _Tensor:
    name: str  # GGUF
    hf_name: Optional[str]
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]  # float32, GGUF layout
    base_type: str  # the type it gets when it is not quantizable
    quantizable: bool
    imatrix_name: Optional[str]

    @property
    def n_weights(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def cols(self) -> int:
        return int(self.shape[-1])


class _Model:
    """A HF checkpoint read the way :func:`ferroquant.convert.convert` reads it."""

    def __init__(self, model_dir: PathLike) -> None:
        import gguf

        from . import presets
        from .arch import ArchError, arch_for_config
        from .convert import (
            _LLAMA_LIKE_LAYER,
            _PHI3_LAYER,
            ConvertError,
            _base_float_type,
            _check_shapes,
            read_config,
        )
        from .safetensors_io import SafetensorsDir, SafetensorsError

        self.dir = Path(model_dir)
        config = read_config(self.dir)
        cfg_path = self.dir / "config.json"
        try:
            arch = arch_for_config(config, str(cfg_path))
        except ArchError as err:
            raise ConvertError(str(err)) from err
        if hasattr(arch, "set_model_dir"):
            arch.set_model_dir(self.dir)
        try:
            st = SafetensorsDir(self.dir)
        except SafetensorsError as err:
            raise ConvertError(str(err)) from err
        self.arch, self.st = arch, st
        mapping: dict[str, str] = {}
        for hf_name in st.names():
            if arch.skip_tensor(hf_name):
                continue
            try:
                mapping[hf_name] = arch.gguf_name(hf_name)
            except ArchError as err:
                raise ConvertError(f"{st.tensors[hf_name].file}: {err}") from err
        have = set(mapping.values())
        per_layer = _PHI3_LAYER if arch.gguf_arch == gguf.MODEL_ARCH.PHI3 else _LLAMA_LIKE_LAYER
        required = ["token_embd.weight", "output_norm.weight"] + [
            f"blk.{i}.{p}.weight" for i in range(arch.block_count) for p in per_layer
        ]
        missing = [n for n in required if n not in have]
        if missing:
            raise ConvertError(
                f"{self.dir}: {len(missing)} tensor(s) missing from the safetensors files, "
                f"e.g. {missing[0]!r} (for {arch.block_count} layers in config.json)"
            )
        if arch.gguf_arch != gguf.MODEL_ARCH.PHI3:
            _check_shapes(arch, st, mapping, cfg_path)
        self.mapping = mapping
        f16 = presets.file_type("F16")
        tensors: list[_Tensor] = []
        for name, arr in arch.extra_tensors():
            shape = tuple(arr.shape)
            tensors.append(
                _Tensor(
                    name,
                    None,
                    shape,
                    (lambda a=arr: a),
                    _base_float_type(name, shape, f16).name,
                    False,
                    None,
                )
            )
        for hf_name, g_name in mapping.items():
            shape = tuple(int(v) for v in arch.out_shape(g_name, st.tensors[hf_name].shape))

            def load(h: str = hf_name, g: str = g_name) -> np.ndarray:
                return arch.transform(h, g, st.load_f32(h))

            tensors.append(
                _Tensor(
                    g_name,
                    hf_name,
                    shape,
                    load,
                    _base_float_type(g_name, shape, f16).name,
                    presets.allows_quantization(g_name, shape),
                    g_name,
                )
            )
        self.tensors = tensors
        self.n_weights = sum(t.n_weights for t in tensors)

    def close(self) -> None:
        self.st.close()

    def add_metadata_fn(self, ftype: int) -> Callable[[Any], None]:
        import gguf

        from .tokenizer_io import add_hf_vocab

        arch, model_dir = self.arch, self.dir

        def add_metadata(w: gguf.GGUFWriter) -> None:
            # as convert(): general.* from the model card / directory name, size label
            total, shared, expert, n_expert = w.get_total_parameter_count()
            meta = gguf.Metadata.load(None, model_dir, None, total)
            if meta.name is None:
                meta.name = model_dir.name
            if meta.size_label is None and total > 0:
                meta.size_label = gguf.size_label(total, shared, expert, n_expert)
            w.add_type(gguf.GGUFType.MODEL)
            meta.set_gguf_meta_model(w)
            arch.add_metadata(w)
            w.add_file_type(ftype)
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            add_hf_vocab(w, model_dir, arch.gguf_arch_name(), arch.cfg)

        return add_metadata

    def header_bytes(self, out_dir: Path) -> tuple[int, int]:
        """(bytes before the first tensor's data, data alignment): a header-only dry write.
        The tensor table has a fixed size per tensor whatever the types are."""
        import gguf

        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".dynamic-header-{os.getpid()}.tmp"
        w = gguf.GGUFWriter(tmp, self.arch.gguf_arch_name())
        try:
            for t in self.tensors:
                w.add_tensor_info(
                    t.name,
                    t.shape,
                    np.dtype(np.float32),
                    4 * t.n_weights,
                    raw_dtype=gguf.GGMLQuantizationType.F32,
                )
            self.add_metadata_fn(0)(w)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            assert w.fout is not None
            n = w.fout[0].tell()
            align = int(w.data_alignment)
        finally:
            w.close()
            if tmp.exists():
                tmp.unlink()
        return _pad(n, align), align

    def stamp(self) -> dict[str, Any]:
        """What identifies the checkpoint's content for the cache (names, sizes, mtimes)."""
        files = sorted(p for p in self.dir.iterdir() if p.suffix in (".safetensors", ".json"))
        return {
            "files": [
                [p.name, p.stat().st_size, int(p.stat().st_mtime_ns)] for p in files if p.is_file()
            ]
        }


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def tensor_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * size


def candidates_for(cols: int, candidates: tuple[str, ...]) -> list[str]:
    """The candidate types whose block divides a row of ``cols`` values (what llama.cpp can
    store and run: a row holds whole blocks)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    out = []
    for c in candidates:
        block = GGML_QUANT_SIZES[GGMLQuantizationType[c]][0]
        if cols % block == 0:
            out.append(c)
    return out


def _check_candidates(candidates: Optional[tuple[str, ...]]) -> tuple[str, ...]:
    from gguf import GGMLQuantizationType

    from . import quants

    if candidates is None:
        return DEFAULT_CANDIDATES
    out = []
    for c in candidates:
        name = str(c).strip().upper()
        if name in ("F16", "BF16", "F32"):
            out.append(name)
            continue
        try:
            quants.type_info(name)
            GGMLQuantizationType[name]
        except (ValueError, KeyError) as err:
            raise ValueError(f"candidate type {c!r}: {err}") from err
        out.append(name)
    if not out:
        raise ValueError("no candidate types given")
    return tuple(dict.fromkeys(out))


# ---- sensitivity statistics, cached ----------------------------------------------------------


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _file_stamp(path: Optional[PathLike]) -> Any:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return str(path)  # a named source (self, wikitext-tail)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return [p.name, h.hexdigest()]


def _torch_available() -> bool:
    import importlib.util

    return (
        importlib.util.find_spec("torch") is not None
        and importlib.util.find_spec("transformers") is not None
    )


def sensitivity_stats(
    model: _Model,
    calib: Optional[str],
    nsamples: int,
    seqlen: int,
    seed: int,
    cache: Optional[Path],
    progress: bool,
) -> Any:
    """Fisher diagonal + importance matrix of the checkpoint on the calibration windows
    (:class:`ferroquant.sensitivity.FisherStats`), from the cache when it has them."""
    from .sensitivity import FisherStats, calibration_windows, fisher_stats

    key = _key(
        {
            "v": CACHE_VERSION,
            "model": model.stamp(),
            "calib": _file_stamp(calib) if calib else "default",
            "nsamples": nsamples,
            "seqlen": seqlen,
            "seed": seed,
        }
    )
    path = None if cache is None else cache / f"fisher-{key}.npz"
    if path is not None and path.is_file():
        try:
            stats = FisherStats.load(path)
            log.info("sensitivity: cached statistics %s", path)
            stats.info["cache"] = str(path)
            stats.info["key"] = key
            return stats
        except Exception as err:  # a damaged cache file is recomputed
            log.warning("%s: unreadable cache (%s); recomputing", path, err)
    from .quantize_api import load_hf

    hf, tok = load_hf(model.dir)
    windows = calibration_windows(hf, tok, calib, nsamples, seqlen, seed)
    log.info("sensitivity: %d windows of %d tokens", *windows.shape)
    stats = fisher_stats(hf, model.arch.gguf_name, windows, seed=seed, progress=progress)
    stats.imatrix.datasets = [str(calib or "self")]
    stats.info["key"] = key
    if path is not None:
        stats.save(path)
        stats.info["cache"] = str(path)
    del hf
    return stats


def damage_table(
    model: _Model,
    stats: Any,
    imatrix: Optional[dict[str, np.ndarray]],
    candidates: tuple[str, ...],
    cache_key: str,
    cache: Optional[Path],
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """tensor -> type -> predicted damage (mean KL per token), from the cache per type."""
    from tqdm import tqdm

    from .sensitivity import damage

    path = None if cache is None else cache / f"damage-{cache_key}.json"
    table: dict[str, dict[str, float]] = {}
    if path is not None and path.is_file():
        try:
            table = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            table = {}
    todo = []
    for t in model.tensors:
        if not t.quantizable:
            continue
        want = [c for c in candidates_for(t.cols, candidates) if c not in table.get(t.name, {})]
        if want:
            todo.append((t, want))
    if todo:
        bar = tqdm(todo, desc="sensitivity: damage", unit="tensor", disable=not progress)
        for t, want in bar:
            w = np.ascontiguousarray(t.load(), dtype=np.float32).reshape(-1, t.cols)
            if stats is not None:
                fisher = stats.fisher[t.hf_name] if t.hf_name in stats.fisher else None
                if fisher is None:
                    raise ValueError(f"no sensitivity statistics for tensor {t.name!r}")
                weight = np.asarray(model.arch.transform(t.hf_name, t.name, fisher), np.float32)
                weight = weight.reshape(w.shape)
                scale = 0.5 / stats.n_tokens
            else:
                vec = None if imatrix is None else imatrix.get(t.imatrix_name or t.name)
                weight = np.ones(t.cols, np.float32) if vec is None else vec
                scale = 1.0 / w.size
            imat = None if imatrix is None else imatrix.get(t.imatrix_name or t.name)
            row = table.setdefault(t.name, {})
            for c in want:
                bar.set_postfix_str(f"{t.name} {c}", refresh=False)
                row[c] = scale * damage(w, c, weight, imat)
            del w, weight
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(table))
            tmp.replace(path)
    return table


# ---- the main entry ------------------------------------------------------------------------


def quantize_dynamic(
    model_dir: PathLike,
    out_gguf: PathLike,
    *,
    target_bpw: Optional[float] = None,
    target_size: Optional[int] = None,
    calib: Optional[str] = None,
    imatrix: Optional[str] = None,
    candidates: Optional[tuple[str, ...]] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    nsamples: int = DEFAULT_WINDOWS,
    seqlen: int = DEFAULT_SEQLEN,
    seed: int = 0,
    use_imatrix: bool = True,
) -> DynamicSummary:
    """Write a mixed-precision GGUF of the HF checkpoint ``model_dir`` whose whole file fits
    ``target_size`` bytes (or ``target_bpw`` bits per parameter), with each tensor's type
    chosen to minimize the predicted KL divergence.

    ``calib``: calibration text (a file, ``self`` or ``wikitext-tail``; see
    :mod:`ferroquant.calib`) for the sensitivity statistics. ``imatrix``: a llama.cpp
    importance matrix for the tensors' own quantization (default: the one the sensitivity
    pass accumulates on the same text; ``use_imatrix=False``: none). ``candidates``: GGUF
    types to choose from (each tensor keeps those its rows can hold). ``cache_dir``: where
    statistics and damage tables are kept (default ``~/.cache/ferroquant/dynamic``).
    Raises ValueError for an impossible budget, naming the smallest reachable size.
    """
    from . import allocate as alloc
    from .convert import TensorJob, load_imatrix, write_gguf

    t0 = time.perf_counter()
    if (target_bpw is None) == (target_size is None):
        raise ValueError("give exactly one of target_bpw and target_size")
    if target_bpw is not None and not (math.isfinite(target_bpw) and target_bpw > 0):
        raise ValueError(f"target_bpw must be a positive number, got {target_bpw}")
    if target_size is not None and int(target_size) <= 0:
        raise ValueError(f"target_size must be a positive number of bytes, got {target_size}")
    cands = _check_candidates(tuple(candidates) if candidates is not None else None)
    out_path = Path(out_gguf)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    timings: dict[str, float] = {}
    model = _Model(model_dir)
    try:
        header, align = model.header_bytes(out_path.parent)
        if target_size is not None:
            budget = int(target_size)
        else:
            budget = math.floor(float(target_bpw) * model.n_weights / 8)  # type: ignore[arg-type]
        fixed = header + sum(
            _pad(tensor_bytes(t.base_type, t.shape), align)
            for t in model.tensors
            if not t.quantizable
        )
        quant = [t for t in model.tensors if t.quantizable]
        for t in quant:
            if not candidates_for(t.cols, cands):
                raise ValueError(
                    f"tensor {t.name!r} (rows of {t.cols}): none of the candidate types "
                    f"{', '.join(cands)} divides its rows"
                )
        # sizes first: an impossible budget fails before any statistics are computed
        options = {
            t.name: [
                (c, _pad(tensor_bytes(c, t.shape), align)) for c in candidates_for(t.cols, cands)
            ]
            for t in quant
        }
        min_bytes = fixed + sum(min(b for _, b in options[t.name]) for t in quant)
        max_bytes = fixed + sum(max(b for _, b in options[t.name]) for t in quant)
        if budget < min_bytes:
            raise ValueError(
                f"target of {budget} bytes ({budget * 8 / model.n_weights:.3f} bits per weight) "
                f"is below the smallest file the candidate types allow for {model.dir}: "
                f"{min_bytes} bytes ({min_bytes * 8 / model.n_weights:.3f} bits per weight, "
                f"every tensor at its smallest candidate of {', '.join(cands)})"
            )

        # sensitivity
        t1 = time.perf_counter()
        stats = None
        if _torch_available():
            stats = sensitivity_stats(model, calib, nsamples, seqlen, seed, cache, progress)
            proxy = (
                f"second-order KL, diagonal Fisher of the float model's output on "
                f"{stats.n_windows} calibration windows ({stats.n_tokens} tokens)"
            )
        else:
            proxy = "importance-weighted squared error (no torch: no Fisher calibration)"
            log.warning("dynamic: torch/transformers missing; sensitivity proxy: %s", proxy)
        timings["sensitivity_s"] = time.perf_counter() - t1
        imat_weights: Optional[dict[str, np.ndarray]] = None
        imat_desc: Optional[str] = None
        if imatrix:
            imat_weights = load_imatrix(imatrix, {t.name: t.shape for t in model.tensors})
            imat_desc = str(imatrix)
        elif use_imatrix and stats is not None and len(stats.imatrix):
            imat_weights = stats.imatrix.weights_dict()
            imat_file = cache / f"imatrix-{stats.info['key']}.gguf"
            if not imat_file.is_file():
                stats.imatrix.save(imat_file)
            imat_desc = str(imat_file)

        # damage table
        t2 = time.perf_counter()
        table_key = _key(
            {
                "v": CACHE_VERSION,
                "stats": None if stats is None else stats.info.get("key"),
                "model": model.stamp(),
                "imatrix": _file_stamp(imatrix) if imatrix else bool(imat_weights),
            }
        )
        table = damage_table(
            model, stats, imat_weights, cands, table_key, cache if stats else None, progress
        )
        timings["damage_table_s"] = time.perf_counter() - t2

        # allocation
        t3 = time.perf_counter()
        items = [[(b, table[t.name][c]) for c, b in options[t.name]] for t in quant]
        try:
            res = alloc.allocate(items, budget - fixed)
        except alloc.BudgetError as err:  # pragma: no cover - checked above
            raise ValueError(str(err)) from err
        timings["allocate_s"] = time.perf_counter() - t3
        chosen = {t.name: options[t.name][k][0] for t, k in zip(quant, res.choice)}
        predicted = fixed + res.total_bytes

        # write
        t4 = time.perf_counter()
        from gguf import GGMLQuantizationType as T

        jobs = []
        for t in model.tensors:
            qt = chosen.get(t.name, t.base_type)
            jobs.append(TensorJob(t.name, t.shape, T[qt], t.load, imatrix_name=t.imatrix_name))
        weights_by_type: Counter[str] = Counter()
        for t in quant:
            weights_by_type[chosen[t.name]] += t.n_weights
        dominant = weights_by_type.most_common(1)[0][0] if weights_by_type else "F16"
        write_gguf(
            out_path,
            model.arch.gguf_arch_name(),
            model.add_metadata_fn(_FTYPE_OF.get(dominant, 1)),
            jobs,
            imat_weights,
            progress,
            "dynamic",
        )
        timings["write_s"] = time.perf_counter() - t4
        size = out_path.stat().st_size
        if size != predicted:
            log.warning(
                "%s: %d bytes written, %d predicted (header accounting is off)",
                out_path,
                size,
                predicted,
            )
        if size > budget:
            raise ValueError(
                f"{out_path}: the written file has {size} bytes, over the budget of {budget} "
                "(internal size accounting error)"
            )
        detail = []
        for t in model.tensors:
            qt = chosen.get(t.name, t.base_type)
            row: dict[str, Any] = {
                "name": t.name,
                "shape": list(t.shape),
                "type": qt,
                "bytes": tensor_bytes(qt, t.shape),
                "quantizable": t.quantizable,
            }
            if t.quantizable:
                row["damage"] = table[t.name][qt]
                row["options"] = {c: [b, table[t.name][c]] for c, b in options[t.name]}
            detail.append(row)
        summary = DynamicSummary(
            out_path=out_path,
            n_bytes=size,
            n_weights=model.n_weights,
            bits_per_weight=size * 8 / model.n_weights,
            tensor_bits_per_weight=sum(tensor_bytes(j.qtype.name, j.shape) for j in jobs)
            * 8
            / model.n_weights,
            target_bytes=budget,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            predicted_bytes=predicted,
            predicted_kld=res.total_damage,
            seconds=time.perf_counter() - t0,
            types={t.name: chosen.get(t.name, t.base_type) for t in model.tensors},
            type_counts=dict(Counter(chosen.get(t.name, t.base_type) for t in model.tensors)),
            proxy=proxy,
            calib=calib,
            imatrix=imat_desc,
            timings=timings,
            tensors=detail,
        )
        summary.timings["lagrange"] = res.lagrange
        summary.report_json, summary.report_md = write_reports(summary)
        summary.seconds = time.perf_counter() - t0
        return summary
    finally:
        model.close()


def report_paths(out_path: PathLike) -> tuple[Path, Path]:
    p = Path(out_path)
    stem = p.name[: -len(".gguf")] if p.name.endswith(".gguf") else p.name
    return p.with_name(stem + ".dynamic.json"), p.with_name(stem + ".dynamic.md")


def write_reports(s: DynamicSummary) -> tuple[Path, Path]:
    """``OUT.dynamic.json`` and ``OUT.dynamic.md`` next to the GGUF."""
    jpath, mpath = report_paths(s.out_path)
    s.report_json, s.report_md = jpath, mpath
    data = s.to_json()
    lines = [
        f"# Dynamic mixed precision: {s.out_path.name}",
        "",
        f"- file: {s.n_bytes} bytes ({s.n_bytes / 2**20:.2f} MiB), budget {s.target_bytes} "
        f"bytes; reachable {s.min_bytes} .. {s.max_bytes} bytes",
        f"- {s.bits_per_weight:.4f} bits per weight (whole file, {s.n_weights} parameters); "
        f"{s.tensor_bits_per_weight:.4f} counting tensor data only (llama.cpp's BPW)",
        f"- predicted KL divergence (sum of single-tensor damages): {s.predicted_kld:.6f}",
        f"- sensitivity: {s.proxy}",
        f"- calibration: {s.calib or 'default (self)'}; importance matrix: {s.imatrix or 'none'}",
        f"- time: {s.seconds:.1f} s "
        + ", ".join(f"{k} {v:.1f}" for k, v in s.timings.items() if k.endswith("_s")),
        "",
        "## Types",
        "",
        "| type | tensors | parameters | bytes |",
        "| --- | ---: | ---: | ---: |",
    ]
    agg: dict[str, list[int]] = {}
    for t in s.tensors:
        a = agg.setdefault(t["type"], [0, 0, 0])
        a[0] += 1
        a[1] += int(np.prod(t["shape"]))
        a[2] += t["bytes"]
    for ty, (n, w, b) in sorted(agg.items(), key=lambda kv: -kv[1][2]):
        lines.append(f"| {ty} | {n} | {w} | {b} |")
    lines += [
        "",
        "## Tensors",
        "",
        "| tensor | shape | type | bytes | damage | options (type: damage) |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for t in s.tensors:
        if not t["quantizable"]:
            continue
        opts = ", ".join(
            f"{c}: {d:.2e}" for c, (_, d) in sorted(t["options"].items(), key=lambda kv: kv[1][0])
        )
        lines.append(
            f"| {t['name']} | {'x'.join(map(str, t['shape']))} | {t['type']} | {t['bytes']} | "
            f"{t['damage']:.3e} | {opts} |"
        )
    for path, text in ((jpath, json.dumps(data, indent=1)), (mpath, "\n".join(lines) + "\n")):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return jpath, mpath
