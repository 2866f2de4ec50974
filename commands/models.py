"""`llmctl models`: the registry of models, with lineage and metrics.

Examples:
    llmctl models list --json
    llmctl models import ./my-hf-model --name mine
    llmctl models show smollm2-135m-instruct
    llmctl models remove mine --delete-files
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from llmctl.cli._common import ForceOpt, JsonOpt, NameOpt, command_line, emit_json, err, out

app = typer.Typer(help="List, show, import and remove models in the registry.", no_args_is_help=True)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@app.command("list")
def list_models(json_out: JsonOpt = False) -> None:
    """List registry models (name, format, parents, created).

    Examples:
        llmctl models list
        llmctl models list --json | jq '.[].name'
    """
    from llmctl.models.registry import Registry

    entries = Registry().list()
    if json_out:
        emit_json([e.to_json() for e in entries])
        return
    if not entries:
        err.print("The registry is empty. Try `llmctl models import smollm2-135m-instruct`.")
        return
    table = Table("name", "format", "parents", "created", "metrics")
    for e in entries:
        table.add_row(e.name, e.format, ", ".join(e.parents) or "-", _when(e.created), str(len(e.metrics)))
    out.print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Registry name.")], json_out: JsonOpt = False) -> None:
    """Show one model: path, format, lineage, producing command, resolved profile and metrics.

    Examples:
        llmctl models show smol-alpaca-lora --json
    """
    from llmctl.config.profiles import dump_config
    from llmctl.models.registry import Registry

    reg = Registry()
    entry = reg.get(name)
    children = reg.children(name)
    file = _gguf_file(entry)
    if json_out:
        emit_json({**entry.to_json(), "children": children, **({"file": file} if file else {})})
        return
    out.print(f"[bold]{entry.name}[/bold]  ({entry.format})")
    out.print(f"path:     {entry.path}{'' if entry.managed else '  (registered in place)'}")
    if file:
        out.print(f"file:     {file}")
    out.print(f"created:  {_when(entry.created)}")
    out.print(f"parents:  {', '.join(entry.parents) or '-'}")
    out.print(f"children: {', '.join(children) or '-'}")
    out.print(f"command:  {entry.command or '-'}")
    if entry.meta:
        out.print("facts:")
        for k, v in entry.meta.items():
            out.print(f"  {k}: {v}")
    if entry.metrics:
        table = Table("metric", "value")
        for k, v in sorted(entry.metrics.items()):
            table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
        out.print(table)
    if entry.profile:
        out.print("resolved profile:")
        out.print(dump_config(entry.profile).rstrip(), markup=False)


def _gguf_file(entry) -> str | None:
    """The .gguf file of a `gguf` entry (the file llama.cpp and Ollama take), when it is there."""
    from pathlib import Path

    from llmctl.errors import LlmctlError
    from llmctl.models import formats

    if entry.format != "gguf" or not Path(entry.path).exists():
        return None
    try:
        return str(formats.gguf_file(Path(entry.path)))
    except LlmctlError:
        return None


@app.command("import")
def import_(
    src: Annotated[
        str,
        typer.Argument(
            help="HF model folder, PEFT adapter folder, .gguf file, or 'smollm2-135m-instruct' (the built-in default)."
        ),
    ],
    name: NameOpt = None,
    link: Annotated[bool, typer.Option("--link", help="Register the folder in place instead of copying it.")] = False,
    max_size: Annotated[
        str,
        typer.Option(
            "--max-size",
            help="Refuse to copy more than this: GiB, or a number with K, M, G or T (500M, 1.5T). "
            "A .gguf file counts its own size; not checked with --link (nothing is copied).",
        ),
    ] = "100G",  # llmctl.models.importer.DEFAULT_MAX_SIZE (not imported here: --help stays fast)
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Import a model into the registry (GGUF files are converted to safetensors once).

    Without --name the model is named from SRC (its folder or file name). A copied folder must not link outside
    itself; links inside it are copied as the files they point to.

    Examples:
        llmctl models import smollm2-135m-instruct
        llmctl models import ./checkpoints/final --name my-model
        llmctl models import ./big-model --name big --max-size 300G
        llmctl models import model.Q4_K_M.gguf --name my-gguf
    """
    from llmctl.models.importer import import_model, parse_size
    from llmctl.models.registry import Registry

    max_bytes = parse_size(max_size)
    with err.status(f"Importing {src} …"):
        entry = import_model(Registry(), src, name, link=link, force=force, command=command_line(), max_bytes=max_bytes)
    if json_out:
        emit_json(entry.to_json())
    else:
        err.print(f"Imported [bold]{entry.name}[/bold] ({entry.format}) → {entry.path}")


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="Registry name.")],
    delete_files: Annotated[
        bool, typer.Option("--delete-files", help="Also delete the model's folder (llmctl-managed folders only).")
    ] = False,
    # not the shared ForceOpt: here --force overrides the children guard, there it replaces an existing output
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With --delete-files: delete even when other models were derived from it (children)."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove a model from the registry (its files stay unless --delete-files).

    Kept files are marked as removed, so `models doctor --fix` does not register them again.

    Examples:
        llmctl models remove old-run --delete-files
        llmctl models remove base --delete-files --force     # its children keep their own files
    """
    from llmctl.models.registry import Registry

    reg = Registry()
    children = reg.children(name)
    entry, deleted = reg.remove(name, delete_files=delete_files, protect_children=not force)
    if json_out:
        emit_json({"removed": entry.name, "path": entry.path, "files_deleted": deleted, "children": children})
        return
    what = "and deleted its files" if deleted else f"(files kept at {entry.path})"
    err.print(f"Removed [bold]{entry.name}[/bold] {what}")
    if delete_files and not entry.managed:
        err.print("Files were registered in place (--link), so llmctl left them alone.")
    elif delete_files and not deleted:
        err.print(
            f"{entry.path} was a link to files outside the registry: llmctl removed the link, not the "
            f"files it points to (delete those yourself if you mean to)."
        )
    if children:
        err.print(f"Note: {', '.join(children)} list it as a parent (they keep their own files).")


@app.command("doctor")
def doctor(
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Repair what the findings name (backing up the index first): drop rows whose folder is gone, "
            "rewrite stale markers, register lost folders, remove leftovers of killed runs; rebuild an index "
            "that cannot be read. Metrics and --link entries are kept; folders `models remove` kept stay out.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check every registry entry (files, marker, weights, parents); --fix repairs what it finds.

    Examples:
        llmctl models doctor
        llmctl models doctor --fix --json
    """
    from llmctl.models.doctor import doctor as run_doctor

    report = run_doctor(fix=fix)
    if json_out:
        emit_json(report)
    else:
        for p in report["problems"]:
            mark = "[green]fixed[/green]" if p["fixed"] else "[yellow]problem[/yellow]"
            err.print(f"{mark} {p['where']}: {p['problem']} ({p['fix']})")
        if report.get("backup"):
            err.print(f"The old index is kept at {report['backup']}.")
        if report.get("kept"):
            err.print(f"Files kept by `models remove` (not registered): {', '.join(report['kept'])}.")
        err.print(
            f"{report['entries']} entries; "
            + ("no problems." if not report["problems"] else "all fixed." if report["ok"] else "problems remain.")
        )
    if not report["ok"]:
        raise typer.Exit(1)
