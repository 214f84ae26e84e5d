"""GGUF -> HF export: round trips, tokenizer equality with llama.cpp, transformers loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ferroquant.convert import convert
from ferroquant.gguf_io import open_gguf, read_tensor_f32, tensor_bytes, tensor_infos
from ferroquant.hf_export import export_hf, gguf_metadata
from ferroquant.tokenizer_io import write_hf_tokenizer
from test_convert_models import make_model, wikitext_lines


def _same_gguf_tensors(a: Path, b: Path) -> None:
    ra, rb = open_gguf(a), open_gguf(b)
    ia = {i.name: i for i in tensor_infos(ra)}
    ib = {i.name: i for i in tensor_infos(rb)}
    assert set(ia) == set(ib)
    for name, info in ia.items():
        assert info.qtype == ib[name].qtype and info.shape == ib[name].shape, name
        assert np.array_equal(tensor_bytes(ra, name), tensor_bytes(rb, name)), name


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_gguf_hf_gguf_round_trip_is_bit_exact(tmp_path: Path, arch: str) -> None:
    src = make_model(tmp_path / "hf", arch, tied=arch == "llama")
    first = tmp_path / "a.gguf"
    convert(src, first, "F32", progress=False)
    export_hf(first, tmp_path / "exported", "float32", progress=False)
    # HF side: the exported checkpoint equals the original tensors (permutation undone)
    orig = load_file(str(src / "model.safetensors"))
    back = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert set(orig) == set(back)
    for name, x in orig.items():
        assert np.array_equal(x, back[name]), name
    cfg = json.loads((tmp_path / "exported" / "config.json").read_text())
    want = json.loads((src / "config.json").read_text())
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "rope_theta",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
    ):
        assert cfg[key] == want[key], key
    second = tmp_path / "b.gguf"
    convert(tmp_path / "exported", second, "F32", progress=False)
    _same_gguf_tensors(first, second)


def test_export_dtypes_and_files(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf", "llama")
    g = tmp_path / "m.gguf"
    convert(src, g, "Q8_0", progress=False)
    for dtype, st in (("float16", "F16"), ("bfloat16", "BF16")):
        out = tmp_path / dtype
        export_hf(g, out, dtype, progress=False)
        header_len = int.from_bytes((out / "model.safetensors").read_bytes()[:8], "little")
        header = json.loads((out / "model.safetensors").read_bytes()[8 : 8 + header_len])
        assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {st}
        for f in (
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ):
            assert (out / f).is_file(), f
        tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
        assert tok_cfg["bos_token"] == "<|im_start|>" and tok_cfg["eos_token"] == "<|im_end|>"
        assert "im_start" in tok_cfg["chat_template"]
        gen = json.loads((out / "generation_config.json").read_text())
        assert gen["eos_token_id"] == 2
    # dequantized Q8_0 matches ours
    back = load_file(str(tmp_path / "float16" / "model.safetensors"))
    ref = read_tensor_f32(open_gguf(g), "blk.0.ffn_up.weight")
    assert np.allclose(back["model.layers.0.mlp.up_proj.weight"].astype(np.float32), ref, atol=1e-3)


def test_export_refuses_nonempty_dir(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf", "llama")
    g = tmp_path / "m.gguf"
    convert(src, g, "F16", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ValueError, match="not an empty directory"):
        export_hf(g, tmp_path / "busy", progress=False)


def test_export_truncated_gguf(tmp_path: Path) -> None:
    src = make_model(tmp_path / "hf", "llama")
    g = tmp_path / "m.gguf"
    convert(src, g, "F16", progress=False)
    g.write_bytes(g.read_bytes()[:-4096])
    with pytest.raises(ValueError, match="truncated"):
        export_hf(g, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.peer
def test_smollm2_tokenizer_matches_llama_cpp(smollm2_path: Path, tmp_path: Path) -> None:
    """tokenizer.json built from the GGUF metadata tokenizes WikiText as llama.cpp does."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from tokenizers import Tokenizer

    from ferroquant.gguf_header import read_header

    meta = {k: v for k, (_, _, v) in read_header(smollm2_path).kv.items()}
    write_hf_tokenizer(meta, tmp_path, 8192)
    ours = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    lines = wikitext_lines(400, min_len=2)
    lines += ["<|im_start|>user\nHi 123 there!<|im_end|>", "  two  spaces\n\nand tabs\t."]
    mismatched = []
    for line in lines:
        theirs = llm.tokenize(line.encode("utf-8"), add_bos=False, special=True)
        if ours.encode(line).ids != theirs:
            mismatched.append(line)
    assert mismatched == []


