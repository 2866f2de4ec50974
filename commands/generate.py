"""`llmctl generate`: answers from any registry model, one prompt, a stream, or a JSONL batch.

Examples:
    llmctl generate --model smollm2-135m-instruct --prompt "What is the capital of France?"
    llmctl generate --model M --input prompts.jsonl --output out.jsonl
    echo "Tell me a joke" | llmctl generate --model M --do-sample --temperature 0.8
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

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
    resolve,
    schema_options,
)

# Option → profile key: every value given here is checked by llmctl/schemas/generate.py.
OPTIONS = dict(ROPE_OPTIONS)  # every other option is named like its key (see schema_options)


@schema_options("generate", OPTIONS)
def generate(
    ctx: typer.Context,
    model: ModelOpt = DEFAULT_MODEL_NAME,
    prompt: Annotated[str | None, typer.Option("--prompt", help="The prompt (else --input, else stdin).")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", "-i", help='JSONL of {"prompt": …} or {"messages": […]} lines.')
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write batch results here as JSONL.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    do_sample: Annotated[bool | None, typer.Option("--do-sample/--greedy")] = None,
    num_beams: Annotated[int | None, typer.Option("--num-beams")] = None,
    length_penalty: Annotated[float | None, typer.Option("--length-penalty")] = None,
    repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty")] = None,
    frequency_penalty: Annotated[float | None, typer.Option("--frequency-penalty")] = None,
    presence_penalty: Annotated[float | None, typer.Option("--presence-penalty")] = None,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="Stop sequence, trimmed from the output (repeatable)")
    ] = None,
    seed: SeedOpt = None,
    num_return_sequences: Annotated[int | None, typer.Option("--num-return-sequences")] = None,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat")] = None,
    system: Annotated[str | None, typer.Option("--system")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they come (single prompt).")] = False,
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="PEFT adapter (name or path) on top of the model.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    backend: Annotated[str | None, typer.Option("--backend")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    rope_scaling: RopeScalingOpt = None,
    rope_factor: RopeFactorOpt = None,
    rope_original_length: RopeOriginalOpt = None,
    stats: Annotated[bool, typer.Option("--stats", help="Report prompt/new tokens and tokens/s on stderr.")] = False,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate text with a model from the registry (or a path).

    Examples:
        llmctl generate --model smollm2-135m-instruct --prompt "What is the capital of France?"
        llmctl generate -m M --input prompts.jsonl --output answers.jsonl --batch-size 8
        llmctl generate -m M --prompt "Once upon" --do-sample --temperature 0.8 --seed 1 --stream
        llmctl generate -m M --input long-prompts.jsonl --rope-scaling dynamic --rope-factor 2
    """
    from llmctl.config.profiles import save_config, side_config_path
    from llmctl.inference.generate import generate as run_generate
    from llmctl.inference.generate import read_prompts_jsonl, write_results_jsonl
    from llmctl.paths import check_output_path

    config = resolve(ctx, "generate", OPTIONS)
    if prompt is not None and input_file is not None:
        raise _usage("give either --prompt or --input, not both")
    if output is not None:  # before the model loads: a bad path must not cost the whole generation
        check_output_path(output, force, what="--output", folder=False)
        check_output_path(side_config_path(output), force, what="--output's config", folder=False)
    if input_file is not None:
        items = read_prompts_jsonl(input_file)
    elif prompt is not None:
        items = [{"id": 1, "prompt": prompt}]
    elif not sys.stdin.isatty():
        text = sys.stdin.read()
        if not text.strip():
            raise _error("stdin is empty", "pipe in a prompt, or pass --prompt")
        items = [{"id": 1, "prompt": text.rstrip("\n")}]
    else:
        raise _usage("no prompt: pass --prompt TEXT, --input FILE.jsonl, or pipe text on stdin")

    single = len(items) == 1 and output is None and input_file is None
    want_stream = stream and single and not json_out

    def on_text(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    with err.status("Loading model and generating …") if not want_stream else _nothing():
        result = run_generate(model, items, config, adapter=adapter, on_text=on_text if want_stream else None)

    if output is not None:
        write_results_jsonl(result.items, output)
        save_config(config, side_config_path(output), command_line())
        err.print(f"Wrote {len(result.items)} results to {output}")
    if json_out:
        emit_json({"model": result.model, "results": result.items, "stats": result.stats})
    elif output is None:
        if want_stream:
            sys.stdout.write("\n")
        else:
            for row in result.items:
                texts = [row["output"]] if "output" in row else row["outputs"]
                for k, text in enumerate(texts):
                    if len(result.items) > 1 or len(texts) > 1:
                        err.print(f"[dim]--- {row['id']}{f'.{k + 1}' if len(texts) > 1 else ''} ---[/dim]")
                    sys.stdout.write(text + "\n")
    if stats:
        s = result.stats
        err.print(
            f"prompt tokens {s['prompt_tokens']}, new tokens {s['new_tokens']}, "
            f"{s['seconds']} s, {s['tokens_per_s']} tokens/s on {s['device']}, backend {s['backend']}"
        )


def _usage(message: str):
    from llmctl.errors import UsageError

    return UsageError(message)


def _error(message: str, hint: str):
    from llmctl.errors import LlmctlError

    return LlmctlError(message, hint=hint)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
