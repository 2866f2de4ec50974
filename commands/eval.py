"""`llmctl eval`: lm-eval harness tasks and perplexity on any registry model; `eval compare` for several.

Examples:
    llmctl eval --model smollm2-135m-instruct --tasks hellaswag,arc_challenge --data-dir ../shared/data --limit 200
    llmctl eval --model M --tasks hellaswag --fail-under hellaswag.acc_norm=0.35
    llmctl eval compare M1 M2 --tasks hellaswag,perplexity --plot cmp.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from llmctl.cli._common import (DeviceOpt, DryRunOpt, DtypeOpt, ForceOpt, JsonOpt, ProfileOpt, SetOpt,
                                command_line, emit_json, err, out, resolve)

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
mmlu_<subject> wikitext perplexity. Other lm-eval task names use lm-eval's
own configs and datasets (needs LLMCTL_ALLOW_NETWORK=1).
perplexity: token perplexity, bits per byte, word perplexity of --data FILE.
--fail-under task.metric=value: exit 3 when below (above, for perplexities).
"""

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
)

TasksOpt = Annotated[Optional[list[str]], typer.Option("--tasks", "-t", help="Comma-separated tasks (repeatable): lm-eval names or perplexity.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Local task data, one folder per family (default $LLMCTL_DATA_DIR).")]
FewshotOpt = Annotated[Optional[int], typer.Option("--num-fewshot", help="Few-shot examples per item (default: the task's).")]
LimitOpt = Annotated[Optional[str], typer.Option("--limit", help="Items per task: a count, or a fraction in (0, 1).")]
BatchOpt = Annotated[Optional[str], typer.Option("--batch-size", help="lm-eval batch size: an integer or auto.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed for python, numpy, torch and few-shot sampling.")]
ChatOpt = Annotated[Optional[bool], typer.Option("--apply-chat-template/--no-chat-template", help="Wrap prompts in the model's chat template.")]
PplDataOpt = Annotated[Optional[Path], typer.Option("--data", help="Text file for the perplexity task (default: wikitext test file in --data-dir).")]
SeqlenOpt = Annotated[Optional[int], typer.Option("--seqlen", help="perplexity: window length in tokens.")]
StrideOpt = Annotated[Optional[int], typer.Option("--stride", help="perplexity: tokens the window moves each step.")]
MaxTokOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="perplexity: score only the first N tokens.")]


def _explicit(tasks, data_dir, num_fewshot, limit, batch_size, seed, apply_chat_template, dtype, device,
              data, seqlen, stride, max_tokens, log_samples=None) -> dict:
    from llmctl.evaluate import parse_batch_size, parse_limit, parse_tasks

    return {
        "tasks": parse_tasks(tasks) if tasks else None,
        "data_dir": str(data_dir) if data_dir else None,
        "num_fewshot": num_fewshot,
        "limit": parse_limit(limit) if limit is not None else None,
        "batch_size": str(parse_batch_size(batch_size)) if batch_size is not None else None,
        "seed": seed, "apply_chat_template": apply_chat_template, "dtype": dtype, "device": device,
        "log_samples": log_samples or None,
        "perplexity.data": str(data) if data else None, "perplexity.seqlen": seqlen,
        "perplexity.stride": stride, "perplexity.max_tokens": max_tokens,
    }


def _check_common(config: dict) -> None:
    from llmctl.errors import UsageError

    if config.get("num_fewshot") is not None and config["num_fewshot"] < 0:
        raise UsageError(f"--num-fewshot must be 0 or more, got {config['num_fewshot']}")
    p = config["perplexity"]
    if p["stride"] > p["seqlen"]:
        raise UsageError(f"--stride {p['stride']} is larger than --seqlen {p['seqlen']}", hint="use stride <= seqlen")


