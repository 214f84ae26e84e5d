"""Calibration data for every calibrated method (GPTQ, AWQ, importance matrices).

``--calib`` takes one of:

- a file: plain text, or JSONL whose lines are objects with a ``text`` field (``.jsonl`` /
  ``.json`` suffix, or a first line that parses as such an object);
- ``self``: text the float model samples itself (temperature 1, from its BOS token). It needs
  no download and lies in the model's own distribution; this is the built-in default;
- ``wikitext-tail``: the second half (by characters) of ``fixtures/wikitext-2-raw-test.txt``.
  The evaluation windows (llama.cpp ``perplexity`` style, from the start of that file; 40
  windows of 512 tokens are about 100 kB of its 1.3 MB) never reach it, so it is in-domain
  WikiText text that the evaluation does not contain. Only available in a source checkout.

The text is tokenized once as one stream, and ``nsamples`` windows of ``seqlen`` tokens start
at seeded random offsets (the reference GPTQ loader's sampling).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

SELF = "self"
WIKITEXT_TAIL = "wikitext-tail"
DEFAULT_SOURCE = SELF
_FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "wikitext-2-raw-test.txt"


class CalibError(ValueError):
    """Calibration data that cannot be used; the message names the source and the problem."""


@dataclass
class CalibConfig:
    source: Optional[str] = None
    nsamples: int = 128
    seqlen: int = 512
    seed: int = 0


def read_text(path: Path) -> str:
    """Plain text, or the ``text`` fields of a JSONL file joined by blank lines."""
    if not path.is_file():
        raise CalibError(f"calibration file {path} does not exist")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CalibError(f"calibration file {path} is not UTF-8 text: {err}") from err
    first = raw.lstrip().split("\n", 1)[0]
    looks_jsonl = path.suffix in (".jsonl", ".json")
    if not looks_jsonl and first.startswith("{"):
        try:
            looks_jsonl = isinstance(json.loads(first), dict)
        except json.JSONDecodeError:
            looks_jsonl = False
    if not looks_jsonl:
        return raw
    texts = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CalibError(f"{path}:{lineno}: not a JSON object ({err.msg})") from err
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise CalibError(f"{path}:{lineno}: expected an object with a string 'text' field")
        texts.append(obj["text"])
    if not texts:
        raise CalibError(f"{path}: no 'text' records")
    return "\n\n".join(texts)


def wikitext_tail() -> str:
    if not _FIXTURE.is_file():
        raise CalibError(
            f"--calib {WIKITEXT_TAIL} needs {_FIXTURE} (a source checkout); give a file instead"
        )
    text = _FIXTURE.read_text(encoding="utf-8")
    return text[len(text) // 2 :]


def sample_windows(
    tokens: np.ndarray, nsamples: int, seqlen: int, seed: int, what: str
) -> np.ndarray:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets."""
    if nsamples < 1 or seqlen < 2:
        raise CalibError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples} and {seqlen}")
    n = int(tokens.size)
    if n < seqlen:
        raise CalibError(
            f"calibration text {what} has {n} tokens, fewer than one window of --seqlen {seqlen}"
        )
    if n < nsamples * seqlen:
        log.warning(
            "calibration text %s has %d tokens < nsamples*seqlen = %d: windows overlap",
            what,
            n,
            nsamples * seqlen,
        )
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - seqlen + 1, size=nsamples)
    return np.stack([tokens[s : s + seqlen] for s in starts]).astype(np.int64)


def self_generated(model: Any, tokenizer: Any, nsamples: int, seqlen: int, seed: int) -> np.ndarray:
    """Windows the float model samples itself, from its BOS (or EOS) token."""
    import torch
    from tqdm import tqdm

    start = tokenizer.bos_token_id
    if start is None:
        start = tokenizer.eos_token_id
    if start is None:
        raise CalibError("--calib self needs a tokenizer with a BOS or EOS token")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    batch = 16
    bar = tqdm(total=nsamples, desc="calib: sampling from the model", unit="seq")
    with torch.no_grad():
        for b0 in range(0, nsamples, batch):
            nb = min(batch, nsamples - b0)
            ids = torch.full((nb, 1), int(start), dtype=torch.long, device=device)
            past = None
            seq = [ids]
            cur = ids
            for _ in range(seqlen - 1):
                res = model(input_ids=cur, past_key_values=past, use_cache=True)
                past = res.past_key_values
                probs = torch.softmax(res.logits[:, -1, :].float(), dim=-1).cpu()
                cur = torch.multinomial(probs, 1, generator=gen).to(device)
                seq.append(cur)
            out.append(torch.cat(seq, dim=1).cpu().numpy())
            bar.update(nb)
    bar.close()
    return np.concatenate(out).astype(np.int64)


def load_calibration(
    source: Optional[str],
    tokenizer: Any,
    nsamples: int = 128,
    seqlen: int = 512,
    seed: int = 0,
    model: Any = None,
) -> np.ndarray:
    """Token windows (nsamples, seqlen) int64 from ``source`` (see the module docstring)."""
    source = source or DEFAULT_SOURCE
    if source == SELF:
        if model is None:
            raise CalibError("--calib self needs the float model")
        return self_generated(model, tokenizer, nsamples, seqlen, seed)
    if source == WIKITEXT_TAIL:
        text, what = wikitext_tail(), WIKITEXT_TAIL
    else:
        path = Path(source)
        text, what = read_text(path), str(path)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return sample_windows(np.asarray(ids, dtype=np.int64), nsamples, seqlen, seed, what)
