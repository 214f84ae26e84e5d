"""Importance matrices: llama.cpp's file forms, model checks, bad input (numpy + gguf-py only).

The computation from a HF model (torch) is in test_imatrix_compute.py."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from ferroquant.imatrix import ImatrixError, ImportanceMatrix, merge

NAMES = ("blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight")
COLS = {"blk.0.attn_q.weight": 64, "blk.0.ffn_down.weight": 128, "blk.1.attn_q.weight": 64}
SHAPES = {
    "blk.0.attn_q.weight": (64, 64),
    "blk.0.ffn_down.weight": (64, 128),
    "blk.1.attn_q.weight": (64, 64),
    "blk.0.ffn_up_exps.weight": (4, 128, 64),
    "blk.0.attn_norm.weight": (64,),
}


def _sample(with_sum: bool = False) -> ImportanceMatrix:
    rng = np.random.default_rng(0)
    m = ImportanceMatrix(datasets=["calib.txt"], chunk_count=3, chunk_size=512)
    for name in NAMES:
        x = rng.standard_normal((1536, COLS[name])) * rng.lognormal(0, 1, COLS[name])
        m.add(name, (x * x).sum(0), x.shape[0], x.sum(0) if with_sum else None)
    # stacked experts, one never routed to
    m.add("blk.0.ffn_up_exps.weight", rng.random((4, 64)) * 50, np.array([100.0, 0, 7, 1429]))
    return m


def _assert_same_weights(a: ImportanceMatrix, b: ImportanceMatrix) -> None:
    assert a.names() == b.names()
    for name in a.names():
        np.testing.assert_allclose(a.weights(name), b.weights(name), rtol=2e-6, err_msg=name)


@pytest.mark.parametrize("with_sum", [False, True], ids=["in_sum2", "in_sum2+in_sum"])
def test_gguf_round_trip(tmp_path: Path, with_sum: bool) -> None:
    m = _sample(with_sum)
    path = m.save(tmp_path / "imatrix.gguf")
    back = ImportanceMatrix.load(path)
    _assert_same_weights(m, back)
    assert back.datasets == ["calib.txt"] and back.chunk_count == 3 and back.chunk_size == 512
    for name in m.names():
        e, f = m.entries[name], back.entries[name]
        np.testing.assert_allclose(f.in_sum2, e.in_sum2, rtol=1e-6)
        np.testing.assert_array_equal(f.counts, e.counts)
        assert (f.in_sum is None) == (e.in_sum is None) == (not with_sum or name not in NAMES)
        if e.in_sum is not None:
            np.testing.assert_allclose(f.in_sum, e.in_sum, rtol=1e-6, atol=1e-3)
    # the never-routed expert gets neutral weights, the others mean x**2
    w = back.weights("blk.0.ffn_up_exps.weight")
    assert w.shape == (4, 64) and np.all(w[1] == 1.0)
    # the file is laid out as llama.cpp's save_imatrix writes it
    r = gguf.GGUFReader(path)
    assert r.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in r.fields
    assert r.fields["imatrix.datasets"].contents() == ["calib.txt"]
    t = {t.name: t for t in r.tensors}
    assert t["blk.0.ffn_down.weight.in_sum2"].shape.tolist() == [128, 1]
    assert t["blk.0.ffn_down.weight.counts"].shape.tolist() == [1, 1]
    assert t["blk.0.ffn_up_exps.weight.in_sum2"].shape.tolist() == [64, 4]
    assert t["blk.0.ffn_up_exps.weight.counts"].shape.tolist() == [1, 4]
    assert not list(tmp_path.glob(".*tmp*"))


def test_dat_round_trip(tmp_path: Path) -> None:
    m = _sample()
    path = m.save(tmp_path / "imatrix.dat")
    assert path.read_bytes()[:4] != b"GGUF"
    back = ImportanceMatrix.load(path)
    assert back.datasets == ["calib.txt"] and back.chunk_count == 3
    # the legacy form keeps one count per tensor: experts come back as one long row
    assert back.entries["blk.0.ffn_up_exps.weight"].in_sum2.shape == (1, 256)
    back.check_against(SHAPES)
    _assert_same_weights(m, back)
    # and converting it to GGUF keeps the weights
    again = ImportanceMatrix.load(back.save(tmp_path / "again.gguf"))
    _assert_same_weights(m, again)


def _llamacpp_legacy(path: Path, entries: dict[str, np.ndarray], ncall: int, trailer: bool) -> None:
    """save_imatrix_legacy's bytes: values are mean(x**2) * ncall."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name in sorted(entries):
            raw = name.encode()
            vals = entries[name]
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, vals.size))
            f.write((vals * ncall).astype("<f4").tobytes())
        if trailer:
            ds = b"wiki.train.raw"
            f.write(struct.pack("<ii", 10, len(ds)) + ds)


