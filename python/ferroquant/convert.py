"""Hugging Face checkpoint -> GGUF, and GGUF -> GGUF requantization, without torch.

Data path of one tensor: safetensors memory map (or GGUF memory map) -> float32 -> layout
fix from the architecture table -> one Rust quantize call -> gguf-py writer. The writer gets
every tensor's info first (header, metadata, tensor table), then the data one tensor at a
time, so peak memory is about the largest tensor plus a constant. The output is written under
a temporary name in the target directory and renamed when complete; any error removes it.

Imports: numpy, safetensors-format reading on numpy memory maps, gguf-py, tqdm and
ferroquant's extension. ``tests/test_convert.py`` checks that torch/transformers stay out.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from tqdm import tqdm

from . import presets, quants
from .arch import Arch, ArchError, arch_for_config
from .safetensors_io import SafetensorsDir, SafetensorsError, f32_to_bf16_bits, release_pages
from .tokenizer_io import add_hf_vocab

log = logging.getLogger(__name__)
# gguf-py logs every file plan at INFO; our summary replaces it
logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
PathLike = Union[str, Path]
T = GGMLQuantizationType
_FLOATS = (T.F32, T.F16, T.BF16)


class ConvertError(ValueError):
    """A conversion that cannot proceed; the message names the file/tensor and the problem."""


@dataclass
class TensorJob:
    """One output tensor: name, numpy shape, target type and how to get its data."""

    name: str
    shape: tuple[int, ...]
    qtype: T
    load: Callable[[], np.ndarray]  # float32 data, or already-encoded bytes when raw=True
    raw: bool = False
    imatrix_name: Optional[str] = None

    @property
    def n_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        n = int(np.prod(self.shape, dtype=np.int64))
        return n // block * size


@dataclass
class Summary:
    out_path: Path
    file_type: str
    n_tensors: int
    n_weights: int
    n_bytes: int
    seconds: float
    types: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0

    @property
    def bits_per_weight(self) -> float:
        return self.n_bytes * 8 / self.n_weights if self.n_weights else 0.0

    def text(self) -> str:
        types = ", ".join(f"{k}: {v}" for k, v in sorted(self.types.items()))
        return (
            f"wrote {self.out_path} ({self.file_type}): {self.n_tensors} tensors [{types}], "
            f"{self.n_bytes / 2**20:.1f} MiB, {self.bits_per_weight:.3f} bits per weight, "
            f"{self.fallbacks} fallback(s), {self.seconds:.1f} s"
        )


# ---- importance matrices ----------------------------------------------------------------


def load_imatrix(
    path: PathLike, shapes: Optional[dict[str, tuple[int, ...]]] = None
) -> dict[str, np.ndarray]:
    """Per-column importance of each tensor from a llama.cpp imatrix file (GGUF or legacy
    ``.dat``), read by :mod:`ferroquant.imatrix` and normalised as llama-quantize does (mean
    squared activation). With ``shapes`` (name -> numpy shape of the model's tensors), an
    imatrix whose names or widths do not match the model is refused."""
    from .imatrix import ImatrixError, ImportanceMatrix

    try:
        imat = ImportanceMatrix.load(path)
        if shapes is not None:
            imat.check_against(shapes)
    except ImatrixError as err:
        raise ConvertError(str(err)) from err
    return imat.weights_dict()


# ---- the writer -------------------------------------------------------------------------


def _encode(x: np.ndarray, qtype: T, weights: Optional[np.ndarray], name: str) -> np.ndarray:
    if qtype == T.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if qtype == T.F16:
        return np.ascontiguousarray(x.astype(np.float16))
    if qtype == T.BF16:
        return f32_to_bf16_bits(x)
    cols = x.shape[-1]
    mat = x.reshape(-1, cols)
    if weights is not None and weights.size != cols:
        raise ConvertError(
            f"imatrix for {name!r} has {weights.size} values, the tensor {cols} columns"
        )
    return quants.quantize(mat, qtype.name, weights)


def write_gguf(
    out_path: PathLike,
    arch_name: str,
    add_metadata: Callable[[gguf.GGUFWriter], None],
    jobs: list[TensorJob],
    imatrix: Optional[dict[str, np.ndarray]] = None,
    progress: bool = True,
    file_type_name: str = "",
    fallbacks: int = 0,
) -> Summary:
    """Write a GGUF: metadata and tensor table first, then each tensor's data as it is made."""
    t0 = time.perf_counter()
    out_path = Path(out_path)
    for job in jobs:
        if job.qtype not in _FLOATS and not job.raw:
            try:
                quants.type_info(job.qtype.name)
            except ValueError as err:
                raise ConvertError(f"tensor {job.name!r}: {err}") from err
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch_name)
    try:
        # tensor infos first: the metadata step may count parameters (size label)
        for job in jobs:
            writer.add_tensor_info(
                job.name, job.shape, np.dtype(np.float32), job.n_bytes, raw_dtype=job.qtype
            )
        add_metadata(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = tqdm(jobs, desc="convert", unit="tensor", disable=not progress)
        for job in bar:
            bar.set_postfix_str(f"{job.name} -> {job.qtype.name}", refresh=False)
            data = job.load()
            if not job.raw:
                weights = None
                if imatrix is not None and job.qtype not in _FLOATS:
                    weights = imatrix.get(job.imatrix_name or job.name)
                data = _encode(data, job.qtype, weights, job.name)
            data = np.ascontiguousarray(data)
            if data.nbytes != job.n_bytes:
                raise ConvertError(
                    f"tensor {job.name!r}: {data.nbytes} bytes made, {job.n_bytes} expected"
                )
            writer.write_tensor_data(data)
            del data
        bar.close()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        try:
            writer.close()
        finally:
            if tmp.exists():
                tmp.unlink()
        raise
    counts = Counter(j.qtype.name for j in jobs)
    n_weights = sum(int(np.prod(j.shape, dtype=np.int64)) for j in jobs)
    return Summary(
        out_path,
        file_type_name,
        len(jobs),
        n_weights,
        sum(j.n_bytes for j in jobs),
        time.perf_counter() - t0,
        dict(counts),
        fallbacks,
    )


def _base_float_type(name: str, shape: tuple[int, ...], ft: presets.FileType) -> T:
    """The type ``convert_hf_to_gguf.py`` gives a tensor before llama-quantize runs."""
    if presets._n_dims(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return T.F32
    if ft.default in _FLOATS:
        return ft.default
    return T.F16


# ---- HF -> GGUF --------------------------------------------------------------------------


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ConvertError(f"{model_dir}: not a directory")
    if not path.is_file():
        raise ConvertError(f"{path}: missing (a Hugging Face checkpoint needs config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConvertError(f"{path}: corrupt JSON ({err})") from err
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: not a JSON object")
    return config


def _check_shapes(arch: Arch, st: SafetensorsDir, mapping: dict[str, str], cfg_path: Path) -> None:
    """Shapes the config implies, for the common tensors: a clear error on a mismatch."""
    c = arch.cfg
    try:
        hidden = int(c["hidden_size"])
        n_head = int(c["num_attention_heads"])
        n_kv = int(c.get("num_key_value_heads") or n_head)
        head_dim = int(c.get("head_dim") or hidden // n_head)
        n_ff = int(c["intermediate_size"])
        vocab = int(c["vocab_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConvertError(f"{cfg_path}: missing or bad hyperparameter ({err})") from err
    expected = {
        "token_embd.weight": (vocab, hidden),
        "output.weight": (vocab, hidden),
        "attn_q.weight": (n_head * head_dim, hidden),
        "attn_k.weight": (n_kv * head_dim, hidden),
        "attn_v.weight": (n_kv * head_dim, hidden),
        "attn_output.weight": (hidden, n_head * head_dim),
        "ffn_gate.weight": (n_ff, hidden),
        "ffn_down.weight": (hidden, n_ff),
        "attn_norm.weight": (hidden,),
    }
    for hf_name, g_name in mapping.items():
        key = g_name.split(".", 2)[-1] if g_name.startswith("blk.") else g_name
        want = expected.get(key)
        got = st.tensors[hf_name].shape
        if want is not None and tuple(got) != want:
            raise ConvertError(
                f"{st.tensors[hf_name].file}: tensor {hf_name!r} has shape {list(got)}, "
                f"{cfg_path.name} implies {list(want)}"
            )


_LLAMA_LIKE_LAYER = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)
_PHI3_LAYER = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


def convert(
    model_dir: PathLike,
    out_path: PathLike,
    type_name: str = "F16",
    imatrix: Optional[PathLike] = None,
    progress: bool = True,
    pre_quantized: Optional[dict[str, tuple[str, np.ndarray]]] = None,
) -> Summary:
    """Convert the HF checkpoint in ``model_dir`` to a GGUF file of ``type_name``.

    ``pre_quantized`` maps HF tensor names to (GGUF type, block bytes (rows, row_bytes) in HF
    row order), already quantized elsewhere (GPTQ onto GGUF grids); they are written as given,
    after the architecture's row layout fix.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    ft = presets.file_type(type_name)
    config = read_config(model_dir)
    cfg_path = model_dir / "config.json"
    try:
        arch = arch_for_config(config, str(cfg_path))
    except ArchError as err:
        raise ConvertError(str(err)) from err
    if hasattr(arch, "set_model_dir"):
        arch.set_model_dir(model_dir)
    try:
        st = SafetensorsDir(model_dir)
    except SafetensorsError as err:
        raise ConvertError(str(err)) from err

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
            f"{model_dir}: {len(missing)} tensor(s) missing from the safetensors files, "
            f"e.g. {missing[0]!r} (for {arch.block_count} layers in config.json)"
        )
    if arch.gguf_arch != gguf.MODEL_ARCH.PHI3:
        _check_shapes(arch, st, mapping, cfg_path)

    extra = list(arch.extra_tensors())
    entries: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray], Optional[str]]] = []
    for name, arr in extra:
        entries.append((name, tuple(arr.shape), (lambda a=arr: a), None))
    for hf_name, g_name in mapping.items():
        shape = arch.out_shape(g_name, st.tensors[hf_name].shape)

        def load(h: str = hf_name, g: str = g_name) -> np.ndarray:
            return arch.transform(h, g, st.load_f32(h))

        entries.append((g_name, shape, load, g_name))

    n_head = int(arch.cfg.get("num_attention_heads") or 1)
    model = presets.ModelShape(
        arch=arch.gguf_arch_name(),
        n_layer=arch.block_count,
        n_head=n_head,
        n_head_kv=int(arch.cfg.get("num_key_value_heads") or n_head),
        n_expert=int(arch.cfg.get("num_local_experts") or 0),
    )
    imat = load_imatrix(imatrix, {n: s for n, s, _, _ in entries}) if imatrix else None
    plan = presets.plan(
        [(n, s, _base_float_type(n, s, ft)) for n, s, _, _ in entries],
        ft.name,
        model,
        has_imatrix=imat is not None,
    )
    jobs = [
        TensorJob(p.name, p.shape, p.dst_type, load, imatrix_name=imn)
        for p, (_, _, load, imn) in zip(plan, entries)
    ]
    if pre_quantized:
        hf_of = {g: h for h, g in mapping.items()}
        for i, job in enumerate(jobs):
            h = hf_of.get(job.name)
            if h in pre_quantized:
                qname, blocks = pre_quantized[h]
                jobs[i] = TensorJob(
                    job.name,
                    job.shape,
                    T[qname],
                    lambda h=h, g=job.name, b=blocks: arch.transform(h, g, b),
                    raw=True,
                )

    def add_metadata(w: gguf.GGUFWriter) -> None:
        # general.* as ModelBase.prepare_metadata: model card / directory name, size label
        total, shared, expert, n_expert = w.get_total_parameter_count()
        meta = gguf.Metadata.load(None, model_dir, None, total)
        if meta.name is None:
            meta.name = model_dir.name
        if meta.size_label is None and total > 0:
            meta.size_label = gguf.size_label(total, shared, expert, n_expert)
        w.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(w)
        arch.add_metadata(w)
        w.add_file_type(ft.ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hf_vocab(w, model_dir, arch.gguf_arch_name(), arch.cfg)

    try:
        return write_gguf(
            out_path,
            arch.gguf_arch_name(),
            add_metadata,
            jobs,
            imat,
            progress,
            ft.name,
            sum(p.fallback for p in plan),
        )
    except (SafetensorsError, ArchError) as err:
        raise ConvertError(str(err)) from err
    finally:
        st.close()


# ---- GGUF -> GGUF ------------------------------------------------------------------------


def requantize(
    in_path: PathLike,
    out_path: PathLike,
    type_name: str,
    imatrix: Optional[PathLike] = None,
    progress: bool = True,
) -> Summary:
    """Re-quantize a GGUF model like ``llama-quantize IN OUT TYPE``."""
    from .gguf_header import read_header

    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.exists() and in_path.resolve() == out_path.resolve():
        raise ConvertError(f"{out_path}: the output must differ from the input")
    ft = presets.file_type(type_name)
    head = read_header(in_path)
    arch_name = str(head.value("general.architecture", ""))
    quantized = [t for t in head.tensors if t.qtype not in _FLOATS]
    if quantized:
        log.warning(
            "%s: %d tensor(s) are already quantized (e.g. %s is %s); requantizing loses more "
            "quality than quantizing from the float model",
            in_path,
            len(quantized),
            quantized[0].name,
            quantized[0].qtype.name,
        )

    def hp(key: str, default: int = 0) -> int:
        v = head.value(f"{arch_name}.{key}", default)
        return int(v[0] if isinstance(v, list) else v)

    n_head = hp("attention.head_count", 1)
    model = presets.ModelShape(
        arch=arch_name,
        n_layer=hp("block_count"),
        n_head=n_head,
        n_head_kv=hp("attention.head_count_kv", n_head),
        n_expert=hp("expert_count"),
    )
    imat = load_imatrix(imatrix, {t.name: t.shape for t in head.tensors}) if imatrix else None
    plan = presets.plan(
        [(t.name, t.shape, t.qtype) for t in head.tensors],
        ft.name,
        model,
        has_imatrix=imat is not None,
    )
    by_name = {t.name: t for t in head.tensors}
    for p in plan:
        if p.dst_type != p.src_type and p.src_type not in _FLOATS:
            try:
                quants.type_info(p.src_type.name)
            except ValueError as err:
                raise ConvertError(
                    f"{in_path}: tensor {p.name!r}: cannot dequantize ({err})"
                ) from err

    def loader(name: str, raw: bool) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            t = by_name[name]
            data = np.array(head.tensor_bytes(t))
            if not raw:
                cols = t.shape[-1]
                rows = int(np.prod(t.shape, dtype=np.int64)) // cols
                data = quants.dequantize(data, t.qtype.name, (rows, cols)).reshape(t.shape)
            # the input pages of this tensor are done with: keep RSS near one tensor
            release_pages(head.data, t.offset, t.offset + t.n_bytes)
            return data

        return load

    jobs = [
        TensorJob(
            p.name,
            p.shape,
            p.dst_type,
            loader(p.name, p.dst_type == p.src_type),
            raw=p.dst_type == p.src_type,
        )
        for p in plan
    ]
    skip = {
        "general.architecture",
        "general.file_type",
        "general.quantization_version",
        "general.alignment",
        "split.no",
        "split.count",
        "split.tensors.count",
    }

    def add_metadata(w: gguf.GGUFWriter) -> None:
        for key, (vtype, sub, value) in head.kv.items():
            if key not in skip:
                w.add_key_value(key, value, vtype, sub_type=sub)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_file_type(ft.ftype)

    return write_gguf(
        out_path,
        arch_name,
        add_metadata,
        jobs,
        imat,
        progress,
        ft.name,
        sum(p.fallback for p in plan),
    )
