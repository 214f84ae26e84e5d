"""A ``tokenizers.Tokenizer`` built in memory from GGUF ``tokenizer.ggml.*`` metadata.

Only byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``) are supported: SmolLM2,
Llama 3, Qwen 2/3, Mistral-Nemo. The pre-tokenizer for each ``tokenizer.ggml.pre`` name is the
one in :mod:`ferroquant.tokenizer_io` (shared with ``export-hf``), so both agree.
"""

from __future__ import annotations

from typing import Any, Optional

from .tokenizer_io import CONTROL, NORMAL, USER_DEFINED, TokenizerError, _hf_pre_tokenizer


class GGUFTokenizer:
    """Encode/decode with the vocabulary stored in a GGUF file."""

    def __init__(self, meta: dict[str, Any], source: str = "GGUF") -> None:
        try:
            from tokenizers import AddedToken, Tokenizer, decoders, models
        except ImportError as err:
            raise TokenizerError(
                f"{source}: the 'tokenizers' package is needed to tokenize text "
                "(pip install tokenizers)"
            ) from err
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise TokenizerError(
                f"{source}: tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2'); "
                "evaluate token ids directly with Model.logits"
            )
        tokens = [str(t) for t in meta.get("tokenizer.ggml.tokens") or []]
        if not tokens:
            raise TokenizerError(f"{source}: no tokenizer.ggml.tokens")
        types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
        vocab = {t: i for i, t in enumerate(tokens)}
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        tk.pre_tokenizer = _hf_pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
        tk.decoder = decoders.ByteLevel()
        special = [
            AddedToken(tokens[i], special=True, normalized=False)
            for i, t in enumerate(types)
            if t == CONTROL
        ]
        user = [
            AddedToken(tokens[i], special=False, normalized=False)
            for i, t in enumerate(types)
            if t == USER_DEFINED
        ]
        tk.add_special_tokens(special)
        if user:
            tk.add_tokens(user)
        self.tokenizer = tk
        self.tokens = tokens
        self.n_vocab = len(tokens)

        def token_id(field: str) -> Optional[int]:
            v = meta.get(f"tokenizer.ggml.{field}_token_id")
            return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

        self.bos_id = token_id("bos")
        self.eos_id = token_id("eos")
        self.eot_id = token_id("eot")
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and (
            self.bos_id is not None
        )
        self.chat_template: Optional[str] = meta.get("tokenizer.chat_template")
        # Tokens that end a turn: EOS, EOT, and the usual chat end markers in the vocabulary.
        stops = {self.eos_id, self.eot_id}
        for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>"):
            if name in vocab:
                stops.add(vocab[name])
        self.stop_ids = {s for s in stops if s is not None}

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text``; a BOS in front when the GGUF asks for it and ``add_special``."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt for ``messages`` and an open assistant turn, from the GGUF's template.

        Uses jinja2 when installed; otherwise understands ChatML templates
        (``<|im_start|>role ... <|im_end|>``), the format of SmolLM2 and Qwen.
        """
        template = self.chat_template
        if not template:
            raise TokenizerError("this GGUF has no tokenizer.chat_template")
        try:
            import jinja2
        except ImportError:
            jinja2 = None
        if jinja2 is not None:
            env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
            bos = self.tokens[self.bos_id] if self.bos_id is not None else ""
            eos = self.tokens[self.eos_id] if self.eos_id is not None else ""
            return env.from_string(template).render(
                messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
            )
        if "<|im_start|>" not in template:
            raise TokenizerError("the chat template needs jinja2 (pip install jinja2)")
        parts = []
        if messages and messages[0]["role"] != "system" and "You are" in template:
            # SmolLM2's template inserts its default system prompt; keep it when we can find it.
            start = template.find("<|im_start|>system\n")
            end = template.find("<|im_end|>", start)
            if start >= 0 and end > start:
                parts.append(template[start:end] + "<|im_end|>\n")
        for m in messages:
            parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        parts.append("<|im_start|>assistant\n")
        return "".join(parts)
