"""An HF tokenizer as GGUF vocabulary keys: tokens with types, merges, pre-tokenizer, special ids, chat template.

llama.cpp runs byte-level BPE vocabularies as `tokenizer.ggml.model = gpt2`; the pre-tokenizer (the regex that
splits text before BPE) is named by `tokenizer.ggml.pre`. Facts here follow llama.cpp's convert_hf_to_gguf.py
(get_vocab_base / get_vocab_base_pre) and the default model's own GGUF file (pre `smollm`, add_bos false).

Examples:
    vocab = gguf_vocab(tokenizer, vocab_size=model.config.vocab_size)
    vocab.pre                  # "smollm" for SmolLM2, "gpt-2" for llmctl-trained byte-level BPE
    vocab.add_to(writer)       # a gguf.GGUFWriter
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import sha256

from llmctl.errors import LlmctlError

SUPPORTED_TOKENIZERS = "byte-level BPE (GPT-2 style: llmctl-trained BPE, SmolLM2, GPT-2, LLaMA 3)"

# llama.cpp names a BPE pre-tokenizer by sha256(str(token ids of this text)); text and hashes are copied as facts
# from convert_hf_to_gguf.py get_vocab_base_pre (the hash also depends on the vocabulary, so it names a model family).
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "  # noqa: RUF001 (llama.cpp's text, verbatim)
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_BY_HASH = {
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",  # bigcode/starcoder2-3b
}
_TOKEN_TYPES = {"normal": 1, "control": 3, "user_defined": 4, "unused": 5}  # gguf.TokenType values


@dataclass
class GGUFVocab:
    """The vocabulary keys of a GGUF file (see `gguf_vocab`).

    Examples:
        gguf_vocab(tokenizer).add_to(writer)
    """

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | list | None = None

    def add_to(self, writer) -> None:
        """Write the vocabulary keys into a gguf.GGUFWriter."""
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        writer.add_token_merges(self.merges)
        for role, token_id in self.special_ids.items():
            getattr(writer, f"add_{role}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def gguf_vocab(tokenizer, vocab_size: int | None = None, chat_template: str | None = None, config=None) -> GGUFVocab:
    """The GGUF vocabulary of an HF fast tokenizer; LlmctlError when llama.cpp cannot run it the same way.

    vocab_size pads the token list with unused `[PADn]` entries up to the model's embedding rows (as llama.cpp
    does); chat_template replaces the tokenizer's own template (e.g. the template a finetune was trained with);
    config supplies special ids the tokenizer lacks.

    Examples:
        gguf_vocab(AutoTokenizer.from_pretrained(d), vocab_size=49152).pre   # "smollm"
    """
    spec = _backend_spec(tokenizer)
    _check_byte_level_bpe(spec)
    tokens, types = _tokens_and_types(tokenizer, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges") or []]
    ids = {}
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is None and config is not None:
            token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            ids[role] = token_id
    add_bos, add_eos = _adds_special(tokenizer, ids)
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: GGUF stores them as tokenizer.chat_template.NAME
        template = [{"name": k, "template": v} for k, v in template.items()]
    return GGUFVocab(
        tokens=tokens,
        types=types,
        merges=merges,
        pre=pre_tokenizer_name(tokenizer, spec),
        special_ids=ids,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template or None,
    )


def _backend_spec(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise LlmctlError(
            f"tokenizer {type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer, "
            "so it cannot be written to GGUF",
            hint=f"GGUF export supports {SUPPORTED_TOKENIZERS}",
        )
    return json.loads(backend.to_str())


def _pieces(spec: dict | None) -> list[dict]:
    """A pre-tokenizer/normalizer spec flattened: a Sequence's members, else the one piece, else nothing."""
    if not spec:
        return []
    members = spec.get("pretokenizers") or spec.get("normalizers")
    return members if spec.get("type") == "Sequence" and members is not None else [spec]


