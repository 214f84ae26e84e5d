"""``ferroquant quantize HF_DIR --method gptq|rtn`` end to end on a tiny random Llama with a
real (small BPE) tokenizer: GPTQ checkpoint and GGUF outputs, and their contents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from gguf import GGUFReader

from ferroquant import _native
from ferroquant.arch.llama import permute_qk
from ferroquant.export.gptq_checkpoint import load_checkpoint_weights
from ferroquant.safetensors_io import SafetensorsDir
from test_convert_models import make_model, wikitext_lines


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferroquant", "quantize", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gptq_cli")
    src = make_model(root / "hf", "llama", n_layer=2, hidden=64, n_ff=128)
    calib = root / "calib.txt"
    calib.write_text("\n".join(wikitext_lines(400)[200:]), encoding="utf-8")
    return src, calib


@pytest.mark.slow
def test_gptq_checkpoint_from_cli(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    src, calib = tiny
    out = tmp_path / "gptq"
    r = _cli(str(src), "-o", str(out), "--method", "gptq", "--bits", "4", "--group-size", "32",
             "--calib", str(calib), "--nsamples", "8", "--seqlen", "32", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["bits"] == 4 and qc["group_size"] == 32 and qc["quant_method"] == "gptq"
    assert (out / "tokenizer.json").is_file()
    weights = load_checkpoint_weights(out)
    st = SafetensorsDir(src)
    try:
        w = st.load_f32("model.layers.1.mlp.down_proj.weight")
    finally:
        st.close()
    q = weights["model.layers.1.mlp.down_proj.weight"]
    assert q.shape == w.shape
    rel = np.linalg.norm(q - w) / np.linalg.norm(w)
    assert 0 < rel < 0.2


@pytest.mark.slow
def test_gguf_grid_output_from_cli(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    src, calib = tiny
    out = tmp_path / "m.gguf"
    r = _cli(str(src), "-o", str(out), "--method", "gptq", "--format", "gguf", "--type", "Q4_0",
             "--calib", str(calib), "--nsamples", "8", "--seqlen", "32", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    reader = GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    st = SafetensorsDir(src)
    cfg = json.loads((src / "config.json").read_text())
    try:
        for gname, hname in [
            ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
            ("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight"),
        ]:
            t = tensors[gname]
            assert t.tensor_type.name == "Q4_0"
            w = st.load_f32(hname)
            if "attn_q" in gname:
                w = permute_qk(w, cfg["num_attention_heads"])
            rows, cols = w.shape
            deq = _native.dequantize(np.asarray(t.data), "Q4_0", rows, cols)
            rtn = _native.dequantize(_native.quantize(w, "Q4_0"), "Q4_0", rows, cols)
            # GPTQ'd (not the plain rounding) and in the right row order
            assert not np.array_equal(deq, rtn)
            assert np.linalg.norm(deq - w) / np.linalg.norm(w) < 0.3
    finally:
        st.close()
    assert not list(tmp_path.glob(".m.gguf.tmp-*"))


@pytest.mark.slow
def test_k_quant_preset_with_fallbacks(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    src, calib = tiny
    out = tmp_path / "k.gguf"
    r = _cli(str(src), "-o", str(out), "--method", "gptq", "--format", "gguf", "--type", "Q4_K_M",
             "--calib", str(calib), "--nsamples", "8", "--seqlen", "32", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "rtn.gguf"
    from ferroquant.convert import convert

    convert(src, ref, "Q4_K_M", progress=False)
    got = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    want = {t.name: t.tensor_type.name for t in GGUFReader(ref).tensors}
    assert got == want  # the preset's types, fallbacks included (64 columns: no K-quant fits)


def test_unknown_gguf_type_is_a_clear_error(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = tiny
    r = _cli(str(src), "-o", str(tmp_path / "x.gguf"), "--method", "gptq", "--format", "gguf",
             "--type", "Q9_X", "--no-progress")  # fmt: skip
    assert r.returncode != 0
    assert "Q9_X" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
