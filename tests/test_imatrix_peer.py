"""Our imatrix against llama.cpp's ``llama-imatrix`` on a tiny converted model.

Needs the ``llama-imatrix`` binary (built from the llama-cpp-python sdist, see
benches/bench_imatrix.py); point ``FERROQUANT_LLAMA_IMATRIX`` at it, or the test skips.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ferroquant.imatrix import ImportanceMatrix, compute_hf, model_shapes_gguf

pytestmark = pytest.mark.peer
BINARY = os.environ.get("FERROQUANT_LLAMA_IMATRIX", "")


@pytest.mark.skipif(not Path(BINARY).is_file(), reason="FERROQUANT_LLAMA_IMATRIX not set")
def test_llama_imatrix_agrees(tmp_path: Path, wikitext_path: Path) -> None:
    pytest.importorskip("torch")
    from ferroquant.convert import convert
    from test_convert_models import make_model

    hf = make_model(tmp_path / "hf", "llama", n_layer=2, hidden=256, n_ff=512)
    f32 = tmp_path / "f32.gguf"
    convert(hf, f32, "F32", progress=False)
    text = tmp_path / "calib.txt"
    text.write_text(wikitext_path.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    base = [BINARY, "-m", str(f32), "-f", str(text), "-c", "64", "-b", "64", "--chunks", "6",
            "--no-ppl", "-t", "2"]  # fmt: skip
    theirs = {}
    for fmt in ("gguf", "dat"):
        out = tmp_path / f"llama.{fmt}"
        proc = subprocess.run(
            [*base, "-o", str(out), "--output-format", fmt],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        theirs[fmt] = ImportanceMatrix.load(out)
        theirs[fmt].check_against(model_shapes_gguf(f32), require_all=True)
    ours = compute_hf(hf, text, nsamples=6, seqlen=64, progress=False)
    assert ours.names() == theirs["gguf"].names()
    for name in ours.names():
        a, b = ours.weights(name), theirs["gguf"].weights(name)
        assert ours.entries[name].counts[0] == theirs["gguf"].entries[name].counts[0] == 384
        assert np.corrcoef(a, b)[0, 1] >= 0.99, name
        # the .dat form carries the same means (float32 round trip through * ncall)
        np.testing.assert_allclose(theirs["dat"].weights(name), b, rtol=1e-5)