@pytest.mark.parametrize("trailer", [True, False], ids=["with-trailer", "no-trailer"])
def test_reads_llamacpp_legacy(tmp_path: Path, trailer: bool) -> None:
    rng = np.random.default_rng(1)
    means = {n: rng.uniform(0.01, 5, COLS[n]).astype(np.float32) for n in NAMES}
    path = tmp_path / "imatrix.dat"
    _llamacpp_legacy(path, means, ncall=10, trailer=trailer)
    m = ImportanceMatrix.load(path)
    m.check_against(SHAPES)
    for n in NAMES:
        np.testing.assert_allclose(m.weights(n), means[n], rtol=1e-6)
        assert m.entries[n].counts[0] == 10 * 512  # ncall * chunk size, as llama.cpp rebuilds
    assert m.datasets == (["wiki.train.raw"] if trailer else [])


def test_reads_llamacpp_gguf(tmp_path: Path) -> None:
    """A file written with gguf-py the way gguf_write_to_file lays out save_imatrix's data
    (no architecture, tensors sorted by name, in_sum from newer versions)."""
    rng = np.random.default_rng(2)
    path = tmp_path / "imatrix.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.kv_data[0].pop("general.architecture")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["a.txt", "b.txt"])
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 256)
    sums = {}
    for n in sorted(NAMES):
        sums[n] = rng.uniform(0, 100, (1, COLS[n])).astype(np.float32)
        w.add_tensor(n + ".in_sum2", sums[n])
        w.add_tensor(n + ".counts", np.array([[1792.0]], np.float32))
        w.add_tensor(n + ".in_sum", rng.standard_normal((1, COLS[n])).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = ImportanceMatrix.load(path)
    m.check_against(SHAPES)
    assert m.datasets == ["a.txt", "b.txt"] and m.chunk_count == 7 and m.chunk_size == 256
    for n in NAMES:
        np.testing.assert_allclose(m.weights(n), sums[n][0] / 1792.0, rtol=1e-6)
        assert m.entries[n].in_sum is not None


def test_merge_adds_sums_and_counts() -> None:
    a, b = _sample(), _sample()
    m = merge([a, b])
    e = m.entries["blk.0.attn_q.weight"]
    np.testing.assert_allclose(e.in_sum2, 2 * a.entries["blk.0.attn_q.weight"].in_sum2)
    _assert_same_weights(a, m)
    assert m.chunk_count == 6


# ---- bad input ----------------------------------------------------------------------------


def test_wrong_model_names(tmp_path: Path) -> None:
    path = _sample().save(tmp_path / "im.gguf")
    m = ImportanceMatrix.load(path)
    shapes = {k: v for k, v in SHAPES.items() if k != "blk.1.attn_q.weight"}
    with pytest.raises(ImatrixError, match=r"im\.gguf.*blk\.1\.attn_q\.weight.*another model"):
        m.check_against(shapes)


def test_wrong_model_shapes(tmp_path: Path) -> None:
    path = _sample().save(tmp_path / "im.dat")
    m = ImportanceMatrix.load(path)
    shapes = {**SHAPES, "blk.0.ffn_down.weight": (64, 256)}
    with pytest.raises(ImatrixError, match=r"im\.dat.*blk\.0\.ffn_down\.weight.*128.*256"):
        m.check_against(shapes)
    shapes = {**SHAPES, "blk.0.ffn_up_exps.weight": (8, 128, 64)}
    with pytest.raises(ImatrixError, match=r"ffn_up_exps.*another model"):
        ImportanceMatrix.load(path).check_against(shapes)


def test_missing_tensors_when_required(tmp_path: Path) -> None:
    m = ImportanceMatrix.load(_sample().save(tmp_path / "im.gguf"))
    m.check_against(SHAPES, require_all=True)
    with pytest.raises(ImatrixError, match=r"no importance data.*blk\.2\.attn_k\.weight"):
        m.check_against({**SHAPES, "blk.2.attn_k.weight": (64, 64)}, require_all=True)


def test_truncated_gguf(tmp_path: Path) -> None:
    path = _sample().save(tmp_path / "im.gguf")
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 30, 6):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ImatrixError, match=rf"cut{cut}\.gguf"):
            ImportanceMatrix.load(bad)


