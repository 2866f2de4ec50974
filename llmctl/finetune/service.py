"""`llmctl finetune`: full, LoRA, QLoRA, DoRA, prompt/prefix tuning with any objective of the objectives table.

Everything is checked before the run dir or the registry is touched: the name, the base, the data and its
layout, the method/objective combination and the run dir rule (`llmctl.training.run_dir`). Under torchrun every
process sets up alike; rank 0 alone reserves the name, moves run dirs, writes logs and publishes.

Examples:
    config = resolve_config("finetune", "lora", [], {"train.max_steps": 50})
    result = finetune("smollm2-135m-instruct", Path("alpaca.json"), "smol-lora", config)
    result.path, result.metrics["eval_loss"]
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.finetune import objectives
from llmctl.finetune.model import PEFT_METHODS, apply_method, lm_parts, load_base


@dataclass
class FinetuneResult:
    """What a finetuning run produced."""

    name: str
    path: str
    format: str
    method: str
    objective: str
    steps: int
    run_dir: str
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    resumed_from: int | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Setup:
    """A checked run: config, base, objective, tokenized data plans, model, run dir and checkpointer."""

    name: str
    config: dict
    command: str
    base: Any
    objective: Any
    device: str
    tokenizer: Any = None
    plan: Any = None
    eval_plan: Any = None
    data_info: dict = field(default_factory=dict)
    template: str = ""
    base_model: Any = None
    net: Any = None
    ref_model: Any = None
    fast: bool = True
    fingerprint: dict = field(default_factory=dict)
    run: Any = None
    ckpt: Any = None
    reservation: Any = None
    d: Any = None  # llmctl.training.dist.Dist: this process's place in a torchrun job
    objective_ctx: Any = None  # what a rollout objective keeps for the run (reward, sampling settings)
    extra_parents: list = field(default_factory=list)  # lineage besides the base (PPO's reward model)
    extra_meta: dict = field(default_factory=dict)
    fingerprint_extra: dict = field(default_factory=dict)  # what a resumed run must keep besides the config


def _check_combination(config: dict) -> None:
    method, objective = config["method"], objectives.get(config["objective"])
    if method in objective.refused_methods:
        raise LlmctlError(
            f"--objective {objective.name} cannot be trained with --method {method}", hint="use --method lora or full"
        )
    objective.check(config)


def _check_rope(base, config: dict, device: str) -> None:
    """Before anything is read or written: RoPE scaling the base can take, and a --seq-len memory can hold."""
    from llmctl.models import rope

    if rope.wanted(config["rope"]):
        rope.check_config_file(base, config["rope"]["scaling"])
    t = config["train"]
    rope.check_lengths(
        Path(base.path) / "config.json",
        [t["seq_len"]],
        device,
        "--seq-len",
        batch=t["batch_size"],
        train="full" if config["method"] == "full" else "adapter",
        label=base.label,
        memory=False,  # the training estimate below checks memory (llmctl.training.estimate)
    )


def memory_estimate(arch, config: dict, device: str) -> dict:
    """Peak memory of this finetuning run (`llmctl.training.estimate`), with the objective's extra rows and models:
    preference pairs run chosen and rejected together, a full-weights run keeps a frozen reference copy, PPO/GRPO
    keep a reward model and the KV cache of their rollouts."""
    from llmctl.training.estimate import train_estimate
    from llmctl.training.precision import compute_dtype

    obj, method = objectives.get(config["objective"]), config["method"]
    rows = 2 if obj.name in ("dpo", "ipo", "kto", "orpo", "simpo", "reward") else 1
    if obj.name == "grpo":
        rows = config["grpo"]["num_generations"]
    reference = obj.uses_reference and method == "full" and not (obj.name == "grpo" and config["grpo"]["beta"] == 0)
    extra = int(reference) + int(bool(config["reward"]["model"]))
    rollout = config["train"]["seq_len"] + config["rollout"]["max_new_tokens"] if obj.rollouts else 0
    dtype = compute_dtype(config["train"]["dtype"], device)
    est = train_estimate(
        arch, config, device, rows=rows, extra_models=extra, rollout_tokens=rollout, compute_dtype=dtype
    )
    return est | {"device": device, "compute_dtype": dtype, "extra_models": extra}


def _check_memory(model: str, config: dict) -> None:
    """Refuse a run whose estimated peak memory exceeds the device's free memory (train.ignore_memory_check)."""
    from llmctl.training.dist import pick_device
    from llmctl.training.estimate import arch_of, check_fits

    device = pick_device(config["train"]["device"])
    try:
        arch = arch_of(model)
    except LlmctlError:
        return  # a model that cannot be read is refused below, with the reason that fits it
    est = memory_estimate(arch, config, device)
    check_fits(est, device, config["train"]["ignore_memory_check"], "train.ignore_memory_check")