@pytest.mark.peer
def test_converted_tokenizer_matches_hf(tmp_path: Path) -> None:
    """llama.cpp on our converted GGUF tokenizes like the source tokenizer.json."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from tokenizers import Tokenizer

    src = make_model(tmp_path / "hf", "llama")
    g = tmp_path / "m.gguf"
    convert(src, g, "F16", progress=False)
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(g), vocab_only=True, verbose=False)
    lines = wikitext_lines(300, min_len=2)
    bad = [
        ln
        for ln in lines
        if hf.encode(ln).ids != llm.tokenize(ln.encode(), add_bos=False, special=True)
    ]
    assert bad == []


@pytest.mark.slow
def test_smollm2_round_trip_bit_exact(smollm2_path: Path, tmp_path: Path) -> None:
    """SmolLM2 Q4_1 -> HF float32 -> GGUF F32 reproduces every dequantized tensor exactly."""
    export_hf(smollm2_path, tmp_path / "hf", "float32", progress=False)
    out = tmp_path / "f32.gguf"
    convert(tmp_path / "hf", out, "F32", progress=False)
    ra, rb = open_gguf(smollm2_path), open_gguf(out)
    names = [i.name for i in tensor_infos(ra)]
    assert names and sorted(names) == sorted(i.name for i in tensor_infos(rb))
    for name in names:
        assert np.array_equal(read_tensor_f32(ra, name), read_tensor_f32(rb, name)), name
    ma, mb = gguf_metadata(ra), gguf_metadata(rb)
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "tokenizer.ggml.add_bos_token",
        "llama.rope.freq_base",
        "llama.attention.head_count_kv",
        "llama.context_length",
    ):
        assert ma[key] == mb[key], key


@pytest.mark.slow
def test_smollm2_export_loads_in_transformers(smollm2_path: Path, tmp_path: Path) -> None:
    """transformers loads the export; its logits agree with llama.cpp on the source GGUF."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    llama_cpp = pytest.importorskip("llama_cpp")
    export_hf(smollm2_path, tmp_path / "hf", "float32", progress=False)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "hf", torch_dtype=torch.float32
    )
    text = " ".join(wikitext_lines(20, min_len=20))
    ids = tok(text)["input_ids"][:256]
    with torch.no_grad():
        hf_logits = model(torch.tensor([ids])).logits[0].numpy()
    f32 = tmp_path / "f32.gguf"
    convert(tmp_path / "hf", f32, "F32", progress=False)
    llm = llama_cpp.Llama(model_path=str(f32), n_ctx=512, logits_all=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False)[:256] == ids
    llm.eval(ids)
    ours = np.asarray(llm.scores[: len(ids)])
    agree = np.mean(np.argmax(ours, -1) == np.argmax(hf_logits, -1))
    assert agree >= 0.995
    assert np.max(np.abs(ours - hf_logits)) < 1e-2 * np.max(np.abs(hf_logits))


@pytest.mark.peer
def test_tiny_export_loads_in_transformers(tmp_path: Path) -> None:
    """AutoTokenizer + LlamaForCausalLM load the export; both agree with llama.cpp on the GGUF."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    llama_cpp = pytest.importorskip("llama_cpp")
    src = make_model(tmp_path / "hf", "llama", tied=True, hidden=128, n_ff=256)
    g = tmp_path / "m.gguf"
    convert(src, g, "F32", progress=False)
    export_hf(g, tmp_path / "out", "float32", progress=False)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    model = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "out", torch_dtype=torch.float32
    )
    assert model.config.tie_word_embeddings
    text = " ".join(wikitext_lines(12, min_len=20))
    ids = tok(text)["input_ids"][:200]
    llm = llama_cpp.Llama(model_path=str(g), n_ctx=256, logits_all=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False)[:200] == ids
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert np.mean(np.argmax(got, -1) == np.argmax(ref, -1)) >= 0.995
    assert np.max(np.abs(got - ref)) < 1e-3 * np.max(np.abs(ref))
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"
