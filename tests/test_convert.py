"""HF -> GGUF conversion on tiny random checkpoints: layout, metadata, bad input, torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from safetensors.numpy import load_file, save_file

from ferroquant.arch.llama import permute_qk, unpermute_qk
from ferroquant.convert import ConvertError, convert
from ferroquant.gguf_io import field_value, open_gguf, read_tensor_f32, tensor_infos
from test_convert_models import ARCHES, make_model

ROOT = Path(__file__).resolve().parent.parent


def _gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    reader = open_gguf(path)
    return {i.name: read_tensor_f32(reader, i.name) for i in tensor_infos(reader)}


def _no_leftovers(directory: Path, name: str) -> None:
    left = [p.name for p in directory.iterdir() if name in p.name]
    assert left == [], f"output left behind: {left}"


def test_permute_inverse() -> None:
    x = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8 * 3, 5)
    y = permute_qk(x, 3)
    assert not np.array_equal(x, y)
    assert np.array_equal(unpermute_qk(y, 3), x)
    # head 0, rows [0..3] of the half-split layout become pairs (0, 4), (1, 5), ...
    assert np.array_equal(y[:2, 0], x[[0, 4], 0])


def test_llama_f32_tensors_and_metadata(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf", "llama")
    out = tmp_path / "m.gguf"
    summary = convert(src, out, "F32", progress=False)
    assert summary.types == {"F32": summary.n_tensors}
    hf = load_file(str(src / "model.safetensors"))
    got = _gguf_tensors(out)
    cfg = json.loads((src / "config.json").read_text())
    assert np.array_equal(got["token_embd.weight"], hf["model.embed_tokens.weight"])
    assert np.array_equal(got["output.weight"], hf["lm_head.weight"])
    q = hf["model.layers.1.self_attn.q_proj.weight"]
    k = hf["model.layers.1.self_attn.k_proj.weight"]
    assert np.array_equal(got["blk.1.attn_q.weight"], permute_qk(q, 4))
    assert np.array_equal(got["blk.1.attn_k.weight"], permute_qk(k, 2))
    assert np.array_equal(got["blk.1.attn_v.weight"], hf["model.layers.1.self_attn.v_proj.weight"])
    assert np.array_equal(got["blk.0.ffn_down.weight"], hf["model.layers.0.mlp.down_proj.weight"])
    assert len(got) == len(hf)
    r = open_gguf(out)
    assert field_value(r, "general.architecture") == "llama"
    assert field_value(r, "llama.block_count") == 2
    assert field_value(r, "llama.embedding_length") == 64
    assert field_value(r, "llama.attention.head_count_kv") == 2
    assert field_value(r, "llama.rope.dimension_count") == 16
    assert field_value(r, "llama.vocab_size") == cfg["vocab_size"]
    assert field_value(r, "general.file_type") == 0
    assert field_value(r, "tokenizer.ggml.model") == "gpt2"
    assert field_value(r, "tokenizer.ggml.pre") == "smollm"
    assert field_value(r, "tokenizer.ggml.bos_token_id") == 1
    assert field_value(r, "tokenizer.ggml.eos_token_id") == 2
    assert "im_start" in field_value(r, "tokenizer.chat_template")
    assert len(field_value(r, "tokenizer.ggml.tokens")) == cfg["vocab_size"]
    assert len(field_value(r, "tokenizer.ggml.merges")) > 0
    _no_leftovers(tmp_path, ".m.gguf.tmp")


def test_f16_and_q8_types(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf", "llama", tied=True)
    out = tmp_path / "m16.gguf"
    convert(src, out, "F16", progress=False)
    infos = {i.name: i.qtype for i in tensor_infos(open_gguf(out))}
    assert "output.weight" not in infos  # tied: llama.cpp reuses token_embd
    assert infos["blk.0.attn_norm.weight"] == "F32"
    assert infos["blk.0.attn_q.weight"] == "F16"
    hf = load_file(str(src / "model.safetensors"))
    got = _gguf_tensors(out)["blk.0.ffn_up.weight"]
    assert np.array_equal(
        got, hf["model.layers.0.mlp.up_proj.weight"].astype(np.float16).astype(np.float32)
    )
    out8 = tmp_path / "m8.gguf"
    convert(src, out8, "Q8_0", progress=False)
    infos8 = {i.name: i.qtype for i in tensor_infos(open_gguf(out8))}
    assert infos8["blk.0.attn_q.weight"] == "Q8_0" and infos8["token_embd.weight"] == "Q8_0"
    x = _gguf_tensors(out8)["blk.0.ffn_up.weight"]
    ref = hf["model.layers.0.mlp.up_proj.weight"]
    assert np.max(np.abs(x - ref)) < np.max(np.abs(ref)) / 100


def test_bf16_and_sharded_input(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf", "qwen2")
    hf = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    names = sorted(hf)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    from ferroquant.safetensors_io import f32_to_bf16_bits, write_streaming

    weight_map = {}
    for fname, part in shards.items():
        specs = [(n, "BF16", hf[n].shape) for n in part]
        write_streaming(src / fname, specs, (f32_to_bf16_bits(hf[n]) for n in part))
        weight_map.update(dict.fromkeys(part, fname))
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = tmp_path / "q.gguf"
    convert(src, out, "F32", progress=False)
    got = _gguf_tensors(out)
    widened = (
        f32_to_bf16_bits(hf["model.layers.0.self_attn.q_proj.bias"]).astype(np.uint32) << 16
    ).view(np.float32)
    assert np.array_equal(got["blk.0.attn_q.bias"], widened)  # qwen2: no permutation
    assert field_value(open_gguf(out), "general.architecture") == "qwen2"


@pytest.mark.parametrize("arch", ARCHES)
def test_every_arch_converts(tmp_path: Path, arch: str) -> None:
    src = make_model(tmp_path / "hf", arch)
    out = tmp_path / f"{arch}.gguf"
    convert(src, out, "F16", progress=False)
    r = open_gguf(out)
    gguf_arch = {"mistral": "llama"}.get(arch, arch)
    assert field_value(r, "general.architecture") == gguf_arch
    names = {i.name for i in tensor_infos(r)}
    assert "token_embd.weight" in names and "blk.1.ffn_down.weight" in names
    if arch.startswith("gemma"):
        hf = load_file(str(src / "model.safetensors"))
        got = read_tensor_f32(r, "blk.0.attn_norm.weight")
        assert np.allclose(got, hf["model.layers.0.input_layernorm.weight"] + 1.0)
        assert "output.weight" not in names
    if arch == "phi3":
        assert "blk.0.attn_qkv.weight" in names and "blk.0.ffn_up.weight" in names


def test_k_quant_preset_from_hf(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf", "llama", n_layer=8, hidden=256, n_ff=512)
    out = tmp_path / "k.gguf"
    s = convert(src, out, "Q4_K_M", progress=False)
    infos = {i.name: i.qtype for i in tensor_infos(open_gguf(out))}
    assert infos["output.weight"] == "Q6_K"
    assert infos["blk.0.attn_q.weight"] == "Q4_K"
    # use_more_bits(i, 8) holds for layers 0, 3, 6, 7
    assert [infos[f"blk.{i}.attn_v.weight"] for i in range(8)] == [
        "Q6_K",
        "Q4_K",
        "Q4_K",
        "Q6_K",
        "Q4_K",
        "Q4_K",
        "Q6_K",
        "Q6_K",
    ]
    assert infos["blk.3.ffn_down.weight"] == "Q6_K"
    assert infos["blk.4.ffn_down.weight"] == "Q4_K"
    assert s.fallbacks == 0 and 4 < s.bits_per_weight < 7


# ---- bad input ---------------------------------------------------------------------------


def _expect_error(src: Path, out: Path, *needles: str) -> None:
    with pytest.raises(ConvertError) as info:
        convert(src, out, "F16", progress=False)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert not out.exists()
    _no_leftovers(out.parent, out.name)


def test_missing_config(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf")
    (src / "config.json").unlink()
    _expect_error(src, tmp_path / "o.gguf", "config.json", "missing")


def test_corrupt_config(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf")
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')
    _expect_error(src, tmp_path / "o.gguf", "config.json", "corrupt")


def test_unknown_architecture(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf")
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["FancyNewForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    _expect_error(
        src,
        tmp_path / "o.gguf",
        "config.json",
        "FancyNewForCausalLM",
        "LlamaForCausalLM",
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
    )


def test_missing_tensor(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf")
    t = load_file(str(src / "model.safetensors"))
    del t["model.layers.1.mlp.down_proj.weight"]
    save_file(t, str(src / "model.safetensors"))
    _expect_error(src, tmp_path / "o.gguf", "missing", "blk.1.ffn_down.weight")


def test_shape_mismatch(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf")
    t = load_file(str(src / "model.safetensors"))
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:8]
    save_file(t, str(src / "model.safetensors"))
    _expect_error(src, tmp_path / "o.gguf", "model.safetensors", "k_proj", "shape")


def test_truncated_safetensors(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf")
    path = src / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    _expect_error(src, tmp_path / "o.gguf", "model.safetensors", "truncated")


def test_garbage_safetensors(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf")
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    _expect_error(src, tmp_path / "o.gguf", "model.safetensors", "corrupt")


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf")
    (src / "config.json").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "ferroquant", "convert", str(src), "-o", str(tmp_path / "o.gguf")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert "config.json" in proc.stderr and "Traceback" not in proc.stderr


# ---- torch-free --------------------------------------------------------------------------

_BLOCKER = textwrap.dedent(
    """
    import sys
    class _Block:
        BLOCKED = ("torch", "transformers", "sentencepiece")
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"blocked import of {name}")
            return None
    sys.meta_path.insert(0, _Block())
    from ferroquant.cli import main
    rc = main(sys.argv[1:])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in _Block.BLOCKED)
    assert not leaked, leaked
    sys.exit(rc)
    """
)


def test_convert_runs_without_torch(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf", "llama")
    out = tmp_path / "nt.gguf"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _BLOCKER,
            "convert",
            str(src),
            "-o",
            str(out),
            "--type",
            "Q8_0",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert {i.qtype for i in tensor_infos(open_gguf(out))} == {"Q8_0", "F32"}
    assert T.Q8_0.name in proc.stdout


@pytest.mark.peer
def test_sentencepiece_vocab_matches_llama_cpp(tmp_path: Path) -> None:
    spm = pytest.importorskip("sentencepiece")
    llama_cpp = pytest.importorskip("llama_cpp")
    from test_convert_models import make_spm_model, wikitext_lines

    src = make_spm_model(tmp_path / "hf")
    out = tmp_path / "spm.gguf"
    convert(src, out, "F16", progress=False)
    r = open_gguf(out)
    assert field_value(r, "tokenizer.ggml.model") == "llama"
    assert field_value(r, "tokenizer.ggml.add_bos_token") is True
    assert len(field_value(r, "tokenizer.ggml.scores")) == 600
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    lines = wikitext_lines(300, min_len=2)
    bad = [ln for ln in lines if sp.encode(ln) != llm.tokenize(ln.encode(), add_bos=False)]
    assert bad == []
    assert llm.tokenize(b"Hello", add_bos=True)[0] == 1
