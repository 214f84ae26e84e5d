"""``ferroquant quantize``: GGUF requantization, imatrix input, and the HF-directory route."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ferroquant.commands import quantize as quantize_cmd
from ferroquant.convert import ConvertError, convert, load_imatrix, requantize
from ferroquant.gguf_io import open_gguf, read_tensor_f32, tensor_bytes, tensor_infos
from test_convert_models import make_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return make_model(tmp_path / "hf", "llama", n_layer=2, hidden=256, n_ff=512)


def _write_legacy_imatrix(path: Path, entries: dict[str, np.ndarray], ncall: int = 4) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, vals in entries.items():
            raw = name.encode()
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, vals.size))
            f.write((vals * ncall).astype("<f4").tobytes())


def test_requantize_warns_on_quantized_source(tiny: Path, tmp_path: Path, caplog) -> None:
    q8 = tmp_path / "q8.gguf"
    convert(tiny, q8, "Q8_0", progress=False)
    out = tmp_path / "q4.gguf"
    with caplog.at_level(logging.WARNING):
        s = requantize(q8, out, "Q4_0", progress=False)
    assert "already quantized" in caplog.text
    infos = {i.name: i.qtype for i in tensor_infos(open_gguf(out))}
    assert infos["blk.0.attn_q.weight"] == "Q4_0" and infos["output.weight"] == "Q6_K"
    assert infos["blk.0.attn_norm.weight"] == "F32"
    # metadata (tokenizer) carried over, file type updated
    r = open_gguf(out)
    assert len(r.fields["tokenizer.ggml.tokens"].data) == len(
        open_gguf(q8).fields["tokenizer.ggml.tokens"].data
    )
    assert r.fields["general.file_type"].contents() == 2
    assert s.n_tensors == len(infos)


def test_requantize_same_type_copies_bytes(tiny: Path, tmp_path: Path) -> None:
    f16 = tmp_path / "f16.gguf"
    convert(tiny, f16, "F16", progress=False)
    out = tmp_path / "f16b.gguf"
    requantize(f16, out, "F16", progress=False)
    a, b = open_gguf(f16), open_gguf(out)
    for i in tensor_infos(a):
        assert np.array_equal(tensor_bytes(a, i.name), tensor_bytes(b, i.name))


def test_imatrix_legacy_file_changes_k_quants(tiny: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    names = [f"blk.{i}.{t}.weight" for i in range(2) for t in ("attn_q", "ffn_up", "ffn_down")]
    cols = {"attn_q": 256, "ffn_up": 256, "ffn_down": 512}
    entries = {n: rng.uniform(0.01, 10, cols[n.split(".")[2]]).astype(np.float32) for n in names}
    imat = tmp_path / "imatrix.dat"
    _write_legacy_imatrix(imat, entries)
    loaded = load_imatrix(imat)
    assert np.allclose(loaded["blk.0.attn_q.weight"], entries["blk.0.attn_q.weight"], rtol=1e-6)
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    convert(tiny, plain, "Q4_K_S", progress=False)
    convert(tiny, weighted, "Q4_K_S", imatrix=imat, progress=False)
    a, b = open_gguf(plain), open_gguf(weighted)
    assert not np.array_equal(
        tensor_bytes(a, "blk.0.attn_q.weight"), tensor_bytes(b, "blk.0.attn_q.weight")
    )
    # a tensor without imatrix data is quantized the same way
    assert np.array_equal(
        tensor_bytes(a, "blk.0.attn_k.weight"), tensor_bytes(b, "blk.0.attn_k.weight")
    )
    ref = read_tensor_f32(open_gguf(tmp_path / "plain.gguf"), "blk.0.attn_q.weight")
    assert np.isfinite(ref).all()


def test_bad_imatrix(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.dat"
    bad.write_bytes(struct.pack("<i", 3) + b"\x05\x00")
    with pytest.raises(ConvertError, match=r"bad\.dat"):
        convert(tiny, tmp_path / "o.gguf", "Q4_K_M", imatrix=bad, progress=False)
    assert not (tmp_path / "o.gguf").exists()


def test_quantize_hf_dir_needs_method(tiny: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ferroquant", "quantize", str(tiny), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1 and "--method" in proc.stderr


def test_quantize_hf_dir_dispatches_to_method(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setitem(quantize_cmd.HF_METHODS, "fake", "test_convert_quantize:_fake_method")
    monkeypatch.setattr(sys.modules[__name__], "_calls", calls, raising=False)
    from ferroquant.cli import main

    assert main(["quantize", str(tiny), "-o", str(tmp_path / "o"), "--method", "fake"]) == 0
    assert calls and calls[0].input == str(tiny)


def _fake_method(args) -> int:
    sys.modules[__name__]._calls.append(args)
    return 0


def test_quantize_cli_gguf(tiny: Path, tmp_path: Path) -> None:
    f16 = tmp_path / "f16.gguf"
    convert(tiny, f16, "F16", progress=False)
    out = tmp_path / "q.gguf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferroquant",
            "quantize",
            str(f16),
            "-o",
            str(out),
            "--type",
            "Q4_K_M",
            "--threads",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Q4_K_M" in proc.stdout and "bits per weight" in proc.stdout
    assert {i.qtype for i in tensor_infos(open_gguf(out))} >= {"Q4_K", "Q6_K"}


def test_requantize_rejects_corrupt_headers(tiny: Path, tmp_path: Path) -> None:
    from ferroquant.gguf_io import GGUFError

    f16 = tmp_path / "f16.gguf"
    convert(tiny, f16, "F16", progress=False)
    data = f16.read_bytes()
    cases = {
        "magic": b"GGUX" + data[4:],
        "counts": data[:8] + struct.pack("<Q", 2**60) + data[16:],
        "cut": data[:5000],
        "tensors": data[:-4096],
    }
    for label, blob in cases.items():
        bad = tmp_path / f"{label}.gguf"
        bad.write_bytes(blob)
        with pytest.raises(GGUFError, match=f"{label}.gguf"):
            requantize(bad, tmp_path / "o.gguf", "Q8_0", progress=False)
        assert not (tmp_path / "o.gguf").exists()
