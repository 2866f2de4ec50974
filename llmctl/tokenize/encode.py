"""`tokenize encode`: check everything first, run the pipeline into a temp dir, publish the data dir.

Examples:
    encode_corpus("shakespeare-bpe", ["input.txt"], config, output=Path("data/shakespeare"))
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import LlmctlError, UsageError
from llmctl.runtime.progress import Progress
from llmctl.tokenize.reader import resolve_inputs
from llmctl.tokenize.spec import TokenizerRef, load_tokenizer_spec

PII_KINDS = ("email", "phone", "ip")
_META_KEYS = ("dtype", "stats", "val_fraction", "seed")
# Disk estimate for the check before encoding: English BPE gives ~3-4 bytes of text per token, and a
# token takes 2 bytes (uint16), so the shards take about 2/3 of the text's size (measured: tiny-shakespeare
# with a 4,096-token BPE, 3.3 bytes/token, data dir 0.66× the input). Parquet text is compressed, ~3×.
_SHARD_BYTES_PER_TEXT_BYTE = 2 / 3
_PARQUET_EXPANSION = 3


@dataclass
class EncodeResult:
    path: str
    name: str | None
    index: dict

    def json(self) -> dict:
        return {"path": self.path, "name": self.name, **{k: v for k, v in self.index.items() if k != "format"}}


def _estimated_bytes(paths: list[Path]) -> int:
    text = sum(p.stat().st_size * (_PARQUET_EXPANSION if p.suffix.lower() == ".parquet" else 1) for p in paths)
    return int(text * _SHARD_BYTES_PER_TEXT_BYTE)


def _check_request(config: dict, inputs: list, output: Path | None, name: str | None, force: bool):
    """(registry reservation or None, checked input paths): settings, name, --output and inputs, before any work."""
    from llmctl.models.registry import Registry
    from llmctl.paths import check_output_path

    ecfg, ccfg = config["encode"], config["curation"]
    val_fraction = ecfg["val_fraction"]
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}", hint="e.g. --val-fraction 0.1")
    if output is None and name is None:
        raise UsageError("say where the data goes", hint="pass --output DIR and/or --name NAME (registry)")
    reservation = Registry().reserve(name, force) if name is not None else None
    paths = resolve_inputs(inputs)
    need = _estimated_bytes(paths)
    if output is not None:
        check_output_path(Path(output), force, what="output dir", need_bytes=need, folder=True)
    else:
        check_output_path(reservation.path, True, what="registry folder", need_bytes=need, registry=True)
    for kind in ccfg["pii"]["kinds"]:
        if kind not in PII_KINDS:
            raise LlmctlError(f"unknown PII kind {kind!r}", hint=f"use {', '.join(PII_KINDS)}")
    return reservation, paths


def _worker_state(ref: TokenizerRef, ccfg: dict) -> dict:
    """What every worker needs: the tokenizer as JSON, the curation settings, the decontaminator."""
    decon = None
    if ccfg["decontaminate"]["files"]:
        from llmctl.data.curation import Decontaminator

        decon = Decontaminator.from_files(
            [Path(f).expanduser() for f in ccfg["decontaminate"]["files"]], n=ccfg["decontaminate"]["ngram"]
        )
    return {"tokenizer_json": ref.backend.to_str(), "curation": ccfg, "decontaminator": decon}


def _data_meta(index: dict) -> dict:
    meta = {k: index[k] for k in _META_KEYS if k in index}
    meta["tokens"] = {s: v["tokens"] for s, v in index["splits"].items()}
    meta["tokenizer"] = index["tokenizer"].get("name") or index["tokenizer"]["path"]
    return meta


def _publish(
    fill: Callable[[Path], dict],
    reservation,
    ref: TokenizerRef,
    config: dict,
    output: Path | None,
    name: str | None,
    force: bool,
    command: str,
) -> Path:
    """Run fill into a temp dir, rename it into place (--output or the registry) and register it."""
    from llmctl.models.registry import ModelEntry
    from llmctl.paths import atomic_dir

    parents = [ref.name] if ref.name else []
    if output is not None:
        with atomic_dir(Path(output), force=force) as tmp:
            index = fill(tmp)
        final = Path(output).resolve()
        if reservation is not None:
            reservation.publish(
                ModelEntry(
                    name=name,
                    format="data",
                    path=str(final),
                    parents=parents,
                    command=command,
                    profile=config,
                    meta=_data_meta(index),
                    managed=False,
                )
            )
        return final
    with reservation.staging() as tmp:
        index = fill(tmp)
        entry = reservation.publish(
            ModelEntry(
                name=name,
                format="data",
                path="",
                parents=parents,
                command=command,
                profile=config,
                meta=_data_meta(index),
            ),
            tmp,
        )
    return Path(entry.path)


def encode_corpus(
    tokenizer: str,
    inputs: list,
    config: dict,
    output: Path | None = None,
    name: str | None = None,
    force: bool = False,
    command: str = "",
    on_progress: Progress | None = None,
) -> EncodeResult:
    """Documents → curated, tokenized, EOS-separated train/val token shards plus index.json.

    The output is written to a temp dir and renamed into place only when complete; with `name` it is
    also registered (format "data"). `on_progress("N docs", bytes_done, bytes_total)` is called per chunk.

    Examples:
        encode_corpus("shakespeare-bpe", ["input.txt"], config, output=Path("data/sh"))
    """
    from llmctl.config.profiles import save_run_config
    from llmctl.data.token_data import file_sha256, read_index, write_index
    from llmctl.tokenize.pipeline import Encoder

    reservation, paths = _check_request(config, inputs, output, name, force)
    ref = load_tokenizer_spec(tokenizer)
    if ref.eos_id is None:
        raise LlmctlError(
            f"tokenizer {ref.label} has no EOS token to separate documents",
            hint="train one with an --eos-token, or use a model's tokenizer",
        )
    state = _worker_state(ref, config["curation"])
    sources = [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in paths]

    def fill(folder: Path) -> dict:
        index = Encoder(folder, paths, ref, state, config, on_progress).run()
        for src in sources:
            src["sha256"] = file_sha256(Path(src["path"]))
        index.update({"sources": sources, "command": command, "created": time.time()})
        if name is not None:
            index["name"] = name
        save_run_config(config, folder, command)
        write_index(folder, index)
        return index

    try:
        final = _publish(fill, reservation, ref, config, output, name, force, command)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            where = output or "the registry"
            raise LlmctlError(
                f"disk full while writing token shards for {where}; nothing was kept",
                hint="free disk space or pass an --output on another disk",
            ) from exc
        raise LlmctlError(
            f"cannot write tokenized data ({exc.strerror or exc})", hint="check the --output folder is writable"
        ) from exc
    return EncodeResult(path=str(final), name=name, index=read_index(final))
