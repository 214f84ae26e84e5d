"""Run GGUF models on the CPU: ``Model.load(path)``, ``.tokenize``, ``.logits``, ``.generate``,
and ``.collect_activation_stats`` (the importance-matrix statistic).

:mod:`ferroquant.gguf_header` reads the container (metadata, tensor table); the Rust runtime
memory-maps the file and runs the whole forward pass (embedding, RMSNorm, rotary with the file's
scaling, grouped-query attention over an f16 KV cache, SwiGLU MLP, output head) once per step,
reading the quantized weights in place with llama.cpp's numerics (activations converted to each
weight type's ggml ``vec_dot_type``, integer dot products). Architectures: llama (Llama,
Mistral, SmolLM2), qwen2, qwen3.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from gguf import GGUFValueType

from . import _native
from .gguf_header import GGUFHeader, read_header
from .gguf_io import GGUFError

PathLike = Union[str, Path]

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_CTX = 2048
# Prompt tokens per forward call: large enough that each weight block is reused across many
# tokens, small enough to bound the activation buffers.
N_BATCH = 512


class ModelError(ValueError):
    """A model that cannot be run, or a request it cannot serve; the message says why."""


# llama.cpp's rope scaling types, as the numbers the Rust side takes (rope.scaling.type_id).
ROPE_SCALING_TYPES = {"none": 0.0, "linear": 1.0, "yarn": 2.0}


def _hparams(header: GGUFHeader, arch: str) -> dict[str, float]:
    out: dict[str, float] = {}
    prefix = f"{arch}."
    for key, (vtype, _sub, value) in header.kv.items():
        if not key.startswith(prefix) or vtype in (GGUFValueType.ARRAY, GGUFValueType.STRING):
            continue
        if isinstance(value, (int, float, bool)):
            out[key[len(prefix) :]] = float(value)
    scaling = header.value(f"{arch}.rope.scaling.type")
    if scaling is not None:
        kind = str(scaling)
        if kind not in ROPE_SCALING_TYPES:
            raise ModelError(
                f"{header.path}: rope scaling {kind!r} is not supported "
                f"(supported: {', '.join(ROPE_SCALING_TYPES)})"
            )
        out["rope.scaling.type_id"] = ROPE_SCALING_TYPES[kind]
    return out


def _tokenizer_meta(header: GGUFHeader) -> dict[str, Any]:
    return {key: v[2] for key, v in header.kv.items() if key.startswith("tokenizer.")}


class Model:
    """A GGUF model on the CPU with its KV cache. Not thread-safe: one sequence at a time."""

    def __init__(
        self,
        native: Any,
        path: Path,
        arch: str,
        meta: dict[str, Any],
        weight_bytes: int,
    ) -> None:
        self._rt = native
        self.path = path
        self.arch = arch
        self._meta = meta
        self._tokenizer: Any = None
        self.weight_bytes = weight_bytes

    @classmethod
    def load(cls, path: PathLike, n_ctx: Optional[int] = None, n_threads: int = 0) -> Model:
        """Open ``path``, check every tensor against the architecture, map the weights.

        ``n_ctx``: KV cache positions (default: the training context, at most 2048).
        ``n_threads``: 0 uses every core.
        """
        path = Path(path)
        header = read_header(path)
        arch = str(header.value("general.architecture", ""))
        if arch not in SUPPORTED_ARCHS:
            raise ModelError(
                f"{path}: architecture {arch!r} is not supported by the runtime "
                f"(supported: {', '.join(SUPPORTED_ARCHS)})"
            )
        hparams = _hparams(header, arch)
        tensors = [
            (t.name, int(t.qtype), [int(v) for v in reversed(t.shape)], int(t.offset))
            for t in header.tensors
        ]
        if "vocab_size" not in hparams:
            embd = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
            if embd is None:
                raise ModelError(f"{path}: missing tensor 'token_embd.weight'")
            hparams["vocab_size"] = float(int(embd.shape[0]))
        train_ctx = int(hparams.get("context_length", DEFAULT_CTX))
        ctx = int(n_ctx) if n_ctx else min(train_ctx, DEFAULT_CTX)
        if ctx <= 0:
            raise ModelError(f"n_ctx must be positive, got {ctx}")
        meta = _tokenizer_meta(header)
        weight_bytes = sum(int(t.n_bytes) for t in header.tensors)
        del header
        try:
            native = _native.Runtime(str(path), arch, hparams, tensors, ctx, int(n_threads))
        except NotImplementedError as err:
            raise ModelError(str(err)) from err
        return cls(native, path, arch, meta, weight_bytes)

    # ---- properties ------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return int(self._rt.n_ctx)

    @property
    def n_vocab(self) -> int:
        return int(self._rt.vocab)

    @property
    def n_threads(self) -> int:
        return int(self._rt.n_threads)

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of weights read to generate one token (all matrices + one embedding row)."""
        return int(self._rt.weight_bytes_per_token)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from .tokenizer_gguf import GGUFTokenizer

            self._tokenizer = GGUFTokenizer(self._meta, source=str(self.path))
        return self._tokenizer

    @property
    def bos_id(self) -> Optional[int]:
        return self.tokenizer.bos_id

    @property
    def add_bos(self) -> bool:
        return bool(self.tokenizer.add_bos)

    # ---- text ------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` (with BOS first when the GGUF asks for it)."""
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special=skip_special)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages)

    # ---- compute ---------------------------------------------------------------------------

    def _check_tokens(self, tokens: Sequence[int]) -> list[int]:
        ids = [int(t) for t in tokens]
        if not ids:
            raise ModelError("no tokens to evaluate (empty prompt)")
        if len(ids) > self.n_ctx:
            raise ModelError(
                f"{len(ids)} tokens do not fit the context of {self.n_ctx} tokens "
                "(load the model with a larger n_ctx or shorten the input)"
            )
        bad = next((t for t in ids if t < 0 or t >= self.n_vocab), None)
        if bad is not None:
            raise ModelError(f"token id {bad} is out of range (vocabulary of {self.n_vocab})")
        return ids

    def _eval(self, ids: list[int], all_logits: bool) -> np.ndarray:
        outs = []
        for start in range(0, len(ids), N_BATCH):
            chunk = ids[start : start + N_BATCH]
            last = start + N_BATCH >= len(ids)
            out = self._rt.forward(chunk, all_logits)
            if all_logits or last:
                outs.append(out)
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits ``(n_tokens, vocab)`` of a sequence evaluated from an empty context."""
        ids = self._check_tokens(tokens)
        self._rt.reset()
        return self._eval(ids, all_logits=True)

    def reset(self) -> None:
        self._rt.reset()

    def eval_next(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` to the cached sequence; the logits of the last one ``(vocab,)``."""
        ids = [int(t) for t in tokens]
        if self._rt.n_past + len(ids) > self.n_ctx:
            raise ModelError(
                f"{self._rt.n_past} cached + {len(ids)} new tokens exceed the context of "
                f"{self.n_ctx} tokens"
            )
        return self._eval(ids, all_logits=False)[-1]

    def collect_activation_stats(
        self,
        token_windows: Sequence[Sequence[int]],
        progress: bool = False,
    ) -> dict[str, tuple[np.ndarray, int]]:
        """The importance-matrix statistic of llama.cpp's ``llama-imatrix``.

        Each window of token ids is evaluated from an empty context (in batches of
        ``N_BATCH``; the head's input is counted for every token); for every weight matrix
        the input ``x`` of its product is accumulated as ``sums[j] += x[j]**2`` over all
        tokens. Returns ``{tensor name: (sums, count)}``: ``sums`` a float64 array of one value
        per input column (the matrix's row length), ``count`` the number of tokens that went
        through it. Names are GGUF tensor names (``blk.0.attn_q.weight``, ...,
        ``output.weight`` when the head is not tied to the embedding); ``attn_q/k/v`` share
        one input, as do ``ffn_gate``/``ffn_up``. Divide by ``count`` for the mean squared
        activation (what GGUF imatrix files store per column, times ``count``).
        """
        windows = [self._check_tokens(w) for w in token_windows]
        if not windows:
            raise ModelError("no token windows to collect statistics over")
        self._rt.collect_stats(True)
        try:
            from tqdm import tqdm

            for w in tqdm(windows, desc="imatrix", unit="window", disable=not progress):
                self._rt.reset()
                self._eval(w, all_logits=False)
            raw = self._rt.take_stats()
        finally:
            self._rt.collect_stats(False)
            self._rt.reset()
        return {name: (np.asarray(v, dtype=np.float64), int(n)) for name, (v, n) in raw.items()}

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: Optional[int] = None,
        stop_ids: Optional[set[int]] = None,
    ) -> Iterator[int]:
        """Generated token ids, one at a time; stops at a stop token or a full context."""
        ids = self._check_tokens(prompt_ids)
        sampler = _native.Sampler(
            int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        )
        self._rt.reset()
        logits = self._eval(ids, all_logits=False)[-1]
        for _ in range(int(max_tokens)):
            tok = int(sampler.sample(np.ascontiguousarray(logits), temperature, top_k, top_p))
            if stop_ids and tok in stop_ids:
                return
            yield tok
            if self._rt.n_past >= self.n_ctx:
                return
            logits = self._rt.forward([tok], False)[-1]

    def generate(
        self,
        prompt: str,
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: Optional[int] = None,
        chat: bool = False,
    ) -> Iterator[str]:
        """Stream the text generated after ``prompt`` piece by piece.

        ``temperature <= 0`` is greedy. With ``chat``, the prompt is a user message wrapped in
        the GGUF's chat template. An empty prompt starts from BOS (an error if there is none);
        a prompt longer than the context is an error.
        """
        tk = self.tokenizer
        text = self.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
        ids = tk.encode(text)
        if not ids:
            if tk.bos_id is None:
                raise ModelError("empty prompt, and the model has no BOS token to start from")
            ids = [tk.bos_id]
        if len(ids) >= self.n_ctx:
            raise ModelError(
                f"the prompt is {len(ids)} tokens, the context holds {self.n_ctx}: "
                "no room to generate"
            )
        out: list[int] = []
        emitted = ""
        for tok in self.generate_ids(
            ids, max_tokens, temperature, top_k, top_p, seed, stop_ids=tk.stop_ids
        ):
            out.append(tok)
            text = tk.decode(out)
            # Hold back an incomplete UTF-8 sequence until its last byte arrives.
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(emitted) and text.startswith(emitted):
                yield text[len(emitted) :]
                emitted = text
        text = tk.decode(out)
        if len(text) > len(emitted) and text.startswith(emitted):
            yield text[len(emitted) :]


__all__ = ["GGUFError", "Model", "ModelError"]
