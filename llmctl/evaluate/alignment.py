"""The alignment eval tasks, scored by llmctl on the loaded model (a full model or a LoRA adapter on its base).

- `exact_match`: greedy answers (llmctl.inference's generate, the model's chat template) to {prompt, answer}
  records; the answer is read by `exact_match.extract`: `number` is GRPO's `math_exact` reward itself (the last
  number equals the answer), `last_line` the last non-empty line, `exact` the whole answer (both stripped).
- `win_rate`: greedy answers of the model and of `--reference` to the same prompts (through the template, as
  PPO/GRPO generate them), both scored by `--reward-model`; win rate (ties count half), the mean reward difference,
  and the KL of the model to the reference on the model's own answers: the log-ratio log p(y) − log p_ref(y)
  summed over each answer's tokens (nats per answer) and divided by its length (nats per token), as PPO reports.
- `preference_accuracy`: the share of pairs whose chosen reply the policy's implicit reward ranks above the
  rejected one: log π(y|x) − log π_ref(y|x) with `--reference` (DPO, IPO, KTO), else the policy's own mean
  log-probability per reply token (ORPO, SimPO); ties count as wrong.

Every metric comes with its standard error (sample standard deviation / √n) in lm-eval's result layout.

Examples:
    run_alignment(results, loaded, {"exact_match": Path("math.jsonl")}, config, say)
    results["results"]["exact_match"]["exact_match,none"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.evaluate.tasks import ALIGNMENT_METRICS, EXACT_MATCH, PREFERENCE_ACCURACY, WIN_RATE

RECORD_EXAMPLE = '{"prompt": "What is 2 + 3?", "answer": "5"}'


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / √n; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(1, n - 1)
    return mean, math.sqrt(var / n)


def _block(task: str, values: dict[str, list[float]]) -> dict:
    block: dict = {"alias": task}
    for metric, xs in values.items():
        block[f"{metric},none"], block[f"{metric}_stderr,none"] = mean_stderr(xs)
    return block


def _template(loaded) -> str:
    """The template the model was trained with (recorded on its registry entry), else auto."""
    entry = loaded.resolved.entry
    return (entry.meta.get("template") if entry is not None else None) or "auto"


# ---- before loading ---------------------------------------------------------------------------------------------


def _resolve_reference(spec: str):
    from llmctl.models import formats
    from llmctl.models.resolve import resolve_model

    try:
        resolved = resolve_model(spec)
    except LlmctlError as exc:
        raise LlmctlError(f"--reference {spec}: {exc.message}", hint=exc.hint) from None
    if formats.get(resolved.format).kind not in ("model", "adapter"):
        raise LlmctlError(
            f"--reference {spec} has format {resolved.format!r}, which cannot be loaded as a language model",
            hint="give the model the policy started from (a registry name or a model folder)",
        )
    return resolved


def check_models(tasks: dict[str, Path], config: dict) -> None:
    """The reward model is one and the reference exists, before anything loads."""
    if WIN_RATE in tasks:
        from llmctl.finetune.rewards import locate_reward_model

        locate_reward_model(config["reward_model"])
    if config.get("reference") and (WIN_RATE in tasks or PREFERENCE_ACCURACY in tasks):
        _resolve_reference(config["reference"])


def settings(task: str, config: dict) -> dict:
    """What a task's numbers were measured with (kept in the registry entry's meta.eval)."""
    own = config[task]
    out = {"data": own["data"] or config.get("data")}
    if task == EXACT_MATCH:
        out.update(extract=own["extract"], max_new_tokens=own["max_new_tokens"])
    elif task == WIN_RATE:
        out.update(reference=config["reference"], reward_model=config["reward_model"])
        out.update(max_new_tokens=own["max_new_tokens"], seq_len=own["seq_len"])
    else:
        out.update(reference=config.get("reference"), seq_len=own["seq_len"])
    return out


# ---- exact_match ------------------------------------------------------------------------------------------------


def read_answer_records(path: Path, limit: int | None) -> list[dict]:
    """{prompt, answer} records of a JSONL/JSON/Parquet file, every one checked before any generation."""
    from llmctl.data.records import DataFile

    source = DataFile(path, what="records file", option="--data", fmt="records", example=RECORD_EXAMPLE).check()
    out: list[dict] = []
    for rec in source.records():
        obj = rec.value
        fields = ", ".join(sorted(obj)[:12]) or "none"
        for key, ok in (("prompt", str), ("answer", (str, int, float))):
            if key not in obj:
                raise source.error(
                    f'has no "{key}" field (fields: {fields})', where=rec.where, hint=f"give {RECORD_EXAMPLE}"
                )
            if not isinstance(obj[key], ok) or isinstance(obj[key], bool):
                raise source.error(
                    f'"{key}" is not {"text" if key == "prompt" else "text or a number"}',
                    where=rec.where,
                    hint=f"give {RECORD_EXAMPLE}",
                )
        out.append({"id": rec.number, "prompt": obj["prompt"], "answer": obj["answer"]})
        if limit and len(out) >= limit:
            break
    return out


def matches(rule: str, completion: str, answer) -> bool:
    """Whether a completion gives the answer under an extraction rule (number, last_line, exact)."""
    if rule == "number":
        from llmctl.finetune.rewards import math_exact

        return math_exact(None, completion, answer=answer) == 1.0
    want = str(answer).strip()
    if rule == "last_line":
        lines = [line.strip() for line in completion.splitlines() if line.strip()]
        return bool(lines) and lines[-1] == want
    return completion.strip() == want


def run_exact_match(loaded, path: Path, config: dict) -> dict:
    """Greedy answers through llmctl.inference's generate, compared with each record's answer."""
    from llmctl.config.profiles import resolve_config
    from llmctl.inference.generate import generate

    own = config[EXACT_MATCH]
    records = read_answer_records(path, own["max_records"])
    gen = resolve_config(
        "generate",
        None,
        [],
        {
            "max_new_tokens": own["max_new_tokens"],
            "batch_size": own["batch_size"],
            "do_sample": False,
            "backend": "hf",
            "system": config.get("system_instruction"),
        },
    )
    out = generate(loaded.resolved.label, [{"id": r["id"], "prompt": r["prompt"]} for r in records], gen, loaded=loaded)
    hits = [float(matches(own["extract"], row["output"], r["answer"])) for row, r in zip(out.items, records)]
    samples = [
        {"id": r["id"], "prompt": r["prompt"], "answer": r["answer"], "output": row["output"], "exact_match": h}
        for row, r, h in zip(out.items, records, hits)
    ]
    return {
        "block": _block(EXACT_MATCH, {"exact_match": hits}),
        "config": {"records": len(records), "extract": own["extract"], "new_tokens": out.stats["new_tokens"]},
        "n": len(records),
        "samples": samples,
    }


# ---- win_rate ---------------------------------------------------------------------------------------------------


def _same_tokenizer(ref, loaded) -> None:
    mine, theirs = ref.tokenizer.get_vocab(), loaded.tokenizer.get_vocab()
    if mine != theirs:
        raise LlmctlError(
            f"--reference {ref.resolved.label} uses another tokenizer than {loaded.resolved.label} "
            f"({len(mine):,} vs {len(theirs):,} tokens, different ids)",
            hint="compare a model with the one it was trained from (the same family)",
        )


def _eos_ids(model, tokenizer) -> list[int]:
    gen = getattr(model, "generation_config", None)
    eos = gen.eos_token_id if gen is not None else None
    return sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None})


def read_prompts(path: Path, tokenizer, template: str, seq_len: int, limit: int | None):
    """Prompts of a file ({prompt} records or preference pairs) tokenized through the template, and the stats."""
    from llmctl.data import layouts
    from llmctl.data.preferences import tokenize_prompts
    from llmctl.data.sft import read_records

    records, kind = read_records(path, "auto", uses=("prompts",))
    if "prompts" not in layouts.get(kind).uses:
        raise LlmctlError(
            f"win_rate needs prompts; {path} is {kind} data",
            hint='give a JSONL of {"prompt": "…"} (or preference pairs: their prompts are used)',
        )
    return tokenize_prompts(records[:limit] if limit else records, tokenizer, template, seq_len)


def answer_stats(policy, ref, items: list, ctx) -> dict[str, list[float]]:
    """For one batch of prompts: both models' greedy answers, their rewards and the policy's log-ratio."""
    from llmctl.finetune.rollout import generate, response_stats

    ro = generate(policy, items, ctx, greedy=True)
    logp = response_stats(policy, ro, ctx, temperature=1.0)[0]
    ref_logp = response_stats(ref, ro, ctx, temperature=1.0)[0]
    kl = ((logp - ref_logp) * ro.mask).sum(1)
    mine = ctx.reward.score(ro, ctx)
    theirs = ctx.reward.score(generate(ref, items, ctx, greedy=True), ctx)
    return {
        "win_rate": ((mine > theirs).float() + 0.5 * (mine == theirs).float()).tolist(),
        "reward_diff": (mine - theirs).tolist(),
        "reward": mine.tolist(),
        "reference_reward": theirs.tolist(),
        "kl_per_token": (kl / ro.lengths.clamp(min=1)).tolist(),
        "kl_per_answer": kl.tolist(),
        "length": ro.lengths.float().tolist(),
        "texts": ro.texts,
    }


def run_win_rate(loaded, ref, path: Path, config: dict, say: Callable[[str], None]) -> dict:
    """The model against the reference on the same prompts, both answers scored by the reward model."""
    import torch

    from llmctl.finetune.rewards import load_reward_model
    from llmctl.finetune.rollout import RewardSource, RolloutContext

    own = config[WIN_RATE]
    rm = load_reward_model(config["reward_model"], loaded.device)
    rm.check_tokenizer(loaded.tokenizer, loaded.resolved.label)
    items, stats = read_prompts(path, loaded.tokenizer, _template(loaded), own["seq_len"], own["max_prompts"])
    gen = {"max_new_tokens": own["max_new_tokens"], "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    ctx = RolloutContext(
        RewardSource(rm.label, model=rm),
        gen,
        loaded.tokenizer,
        loaded.device,
        eos_ids=_eos_ids(loaded.model, loaded.tokenizer),
    )
    values: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, len(items), own["batch_size"]):
            say(f"win_rate: prompts {start + 1}-{min(len(items), start + own['batch_size'])} of {len(items)} …")
            for key, xs in answer_stats(loaded.model, ref.model, items[start : start + own["batch_size"]], ctx).items():
                values.setdefault(key, []).extend(xs)
    texts, lengths = values.pop("texts"), values.pop("length")
    samples = [
        {"prompt": item.prompt, "output": text, **{k: v[i] for k, v in values.items()}}
        for i, (item, text) in enumerate(zip(items, texts))
    ]
    return {
        "block": _block(WIN_RATE, values),
        "config": {
            "prompts": len(items),
            "dropped_prompt_too_long": stats.dropped_prompt_too_long,
            "template": stats.extra["template"],
            "reference": ref.resolved.label,
            "reward_model": rm.label,
            "mean_answer_tokens": round(sum(lengths) / len(lengths), 2),
        },
        "n": len(items),
        "samples": samples,
    }


# ---- preference_accuracy ----------------------------------------------------------------------------------------


def pair_scores(policy, ref, batch: dict):
    """Each row's implicit reward: summed log-ratio to the reference, or (no reference) mean log-prob per token."""
    from llmctl.finetune.base import response_counts, token_logps

    logp = token_logps(policy, batch, True, want="rows")
    if ref is None:
        return logp / response_counts(batch)
    return logp - token_logps(ref, batch, True, want="rows")


