"""Preset tensor types against llama.cpp's own ``llama_model_quantize`` on the same F16 file."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from ferroquant import presets
from ferroquant.convert import convert, requantize
from ferroquant.gguf_io import open_gguf, tensor_infos
from test_convert_models import make_model

PRESETS = [
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "IQ4_XS",
]
_LOG_CB = None


def llama_cpp_types(src: Path, out: Path, ftype: str) -> dict[str, str]:
    """The tensor types llama.cpp's quantizer writes for ``ftype``."""
    llama_cpp = pytest.importorskip("llama_cpp")
    global _LOG_CB
    if _LOG_CB is None:
        _LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(
            lambda level, text, user: None
        )
        llama_cpp.llama_log_set(_LOG_CB, None)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = presets.file_type(ftype).ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize {ftype} failed"
    return {i.name: i.qtype for i in tensor_infos(open_gguf(out))}


def our_types(src: Path, ftype: str) -> dict[str, str]:
    reader = open_gguf(src)
    from ferroquant.gguf_io import field_value

    arch = field_value(reader, "general.architecture")
    n_head = field_value(reader, f"{arch}.attention.head_count")
    model = presets.ModelShape(
        arch,
        field_value(reader, f"{arch}.block_count"),
        n_head,
        field_value(reader, f"{arch}.attention.head_count_kv", n_head),
    )
    infos = tensor_infos(reader)
    plan = presets.plan([(i.name, i.shape, T[i.qtype]) for i in infos], ftype, model)
    return {p.name: p.dst_type.name for p in plan}


def test_use_more_bits_and_fallbacks() -> None:
    assert [i for i in range(30) if presets._use_more_bits(i, 30)] == [
        0,
        1,
        2,
        5,
        8,
        11,
        14,
        17,
        20,
        23,
        26,
        27,
        28,
        29,
    ]
    assert presets._fallback(T.Q4_K, 576) == (T.Q5_0, True)
    assert presets._fallback(T.Q5_K, 576) == (T.Q5_1, True)
    assert presets._fallback(T.Q6_K, 576) == (T.Q8_0, True)
    assert presets._fallback(T.IQ4_XS, 576) == (T.IQ4_NL, True)
    assert presets._fallback(T.Q3_K, 576) == (T.Q4_0, True)
    assert presets._fallback(T.Q4_K, 48) == (T.F16, True)
    assert presets._fallback(T.Q4_K, 1536) == (T.Q4_K, False)
    with pytest.raises(ValueError, match="unknown type"):
        presets.file_type("Q7_K")


@pytest.fixture(scope="module", params=[(2, False), (1, True)], ids=["gqa2-untied", "gqa4-tied"])
def tiny_f16(request, tmp_path_factory) -> Path:
    """30 layers like SmolLM2; rows of 64 (not a 256 multiple) and 256 (a multiple)."""
    n_kv, tied = request.param
    d = tmp_path_factory.mktemp("presets")
    src = make_model(d / "hf", "llama", n_layer=30, hidden=64, n_ff=256, n_kv=n_kv, tied=tied)
    out = d / "f16.gguf"
    convert(src, out, "F16", progress=False)
    return out


@pytest.mark.peer
@pytest.mark.parametrize("ftype", [*PRESETS, "Q4_0", "Q5_1", "Q8_0", "IQ4_NL"])
def test_types_match_llama_cpp_tiny(tiny_f16: Path, tmp_path: Path, ftype: str) -> None:
    theirs = llama_cpp_types(tiny_f16, tmp_path / "lq.gguf", ftype)
    ours = our_types(tiny_f16, ftype)
    assert ours == theirs


@pytest.mark.peer
@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q6_K", "Q8_0"])
def test_requantize_equals_llama_cpp_bytes(tiny_f16: Path, tmp_path: Path, ftype: str) -> None:
    """Same types, and (our kernels being llama.cpp's reference ones) the same bytes."""
    from ferroquant.gguf_io import tensor_bytes
    from ferroquant.hf_export import gguf_metadata

    out = tmp_path / "ours.gguf"
    s = requantize(tiny_f16, out, ftype, progress=False)
    got = {i.name: i.qtype for i in tensor_infos(open_gguf(out))}
    assert got == our_types(tiny_f16, ftype)
    assert s.n_tensors == len(got)
    theirs = tmp_path / "lq.gguf"
    llama_cpp_types(tiny_f16, theirs, ftype)
    a, b = open_gguf(out), open_gguf(theirs)
    differ = [n for n in got if not np.array_equal(tensor_bytes(a, n), tensor_bytes(b, n))]
    assert differ == []
    assert gguf_metadata(a) == gguf_metadata(b)
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=32, verbose=False)
    llm.eval([1, 5, 9, 11])


@pytest.mark.slow
@pytest.mark.peer
def test_types_match_llama_cpp_smollm2(smollm2_path: Path, tmp_path: Path) -> None:
    from ferroquant.hf_export import export_hf

    export_hf(smollm2_path, tmp_path / "hf", "float16", progress=False)
    f16 = tmp_path / "f16.gguf"
    convert(tmp_path / "hf", f16, "F16", progress=False)
    for ftype in PRESETS:
        theirs = llama_cpp_types(f16, tmp_path / "lq.gguf", ftype)
        assert our_types(f16, ftype) == theirs, ftype
