"""Calibration data for every calibrated method (GPTQ, AWQ, importance matrices).

``--calib`` takes one of:

- a file: plain text, or JSONL whose lines are objects with a ``text`` field (``.jsonl`` /
  ``.json`` suffix, or a first line that parses as such an object);
- ``self``: text the float model samples itself (temperature 1, from its BOS token). It needs
  no download and lies in the model's own distribution; this is the built-in default. The
  sampled windows are cached under ``$FERROQUANT_CACHE/calib`` (default
  ``~/.cache/ferroquant/calib``), keyed by the model's config and weights fingerprint, the
  window length and seed, so later runs on the same model reuse them (sampled in batches of
  64, each from its own seeded generator: the first n windows are the same whatever n);
- a ``.npy`` file of token windows (an integer array of shape (n, seqlen), e.g. windows saved
  from an earlier run): its first ``nsamples`` rows, used as they are;
- ``wikitext-tail``: the second half (by characters) of ``fixtures/wikitext-2-raw-test.txt``.
  The evaluation windows (llama.cpp ``perplexity`` style, from the start of that file; 40
  windows of 512 tokens are about 100 kB of its 1.3 MB) never reach it, so it is in-domain
  WikiText text that the evaluation does not contain. Only available in a source checkout.

The text is tokenized once as one stream, and ``nsamples`` windows of ``seqlen`` tokens start
at seeded random offsets (the reference GPTQ loader's sampling).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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


def token_file(path: Path, nsamples: int, seqlen: int) -> np.ndarray:
    """The first ``nsamples`` windows of a saved (n, seqlen) integer token array."""
    if not path.is_file():
        raise CalibError(f"calibration file {path} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CalibError(f"{path}: not a readable .npy array: {err}") from err
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise CalibError(
            f"{path}: expected a 2-D integer array of token ids, got {arr.dtype} {arr.shape}"
        )
    if arr.shape[1] != seqlen:
        raise CalibError(f"{path}: windows of {arr.shape[1]} tokens, --seqlen is {seqlen}")
    if arr.shape[0] < nsamples:
        raise CalibError(f"{path}: {arr.shape[0]} windows, fewer than --nsamples {nsamples}")
    if arr.size and arr.min() < 0:
        raise CalibError(f"{path}: negative token ids")
    return np.ascontiguousarray(arr[:nsamples], dtype=np.int64)


def _check_counts(nsamples: int, seqlen: int) -> None:
    if nsamples < 1 or seqlen < 2:
        raise CalibError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples} and {seqlen}")


def sample_windows(
    tokens: np.ndarray, nsamples: int, seqlen: int, seed: int, what: str
) -> np.ndarray:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets."""
    _check_counts(nsamples, seqlen)
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


def _cache_dir() -> Path:
    root = os.environ.get("FERROQUANT_CACHE") or Path.home() / ".cache" / "ferroquant"
    return Path(root) / "calib"


def _self_cache_key(model: Any, seqlen: int, seed: int) -> str:
    """Model identity (config + a fingerprint of the embedding and output weights) and the
    sampling parameters; a different checkpoint under the same path gets a different key."""
    import torch

    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update((cfg.to_json_string(use_diff=False) if cfg is not None else "").encode())
    with torch.no_grad():
        for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
            w = getattr(mod, "weight", None)
            if w is not None:
                w = w.detach().float()
                h.update(np.float64(w.double().sum().item()).tobytes())
                h.update(w.reshape(-1)[:4096].cpu().numpy().tobytes())
    h.update(f"self:{seqlen}:{seed}:batch{SELF_BATCH}".encode())
    return h.hexdigest()[:24]


# Sequences sampled together; batch k has its own generator seeded from (seed, k), so the
# first n windows do not depend on how many are asked for and a cache grows batch by batch.
SELF_BATCH = 64


def _sample_batch(model: Any, start: int, nb: int, seqlen: int, seed: int, k: int) -> np.ndarray:
    import torch

    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + k)
    device = next(model.parameters()).device
    ids = torch.full((nb, 1), int(start), dtype=torch.long, device=device)
    past = None
    seq = [ids]
    cur = ids
    with torch.no_grad():
        for _ in range(seqlen - 1):
            res = model(input_ids=cur, past_key_values=past, use_cache=True)
            past = res.past_key_values
            probs = torch.softmax(res.logits[:, -1, :].float(), dim=-1).cpu()
            cur = torch.multinomial(probs, 1, generator=gen).to(device)
            seq.append(cur)
    return torch.cat(seq, dim=1).cpu().numpy().astype(np.int64)


def self_generated(
    model: Any, tokenizer: Any, nsamples: int, seqlen: int, seed: int, cache: bool = True
) -> np.ndarray:
    """Windows the float model samples itself (temperature 1), from its BOS (or EOS) token.

    Sampled in batches of ``SELF_BATCH`` sequences with a KV cache. Whole batches are cached
    on disk (see the module docstring) unless ``cache`` is false; a later call on the same
    model, window length and seed reuses them and samples only the batches it lacks."""
    from tqdm import tqdm

    start = tokenizer.bos_token_id
    if start is None:
        start = tokenizer.eos_token_id
    if start is None:
        raise CalibError("--calib self needs a tokenizer with a BOS or EOS token")
    _check_counts(nsamples, seqlen)
    path = _cache_dir() / f"self-{_self_cache_key(model, seqlen, seed)}.npy"
    have = np.zeros((0, seqlen), dtype=np.int64)
    if cache and path.is_file():
        try:
            got = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable calibration cache %s: %s", path, err)
        else:
            if got.ndim == 2 and got.shape[1] == seqlen and got.dtype == np.int64:
                have = got[: got.shape[0] // SELF_BATCH * SELF_BATCH]
                log.info("calib: %d self-sampled windows cached in %s", have.shape[0], path)
            else:
                log.warning("ignoring calibration cache %s: shape %s", path, got.shape)
    n_batches = -(-nsamples // SELF_BATCH)
    done = have.shape[0] // SELF_BATCH
    if done < n_batches:
        parts = [have]
        bar = tqdm(
            total=(n_batches - done) * SELF_BATCH, desc="calib: sampling from the model", unit="seq"
        )
        for k in range(done, n_batches):
            parts.append(_sample_batch(model, int(start), SELF_BATCH, seqlen, seed, k))
            bar.update(SELF_BATCH)
        bar.close()
        have = np.concatenate(parts)
        if cache:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp.npy")
                np.save(tmp, have, allow_pickle=False)
                os.replace(tmp, path)
            except OSError as err:
                log.warning("could not cache the self-sampled windows at %s: %s", path, err)
    return have[:nsamples].copy()


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
    if source.endswith(".npy"):
        return token_file(Path(source), nsamples, seqlen)
    if source == WIKITEXT_TAIL:
        text, what = wikitext_tail(), WIKITEXT_TAIL
    else:
        path = Path(source)
        text, what = read_text(path), str(path)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return sample_windows(np.asarray(ids, dtype=np.int64), nsamples, seqlen, seed, what)
