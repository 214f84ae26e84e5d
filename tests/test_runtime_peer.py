"""The runtime against llama.cpp (llama-cpp-python) on SmolLM2: same file, same tokens.

Measured (2 threads, WikiText-2 test, ctx 512, 6 windows, second halves scored): the Q4_1, Q8_0,
Q4_0 and Q4_K_M files give llama.cpp's logits bit for bit (ppl 23.2950 both for Q4_1, KL 0); F16
greedy generation is identical for 64 tokens (benches/bench_runtime.py --variants --accuracy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferroquant.cli import main as cli_main
from ferroquant.eval import LlamaCppModel, evaluate
from ferroquant.runtime import Model

pytestmark = pytest.mark.peer
PROMPT = "The history of the city of Rome"


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def f16_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rt") / "smollm2-f16.gguf"
    rc = cli_main(["quantize", str(smollm2_path), "-o", str(out), "--type", "F16", "--no-progress"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def q4_k_m_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rt") / "smollm2-q4_k_m.gguf"
    rc = cli_main(
        ["quantize", str(smollm2_path), "-o", str(out), "--type", "Q4_K_M", "--no-progress"]
    )
    assert rc == 0
    return out


def greedy_llama_cpp(llama_cpp, path: Path, ids: list[int], n: int) -> list[int]:
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False)
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return out


def test_f16_greedy_generation_matches_llama_cpp(llama_cpp, f16_path: Path) -> None:
    m = Model.load(f16_path, n_ctx=256, n_threads=2)
    ids = m.tokenize(PROMPT)
    ours = list(m.generate_ids(ids, 64, temperature=0))
    assert ours == greedy_llama_cpp(llama_cpp, f16_path, ids, 64)


def test_f16_logits_close_to_llama_cpp(llama_cpp, f16_path: Path, wikitext_path: Path) -> None:
    m = Model.load(f16_path, n_ctx=256, n_threads=2)
    ids = m.tokenize(wikitext_path.read_text(encoding="utf-8")[:4000])[:96]
    ours = m.logits(ids)
    theirs = LlamaCppModel(str(f16_path), n_ctx=256, n_threads=2).logits(ids)
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99
    assert np.abs(ours - theirs).max() < 0.1


def test_q4_1_greedy_and_perplexity_close_to_llama_cpp(
    llama_cpp, smollm2_path: Path, wikitext_path: Path
) -> None:
    m = Model.load(smollm2_path, n_ctx=256, n_threads=2)
    ids = m.tokenize(PROMPT)
    assert list(m.generate_ids(ids, 8, temperature=0)) == greedy_llama_cpp(
        llama_cpp, smollm2_path, ids, 8
    )
    text = wikitext_path.read_text(encoding="utf-8")[:40000]
    ref = LlamaCppModel(str(smollm2_path), n_ctx=256, n_threads=2)
    r = evaluate(m, text, ctx=256, n_chunks=2, ref=ref, progress=False)
    assert r["tokens"] == 2 * 127
    assert abs(r["ppl"] / r["ref_ppl"] - 1) < 0.015, r
    assert r["kld"] < 0.02 and r["top1"] > 0.9, r


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q4_K_M"])
def test_perplexity_within_half_percent_of_llama_cpp(
    llama_cpp, smollm2_path: Path, wikitext_path: Path, tmp_path: Path, qtype: str
) -> None:
    path = smollm2_path
    if qtype != "Q4_1":
        path = tmp_path / f"smollm2-{qtype}.gguf"
        assert cli_main(["quantize", str(smollm2_path), "-o", str(path), "--type", qtype]) == 0
    text = wikitext_path.read_text(encoding="utf-8")
    m = Model.load(path, n_ctx=512, n_threads=2)
    ref = LlamaCppModel(str(path), n_ctx=512, n_threads=2)
    r = evaluate(m, text, ctx=512, n_chunks=6, ref=ref, progress=False)
    assert abs(r["ppl"] / r["ref_ppl"] - 1) < 0.005, r


def test_q4_k_m_logits_match_llama_cpp_bit_for_bit(
    llama_cpp, q4_k_m_path: Path, wikitext_path: Path
) -> None:
    """SmolLM2's Q4_K_M: Q5_0/Q8_0 (tinyBLAS or vec_dot order), repacked Q4_K (gemm/gemv 8x8
    orders) and Q6_K (vec_dot below 8 tokens, tiled matmul from 8), in a batch and one token at
    a time."""
    m = Model.load(q4_k_m_path, n_ctx=256, n_threads=2)
    ids = m.tokenize(wikitext_path.read_text(encoding="utf-8")[:4000])[:99]
    ours = m.logits(ids)
    theirs = LlamaCppModel(str(q4_k_m_path), n_ctx=256, n_threads=2).logits(ids)
    assert np.array_equal(ours, theirs)
    one = llama_cpp.Llama(
        str(q4_k_m_path), n_ctx=256, n_batch=1, n_threads=2, logits_all=True, verbose=False
    )
    one.eval(ids[:24])
    m.reset()
    ours_one = np.stack([m.eval_next([t]) for t in ids[:24]])
    assert np.array_equal(ours_one, np.array(one.scores[:24], dtype=np.float32))
    prompt = m.tokenize(PROMPT + " and its emperors")
    assert list(m.generate_ids(prompt, 16, temperature=0)) == greedy_llama_cpp(
        llama_cpp, q4_k_m_path, prompt, 16
    )
