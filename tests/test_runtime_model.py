"""The Rust forward pass against a numpy float64 forward pass on tiny random GGUF models, plus
the bad-input paths (missing tensor, wrong shape, unsupported architecture, bad prompts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import runtime_reference as ref
from ferroquant.runtime import Model, ModelError

VOCAB, D, FF, N_HEAD, N_KV, N_LAYER = 96, 64, 128, 4, 2, 2


def write_tiny(
    path: Path,
    arch: str = "llama",
    qtype: T = T.F32,
    skip: Optional[str] = None,
    bad_shape: Optional[str] = None,
    seed: int = 0,
    rope_linear: Optional[float] = None,
    untied: bool = False,
    rope_type: Optional[str] = None,
) -> Path:
    rng = np.random.default_rng(seed)
    hd = D // N_HEAD
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYER)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    if rope_linear:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_linear)
    if rope_type:
        w.add_string(f"{arch}.rope.scaling.type", rope_type)

    def add(name: str, shape: tuple[int, ...], scale: float = 0.2, matrix: bool = True) -> None:
        if name == skip:
            return
        if name == bad_shape:
            shape = (shape[0] + 32, *shape[1:])
        arr = (rng.standard_normal(shape) * scale).astype(np.float32)
        if not matrix:
            arr = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if matrix and qtype != T.F32:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            w.add_tensor(name, arr)

    add("token_embd.weight", (VOCAB, D), 1.0)
    add("output_norm.weight", (D,), matrix=False)
    if untied:
        add("output.weight", (VOCAB, D))
    for i in range(N_LAYER):
        b = f"blk.{i}."
        add(b + "attn_norm.weight", (D,), matrix=False)
        add(b + "attn_q.weight", (N_HEAD * hd, D))
        add(b + "attn_k.weight", (N_KV * hd, D))
        add(b + "attn_v.weight", (N_KV * hd, D))
        add(b + "attn_output.weight", (D, N_HEAD * hd))
        if arch == "qwen2":
            add(b + "attn_q.bias", (N_HEAD * hd,), matrix=False)
            add(b + "attn_k.bias", (N_KV * hd,), matrix=False)
            add(b + "attn_v.bias", (N_KV * hd,), matrix=False)
        if arch == "qwen3":
            add(b + "attn_q_norm.weight", (hd,), matrix=False)
            add(b + "attn_k_norm.weight", (hd,), matrix=False)
        add(b + "ffn_norm.weight", (D,), matrix=False)
        add(b + "ffn_gate.weight", (FF, D))
        add(b + "ffn_up.weight", (FF, D))
        add(b + "ffn_down.weight", (D, FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


TOKENS = [3, 17, 42, 5, 88, 1, 0, 95, 60, 23, 23, 7]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_f32_forward_matches_numpy(tmp_path: Path, arch: str) -> None:
    path = write_tiny(tmp_path / f"{arch}.gguf", arch)
    want = ref.forward(*ref.load_weights(str(path)), TOKENS)
    got = Model.load(path, n_ctx=32, n_threads=2).logits(TOKENS)
    assert got.shape == (len(TOKENS), VOCAB)
    # The KV cache holds f16 values (as llama.cpp's does).
    np.testing.assert_allclose(got, want, rtol=3e-3, atol=3e-3 * np.abs(want).max())


# K-quants need rows of 256; they are covered by the kernel tests and the SmolLM2 peer tests.
@pytest.mark.parametrize("qtype", [T.F16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0])
def test_quantized_forward_close_to_numpy(tmp_path: Path, qtype: T) -> None:
    path = write_tiny(tmp_path / "q.gguf", "llama", qtype)
    want = ref.forward(*ref.load_weights(str(path)), TOKENS)
    got = Model.load(path, n_ctx=32, n_threads=2).logits(TOKENS)
    # Block types multiply 8-bit activations (as llama.cpp does): close, not equal.
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < (3e-3 if qtype == T.F16 else 0.08), err
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_linear_rope_scaling_matches_numpy(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "s.gguf", "llama", rope_linear=4.0)
    want = ref.forward(*ref.load_weights(str(path)), TOKENS)
    plain = ref.forward(*ref.load_weights(str(write_tiny(tmp_path / "p.gguf"))), TOKENS)
    assert np.abs(want - plain).max() > 1e-2  # the scaling matters on this model
    got = Model.load(path, n_ctx=32, n_threads=1).logits(TOKENS)
    np.testing.assert_allclose(got, want, rtol=3e-3, atol=3e-3 * np.abs(want).max())


def test_unknown_rope_scaling_is_an_error(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "z.gguf", rope_type="longrope")
    with pytest.raises(ModelError, match="rope scaling 'longrope'"):
        Model.load(path)


@pytest.mark.parametrize("untied", [False, True])
def test_activation_stats_match_numpy(tmp_path: Path, untied: bool) -> None:
    path = write_tiny(tmp_path / "m.gguf", "qwen2", untied=untied)
    weights, hp = ref.load_weights(str(path))
    windows = [TOKENS, TOKENS[::-1][:7]]
    want: dict = {}
    for w in windows:
        ref.forward(weights, hp, w, stats=want)
    m = Model.load(path, n_ctx=32, n_threads=2)
    got = m.collect_activation_stats(windows)
    assert set(got) == set(want)
    assert ("output.weight" in got) == untied
    for name, (sums, count) in got.items():
        assert count == len(TOKENS) + 7, name
        assert sums.dtype == np.float64 and sums.shape == want[name][0].shape
        np.testing.assert_allclose(sums, want[name][0], rtol=1e-2, err_msg=name)
    # Collection stops afterwards and the model still evaluates normally.
    np.testing.assert_allclose(m.logits(TOKENS), Model.load(path).logits(TOKENS), rtol=1e-5)
    with pytest.raises(ModelError, match="no token windows"):
        m.collect_activation_stats([])


def test_incremental_decode_equals_batch(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "m.gguf", "qwen3")
    m = Model.load(path, n_ctx=32, n_threads=2)
    batch = m.logits(TOKENS)
    m.reset()
    steps = [m.eval_next(TOKENS[:5])]
    steps += [m.eval_next([t]) for t in TOKENS[5:]]
    # One token and a batch sum in different orders; the f16 KV cache can turn a last-bit
    # difference into one f16 step (as in llama.cpp), hence not 1e-6.
    np.testing.assert_allclose(np.stack(steps), batch[4:], rtol=3e-3, atol=3e-3)


def test_missing_tensor_is_a_clear_error(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "m.gguf", skip="blk.1.ffn_up.weight")
    with pytest.raises(ValueError, match=r"missing tensor \"blk\.1\.ffn_up\.weight\""):
        Model.load(path)


def test_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "m.gguf", bad_shape="blk.0.attn_k.weight")
    with pytest.raises(ValueError, match=r"blk\.0\.attn_k\.weight.*shape"):
        Model.load(path)


def test_qwen2_without_bias_is_an_error(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "m.gguf", "qwen2", skip="blk.0.attn_v.bias")
    with pytest.raises(ValueError, match=r"attn_v\.bias"):
        Model.load(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "m.gguf", "gpt2")
    with pytest.raises(ModelError, match="architecture 'gpt2' is not supported"):
        Model.load(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="truncated"):
        Model.load(path)


def test_bad_token_inputs(tmp_path: Path) -> None:
    m = Model.load(write_tiny(tmp_path / "m.gguf"), n_ctx=8, n_threads=1)
    with pytest.raises(ModelError, match="empty"):
        m.logits([])
    with pytest.raises(ModelError, match="context of 8"):
        m.logits(list(range(9)))
    with pytest.raises(ModelError, match="out of range"):
        m.logits([VOCAB])
    m.reset()
    m.eval_next([1] * 8)
    with pytest.raises(ModelError, match="exceed the context"):
        m.eval_next([1])