def _check_byte_level_bpe(spec: dict) -> None:
    model = spec.get("model") or {}
    pre = _pieces(spec.get("pre_tokenizer"))
    byte_level = [p for p in pre if p.get("type") == "ByteLevel"]
    if model.get("type") != "BPE" or not byte_level:
        kind = f"{model.get('type', 'unknown')} with pre-tokenizer " + (
            "+".join(p.get("type", "?") for p in pre) or "none"
        )
        raise LlmctlError(
            f"tokenizer kind {kind} cannot be written to GGUF", hint=f"GGUF export supports {SUPPORTED_TOKENIZERS}"
        )
    if any(p.get("add_prefix_space") for p in byte_level):
        raise LlmctlError(
            "tokenizer adds a prefix space (ByteLevel add_prefix_space=true), which llama.cpp's BPE does not do",
            hint=f"GGUF export supports {SUPPORTED_TOKENIZERS} without it",
        )
    norms = [n.get("type") for n in _pieces(spec.get("normalizer"))]
    if any(n != "NFC" for n in norms):  # llama.cpp's BPE applies no normalizer (NFC is a no-op on most text)
        raise LlmctlError(
            f"tokenizer normalizer {'+'.join(norms)} has no llama.cpp equivalent",
            hint=f"GGUF export supports {SUPPORTED_TOKENIZERS} without a normalizer",
        )


def pre_tokenizer_name(tokenizer, spec: dict | None = None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer: by llama.cpp's hash, else by structure.

    Examples:
        pre_tokenizer_name(smollm2_tokenizer)   # "smollm"
        pre_tokenizer_name(llmctl_bpe)          # "gpt-2"
    """
    spec = spec or _backend_spec(tokenizer)
    for special in (True, False):  # llama.cpp hashes encode() as is; a converted tokenizer may add a BOS it lacked
        ids = tokenizer.encode(_CHKTXT, add_special_tokens=special)
        name = _PRE_BY_HASH.get(sha256(str(ids).encode()).hexdigest())
        if name:
            return name
    pieces = [
        {k: v for k, v in p.items() if k in ("type", "individual_digits", "use_regex")}
        for p in _pieces(spec.get("pre_tokenizer"))
    ]
    # Structures whose regexes llama.cpp implements exactly (llama-vocab.cpp): GPT-2's, and digits split one by
    # one before GPT-2's (its "smollm"/"starcoder" pre-tokenizers).
    if pieces == [{"type": "ByteLevel", "use_regex": True}]:
        return "gpt-2"
    if pieces == [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]:
        return "smollm"
    shown = "+".join(p.get("type", "?") for p in pieces)
    raise LlmctlError(
        f"tokenizer pre-tokenizer {shown} is not one llama.cpp implements as far as llmctl knows",
        hint="GGUF export supports byte-level BPE with GPT-2's split rules (optionally digits split "
        "one by one) or the vocabularies of gpt2, SmolLM, LLaMA 3, Qwen2, StarCoder2",
    )


def _looks_special(token: str) -> bool:
    # convert_hf_to_gguf's does_token_look_special: some models mark <|...|> control tokens as not special
    return token.startswith("<|") and token.endswith("|>")


def _tokens_and_types(tokenizer, vocab_size: int | None) -> tuple[list[str], list[int]]:
    vocab = tokenizer.get_vocab()
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    by_id = {i: t for t, i in vocab.items()}
    size = max(by_id) + 1
    if vocab_size is not None:
        if size > vocab_size:
            raise LlmctlError(
                f"tokenizer has ids up to {size - 1} but the model's vocabulary has {vocab_size} rows",
                hint="export a model whose embeddings were resized to its tokenizer",
            )
        size = vocab_size
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:  # a hole (e.g. embeddings padded to a multiple of 64): llama.cpp's [PADn], unused
            tokens.append(f"[PAD{i}]")
            types.append(_TOKEN_TYPES["unused"])
            continue
        tokens.append(token)
        if token in added:
            special = (decoder[i].special if i in decoder else False) or _looks_special(token)
            types.append(_TOKEN_TYPES["control" if special else "user_defined"])
        else:
            types.append(_TOKEN_TYPES["normal"])
    return tokens, types


def _adds_special(tokenizer, ids: dict[str, int]) -> tuple[bool, bool]:
    """Whether encoding prepends BOS / appends EOS, read from what the tokenizer does (not from its config)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    extra = len(full) - len(plain)
    add_bos = extra > 0 and "bos" in ids and full[0] == ids["bos"] and full[1 : 1 + len(plain)] == plain
    add_eos = extra > 0 and "eos" in ids and full[-1] == ids["eos"] and full[-1 - len(plain) : -1] == plain
    return add_bos, add_eos
