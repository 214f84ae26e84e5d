"""``ferroquant run / bench / eval`` and the text side of ``Model`` on SmolLM2 Q4_1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferroquant import Model
from ferroquant.cli import main as cli_main
from ferroquant.runtime import ModelError

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> Model:
    return Model.load(smollm2_path, n_ctx=64, n_threads=2)


def test_tokenize_round_trips(model: Model) -> None:
    text = "Hello world, 2024 is a year.\n<|im_start|>user"
    ids = model.tokenize(text)
    assert model.detokenize(ids) == text
    # Digits split one by one (the smollm pre-tokenizer), the chat marker is one token.
    assert len(model.tokenize("2024")) == 4
    assert len(model.tokenize("<|im_start|>")) == 1


def test_generate_greedy_is_deterministic_and_stops(model: Model) -> None:
    a = "".join(model.generate("The capital of France is", max_tokens=8, temperature=0))
    b = "".join(model.generate("The capital of France is", max_tokens=8, temperature=0))
    assert a == b and "Paris" in a
    s1 = "".join(model.generate("Once upon a time", 8, temperature=0.9, seed=3))
    s2 = "".join(model.generate("Once upon a time", 8, temperature=0.9, seed=3))
    assert s1 == s2


def test_empty_and_too_long_prompts(model: Model) -> None:
    # An empty prompt starts from BOS.
    assert "".join(model.generate("", max_tokens=4, temperature=0))
    with pytest.raises(ModelError, match="context holds 64"):
        list(model.generate("word " * 200, max_tokens=4))


def test_generation_stops_at_a_full_context(model: Model) -> None:
    ids = model.tokenize("one two three four five")
    out = list(model.generate_ids(ids, max_tokens=500, temperature=0.5, seed=1, stop_ids=set()))
    assert len(ids) + len(out) == model.n_ctx + 1


def test_cli_run_chat(smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(
        ["run", str(smollm2_path), "-p", "What is the capital of France?", "--chat", "-n", "12",
         "--temp", "0", "--threads", "2", "--ctx", "128"]
    )  # fmt: skip
    assert rc == 0
    # Greedy text of this 135M model (llama.cpp's starts "L'Étoile, la" too): just non-empty.
    assert capsys.readouterr().out.strip()


def test_cli_bench_json(smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(
        ["bench", str(smollm2_path), "--threads", "2", "--pp", "16", "--tg", "4", "--reps", "1",
         "--json"]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pp_tps"] > 0 and out["tg_tps"] > 0


def test_cli_eval_json(
    smollm2_path: Path, wikitext_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "t.txt"
    text.write_text(wikitext_path.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    rc = cli_main(
        ["eval", str(smollm2_path), "--text", str(text), "--ctx", "128", "--chunks", "2",
         "--ref", str(smollm2_path), "--threads", "2", "--json", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 2 * 63
    assert 5 < out["ppl"] < 200
    # The model against itself: no divergence, full agreement.
    assert out["kld"] == pytest.approx(0.0, abs=1e-9) and out["top1"] == 1.0


def test_cli_eval_bad_file(smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["eval", str(smollm2_path), "--text", "/nonexistent.txt"])
    assert rc == 1
    assert "cannot read text" in capsys.readouterr().err