def estimate(model: str, config: dict, data: Path | None = None, steps: int = 0, on_log=None) -> dict:
    """What `--dry-run` shows: the run's estimated peak memory by part and, with `steps`, the time per step of
    that many real steps run in a scratch LLMCTL_HOME (nothing of the user's is written, nothing is registered).

    Examples:
        estimate("smollm2-135m-instruct", config)["peak_bytes"]
        estimate("tiny", config, Path("alpaca.json"), steps=3)["seconds_per_step"]
    """
    from llmctl.models.resolve import resolve_model
    from llmctl.training.dist import pick_device
    from llmctl.training.estimate import arch_of, check_fits, probe, probe_config, scratch_home, unavailable

    device = pick_device(config["train"]["device"])
    try:
        est = memory_estimate(arch_of(model), config, device)
    except LlmctlError as exc:
        if steps:
            raise
        return unavailable(exc)
    check_fits(est, device, ignore=True, override="train.ignore_memory_check")  # records the free memory
    if not steps:
        return est
    if data is None:
        raise LlmctlError("--estimate-steps runs real steps and needs --data FILE", hint="add --data FILE")
    base = resolve_model(model).path  # a path: the scratch home's registry does not know the user's names

    def run() -> float:
        with scratch_home():
            cut = probe_config(config, steps)
            cut["data"]["eval_split"] = 0
            result = finetune(base, Path(data).resolve(), "estimate-probe", cut, on_log=on_log)
        return float(result.metrics["train_seconds"])

    return probe(run, steps, est, device)


def prepare_data(s: Setup, data: Path, log: Callable[[str], None]) -> None:
    """Read, check, split, tokenize and plan the data for the objective."""
    from llmctl.data.preferences import check_pairs
    from llmctl.data.sft import read_records, split_eval

    config, t = s.config, s.config["train"]
    records, kind = read_records(Path(data), config["data"]["format"], uses=s.objective.data_use)
    if config["data"]["max_examples"]:
        records = records[: config["data"]["max_examples"]]
    s.objective.check_data(kind, data)
    # pairs whose chosen equals rejected carry no preference: all of them is refused, some are counted and said
    same = check_pairs(records, data) if records and "chosen" in records[0] else 0
    train_recs, eval_recs = split_eval(records, config["data"]["eval_split"])
    template, seq_len = config["data"]["template"], t["seq_len"]
    train_items, stats = s.objective.examples(train_recs, kind, s.tokenizer, template, seq_len)
    eval_items = s.objective.examples(eval_recs, kind, s.tokenizer, template, seq_len)[0] if eval_recs else []
    packed = (
        config["data"]["packing"]
        and s.objective.name == "sft"
        and config["method"] not in ("prompt-tuning", "prefix-tuning")
    )
    pad_id = s.tokenizer.pad_token_id
    s.plan = s.objective.plan(train_items, config, pad_id, packed, t["seed"])
    s.eval_plan = s.objective.plan(eval_items, config, pad_id, packed, t["seed"]) if eval_items else None
    s.data_info = stats.to_dict() | {"format": kind, "eval_examples": len(eval_items), "packed": packed}
    if same:
        s.data_info["identical_pairs"] = same
    s.template = stats.extra["template"]
    log(
        f"data: {kind}, {stats.kept} training examples ({stats.truncated} truncated to {seq_len} tokens, "
        f"{stats.dropped_prompt_too_long} dropped with prompts over the max length), {len(eval_items)} held out, "
        f"template {s.template}" + (f"; {same} pairs have chosen identical to rejected" if same else "")
    )


