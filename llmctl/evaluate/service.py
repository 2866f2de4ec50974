"""`eval`: lm-eval harness tasks and perplexity on any registry model, offline, with CI gates.

Glue, not a reimplementation: the already-loaded model (HF, adapter, quantized, pruned — whatever
`load_model` returns) is wrapped in lm-eval's `HFLM` and scored by `lm_eval.simple_evaluate`;
offline task configs come from `llmctl.evaluate.task_files`; the `perplexity` task is `llmctl.evaluate.perplexity`;
`passkey` is `llmctl.evaluate.passkey`; `reward_accuracy` is `llmctl.evaluate.reward`; `exact_match`, `win_rate` and
`preference_accuracy` are `llmctl.evaluate.alignment`.

Under torchrun every process loads the model and takes a share of the requests: lm-eval's own data-parallel path
(each rank builds its share of each task's requests, the metrics are gathered on rank 0), and perplexity windows and
passkey prompts split the same way; rank 0 reports, writes and attaches. The scores equal one process's.

Examples:
    result = run_eval("smollm2-135m-instruct", ["hellaswag"], resolve_config("eval", explicit={
        "data_dir": "../shared/data", "limit": 200}))
    result.metrics["hellaswag.acc_norm"]
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.evaluate.gates import Gate, check_gates, evaluate_gates, flatten, higher_is_better
from llmctl.evaluate.tasks import (
    ALIGNMENT_METRICS,
    PASSKEY,
    PERPLEXITY,
    REWARD_ACCURACY,
    REWARD_METRICS,
    _quiet_lmeval,
    data_dir_of,
    known_metrics,
    load_tasks,
    parse_batch_size,
    parse_limit,
    perplexity_metrics,
    plan_tasks,
)


@dataclass
class EvalResult:
    """lm-eval's results dict (plus llmctl's block), flat metrics and the gates that failed."""

    model: str
    results: dict
    metrics: dict[str, float]
    failed_gates: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    main: bool = True  # False on processes other than rank 0 under torchrun (they report nothing)
    files: dict = field(default_factory=dict)  # extra outputs to write: {"passkey_heatmap": config of the table}


def make_lm(loaded, batch_size: int | str, max_batch_size: int = 64, dist=None):
    """Wrap an already-loaded model (HF, PEFT, quantized …) for lm-eval; data-parallel under torchrun.

    lm-eval's HFLM takes rank and world size from `accelerate` only when it loads the model itself; for a model
    object it is told here, and gathers through torch.distributed (gloo on CPU, nccl on GPU).
    """
    from lm_eval.models.huggingface import HFLM

    from llmctl.models.loading import ensure_pad_token

    ensure_pad_token(loaded.tokenizer)
    lm = HFLM(
        pretrained=loaded.model,
        tokenizer=loaded.tokenizer,
        batch_size=batch_size,
        max_batch_size=max_batch_size,
        device=str(loaded.device),
    )
    if dist is not None and dist.active:
        lm._rank, lm._world_size = dist.rank, dist.world
        lm.all_gather = _all_gather
        lm.barrier = dist.barrier
    return lm


def _all_gather(tensor):
    """accelerate's `gather`: every rank's tensor, concatenated (a scalar becomes a vector of world size)."""
    import torch
    import torch.distributed as tdist

    parts = [torch.zeros_like(tensor) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)


def run_perplexity(loaded, text_path: Path, pconfig: dict, progress: Callable | None = None, dist=None) -> dict:
    """The `perplexity` task: llmctl.evaluate.perplexity over a text file, in lm-eval's result layout."""
    from llmctl.evaluate.perplexity import perplexity, read_text

    text = read_text(text_path)
    started = time.perf_counter()
    stride = pconfig["stride"] or min(512, pconfig["seqlen"])  # the schema's null default
    res = perplexity(
        loaded.model,
        loaded.tokenizer,
        text,
        seqlen=pconfig["seqlen"],
        stride=stride,
        batch_size=pconfig["batch_size"],
        max_tokens=pconfig.get("max_tokens"),
        progress=progress,
        buckets=pconfig.get("length_buckets"),
        dist=dist,
    )
    block = {
        "alias": PERPLEXITY,
        "token_perplexity,none": res["perplexity"],
        "bits_per_byte,none": res["bits_per_byte"],
        "word_perplexity,none": res["word_perplexity"],
    }
    for b in res.get("buckets", []):
        if b["perplexity"] is not None:
            block[f"token_perplexity@{b['from']}-{b['to']},none"] = b["perplexity"]
    return {
        "block": block,
        "config": {
            "task": PERPLEXITY,
            "data": str(text_path),
            **{k: res[k] for k in ("seqlen", "stride", "tokens", "scored_tokens", "bytes", "words")},
            "max_tokens": pconfig.get("max_tokens"),
            "length_buckets": res.get("buckets"),
            "seconds": round(time.perf_counter() - started, 3),
        },
    }


