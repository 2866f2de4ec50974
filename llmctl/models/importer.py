"""Bring a model into the registry: an HF folder, a PEFT adapter folder, a .gguf file or the built-in default.

Examples:
    import_model(Registry(), "path/to/hf-dir", "my-model")
    import_model(Registry(), "model.Q4_K_M.gguf", "my-gguf")       # converted to safetensors once
    import_model(Registry(), "smollm2-135m-instruct", "smol")        # the built-in default
    ensure_default_model(Registry())                                 # converts the default on first use
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.models import formats
from llmctl.models.default import ALIASES, DEFAULT_MODEL_NAME, gguf_path
from llmctl.models.formats.hf import check_folder, gguf_to_hf
from llmctl.models.registry import ModelEntry, Registry, validate_name


def _check_importable(path: Path, fmt: str) -> None:
    """What import refuses before copying anything: damaged configs or weights, custom code, non-models."""
    kind = formats.get(fmt).kind
    if fmt == "gguf":
        return
    check_folder(path)
    if fmt == "peft-adapter":
        from llmctl.models.formats.adapter import adapter_config

        adapter_config(path)
    if kind == "model" and fmt == "hf" and not (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        raise LlmctlError(
            f"{path} has a config.json but no weight files (*.safetensors)", hint="give a complete model folder"
        )


def import_model(
    registry: Registry,
    src: str,
    name: str | None = None,
    link: bool = False,
    force: bool = False,
    command: str | None = None,
) -> ModelEntry:
    """Register a model from src under name; copy (or with link=True, reference) its files.

    Examples:
        import_model(Registry(), "./my-hf-model", "mine")
    """
    command = command or " ".join(["llmctl", *sys.argv[1:]])
    builtin = src in ALIASES and not Path(src).exists()
    path = gguf_path() if builtin else Path(src).expanduser().resolve()
    if name is None:
        name = DEFAULT_MODEL_NAME if builtin else _derive_name(path)
    validate_name(name)
    fmt = formats.detect(path)
    _check_importable(path, fmt)
    reservation = registry.reserve(name, force)
    meta: dict = {"source": str(path)}
    parents: list[str] = []
    if fmt == "peft-adapter":
        from llmctl.models.formats.adapter import adapter_config

        base = adapter_config(path).get("base_model_name_or_path")
        if base and registry.find(base) is not None:
            parents = [base]
        meta["base_model"] = base
    if fmt == "gguf":
        with reservation.staging() as tmp:
            meta.update(gguf_to_hf(path, tmp))
            return reservation.publish(ModelEntry(name=name, format="hf", path="", command=command, meta=meta), tmp)
    if link:
        entry = ModelEntry(
            name=name, format=fmt, path=str(path), parents=parents, command=command, meta=meta, managed=False
        )
        return reservation.publish(entry)
    with reservation.staging() as tmp:
        shutil.copytree(path, tmp, dirs_exist_ok=True, symlinks=False)
        (tmp / formats.MARKER).unlink(missing_ok=True)  # the copy gets a marker of its own
        entry = ModelEntry(name=name, format=fmt, path="", parents=parents, command=command, meta=meta)
        return reservation.publish(entry, tmp, **_marker_facts(path))


def _marker_facts(path: Path) -> dict:
    """Format facts of the source's own marker (e.g. a bnb config) that its copy must keep."""
    marker = formats.read_marker(path) or {}
    return {k: v for k, v in marker.items() if k not in ("format", "entry")}


def ensure_default_model(registry: Registry) -> ModelEntry:
    """Return the default model's registry entry, converting the wheel's GGUF file on first use."""
    entry = registry.find(DEFAULT_MODEL_NAME)
    if entry is not None:
        return entry
    try:
        return import_model(
            registry,
            str(gguf_path()),
            DEFAULT_MODEL_NAME,
            command="llmctl models import smollm2-135m-instruct (automatic, first use)",
        )
    except LlmctlError:
        # Another process may have converted it at the same time: use theirs.
        entry = registry.find(DEFAULT_MODEL_NAME)
        if entry is not None:
            return entry
        raise


def _derive_name(path: Path) -> str:
    stem = path.stem if path.is_file() else path.name
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-.").lower()[:128]
    return name or "model"
