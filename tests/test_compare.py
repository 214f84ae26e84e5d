"""``ferroquant compare`` on a tiny random llama: report files, JSON schema, numbers consistent
with the files on disk, the Pareto frontier, the cache, the dynamic hook, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from ferroquant import compare as cmp

HAS_TORCH = cmp._has_torch()
FAST = dict(chunks=2, ctx=64, nsamples=4, seqlen=64, bench_pp=16, bench_tg=4, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: Any) -> Path:
    from test_convert_models import make_model

    # 256 columns: the K-quant presets keep their types (no fallbacks)
    return make_model(
        tmp_path_factory.mktemp("cmp") / "hf", "llama", n_layer=2, hidden=256, n_ff=512
    )


@pytest.fixture(scope="module")
def run1(tiny: Path, tmp_path_factory: Any) -> tuple[Any, Path, float]:
    out = tmp_path_factory.mktemp("cmp-out")
    methods = ["rtn", "imatrix"] + (["gptq"] if HAS_TORCH else [])
    t0 = time.perf_counter()
    rep = cmp.compare(tiny, methods, "Q4_0,Q4_K_M", out, **FAST)
    return rep, out, time.perf_counter() - t0


def _no_temp_files(out: Path) -> None:
    left = [p for p in out.rglob("*") if ".tmp-" in p.name or ".awq-" in p.name]
    assert not left, left


def test_report_files_and_schema(run1: Any) -> None:
    _rep, out, _ = run1
    for name in ("report.json", "report.md"):
        assert (out / name).is_file()
    try:
        import matplotlib  # noqa: F401

        assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        pass
    data = json.loads((out / "report.json").read_text())
    assert data["schema"] == cmp.SCHEMA
    for key in ("settings", "versions", "machine", "results", "pareto", "best_per_type",
                "recommendation", "reference", "n_weights"):  # fmt: skip
        assert key in data, key
    assert data["settings"]["chunks"] == 2 and data["settings"]["ctx"] == 64
    assert data["versions"]["ferroquant"]
    names = {r["name"]: r for r in data["results"]}
    want = {"float-F32", "float-F16", "rtn-Q8_0", "rtn-Q4_0", "rtn-Q4_K_M"}
    if HAS_TORCH:
        want |= {"imatrix-Q4_0", "imatrix-Q4_K_M", "gptq-Q4_0", "gptq-Q4_K_M"}
    else:  # reported, not failed
        assert names["imatrix-Q4_0"]["status"] == "unavailable"
        assert "torch" in names["imatrix-Q4_0"]["error"]
    assert want <= set(names)
    fields = ("size_bytes", "bpw", "ppl", "kld", "top1", "quantize_s", "pp_tps", "tg_tps")
    for n in want:
        r = names[n]
        assert r["status"] == "ok", r
        for f in fields:
            assert isinstance(r[f], (int, float)), (n, f)
    assert names["float-F32"]["role"] == "reference" and names["float-F32"]["kld"] == 0.0
    again = cmp.CompareReport.from_json(data)  # the report renders back from its JSON
    assert again.markdown() == (out / "report.md").read_text()
    _no_temp_files(out)


def test_numbers_match_the_files(run1: Any) -> None:
    _rep, out, _ = run1
    data = json.loads((out / "report.json").read_text())
    from ferroquant.gguf_io import open_gguf, tensor_infos

    n_weights = sum(i.n_elements for i in tensor_infos(open_gguf(out / "models/float-F32.gguf")))
    assert data["n_weights"] == n_weights
    for r in data["results"]:
        if r["status"] != "ok":
            continue
        p = Path(r["path"])
        assert p.parent == out / "models"
        assert r["size_bytes"] == p.stat().st_size
        assert r["bpw"] == pytest.approx(r["size_bytes"] * 8 / n_weights)
        assert r["size_mib"] == pytest.approx(r["size_bytes"] / 2**20)
        assert 0.0 <= r["top1"] <= 1.0 and r["kld"] >= 0.0 and r["ppl"] > 1.0
        kinds = {i.qtype for i in tensor_infos(open_gguf(p))}
        assert sum(r["tensor_types"].values()) == len(tensor_infos(open_gguf(p)))
        assert set(r["tensor_types"]) == kinds
    by = {r["name"]: r for r in data["results"]}
    assert by["rtn-Q4_K_M"]["tensor_types"].get("Q4_K")
    # every file is scored against the same reference on the same windows
    refs = {round(r["info"]["eval"]["ref_ppl"], 6) for r in data["results"] if r["status"] == "ok"}
    assert len(refs) == 1
    assert refs.pop() == pytest.approx(by["float-F32"]["ppl"], rel=1e-6)
    # more bits, closer to the reference
    assert by["float-F16"]["kld"] < by["rtn-Q8_0"]["kld"] < by["rtn-Q4_0"]["kld"]
    assert (
        by["rtn-Q8_0"]["size_bytes"] < by["float-F16"]["size_bytes"] < by["float-F32"]["size_bytes"]
    )


def test_pareto_frontier_is_non_dominated(run1: Any) -> None:
    _rep, out, _ = run1
    data = json.loads((out / "report.json").read_text())
    rows = [r for r in data["results"] if r["status"] == "ok" and r["role"] != "reference"]
    front = [r for r in rows if r["name"] in data["pareto"]]
    assert front
    for f in front:
        assert not any(
            o["size_bytes"] <= f["size_bytes"]
            and o["kld"] <= f["kld"]
            and (o["size_bytes"] < f["size_bytes"] or o["kld"] < f["kld"])
            for o in rows
        ), f["name"]
    for r in rows:  # everything off the frontier is dominated by a frontier point
        if r["name"] not in data["pareto"]:
            assert any(
                f["size_bytes"] <= r["size_bytes"] and f["kld"] <= r["kld"] for f in front
            ), r["name"]
    sizes = [f["size_bytes"] for f in sorted(front, key=lambda f: data["pareto"].index(f["name"]))]
    assert sizes == sorted(sizes)


def test_markdown_table(run1: Any) -> None:
    rep, out, _ = run1
    md = (out / "report.md").read_text()
    assert "## Which to choose" in md and "## Pareto frontier" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "method" not in ln]
    sizes = [float(ln.split("|")[4]) for ln in table]
    assert sizes == sorted(sizes)  # sorted by size, the reference (largest) last
    assert "(ref.)" in table[-1]
    assert any("★" in ln for ln in table)
    best = rep.best_per_type()
    assert set(best) == {"Q4_0", "Q4_K_M"}
    assert md.count("**") >= 2 * len(best)
    rec = rep.recommendation()
    assert rec and "Best method per budget" in rec


def test_rerun_uses_the_cache(run1: Any, tiny: Path) -> None:
    rep, out, first_s = run1
    methods = ["rtn", "imatrix"] + (["gptq"] if HAS_TORCH else [])
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "models").glob("*.gguf")}
    t0 = time.perf_counter()
    rep2 = cmp.compare(tiny, methods, "Q4_0,Q4_K_M", out, **FAST)
    again_s = time.perf_counter() - t0
    assert all(e.cached for e in rep2.entries if e.ok)
    assert {p: p.stat().st_mtime_ns for p in (out / "models").glob("*.gguf")} == mtimes
    k1 = {e.name: e.kld for e in rep.entries}
    assert {e.name: e.kld for e in rep2.entries} == k1
    assert again_s < first_s
    _no_temp_files(out)


def test_dynamic_unavailable_is_reported(tiny: Path, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "ferroquant.dynamic", None)  # import fails
    rep = cmp.compare(tiny, "rtn,dynamic", "Q4_0", tmp_path, bench=False, plot=False, **FAST)
    dyn = next(e for e in rep.entries if e.method == "dynamic")
    assert dyn.status == "unavailable" and "not available" in (dyn.error or "")
    md = (tmp_path / "report.md").read_text()
    assert "dynamic-Q4_0: unavailable" in md
    assert any(e.name == "rtn-Q4_0" and e.ok for e in rep.entries)


def test_dynamic_gets_the_uniform_size(tiny: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """The dynamic hook is called with the size of the uniform preset of the same type."""
    calls: list[dict[str, Any]] = []

    def quantize_dynamic(model_dir: str, out_gguf: str, **kw: Any) -> dict[str, Any]:
        from ferroquant.convert import convert

        calls.append(kw)
        convert(model_dir, out_gguf, "Q4_0", progress=False)  # a stand-in at or below target
        side = out_gguf[: -len(".gguf")] + ".dynamic.json"  # its own report, named after OUT
        Path(side).write_text("{}")
        return {"types": {"blk.0.attn_q.weight": "Q4_0"}, "report_json": side}

    fake = types.ModuleType("ferroquant.dynamic")
    fake.quantize_dynamic = quantize_dynamic  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ferroquant.dynamic", fake)
    rep = cmp.compare(
        tiny, "dynamic", "Q4_K_M", tmp_path, bench=False, plot=False, imatrix=None, **FAST
    )
    by = {e.name: e for e in rep.entries}
    assert by["dynamic-Q4_K_M"].ok, by["dynamic-Q4_K_M"].error
    assert by["rtn-Q4_K_M"].ok  # the uniform preset it is compared against
    assert len(calls) == 1
    assert calls[0]["target_size"] == by["rtn-Q4_K_M"].size_bytes
    assert by["dynamic-Q4_K_M"].target_bytes == by["rtn-Q4_K_M"].size_bytes
    assert calls[0]["cache_dir"] and calls[0]["calib"]
    assert "within the target" in (tmp_path / "report.md").read_text()
    side = tmp_path / "models" / "dynamic-Q4_K_M.dynamic.json"
    assert side.is_file() and by["dynamic-Q4_K_M"].info["report_json"] == str(side)
    _no_temp_files(tmp_path)


def test_interrupt_leaves_no_partial_file(tiny: Path, tmp_path: Path, monkeypatch: Any) -> None:
    def quantize_dynamic(model_dir: str, out_gguf: str, **kw: Any) -> None:
        Path(out_gguf).write_bytes(b"GGUF half written")
        raise KeyboardInterrupt

    fake = types.ModuleType("ferroquant.dynamic")
    fake.quantize_dynamic = quantize_dynamic  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ferroquant.dynamic", fake)
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(tiny, "dynamic", "Q4_0", tmp_path, bench=False, plot=False, **FAST)
    assert not (tmp_path / "models" / "dynamic-Q4_0.gguf").exists()
    assert not (tmp_path / "report.json").exists()
    _no_temp_files(tmp_path)


def test_pareto_unit() -> None:
    def e(name: str, size: int, kld: float) -> cmp.Entry:
        return cmp.Entry(name=name, method="rtn", type=name, role="candidate",
                         size_bytes=size, kld=kld)  # fmt: skip

    pts = [e("a", 10, 0.5), e("b", 20, 0.2), e("c", 20, 0.3), e("d", 30, 0.25), e("f", 5, 0.9)]
    assert [p.name for p in cmp.pareto_frontier(pts)] == ["f", "a", "b"]


def test_bad_input(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(cmp.CompareError, match=r"unknown method 'qat'.*rtn, imatrix"):
        cmp.compare(tiny, "rtn,qat", "Q4_0", tmp_path)
    with pytest.raises(cmp.CompareError, match=r"unknown type 'Q4_X'.*supported"):
        cmp.compare(tiny, "rtn", "Q4_0,Q4_X", tmp_path)
    with pytest.raises(cmp.CompareError, match="not a quantization type"):
        cmp.compare(tiny, "rtn", "F16", tmp_path)
    with pytest.raises(ValueError, match=r"config\.json"):
        cmp.compare(tmp_path, "rtn", "Q4_0", tmp_path / "o")
    with pytest.raises(cmp.CompareError, match=r"nope\.txt"):
        cmp.compare(tiny, "rtn", "Q4_0", tmp_path, text=tmp_path / "nope.txt")
    with pytest.raises(cmp.CompareError, match="calibration file"):
        cmp.compare(tiny, "imatrix", "Q4_0", tmp_path / "o", calib=str(tmp_path / "c.txt"))
    assert not (tmp_path / "report.json").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "ferroquant", "compare", str(tiny), "--methods", "rtn,qat",
         "--out", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "ferroquant compare: error: unknown method 'qat'" in proc.stderr
    assert "Traceback" not in proc.stderr
