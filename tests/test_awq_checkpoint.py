"""AutoAWQ GEMM checkpoint export (``--format awq``): packing, files, CLI, loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferroquant.export import awq_checkpoint as ac

# ---- an unpacker written from the format description alone ----------------------------------
# qweight int32 (in, out/8), qzeros int32 (G, out/8): word c of a row holds output columns
# 8c .. 8c+7; nibble k (bits 4k..4k+3) is column 8c + [0, 2, 4, 6, 1, 3, 5, 7][k].
# scales fp16 (G, out); W[o, i] = scales[i // gs, o] * (q[i, o] - z[i // gs, o]).

_NIBBLE_TO_COLUMN = [0, 2, 4, 6, 1, 3, 5, 7]


def _unpack_words(words: np.ndarray) -> np.ndarray:
    rows, n = words.shape
    out = np.zeros((rows, n * 8), dtype=np.int64)
    for r in range(rows):
        for c in range(n):
            word = int(words[r, c]) & 0xFFFFFFFF
            for k in range(8):
                out[r, 8 * c + _NIBBLE_TO_COLUMN[k]] = (word >> (4 * k)) & 0xF
    return out


def _dequant_from_description(qweight: Any, qzeros: Any, scales: Any) -> np.ndarray:
    q = _unpack_words(np.asarray(qweight))  # (in, out)
    z = _unpack_words(np.asarray(qzeros))  # (G, out)
    s = np.asarray(scales).astype(np.float32)  # (G, out)
    in_f, out_f = q.shape
    gs = in_f // s.shape[0]
    w = np.zeros((out_f, in_f), dtype=np.float32)
    for i in range(in_f):
        g = i // gs
        w[:, i] = s[g] * (q[i] - z[g]).astype(np.float32)
    return w


def test_pack_order_of_one_word() -> None:
    vals = np.arange(8, dtype=np.uint8).reshape(1, 8) + 3  # columns hold 3..10
    (word,) = ac.pack_columns(vals).view(np.uint32)[0]
    nibbles = [(int(word) >> (4 * k)) & 0xF for k in range(8)]
    assert nibbles == [3 + c for c in (0, 2, 4, 6, 1, 3, 5, 7)]
    np.testing.assert_array_equal(ac.unpack_columns(ac.pack_columns(vals), 8), vals)
    with pytest.raises(ValueError, match="do not pack"):
        ac.pack_columns(np.zeros((2, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match="do not fit"):
        ac.pack_columns(np.full((1, 8), 16))


@pytest.mark.parametrize("gs", [32, 64, -1])
def test_unpacker_from_description_reproduces_dequant(gs: int) -> None:
    rng = np.random.default_rng(gs + 5)
    w = rng.standard_normal((24, 128)).astype(np.float32) * rng.uniform(0.1, 3, (24, 1))
    w[3, :32] = np.abs(w[3, :32]) + 0.5  # a group without negative weights: zero point 0
    w[5, :] = 0.25  # a constant row: the 1e-5 range floor
    bias = rng.standard_normal(24).astype(np.float32)
    p = ac.pack_linear(w, gs, bias)
    t = p["tensors"]
    n_g = 1 if gs == -1 else 128 // gs
    assert t["qweight"].dtype == np.int32 and t["qweight"].shape == (128, 3)
    assert t["qzeros"].dtype == np.int32 and t["qzeros"].shape == (n_g, 3)
    assert t["scales"].dtype == np.float16 and t["scales"].shape == (n_g, 24)
    assert t["bias"].dtype == np.float16
    deq = _dequant_from_description(t["qweight"], t["qzeros"], t["scales"])
    np.testing.assert_array_equal(deq, p["dequant"])
    # the 4-bit grid: half a step inside, up to a step at the ends (the rounded zero point
    # shifts the grid by up to half a step)
    step = np.repeat(t["scales"].astype(np.float32).T, 128 // n_g, axis=1)
    err = np.abs(deq - w)
    assert np.all(err <= 1.01 * step) and np.mean(err <= 0.5 * step + 1e-6) > 0.95
    z = _unpack_words(t["qzeros"])
    assert z.min() >= 0 and z.max() <= 15 and z[0, 5] == 0 and (gs != 32 or z[0, 3] == 0)
    # a one-signed group keeps its range (0 .. max), not AutoAWQ's clip at max - min
    np.testing.assert_allclose(deq[5], 0.25, rtol=1e-3)


def test_grid_matches_awq_fake_quantize() -> None:
    torch = pytest.importorskip("torch")
    from ferroquant.methods.awq import fake_quantize

    w = np.random.default_rng(1).standard_normal((16, 128)).astype(np.float32)
    fq = fake_quantize(torch.from_numpy(w), 4, 64).numpy()
    q = ac.quantize_weight(w, 64)
    deq = q["dequant"]
    # the same grid; only the float16 rounding of the scales differs (which can move a value
    # sitting on a rounding boundary by one step)
    diff = np.abs(deq - fq)
    step = np.repeat(q["scales"].astype(np.float32), 64, axis=1)
    assert np.mean(diff < 2e-3 * np.abs(w).max()) > 0.99
    assert np.all(diff <= 1.01 * step)


def _tiny(kind: str = "llama") -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    cfg = cls[0](
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=kind == "qwen2",
    )
    return cls[1](cfg).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_write_checkpoint_files(tmp_path: Path, kind: str) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    model = _tiny(kind)
    res = ac.write_checkpoint(tmp_path / "c", model, 32)
    assert res["linears"] == 14
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc == {
        "quant_method": "awq",
        "version": "gemm",
        "bits": 4,
        "group_size": 32,
        "zero_point": True,
        "modules_to_not_convert": ["lm_head"],
    }
    aq = json.loads((tmp_path / "c" / "quant_config.json").read_text())
    assert aq["w_bit"] == 4 and aq["q_group_size"] == 32 and aq["version"] == "GEMM"
    t = load_file(str(tmp_path / "c" / "model.safetensors"))
    p = "model.layers.1.mlp.down_proj"
    assert t[f"{p}.qweight"].shape == (128, 8) and t[f"{p}.qweight"].dtype == np.int32
    assert t[f"{p}.qzeros"].shape == (4, 8) and t[f"{p}.scales"].shape == (4, 64)
    assert f"{p}.weight" not in t
    assert ("lm_head.weight" in t) == (kind == "llama")
    assert t["model.norm.weight"].dtype == np.float16
    if kind == "qwen2":  # q/k/v biases stay beside the packed tensors
        assert t["model.layers.0.self_attn.q_proj.bias"].dtype == np.float16
    for prefix, deq in res["dequant"].items():
        got = _dequant_from_description(
            t[f"{prefix}.qweight"], t[f"{prefix}.qzeros"], t[f"{prefix}.scales"]
        )
        np.testing.assert_array_equal(got, deq, err_msg=prefix)
    # our own loader agrees, and the dequantized model runs close to the float one
    weights = ac.load_checkpoint_weights(tmp_path / "c")
    for prefix, deq in res["dequant"].items():
        np.testing.assert_array_equal(weights[f"{prefix}.weight"], deq)
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        sd = {k: torch.from_numpy(v) for k, v in weights.items()}
        model.load_state_dict(sd, strict=False)
        out = model(input_ids=ids).logits
    assert float((out - ref).abs().max()) < 0.5 * float(ref.abs().max())
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]
    with pytest.raises(ValueError, match="not an empty directory"):
        ac.write_checkpoint(tmp_path / "c", model, 32)


def test_write_checkpoint_bad_shapes(tmp_path: Path) -> None:
    model = _tiny()
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*groups of 48"):
        ac.write_checkpoint(tmp_path / "c", model, 48)
    assert list(tmp_path.iterdir()) == []


def test_cli_format_awq(tmp_path: Path, wikitext_path: Path, capsys: Any) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_convert_models import make_model

    model = make_model(tmp_path / "hf", "llama", n_layer=2, hidden=64, n_ff=128)
    calib = tmp_path / "calib.txt"  # a small text: tokenizing all of WikiText takes a while
    calib.write_text(wikitext_path.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    base = [sys.executable, "-m", "ferroquant", "quantize", str(model), "--method", "awq",
            "--calib", str(calib), "--nsamples", "4", "--seqlen", "64",
            "--group-size", "32", "--no-progress"]  # fmt: skip
    out = tmp_path / "awq"
    proc = subprocess.run([*base, "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "AWQ checkpoint, 14 linears" in proc.stdout and "mean alpha" in proc.stdout
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["group_size"] == 32
    assert (out / "tokenizer.json").is_file()
    w = ac.load_checkpoint_weights(out)
    assert w["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    from ferroquant.cli import main

    for extra, msg in (
        (["--format", "gptq"], "not --format gptq"),
        (["--bits", "3", "--format", "awq"], "4-bit zero-point"),
        (["--imatrix", str(out / "config.json")], "--imatrix applies to --format gguf"),
        ([], "not an empty directory"),
    ):
        dst = out if not extra else tmp_path / "x"
        assert main([*base[3:], "-o", str(dst), *extra]) == 1
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_transformers_loads_the_checkpoint(tmp_path: Path) -> None:
    """transformers >= 5 loads AWQ checkpoints through gptqmodel (on the CPU its torch
    kernel): ``pip install --no-deps gptqmodel`` plus its import-time needs (pypcre, logbar,
    device-smi, tokenicer, defuser, threadpoolctl) is enough; not part of the default venv."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gptqmodel", reason="no AWQ backend for transformers (gptqmodel) here")
    model = _tiny()
    res = ac.write_checkpoint(tmp_path / "c", model, 32)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "c", dtype=torch.float16, device_map="cpu"
    )
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    weights = ac.load_checkpoint_weights(tmp_path / "c")
    with torch.no_grad():
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
        ref = model(input_ids=ids).logits
        out = loaded(input_ids=ids).logits.float()
    assert res["linears"] == 14
    # float16 activations in the AWQ kernel against our float32 dequantized model (a wrong
    # nibble order or zero-point convention is off by the size of the logits)
    assert float((out - ref).abs().max()) < 5e-3 * float(ref.abs().max()) + 1e-3


