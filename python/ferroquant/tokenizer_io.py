"""Tokenizers between Hugging Face files and GGUF ``tokenizer.ggml.*`` metadata.

HF -> GGUF follows ``convert_hf_to_gguf.py``: BPE vocabularies (``tokenizer.json``) are written
as ``gpt2`` with the pre-tokenizer name llama.cpp recognises (found, as llama.cpp does, from a
hash of the token ids of a probe string), SentencePiece ones (``tokenizer.model``) as
``llama`` with scores; special tokens, merges, add_bos/add_eos and the chat template come
from gguf-py's :class:`gguf.SpecialVocab`. Nothing here imports torch or transformers.

GGUF -> HF builds a ``tokenizer.json`` with the ``tokenizers`` library.
"""

from __future__ import annotations

import json
import logging
from hashlib import sha256
from pathlib import Path
from typing import Any, Optional

import gguf

log = logging.getLogger(__name__)


class TokenizerError(ValueError):
    """A tokenizer that cannot be converted; the message names the file and the problem."""


# The probe text of llama.cpp's get_vocab_base_pre (convert_hf_to_gguf_update.py).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(token ids of CHKTXT)) -> tokenizer.ggml.pre, for the families ferroquant
# converts (a subset of llama.cpp's table in convert_hf_to_gguf.py).
PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}

# The split regexes of the HF pre-tokenizers behind those names (tokenizer.json).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# gguf.TokenType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"{path}: cannot read ({err})") from err


def looks_special(token: str) -> bool:
    """``TextModel.does_token_look_special``."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _pre_from_structure(tj: dict[str, Any]) -> Optional[str]:
    """The pre-tokenizer name from the structure of tokenizer.json (when hashing is impossible)."""
    pre = tj.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"]:
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex == LLAMA3_REGEX:
            return "llama-bpe"
        if regex == QWEN2_REGEX:
            return "qwen2"
    return None


def bpe_pre_name(model_dir: Path) -> str:
    """tokenizer.ggml.pre for a BPE tokenizer.json, as llama.cpp's converter would pick it."""
    path = model_dir / "tokenizer.json"
    try:
        from tokenizers import Tokenizer
    except ImportError:
        Tokenizer = None
    if Tokenizer is not None:
        try:
            ids = Tokenizer.from_file(str(path)).encode(CHKTXT).ids
        except Exception as err:  # the tokenizers library raises its own exception type
            raise TokenizerError(f"{path}: cannot load with tokenizers ({err})") from err
        found = PRE_BY_HASH.get(sha256(str(ids).encode()).hexdigest())
        if found:
            return found
    found = _pre_from_structure(_read_json(path))
    if found:
        return found
    raise TokenizerError(
        f"{path}: BPE pre-tokenizer not recognised; known: {', '.join(sorted(set(PRE_BY_HASH.values())))}"
    )


def bpe_vocab(model_dir: Path, vocab_size: Optional[int]) -> tuple[list[str], list[int]]:
    """Tokens and token types of a tokenizer.json, as ``TextModel.get_vocab_base``."""
    path = model_dir / "tokenizer.json"
    tj = _read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"{path}: not a BPE tokenizer (model type {model.get('type')!r})")
    if model.get("byte_fallback"):
        raise TokenizerError(
            f"{path}: a SentencePiece-style BPE (byte_fallback); convert needs its tokenizer.model"
        )
    reverse: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added: dict[str, dict[str, Any]] = {}
    for entry in tj.get("added_tokens", []):
        reverse[int(entry["id"])] = entry["content"]
        added[entry["content"]] = entry
    n = int(vocab_size) if vocab_size else max(reverse) + 1
    if max(reverse) >= n:
        raise TokenizerError(f"{path}: token id {max(reverse)} >= vocab_size {n} of config.json")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        if token in added:
            if added[token].get("special") or looks_special(token):
                types.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)
    return tokens, types


