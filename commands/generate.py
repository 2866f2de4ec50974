"""`llmctl generate`: answers from any registry model, one prompt, a stream, or a JSONL batch.

Examples:
    llmctl generate --model smollm2-135m-instruct --prompt "What is the capital of France?"
    llmctl generate --model M --input prompts.jsonl --output out.jsonl
    echo "Tell me a joke" | llmctl generate --model M --do-sample --temperature 0.8
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli._common import (DeviceOpt, DryRunOpt, DtypeOpt, ForceOpt, JsonOpt, ProfileOpt, SetOpt,
                                command_line, emit_json, err, resolve)


def generate(
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name or model path.")] = "smollm2-135m-instruct",
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="The prompt (else --input, else stdin).")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", "-i", help="JSONL of {\"prompt\": …} or {\"messages\": […]} lines.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write batch results here as JSONL.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Tokens to generate at most.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature (>= 0).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample from the k most likely tokens (0 = off).")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling mass in (0, 1].")] = None,
    do_sample: Annotated[Optional[bool], typer.Option("--do-sample/--greedy", help="Sample, or decode greedily.")] = None,
    num_beams: Annotated[Optional[int], typer.Option("--num-beams", help="Beam search width.")] = None,
    length_penalty: Annotated[Optional[float], typer.Option("--length-penalty", help="Beam search length exponent.")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option("--repetition-penalty", help="Penalty on repeated tokens (1 = off).")] = None,
    frequency_penalty: Annotated[Optional[float], typer.Option("--frequency-penalty", help="Penalty per earlier occurrence, -2..2.")] = None,
    presence_penalty: Annotated[Optional[float], typer.Option("--presence-penalty", help="Penalty once a token occurred, -2..2.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop sequence, trimmed from the output (repeatable).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,
    num_return_sequences: Annotated[Optional[int], typer.Option("--num-return-sequences", "-n", help="Answers per prompt.")] = None,
    chat: Annotated[Optional[bool], typer.Option("--chat/--no-chat", help="Apply the model's chat template (default: when it has one).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System message for chat models.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they come (single prompt).")] = False,
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="PEFT adapter (name or path) on top of the model.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Prompts per forward pass in batch mode.")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
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
    """
    from llmctl.generate import generate as run_generate
    from llmctl.generate import read_prompts_jsonl, write_results_jsonl
    from llmctl.paths import ensure_new
    from llmctl.profiles import save_config

    explicit = {
        "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
        "do_sample": do_sample, "num_beams": num_beams, "length_penalty": length_penalty,
        "repetition_penalty": repetition_penalty, "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty, "stop": stop or None, "seed": seed,
        "num_return_sequences": num_return_sequences, "chat": chat, "system": system,
        "batch_size": batch_size, "dtype": dtype, "device": device,
    }
    config = resolve("generate", profile, set_, explicit, dry_run, json_out)
    if prompt is not None and input_file is not None:
        raise _usage("give either --prompt or --input, not both")
    if output is not None:
        ensure_new(output, force)
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
        save_config(config, output.with_name(output.name + ".config.yaml"), command_line())
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
        err.print(f"prompt tokens {s['prompt_tokens']}, new tokens {s['new_tokens']}, "
                  f"{s['seconds']} s, {s['tokens_per_s']} tokens/s on {s['device']}")


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
