"""GPTQ end to end on a tiny random LlamaForCausalLM: layer streaming, the torch path against
the Rust core, the GPTQ checkpoint format (packer vs an unpacker written from the format
description), atomic output, calibration loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ferroquant import _native  # noqa: E402
from ferroquant.calib import CalibError, load_calibration, read_text, sample_windows  # noqa: E402
from ferroquant.export import gptq_checkpoint as gc  # noqa: E402
from ferroquant.methods.gptq import GridSpec, quantize_model  # noqa: E402
from ferroquant.methods.gptq_torch import gptq_torch  # noqa: E402
from ferroquant.methods.rtn import rtn_model  # noqa: E402

VOCAB = 128


def tiny_llama(seed: int = 0) -> object:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    return model


def calib_ids(n: int = 8, seqlen: int = 32, seed: int = 0) -> np.ndarray:
    # structured, not uniform noise: a few repeating motifs
    rng = np.random.default_rng(seed)
    motifs = rng.integers(0, VOCAB, size=(4, 8))
    rows = [
        np.concatenate([motifs[rng.integers(0, 4)] for _ in range(seqlen // 8)]) for _ in range(n)
    ]
    return np.stack(rows).astype(np.int64)


def final_hidden(model: object, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids), output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1].numpy()


# ---- the format, from its description -----------------------------------------------------


def unpack_from_description(words: np.ndarray, bits: int, n: int, axis: int) -> np.ndarray:
    """Codes laid end to end LSB first in 32-bit words along ``axis`` (AutoGPTQ layout)."""
    w = np.moveaxis(words.view(np.uint32), axis, -1).astype(np.uint64)
    out = np.zeros((*w.shape[:-1], n), dtype=np.int64)
    for k in range(n):
        bit = k * bits
        word, shift = divmod(bit, 32)
        v = w[..., word] >> np.uint64(shift)
        if shift + bits > 32:
            v |= w[..., word + 1] << np.uint64(32 - shift)
        out[..., k] = (v & np.uint64((1 << bits) - 1)).astype(np.int64)
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_packer_matches_unpacker_from_the_format_description(bits: int, act_order: bool) -> None:
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    x = rng.standard_normal((200, 96)) * rng.uniform(0.1, 3, 96)
    h = (2 * x.T @ x / 200).astype(np.float32)
    res = _native.gptq_quantize(w, h, bits=bits, group_size=32, sym=False, act_order=act_order)
    packed = gc.pack_linear(res, bits, v2=True)
    assert packed["qweight"].shape == (96 * bits // 32, 64)
    assert packed["qzeros"].shape == (3, 64 * bits // 32)
    q = unpack_from_description(packed["qweight"], bits, 96, axis=0)  # (in, out)
    z = unpack_from_description(packed["qzeros"], bits, 64, axis=1)  # (G, out)
    g = packed["g_idx"]
    s = packed["scales"].astype(np.float32)
    want = (s[g] * (q - z[g]).astype(np.float32)).T
    np.testing.assert_array_equal(q.T, res["codes"])
    np.testing.assert_array_equal(
        gc.unpack_linear({f"p.{k}": v for k, v in packed.items()}, "p", bits, True), want
    )
    # the float32 grid values differ from the file's only by the f16 scale rounding
    np.testing.assert_allclose(want, res["dequant"], rtol=1e-3, atol=1e-3)


def test_v1_zero_offset() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    res = _native.rtn_quantize(w, bits=4, group_size=32, sym=True)
    packed = gc.pack_linear(res, 4, v2=False)
    assert np.all(packed["qzeros"].view(np.uint32) == 0x77777777)  # zero 8 stored as 7
    back = gc.unpack_linear({f"p.{k}": v for k, v in packed.items()}, "p", 4, False)
    np.testing.assert_allclose(back, res["dequant"], rtol=1e-3, atol=1e-3)


# ---- torch path vs Rust core ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "group", "sym", "act_order", "static"),
    [
        (4, 128, True, False, False),
        (3, 32, False, True, False),
        (4, 64, False, True, True),
        (2, -1, False, False, False),
    ],
)
def test_torch_path_matches_rust_core(
    bits: int, group: int, sym: bool, act_order: bool, static: bool
) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 320)).astype(np.float32)
    x = rng.standard_normal((800, 320)) @ (np.eye(320) + 0.2 * rng.standard_normal((320, 320)))
    h = (2 * x.T @ x / 800).astype(np.float32)
    kw = dict(bits=bits, group_size=group, sym=sym, act_order=act_order, static_groups=static)
    r = _native.gptq_quantize(w, h, **kw)
    t = gptq_torch(w, h, **kw)
    close = np.isclose(r["dequant"], t["dequant"], atol=1e-4)
    assert close.mean() > 0.99
    assert t["loss"] == pytest.approx(r["loss"], rel=1e-2)
    np.testing.assert_array_equal(r["g_idx"], t["g_idx"])
    if act_order:
        np.testing.assert_array_equal(r["perm"], t["perm"])


# ---- the pipeline ---------------------------------------------------------------------------


def test_pipeline_gptq_beats_rtn_and_writes_a_checkpoint(tmp_path: Path) -> None:
    ids = calib_ids()
    ref = tiny_llama()
    want = final_hidden(ref, ids)
    spec = GridSpec(bits=3, group_size=32, sym=False)
    g_model = tiny_llama()
    results = quantize_model(g_model, ids, lambda n: spec, batch=4, progress=False)
    assert len(results) == 2 * 7
    assert all(np.isfinite(r["rel_err"]) and r["tokens"] == ids.size for r in results.values())
    r_model = tiny_llama()
    rtn_model(r_model, lambda n: spec, progress=False)
    err_g = float(np.mean((final_hidden(g_model, ids) - want) ** 2))
    err_r = float(np.mean((final_hidden(r_model, ids) - want) ** 2))
    assert err_g < err_r, f"gptq {err_g} rtn {err_r}"

    out = tmp_path / "ckpt"
    qc = gc.quantization_config(3, 32, False, False, False, 0.01, False)
    gc.write_checkpoint(out, g_model, results, qc)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "gptq"
    assert cfg["quantization_config"]["bits"] == 3
    weights = gc.load_checkpoint_weights(out)
    for name, t in g_model.state_dict().items():
        if name == "lm_head.weight":
            continue
        np.testing.assert_allclose(weights[name], t.numpy(), rtol=2e-3, atol=2e-3, err_msg=name)
    assert not list(tmp_path.glob(".ckpt.tmp-*"))
    with pytest.raises(ValueError, match="exists"):
        gc.write_checkpoint(out, g_model, results, qc)


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.numpy

    model = tiny_llama()
    spec = GridSpec(bits=4, group_size=32)
    results = rtn_model(model, lambda n: spec, progress=False)

    def boom(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        gc.write_checkpoint(
            tmp_path / "out",
            model,
            results,
            gc.quantization_config(4, 32, True, False, False, 0.01, False),
        )
    assert list(tmp_path.iterdir()) == []


def test_nan_activations_are_a_clear_error() -> None:
    model = tiny_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight[5] = float("nan")
    ids = calib_ids()
    ids[0, 3] = 5
    with pytest.raises(ValueError, match="non-finite activations"):
        quantize_model(model, ids, lambda n: GridSpec(), progress=False)


def test_transformers_gptq_integration_loads_the_checkpoint(tmp_path: Path) -> None:
    """transformers loads GPTQ checkpoints through optimum + gptqmodel (on the CPU its torch
    kernel); ``make test`` installs both with ``--no-deps`` (see the Makefile's GPTQ_BACKEND).
    Its logits must equal those of the weights our own reader takes from the checkpoint."""
    pytest.importorskip("gptqmodel", reason="no GPTQ backend (gptqmodel) installable here")
    pytest.importorskip("optimum", reason="transformers' GPTQ integration needs optimum")
    for act_order in (False, True):
        model = tiny_llama()
        spec = GridSpec(bits=4, group_size=32, act_order=act_order)
        results = rtn_model(model, lambda n, s=spec: s, progress=False)
        ckpt = tmp_path / f"c{int(act_order)}"
        gc.write_checkpoint(
            ckpt,
            model,
            results,
            gc.quantization_config(4, 32, True, act_order, False, 0.01, False),
        )
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            ckpt, dtype=torch.float16, device_map="cpu"
        )
        ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
        weights = gc.load_checkpoint_weights(ckpt)
        with torch.no_grad():
            model.load_state_dict(
                {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False
            )
            ref = model(input_ids=ids).logits
            out = loaded(input_ids=ids).logits.float()
        # float16 activations in the kernel against our float32 dequantized weights: a wrong
        # bit order, zero-point offset or g_idx is off by the size of the logits
        assert float((out - ref).abs().max()) < 5e-3 * float(ref.abs().max()) + 1e-3, act_order


# ---- calibration loading --------------------------------------------------------------------


class _Tok:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [ord(c) % VOCAB for c in text]}


def test_calibration_file_formats(tmp_path: Path) -> None:
    txt = tmp_path / "c.txt"
    txt.write_text("hello world " * 100)
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"line {i} " * 20}) for i in range(10)))
    a = load_calibration(str(txt), _Tok(), nsamples=4, seqlen=16, seed=1)
    b = load_calibration(str(txt), _Tok(), nsamples=4, seqlen=16, seed=1)
    assert a.shape == (4, 16) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert "line 3" in read_text(jl)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(CalibError, match=r"bad\.jsonl:1"):
        read_text(bad)
    with pytest.raises(CalibError, match="fewer than one window"):
        sample_windows(np.arange(10), 4, 16, 0, "tiny")
    with pytest.raises(CalibError, match="does not exist"):
        load_calibration(str(tmp_path / "nope.txt"), _Tok())
    # saved token windows
    np.save(tmp_path / "w.npy", np.arange(60, dtype=np.int32).reshape(5, 12))
    w = load_calibration(str(tmp_path / "w.npy"), _Tok(), nsamples=3, seqlen=12)
    assert w.dtype == np.int64 and w.shape == (3, 12) and w[2, 0] == 24
    with pytest.raises(CalibError, match="--seqlen is 16"):
        load_calibration(str(tmp_path / "w.npy"), _Tok(), nsamples=3, seqlen=16)
    with pytest.raises(CalibError, match="fewer than --nsamples 9"):
        load_calibration(str(tmp_path / "w.npy"), _Tok(), nsamples=9, seqlen=12)


class _BosTok(_Tok):
    bos_token_id = 1
    eos_token_id = 2


def test_self_calibration_samples_the_model_and_caches_the_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERROQUANT_CACHE", str(tmp_path))
    model = tiny_llama(3)
    a = load_calibration("self", _BosTok(), nsamples=3, seqlen=12, seed=5, model=model)
    assert a.shape == (3, 12) and a.dtype == np.int64
    assert (a[:, 0] == 1).all() and ((a >= 0) & (a < VOCAB)).all()
    assert len(np.unique(a[:, 1:])) > 3  # sampled, not one repeated token
    cached = list((tmp_path / "calib").glob("self-*.npy"))
    assert len(cached) == 1
    whole = np.load(cached[0])
    assert whole.shape == (64, 12)  # one whole batch
    np.testing.assert_array_equal(whole[:3], a)
    # a later call reads the file (altered here, so a fresh sample could not match it)
    np.save(cached[0], whole[::-1].copy())
    b = load_calibration("self", _BosTok(), nsamples=5, seqlen=12, seed=5, model=model)
    np.testing.assert_array_equal(b, whole[::-1][:5])
    # more windows than cached: only the missing batch is sampled, the cached one is kept
    c = load_calibration("self", _BosTok(), nsamples=70, seqlen=12, seed=5, model=model)
    assert c.shape == (70, 12)
    np.testing.assert_array_equal(c[:64], whole[::-1])
    assert np.load(cached[0]).shape == (128, 12)
    # another seed, or another model, is another key
    d = load_calibration("self", _BosTok(), nsamples=3, seqlen=12, seed=6, model=model)
    e = load_calibration("self", _BosTok(), nsamples=3, seqlen=12, seed=5, model=tiny_llama(4))
    assert len(list((tmp_path / "calib").glob("self-*.npy"))) == 3
    assert not np.array_equal(d, a) and not np.array_equal(e, a)
