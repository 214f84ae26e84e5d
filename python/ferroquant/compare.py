"""Side by side: quantize one model with several methods and types, evaluate every file with
one evaluator, and answer "which quantization should I choose".

>>> from ferroquant.compare import compare
>>> rep = compare("smollm2-hf/", ["rtn", "imatrix", "gptq"], ["Q4_K_M", "Q4_0"], "cmp/")
>>> print(rep.markdown())

For each (method, type) a GGUF is made under ``OUT/models/``:

- ``rtn``: :func:`ferroquant.convert.convert` (round to nearest, llama-quantize's presets);
- ``imatrix``: the importance matrix is computed once from the calibration text
  (:func:`ferroquant.imatrix.compute_hf`, ``OUT/imatrix.gguf``), then ``convert --imatrix``;
- ``gptq``: :func:`ferroquant.quantize_api.quantize` with ``format="gguf"``;
- ``awq``: :func:`ferroquant.methods.awq.quantize_awq` (AWQ scales, then the preset);
- ``dynamic``: :func:`ferroquant.dynamic.quantize_dynamic` with ``target_size`` = the size of
  the uniform ``rtn`` file of the same type (so both are compared at the same size) and the
  importance matrix above.

The float model converted to F32 is the reference; F16 and Q8_0 conversions are included as
baselines. Every file (the reference too) is evaluated by our runtime through
:func:`ferroquant.eval.evaluate` on the same windows of ``text`` (llama.cpp's perplexity
method): perplexity, KL divergence to the reference, top-1 agreement; then file size, whole-file
bits per weight (file bytes * 8 / the float model's weights), quantize wall time and CPU
tokens/s (:func:`ferroquant.commands.bench.bench_model`, short runs). The reference's logits are
computed once and kept (only the scored half of each window).

Caching: each GGUF has a sidecar ``NAME.json`` with the settings that made it; a re-run with
the same settings reuses the file (and its recorded quantize time), and evaluations are cached
under ``OUT/cache/`` keyed by the file's size and mtime, the reference, the text and the window
settings. Everything is written under a temporary name and renamed when complete, so an
interrupted run leaves no partial file behind.

Writes ``OUT/report.json`` (all numbers, settings, versions), ``OUT/report.md`` (a table sorted
by size, the best KL divergence of each type in bold, the Pareto frontier, a recommendation
computed from the data) and ``OUT/report.png`` (size vs KL divergence, log scale, the frontier).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from . import presets

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

METHODS = ("rtn", "imatrix", "gptq", "awq", "dynamic")
TORCH_METHODS = ("imatrix", "gptq", "awq")
FLOAT_TYPES = ("F32", "F16", "BF16")
REFERENCE_TYPE = "F32"
BASELINES = (("float", "F16"), ("rtn", "Q8_0"))
SCHEMA = "ferroquant.compare/1"
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "fixtures" / "wikitext-2-raw-test.txt"
DEFAULT_CALIB = "wikitext-tail"
# KL divergence thresholds of the recommendation (nats per token)
NEAR_LOSSLESS_KLD = 0.01
GOOD_KLD = 0.05


class CompareError(ValueError):
    """A comparison that cannot run: the message names the input and the problem."""


# ---- results ----------------------------------------------------------------------------------


@dataclass
class Entry:
    """One GGUF of the comparison (or a method that could not make it)."""

    name: str  # file stem: METHOD-TYPE
    method: str
    type: str
    role: str  # reference | baseline | candidate
    status: str = "ok"  # ok | unavailable | failed
    error: Optional[str] = None
    path: Optional[str] = None
    size_bytes: Optional[int] = None
    size_mib: Optional[float] = None
    bpw: Optional[float] = None
    target_bytes: Optional[int] = None
    quantize_s: Optional[float] = None
    cached: bool = False
    ppl: Optional[float] = None
    ppl_stderr: Optional[float] = None
    kld: Optional[float] = None
    top1: Optional[float] = None
    pp_tps: Optional[float] = None
    tg_tps: Optional[float] = None
    tensor_types: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CompareReport:
    model_dir: str
    out_dir: str
    n_weights: int
    entries: list[Entry]
    settings: dict[str, Any]
    versions: dict[str, Any]
    machine: dict[str, Any]
    wall_s: float = 0.0
    created: str = ""
    files: dict[str, str] = field(default_factory=dict)

    # -- derived ------------------------------------------------------------------------------

    @property
    def reference(self) -> Optional[Entry]:
        return next((e for e in self.entries if e.role == "reference"), None)

    def measured(self) -> list[Entry]:
        """The quantized/baseline entries with a KL divergence, sorted by size."""
        rows = [e for e in self.entries if e.ok and e.role != "reference" and e.kld is not None]
        return sorted(rows, key=lambda e: (e.size_bytes or 0, e.kld or 0.0, e.name))

    def pareto(self) -> list[Entry]:
        """Non-dominated entries (no other is as small and as close, and better in one)."""
        return pareto_frontier(self.measured())

    def best_per_type(self) -> dict[str, Entry]:
        best: dict[str, Entry] = {}
        for e in self.measured():
            if e.role != "candidate":
                continue
            cur = best.get(e.type)
            if cur is None or (e.kld or 0.0) < (cur.kld or 0.0):
                best[e.type] = e
        return best

    def failed(self) -> list[Entry]:
        return [e for e in self.entries if not e.ok]

    def recommendation(self) -> str:
        return recommend(self)

    # -- output -------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompareReport:
        """The report back from ``report.json`` (to re-render the markdown or the plot)."""
        if data.get("schema") != SCHEMA:
            raise CompareError(f"not a {SCHEMA} report (schema {data.get('schema')!r})")
        names = {f.name for f in dataclasses.fields(Entry)}
        entries = [Entry(**{k: v for k, v in r.items() if k in names}) for r in data["results"]]
        return cls(
            model_dir=data["model_dir"],
            out_dir=data["out_dir"],
            n_weights=int(data["n_weights"]),
            entries=entries,
            settings=data["settings"],
            versions=data["versions"],
            machine=data["machine"],
            wall_s=float(data.get("wall_s") or 0.0),
            created=data.get("created", ""),
            files=data.get("files") or {},
        )

    def to_json(self) -> dict[str, Any]:
        ref = self.reference
        return {
            "schema": SCHEMA,
            "created": self.created,
            "model_dir": self.model_dir,
            "out_dir": self.out_dir,
            "n_weights": self.n_weights,
            "wall_s": self.wall_s,
            "settings": self.settings,
            "versions": self.versions,
            "machine": self.machine,
            "reference": None if ref is None else dataclasses.asdict(ref),
            "results": [dataclasses.asdict(e) for e in self.entries],
            "pareto": [e.name for e in self.pareto()],
            "best_per_type": {t: e.name for t, e in self.best_per_type().items()},
            "recommendation": self.recommendation(),
            "files": self.files,
        }

    def markdown(self) -> str:
        return render_markdown(self)

    def table(self) -> str:
        return render_table(self)


def pareto_frontier(entries: Sequence[Entry]) -> list[Entry]:
    """Entries not dominated in (size, KL divergence), sorted by size."""
    pts = [e for e in entries if e.size_bytes is not None and e.kld is not None]
    out = []
    for e in pts:
        dominated = any(
            o is not e
            and o.size_bytes <= e.size_bytes  # type: ignore[operator]
            and o.kld <= e.kld  # type: ignore[operator]
            and (o.size_bytes < e.size_bytes or o.kld < e.kld)  # type: ignore[operator]
            for o in pts
        )
        if not dominated:
            out.append(e)
    return sorted(out, key=lambda e: (e.size_bytes, e.kld))


# ---- helpers ------------------------------------------------------------------------------------


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _jsonable(x: Any, depth: int = 0) -> Any:
    """JSON-friendly copy (paths -> str, numpy -> Python, long lists cut)."""
    if depth > 6:
        return str(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        items = [_jsonable(v, depth + 1) for v in x[:512]]
        if len(x) > 512:
            items.append(f"... {len(x) - 512} more")
        return items
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist(), depth + 1) if x.size <= 512 else f"array{list(x.shape)}"
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def _write_atomic(path: Path, data: Union[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix) renamed onto it if the block succeeds;
    removed (with any sibling the writer made from it) otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{path.stem}.tmp-{os.getpid()}"
    tmp = path.with_name(stem + path.suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise CompareError(f"{path}: the quantizer wrote no file")
        os.replace(tmp, path)
        # side files the writer named after its output (OUT.dynamic.json, ...) follow it
        for p in list(path.parent.iterdir()):
            if p.name.startswith(stem + ".") and p.is_file():
                os.replace(p, path.with_name(path.stem + p.name[len(stem) :]))
    finally:
        for p in path.parent.iterdir():
            if stem not in p.name:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """A method's per-tensor INFO lines off (unless debugging): the comparison logs its steps."""
    logger = logging.getLogger(logger_name)
    old = logger.level
    if not log.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _has_torch() -> bool:
    return (
        importlib.util.find_spec("torch") is not None
        and importlib.util.find_spec("transformers") is not None
    )