def prepare_model(s: Setup, log: Callable[[str], None]) -> None:
    """The base for the method and objective, wrapped for training, and a reference model where needed."""
    from llmctl.training.precision import compute_dtype

    s.base_model = load_base(s.base, s.config, s.device, s.tokenizer)
    s.net = apply_method(s.base_model, s.config, s.tokenizer)
    if s.config["train"]["gradient_checkpointing"]:
        # non-reentrant checkpoints need no input that requires grad, so frozen embeddings (LoRA) work as they are
        s.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    method = s.config["method"]
    s.fast = (
        method not in ("prompt-tuning", "prefix-tuning")
        and s.objective.head == "lm"
        and all(p is not None for p in lm_parts(s.net))
    )
    trainable = sum(p.numel() for p in s.net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in s.net.parameters())
    s.data_info["trainable_parameters"] = trainable
    procs = f" x{s.d.world} ({s.config['dist']['strategy']})" if s.d is not None and s.d.active else ""
    log(
        f"{method} on {s.base.label}: {trainable:,} trainable of {total:,} parameters, device {s.device}{procs}, "
        f"compute {compute_dtype(s.config['train']['dtype'], s.device)}"
    )
    if s.objective.uses_reference and method == "full":
        s.ref_model = copy.deepcopy(s.net).eval()  # LoRA runs use the base with the adapter switched off
        for p in s.ref_model.parameters():
            p.requires_grad_(False)
    s.objective.prepare(s, log)


def setup(
    model: str, data: Path, name: str, config: dict, resume: bool, force: bool, command: str, log: Callable[[str], None]
) -> Setup:
    """Every check and preparation before training; nothing is written when one fails."""
    from llmctl.finetune.parallel import check_strategy
    from llmctl.models.formats.hf import load_tokenizer
    from llmctl.models.loading import check_full_precision
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model
    from llmctl.training.dist import Dist, env_rank, in_torchrun, init_dist, pick_device
    from llmctl.training.run_dir import open_run_dir, run_dir_for
    from llmctl.training.state import Checkpointer, seed_everything
    from llmctl.training.tracking import check_reporters

    check_reporters(config)  # a missing llmctl[mlflow] / llmctl[wandb] is refused before anything is read
    registry, main = Registry(), env_rank() == 0
    reservation = registry.reserve(name, force) if main else None
    _check_combination(config)
    check_strategy(config, int(os.environ.get("WORLD_SIZE", "1")))
    if objectives.get(config["objective"]).rollouts and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LlmctlError(
            f"--objective {config['objective']} runs in one process: its rollouts are not spread over "
            "torchrun's processes yet",
            hint="run it without torchrun",
        )
    _check_memory(model, config)  # before the model is read (or the default model converted)
    base = resolve_model(model, registry)
    check_full_precision(base, "finetune")
    if base.format != "hf":
        raise LlmctlError(
            f"{base.label} has format {base.format!r}; finetune needs a full model (hf)",
            hint="import it with `llmctl models import` (GGUF files are converted), or pick a base",
        )
    s = Setup(
        name=name,
        config=config,
        command=command,
        base=base,
        reservation=reservation,
        objective=objectives.get(config["objective"]),
        device=pick_device(config["train"]["device"]),
    )
    _check_rope(base, config, s.device)
    if resume and not Checkpointer(run_dir_for(name) / "checkpoints").steps():
        raise LlmctlError(
            f"--resume given but {run_dir_for(name) / 'checkpoints'} holds no checkpoint",
            hint="drop --resume to start a new run",
        )
    s.run = open_run_dir(name, resume, force, main_process=main)  # refused here, before data or model is read
    try:
        s.d = init_dist(config, s.device) if in_torchrun() else Dist()
        seed_everything(config["train"]["seed"])
        s.tokenizer = load_tokenizer(base.path)
        prepare_data(s, data, log)
        prepare_model(s, log)
    except BaseException:
        s.run.abandon()
        raise
    from llmctl.finetune.loop import fingerprint

    s.fingerprint = fingerprint(config, s.objective, base.label, Path(data), s.d.world) | s.fingerprint_extra
    s.ckpt = Checkpointer(s.run.checkpoints)
    return s


