"""`llmctl pretrain`: train a LLaMA or GPT-2 style model from scratch on a tokenized data dir.

Examples:
    llmctl pretrain --profile shakespeare-tiny --data data/shakespeare --name my-tiny
    llmctl pretrain -p shakespeare-tiny --data D --name my-tiny --resume
    torchrun --nproc_per_node 2 $(which llmctl) pretrain -p gpt2-124m --data D --name g --set dist.strategy=fsdp
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmctl.cli._common import (
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
    command_line,
    emit_json,
    err,
    resolve,
    schema_options,
)

OPTIONS = TRAIN_OPTIONS | ROPE_OPTIONS


@schema_options("pretrain", OPTIONS)
def pretrain(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", "-d", help="Tokenized data dir (from `llmctl tokenize encode`).")],
    name: NameOpt,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Tokenizer (name or folder); must be the one the data was encoded with."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run NAME from its latest checkpoint.")] = False,
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
    """Pretrain a model from scratch (single process, or DDP/FSDP under torchrun) and register it.

    Examples:
        llmctl pretrain --profile shakespeare-tiny --data data/shakespeare --name my-tiny
        llmctl pretrain -p shakespeare-tiny --data D --name my-tiny --max-steps 2000 --lr 1e-3
        llmctl pretrain -p shakespeare-tiny --data D --name my-tiny --resume
        torchrun --nproc_per_node 2 $(which llmctl) pretrain -p llama-125m --data D --name l --set dist.strategy=fsdp
    """
    from llmctl.pretrain import pretrain as run_pretrain
    from llmctl.pretrain.service import estimate

    config = resolve(
        ctx,
        "pretrain",
        OPTIONS,
        estimate=lambda c: estimate(data, c, tokenizer, estimate_steps or 0),
    )
    result = run_pretrain(
        data,
        name,
        config,
        tokenizer=tokenizer,
        resume=resume,
        force=force,
        command=command_line(),
        on_log=None if json_out else _print_log,
    )
    if result.get("model_path") is None:
        return  # a non-zero rank under torchrun: rank 0 reports
    if json_out:
        emit_json(result)
        return
    final = result["final"]
    val = (
        (
            f", val loss {final['val_loss']:.4f}, ppl {final['val_ppl']:.2f}"
            + (f", {final['val_bpb']:.4f} bits/byte" if "val_bpb" in final else "")
        )
        if final
        else ""
    )
    err.print(
        f"Trained {result['name']}: {result['steps']} steps, {result['tokens_trained']:,} tokens in "
        f"{result['seconds']} s{val}"
    )
    err.print(f"Registered {result['name']} at {result['model_path']}; run dir {result['run_dir']}")


def _print_log(row: dict) -> None:
    event = row.get("event")
    if event == "start":
        where = f" x{row['world']} ({row['strategy']})" if row["world"] > 1 else ""
        resumed = f", resuming at step {row['resumed_from']}" if row["resumed_from"] is not None else ""
        err.print(
            f"Training {row['params'] / 1e6:.2f}M parameters on {row['device']}{where} ({row['dtype']}), "
            f"{row['max_steps']} steps of "
            f"{row['tokens_per_step']:,} tokens{resumed}; run dir {row['run_dir']}"
        )
    elif event == "rollback":
        err.print(
            f"[yellow]loss spike {row['spike_loss']:.3f}: rolled back to step {row['step']}, "
            f"LR x{row['lr_scale']:g} (rollback {row['rollbacks']})[/yellow]"
        )
    elif event == "spike":
        err.print(f"[yellow]loss spike {row['loss']:.3f} at step {row['step']}: {row['note']}[/yellow]")
    elif "val_loss" in row:
        bpb = f", {row['val_bpb']:.4f} bits/byte" if "val_bpb" in row else ""
        err.print(f"step {row['step']}: val loss {row['val_loss']:.4f}, ppl {row['val_ppl']:.2f}{bpb}")
    elif "loss" in row:
        mfu = f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
        err.print(
            f"step {row['step']}: loss {row['loss']:.4f}, lr {row['lr']:.2e}, {row['tokens_per_s']:,.0f} tokens/s{mfu}"
        )
