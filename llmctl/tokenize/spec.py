"""--tokenizer: the one resolver of what users pass for a tokenizer, and loading it.

Accepted everywhere (tokenize encode/stats/show, pretrain): a tokenizer or model name from the registry
(a model gives its tokenizer, an adapter its base model's, a data entry the tokenizer it was encoded
with), a folder with tokenizer files, a tokenizer.json file, or a tokenized data dir.

Examples:
    name, folder = tokenizer_folder("shakespeare-bpe")
    ref = load_tokenizer_spec("data/shakespeare")     # the tokenizer the data was encoded with
    ref.backend.encode("hi").ids
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import LlmctlError, first_line

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_HINT = (
    "give a tokenizer or model name from `llmctl models list`, a folder with tokenizer.json, "
    "a tokenizer.json file or a tokenized data dir"
)


@dataclass
class TokenizerRef:
    """A loaded tokenizer and where it came from.

    Examples:
        ref = load_tokenizer_spec("shakespeare-bpe"); ref.backend.encode("hi").ids
    """

    label: str
    name: str | None
    path: str
    fast: object  # transformers tokenizer, when it had to be loaded through transformers
    backend: object  # tokenizers.Tokenizer
    vocab_size: int
    eos_id: int | None
    unk_id: int | None
    sha256: str

    def json(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "unk_id": self.unk_id,
            "sha256": self.sha256,
        }


def _refused(spec: str, why: str) -> LlmctlError:
    return LlmctlError(f"--tokenizer {spec!r}: {why}", hint=_HINT)


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def _recorded_tokenizer(spec: str, data_dir: Path) -> tuple[str | None, Path]:
    """The tokenizer a data dir was encoded with: its recorded folder, else its registry name."""
    from llmctl.data.token_data import INDEX, read_index, recorded_tokenizer

    rec = read_index(data_dir)["tokenizer"]
    name, folder = recorded_tokenizer(rec)
    if folder is not None:
        return name, folder
    raise _refused(spec, f"the tokenizer recorded in {data_dir / INDEX} ({rec['path']}) is missing")


def tokenizer_folder(spec: str) -> tuple[str | None, Path]:
    """(registry name or None, folder with tokenizer files) for a --tokenizer value; one error for all misses.

    Examples:
        tokenizer_folder("shakespeare-bpe")            # ("shakespeare-bpe", Path(".../models/shakespeare-bpe"))
        tokenizer_folder("tok/tokenizer.json")         # (None, Path("/abs/tok"))
        tokenizer_folder("data/shakespeare")           # the tokenizer recorded in its index.json
    """
    from llmctl.data.token_data import is_data_dir
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model

    path = Path(spec).expanduser()
    if path.is_file():
        if path.name == "tokenizer.json":
            return None, path.parent.resolve()
        raise _refused(spec, f"{path} is a file, not tokenizer.json")
    if is_data_dir(path):
        return _recorded_tokenizer(spec, path)
    try:
        resolved = resolve_model(spec, registry=Registry(), allow_network=False)
    except LlmctlError as exc:
        raise _refused(spec, exc.message) from exc
    fmt, folder = resolved.format, Path(resolved.path)
    if fmt == "data":
        return _recorded_tokenizer(spec, folder)
    if fmt == "gguf":
        raise LlmctlError(
            f"--tokenizer {spec!r} is a GGUF file",
            hint="import it first (`llmctl models import FILE.gguf`) and pass the model name",
        )
    if fmt == "peft-adapter" and not _has_tokenizer_files(folder) and resolved.parents:
        return tokenizer_folder(resolved.parents[0])
    if not _has_tokenizer_files(folder):
        raise _refused(spec, f"{resolved.label} has no tokenizer files in {folder}")
    return resolved.name, folder.resolve()


def _special(config: dict, role: str) -> str | None:
    value = config.get(f"{role}_token")
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _configured_roles(folder: Path) -> dict:
    """{role: token} for bos/eos/unk/pad from special_tokens_map.json / tokenizer_config.json (unreadable: skipped)."""
    roles: dict = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        f = folder / fname
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if not isinstance(data, dict):
                continue
            for role in ("bos", "eos", "unk", "pad"):
                roles[role] = _special(data, role) or roles.get(role)
    return roles


def _load_backend(folder: Path, roles: dict):
    """(transformers tokenizer or None, tokenizers.Tokenizer, sha256) of the tokenizer in folder."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(tj))
        except Exception as exc:  # tokenizers raises plain Exceptions for damaged files
            raise LlmctlError(
                f"cannot read {tj} ({first_line(exc)})",
                hint="the file may be damaged; re-create the tokenizer with `llmctl tokenize train`",
            ) from exc
        return None, backend, hashlib.sha256(tj.read_bytes()).hexdigest()
    import logging

    from transformers import AutoTokenizer

    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    try:
        fast = AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many kinds for unusable folders
        raise LlmctlError(
            f"cannot load the tokenizer in {folder} ({first_line(exc)})",
            hint="the folder needs tokenizer.json (see `llmctl tokenize train`)",
        ) from exc
    if not getattr(fast, "is_fast", False):
        raise LlmctlError(
            f"the tokenizer in {folder} has no fast (Rust) version", hint="use a tokenizer with tokenizer.json"
        )
    for role in ("bos", "eos", "unk", "pad"):
        roles[role] = getattr(fast, f"{role}_token", None) or roles.get(role)
    backend = fast.backend_tokenizer
    return fast, backend, hashlib.sha256(backend.to_str().encode()).hexdigest()


def load_tokenizer_spec(spec: str) -> TokenizerRef:
    """Load --tokenizer (see tokenizer_folder for what it may be).

    A folder with tokenizer.json is read with `tokenizers` directly (fast start); others go through
    transformers' AutoTokenizer (e.g. folders with only vocab.json/merges.txt).

    Examples:
        load_tokenizer_spec("shakespeare-bpe").vocab_size
    """
    name, folder = tokenizer_folder(spec)
    roles = _configured_roles(folder)
    fast, backend, sha = _load_backend(folder, roles)
    ids = {role: (backend.token_to_id(tok) if tok else None) for role, tok in roles.items()}
    return TokenizerRef(
        label=name or str(folder),
        name=name,
        path=str(folder.resolve()),
        fast=fast,
        backend=backend,
        vocab_size=backend.get_vocab_size(with_added_tokens=True),
        eos_id=ids.get("eos"),
        unk_id=ids.get("unk"),
        sha256=sha,
    )
