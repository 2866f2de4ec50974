"""Text generation with any registry model: one prompt, a stream, or a JSONL batch.

Examples:
    result = generate("smollm2-135m-instruct", [{"id": 1, "prompt": "Hi"}], config)
    result.items[0]["output"]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llmctl.errors import LlmctlError


@dataclass
class GenerateResult:
    """Answers in input order plus token counts and speed."""

    items: list[dict]
    stats: dict = field(default_factory=dict)
    model: str = ""


def read_prompts_jsonl(path: Path) -> list[dict]:
    """Read {"prompt": …} or {"messages": [...]} lines; every line is checked before any work starts.

    Examples:
        read_prompts_jsonl(Path("prompts.jsonl"))[0]["prompt"]
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise LlmctlError(f"input file {path} not found", hint="check the --input path") from exc
    except UnicodeDecodeError as exc:
        raise LlmctlError(f"input file {path} is not UTF-8 text", hint="give a JSONL file") from exc
    items: list[dict] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LlmctlError(f"{path} line {number} is not valid JSON ({exc.msg})",
                              hint="each line must be one JSON object like {\"prompt\": \"...\"}") from exc
        if not isinstance(obj, dict) or not ("prompt" in obj or "messages" in obj):
            raise LlmctlError(f"{path} line {number} has no \"prompt\" or \"messages\" field",
                              hint="each line must be {\"prompt\": \"...\"} or {\"messages\": [...]}")
        if "prompt" in obj and not isinstance(obj["prompt"], str):
            raise LlmctlError(f"{path} line {number}: \"prompt\" must be a string")
        if "messages" in obj and not _valid_messages(obj["messages"]):
            raise LlmctlError(f"{path} line {number}: \"messages\" must be a list of {{\"role\", \"content\"}} objects")
        obj.setdefault("id", number)
        items.append(obj)
    if not items:
        raise LlmctlError(f"input file {path} has no prompts", hint="add one JSON object per line")
    return items


def _valid_messages(messages) -> bool:
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages)


def _prompt_texts(tokenizer, items: list[dict], chat: bool | None, system: str | None) -> tuple[list[str], bool]:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    use_chat = has_template if chat is None else chat
    if use_chat and not has_template:
        raise LlmctlError("--chat asked for, but this model's tokenizer has no chat template",
                          hint="use --no-chat to send the prompt as plain text")
    texts = []
    for item in items:
        if "messages" in item and not use_chat:
            raise LlmctlError(f"prompt {item.get('id')} has \"messages\" but chat templating is off",
                              hint="drop --no-chat, or give {\"prompt\": ...} lines")
        if use_chat:
            messages = list(item.get("messages") or [{"role": "user", "content": item["prompt"]}])
            if system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": system})
            texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        else:
            texts.append((system + "\n\n" if system else "") + item["prompt"])
    return texts, use_chat


def _penalty_processor(prompt_len: int, frequency: float, presence: float):
    """OpenAI-style frequency/presence penalties over the tokens generated so far."""
    import torch
    from transformers import LogitsProcessor

    class FrequencyPresencePenalty(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, prompt_len:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores)
            counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    return FrequencyPresencePenalty()


def trim_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut text at the first stop sequence; return (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


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
        raise LlmctlError("--num-return-sequences above --num-beams needs sampling",
                          hint="add --do-sample, or raise --num-beams")
    kwargs = {"generation_config": gen}
    if config["frequency_penalty"] or config["presence_penalty"]:
        kwargs["logits_processor"] = LogitsProcessorList(
            [_penalty_processor(prompt_len, config["frequency_penalty"], config["presence_penalty"])])
    if config["stop"]:
        kwargs["stop_strings"] = list(config["stop"])
        kwargs["tokenizer"] = tokenizer
    return kwargs


def generate(model: str, items: list[dict], config: dict, adapter: str | None = None,
             on_text: Callable[[str], None] | None = None, loaded=None) -> GenerateResult:
    """Generate answers for items ({"id", "prompt"|"messages"}) with the resolved config.

    on_text, when given (single prompt, one answer), receives text pieces as they are produced.

    Examples:
        generate("tiny", [{"id": 1, "prompt": "Hello"}], resolve_config("generate"))
    """
    import torch
    from transformers import set_seed

    from llmctl.loading import load_model

    if not items:
        raise LlmctlError("no prompts given", hint="pass --prompt, --input FILE, or text on stdin")
    for item in items:
        if "prompt" in item and not item["prompt"].strip():
            raise LlmctlError("the prompt is empty", hint="give some text with --prompt or on stdin")
    loaded = loaded or load_model(model, dtype=config["dtype"], device=config["device"], adapter=adapter)
    tok, mdl = loaded.tokenizer, loaded.model
    texts, _ = _prompt_texts(tok, items, config["chat"], config["system"])
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
        idx = order[start:start + bs]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: enc[k].to(loaded.device) for k in ("input_ids", "attention_mask")}
        prompt_len = enc["input_ids"].shape[1]
        kwargs = generation_kwargs(mdl, tok, config, prompt_len)
        with torch.inference_mode():
            if stream:
                out = _generate_streaming(mdl, tok, enc, kwargs, config["stop"], on_text)
            else:
                out = mdl.generate(**enc, **kwargs)
        new = out[:, prompt_len:]
        eos_ids = kwargs["generation_config"].eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
        for row, seq in enumerate(new):
            item_pos = idx[row // n_ret]
            ids = seq.tolist()
            # count real new tokens: up to and including the first eos, no padding after it
            count = next((k + 1 for k, t in enumerate(ids) if t in eos_ids), len(ids))
            text = tok.decode(ids[:count], skip_special_tokens=True)
            text, stopped = trim_at_stop(text, config["stop"])
            entry = outputs.setdefault(item_pos, {"texts": [], "new_tokens": 0})
            entry["texts"].append(text)
            entry["new_tokens"] += count
            entry["prompt_tokens"] = int(enc["attention_mask"][row // n_ret].sum())
            new_tokens += count
        prompt_tokens += int(enc["attention_mask"].sum())
    seconds = time.perf_counter() - started
    results = []
    for i, item in enumerate(items):
        o = outputs[i]
        row = {k: v for k, v in item.items()}
        if n_ret == 1:
            row["output"] = o["texts"][0]
        else:
            row["outputs"] = o["texts"]
        row["prompt_tokens"] = o["prompt_tokens"]
        row["new_tokens"] = o["new_tokens"]
        results.append(row)
    stats = {"prompts": len(items), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
             "seconds": round(seconds, 3), "tokens_per_s": round(new_tokens / seconds, 2) if seconds else None,
             "device": loaded.device}
    return GenerateResult(items=results, stats=stats, model=loaded.resolved.label)


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