# ---- bad imatrix input through the CLI ------------------------------------------------------


def test_cli_refuses_other_models_and_corrupt_imatrix(tmp_path: Path) -> None:
    from ferroquant.convert import convert
    from ferroquant.imatrix import ImportanceMatrix
    from test_convert_models import make_model

    pytest.importorskip("tokenizers")
    model = make_model(tmp_path / "hf", "llama", n_layer=2, hidden=64, n_ff=128)
    f16 = tmp_path / "f16.gguf"
    convert(model, f16, "F16", progress=False)
    other = ImportanceMatrix()
    other.add("blk.0.ffn_down.weight", np.ones(256), 10)  # n_ff 256, not 128
    other.add("blk.7.attn_q.weight", np.ones(64), 10)
    cases = {
        "other.gguf": (other.save(tmp_path / "other.gguf"), r"another model"),
        "other.dat": (other.save(tmp_path / "other.dat"), r"another model"),
        "trunc.gguf": (tmp_path / "trunc.gguf", r"trunc\.gguf"),
        "junk.dat": (tmp_path / "junk.dat", r"junk\.dat.*not an imatrix"),
    }
    (tmp_path / "trunc.gguf").write_bytes((tmp_path / "other.gguf").read_bytes()[:200])
    (tmp_path / "junk.dat").write_bytes(b"\xff" * 40)
    for name, (path, msg) in cases.items():
        for cmd in (["quantize", str(f16)], ["convert", str(model)]):
            out = tmp_path / f"o-{name}.gguf"
            proc = subprocess.run(
                [sys.executable, "-m", "ferroquant", *cmd, "-o", str(out), "--type", "Q4_K_M",
                 "--imatrix", str(path), "--no-progress"],
                capture_output=True, text=True,
            )  # fmt: skip
            assert proc.returncode == 1, (cmd, name, proc.stderr)
            assert "Traceback" not in proc.stderr and name in proc.stderr, proc.stderr
            import re

            assert re.search(msg, proc.stderr), (name, proc.stderr)
            assert not out.exists()