def check_lengths(model: str, adapter: str | None, plan, config: dict, device: str) -> None:
    """Before loading: passkey lengths and perplexity buckets the model's positions and this memory can take."""
    from llmctl.models.loading import pick_dtype
    from llmctl.models.resolve import resolve_model
    from llmctl.models.rope import check_lengths as check

    cfg_file = Path(resolve_model(model).path) / "config.json"
    size = pick_dtype(config["dtype"], device).itemsize
    if plan.passkey:
        check(
            cfg_file,
            config["passkey"]["context_lengths"],
            device,
            "--context-lengths",
            size,
            logits_rows=config["passkey"]["digits"] + 2,
        )
    buckets = config["perplexity"].get("length_buckets")
    if plan.perplexity_text is not None and buckets:
        check(cfg_file, [buckets[-1]], device, "--length-buckets", size, batch=config["perplexity"]["batch_size"])


def run_eval(
    model: str,
    tasks: list[str],
    config: dict,
    *,
    adapter: str | None = None,
    gates: list[Gate] | None = None,
    command: str = "",
    loaded=None,
    attach: bool = True,
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate one model on tasks with the resolved `eval` config (data-parallel under torchrun).

    Examples:
        run_eval("tiny", ["hellaswag"], resolve_config("eval", explicit={"data_dir": "data", "limit": 10}))
    """
    from llmctl.models.loading import load_model
    from llmctl.training.dist import Dist, in_torchrun, init_dist, pick_device

    gates = gates or []
    say = progress or (lambda msg: None)
    _quiet_lmeval()
    import datasets

    datasets.disable_progress_bars()  # lm-eval's own progress bars stay
    plan = plan_tasks(tasks, config)
    device = loaded.device if loaded is not None else pick_device(config["device"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmctl-eval-") as tmp:
        say("Preparing tasks …")
        tm, objects, notes = load_tasks(plan, config, Path(tmp))
        check_gates(gates, known_metrics(objects, plan, config))
        if plan.reward_data is not None and adapter:
            from llmctl.errors import UsageError

            raise UsageError(
                "reward_accuracy scores a reward model by itself; drop --adapter",
                hint="give the reward model (a finetune --objective reward entry) as --model",
            )
        if plan.alignment:
            from llmctl.evaluate.alignment import check_models

            check_models(plan.alignment, config)  # the reward model is one, the reference exists: before loading
        if loaded is None:
            check_lengths(model, adapter, plan, config, device)
        d = init_dist(config, device) if in_torchrun() else Dist()
        try:
            if objects or plan.perplexity_text is not None or plan.passkey or plan.alignment:
                # (reward_accuracy loads its own head)
                say(f"Loading {model} …")
                loaded = loaded or load_model(
                    model, dtype=config["dtype"], device=device, adapter=adapter, rope=config.get("rope")
                )
            results = _score(loaded, plan, objects, tm, config, d, say)
            if plan.reward_data is not None and d.main:
                say(f"Reward accuracy on {plan.reward_data} …")
                _add_reward_accuracy(results, model, plan.reward_data, config)
            if plan.alignment and d.main:
                from llmctl.evaluate.alignment import run_alignment

                run_alignment(results, loaded, plan.alignment, config, say)
        finally:
            d.close()
    resolved = loaded.resolved if loaded is not None else _resolve(model)
    if not d.main:
        return EvalResult(model=resolved.label, results={}, metrics={}, main=False)
    return _finish(
        loaded, resolved, plan, results, config, gates, adapter, command, attach, notes, time.perf_counter() - started
    )


def _resolve(model: str):
    from llmctl.models.resolve import resolve_model

    return resolve_model(model)


def _add_reward_accuracy(results: dict, model: str, path: Path, config: dict) -> None:
    """The `reward_accuracy` task's block, config and sample count in lm-eval's result layout."""
    from llmctl.evaluate.reward import run_reward_accuracy

    out = run_reward_accuracy(model, path, config["reward_accuracy"], config["device"])
    results.setdefault("results", {})[REWARD_ACCURACY] = out["block"]
    results.setdefault("configs", {})[REWARD_ACCURACY] = out["config"]
    results.setdefault("higher_is_better", {})[REWARD_ACCURACY] = dict(REWARD_METRICS)
    results.setdefault("versions", {})[REWARD_ACCURACY] = 1.0
    results.setdefault("n-samples", {})[REWARD_ACCURACY] = {"original": out["n"], "effective": out["n"]}


def harness_args(config: dict) -> dict:
    """lm_eval.simple_evaluate's settings from a resolved eval config (in-process and `--base-url` alike)."""
    seed = config.get("seed")
    names = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
    return {
        "num_fewshot": config.get("num_fewshot"),
        "limit": parse_limit(config.get("limit")),
        "bootstrap_iters": config["bootstrap_iters"],
        "log_samples": config["log_samples"],
        "apply_chat_template": config["apply_chat_template"],
        "system_instruction": config.get("system_instruction"),
        **({} if seed is None else dict.fromkeys(names, seed)),
    }


def _score(loaded, plan, objects, tm, config: dict, d, say) -> dict:
    """Every task's results in lm-eval's layout (on rank 0; other ranks take part and get partial blocks)."""
    results: dict = {
        "results": {},
        "groups": {},
        "configs": {},
        "versions": {},
        "n-shot": {},
        "higher_is_better": {},
        "n-samples": {},
    }
    if objects:
        from lm_eval import simple_evaluate

        say("Scoring " + ", ".join(plan.local + plan.passthrough) + " with lm-eval …")
        lm = make_lm(loaded, parse_batch_size(config["batch_size"]), dist=d)
        out = simple_evaluate(model=lm, tasks=objects, task_manager=tm, **harness_args(config))
        results.update(out or {})  # None on ranks other than 0
    for name, run in ((PERPLEXITY, plan.perplexity_text is not None), (PASSKEY, plan.passkey)):
        if not run:
            continue
        if name == PERPLEXITY:
            say(f"Perplexity over {plan.perplexity_text} …")
            res = run_perplexity(loaded, plan.perplexity_text, config["perplexity"], dist=d)
            better = perplexity_metrics(config)
        else:
            from llmctl.evaluate.passkey import metric_names, run_passkey

            res = run_passkey(loaded, config["passkey"], config.get("seed"), dist=d, progress=say)
            better = dict.fromkeys(metric_names(config["passkey"]), True)
        results.setdefault("results", {})[name] = res["block"]
        results.setdefault("configs", {})[name] = res["config"]
        results.setdefault("higher_is_better", {})[name] = better
        results.setdefault("versions", {})[name] = 1.0
    return results


def _finish(
    loaded,
    resolved,
    plan,
    results: dict,
    config: dict,
    gates,
    adapter,
    command: str,
    attach: bool,
    notes: list,
    seconds: float,
) -> EvalResult:
    """Flat metrics, the llmctl block (lineage, the RoPE override), registry attachment and gates."""
    from llmctl import __version__

    metrics = flatten(results, plan.order)
    rope = loaded.info.get("rope") if loaded is not None else None
    results["llmctl"] = {
        "version": __version__,
        "model": resolved.label,
        "registry_name": resolved.name,
        "format": resolved.format,
        "path": resolved.path,
        "parents": list(resolved.parents),
        "lineage": lineage(resolved.name) if resolved.name else [],
        "adapter": adapter,
        "command": command,
        "config": config,
        "tasks": plan.order,
        "data_dir": str(data_dir_of(config)) if data_dir_of(config) else None,
        "seconds": round(seconds, 3),
        "metrics": metrics,
        "rope_scaling": rope,
    }
    if attach and resolved.entry is not None and not adapter:
        attach_results(resolved.name, metrics, config, plan.order, rope)
    failed = evaluate_gates(gates, metrics, higher_is_better(results))
    files = {"passkey_heatmap": results["configs"][PASSKEY]} if plan.passkey else {}
    return EvalResult(
        model=resolved.label,
        results=results,
        metrics=metrics,
        failed_gates=failed,
        seconds=seconds,
        notes=notes,
        files=files,
    )


def lineage(name: str) -> list[dict]:
    """The model's ancestry: [{name, format, command}, …] from itself up through its parents."""
    from llmctl.models.lineage import ancestry
    from llmctl.models.registry import Registry

    return [
        {"name": n, "format": None, "command": None}
        if e is None
        else {"name": e.name, "format": e.format, "command": e.command, "parents": e.parents}
        for n, e in ancestry(Registry(), name)
    ]


def attach_results(
    name: str, metrics: dict[str, float], config: dict, tasks: list[str], rope: dict | None = None
) -> None:
    """Store metrics on the registry entry (and, in meta.eval, the settings they were measured with).

    A run-time RoPE override is part of those settings (`rope_scaling`): the numbers are the model's under it.
    """
    from llmctl.models.registry import Registry

    reg = Registry()
    reg.update_metrics(name, metrics)
    entry = reg.get(name)
    evals = dict(entry.meta.get("eval") or {})
    settings = {
        "limit": config.get("limit"),
        "num_fewshot": config.get("num_fewshot"),
        "data_dir": str(data_dir_of(config)) if data_dir_of(config) else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if rope:
        settings["rope_scaling"] = rope
    for task in tasks:
        evals[task] = settings
        if task == PERPLEXITY:
            keys = ("data", "seqlen", "stride", "max_tokens", "length_buckets")
            evals[task] = {
                **settings,
                **{k: config["perplexity"].get(k) for k in keys},
                "data": config["perplexity"].get("data") or config.get("data"),
            }
        elif task == REWARD_ACCURACY:
            evals[task] = {
                **settings,
                "data": config["reward_accuracy"]["data"] or config.get("data"),
                "seq_len": config["reward_accuracy"]["seq_len"],
            }
        elif task == PASSKEY:
            evals[task] = {**settings, **{k: config["passkey"][k] for k in ("context_lengths", "depths", "samples")}}
        elif task in ALIGNMENT_METRICS:
            from llmctl.evaluate.alignment import settings as alignment_settings

            evals[task] = {**settings, **alignment_settings(task, config)}
    reg.update_meta(name, {"eval": evals})


def write_results(result: EvalResult, output: Path) -> list[Path]:
    """Write lm-eval's JSON layout (+ llmctl block) to output; samples (if logged) beside it as JSONL."""
    from lm_eval.utils import handle_non_serializable

    from llmctl.paths import atomic_file

    samples = result.results.get("samples")
    body = {k: v for k, v in result.results.items() if k != "samples"}
    written = []
    with atomic_file(output) as fh:
        fh.write(json.dumps(body, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    written.append(output)
    for task, rows in (samples or {}).items():
        path = output.with_name(f"{output.stem}.samples_{task}.jsonl")
        with atomic_file(path) as fh:
            for row in rows:
                fh.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
        written.append(path)
    return written
