"""`llmctl export`: take a registry model to where people run it, and prove the export behaves like the source.

One call: check the request before any work (target, type, source format, architecture, output path, registry
name), write the target (llmctl/export/targets.py names each writer) into a temp place, read it back with an
independent reader and compare it with llmctl's own load of the source (llmctl/export/parity.py), then either
put it in place (the output path, the registry entry, or both) or, when the perplexity gate fails, keep it as
OUTPUT.failed (removed when there is no --output) and register nothing (exit 3).

Examples:
    export("smol-alpaca", resolve_config("export", None, ["type=q8_0"], {}), output="smol.Q8_0.gguf")
    export("smol-gptq4", resolve_config("export", None, ["format=compressed-tensors"], {}), name="smol-gptq4-ct")
"""

from __future__ import annotations

import copy
import importlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.errors import GateFailed, LlmctlError, UsageError
from llmctl.export import targets
from llmctl.paths import (
    check_output_path,
    check_replaceable,
    delete_path,
    fsync_dir,
    fsync_tree,
    mark_output,
    remove_stale_temps,
    temp_prefix,
)
from llmctl.runtime.progress import Progress, quiet


def _call(spec: str, *args):
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)(*args)


@dataclass
class Job:
    """One export: the resolved source, the resolved config and target, and the models made from it (cached).

    Examples:
        job.source().model      # llmctl's own load of the source (the parity reference)
        job.plain()             # (float model, tokenizer) the float writers take
    """

    resolved: Any
    config: dict
    target: targets.Target
    qtype: str | None
    bits: int | None
    label: str
    say: Progress
    cache: dict = field(default_factory=dict)

    def source(self):
        """llmctl's load of the source in float32 on CPU (base + adapter for an adapter)."""
        if "source" not in self.cache:
            from llmctl.models.loading import load_model

            self.say(f"loading {self.resolved.label}")
            self.cache["source"] = load_model(self.resolved, dtype="float32", device="cpu")
        return self.cache["source"]

    def base_resolved(self):
        from llmctl.models.formats.adapter import adapter_base
        from llmctl.models.resolve import resolve_model

        return resolve_model(adapter_base(Path(self.resolved.path), self.resolved.parents, self.resolved.label))

    def base(self):
        """The adapter's base model, loaded as llmctl loads it (float32, CPU)."""
        from llmctl.models.loading import load_model

        return load_model(self.base_resolved(), dtype="float32", device="cpu")

    def base_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.base_resolved().path, trust_remote_code=False)

    def plain(self):
        """(float32 model, tokenizer) to write: adapters merged, weight-only quantized layers dequantized."""
        if "plain" in self.cache:
            return self.cache["plain"]
        fmt = self.resolved.format
        if fmt == "peft-adapter":
            from llmctl.merge_lora.service import merge_adapter

            self.say("merging the adapter into its base")
            base = self.base_resolved()
            if base.format != "hf":
                raise LlmctlError(
                    f"base {base.label} of adapter {self.resolved.label} has format {base.format!r}; "
                    "merging needs a full-precision model (hf)",
                    hint="merge it with `llmctl merge-lora --base M` and export the merged model",
                )
            # onto the base as `llmctl generate` runs the adapter (QLoRA adapters too), so the check compares like
            merged, tokenizer, _, _ = merge_adapter(self.resolved, base, qlora_base="original", check=False)
            self.cache["plain"] = (merged.eval(), tokenizer)
        elif fmt in ("inc-woq", "gptq"):
            from llmctl.models.formats.woq import dequantized_model

            src = self.source()
            self.cache["plain"] = (dequantized_model(copy.deepcopy(src.model)).eval(), src.tokenizer)
        else:
            src = self.source()
            self.cache["plain"] = (src.model, src.tokenizer)
        return self.cache["plain"]

    def woq(self):
        """The source's integer codes, scales, zero points and channel order (llmctl.models.formats.woq.WoqModel)."""
        from llmctl.models.formats import compressed_tensors, gptq
        from llmctl.models.formats.woq import WoqModel

        fmt = self.resolved.format
        if fmt == "compressed-tensors":
            return compressed_tensors.from_folder(Path(self.resolved.path))
        if fmt == "gptq":
            return gptq.from_folder(Path(self.resolved.path))
        return WoqModel.from_inc_model(self.source().model)

    def template_family(self) -> str | None:
        """The chat template family to write: --template, else the one the registry recorded for a finetune."""
        from llmctl.export.chat_templates import FAMILIES

        asked = self.config["template"]
        if asked is not None:
            return None if asked == "model" else asked
        recorded = _recorded_template(self.resolved.entry)
        return recorded if recorded in FAMILIES else None