@app.callback(epilog=_LAYOUT)
def eval_(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name or model path.")] = "smollm2-135m-instruct",
    tasks: TasksOpt = None,
    data_dir: DataDirOpt = None,
    num_fewshot: FewshotOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    apply_chat_template: ChatOpt = None,
    log_samples: Annotated[bool, typer.Option("--log-samples", help="Write every scored item beside --output (JSONL per task).")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write lm-eval's results JSON (+ model lineage, llmctl version) here.")] = None,
    fail_under: Annotated[Optional[list[str]], typer.Option("--fail-under", help="Gate task.metric=value (repeatable); exit 3 when below.")] = None,
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="PEFT adapter (name or path) on top of the model.")] = None,
    data: PplDataOpt = None,
    seqlen: SeqlenOpt = None,
    stride: StrideOpt = None,
    max_tokens: MaxTokOpt = None,
    no_attach: Annotated[bool, typer.Option("--no-attach", help="Do not store the results on the model's registry entry.")] = False,
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
        llmctl eval --model M --tasks perplexity --data ../shared/data/wikitext-2-raw/wiki.test.raw --seqlen 2048 --stride 512
        llmctl eval --model M --tasks hellaswag --fail-under hellaswag.acc_norm=0.35      # exit 3 when below
        llmctl eval compare M1 M2 M3 --tasks hellaswag,perplexity --plot cmp.png        # table + PNG bar chart
    """
    if ctx.invoked_subcommand is not None:
        return
    from typer._click.core import ParameterSource  # Typer 0.29 vendors its own click

    if all(ctx.get_parameter_source(p) in (None, ParameterSource.DEFAULT) for p in ctx.params):
        typer.echo(ctx.get_help())  # bare `llmctl eval`: show what it can do instead of guessing
        raise typer.Exit(0)
    from llmctl.errors import GateFailed, UsageError
    from llmctl.evaluate import parse_gates, parse_tasks, run_eval, write_results
    from llmctl.paths import ensure_new

    explicit = _explicit(tasks, data_dir, num_fewshot, limit, batch_size, seed, apply_chat_template, dtype,
                         device, data, seqlen, stride, max_tokens, log_samples)
    config = resolve("eval", profile, set_, explicit, dry_run, json_out)
    _check_common(config)
    task_list = parse_tasks(config["tasks"])
    gates = parse_gates(fail_under, task_list)
    if config["log_samples"] and output is None:
        raise UsageError("--log-samples needs --output (samples are written beside it)")
    if output is not None:
        ensure_new(output, force)
    with err.status("Evaluating …") as status:
        result = run_eval(model, task_list, config, adapter=adapter, gates=gates, command=command_line(),
                          attach=not no_attach, progress=lambda m: status.update(m))
    if output is not None:
        from llmctl.profiles import save_config

        written = write_results(result, output)
        save_config(config, output.with_name(output.name + ".config.yaml"), command_line())
        err.print(f"Wrote {', '.join(str(p) for p in written)}")
    for note in result.notes:
        err.print(f"[dim]{note}[/dim]")
    if json_out:
        emit_json({"model": result.model, "metrics": result.metrics, "results": result.results.get("results", {}),
                   "groups": result.results.get("groups", {}), "n-samples": result.results.get("n-samples", {}),
                   "seconds": round(result.seconds, 3), "failed_gates": result.failed_gates})
    else:
        _print_metrics(result)
    if result.failed_gates:
        raise GateFailed("quality gate failed: " + "; ".join(result.failed_gates),
                         hint="the model scores below the --fail-under threshold")


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


@app.command("compare")
def compare_cmd(
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
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG bar chart of the table here.")] = None,
    from_registry: Annotated[bool, typer.Option("--from-registry", help="Use results stored in the registry instead of running.")] = False,
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
        llmctl eval compare base base-gptq base-pruned --tasks hellaswag,perplexity --data-dir ../shared/data --limit 200
        llmctl eval compare base base-gptq --tasks hellaswag --from-registry --plot cmp.png
    """
    from llmctl.evaluate import compare, parse_tasks, plot_compare
    from llmctl.paths import ensure_new

    explicit = _explicit(tasks, data_dir, num_fewshot, limit, batch_size, seed, apply_chat_template, dtype,
                         device, data, seqlen, stride, max_tokens)
    config = resolve("eval", profile, set_, explicit, dry_run, json_out)
    _check_common(config)
    task_list = parse_tasks(config["tasks"])
    if plot is not None:
        ensure_new(plot, force)
    with err.status("Evaluating …") as status:
        table = compare(models, task_list, config, from_registry=from_registry, command=command_line(),
                        progress=lambda m: status.update(m))
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
