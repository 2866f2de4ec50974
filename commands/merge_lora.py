"""`llmctl merge-lora`: fold a LoRA/DoRA/QLoRA adapter into its base and register a plain model.

Examples:
    llmctl merge-lora --adapter smol-alpaca-lora --name smol-alpaca
    llmctl merge-lora --adapter smol-qlora --name smol-q-merged --dtype bf16 --requantize nf4
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.cli._common import (
    DryRunOpt,
    DtypeOpt,
    ForceOpt,
    JsonOpt,
    NameOpt,
    ProfileOpt,
    SetOpt,
    command_line,
    emit_json,
    err,
    resolve,
    schema_options,
)

# Option → profile key: every value given here is checked by llmctl/schemas/merge_lora.py.
OPTIONS: dict = {}  # every option is named like its key (see schema_options)


@schema_options("merge-lora", OPTIONS)
def merge_lora(
    ctx: typer.Context,
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="Adapter: registry name or adapter folder.")],
    name: NameOpt,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model (default: the adapter's recorded parent).")
    ] = None,
    dtype: DtypeOpt = None,
    requantize: Annotated[str | None, typer.Option("--requantize")] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Merge a LoRA adapter into its base model and register the result as a normal model.

    Examples:
        llmctl merge-lora --adapter smol-alpaca-lora --name smol-alpaca
        llmctl merge-lora --adapter smol-qlora --name smol-q --dtype bf16 --requantize nf4
    """
    from llmctl.merge_lora.service import merge_lora as run_merge

    config = resolve(ctx, "merge-lora", OPTIONS)
    result = run_merge(adapter, name, config, base=base, force=force, command=command_line())
    if json_out:
        emit_json(result)
    elif result.get("already_merged"):
        err.print(result["message"])
    else:
        diff = result.get("max_abs_logit_diff")
        check = f"; logits vs base+adapter: max abs diff {diff:.2e}" if diff is not None else ""
        err.print(
            f"Merged {result['adapter']} into {result['base']} → {result['name']} "
            f"({result['format']}, {result['dtype']}){check}"
        )
