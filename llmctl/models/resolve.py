"""Turn what a user passes as `--model` into something loadable: a registry name, a path or a hub id.

Examples:
    resolve_model("smollm2-135m-instruct")   # registry entry (the default converts on first use)
    resolve_model("./runs/my-model")          # a local folder
    resolve_model("HuggingFaceTB/SmolLM2-135M", allow_network=True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.models import formats
from llmctl.models.default import ALIASES
from llmctl.models.registry import ModelEntry, Registry


@dataclass
class ResolvedModel:
    """A model ready to load: where it is, what format, and its registry entry if any.

    Examples:
        r = resolve_model("tiny"); r.path, r.format, r.name
    """

    path: str
    format: str
    name: str | None = None
    entry: ModelEntry | None = None
    parents: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name or self.path


def network_allowed() -> bool:
    """Hub downloads happen only when the user opts in with LLMCTL_ALLOW_NETWORK=1."""
    return os.environ.get("LLMCTL_ALLOW_NETWORK", "") in ("1", "true", "yes")


def resolve_model(spec: str, registry: Registry | None = None, allow_network: bool | None = None) -> ResolvedModel:
    """Resolve --model: registry name, then local path, then the built-in default, then hub id."""
    from llmctl.models.importer import ensure_default_model

    if not spec or not spec.strip():
        raise LlmctlError("--model is empty", hint="give a registry name (see `llmctl models list`) or a path")
    registry = registry or Registry()
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and Path(spec).expanduser().exists()
    if not looks_like_path:
        entry = registry.find(spec)
        if entry is None and spec in ALIASES:
            entry = ensure_default_model(registry)
        if entry is not None:
            return from_entry(entry)
    path = Path(spec).expanduser()
    if path.exists():
        return ResolvedModel(path=str(path.resolve()), format=formats.detect(path))
    if looks_like_path:
        raise LlmctlError(f"{spec} does not exist", hint="check the path, or see `llmctl models list` for names")
    if "/" in spec:
        if allow_network if allow_network is not None else network_allowed():
            return ResolvedModel(path=spec, format="hf")
        raise LlmctlError(
            f"{spec!r} is neither a registry name nor a local path, and hub downloads are off",
            hint="import the model with `llmctl models import PATH --name N`, or set LLMCTL_ALLOW_NETWORK=1",
        )
    raise registry.unknown(spec)


def from_entry(entry: ModelEntry) -> ResolvedModel:
    """A ResolvedModel for a registry entry, checking its files are still there."""
    if not Path(entry.path).exists():  # (a dangling symlink does not exist either)
        raise LlmctlError(
            f"files of model {entry.name!r} are missing ({entry.path})",
            hint=f"remove it with `llmctl models remove {entry.name}` and re-create it",
        )
    return ResolvedModel(
        path=entry.path, format=entry.format, name=entry.name, entry=entry, parents=list(entry.parents)
    )