def _recorded_template(entry, depth: int = 4) -> str | None:
    """meta.template of the entry, of the adapter it was merged from, or of its first parent (a few steps up)."""
    from llmctl.models.registry import Registry

    registry = Registry()
    while entry is not None and depth > 0:
        if entry.meta.get("template"):
            return entry.meta["template"]
        up = entry.meta.get("merged_from") or (entry.parents[0] if entry.parents else None)
        entry = registry.find(up) if up else None
        depth -= 1
    return None


def _check_source(resolved, target: targets.Target, config: dict) -> None:
    """The source's format is one the target exports from (else one line naming both and what to do)."""
    from llmctl.models import formats

    fmt = resolved.format
    if config["lora_gguf"]:
        if fmt != "peft-adapter":
            raise LlmctlError(
                f"--lora-gguf writes an adapter, but {resolved.label} is a {fmt!r} model",
                hint="give a LoRA adapter (made by `llmctl finetune --method lora`)",
            )
        return
    if fmt == "peft-adapter" and fmt in target.sources:
        from llmctl.models.formats.adapter import adapter_config

        kind = adapter_config(Path(resolved.path)).get("peft_type")
        if kind != "LORA":
            raise LlmctlError(
                f"adapter {resolved.label} is {kind}, which has no weights to merge into its base",
                hint="export its base model; run the adapter with `llmctl generate --adapter`",
            )
    if fmt in target.sources:
        if fmt == "inc-woq" and not (Path(resolved.path) / "qconfig.json").is_file():
            raise LlmctlError(
                f"{resolved.label} is an auto-round folder, which llmctl cannot repack or dequantize",
                hint=_parent_hint(resolved),
            )
        return
    kind = formats.get(fmt)
    if target.name in ("compressed-tensors", "gptq") and fmt in targets.FLOAT_SOURCES:
        hint = (
            f"quantize it first (`llmctl quantize --model {resolved.label} --algo gptq --name N` saves "
            "compressed-tensors), or export it with --format gguf|hf|openvino"
        )
    elif kind.kind != "model" and kind.kind != "adapter":
        hint = "give a model (see `llmctl models list`)"
    else:
        hint = _parent_hint(resolved)
    raise LlmctlError(
        f"{resolved.label} is a {fmt!r} entry ({kind.summary}); --format {target.name} exports from "
        f"{', '.join(target.sources)}",
        hint=hint,
    )


def _parent_hint(resolved) -> str:
    parent = resolved.parents[0] if resolved.parents else None
    return f"export its full-precision parent {parent!r} instead" if parent else "export the model it was made from"


def _check_architecture(resolved, target: targets.Target) -> None:
    """GGUF targets: the converter knows the architecture, checked from config.json before anything loads."""
    from llmctl.export.gguf_writer import check_architecture
    from llmctl.models.formats import gguf_file
    from llmctl.models.formats.hf import read_json

    if target.name not in ("gguf", "ollama"):
        return
    path = Path(resolved.path)
    if resolved.format == "gguf":
        from llmctl.models.formats.gguf import gguf_metadata

        check_architecture(gguf_metadata(gguf_file(path)).get("general.architecture"))
        return
    if resolved.format == "peft-adapter":
        from llmctl.models.formats.adapter import adapter_base
        from llmctl.models.resolve import resolve_model

        path = Path(resolve_model(adapter_base(path, resolved.parents, resolved.label)).path)
    if (path / "config.json").is_file():
        check_architecture(read_json(path / "config.json", "model config").get("model_type"))


