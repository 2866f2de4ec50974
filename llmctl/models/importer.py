"""Bring a model into the registry: an HF folder, a PEFT adapter folder, a .gguf file or the built-in default.

A copied folder never takes anything from outside itself: a link inside it that points to a file or folder
within it is copied as what it points to (the entry holds plain files only); a link that leaves the folder,
dangles or loops is refused before anything is copied, and so is a copy larger than `max_bytes`
(`--max-size`). `--link` imports copy nothing and are not checked.

Examples:
    import_model(Registry(), "path/to/hf-dir", "my-model")
    import_model(Registry(), "model.Q4_K_M.gguf", "my-gguf")       # converted to safetensors once
    import_model(Registry(), "smollm2-135m-instruct", "smol")        # the built-in default
    import_model(Registry(), "path/to/big-model", "big", max_bytes=parse_size("300G"))
    ensure_default_model(Registry())                                 # converts the default on first use
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from pathlib import Path

from llmctl.errors import LlmctlError, UsageError
from llmctl.models import formats
from llmctl.models.default import ALIASES, DEFAULT_MODEL_NAME, gguf_path
from llmctl.models.formats.hf import check_folder, gguf_to_hf
from llmctl.models.registry import ModelEntry, Registry, validate_name

DEFAULT_MAX_SIZE = "100G"  # generous (a 30B model in 16-bit is about 60 GiB), yet stops a folder holding a disk
_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?)?\s*", re.IGNORECASE)
_LINK_HINT = "replace the link with the files it points to, or pass --link to register the folder in place"


def parse_size(text: str) -> int:
    """Bytes of a `--max-size` value: a number of GiB, or a number with K, M, G or T (binary: 1K = 1024 bytes).

    Examples:
        parse_size("100")    # 100 GiB
        parse_size("500M")   # 500 MiB; "500MB" and "500MiB" read the same
        parse_size("1.5T")
    """
    m = _SIZE_RE.fullmatch(str(text))
    size = int(float(m[1]) * _UNITS[(m[2] or "G").upper()]) if m else 0
    if size <= 0:
        raise UsageError(
            f"--max-size {text}: not a size above 0",
            hint="give a number of GiB (100) or a number with K, M, G or T (500M, 1.5T)",
        )
    return size


DEFAULT_MAX_BYTES = parse_size(DEFAULT_MAX_SIZE)


def human_size(size: int) -> str:
    """A byte count as people read it: `1.50 GiB`, `812.3 MiB`, `12.0 KiB`.

    Examples:
        human_size(3 * 1024**3)   # "3.00 GiB"
    """
    if size >= 1024**3:
        return f"{size / 1024**3:.2f} GiB"
    if size >= 1024**2:
        return f"{size / 1024**2:.1f} MiB"
    return f"{size / 1024:.1f} KiB"


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


def _check_size(path: Path, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise LlmctlError(
            f"{path} holds {human_size(size)} (at least), more than --max-size {human_size(max_bytes)}",
            hint="raise the cap, e.g. --max-size 500G, or pass --link to register the folder in place",
        )


def copy_plan(root: Path, max_bytes: int | None = None) -> tuple[list[Path], list[tuple[Path, Path]], int]:
    """What a copy of folder root holds: (folders, (source file, relative path) pairs, total bytes).

    Links pointing inside root are followed (their target is what gets copied); links that leave root, dangle
    or loop, special files and a total over max_bytes are refused, all before anything is copied.

    Examples:
        dirs, files, size = copy_plan(Path("my-model").resolve(), max_bytes=parse_size("100G"))
    """
    dirs: list[Path] = []
    files: list[tuple[Path, Path]] = []
    total = 0
    # (real folder, its place in the copy, the real folders above it): a link to one of those is a loop
    stack: list[tuple[Path, Path, frozenset[Path]]] = [(root, Path(), frozenset([root]))]
    while stack:
        real_dir, rel_dir, above = stack.pop()
        try:
            items = sorted(os.scandir(real_dir), key=lambda e: e.name)
        except OSError as exc:
            raise LlmctlError(
                f"cannot read {root / rel_dir} ({exc.strerror or exc})", hint="check the folder's permissions"
            ) from exc
        for item in items:
            rel, shown = rel_dir / item.name, root / rel_dir / item.name
            if rel == Path(formats.MARKER):
                continue  # the copy gets a marker of its own
            real = Path(item.path)
            if item.is_symlink():
                real = _link_target(root, shown, Path(item.path))
                if real.is_dir() and real in above:
                    raise LlmctlError(
                        f"{shown} is a link to {os.readlink(item.path)}, a folder that holds it (a link loop)",
                        hint=_LINK_HINT,
                    )
            try:
                info = real.stat()
            except OSError as exc:
                raise LlmctlError(f"cannot read {shown} ({exc.strerror or exc})", hint="check its permissions") from exc
            if stat.S_ISDIR(info.st_mode):
                dirs.append(rel)
                stack.append((real, rel, above | {real}))
            elif stat.S_ISREG(info.st_mode):
                files.append((real, rel))
                total += info.st_size
                _check_size(root, total, max_bytes)  # stop early: the sum may be huge
            else:
                raise LlmctlError(
                    f"{shown} is not a regular file or folder (a device, pipe or socket)",
                    hint="move it out of the folder before importing",
                )
    return dirs, files, total


def _link_target(root: Path, shown: Path, link: Path) -> Path:
    """The real path a link inside root points to; refused when it dangles, loops or leaves root."""
    target = os.readlink(link)
    try:
        real = link.resolve(strict=True)
    except FileNotFoundError as exc:
        raise LlmctlError(f"{shown} is a link to {target}, which does not exist", hint=_LINK_HINT) from exc
    except (OSError, RuntimeError) as exc:  # RuntimeError: Python 3.11/3.12's "Symlink loop"
        raise LlmctlError(f"{shown} is a link to {target}, which loops", hint=_LINK_HINT) from exc
    if real != root and root not in real.parents and not _hub_blob(root, real):
        raise LlmctlError(f"{shown} is a link to {real}, outside {root}", hint=_LINK_HINT)
    return real


def _hub_blob(root: Path, real: Path) -> bool:
    """A file of a Hugging Face cache snapshot: `models--ORG--NAME/snapshots/REV/x -> ../../blobs/HASH`.

    That layout is what a downloaded model is on disk, and its links lead to single files of the same cached
    repository (never to a folder such as the home folder), so they are copied as files like links inside root.
    """
    snapshots = root.parent
    return (
        snapshots.name == "snapshots"
        and snapshots.parent.name.startswith("models--")
        and real.parent == snapshots.parent / "blobs"
        and real.is_file()
    )


def _copy(root: Path, dirs: list[Path], files: list[tuple[Path, Path]], dest: Path) -> None:
    """Copy a plan of copy_plan into dest: plain folders and files (a link's target, never the link)."""
    try:
        for rel in dirs:
            (dest / rel).mkdir(parents=True, exist_ok=True)
        for real, rel in files:
            shutil.copy2(real, dest / rel)
    except OSError as exc:
        raise LlmctlError(
            f"copying {root} into the registry failed ({exc.strerror or exc})",
            hint="free some space under LLMCTL_HOME, or pass --link to register the folder in place",
        ) from exc


def import_model(
    registry: Registry,
    src: str,
    name: str | None = None,
    link: bool = False,
    force: bool = False,
    command: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> ModelEntry:
    """Register a model from src under name; copy (or with link=True, reference) its files.

    A copy larger than max_bytes (None: no cap) is refused before it starts; link=True copies nothing.

    Examples:
        import_model(Registry(), "./my-hf-model", "mine")
        import_model(Registry(), "./my-hf-model", "mine", link=True)
    """
    command = command or " ".join(["llmctl", *sys.argv[1:]])
    builtin = src in ALIASES and not Path(src).exists()
    path = gguf_path() if builtin else Path(src).expanduser().resolve()
    if name is None:
        name = DEFAULT_MODEL_NAME if builtin else _derive_name(path)
    validate_name(name)
    fmt = formats.detect(path)
    _check_importable(path, fmt)
    plan = None
    if fmt == "gguf":  # converted into the registry whatever --link says: the cap applies to the .gguf file
        _check_size(path, formats.gguf_file(path).stat().st_size, max_bytes)
    elif not link:
        plan = copy_plan(path, max_bytes)
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
    if plan is None:
        entry = ModelEntry(
            name=name, format=fmt, path=str(path), parents=parents, command=command, meta=meta, managed=False
        )
        return reservation.publish(entry)
    with reservation.staging() as tmp:
        _copy(path, plan[0], plan[1], tmp)
        entry = ModelEntry(name=name, format=fmt, path="", parents=parents, command=command, meta=meta)
        return reservation.publish(entry, tmp, **_marker_facts(path))


def _marker_facts(path: Path) -> dict:
    """Format facts of the source's own marker (e.g. a bnb config) that its copy must keep."""
    marker = formats.read_marker(path) or {}
    return {k: v for k, v in marker.items() if k not in ("format", "entry", "removed")}


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