@pytest.mark.parametrize("cut", [3, 9, 30, -7, -1])
def test_truncated_dat(tmp_path: Path, cut: int) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "im.dat"
    _llamacpp_legacy(path, {n: rng.random(COLS[n]) for n in NAMES}, ncall=3, trailer=False)
    data = path.read_bytes()
    bad = tmp_path / "bad.dat"
    bad.write_bytes(data[:cut])
    with pytest.raises(ImatrixError, match=r"bad\.dat.*(truncated|not an imatrix)"):
        ImportanceMatrix.load(bad)


def test_corrupt_files(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.dat"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ImatrixError, match=r"garbage\.dat.*not an imatrix"):
        ImportanceMatrix.load(bad)
    # a negative name length
    bad = tmp_path / "name.dat"
    bad.write_bytes(struct.pack("<ii", 1, -5) + b"\0" * 40)
    with pytest.raises(ImatrixError, match=r"name\.dat.*name length"):
        ImportanceMatrix.load(bad)
    # NaN values
    bad = tmp_path / "nan.dat"
    _llamacpp_legacy(bad, {"blk.0.attn_q.weight": np.full(64, np.nan)}, ncall=1, trailer=False)
    with pytest.raises(ImatrixError, match=r"nan\.dat.*blk\.0\.attn_q\.weight.*non-finite"):
        ImportanceMatrix.load(bad)
    with pytest.raises(ImatrixError, match=r"missing\.gguf: no such imatrix file"):
        ImportanceMatrix.load(tmp_path / "missing.gguf")


def _gguf_with(path: Path, tensors: dict[str, np.ndarray], gtype: str = "imatrix") -> Path:
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.type", gtype)
    for n, a in tensors.items():
        w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_not_an_imatrix(tmp_path: Path) -> None:
    model = _gguf_with(tmp_path / "model.gguf", {"blk.0.attn_q.weight": np.ones((4, 4))}, "model")
    with pytest.raises(ImatrixError, match=r"model\.gguf.*'model', not an imatrix"):
        ImportanceMatrix.load(model)
    no_sums = _gguf_with(tmp_path / "nosums.gguf", {"x": np.ones((4, 4), np.float32)})
    with pytest.raises(ImatrixError, match=r"nosums\.gguf.*not an imatrix"):
        ImportanceMatrix.load(no_sums)
    half = {"t.weight.in_sum2": np.ones((1, 8), np.float32)}
    with pytest.raises(ImatrixError, match=r"half\.gguf.*'t\.weight'.*mismatched"):
        ImportanceMatrix.load(_gguf_with(tmp_path / "half.gguf", half))
    odd = {
        "t.weight.in_sum2": np.ones((1, 9), np.float32),
        "t.weight.counts": np.ones((2, 1), np.float32),
    }
    with pytest.raises(ImatrixError, match=r"odd\.gguf.*'t\.weight'.*9 sums"):
        ImportanceMatrix.load(_gguf_with(tmp_path / "odd.gguf", odd))
    f16 = {
        "t.weight.in_sum2": np.ones((1, 8), np.float16),
        "t.weight.counts": np.ones((1, 1), np.float32),
    }
    with pytest.raises(ImatrixError, match=r"f16\.gguf.*in_sum2.*F16, F32 expected"):
        ImportanceMatrix.load(_gguf_with(tmp_path / "f16.gguf", f16))


def test_save_refuses_bad_format(tmp_path: Path) -> None:
    with pytest.raises(ImatrixError, match="unknown imatrix format"):
        _sample().save(tmp_path / "x.bin", "bin")
    with pytest.raises(ImatrixError, match="empty"):
        ImportanceMatrix().save(tmp_path / "e.gguf")
    assert not list(tmp_path.iterdir())
