"""`llmctl merge-lora`: fold a LoRA/DoRA/QLoRA adapter into its base and register a plain model.

Examples:
    llmctl merge-lora --adapter smol-alpaca-lora --name smol-alpaca
    llmctl merge-lora --adapter smol-qlora --name smol-q-merged --dtype bf16 --requantize nf4
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli._common import DryRunOpt, ForceOpt, JsonOpt, ProfileOpt, SetOpt, command_line, emit_json, err, resolve


def merge_lora(
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="Adapter: registry name or adapter folder.")],
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Registry name of the merged model.")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Base model (default: the adapter's recorded parent).")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Saved weights dtype: fp32, bf16 or fp16.")] = None,
    requantize: Annotated[Optional[str], typer.Option("--requantize", help="Re-quantize the merged model: nf4 or fp4.")] = None,
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
    from llmctl.merge import merge_lora as run_merge

    config = resolve("merge-lora", profile, set_, {"dtype": dtype, "requantize": requantize}, dry_run, json_out)
    result = run_merge(adapter, name, config, base=base, force=force, command=command_line())
    if json_out:
        emit_json(result)
    elif result.get("already_merged"):
        err.print(result["message"])
    else:
        diff = result.get("max_abs_logit_diff")
        check = f"; logits vs base+adapter: max abs diff {diff:.2e}" if diff is not None else ""
        err.print(f"Merged {result['adapter']} into {result['base']} → {result['name']} "
                  f"({result['format']}, {result['dtype']}){check}")