def _pkg_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    from . import __version__

    out: dict[str, Any] = {"ferroquant": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "gguf", "torch", "transformers", "matplotlib"):
        out[pkg] = _pkg_version(pkg)
    return out


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine(threads: int, load_start: Optional[list[float]] = None) -> dict[str, Any]:
    from . import _native

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads or os.cpu_count(),
        "simd": _native.simd_isa(),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
    }


def model_fingerprint(model_dir: Path) -> str:
    """The content of the checkpoint (config, weights, tokenizer files): a re-export of the
    same weights keeps its cache, any changed byte invalidates it."""
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.suffix in (".safetensors", ".json", ".model") and f.is_file():
            h.update(f"{f.name}:{_sha256_file(f)}".encode())
    return h.hexdigest()[:16]


def awq_config_for(type_name: str) -> Any:
    """AWQ's search grid matched to the preset: its main type's bits, GGUF's 32-wide blocks,
    a zero point where the type has block minimums."""
    from .methods.awq import AWQConfig

    main = presets.file_type(type_name).default.name
    bits = {"Q2": 2, "Q3": 3, "Q4": 4, "IQ4": 4, "Q5": 5, "Q6": 6, "Q8": 8}
    b = next((v for k, v in bits.items() if main.startswith(k)), 4)
    zero = main in ("Q4_1", "Q5_1", "Q2_K", "Q4_K", "Q5_K")
    return AWQConfig(bits=b, group_size=32, zero_point=zero)


def _tensor_summary(path: Path) -> tuple[int, dict[str, int]]:
    from .gguf_io import open_gguf, tensor_infos

    infos = tensor_infos(open_gguf(path))
    return sum(i.n_elements for i in infos), dict(Counter(i.qtype for i in infos))


# ---- the reference's logits, computed once --------------------------------------------------


class CachedReference:
    """The reference model for :func:`ferroquant.eval.evaluate`, computing each window's
    logits once. Only the scored half (rows ``ctx//2 ..``) is kept; the other rows come back
    as NaN so a caller that reads them would notice."""

    def __init__(self, path: Path, ctx: int, threads: int) -> None:
        self.path, self.ctx, self.threads = path, ctx, threads
        self._model: Any = None
        self._rows: dict[bytes, np.ndarray] = {}
        self.first = ctx // 2

    def _get(self) -> Any:
        if self._model is None:
            from .runtime import Model

            self._model = Model.load(self.path, n_ctx=self.ctx, n_threads=self.threads)
        return self._model

    @property
    def n_vocab(self) -> int:
        return int(self._get().n_vocab)

    @property
    def bos_id(self) -> Optional[int]:
        return self._get().bos_id

    @property
    def add_bos(self) -> bool:
        return bool(self._get().add_bos)

    def tokenize(self, text: str) -> list[int]:
        return list(self._get().tokenize(text))

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        key = np.asarray(tokens, dtype=np.int64).tobytes()
        rows = self._rows.get(key)
        if rows is None:
            full = np.asarray(self._get().logits(tokens), dtype=np.float32)
            rows = np.ascontiguousarray(full[self.first :])
            self._rows[key] = rows
        out = np.full((len(tokens), rows.shape[1]), np.nan, dtype=np.float32)
        out[self.first :] = rows
        return out

    def close(self) -> None:
        self._model = None
        self._rows.clear()


# ---- the comparison -----------------------------------------------------------------------------


