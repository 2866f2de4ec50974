"""Text generation with any registry model: one prompt, a stream, or a JSONL batch.

Examples:
    result = generate("smollm2-135m-instruct", [{"id": 1, "prompt": "Hi"}], config)
    result.items[0]["output"]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.inference.prompts import prompt_texts, trim_at_stop
from llmctl.inference.sampling import penalty_processor

__all__ = [
    "GenerateResult",
    "generate",
    "generation_kwargs",
    "read_prompts_jsonl",
    "trim_at_stop",
    "write_results_jsonl",
]


@dataclass
class GenerateResult:
    """Answers in input order plus token counts and speed."""

    items: list[dict]
    stats: dict = field(default_factory=dict)
    model: str = ""


PROMPT_EXAMPLE = '{"prompt": "…"} or {"messages": [{"role": "user", "content": "…"}]}'


def read_prompts_jsonl(path: Path) -> list[dict]:
    """Read {"prompt": …} or {"messages": [...]} records (JSONL, JSON or Parquet); all checked before any work.

    Examples:
        read_prompts_jsonl(Path("prompts.jsonl"))[0]["prompt"]
    """
    from llmctl.data.layouts import detect
    from llmctl.data.records import DataFile

    source = DataFile(path, what="input file", option="--input", fmt="records", example='{"prompt": "…"}').check()
    items: list[dict] = []
    for rec in source.records():
        obj = rec.value
        if "prompt" not in obj and "messages" not in obj:
            fields = ", ".join(sorted(obj)[:12]) or "none"
            raise source.error(
                f'has no "prompt" or "messages" field (fields: {fields})',
                where=rec.where,
                hint=f"each record must be {PROMPT_EXAMPLE}",
            )
        detect(obj, among=("chat", "completion"), source=source, where=rec.where, hint=f"give {PROMPT_EXAMPLE}")
        obj.setdefault("id", rec.number)  # the line number (JSONL), item (JSON array) or row (Parquet)
        items.append(obj)
    return items


def generation_kwargs(model, tokenizer, config: dict, prompt_len: int) -> dict:
    """The keyword arguments for `model.generate` that a resolved generate config means."""
    from transformers import GenerationConfig, LogitsProcessorList

    do_sample = bool(config["do_sample"]) and config["temperature"] > 0
    base = getattr(model, "generation_config", None)
    gen = GenerationConfig(
        max_new_tokens=config["max_new_tokens"],
        do_sample=do_sample,
        num_beams=config["num_beams"],
        length_penalty=config["length_penalty"],
        repetition_penalty=config["repetition_penalty"],
        num_return_sequences=config["num_return_sequences"],
        bos_token_id=getattr(base, "bos_token_id", None),
        eos_token_id=getattr(base, "eos_token_id", None) or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if do_sample:
        gen.temperature = config["temperature"]
        gen.top_k = config["top_k"] or None
        gen.top_p = config["top_p"]
    else:
        gen.temperature, gen.top_k, gen.top_p = None, None, None
    if config["num_return_sequences"] > max(1, config["num_beams"]) and not do_sample:
        raise LlmctlError(
            "--num-return-sequences above --num-beams needs sampling", hint="add --do-sample, or raise --num-beams"
        )
    kwargs = {"generation_config": gen}
    if config["frequency_penalty"] or config["presence_penalty"]:
        kwargs["logits_processor"] = LogitsProcessorList(
            [penalty_processor(prompt_len, config["frequency_penalty"], config["presence_penalty"])]
        )
    if config["stop"]:
        kwargs["stop_strings"] = list(config["stop"])
        kwargs["tokenizer"] = tokenizer
    return kwargs


def generate(
    model: str,
    items: list[dict],
    config: dict,
    adapter: str | None = None,
    on_text: Callable[[str], None] | None = None,
    loaded=None,
) -> GenerateResult:
    """Generate answers for items ({"id", "prompt"|"messages"}) with the resolved config.

    on_text, when given (single prompt, one answer), receives text pieces as they are produced.

    Examples:
        generate("tiny", [{"id": 1, "prompt": "Hello"}], resolve_config("generate"))
    """
    import torch
    from transformers import set_seed

    from llmctl.models.loading import load_model

    if not items:
        raise LlmctlError("no prompts given", hint="pass --prompt, --input FILE, or text on stdin")
    for item in items:
        if "prompt" in item and not item["prompt"].strip():
            raise LlmctlError("the prompt is empty", hint="give some text with --prompt or on stdin")
    if loaded is None:
        resolved, backend, why = pick_backend(model, config, adapter, prompts=len(items))
        if backend != "hf":
            return generate_on_backend(backend, why, resolved, items, config, on_text)
    loaded = loaded or load_model(
        resolved, dtype=config["dtype"], device=config["device"], adapter=adapter, rope=config.get("rope")
    )
    tok, mdl = loaded.tokenizer, loaded.model
    texts, _ = prompt_texts(tok, items, config["chat"], config["system"])
    if config["seed"] is not None:
        set_seed(config["seed"])
    n_ret = config["num_return_sequences"]
    stream = on_text is not None and len(items) == 1 and n_ret == 1 and config["num_beams"] == 1
    # Longest prompts first so each batch pads little; answers are put back in input order.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    outputs: dict[int, dict] = {}
    prompt_tokens = new_tokens = 0
    started = time.perf_counter()
    tok.padding_side = "left"
    bs = config["batch_size"]
    for start in range(0, len(order), bs):
        idx = order[start : start + bs]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: enc[k].to(loaded.device) for k in ("input_ids", "attention_mask")}
        kwargs = generation_kwargs(mdl, tok, config, enc["input_ids"].shape[1])
        with torch.inference_mode():
            if stream:
                out = _generate_streaming(mdl, tok, enc, kwargs, config["stop"], on_text)
            else:
                out = mdl.generate(**enc, **kwargs)
        new_tokens += _decode_batch(tok, out, enc, idx, kwargs, config, outputs)
        prompt_tokens += int(enc["attention_mask"].sum())
    seconds = time.perf_counter() - started
    results = _result_rows(items, outputs, n_ret)
    stats = {
        "prompts": len(items),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(new_tokens / seconds, 2) if seconds else None,
        "device": loaded.device,
        "backend": "hf",
    }
    if loaded.info.get("rope"):
        stats["rope_scaling"] = loaded.info["rope"]  # the run-time override, with the results it shaped
    return GenerateResult(items=results, stats=stats, model=loaded.resolved.label)


def _decode_batch(tok, out, enc: dict, idx: list[int], kwargs: dict, config: dict, outputs: dict) -> int:
    """Decode one batch's answers into outputs[item position] (texts, token counts); returns its new tokens."""
    n_ret, prompt_len = config["num_return_sequences"], enc["input_ids"].shape[1]
    eos_ids = kwargs["generation_config"].eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
    total = 0
    for row, seq in enumerate(out[:, prompt_len:]):
        ids = seq.tolist()
        # count real new tokens: up to and including the first eos, no padding after it
        count = next((k + 1 for k, t in enumerate(ids) if t in eos_ids), len(ids))
        text, _stopped = trim_at_stop(tok.decode(ids[:count], skip_special_tokens=True), config["stop"])
        entry = outputs.setdefault(idx[row // n_ret], {"texts": [], "new_tokens": 0})
        entry["texts"].append(text)
        entry["new_tokens"] += count
        entry["prompt_tokens"] = int(enc["attention_mask"][row // n_ret].sum())
        total += count
    return total


def _result_rows(items: list[dict], outputs: dict, n_ret: int) -> list[dict]:
    """Each item with its answer (`output`, or `outputs` for several per prompt) and token counts, in input order."""
    results = []
    for i, item in enumerate(items):
        o = outputs[i]
        row = dict(item)
        if n_ret == 1:
            row["output"] = o["texts"][0]
        else:
            row["outputs"] = o["texts"]
        row["prompt_tokens"] = o["prompt_tokens"]
        row["new_tokens"] = o["new_tokens"]
        results.append(row)
    return results


def pick_backend(model: str, config: dict, adapter: str | None, prompts: int = 1):
    """(resolved model, backend name, why) for generate: config["backend"], or what `auto` picks.

    auto keeps hf whenever a setting only hf has is asked for (beam search, --adapter, an explicit dtype, a
    seeded sample: another backend draws other tokens from the same seed); prompts × answers ×
    max_new_tokens is the work that decides whether an fp32 OpenVINO IR is made (llmctl.inference.backends).
    """
    from llmctl.inference import backends
    from llmctl.models.resolve import resolve_model

    resolved = resolve_model(model)
    name = config.get("backend", "hf")
    if name != "auto":
        return resolved, backends.check_name(name), "asked for"
    sampled = config["do_sample"] and config["temperature"] > 0
    hf_settings = [
        ("beam search (--num-beams)", config["num_beams"] > 1),
        ("--adapter", bool(adapter)),
        (f"--dtype {config['dtype']}", config["dtype"] != "auto"),
        ("RoPE scaling (--rope-scaling)", bool((config.get("rope") or {}).get("scaling"))),
        ("sampling with --seed", sampled and config["seed"] is not None),
        ("--num-return-sequences without sampling", config["num_return_sequences"] > 1 and not sampled),
    ]
    hf_only = next((what for what, asked in hf_settings if asked), None)
    work = prompts * config["num_return_sequences"] * config["max_new_tokens"]
    name, why = backends.choose(resolved, config["device"], hf_only=hf_only, work_tokens=work)
    return resolved, name, why


def generate_on_backend(
    backend: str, why: str, resolved, items: list[dict], config: dict, on_text: Callable[[str], None] | None = None
) -> GenerateResult:
    """Answer items on a non-hf backend through the inference engine (the same path `llmctl serve` uses)."""
    import threading

    from llmctl.inference import backends
    from llmctl.inference.backends.base import BackendOptions
    from llmctl.inference.engine import Engine
    from llmctl.inference.sampling import from_generate_config

    if config["num_beams"] > 1:
        raise LlmctlError(f"beam search runs on the hf backend only, not {backend}", hint="use --backend hf")
    if (config.get("rope") or {}).get("scaling"):
        raise LlmctlError(
            f"RoPE scaling at load time runs on the hf backend only, not {backend}", hint="use --backend hf"
        )
    n = config["num_return_sequences"]
    slots = 1 if len(items) * n == 1 else max(config["batch_size"], n)
    options = BackendOptions(max_batch=slots, device=config["device"], dtype=config["dtype"], say=_say)
    if config.get("backend") == "auto":
        options = backends.auto_options(backend, resolved, options)
    engine = Engine(backends.create(backend, resolved, options), max_concurrency=slots)
    answers = [[""] * n for _ in items]
    tokens = [0] * len(items)
    left = threading.Semaphore(0)
    failures: list[str] = []

    def sink_for(i: int):
        def sink(chunk) -> None:
            answers[i][chunk.index] += chunk.text
            if on_text is not None and len(items) * n == 1 and chunk.text:
                on_text(chunk.text)
            if chunk.finish_reason is not None:
                tokens[i] += chunk.completion_tokens
                if chunk.error:
                    failures.append(chunk.error)
                left.release()

        return sink

    try:
        prompts = _backend_prompts(engine.backend, items, config)
        started = time.perf_counter()
        engine.start()
        params = from_generate_config(config)
        for i, ids in enumerate(prompts):
            engine.submit(ids, params, n, sink_for(i))
        for _ in range(len(items) * n):
            left.acquire()
    finally:
        engine.stop()
    if failures:
        raise LlmctlError(f"generation on the {backend} backend failed ({failures[0]})")
    seconds = time.perf_counter() - started
    results = []
    for i, item in enumerate(items):
        row = dict(item)
        row.update({"output": answers[i][0]} if n == 1 else {"outputs": answers[i]})
        row.update({"prompt_tokens": len(prompts[i]), "new_tokens": tokens[i]})
        results.append(row)
    new_tokens = sum(tokens)
    stats = {
        "prompts": len(items),
        "prompt_tokens": sum(len(p) for p in prompts),
        "new_tokens": new_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(new_tokens / seconds, 2) if seconds else None,
        "device": engine.backend.info.get("device", "cpu"),
        "backend": backend,
        "backend_reason": why,
    }
    return GenerateResult(items=results, stats=stats, model=resolved.label)


def _say(message: str) -> None:
    """A one-time set-up step (a conversion) on stderr: stdout carries only answers."""
    import sys

    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


def _backend_prompts(backend, items: list[dict], config: dict) -> list[list[int]]:
    """Token ids of each item's prompt on a backend; a prompt that leaves no room for the answer is an error."""
    texts, _ = prompt_texts(backend.codec, items, config["chat"], config["system"])
    prompts = [backend.codec.encode(t) for t in texts]
    for item, ids in zip(items, prompts):
        if len(ids) + config["max_new_tokens"] > backend.max_model_len:
            raise LlmctlError(
                f"prompt {item.get('id')} has {len(ids)} tokens; with --max-new-tokens "
                f"{config['max_new_tokens']} that is over the model's {backend.max_model_len}",
                hint="shorten the prompt or lower --max-new-tokens",
            )
    return prompts


def _generate_streaming(model, tokenizer, enc, kwargs, stops: list[str], on_text):
    """Run generate in a thread and pass decoded text on as it comes, holding back possible stop prefixes."""
    import threading

    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    box: dict = {}

    def work():
        try:
            box["out"] = model.generate(**enc, **kwargs, streamer=streamer)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    hold = max((len(s) for s in stops), default=1) - 1
    buffer, emitted, done = "", 0, False
    for piece in streamer:
        if done:
            continue
        buffer += piece
        text, found = trim_at_stop(buffer, stops)
        if found:
            on_text(text[emitted:])
            done = True
            continue
        safe = len(buffer) - hold if hold > 0 else len(buffer)
        if safe > emitted:
            on_text(buffer[emitted:safe])
            emitted = safe
    thread.join()
    if "error" in box:
        raise box["error"]
    if not done and len(buffer) > emitted:
        on_text(buffer[emitted:])
    return box["out"]


def write_results_jsonl(results: list[dict], path: Path) -> None:
    """Write one JSON object per line, atomically."""
    from llmctl.paths import atomic_file

    with atomic_file(path) as fh:
        for row in results:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
