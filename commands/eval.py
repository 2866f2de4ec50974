"""`llmctl eval`: lm-eval harness tasks and perplexity on any registry model; `eval compare` for several.

Examples:
    llmctl eval --model smollm2-135m-instruct --tasks hellaswag,arc_challenge --data-dir ../shared/data --limit 200
    llmctl eval --model M --tasks hellaswag --fail-under hellaswag.acc_norm=0.35
    llmctl eval compare M1 M2 --tasks hellaswag,perplexity --plot cmp.png
    llmctl eval --model M --tasks passkey --context-lengths 2048,4096,8192 --rope-scaling yarn --rope-factor 2
    torchrun --nproc_per_node 4 $(which llmctl) eval --model M --tasks hellaswag --data-dir D   # data-parallel
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from llmctl.cli._common import (
    DEFAULT_MODEL_NAME,
    ROPE_OPTIONS,
    DeviceOpt,
    DryRunOpt,
    DtypeOpt,
    ForceOpt,
    JsonOpt,
    ModelOpt,
    ProfileOpt,
    RopeFactorOpt,
    RopeOriginalOpt,
    RopeScalingOpt,
    SeedOpt,
    SetOpt,
    command_line,
    emit_json,
    err,
    int_list,
    out,
    resolve,
    schema_options,
)

_LAYOUT = """
Local data: --data-dir DIR (or $LLMCTL_DATA_DIR), one folder per task family:
  DIR/hellaswag/  HellaSwag original jsonl or HF layout
  DIR/arc/        AI2 ARC jsonl or HF layout, Easy/Challenge in the name
  DIR/piqa/       HF layout, or original valid.jsonl + valid-labels.lst
  DIR/winogrande/ HF or original layout (sentence, option1, option2, answer)
  DIR/mmlu/       HF layout with a subject column, or <subject>_test.csv
  DIR/wikitext/   raw text (wiki.test.raw) or HF parquet/jsonl
                  (wikitext-2-raw/ and similar folder names match too)
Files: jsonl, json, parquet or csv. The split comes from the file name:
val/valid/validation/dev = validation, test, train (MMLU: dev = few-shot).
Scored: validation (hellaswag, piqa, winogrande), test (arc, mmlu, wikitext).
Offline tasks: hellaswag arc_easy arc_challenge piqa winogrande mmlu
mmlu_<subject> wikitext perplexity passkey reward_accuracy. Other lm-eval task
names use lm-eval's own configs and datasets (needs LLMCTL_ALLOW_NETWORK=1).
perplexity: token perplexity, bits per byte, word perplexity of --data FILE;
  --length-buckets 512,2048,8192 adds perplexity by token position.
passkey: a number hidden at several depths of filler text (no data needed);
  accuracy per (length, depth) for --context-lengths, heat-map with --plot.
reward_accuracy: a reward model (finetune --objective reward) on preference
  pairs in --data FILE: pair_accuracy (chosen scored above rejected), mean_margin.