def parse_list(value: Union[str, Sequence[str]]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for it in items:
        it = it.strip()
        if it and it not in out:
            out.append(it)
    return out


def check_methods(methods: Union[str, Sequence[str]]) -> list[str]:
    out = [m.lower() for m in parse_list(methods)]
    if not out:
        raise CompareError(f"no methods given; choose from {', '.join(METHODS)}")
    bad = [m for m in out if m not in METHODS]
    if bad:
        raise CompareError(f"unknown method {bad[0]!r}; available: {', '.join(METHODS)}")
    return out


def check_types(types: Union[str, Sequence[str]]) -> list[str]:
    out: list[str] = []
    for t in parse_list(types):
        try:
            name = presets.file_type(t).name
        except ValueError as err:
            raise CompareError(str(err)) from None
        if name in FLOAT_TYPES:
            raise CompareError(
                f"type {t!r} is not a quantization type (the F32 reference and the F16 and Q8_0 "
                "baselines are always included); give quantized types such as Q4_K_M,Q4_0"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise CompareError("no types given (e.g. --types Q4_K_M,Q4_0)")
    return out


class _Comparison:
    """The state of one :func:`compare` run."""

    def __init__(
        self,
        model_dir: Path,
        methods: list[str],
        types: list[str],
        out_dir: Path,
        calib: Optional[str],
        imatrix: Optional[str],
        chunks: int,
        ctx: int,
        text: Path,
        threads: int,
        nsamples: int,
        seqlen: int,
        seed: int,
        bench: bool,
        bench_pp: int,
        bench_tg: int,
        force: bool,
        progress: bool,
    ) -> None:
        self.model_dir, self.methods, self.types, self.out = model_dir, methods, types, out_dir
        self.models = out_dir / "models"
        self.cache = out_dir / "cache"
        self.calib_arg, self.imatrix_arg = calib, imatrix
        self.chunks, self.ctx, self.text_path, self.threads = chunks, ctx, text, threads
        self.nsamples, self.seqlen, self.seed = nsamples, seqlen, seed
        self.bench, self.bench_pp, self.bench_tg = bench, bench_pp, bench_tg
        self.force, self.progress = force, progress
        self.fingerprint = model_fingerprint(model_dir)
        self.calib_file: Optional[Path] = None
        self.calib_sha: Optional[str] = None
        self.imatrix_path: Optional[Path] = None
        self.imatrix_error: Optional[str] = None
        self.step = 0
        self.n_steps = 0
        self.load_start = _loadavg()

    # -- calibration ---------------------------------------------------------------------------

    def resolve_calib(self) -> None:
        """One calibration text file for every calibrated method (GPTQ, AWQ, imatrix, dynamic)."""
        from .calib import CalibError, read_text, wikitext_tail

        src = self.calib_arg or DEFAULT_CALIB
        try:
            if src == DEFAULT_CALIB:
                text = wikitext_tail()
                path = self.cache / "calib-wikitext-tail.txt"
                if not path.is_file() or path.read_text(encoding="utf-8") != text:
                    _write_atomic(path, text)
            elif src == "self":
                raise CompareError(
                    "--calib self is not supported by compare (every method must see the same "
                    "text); give a text file or wikitext-tail"
                )
            else:
                path = Path(src)
                text = read_text(path)
        except CalibError as err:
            raise CompareError(str(err)) from None
        if path.resolve() == self.text_path.resolve():
            log.warning(
                "calibration text %s is the evaluation text: the scores are optimistic", path
            )
        self.calib_file = path
        self.calib_sha = _sha256_bytes(text.encode("utf-8"))[:16]

    def ensure_imatrix(self) -> Optional[Path]:
        """The importance matrix from the calibration text (computed once, cached)."""
        if self.imatrix_path is not None or self.imatrix_error is not None:
            return self.imatrix_path
        if self.imatrix_arg:
            p = Path(self.imatrix_arg)
            if not p.is_file():
                raise CompareError(f"--imatrix {p}: no such file")
            self.imatrix_path = p
            return p
        if not _has_torch():
            self.imatrix_error = "needs torch and transformers (make calib)"
            return None
        path = self.out / "imatrix.gguf"
        key = {
            "what": "imatrix",
            "model": self.fingerprint,
            "calib": self.calib_sha,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
        }
        side = path.with_suffix(".json")
        rec = _read_json(side)
        if (
            not self.force
            and path.is_file()
            and rec
            and rec.get("key") == key
            and rec.get("file") == _file_stamp(path)
        ):
            log.info("imatrix: cached %s", path)
        else:
            from .imatrix import compute_hf

            log.info(
                "imatrix: computing from %s (%d x %d tokens)",
                self.calib_file,
                self.nsamples,
                self.seqlen,
            )
            t0 = time.perf_counter()
            imat = compute_hf(
                self.model_dir,
                self.calib_file,  # type: ignore[arg-type]
                nsamples=self.nsamples,
                seqlen=self.seqlen,
                progress=self.progress,
            )
            with _atomic_path(path) as tmp:
                imat.save(tmp, "gguf")
            seconds = time.perf_counter() - t0
            _write_atomic(
                side,
                json.dumps({"key": key, "file": _file_stamp(path), "seconds": seconds}, indent=2),
            )
            log.info("imatrix: %s in %.1f s", path, seconds)
        self.imatrix_path = path
        return path

    def imatrix_seconds(self) -> float:
        rec = _read_json(self.out / "imatrix.json") if not self.imatrix_arg else None
        return float(rec.get("seconds", 0.0)) if rec else 0.0

    # -- quantizing ------------------------------------------------------------------------

    def _key(self, method: str, type_name: str, **extra: Any) -> dict[str, Any]:
        from . import __version__

        key: dict[str, Any] = {
            "method": method,
            "type": type_name,
            "model": self.fingerprint,
            "ferroquant": __version__,
        }
        if method in ("gptq", "awq", "dynamic"):
            key.update(calib=self.calib_sha, nsamples=self.nsamples, seqlen=self.seqlen)
            key["seed"] = self.seed
        key.update(extra)
        return key

    def make(
        self,
        method: str,
        type_name: str,
        role: str,
        build: Callable[[Path], dict[str, Any]],
        key_extra: Optional[dict[str, Any]] = None,
    ) -> Entry:
        """Quantize (or reuse) ``models/METHOD-TYPE.gguf`` with ``build(tmp_path)``."""
        name = f"{method}-{type_name}"
        path = self.models / f"{name}.gguf"
        side = self.models / f"{name}.json"
        key = self._key(method, type_name, **(key_extra or {}))
        entry = Entry(name=name, method=method, type=type_name, role=role, path=str(path))
        rec = _read_json(side)
        self.step += 1
        tag = f"[{self.step}/{self.n_steps}] {name}"
        if (
            not self.force
            and path.is_file()
            and rec
            and rec.get("key") == key
            and rec.get("file") == _file_stamp(path)
        ):
            log.info("%s: cached (%s)", tag, path)
            entry.cached = True
            entry.quantize_s = rec.get("quantize_s")
            entry.info = rec.get("info") or {}
        else:
            log.info("%s: quantizing", tag)
            t0 = time.perf_counter()
            with _atomic_path(path) as tmp:
                info = build(tmp)
            entry.quantize_s = time.perf_counter() - t0
            entry.info = _jsonable(info or {})
            _write_atomic(
                side,
                json.dumps(
                    {
                        "key": key,
                        "file": _file_stamp(path),
                        "quantize_s": entry.quantize_s,
                        "info": entry.info,
                    },
                    indent=2,
                ),
            )
            log.info("%s: %.1f s -> %s", tag, entry.quantize_s, path)
        entry.size_bytes = path.stat().st_size
        _, entry.tensor_types = _tensor_summary(path)
        return entry

    def convert_to(self, type_name: str, imatrix: Optional[Path] = None) -> Callable:
        from .convert import convert

        def build(tmp: Path) -> dict[str, Any]:
            s = convert(self.model_dir, tmp, type_name, imatrix=imatrix, progress=self.progress)
            return {"fallbacks": s.fallbacks, "tensor_bytes": s.n_bytes}

        return build

    def build_gptq(self, type_name: str) -> Callable:
        from .quantize_api import QuantConfig, quantize

        def build(tmp: Path) -> dict[str, Any]:
            cfg = QuantConfig(
                method="gptq",
                format="gguf",
                gguf_type=type_name,
                calib=str(self.calib_file),
                nsamples=self.nsamples,
                seqlen=self.seqlen,
                seed=self.seed,
                progress=self.progress,
            )
            with _quiet("ferroquant.methods.gptq"), _quiet("ferroquant.quantize_api"):
                s = quantize(self.model_dir, tmp, cfg)
            return {"linears": s.linears, "mean_rel_err": s.mean_rel_err}

        return build

    def build_awq(self, type_name: str) -> Callable:
        from .methods.awq import quantize_awq

        def build(tmp: Path) -> dict[str, Any]:
            cfg = awq_config_for(type_name)
            res = quantize_awq(
                self.model_dir,
                tmp,
                type_name,
                cfg,
                calib=str(self.calib_file),
                nsamples=self.nsamples,
                seqlen=self.seqlen,
                seed=self.seed,
                progress=self.progress,
            )
            return {
                "awq": dataclasses.asdict(cfg),
                "groups": len(res["groups"]),
                "mean_alpha": res["mean_alpha"],
            }

        return build

    def build_dynamic(self, type_name: str, target: int, fn: Callable) -> Callable:
        imatrix = self.imatrix_path

        def build(tmp: Path) -> dict[str, Any]:
            summary = fn(
                str(self.model_dir),
                str(tmp),
                target_size=int(target),
                calib=str(self.calib_file),
                imatrix=None if imatrix is None else str(imatrix),
                cache_dir=str(self.cache / "dynamic"),
                progress=self.progress,
            )
            info = _jsonable(summary)
            if not isinstance(info, dict):
                info = {"summary": info}
            for k in ("out_path", "output", "types", "tensors"):  # in its own report
                info.pop(k, None)
            final = self.models / f"dynamic-{type_name}.gguf"
            for k in ("report_json", "report_md"):
                if isinstance(info.get(k), str):
                    info[k] = str(final.with_name(final.stem + Path(info[k]).name[len(tmp.stem) :]))
            return info

        return build

    def candidate(self, method: str, type_name: str, uniform: dict[str, Entry]) -> Entry:
        unavailable = Entry(
            name=f"{method}-{type_name}",
            method=method,
            type=type_name,
            role="candidate",
            status="unavailable",
        )
        if (
            method in TORCH_METHODS
            and not _has_torch()
            and not (method == "imatrix" and self.imatrix_arg)
        ):
            self.step += 1
            unavailable.error = "needs torch and transformers (make calib)"
            return unavailable
        if method == "rtn":
            return uniform[type_name]
        if method == "imatrix":
            imat = self.ensure_imatrix()
            extra = {"imatrix": _sha256_file(imat)[:16]} if imat else {}
            return self.make(
                "imatrix", type_name, "candidate", self.convert_to(type_name, imat), extra
            )
        if method == "gptq":
            return self.make("gptq", type_name, "candidate", self.build_gptq(type_name))
        if method == "awq":
            cfg = dataclasses.asdict(awq_config_for(type_name))
            return self.make("awq", type_name, "candidate", self.build_awq(type_name), {"awq": cfg})
        # dynamic: at the size of the uniform preset of this type
        try:
            from .dynamic import quantize_dynamic
        except ImportError as err:
            self.step += 1
            unavailable.error = f"ferroquant.dynamic is not available ({err})"
            log.warning("%s: not available: %s", unavailable.name, unavailable.error)
            return unavailable
        imat = self.ensure_imatrix() if _has_torch() or self.imatrix_arg else None
        target = int(uniform[type_name].size_bytes or 0)
        extra = {"target_size": target, "imatrix": _sha256_file(imat)[:16] if imat else None}
        try:
            entry = self.make(
                "dynamic",
                type_name,
                "candidate",
                self.build_dynamic(type_name, target, quantize_dynamic),
                extra,
            )
        except ImportError as err:
            unavailable.error = f"dynamic quantization is not available ({err})"
            log.warning("%s: not available: %s", unavailable.name, unavailable.error)
            return unavailable
        entry.target_bytes = target
        return entry

    # -- evaluating -------------------------------------------------------------------------

    def eval_key(self, entry: Entry, ref: Entry) -> dict[str, Any]:
        from . import __version__

        return {
            "file": _file_stamp(Path(entry.path)),  # type: ignore[arg-type]
            "ref": _file_stamp(Path(ref.path)),  # type: ignore[arg-type]
            "text": self.text_sha,
            "ctx": self.ctx,
            "chunks": self.chunks,
            "ferroquant": __version__,
        }

    def evaluate(self, e: Entry, ref: Entry, cached_ref: CachedReference) -> None:
        """Perplexity, KL divergence and top-1 of ``e`` against the reference (cached by the
        file's size and mtime, the reference, the text and the windows), then tokens/s."""
        from .eval import evaluate
        from .runtime import Model

        if not e.ok:
            return
        tag = f"[eval] {e.name}"
        side = self.cache / f"eval-{e.name}.json"
        key = self.eval_key(e, ref)
        rec = _read_json(side)
        if not self.force and rec and rec.get("key") == key:
            log.info("%s: cached", tag)
            res = rec["result"]
        else:
            if self._eval_text is None:
                self._eval_text = self.eval_text(cached_ref.tokenize)
            text = self._eval_text
            log.info("%s: %d windows of %d tokens", tag, self.chunks, self.ctx)
            t0 = time.perf_counter()
            if e.role == "reference":  # its logits fill the cache for the others
                res = evaluate(cached_ref, text, self.ctx, self.chunks, None, self.progress)
                res.update(kld=0.0, top1=1.0, ref_ppl=res["ppl"])
            else:
                model = Model.load(e.path, n_ctx=self.ctx, n_threads=self.threads)  # type: ignore[arg-type]
                res = evaluate(model, text, self.ctx, self.chunks, cached_ref, self.progress)
                del model
            res["eval_s"] = time.perf_counter() - t0
            _write_atomic(side, json.dumps({"key": key, "result": res}, indent=2))
            log.info(
                "%s: ppl %.3f, KL %.5f, top-1 %.3f (%.1f s)",
                tag,
                res["ppl"],
                res["kld"],
                res["top1"],
                res["eval_s"],
            )
        e.ppl, e.ppl_stderr = res["ppl"], res["ppl_stderr"]
        e.kld, e.top1 = res["kld"], res["top1"]
        e.info["eval"] = {
            k: res[k] for k in ("tokens", "chunks", "ctx", "ref_ppl", "eval_s") if k in res
        }
        if self.bench:
            self.bench_one(e, tag)

    def bench_one(self, e: Entry, tag: str) -> None:
        from .commands.bench import bench_model

        side = self.cache / f"bench-{e.name}.json"
        key = {
            "file": _file_stamp(Path(e.path)),  # type: ignore[arg-type]
            "threads": self.threads,
            "pp": self.bench_pp,
            "tg": self.bench_tg,
        }
        rec = _read_json(side)
        if not self.force and rec and rec.get("key") == key:
            res = rec["result"]
        else:
            res = bench_model(e.path, self.threads, self.bench_pp, self.bench_tg, reps=2)  # type: ignore[arg-type]
            _write_atomic(side, json.dumps({"key": key, "result": res}, indent=2))
            log.info("%s: pp %.1f tok/s, tg %.1f tok/s", tag, res["pp_tps"], res["tg_tps"])
        e.pp_tps, e.tg_tps = res["pp_tps"], res["tg_tps"]

    # -- the whole run --------------------------------------------------------------------

    def eval_text(self, tokenizer: Any) -> str:
        """The prefix of the text that holds the evaluation windows (plus a margin): every
        model tokenizes the same short string instead of the whole corpus."""
        need = self.chunks * self.ctx + 64
        n_chars = max(need * 6, 4096)
        while n_chars < len(self.text):
            if len(tokenizer(self.text[:n_chars])) > need:
                return self.text[:n_chars]
            n_chars *= 2
        return self.text

    def run(self) -> CompareReport:
        t_start = time.perf_counter()
        self.models.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        try:
            self.text = self.text_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CompareError(
                f"{self.text_path}: cannot read the evaluation text ({err})"
            ) from None
        self.text_sha = _sha256_bytes(self.text.encode("utf-8"))[:16]
        if any(m in ("imatrix", "gptq", "awq", "dynamic") for m in self.methods):
            self.resolve_calib()
        skip_q8 = "rtn" in self.methods and "Q8_0" in self.types
        baselines = [(m, t) for m, t in BASELINES if not (skip_q8 and (m, t) == ("rtn", "Q8_0"))]
        need_uniform = "rtn" in self.methods or "dynamic" in self.methods
        others = [m for m in self.methods if m != "rtn"]
        self.n_steps = (
            1 + len(baselines) + (len(self.types) if need_uniform else 0)
            + len(self.types) * len(others)
        )  # fmt: skip
        found: dict[str, Entry] = {}
        ref = self.make("float", REFERENCE_TYPE, "reference", self.convert_to(REFERENCE_TYPE))
        n_weights, _ = _tensor_summary(Path(ref.path))  # type: ignore[arg-type]
        cached_ref = CachedReference(Path(ref.path), self.ctx, self.threads)  # type: ignore[arg-type]
        self._eval_text: Optional[str] = None

        def add(e: Entry) -> None:
            """Keep ``e`` and evaluate it now (results survive an interrupted run)."""
            if e.name in found and found[e.name].role != "baseline" and e.ok:
                return
            found[e.name] = e
            if e.ok and e.size_bytes is not None:
                e.size_mib = e.size_bytes / 2**20
                e.bpw = e.size_bytes * 8 / n_weights
            self.evaluate(e, ref, cached_ref)  # a repeat (same file) comes from the cache

        try:
            self._make_all(add, ref, baselines, need_uniform, others)
        finally:
            cached_ref.close()
        entries = list(found.values())
        if self.imatrix_path is not None and not self.imatrix_arg:
            for e in entries:
                if e.method in ("imatrix", "dynamic") and e.ok:
                    e.info["imatrix_s"] = self.imatrix_seconds()
        return CompareReport(
            model_dir=str(self.model_dir),
            out_dir=str(self.out),
            n_weights=int(n_weights),
            entries=entries,
            settings=self.settings(),
            versions=versions(),
            machine=machine(self.threads, self.load_start),
            wall_s=time.perf_counter() - t_start,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    def _make_all(
        self,
        add: Callable[[Entry], None],
        ref: Entry,
        baselines: list[tuple[str, str]],
        need_uniform: bool,
        others: list[str],
    ) -> None:
        add(ref)
        for method, t in baselines:
            add(self.make(method, t, "baseline", self.convert_to(t)))
        # the uniform presets first: rtn's results and the dynamic method's size targets
        uniform: dict[str, Entry] = {}
        if need_uniform:
            for t in self.types:
                uniform[t] = self.make("rtn", t, "candidate", self.convert_to(t))
                add(uniform[t])
        for t in self.types:
            for m in others:
                try:
                    add(self.candidate(m, t, uniform))
                except KeyboardInterrupt:
                    raise
                except Exception as err:  # one failing method does not lose the others
                    log.error("%s-%s: failed: %s", m, t, err, exc_info=log.isEnabledFor(10))
                    add(
                        Entry(
                            name=f"{m}-{t}",
                            method=m,
                            type=t,
                            role="candidate",
                            status="failed",
                            error=f"{type(err).__name__}: {err}",
                        )
                    )

    def settings(self) -> dict[str, Any]:
        return {
            "methods": self.methods,
            "types": self.types,
            "baselines": [f"{m}-{t}" for m, t in BASELINES],
            "reference": f"float-{REFERENCE_TYPE} (the float model converted to GGUF)",
            "evaluator": "ferroquant runtime, ferroquant.eval.evaluate (llama.cpp perplexity "
            "windows, KL(P_ref || P_model) and top-1 agreement per scored position)",
            "text": str(self.text_path),
            "text_sha256": self.text_sha,
            "ctx": self.ctx,
            "chunks": self.chunks,
            "calib": str(self.calib_file) if self.calib_file else None,
            "calib_source": self.calib_arg or DEFAULT_CALIB,
            "calib_sha256": self.calib_sha,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "seed": self.seed,
            "imatrix": str(self.imatrix_path) if self.imatrix_path else None,
            "imatrix_error": self.imatrix_error,
            "imatrix_s": self.imatrix_seconds() if self.imatrix_path else None,
            "threads": self.threads,
            "bench": {"pp": self.bench_pp, "tg": self.bench_tg, "reps": 2} if self.bench else None,
            "bpw": "whole file: file bytes * 8 / weights of the float model",
            "dynamic_target": "the file size of the uniform (rtn) preset of the same type",
        }


def compare(
    model_dir: PathLike,
    methods: Union[str, Sequence[str]],
    types: Union[str, Sequence[str]],
    out_dir: PathLike,
    *,
    calib: Optional[str] = None,
    imatrix: Optional[PathLike] = None,
    chunks: int = 8,
    ctx: int = 512,
    text: PathLike = DEFAULT_TEXT,
    threads: int = 0,
    nsamples: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    bench: bool = True,
    bench_pp: int = 128,
    bench_tg: int = 32,
    force: bool = False,
    plot: bool = True,
    progress: bool = True,
) -> CompareReport:
    """Quantize ``model_dir`` with each method at each type, evaluate everything with one
    evaluator, and write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir``.

    ``calib``: calibration text file or ``wikitext-tail`` (default; it does not overlap the
    evaluation windows of the WikiText-2 test text). ``imatrix``: use this importance matrix
    instead of computing one. ``chunks``/``ctx``: evaluation windows of ``text``.
    ``nsamples``/``seqlen``: calibration windows. ``force``: ignore the cache.
    """
    from .convert import read_config

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    m = check_methods(methods)
    t = check_types(types)
    read_config(model_dir)  # a clear error for a non-checkpoint
    if not any(model_dir.glob("*.safetensors")):
        raise CompareError(f"{model_dir}: no .safetensors weights")
    text = Path(text)
    if not text.is_file():
        raise CompareError(f"evaluation text {text}: no such file (give --text FILE)")
    if ctx < 8 or chunks < 1:
        raise CompareError(f"need ctx >= 8 and chunks >= 1, got ctx {ctx}, chunks {chunks}")
    if nsamples < 1 or seqlen < 16:
        raise CompareError(f"need nsamples >= 1 and seqlen >= 16, got {nsamples}, {seqlen}")
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"--out {out_dir}: exists and is not a directory")
    run = _Comparison(
        model_dir, m, t, out_dir, calib, None if imatrix is None else str(imatrix),
        chunks, ctx, text, threads, nsamples, seqlen, seed, bench, bench_pp, bench_tg,
        force, progress,
    )  # fmt: skip
    report = run.run()
    write_report(report, plot=plot)
    return report


# ---- the report ---------------------------------------------------------------------------------


def write_report(report: CompareReport, plot: bool = True) -> None:
    out = Path(report.out_dir)
    report.files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if plot:
        try:
            plot_report(report, out / "report.png")
            report.files["png"] = str(out / "report.png")
        except ImportError as err:
            log.warning("no plot: %s (matplotlib is installed by `make calib`)", err)
    _write_atomic(out / "report.json", json.dumps(_jsonable(report.to_json()), indent=2) + "\n")
    _write_atomic(out / "report.md", report.markdown())


def _fmt(x: Optional[float], spec: str, missing: str = "–") -> str:
    return missing if x is None else format(x, spec)


def _kld(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return "0" if x == 0 else (f"{x:.4f}" if x >= 1e-3 else f"{x:.2e}")


def render_table(report: CompareReport) -> str:
    best = {e.name for e in report.best_per_type().values()}
    front = {e.name for e in report.pareto()}
    ref = report.reference
    ref_ppl = ref.ppl if ref else None
    head = (
        "| | method | type | size MiB | bpw | KL div. | top-1 % | ppl | Δppl | quantize s "
        "| pp tok/s | tg tok/s |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    rows = report.measured() + ([ref] if ref and ref.ok else [])
    for e in rows:
        mark = "★" if e.name in front else ""
        kld = _kld(e.kld)
        if e.name in best:
            kld = f"**{kld}**"
        dppl = (
            f"{e.ppl - ref_ppl:+.3f}"
            if e.ppl is not None and ref_ppl is not None and e.role != "reference"
            else ""
        )
        typ = e.type + (" (ref.)" if e.role == "reference" else "")
        qs = _fmt(e.quantize_s, ".1f")
        if e.cached and e.quantize_s is not None:
            qs += "ᶜ"
        lines.append(
            f"| {mark} | {e.method} | {typ} | {_fmt(e.size_mib, '.2f')} | {_fmt(e.bpw, '.3f')} "
            f"| {kld} | {_fmt(None if e.top1 is None else 100 * e.top1, '.2f')} "
            f"| {_fmt(e.ppl, '.3f')} | {dppl} | {qs} | {_fmt(e.pp_tps, '.0f')} "
            f"| {_fmt(e.tg_tps, '.1f')} |"
        )
    return head + "\n".join(lines) + "\n"


def recommend(report: CompareReport) -> str:
    """A few sentences computed from the measurements: which file to choose."""
    rows = report.measured()
    front = report.pareto()
    if not rows or not front:
        return "No file was evaluated, so there is nothing to recommend."

    def desc(e: Entry) -> str:
        return (
            f"{e.method} {e.type} ({e.size_mib:.1f} MiB, {e.bpw:.2f} bpw, KL {_kld(e.kld)}, "
            f"top-1 {100 * (e.top1 or 0):.1f}%)"
        )

    out = []
    lossless = [e for e in front if (e.kld or 0) <= NEAR_LOSSLESS_KLD]
    good = [e for e in front if (e.kld or 0) <= GOOD_KLD]
    if lossless:
        out.append(
            f"Near-lossless (KL ≤ {NEAR_LOSSLESS_KLD}): the smallest such file is {desc(lossless[0])}."
        )
    else:
        out.append(f"No file reaches KL ≤ {NEAR_LOSSLESS_KLD} (near-lossless) here.")
    if good and good[0] is not (lossless[0] if lossless else None):
        out.append(f"Good quality (KL ≤ {GOOD_KLD}) at the smallest size: {desc(good[0])}.")
    smallest = front[0]
    if smallest not in lossless and smallest not in good:
        out.append(f"The smallest file on the frontier is {desc(smallest)}.")
    # per budget: the best method against plain rounding
    by_type: dict[str, list[Entry]] = {}
    for e in rows:
        if e.role == "candidate":
            by_type.setdefault(e.type, []).append(e)
    wins: Counter[str] = Counter()
    parts = []
    for t, es in sorted(by_type.items(), key=lambda kv: min(e.size_bytes or 0 for e in kv[1])):
        best = min(es, key=lambda e: e.kld or 0.0)
        wins[best.method] += 1
        rtn = next((e for e in es if e.method == "rtn"), None)
        if rtn is not None and best is not rtn and best.kld and rtn.kld:
            parts.append(
                f"at {t} {best.method} (KL {_kld(best.kld)}, {rtn.kld / best.kld:.2f}x lower "
                f"than rtn's {_kld(rtn.kld)})"
            )
        else:
            parts.append(f"at {t} {best.method} (KL {_kld(best.kld)})")
    if parts:
        out.append("Best method per budget: " + "; ".join(parts) + ".")
    method, n = wins.most_common(1)[0] if wins else ("", 0)
    if len(by_type) > 1 and 2 * n > len(by_type):
        out.append(f"{method} is the best at {n} of {len(by_type)} budgets.")
    fast = [e for e in front if e.tg_tps]
    if len(fast) > 1:
        quick = max(fast, key=lambda e: e.tg_tps or 0.0)
        out.append(
            f"Among the frontier files, {quick.method} {quick.type} generates fastest on this CPU "
            f"({quick.tg_tps:.1f} tok/s; the frontier spans "
            f"{min(e.tg_tps or 0 for e in fast):.1f}–{max(e.tg_tps or 0 for e in fast):.1f})."
        )
    return " ".join(out)


def render_markdown(report: CompareReport) -> str:
    ref = report.reference
    s = report.settings
    intro = (
        f"Model `{report.model_dir}`, {report.n_weights / 1e6:.1f} M weights. Reference: the "
        f"float model as an F32 GGUF ({_fmt(ref.size_mib if ref else None, '.1f')} MiB, ppl "
        f"{_fmt(ref.ppl if ref else None, '.3f')}). One evaluator for every file (our "
        f"runtime): {s['chunks']} windows of {s['ctx']} tokens of `{Path(s['text']).name}`, "
        "the second half of each scored (llama.cpp's perplexity method); KL divergence to the "
        "reference in nats per token."
    )
    if s.get("calib"):
        intro += (
            f" Calibration (gptq, awq, imatrix, dynamic): `{s['calib_source']}`, "
            f"{s['nsamples']} windows of {s['seqlen']} tokens."
        )
    lines = [
        f"# Quantization comparison: {Path(report.model_dir).name}",
        "",
        intro,
        "",
        "## Which to choose",
        "",
        report.recommendation(),
        "",
        "## Results (sorted by size)",
        "",
        "★ on the Pareto frontier (no file is both smaller and closer to the reference); "
        "**bold**: the lowest KL divergence at that type; ᶜ: quantize time from the cache "
        "(an earlier run); bpw: whole file (file bytes * 8 / float weights); tok/s: our "
        f"runtime on {report.machine.get('threads')} threads ({report.machine.get('simd')}), "
        "short runs, noisy.",
        "",
        report.table(),
        "## Pareto frontier",
        "",
    ]
    for e in report.pareto():
        lines.append(
            f"- {e.method} {e.type}: {e.size_mib:.2f} MiB ({e.bpw:.3f} bpw), KL {_kld(e.kld)}, "
            f"top-1 {100 * (e.top1 or 0):.2f}%, ppl {e.ppl:.3f}"
        )
    dyn = [e for e in report.entries if e.method == "dynamic" and e.ok and e.target_bytes]
    if dyn:
        lines += ["", "## Dynamic at the uniform presets' sizes", ""]
        for e in dyn:
            lines.append(
                f"- {e.type}: target {e.target_bytes} bytes, file {e.size_bytes} bytes "
                f"({'within' if (e.size_bytes or 0) <= e.target_bytes else 'OVER'} the target)"
            )
    bad = report.failed()
    if bad:
        lines += ["", "## Not measured", ""]
        for e in bad:
            lines.append(f"- {e.name}: {e.status}: {e.error}")
    v = report.versions
    lines += [
        "",
        "## Settings",
        "",
        f"- methods: {', '.join(s['methods'])}; types: {', '.join(s['types'])}; baselines: "
        f"{', '.join(s['baselines'])}",
        f"- imatrix: {s.get('imatrix') or s.get('imatrix_error') or 'none'}"
        + (
            f" (computed once in {s['imatrix_s']:.0f} s from the calibration text; not in the "
            "imatrix/dynamic rows' quantize time)"
            if s.get("imatrix_s")
            else ""
        ),
        f"- ferroquant {v.get('ferroquant')}, python {v.get('python')}, numpy {v.get('numpy')}, "
        f"gguf {v.get('gguf')}, torch {v.get('torch')}, transformers {v.get('transformers')}",
        f"- machine: {report.machine.get('cpu_count')} CPUs, load average (1, 5, 15 min) at "
        f"start {report.machine.get('loadavg_start')}, at the end "
        f"{report.machine.get('loadavg_end')}; whole run {report.wall_s:.0f} s",
        f"- {report.created}; numbers: `report.json`; plot: `report.png`",
        "",
    ]
    return "\n".join(lines)


_STYLE = {
    "float": ("black", "P"),
    "rtn": ("#7f7f7f", "o"),
    "imatrix": ("#1f77b4", "s"),
    "gptq": ("#2ca02c", "^"),
    "awq": ("#ff7f0e", "D"),
    "dynamic": ("#d62728", "*"),
}


def _scatter(ax: Any, rows: list[Entry], size: float = 70, dodge_px: float = 0.0) -> None:
    """One marker and colour per method; ``dodge_px`` shifts each method's markers sideways
    by a few pixels (display only) so that methods of one type do not hide each other."""
    from matplotlib.transforms import ScaledTranslation

    offsets = _dodge(rows, dodge_px)
    for m, dx_px in offsets.items():
        es = [e for e in rows if e.method == m]
        color, marker = _STYLE[m]
        dx = dx_px / ax.figure.dpi
        ax.scatter(
            [e.size_mib for e in es],
            [e.kld for e in es],
            transform=ax.transData + ScaledTranslation(dx, 0, ax.figure.dpi_scale_trans),
            c=color,
            marker=marker,
            s=size * (2.2 if marker == "*" else 1.0),
            label=m,
            zorder=3,
            edgecolors="white",
            linewidths=0.6,
        )


def _dodge(rows: list[Entry], dodge_px: float) -> dict[str, float]:
    present = [m for m in _STYLE if any(e.method == m for e in rows)]
    return {m: (i - (len(present) - 1) / 2) * dodge_px for i, m in enumerate(present)}


def _frontier_dodged(ax: Any, front: list[Entry], offsets: dict[str, float]) -> None:
    """The frontier through the dodged markers (drawn in pixels, after the layout is fixed)."""
    from matplotlib.transforms import IdentityTransform

    if not front:
        return
    ax.figure.canvas.draw()
    pts = [ax.transData.transform((e.size_mib, e.kld)) for e in front]
    xs = [float(p[0]) + offsets.get(e.method, 0.0) for p, e in zip(pts, front)]
    ys = [float(p[1]) for p in pts]
    ax.plot(xs, ys, "--", color="#555555", lw=1.1, zorder=2, transform=IdentityTransform())
    ax.set_xlim(ax.get_xlim())


def _frontier_line(ax: Any, front: list[Entry]) -> None:
    if front:
        ax.plot(
            [e.size_mib for e in front],
            [e.kld for e in front],
            "--",
            color="#555555",
            lw=1.1,
            zorder=2,
            label="Pareto frontier",
        )


def _label_clusters(ax: Any, rows: list[Entry], per_point: bool, gap_px: float) -> None:
    """The type above each cluster of one type; with ``per_point``, "method KL" right of each
    point, spread vertically so that no two labels of a cluster overlap."""
    fig = ax.figure
    fig.canvas.draw()  # the transforms need the final limits and layout
    by_type: dict[str, list[Entry]] = {}
    for e in rows:
        by_type.setdefault(e.type, []).append(e)
    for t, es in by_type.items():
        pts = sorted(es, key=lambda e: e.kld or 0.0)
        disp = [ax.transData.transform((e.size_mib, e.kld)) for e in pts]
        top_y = max(d[1] for d in disp)
        if per_point:
            ys = [float(d[1]) for d in disp]
            placed: list[float] = []
            for y in ys:  # bottom-up, at least gap_px apart
                placed.append(max(y, placed[-1] + gap_px) if placed else y)
            shift = (sum(ys) - sum(placed)) / len(ys)  # re-centre on the points
            placed = [y + max(shift, ys[0] - placed[0] - gap_px) for y in placed]
            for e, d, y in zip(pts, disp, placed):
                color = _STYLE.get(e.method, ("black", "o"))[0]
                ax.annotate(
                    f"{e.method} {_kld(e.kld)}",
                    (e.size_mib, e.kld),
                    textcoords="offset pixels",
                    xytext=(26, y - float(d[1])),
                    ha="left",
                    va="center",
                    fontsize=8,
                    color=color,
                    arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5, "alpha": 0.6},
                )
            top_y = max(top_y, max(placed))
        top = max(es, key=lambda e: e.kld or 0.0)
        ax.annotate(
            t,
            (top.size_mib, top.kld),
            textcoords="offset pixels",
            xytext=(0, top_y - float(ax.transData.transform((top.size_mib, top.kld))[1]) + 18),
            ha="center",
            fontsize=10,
            fontweight="bold",
        )


def plot_report(report: CompareReport, path: Path) -> None:
    """Two panels, y = KL divergence (log) against the float model, x = file size (MiB; bits
    per weight on the top axis), a marker and colour per method, the Pareto frontier dashed:
    left, the budgets the methods were compared at (each point labelled with its method and
    KL divergence); right, every file (baselines too) on a log size axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [e for e in report.measured() if (e.kld or 0) > 0]
    cands = [e for e in rows if e.role == "candidate"] or rows
    front = [e for e in report.pareto() if (e.kld or 0) > 0]
    dpi = 130
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(15, 7.5), dpi=dpi, gridspec_kw={"width_ratios": [2.3, 1]}
    )
    n = report.n_weights
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")

    def bpw_axis(a: Any) -> None:
        if n:
            sec = a.secondary_xaxis(
                "top",
                functions=(lambda mib: mib * 2**20 * 8 / n, lambda bpw: bpw * n / 8 / 2**20),
            )
            sec.set_xlabel("bits per weight (whole file)")
            sec.xaxis.set_major_formatter(plain)
            sec.xaxis.set_minor_formatter(plain)

    # left: the budgets
    _scatter(ax, cands, 80, dodge_px=7)
    xs = [e.size_mib or 0.0 for e in cands]
    ys = [e.kld or 1.0 for e in cands]
    span = (max(xs) - min(xs)) or max(xs) * 0.1
    lo_x, hi_x = min(xs) - 0.08 * span, max(xs) + 0.35 * span
    ax.plot([], [], "--", color="#555555", lw=1.1, label="Pareto frontier")
    ax.set_xlim(lo_x, hi_x)
    ax.set_yscale("log")
    ax.set_ylim(min(ys) / 1.8, max(ys) * 2.2)
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("KL divergence to the float model (nats/token, log scale)")
    ax.set_title("the compared budgets: every method at each type", fontsize=11)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    bpw_axis(ax)
    ax.legend(loc="upper right", fontsize=9, framealpha=0.9)
    # right: everything
    _scatter(ax2, rows, 45)
    _frontier_line(ax2, front)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.xaxis.set_major_formatter(plain)
    ax2.xaxis.set_minor_formatter(plain)
    xs2 = [e.size_mib or 1.0 for e in rows]
    ys2 = [e.kld or 1.0 for e in rows]
    ax2.set_xlim(min(xs2) / 1.12, max(xs2) * 1.25)
    ax2.set_ylim(min(ys2) / 3, max(ys2) * 4)
    ax2.set_xlabel("file size (MiB, log scale)")
    ax2.set_title("all files, with the F16 and Q8_0 baselines", fontsize=11)
    ax2.grid(True, which="major", alpha=0.35)
    ax2.grid(True, which="minor", alpha=0.12)
    bpw_axis(ax2)
    ref = report.reference
    title = f"{Path(report.model_dir).name}: file size vs KL divergence"
    if ref is not None and ref.size_mib:
        title += (
            f"   (reference: the float model as F32, {ref.size_mib:.0f} MiB, ppl "
            f"{_fmt(ref.ppl, '.2f')}; {report.settings.get('chunks')} x "
            f"{report.settings.get('ctx')}-token windows)"
        )
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    _frontier_dodged(ax, front, _dodge(cands, 7))
    _label_clusters(ax, cands, True, gap_px=8 * dpi / 72 * 1.25)
    _label_clusters(ax2, rows, False, 0)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


__all__ = [
    "METHODS",
    "CompareError",
    "CompareReport",
    "Entry",
    "compare",
    "pareto_frontier",
    "plot_report",
    "render_markdown",
    "write_report",
]
