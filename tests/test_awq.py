"""AWQ (torch): scale folding keeps the float model, the alpha search lowers the block error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ferroquant.methods.awq import (  # noqa: E402
    AWQConfig,
    apply_scales,
    awq_model,
    fake_quantize,
    scale_groups,
)

CONFIGS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, 2),
    "llama-mha": (transformers.LlamaConfig, transformers.LlamaForCausalLM, 4),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, 2),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, 2),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, 2),
}


def _tiny(kind: str, seed: int = 0) -> Any:
    cfg_cls, model_cls, n_kv = CONFIGS[kind]
    torch.manual_seed(seed)
    cfg = cfg_cls(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4 if kind == "llama-mha" else n_kv,
        head_dim=16,
        max_position_embeddings=128,
    )
    model = model_cls(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(torch.exp(1.5 * torch.randn(p.shape, generator=gen)))
    return model


def _ids(n: int = 4, seqlen: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 128, (n, seqlen))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_folding_keeps_float_outputs(kind: str) -> None:
    model = _tiny(kind)
    ids = torch.as_tensor(_ids())
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        gen = torch.Generator().manual_seed(7)
        n_groups = 0
        for layer in model.model.layers:
            for g in scale_groups(layer):
                c = layer.get_submodule(g.linears[0]).weight.shape[1]
                apply_scales(layer, g, torch.exp(torch.randn(c, generator=gen)))
                n_groups += 1
        out = model(input_ids=ids).logits
    # v -> o only without GQA
    assert n_groups == (8 if kind == "llama-mha" else 6)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_awq_alpha_lowers_block_error_and_output_error() -> None:
    model = _tiny("llama-mha", seed=2)
    ids = _ids(4, 32, seed=3)
    held_out = torch.as_tensor(_ids(2, 32, seed=4))
    cfg = AWQConfig(bits=3, group_size=32)
    with torch.no_grad():
        ref = model(input_ids=held_out).logits
    rtn = _tiny("llama-mha", seed=2)
    for layer in rtn.model.layers:
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.data = fake_quantize(m.weight.data, cfg.bits, cfg.group_size)
    results = awq_model(model, ids, cfg, batch=2, progress=False)
    assert len(results) == 8
    for key, r in results.items():
        assert r["loss"] <= r["loss_alpha0"], key
    assert sum(r["alpha"] > 0 and r["loss"] < r["loss_alpha0"] for r in results.values()) >= 4
    # scaled + clipped float model, then the same RTN grid: closer to the float logits
    for layer in model.model.layers:
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.data = fake_quantize(m.weight.data, cfg.bits, cfg.group_size)
    with torch.no_grad():
        err_awq = float(((model(input_ids=held_out).logits - ref) ** 2).mean())
        err_rtn = float(((rtn(input_ids=held_out).logits - ref) ** 2).mean())
    assert err_awq < err_rtn


def test_fake_quantize_grid() -> None:
    w = torch.randn(8, 64)
    q = fake_quantize(w, 4, 32)
    for g in q.reshape(-1, 32):
        assert len(torch.unique(g)) <= 16
    assert float((q - w).abs().max()) < float(w.abs().max()) / 7
    with pytest.raises(ValueError, match="groups of 48"):
        fake_quantize(w, 4, 48)


def test_cli_awq_to_gguf(tmp_path: Any, wikitext_path: Any) -> None:
    import subprocess
    import sys

    from ferroquant.gguf_io import open_gguf, tensor_infos
    from test_convert_models import make_model

    model = make_model(tmp_path / "hf", "llama", n_layer=2, hidden=256, n_ff=512)
    out = tmp_path / "awq.gguf"
    base = [sys.executable, "-m", "ferroquant", "quantize", str(model), "--method", "awq",
            "--calib", str(wikitext_path), "--nsamples", "4", "--seqlen", "64",
            "--no-progress"]  # fmt: skip
    proc = subprocess.run(
        [*base, "-o", str(out), "--format", "gguf", "--type", "Q4_K_M", "--group-size", "64"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "scaling groups" in proc.stdout
    infos = {i.name: i.qtype for i in tensor_infos(open_gguf(out))}
    assert infos["blk.0.attn_q.weight"] == "Q4_K"
    assert not [p for p in tmp_path.iterdir() if ".awq-" in p.name]
    from ferroquant.methods.awq import quantize_awq

    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*groups of 96"):
        quantize_awq(model, tmp_path / "b.gguf", "Q4_K_M", AWQConfig(group_size=96), progress=False)
    assert not (tmp_path / "b.gguf").exists()


def test_awq_gguf_checks_the_imatrix_before_calibrating(tmp_path: Any) -> None:
    from ferroquant.imatrix import ImatrixError, ImportanceMatrix
    from ferroquant.methods.awq import quantize_awq
    from test_convert_models import make_model

    model = make_model(tmp_path / "hf", "llama", n_layer=2, hidden=64, n_ff=128)
    other = ImportanceMatrix()
    other.add("blk.0.attn_q.weight", np.ones(96), 10)  # another model's width
    wrong = other.save(tmp_path / "other.gguf")
    corrupt = tmp_path / "corrupt.dat"
    corrupt.write_bytes(b"\x01\x00\x00\x00\xff\xff")
    # calib=None would sample from the model (slow); the checks come first
    for path, msg in ((wrong, r"other\.gguf.*blk\.0\.attn_q\.weight.*another model"),
                      (corrupt, r"corrupt\.dat")):  # fmt: skip
        with pytest.raises(ImatrixError, match=msg):
            quantize_awq(
                model, tmp_path / "o.gguf", "Q4_K_M", AWQConfig(group_size=32), imatrix=path,
                progress=False,
            )  # fmt: skip
    assert not (tmp_path / "o.gguf").exists()