def run_preference_accuracy(loaded, ref, path: Path, config: dict) -> dict:
    """Held-out preference pairs ranked by the policy's implicit reward (with or without a reference)."""
    import torch

    from llmctl.data.sft import collate_pairs
    from llmctl.evaluate.reward import read_pairs
    from llmctl.finetune.batches import to_device

    own = config[PREFERENCE_ACCURACY]
    tok = loaded.tokenizer
    pairs, stats, kind = read_pairs(
        path, tok, _template(loaded), own["seq_len"], own["max_pairs"], task=PREFERENCE_ACCURACY
    )
    margins: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), own["batch_size"]):
            chunk = pairs[start : start + own["batch_size"]]
            batch = to_device(collate_pairs(chunk, tok.pad_token_id), loaded.device)
            scores = pair_scores(loaded.model, ref.model if ref is not None else None, batch)
            margins += (scores[: len(chunk)] - scores[len(chunk) :]).tolist()
    return {
        "block": _block(
            PREFERENCE_ACCURACY, {"pair_accuracy": [float(m > 0) for m in margins], "mean_margin": margins}
        ),
        "config": {
            "pairs": len(margins),
            "layout": kind,
            "template": stats.extra["template"],
            "truncated": stats.truncated,
            "reference": ref.resolved.label if ref is not None else None,
            "measure": "log-ratio to the reference (summed over the reply)"
            if ref is not None
            else "mean log-probability per reply token",
        },
        "n": len(margins),
    }


