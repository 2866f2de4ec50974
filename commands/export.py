"""`llmctl export`: a registry model as GGUF, Ollama, compressed-tensors, GPTQ, OpenVINO or plain safetensors,
checked against the source by an independent reader.

Examples:
    llmctl export --model smol-alpaca --format gguf --type q8_0 --output smol-alpaca.Q8_0.gguf
    llmctl export --model smol-gptq4 --format compressed-tensors --output smol-gptq4-ct/
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.cli._common import (
    DEFAULT_MODEL_NAME,
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    ModelOpt,
    NameOpt,
    ProfileOpt,
    SetOpt,
    command_line,
    emit_json,
    err,
    resolve,
    schema_options,
)

# Option → profile key: every value given here is checked by llmctl/schemas/export.py.
OPTIONS = {
    "format_": "format",
    "type_": "type",
    "check": "check.enabled",
    "check_data": "check.data",
    "max_ppl_increase": "check.max_ppl_increase",
}


@schema_options("export", OPTIONS)
def export(
    ctx: typer.Context,
    model: ModelOpt = DEFAULT_MODEL_NAME,
    format_: Annotated[str | None, typer.Option("--format", "-f")] = None,
    type_: Annotated[str | None, typer.Option("--type")] = None,
    bits: Annotated[int | None, typer.Option("--bits")] = None,
    group_size: Annotated[int | None, typer.Option("--group-size")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="File (gguf) or folder to write; a folder for gguf too.")
    ] = None,
    name: NameOpt = None,
    lora_gguf: Annotated[bool | None, typer.Option("--lora-gguf")] = None,
    template: Annotated[str | None, typer.Option("--template")] = None,
    check: Annotated[bool | None, typer.Option("--check/--no-check")] = None,
    check_data: Annotated[str | None, typer.Option("--check-data")] = None,
    max_ppl_increase: Annotated[float | None, typer.Option("--max-ppl-increase")] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Export a model to GGUF/Ollama/compressed-tensors/GPTQ/OpenVINO/safetensors and check it against the source.

    Examples:
        llmctl export --model smol-alpaca --format gguf --type q8_0 --output smol-alpaca.Q8_0.gguf
        llmctl export --model smol-alpaca-lora --format gguf --lora-gguf --output lora.gguf
        llmctl export --model smol-alpaca --format ollama --output smol-ollama/
        llmctl export --model smol-gptq4 --format compressed-tensors --output smol-gptq4-ct/ --name smol-ct
        llmctl export --model M --format openvino --bits 4 --output M-ov4/
    """
    from llmctl.errors import GateFailed
    from llmctl.export.service import export as run

    config = resolve(ctx, "export", OPTIONS)
    try:
        with err.status("Exporting …") as status:
            result = run(
                model,
                config,
                output=output,
                name=name,
                force=force,
                command=command_line(),
                progress=lambda msg: status.update(f"Exporting: {msg} …"),
            )
    except GateFailed as exc:
        reports = getattr(exc, "reports", [])
        if json_out:
            emit_json({"gate": "failed", "error": exc.one_line(), "parity": reports})
        else:
            _table(reports)
        raise
    if json_out:
        emit_json(result)
        return
    _table(result["parity"])
    _summary(result)


def _table(reports: list[dict]) -> None:
    from rich.table import Table

    if not reports:
        return
    table = Table(title="parity check (export vs source)", title_justify="left")
    for col in ("reader", "greedy identical", "token agreement", "max |Δlogit|", "perplexity source → export", "Δ"):
        table.add_column(col)
    for r in reports:
        table.add_row(
            r["reader"],
            f"{r['greedy_identical']}/{r['prompts']}",
            f"{r['greedy_token_agreement']:.1%}",
            f"{r['max_abs_logit_diff']:.3g}",
            f"{r['perplexity_source']:.4g} → {r['perplexity_export']:.4g}",
            f"{r['ppl_relative_increase']:+.2%}",
        )
    err.print(table)


def _summary(result: dict) -> None:
    where = [w for w in (result.get("path"), result.get("name") and f"registered as {result['name']}") if w]
    kind = result["type"] or (f"{result['bits']}-bit" if result.get("bits") else "")
    gate = result["parity"][0]["max_ppl_increase"] if result["parity"] else None
    check = f"; within --max-ppl-increase {gate:.2%}" if gate is not None else "; not checked (--no-check)"
    err.print(
        f"Exported {result['model']} → {result['format']}{' ' + kind if kind else ''} "
        f"({result['size_bytes'] / 2**20:,.1f} MiB, {result['seconds']} s): {', '.join(where)}{check}"
    )