def finetune(
    model: str,
    data: Path,
    name: str,
    config: dict,
    resume: bool = False,
    force: bool = False,
    command: str = "",
    on_log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> FinetuneResult:
    """Finetune `model` on `data` and register the result as `name` (adapter or full model).

    `stop_after` ends the run after that many optimizer steps without registering (as an interrupted run
    would; checkpoints stay for `--resume`). Under torchrun, processes other than rank 0 return a result
    with an empty `path` (rank 0 publishes).

    Examples:
        finetune("tiny", Path("alpaca.json"), "tiny-lora", resolve_config("finetune", "lora"))
    """
    from llmctl.finetune.loop import FinetuneRun
    from llmctl.training.dist import env_rank

    log = (on_log or (lambda _s: None)) if env_rank() == 0 else (lambda _s: None)
    s = setup(model, data, name, config, resume, force, command, log)
    try:
        run = FinetuneRun(s, log, stop_after)
        if resume:
            run.resume()
        run.open_logs()
        if not run.train():
            run.metrics_log.close(f"finetune {name}")
            return FinetuneResult(
                name,
                "",
                "",
                config["method"],
                config["objective"],
                stop_after,
                str(s.run.path),
                {"loss": run.last_loss},
                s.data_info,
                run.resumed_from,
            )
        metrics = run.finish()
        s.net = run.par.final_net()  # gathered on rank 0 under FSDP (every process takes part)
    except BaseException:
        s.run.abandon()  # --force: the replaced run comes back if this one never wrote a checkpoint
        raise
    finally:
        s.d.close()
    if not s.d.main:
        return FinetuneResult(
            name,
            "",
            "",
            config["method"],
            config["objective"],
            run.max_steps,
            str(s.run.path),
            metrics,
            s.data_info,
            run.resumed_from,
        )
    s.objective.before_publish(s)
    path, fmt = publish(s, metrics)
    return FinetuneResult(
        name,
        path,
        fmt,
        config["method"],
        config["objective"],
        run.max_steps,
        str(s.run.path),
        metrics,
        s.data_info,
        run.resumed_from,
    )


def publish(s: Setup, metrics: dict) -> tuple[str, str]:
    """Save the adapter (or full model) with its tokenizer, config and curves, and register it."""
    from llmctl.models.formats.hf import arch_summary
    from llmctl.models.publish import publish_model

    config, method = s.config, s.config["method"]
    out_format = "peft-adapter" if method in PEFT_METHODS else "hf"
    meta = {
        "method": method,
        "objective": config["objective"],
        "base": s.base.label,
        "run_dir": str(s.run.path),
        "compute_dtype": metrics.get("compute_dtype") or config["train"]["dtype"],
        "trainable_parameters": s.data_info.get("trainable_parameters"),
        "data": s.data_info,
        "template": s.template,
        "base_arch": arch_summary(s.base_model.config),
    }
    if method == "qlora":
        meta["base_quantization"] = {"bits": 4, **config["qlora"]}
    if s.objective.head == "reward":
        meta["head"] = "reward"
    if config["rope"]["scaling"]:  # lineage: the positions this model was trained with
        from llmctl.models.rope import describe

        meta["rope_scaling"] = {**s.base_model.config.rope_scaling, "context": describe(s.base_model.config)}
    meta.update(s.extra_meta)
    keep = ("train_loss", "eval_loss", "eval_accuracy", "tokens_per_s", *s.objective.registry_metrics)
    with s.reservation.staging() as tmp:
        if out_format == "peft-adapter":
            s.net.save_pretrained(tmp)
            cfg_path = tmp / "adapter_config.json"
            acfg = json.loads(cfg_path.read_text())
            acfg["base_model_name_or_path"] = s.base.name or s.base.path
            cfg_path.write_text(json.dumps(acfg, indent=2))
            from llmctl.models.rope import write_for_adapter

            if config["rope"]["scaling"]:
                write_for_adapter(tmp, s.base_model.config)  # the base's config.json does not carry it
        else:
            s.net.save_pretrained(tmp, safe_serialization=True)
        s.tokenizer.save_pretrained(tmp)
        for extra_file in ("metrics.csv", "loss.png"):
            if (s.run.path / extra_file).is_file():
                (tmp / extra_file).write_bytes((s.run.path / extra_file).read_bytes())
        publish_model(
            s.reservation,
            tmp,
            out_format,
            parents=[s.base.name or s.base.path, *s.extra_parents],
            config=config,
            command=s.command,
            meta=meta,
            metrics={f"finetune.{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and k in keep},
        )
    return str(s.reservation.path), out_format
