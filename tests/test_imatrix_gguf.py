"""``ferroquant imatrix MODEL.gguf``: the importance matrix from a GGUF with our own runtime,
against the one computed from the same model's HF checkpoint with torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ferroquant.imatrix import ImatrixError, ImportanceMatrix, compute_gguf, model_shapes_gguf


def _needs_runtime_stats() -> None:
    from ferroquant import _native
    from ferroquant.runtime import Model

    if not (
        hasattr(_native.Runtime, "collect_stats") and hasattr(Model, "collect_activation_stats")
    ):
        pytest.skip("this build's runtime has no activation statistics")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from ferroquant.convert import convert
    from test_convert_models import make_model

    base = tmp_path_factory.mktemp("imatrix_gguf")
    hf = make_model(base / "hf", "llama", n_layer=2, hidden=128, n_ff=256)
    f32 = base / "f32.gguf"
    convert(hf, f32, "F32", progress=False)
    return hf, f32


def test_cli_gguf_matches_hf(tiny: tuple[Path, Path], wikitext_path: Path, tmp_path: Path) -> None:
    _needs_runtime_stats()
    hf, f32 = tiny
    calib = tmp_path / "calib.txt"
    calib.write_text(wikitext_path.read_text(encoding="utf-8")[:30000], encoding="utf-8")
    out = tmp_path / "rt.gguf"
    proc = subprocess.run(
        [sys.executable, "-m", "ferroquant", "imatrix", str(f32), "--calib", str(calib),
         "-o", str(out), "--nsamples", "3", "--seqlen", "64", "--threads", "1",
         "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "14 tensors, 3 chunks of 64 tokens" in proc.stdout
    ours = ImportanceMatrix.load(out)
    ours.check_against(model_shapes_gguf(f32), require_all=True)
    assert all(e.counts.tolist() == [192.0] for e in ours.entries.values())
    assert "output.weight" not in ours  # as llama-imatrix without --process-output
    pytest.importorskip("torch")
    from ferroquant.imatrix import compute_hf

    ref = compute_hf(hf, calib, nsamples=3, seqlen=64, progress=False)
    assert ours.names() == ref.names()
    for name in ref.names():
        a, b = ours.weights(name), ref.weights(name)
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6 * float(b.max()), err_msg=name)


def test_gguf_bad_input(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _needs_runtime_stats()
    _, f32 = tiny
    short = tmp_path / "short.txt"
    short.write_text("a few words", encoding="utf-8")
    with pytest.raises(ImatrixError, match="fewer than one window"):
        compute_gguf(f32, short, seqlen=64, progress=False)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 64)
    proc = subprocess.run(
        [sys.executable, "-m", "ferroquant", "imatrix", str(junk), "--calib", str(short),
         "-o", str(tmp_path / "o.gguf")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and "junk.gguf" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.gguf").exists()