def _output_path(output: str | None, target: targets.Target, file_name: str, force: bool) -> Path | None:
    if output is None:
        return None
    path = Path(output).expanduser()
    if target.output == "file" and (path.is_dir() or output.endswith(("/", os.sep))):
        path = path / file_name  # a folder given for a file: the file goes inside it
    return check_output_path(path, force=force, what="output", folder=target.output != "file")


def _file_name(label: str, job: Job) -> str:
    stem = Path(label).name or "model"
    if job.target.output != "file":
        return stem
    if job.config["lora_gguf"]:
        return f"{stem}.lora.{job.qtype.upper()}.gguf"
    return f"{stem}.{job.qtype.upper()}.gguf"


def _place(artifact: Path, dest: Path, move: bool) -> None:
    """Put a finished file or folder at dest in one rename (a copy goes to a temp name first); dest is replaced."""
    tmp = dest.parent / f"{temp_prefix(dest)}{os.urandom(4).hex()}"
    try:
        if move:
            os.replace(artifact, tmp)
        elif artifact.is_dir():
            shutil.copytree(artifact, tmp)
        else:
            shutil.copy2(artifact, tmp)
        if tmp.is_dir():
            mark_output(tmp)
        fsync_tree(tmp)
        if dest.exists() or dest.is_symlink():
            check_replaceable(dest, "output", folder=tmp.is_dir())
            old = dest.parent / f"{temp_prefix(dest, 'old')}{os.urandom(4).hex()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            delete_path(old)
        else:
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            delete_path(tmp)


def _check(job: Job, artifact: Path) -> list[dict]:
    """The parity reports of the readers (transformers-side reader first, llama.cpp too when installed)."""
    from llmctl.evaluate.perplexity import read_text
    from llmctl.export import parity, readers

    check = job.config["check"]
    text = read_text(Path(check["data"]), "check data", "--check-data") if check["data"] else parity.default_text()
    source = job.source()
    kwargs = dict(
        text=text,
        prompts=check["prompts"],
        max_new_tokens=check["max_new_tokens"],
        logit_sequences=check["logit_sequences"],
        seqlen=check["seqlen"],
        progress=job.say,
    )
    job.say("reading the export back")
    model, tokenizer, reader = _call(job.target.reader, artifact, job)
    reports = [parity.compare(source.model, source.tokenizer, model, tokenizer, reader=reader, **kwargs)]
    del model
    if job.target.name in ("gguf", "ollama") and check["llama_cpp"] and not job.config["lora_gguf"]:
        from llmctl.evaluate.perplexity import model_max_length
        from llmctl.export.ollama import GGUF_NAME

        gguf_path = artifact / GGUF_NAME if artifact.is_dir() else artifact
        # room for a perplexity window or a prompt with its continuation (logits of every position are kept)
        positions = model_max_length(source.model) or check["seqlen"] + check["max_new_tokens"] + 64
        n_ctx = min(positions, check["seqlen"]) + check["max_new_tokens"] + 64
        cpp = readers.llama_cpp(gguf_path, n_ctx, positions)
        if cpp is not None:
            reports.append(parity.compare(source.model, source.tokenizer, *cpp, reader="llama.cpp", **kwargs))
    return reports