exact_match: greedy answers to {"prompt", "answer"} records in --data FILE, read
  by --set exact_match.extract=number|last_line|exact (number: GRPO's math_exact).
win_rate: greedy answers of --model and --reference to the prompts in --data,
  scored by --reward-model: win_rate (ties half), reward_diff, kl_per_token.
preference_accuracy: --model's implicit reward on pairs in --data: log-ratio
  to --reference (DPO/IPO/KTO), or without it its own mean log-prob (ORPO/SimPO).
--rope-scaling linear|dynamic|yarn|llama3 --rope-factor F: RoPE scaling on load.
Under torchrun every process takes a share of the requests (same scores).
--fail-under task.metric=value: exit 3 when below (above, for perplexities).
"""

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
)

TasksOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tasks",
        help="Comma-separated tasks (repeatable): lm-eval names, perplexity, passkey, reward_accuracy, exact_match, "
        "win_rate or preference_accuracy.",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Local task data, one folder per family (default $LLMCTL_DATA_DIR)."),
]
FewshotOpt = Annotated[
    int | None, typer.Option("--num-fewshot", help="Few-shot examples per item (default: the task's).")
]
LimitOpt = Annotated[float | None, typer.Option("--limit", help="Items per task")]
BatchOpt = Annotated[str | None, typer.Option("--batch-size", help="lm-eval batch size: an integer or auto.")]
ChatOpt = Annotated[
    bool | None,
    typer.Option("--apply-chat-template/--no-chat-template", help="Wrap prompts in the model's chat template."),
]
PplDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="perplexity: a text file (default: wikitext test file in --data-dir); reward_accuracy, "
        "preference_accuracy: preference pairs; exact_match: {prompt, answer} records; win_rate: prompts.",
    ),
]
RewardModelOpt = Annotated[
    str | None,
    typer.Option(
        "--reward-model", help="win_rate: the reward model scoring both answers (finetune --objective reward)."
    ),
]
ReferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--reference",
        help="win_rate: the model compared with; preference_accuracy: the reference of the implicit reward.",
    ),
]
SeqlenOpt = Annotated[int | None, typer.Option("--seqlen", help="perplexity: window length in tokens.")]
StrideOpt = Annotated[int | None, typer.Option("--stride", help="perplexity: tokens the window moves each step.")]
MaxTokOpt = Annotated[int | None, typer.Option("--max-tokens", help="perplexity: score only the first N tokens.")]
BucketsOpt = Annotated[
    str | None, typer.Option("--length-buckets", help="perplexity by token position: bucket ends, e.g. 512,2048,8192.")
]
LengthsOpt = Annotated[
    str | None, typer.Option("--context-lengths", help="passkey: prompt lengths in tokens, e.g. 2048,4096,8192.")
]


def _tasks(values: list[str]) -> list[str]:
    from llmctl.evaluate import parse_tasks

    return parse_tasks(values)


# Option → profile key: every value given here is checked by llmctl/schemas/eval.py (shared by eval and compare).
OPTIONS = {
    "tasks": ("tasks", _tasks),
    "seqlen": "perplexity.seqlen",
    "stride": "perplexity.stride",
    "max_tokens": "perplexity.max_tokens",
    "length_buckets": ("perplexity.length_buckets", int_list),
    "context_lengths": ("passkey.context_lengths", int_list),
    **ROPE_OPTIONS,
}


@app.callback(epilog=_LAYOUT)
@schema_options("eval", OPTIONS)
def eval_(
    ctx: typer.Context,
    model: ModelOpt = DEFAULT_MODEL_NAME,
    tasks: TasksOpt = None,
    data_dir: DataDirOpt = None,
    num_fewshot: FewshotOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    apply_chat_template: ChatOpt = None,
    log_samples: Annotated[
        bool, typer.Option("--log-samples", help="Write every scored item beside --output (JSONL per task).")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write lm-eval's results JSON (+ model lineage, llmctl version) here."),
    ] = None,
    fail_under: Annotated[
        list[str] | None,
        typer.Option("--fail-under", help="Gate task.metric=value (repeatable); exit 3 when below."),
    ] = None,
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="PEFT adapter (name or path) on top of the model.")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="Score a served model instead (an OpenAI-compatible server: llmctl serve, llama.cpp, vLLM) through "
            "lm-eval's local-completions; --model gives its tokenizer.",
        ),
    ] = None,
    served_name: Annotated[
        str | None, typer.Option("--served-name", help="With --base-url: the server's model id (default: its first).")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="With --base-url: tokenizer folder (default: --model's).")
    ] = None,
    data: PplDataOpt = None,
    seqlen: SeqlenOpt = None,
    stride: StrideOpt = None,
    max_tokens: MaxTokOpt = None,
    length_buckets: BucketsOpt = None,
    context_lengths: LengthsOpt = None,
    reward_model: RewardModelOpt = None,
    reference: ReferenceOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="passkey: write the accuracy heat-map PNG here.")] = None,
    rope_scaling: RopeScalingOpt = None,
    rope_factor: RopeFactorOpt = None,
    rope_original_length: RopeOriginalOpt = None,
    no_attach: Annotated[
        bool, typer.Option("--no-attach", help="Do not store the results on the model's registry entry.")
    ] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate a model on lm-eval tasks and perplexity, offline, with optional CI gates.

    Examples:
        llmctl eval --model smollm2-135m-instruct --tasks hellaswag,arc_challenge --data-dir ../shared/data --limit 200
        llmctl eval --model M --tasks arc_easy,piqa,winogrande,mmlu --num-fewshot 5 --batch-size 16 --json
        llmctl eval --model M --tasks perplexity --data wikitext-2-raw/wiki.test.raw --seqlen 2048 --stride 512
        llmctl eval --model M --tasks hellaswag --fail-under hellaswag.acc_norm=0.35      # exit 3 when below
        llmctl eval compare M1 M2 M3 --tasks hellaswag,perplexity --plot cmp.png        # table + PNG bar chart
        llmctl eval --model M --tasks passkey --context-lengths 4096,8192,16384 --plot passkey.png
        llmctl eval --model M --tasks perplexity --data long.txt --length-buckets 512,2048,8192
        llmctl eval --model M --base-url http://127.0.0.1:8000 --tasks hellaswag --limit 200   # a served model
        llmctl eval --model grpo-math --tasks exact_match --data heldout.jsonl --fail-under exact_match.exact_match=0.3
        llmctl eval --model ppo-lora --tasks win_rate --data prompts.jsonl --reward-model rm --reference base
        llmctl eval --model dpo-lora --tasks preference_accuracy --data pairs.jsonl --reference base
    """
    if ctx.invoked_subcommand is not None:
        return
    if all(getattr(ctx.get_parameter_source(p), "name", "DEFAULT") == "DEFAULT" for p in ctx.params):
        typer.echo(ctx.get_help())  # bare `llmctl eval`: show what it can do instead of guessing
        raise typer.Exit(0)
    from llmctl.config.profiles import side_config_path
    from llmctl.errors import GateFailed, UsageError
    from llmctl.evaluate import parse_gates, parse_tasks, run_eval, write_results

    config = resolve(ctx, "eval", OPTIONS)
    task_list = parse_tasks(config["tasks"])
    gates = parse_gates(fail_under, task_list)
    heatmap = _check_outputs(output, plot, force, config["log_samples"], task_list)
    if base_url is None and (served_name or tokenizer):
        raise UsageError("--served-name and --tokenizer go with --base-url", hint="add --base-url URL or drop them")
    if base_url is not None and adapter:
        raise UsageError("--adapter loads weights in-process; a served model has its adapter on the server")
    with err.status("Evaluating …") as status:
        if base_url is not None:
            from llmctl.evaluate.remote import run_remote_eval

            result = run_remote_eval(
                base_url,
                model,
                task_list,
                config,
                served_name=served_name,
                tokenizer=tokenizer,
                gates=gates,
                command=command_line(),
                attach=not no_attach,
                progress=lambda m: status.update(m),
            )
        else:
            result = run_eval(
                model,
                task_list,
                config,
                adapter=adapter,
                gates=gates,
                command=command_line(),
                attach=not no_attach,
                progress=lambda m: status.update(m),
            )
    if not result.main:
        return  # a process other than rank 0 under torchrun: rank 0 reports
    if heatmap is not None and "passkey_heatmap" in result.files:
        from llmctl.evaluate.passkey import plot_heatmap

        plot_heatmap(result.files["passkey_heatmap"], heatmap, title=f"passkey: {result.model}")
        err.print(f"Wrote {heatmap}")
    if output is not None:
        from llmctl.config.profiles import save_config

        written = write_results(result, output)
        save_config(config, side_config_path(output), command_line())
        err.print(f"Wrote {', '.join(str(p) for p in written)}")
    for note in result.notes:
        err.print(f"[dim]{note}[/dim]")
    if json_out:
        emit_json(
            {
                "model": result.model,
                "metrics": result.metrics,
                "results": result.results.get("results", {}),
                "groups": result.results.get("groups", {}),
                "n-samples": result.results.get("n-samples", {}),
                "seconds": round(result.seconds, 3),
                "failed_gates": result.failed_gates,
            }
        )
    else:
        _print_metrics(result)
        _print_passkey(result)
    if result.failed_gates:
        raise GateFailed(
            "quality gate failed: " + "; ".join(result.failed_gates),
            hint="the model scores below the --fail-under threshold",
        )


def _check_outputs(output: Path | None, plot: Path | None, force: bool, log_samples: bool, tasks: list) -> Path | None:
    """Refuse bad output paths before the model loads (a bad path must not cost the whole evaluation); returns
    where the passkey heat-map goes (--plot, or beside --output)."""
    from llmctl.config.profiles import side_config_path
    from llmctl.errors import UsageError
    from llmctl.paths import check_output_path

    if log_samples and output is None:
        raise UsageError("--log-samples needs --output (samples are written beside it)")
    if output is not None:
        check_output_path(output, force, what="--output", folder=False)
        sides = [side_config_path(output)]  # side files follow --output's --force rule
        if log_samples:
            sides += [output.with_name(f"{output.stem}.samples_{task}.jsonl") for task in tasks]
        for side in sides:
            check_output_path(side, force, what="--output's side file", folder=False)
    if plot is not None:
        if "passkey" not in tasks:
            raise UsageError("--plot draws the passkey heat-map; add passkey to --tasks")
        check_output_path(plot, force, what="--plot", folder=False)
    return plot or (output.with_name(output.stem + ".passkey.png") if output is not None else None)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _print_metrics(result) -> None:
    table = Table("task", "metric", "value", "± stderr", "n", title=f"{result.model} ({result.seconds:.1f} s)")
    blocks = {**result.results.get("results", {}), **result.results.get("groups", {})}
    nsamples = result.results.get("n-samples", {})
    for key, value in result.metrics.items():
        task, metric = key.split(".", 1)
        block = blocks.get(task, {})
        base = metric.split(".")[0]
        stderr = block.get(f"{base}_stderr,none")
        n = (nsamples.get(task) or {}).get("effective", "")
        table.add_row(task, metric, _fmt(value), f"{stderr:.4f}" if isinstance(stderr, float) else "", str(n))
    out.print(table)


def _print_passkey(result) -> None:
    """The passkey accuracy table: depth (rows) x context length (columns)."""
    cfg = result.results.get("configs", {}).get("passkey")
    if not cfg:
        return
    table = Table(
        "depth", *(str(n) for n in cfg["context_lengths"]), title=f"passkey accuracy ({cfg['samples']} per cell)"
    )
    for depth, row in zip(cfg["depths"], cfg["table"]):
        table.add_row(f"{depth:.0%}", *(f"{v:.2f}" for v in row))
    out.print(table)


@app.command("compare")
@schema_options("eval", OPTIONS)
def compare_cmd(
    ctx: typer.Context,
    models: Annotated[list[str], typer.Argument(help="Registry names or paths of the models to compare.")],
    tasks: TasksOpt = None,
    data_dir: DataDirOpt = None,
    num_fewshot: FewshotOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    apply_chat_template: ChatOpt = None,
    data: PplDataOpt = None,
    seqlen: SeqlenOpt = None,
    stride: StrideOpt = None,
    max_tokens: MaxTokOpt = None,
    length_buckets: BucketsOpt = None,
    context_lengths: LengthsOpt = None,
    reward_model: RewardModelOpt = None,
    reference: ReferenceOpt = None,
    rope_scaling: RopeScalingOpt = None,
    rope_factor: RopeFactorOpt = None,
    rope_original_length: RopeOriginalOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG bar chart of the table here.")] = None,
    from_registry: Annotated[
        bool, typer.Option("--from-registry", help="Use results stored in the registry instead of running.")
    ] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate several models on the same tasks and show one table (and a PNG bar chart).

    Examples:
        llmctl eval compare base base-gptq base-pruned --tasks hellaswag,perplexity --data-dir DATA --limit 200
        llmctl eval compare base base-gptq --tasks hellaswag --from-registry --plot cmp.png
    """
    from llmctl.evaluate import compare, parse_tasks, plot_compare
    from llmctl.paths import check_output_path

    config = resolve(ctx, "eval", OPTIONS)
    task_list = parse_tasks(config["tasks"])
    if plot is not None:
        check_output_path(plot, force, what="--plot", folder=False)
    with err.status("Evaluating …") as status:
        table = compare(
            models,
            task_list,
            config,
            from_registry=from_registry,
            command=command_line(),
            progress=lambda m: status.update(m),
        )
    from llmctl.training.dist import env_rank

    if env_rank() != 0:
        return  # a process other than rank 0 under torchrun: rank 0 reports
    if plot is not None:
        plot_compare(table, plot)
        err.print(f"Wrote {plot}")
    if json_out:
        emit_json(table)
        return
    # one row per metric, one column per model: metric names are long, model lists short
    view = Table("metric", *(row["model"] for row in table["rows"]))
    view.columns[0].no_wrap = True
    for col in table["columns"]:
        view.add_row(col, *(_fmt(row["metrics"][col]) if col in row["metrics"] else "-" for row in table["rows"]))
    out.print(view)
