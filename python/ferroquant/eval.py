"""Perplexity, KL divergence and top-1 agreement of a model's logits, the llama.cpp way.

Method (llama.cpp ``perplexity``, ``--ppl-stride 0``): the text is tokenized once (BOS first when
the model adds one); it is cut into non-overlapping windows of ``ctx`` tokens; the first token of
each window is replaced by BOS when the model uses one; each window is evaluated from an empty
context and only the second half is scored: the logits at positions ``ctx/2 .. ctx-2`` predict
tokens ``ctx/2+1 .. ctx-1`` (``ctx - ctx/2 - 1`` predictions per window). ``ppl = exp(mean NLL)``.
With a reference model, the same windows are evaluated by it and, per scored position,
``KL(P_ref || P_model)`` and whether both argmaxes agree are averaged.

A model is anything with ``logits(tokens) -> (n, vocab)`` and ``tokenize(text)``: a GGUF through
our runtime, llama.cpp (``llama.cpp:FILE.gguf``, through llama-cpp-python), or a Hugging Face
directory (through transformers, when torch is installed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np


class LogitsModel(Protocol):
    def logits(self, tokens: Sequence[int]) -> np.ndarray: ...

    def tokenize(self, text: str) -> list[int]: ...


class LlamaCppModel:
    """llama.cpp (llama-cpp-python) as a :class:`LogitsModel`, for comparisons."""

    def __init__(self, path: str, n_ctx: int = 512, n_threads: Optional[int] = None) -> None:
        try:
            import llama_cpp
        except ImportError as err:
            raise ValueError("llama.cpp models need llama-cpp-python installed") from err
        self.llm = llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 512),
            n_threads=n_threads,
            logits_all=True,
            verbose=False,
        )
        self.n_ctx = n_ctx
        self.n_vocab = self.llm.n_vocab()
        bos = self.llm.token_bos()
        self.bos_id: Optional[int] = bos if bos >= 0 else None
        self.add_bos = bool(self.llm._model.add_bos_token()) if self.bos_id is not None else False

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=False))

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(tokens))
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)


class HFModel:
    """A Hugging Face causal LM directory (transformers + torch) as a :class:`LogitsModel`."""

    def __init__(self, path: str) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise ValueError(f"{path}: Hugging Face models need torch and transformers") from err
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        self.bos_id = self.tok.bos_token_id
        self.add_bos = bool(getattr(self.tok, "add_bos_token", False)) and self.bos_id is not None
        self.n_vocab = int(self.model.config.vocab_size)

    def tokenize(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return [self.bos_id, *ids] if self.add_bos else list(ids)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([list(tokens)])).logits[0]
        return out.float().numpy()


def load_model(spec: str, n_ctx: int = 512, n_threads: int = 0) -> Any:
    """``llama.cpp:FILE.gguf`` → llama.cpp; a directory → Hugging Face; else a GGUF (ours)."""
    if spec.startswith("llama.cpp:"):
        return LlamaCppModel(spec[len("llama.cpp:") :], n_ctx, n_threads or None)
    if Path(spec).is_dir():
        return HFModel(spec)
    from .runtime import Model

    return Model.load(spec, n_ctx=n_ctx, n_threads=n_threads)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def windows(
    tokens: Sequence[int], ctx: int, n_chunks: int, bos_id: Optional[int]
) -> list[list[int]]:
    """The evaluation windows (llama.cpp: BOS replaces each window's first token)."""
    if ctx < 4:
        raise ValueError(f"ctx must be at least 4 tokens, got {ctx}")
    available = len(tokens) // ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one window of {ctx}")
    n = available if n_chunks <= 0 else min(n_chunks, available)
    out = []
    for i in range(n):
        w = list(tokens[i * ctx : (i + 1) * ctx])
        if bos_id is not None:
            w[0] = bos_id
        out.append(w)
    return out


def evaluate(
    model: Any,
    text: str,
    ctx: int = 512,
    n_chunks: int = 0,
    ref: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity (and, with ``ref``, KL divergence and top-1 agreement) over ``text``.

    Returns ``{"ppl", "ppl_stderr", "tokens", "chunks", "ctx", "method"}``, plus ``"kld"``,
    ``"top1"`` and ``"ref_ppl"`` with a reference. ``n_chunks <= 0`` uses every window.
    """
    from tqdm import tqdm

    tokens = model.tokenize(text)
    bos = getattr(model, "bos_id", None) if getattr(model, "add_bos", False) else None
    wins = windows(tokens, ctx, n_chunks, bos)
    if ref is not None and getattr(ref, "n_vocab", None) not in (
        None,
        getattr(model, "n_vocab", None),
    ):
        raise ValueError(
            f"the reference has a vocabulary of {ref.n_vocab}, the model {model.n_vocab}"
        )
    first = ctx // 2
    nll: list[np.ndarray] = []
    ref_nll: list[np.ndarray] = []
    kld: list[np.ndarray] = []
    agree: list[np.ndarray] = []
    for w in tqdm(wins, desc="eval", unit="chunk", disable=not progress):
        target = np.asarray(w[first + 1 :])
        lp = _log_softmax(np.asarray(model.logits(w))[first : ctx - 1])
        nll.append(-lp[np.arange(len(target)), target])
        if ref is not None:
            rp = _log_softmax(np.asarray(ref.logits(w))[first : ctx - 1])
            ref_nll.append(-rp[np.arange(len(target)), target])
            kld.append((np.exp(rp) * (rp - lp)).sum(axis=-1))
            agree.append(rp.argmax(-1) == lp.argmax(-1))
    all_nll = np.concatenate(nll)
    mean = float(all_nll.mean())
    stderr = float(all_nll.std(ddof=1) / math.sqrt(len(all_nll))) if len(all_nll) > 1 else 0.0
    out: dict[str, Any] = {
        "ppl": math.exp(mean),
        "ppl_stderr": math.exp(mean) * stderr,
        "nll": mean,
        "tokens": len(all_nll),
        "chunks": len(wins),
        "ctx": ctx,
        "method": (
            f"llama.cpp perplexity: {len(wins)} non-overlapping windows of {ctx} tokens"
            f"{' (BOS first)' if bos is not None else ''}, second half scored "
            f"({ctx - first - 1} predictions per window)"
        ),
    }
    if ref is not None:
        out["kld"] = float(np.concatenate(kld).mean())
        out["top1"] = float(np.concatenate(agree).mean())
        out["ref_ppl"] = math.exp(float(np.concatenate(ref_nll).mean()))
    return out
