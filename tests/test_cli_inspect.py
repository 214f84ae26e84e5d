"""``ferroquant inspect``: the tensor table and sizes of a real GGUF, and clear errors on
files that are not one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ferroquant.cli import main


def test_inspect_json_describes_smollm2(smollm2_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(smollm2_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_tensors"] == 272
    assert doc["types"] == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert doc["metadata"]["general.architecture"] == "llama"
    assert doc["metadata"]["llama.block_count"] == 30
    embd = next(t for t in doc["tensors"] if t["name"] == "token_embd.weight")
    assert embd["shape"] == [49152, 576] and embd["type"] == "Q8_0"
    assert embd["bytes"] == 49152 * 576 // 32 * 34
    assert doc["tensor_bytes"] == sum(t["bytes"] for t in doc["tensors"])
    # Q4_1 is 5 bits per weight, Q8_0 8.5: the mix lands between them.
    assert 5.0 < doc["bits_per_weight"] < 8.5


def test_inspect_table(smollm2_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(smollm2_path)]) == 0
    out = capsys.readouterr().out
    assert "blk.29.ffn_down.weight" in out and "bits per weight" in out


def test_python_dash_m_entry_point(smollm2_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferroquant",
            "inspect",
            str(smollm2_path),
            "--json",
            "--no-tensors",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(res.stdout)["n_tensors"] == 272


@pytest.mark.parametrize("kind", ["truncated", "garbage", "missing", "empty"])
def test_bad_files_give_one_line_errors(
    kind: str, smollm2_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / f"{kind}.gguf"
    if kind == "truncated":
        bad.write_bytes(smollm2_path.read_bytes()[:40_000_000])
    elif kind == "garbage":
        bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    elif kind == "empty":
        bad.write_bytes(b"")
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "error" in err
    if kind == "truncated":
        assert "truncated" in err