# ---- all of them ------------------------------------------------------------------------------------------------


def run_alignment(results: dict, loaded, tasks: dict[str, Path], config: dict, say: Callable[[str], None]) -> None:
    """Score every alignment task asked for into lm-eval's result layout (the reference loads once)."""
    from llmctl.models.loading import ensure_pad_token, load_model

    ensure_pad_token(loaded.tokenizer)
    ref = None
    if config.get("reference") and (WIN_RATE in tasks or PREFERENCE_ACCURACY in tasks):
        say(f"Loading the reference {config['reference']} …")
        resolved = _resolve_reference(config["reference"])
        ref = load_model(resolved, dtype=loaded.dtype, device=loaded.device)
        _same_tokenizer(ref, loaded)
    for task, path in tasks.items():
        started = time.perf_counter()
        say(f"{task} on {path} …")
        if task == EXACT_MATCH:
            out = run_exact_match(loaded, path, config)
        elif task == WIN_RATE:
            out = run_win_rate(loaded, ref, path, config, say)
        else:
            out = run_preference_accuracy(loaded, ref, path, config)
        out["config"].update(task=task, data=str(path), seconds=round(time.perf_counter() - started, 3))
        results.setdefault("results", {})[task] = out["block"]
        results.setdefault("configs", {})[task] = out["config"]
        results.setdefault("higher_is_better", {})[task] = dict(ALIGNMENT_METRICS[task])
        results.setdefault("versions", {})[task] = 1.0
        results.setdefault("n-samples", {})[task] = {"original": out["n"], "effective": out["n"]}
        if config.get("log_samples") and out.get("samples"):
            results.setdefault("samples", {})[task] = out["samples"]
