"""`llmctl finetune`: full, LoRA, QLoRA, DoRA, prompt/prefix tuning with SFT, DPO or reward objectives.

Examples:
    llmctl finetune --model smollm2-135m-instruct --method lora --data ../shared/data/alpaca/alpaca_2000.json --name smol-alpaca-lora
    llmctl finetune --model M --method qlora --data FILE --name N --set lora.r=32 --resume
    llmctl finetune --model M --objective dpo --data prefs.jsonl --method lora --name N
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli._common import (BatchSizeOpt, DeviceOpt, DryRunOpt, DtypeOpt, EpochsOpt, EvalEveryOpt, ForceOpt,
                                GradAccumOpt, JsonOpt, LrOpt, MaxStepsOpt, ProfileOpt, SaveEveryOpt, SeedOpt,
                                SeqLenOpt, SetOpt, command_line, emit_json, err, resolve, train_overrides)


def finetune(
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: registry name or path.")] = "smollm2-135m-instruct",
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Alpaca JSON/JSONL, chat JSONL (messages), text JSONL or preference JSONL.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Registry name of the result.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="full, lora, qlora, dora, prompt-tuning or prefix-tuning.")] = None,
    objective: Annotated[Optional[str], typer.Option("--objective", help="sft, dpo or reward.")] = None,
    template: Annotated[Optional[str], typer.Option("--template", help="auto, model, chatml or alpaca.")] = None,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help="Pack short examples into full sequences.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's latest checkpoint.")] = False,
    max_steps: MaxStepsOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    seq_len: SeqLenOpt = None,
    seed: SeedOpt = None,
    eval_every: EvalEveryOpt = None,
    save_every: SaveEveryOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Finetune a model (adapter or full weights) on instruction, chat, text or preference data.

    Examples:
        llmctl finetune --model smollm2-135m-instruct --method lora --data ../shared/data/alpaca/alpaca_2000.json --name smol-alpaca-lora
        llmctl finetune -m M --method qlora --data FILE --name N --profile qlora --set lora.r=32
        llmctl finetune -m M --objective dpo --data prefs.jsonl --method lora --name N
        llmctl finetune -m M --objective reward --data prefs.jsonl --name N
    """
    from llmctl.errors import UsageError
    from llmctl.finetune import finetune as run_finetune

    explicit = {"method": method, "objective": objective, "data.template": template, "data.packing": packing,
                **train_overrides(max_steps=max_steps, epochs=epochs, lr=lr, batch_size=batch_size,
                                  grad_accum=grad_accum, seq_len=seq_len, seed=seed, eval_every=eval_every,
                                  save_every=save_every, device=device, dtype=dtype)}
    config = resolve("finetune", profile, set_, explicit, dry_run, json_out)
    if data is None:
        raise UsageError("missing --data FILE (Alpaca JSON/JSONL, chat JSONL, text JSONL or preference JSONL)")
    if not name:
        raise UsageError("missing --name for the result (a new registry name)")

    def on_log(line: str) -> None:
        err.print(line)

    result = run_finetune(model, data, name, config, resume=resume, force=force, command=command_line(),
                          on_log=on_log)
    if json_out:
        emit_json(result.to_json())
    else:
        m = result.metrics
        ev = f", eval loss {m['eval_loss']:.4f}" if m.get("eval_loss") is not None else ""
        err.print(f"Registered {result.name} ({result.format}, {result.method}/{result.objective}) → {result.path}")
        err.print(f"train loss {m['train_loss']:.4f}{ev}; metrics and loss.png in {result.run_dir}")
        if result.format == "peft-adapter" and result.objective == "sft":
            err.print(f"Try: llmctl generate --model {result.name} --prompt \"…\"   |   "
                      f"llmctl merge-lora --adapter {result.name} --name {result.name}-merged")
