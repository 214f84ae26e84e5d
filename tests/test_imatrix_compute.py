"""Computing importance matrices from a HF model (torch + transformers), and using them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferroquant import quants
from ferroquant.arch import arch_for_config
from ferroquant.imatrix import ImportanceMatrix, collect_hf, token_windows

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_llama(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    model = transformers.LlamaForCausalLM(cfg).eval()
    # uneven norm gains so some input columns matter much more than others (as in trained
    # models); the random init has them all 1
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(torch.exp(1.5 * torch.randn(p.shape, generator=gen)))
    return model


def _windows(n: int = 3, seqlen: int = 32, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return token_windows(rng.integers(0, 128, n * seqlen + 5).tolist(), seqlen, None)


def test_matches_numpy_over_captured_inputs() -> None:
    model = _tiny_llama()
    arch = arch_for_config(model.config.to_dict())
    windows = _windows()
    captured: dict[str, list[np.ndarray]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
            gname = arch.gguf_name(name + ".weight")

            def keep(_m: Any, inp: tuple[Any, ...], g: str = gname) -> None:
                captured.setdefault(g, []).append(inp[0].detach().numpy().copy())

            hooks.append(mod.register_forward_pre_hook(keep))
    imat = collect_hf(model, arch.gguf_name, windows, progress=False)
    for h in hooks:
        h.remove()
    expected = {
        f"blk.{i}.{t}.weight"
        for i in range(2)
        for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    }
    assert set(imat.names()) == expected == set(captured)
    for name in expected:
        x = np.concatenate([a.reshape(-1, a.shape[-1]) for a in captured[name]]).astype(np.float64)
        e = imat.entries[name]
        assert e.counts.tolist() == [len(windows) * 32]
        np.testing.assert_allclose(e.in_sum2[0], (x * x).sum(0), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(imat.weights(name), (x * x).mean(0), rtol=1e-6)
    # independently of the hooks: layer 0's q/k/v input is RMSNorm(embedding) * gain
    emb = model.model.embed_tokens.weight.detach().numpy().astype(np.float64)
    gain = model.model.layers[0].input_layernorm.weight.detach().numpy().astype(np.float64)
    h = emb[np.concatenate(windows)]
    h = h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-5) * gain
    for t in ("attn_q", "attn_k", "attn_v"):
        np.testing.assert_allclose(
            imat.entries[f"blk.0.{t}.weight"].in_sum2[0], (h * h).sum(0), rtol=1e-4
        )


def test_weighted_quantization_lowers_weighted_error() -> None:
    model = _tiny_llama(seed=3)
    arch = arch_for_config(model.config.to_dict())
    imat = collect_hf(model, arch.gguf_name, _windows(4, 32, seed=1), progress=False)
    weights = dict(model.named_parameters())
    total_plain = total_weighted = 0.0
    n_better = 0
    for hf_name, p in weights.items():
        if not hf_name.startswith("model.layers.") or p.ndim != 2:
            continue
        name = arch.gguf_name(hf_name)
        w = p.detach().numpy().astype(np.float32)
        imp = imat.weights(name)
        errs = []
        for im in (None, imp):
            q = quants.quantize(w, "IQ4_NL", im)
            d = quants.dequantize(q, "IQ4_NL", w.shape)
            # expected squared output error under the calibration activations (diagonal)
            errs.append(float(((d - w) ** 2 * imp).sum()))
        total_plain += errs[0]
        total_weighted += errs[1]
        n_better += errs[1] < errs[0]
    assert n_better >= 12  # of 14 tensors
    assert total_weighted < 0.9 * total_plain


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from test_convert_models import make_model

    base = tmp_path_factory.mktemp("imatrix_hf")
    return (
        make_model(base / "a", "llama", n_layer=2, hidden=256, n_ff=512),
        make_model(base / "b", "llama", n_layer=2, hidden=128, n_ff=256),
    )


def test_cli_then_convert(
    tiny_dirs: tuple[Path, Path], wikitext_path: Path, tmp_path: Path
) -> None:
    from ferroquant.convert import ConvertError, convert

    model_a, model_b = tiny_dirs
    out = tmp_path / "imatrix.gguf"
    proc = subprocess.run(
        [sys.executable, "-m", "ferroquant", "imatrix", str(model_a), "--calib",
         str(wikitext_path), "-o", str(out), "--nsamples", "3", "--seqlen", "64",
         "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "14 tensors, 3 chunks of 64 tokens" in proc.stdout
    imat = ImportanceMatrix.load(out)
    assert imat.chunk_size == 64 and imat.datasets == [str(wikitext_path)]
    assert all(e.counts.tolist() == [192.0] for e in imat.entries.values())
    # convert takes it and it changes the K-quant search
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    convert(model_a, plain, "Q4_K_M", progress=False)
    convert(model_a, weighted, "Q4_K_M", imatrix=out, progress=False)
    from ferroquant.gguf_io import open_gguf, tensor_bytes

    a, b = open_gguf(plain), open_gguf(weighted)
    name = "blk.0.attn_q.weight"
    assert not np.array_equal(tensor_bytes(a, name), tensor_bytes(b, name))
    # the .dat form works the same, and another model's imatrix is refused
    dat = imat.save(tmp_path / "imatrix.dat")
    with pytest.raises(ConvertError, match=r"imatrix\.dat.*another model"):
        convert(model_b, tmp_path / "b.gguf", "Q4_K_M", imatrix=dat, progress=False)
    assert not (tmp_path / "b.gguf").exists()