def spm_vocab(
    model_dir: Path, vocab_size: Optional[int]
) -> tuple[list[bytes], list[float], list[int]]:
    """``TextModel._create_vocab_sentencepiece`` (needs the sentencepiece package)."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError as err:
        raise TokenizerError(
            f"{model_dir / 'tokenizer.model'}: the sentencepiece package is needed for it"
        ) from err
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(model_dir / "tokenizer.model"))
    except Exception as err:  # sentencepiece raises OSError or RuntimeError
        raise TokenizerError(f"{model_dir / 'tokenizer.model'}: cannot load ({err})") from err
    n = int(vocab_size or sp.vocab_size())
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(min(n, sp.vocab_size())):
        t = NORMAL
        if sp.IsUnknown(i):
            t = UNKNOWN
        elif sp.IsControl(i):
            t = CONTROL
        elif sp.IsUnused(i):
            t = UNUSED
        elif sp.IsByte(i):
            t = BYTE
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = float(sp.GetScore(i))
        types[i] = t
    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for key, i in _read_json(added_file).items():
            if int(i) < n:
                tokens[int(i)], scores[int(i)], types[int(i)] = key.encode(), -1000.0, USER_DEFINED
    cfg_file = model_dir / "tokenizer_config.json"
    if cfg_file.is_file():
        for key, data in (_read_json(cfg_file).get("added_tokens_decoder") or {}).items():
            i = int(key)
            if i >= n:
                continue
            content = data["content"]
            if data.get("special") or looks_special(content):
                types[i] = CONTROL
            else:
                content = content.replace("\u2581", " ")
                types[i] = USER_DEFINED
            scores[i] = -1000.0
            tokens[i] = content.encode("utf-8")
    return tokens, scores, types


def add_hf_vocab(
    w: gguf.GGUFWriter, model_dir: Path, gguf_arch: str, config: dict[str, Any]
) -> str:
    """Write the tokenizer metadata of ``model_dir``; returns the tokenizer model name."""
    vocab_size = config.get("vocab_size")
    has_spm = (model_dir / "tokenizer.model").is_file()
    has_json = (model_dir / "tokenizer.json").is_file()
    if not (has_spm or has_json):
        raise TokenizerError(f"{model_dir}: no tokenizer.json or tokenizer.model")
    tok_cfg_file = model_dir / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_file) if tok_cfg_file.is_file() else {}
    if gguf_arch == "llama" and tok_cfg.get("add_prefix_space") is not None:
        w.add_add_space_prefix(bool(tok_cfg["add_prefix_space"]))
    if has_spm:
        tokens, scores, types = spm_vocab(model_dir, vocab_size)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
        kind = "llama"
    else:
        tokens_s, types = bpe_vocab(model_dir, vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(bpe_pre_name(model_dir))
        w.add_token_list(tokens_s)
        w.add_token_types(types)
        gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(w, quiet=True)
        kind = "gpt2"
    if gguf_arch == "llama" and int(vocab_size or 0) == 49152:
        # LlamaModel.set_vocab: the granite/SmolLM 49152-token vocab never adds BOS
        w.kv_data[0].pop(gguf.Keys.Tokenizer.ADD_BOS, None)
        w.add_add_bos_token(False)
    if gguf_arch in ("gemma2", "gemma3") and has_spm:
        w.add_add_space_prefix(False)
    return kind


# ---- GGUF -> HF -------------------------------------------------------------------------


def _hf_pre_tokenizer(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt-2", "gpt2", "default", "phi-2"):
        return byte_level
    regex = {"llama-bpe": LLAMA3_REGEX, "llama3": LLAMA3_REGEX, "qwen2": QWEN2_REGEX}.get(pre)
    if regex is None:
        raise TokenizerError(f"GGUF pre-tokenizer {pre!r} cannot be exported yet")
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def write_hf_tokenizer(meta: dict[str, Any], out_dir: Path, context_length: int) -> dict[str, Any]:
    """Write tokenizer.json + tokenizer_config.json from GGUF metadata; returns the special ids.

    ``meta`` maps GGUF keys to values (full arrays). Only ``gpt2`` (byte-level BPE) vocabularies
    are supported.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerError(f"GGUF tokenizer model {kind!r} cannot be exported (only gpt2 BPE)")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise TokenizerError("GGUF token list holds duplicate tokens")
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = _hf_pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
    tk.decoder = decoders.ByteLevel()

    def special_id(field: str) -> Optional[int]:
        v = meta.get(f"tokenizer.ggml.{field}_token_id")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    ids = {
        name: special_id(field)
        for name, field in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))
    }
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and ids["bos"] is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and ids["eos"] is not None
    specials = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i, t in enumerate(types)
        if t == CONTROL
    ]
    users = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i, t in enumerate(types)
        if t == USER_DEFINED
    ]
    tk.add_special_tokens(specials)
    if users:
        tk.add_tokens(users)
    if add_bos or add_eos:
        bos, eos = tokens[ids["bos"]] if add_bos else None, tokens[ids["eos"]] if add_eos else None
        single = " ".join(
            [x for x in (f"{bos}:0" if bos else None, "$A:0", f"{eos}:0" if eos else None) if x]
        )
        pair = " ".join(
            [
                x
                for x in (
                    f"{bos}:0" if bos else None,
                    "$A:0",
                    f"{eos}:0" if eos else None,
                    f"{bos}:1" if bos else None,
                    "$B:1",
                    f"{eos}:1" if eos else None,
                )
                if x
            ]
        )
        st = [(t, vocab[t]) for t in (bos, eos) if t]
        tk.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=single, pair=pair, special_tokens=st),
            ]
        )
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.save(str(out_dir / "tokenizer.json"))

    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(context_length),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        "added_tokens_decoder": {
            str(i): {
                "content": tokens[i],
                "special": t == CONTROL,
                "normalized": False,
                "lstrip": False,
                "rstrip": False,
                "single_word": False,
            }
            for i, t in enumerate(types)
            if t in (CONTROL, USER_DEFINED)
        },
    }
    for name in ("bos", "eos", "unk", "pad"):
        if ids[name] is not None:
            cfg[f"{name}_token"] = tokens[ids[name]]
    template = meta.get("tokenizer.chat_template")
    if template:
        cfg["chat_template"] = template
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    special_map = {f"{k}_token": tokens[v] for k, v in ids.items() if v is not None}
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return ids