def export(
    model: str,
    config: dict,
    *,
    output: str | None = None,
    name: str | None = None,
    force: bool = False,
    command: str = "",
    progress: Progress | None = None,
) -> dict:
    """Export a registry model (config: a resolved `export` config), check it, put it in place; return the report.

    Examples:
        export("smol", resolve_config("export", None, ["format=hf"], {}), output="out/smol-hf")["parity"]
    """
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model

    say = progress or quiet
    started = time.perf_counter()
    target = targets.get(config["format"])
    if not output and not name:
        raise UsageError("give --output PATH, --name NAME or both: where the export goes")
    if name and config["lora_gguf"]:
        raise UsageError(
            "--lora-gguf writes an adapter file for llama.cpp (`--lora`), which the registry cannot "
            "load: give --output instead of --name"
        )
    registry = Registry()
    reservation = registry.reserve(name, force) if name else None
    resolved = resolve_model(model, registry)
    _check_source(resolved, target, config)
    _check_architecture(resolved, target)
    job = Job(
        resolved,
        config,
        target,
        config["type"] or target.default_type,
        config["bits"] or target.default_bits,
        Path(resolved.label).name,
        say,
    )
    file_name = _file_name(name or job.label, job)
    out_path = _output_path(output, target, file_name, force)
    if out_path is not None:
        remove_stale_temps(out_path.parent, out_path.name)  # leftovers of a killed export to the same output
    work = Path(
        tempfile.mkdtemp(
            prefix=temp_prefix(out_path if out_path else registry.model_dir(name)),
            dir=(out_path.parent if out_path else registry.models_root),
        )
    )
    try:
        artifact = work / (file_name if target.output == "file" else "out")
        say(f"writing {target.name}")
        facts = _call(target.writer, job, artifact)
        seconds = round(time.perf_counter() - started, 2)
        reports = _run_check(job, artifact, out_path)
        result = _finish(job, artifact, out_path, reservation, facts, reports, command, seconds)
    finally:
        delete_path(work)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _run_check(job: Job, artifact: Path, out_path: Path | None) -> list[dict]:
    """Run the parity check and its gate; a failed gate keeps the export as OUTPUT.failed (or removes it)."""
    from llmctl.export import parity

    if not job.config["check"]["enabled"]:
        return []
    reports = _check(job, artifact)
    limit = job.config["check"]["max_ppl_increase"]
    if limit is None:
        limit = targets.default_max_ppl_increase(job.target.name, job.qtype, job.bits)
    try:
        parity.gate(reports, limit, f"export of {job.resolved.label} to {job.target.name}")
    except GateFailed as exc:
        if out_path is not None:
            failed = out_path.with_name(out_path.name + ".failed")
            for k in range(2, 1000):  # an earlier failed export stays: never overwritten
                if not (failed.exists() or failed.is_symlink()):
                    break
                failed = out_path.with_name(f"{out_path.name}.failed.{k}")
            _place(artifact, failed, move=True)
            exc.message += f" (kept as {failed}; nothing registered)"
        else:
            exc.message += " (export removed; nothing registered)"
        exc.reports = reports
        raise
    for r in reports:
        r["max_ppl_increase"] = limit
    return reports


def _finish(
    job: Job,
    artifact: Path,
    out_path: Path | None,
    reservation,
    facts: dict,
    reports: list[dict],
    command: str,
    seconds: float,
) -> dict:
    """Put the checked export at --output and/or publish it as --name; return the report."""
    from llmctl.export import parity
    from llmctl.models.publish import publish_model
    from llmctl.paths import dir_size_mb

    size = artifact.stat().st_size if artifact.is_file() else int(dir_size_mb(artifact) * 2**20)
    facts = {("writer_seconds" if k == "seconds" else k): v for k, v in facts.items() if k not in ("path", "modelfile")}
    meta = {
        "export_format": job.target.name,
        "type": job.qtype if job.target.types else None,
        "bits": job.bits if job.target.bits else None,
        "source": job.resolved.label,
        "source_format": job.resolved.format,
        "size_bytes": size,
        "export_seconds": seconds,
        **facts,
        "parity": reports,
    }
    result = {"format": job.target.name, "model": job.resolved.label, **meta, "path": None, "name": None}
    if out_path is not None:
        _place(artifact, out_path, move=reservation is None)
        result["path"] = str(out_path)
    if reservation is not None:
        with reservation.staging() as stage:
            if artifact.is_dir():
                for item in artifact.iterdir():
                    os.replace(item, stage / item.name)
            else:
                os.replace(artifact, stage / artifact.name)
            publish_model(
                reservation,
                stage,
                job.target.registry_format,
                parents=[job.resolved.name or job.resolved.path],
                config=job.config,
                command=command,
                meta=meta,
                metrics=parity.metrics(reports) if reports else {},
            )
        result["name"] = reservation.name
        result["registry_path"] = str(reservation.path)
    return result
