"""GGUF -> Hugging Face checkpoint: config.json, model.safetensors, tokenizer and
generation config that ``transformers`` loads (``LlamaForCausalLM``, ``AutoTokenizer``).

Tensors are dequantized one at a time with ferroquant's kernels, the llama.cpp layout fixes
are undone (Q/K rotary permutation) and each is streamed into the safetensors file, so peak
memory is about one tensor. The directory is assembled under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from tqdm import tqdm

from . import quants
from .arch import arch_for_gguf
from .gguf_header import GGUFHeader, HeaderTensor, read_header
from .gguf_io import GGUFError
from .safetensors_io import f32_to_bf16_bits, release_pages, write_streaming
from .tokenizer_io import write_hf_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
# Tensors llama.cpp derives from config.json; HF recomputes them.
_DERIVED = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


@dataclass
class ExportSummary:
    out_dir: Path
    n_tensors: int
    n_bytes: int
    seconds: float


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """Every metadata field with full arrays."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _dequantize(head: GGUFHeader, t: HeaderTensor) -> np.ndarray:
    cols = t.shape[-1]
    rows = int(np.prod(t.shape, dtype=np.int64)) // cols
    try:
        x = quants.dequantize(np.array(head.tensor_bytes(t)), t.qtype.name, (rows, cols))
    except ValueError as err:
        raise GGUFError(f"{head.path}: tensor {t.name!r}: {err}") from err
    release_pages(head.data, t.offset, t.offset + t.n_bytes)
    return x.reshape(t.shape)


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "F16":
        return np.ascontiguousarray(x.astype(np.float16))
    return f32_to_bf16_bits(x)


def export_hf(
    gguf_path: Union[str, Path],
    out_dir: Union[str, Path],
    dtype: str = "float16",
    progress: bool = True,
) -> ExportSummary:
    """Write a HF checkpoint directory for the GGUF model at ``gguf_path``."""
    t0 = time.perf_counter()
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    st_dtype = DTYPES[dtype]
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: exists and is not an empty directory")
    head = read_header(gguf_path)
    meta = {key: value for key, (_, _, value) in head.kv.items()}
    arch_name = str(meta.get("general.architecture", ""))
    arch = arch_for_gguf(arch_name)
    infos = [t for t in head.tensors if t.name not in _DERIVED]
    names = {i.name for i in infos}
    try:
        config = arch.hf_config(meta)
    except (KeyError, TypeError) as err:
        raise GGUFError(
            f"{gguf_path}: metadata incomplete for a {arch_name} config ({err})"
        ) from err
    config["tie_word_embeddings"] = "output.weight" not in names
    config["torch_dtype"] = dtype
    if "token_embd.weight" not in names:
        raise GGUFError(f"{gguf_path}: no token_embd.weight tensor")
    config["vocab_size"] = int(next(i for i in infos if i.name == "token_embd.weight").shape[0])

    specs: list[tuple[str, str, tuple[int, ...]]] = []
    for info in infos:
        hf_name = arch.hf_tensor_name(info.name)
        if hf_name is None:
            raise GGUFError(f"{gguf_path}: tensor {info.name!r} has no Hugging Face name")
        specs.append((hf_name, st_dtype, info.shape))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        bar = tqdm(infos, desc="export", unit="tensor", disable=not progress)

        def arrays():
            for info in bar:
                bar.set_postfix_str(info.name, refresh=False)
                x = _dequantize(head, info)
                yield _cast(arch.untransform(info.name, x, meta), st_dtype)

        write_streaming(tmp / "model.safetensors", specs, arrays(), metadata={"format": "pt"})
        bar.close()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        ids = write_hf_tokenizer(meta, tmp, int(config.get("max_position_embeddings", 2048)))
        gen: dict[str, Any] = {"_from_model_config": False}
        for key in ("bos", "eos", "pad"):
            if ids.get(key) is not None:
                gen[f"{key}_token_id"] = ids[key]
        (tmp / "generation_config.json").write_text(
            json.dumps(gen, indent=2) + "\n", encoding="utf-8"
        )
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    n_bytes = (out_dir / "model.safetensors").stat().st_size
    return ExportSummary(out_dir, len(specs), n_bytes, time.perf_counter() - t0)
