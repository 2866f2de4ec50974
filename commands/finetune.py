"""`llmctl finetune`: full, LoRA, QLoRA, DoRA, prompt/prefix tuning with SFT, preference, reward, PPO or GRPO
objectives.

Examples:
    llmctl finetune --model smollm2-135m-instruct --method lora --data alpaca_2000.json --name smol-alpaca-lora
    llmctl finetune --model M --method qlora --data FILE --name N --set lora.r=32 --resume
    llmctl finetune --model M --objective dpo --data prefs.jsonl --method lora --name N
    llmctl finetune --model M --objective ppo --reward-model RM --data prompts.jsonl --name N
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmctl.cli._common import (
    DEFAULT_MODEL_NAME,
    ROPE_OPTIONS,
    TRAIN_OPTIONS,
    BatchSizeOpt,
    DeviceOpt,
    DryRunOpt,
    DtypeOpt,
    EpochsOpt,
    EstimateStepsOpt,
    EvalEveryOpt,
    ForceOpt,
    GradAccumOpt,
    JsonOpt,
    LrOpt,
    MaxStepsOpt,
    ModelOpt,
    NameOpt,
    ProfileOpt,
    ReportToOpt,
    RopeFactorOpt,
    RopeOriginalOpt,
    RopeScalingOpt,
    SaveEveryOpt,
    SeedOpt,
    SeqLenOpt,
    SetOpt,
    choice_option,
    command_line,
    emit_json,
    err,
    resolve,
    schema_field,
    schema_options,
)

# Option → profile key: every value given here is checked by llmctl/schemas/finetune.py.
OPTIONS = {
    "template": "data.template",
    "packing": "data.packing",
    "reward_model": "reward.model",
    "reward": "reward.function",
    "num_generations": "grpo.num_generations",
    **TRAIN_OPTIONS,
    **ROPE_OPTIONS,
}


@schema_options("finetune", OPTIONS)
def finetune(
    ctx: typer.Context,
    name: NameOpt,
    model: ModelOpt = DEFAULT_MODEL_NAME,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Alpaca, chat (messages), text, preference or prompts: JSONL/JSON/Parquet."),
    ] = None,
    method: Annotated[
        str | None, choice_option("--method", field=schema_field("finetune", "method"), help="What is trained")
    ] = None,
    objective: Annotated[
        str | None,
        choice_option("--objective", field=schema_field("finetune", "objective"), help="Training objective"),
    ] = None,
    template: Annotated[
        str | None,
        choice_option("--template", field=schema_field("finetune", "data.template"), help="Prompt template"),
    ] = None,
    packing: Annotated[
        bool | None, typer.Option("--packing/--no-packing", help="Pack short examples into full sequences.")
    ] = None,
    reward_model: Annotated[
        str | None, typer.Option("--reward-model", help="ppo/grpo: reward model (made by --objective reward).")
    ] = None,
    reward: Annotated[
        str | None,
        typer.Option(
            "--reward",
            help="ppo/grpo: math_exact, format_regex or python:FILE:FUNC (FUNC(prompt, completion, **fields)).",
            autocompletion=lambda incomplete: [
                r for r in ("math_exact", "format_regex", "python:") if r.startswith(incomplete)
            ],
        ),
    ] = None,
    num_generations: Annotated[
        int | None, typer.Option("--num-generations", help="grpo: answers sampled per prompt.")
    ] = None,
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
    report_to: ReportToOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    rope_scaling: RopeScalingOpt = None,
    rope_factor: RopeFactorOpt = None,
    rope_original_length: RopeOriginalOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    estimate_steps: EstimateStepsOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Finetune a model (adapter or full weights) on instruction, chat, text, preference data or prompts.

    Examples:
        llmctl finetune --model smollm2-135m-instruct --method lora --data alpaca_2000.json --name smol-alpaca-lora
        llmctl finetune -m M --method qlora --data FILE --name N --profile qlora --set lora.r=32
        llmctl finetune -m M --objective dpo --data prefs.jsonl --method lora --name N
        llmctl finetune -m M --objective reward --data prefs.jsonl --name N
        llmctl finetune -m M --method full --rope-scaling yarn --rope-factor 4 --seq-len 8192 --data long.jsonl --name N
        torchrun --nproc_per_node 2 $(which llmctl) finetune -m M --method lora --data FILE --name N      # DDP
        llmctl finetune -m M --objective ppo --reward-model RM --data prompts.jsonl --method lora --name N
        llmctl finetune -m M --objective grpo --reward math_exact --data problems.jsonl --num-generations 8 --name N
    """
    from llmctl.errors import UsageError
    from llmctl.finetune import finetune as run_finetune
    from llmctl.finetune.service import estimate

    config = resolve(ctx, "finetune", OPTIONS, estimate=lambda c: estimate(model, c, data, estimate_steps or 0))
    if data is None:
        raise UsageError("missing --data FILE (Alpaca JSON/JSONL, chat JSONL, text JSONL, preference or prompts JSONL)")

    def on_log(line: str) -> None:
        err.print(line)

    result = run_finetune(model, data, name, config, resume=resume, force=force, command=command_line(), on_log=on_log)
    if not result.path:
        return  # a process other than rank 0 under torchrun: rank 0 reports
    if json_out:
        emit_json(result.to_json())
    else:
        m = result.metrics
        ev = f", eval loss {m['eval_loss']:.4f}" if m.get("eval_loss") is not None else ""
        err.print(f"Registered {result.name} ({result.format}, {result.method}/{result.objective}) → {result.path}")
        ev += f", eval reward {m['eval_reward']:.4f}" if m.get("eval_reward") is not None else ""
        err.print(f"train loss {m['train_loss']:.4f}{ev}; metrics and loss.png in {result.run_dir}")
        if result.format == "peft-adapter" and result.objective == "sft":
            err.print(
                f'Try: llmctl generate --model {result.name} --prompt "…"   |   '
                f"llmctl merge-lora --adapter {result.name} --name {result.name}-merged"
            )
