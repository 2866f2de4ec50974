"""`llmctl pretrain`: train a LLaMA- or GPT-2-style model from scratch on a tokenized data dir.

One process, or the same command under `torchrun --nproc_per_node N` (DDP, or FSDP with
`--set dist.strategy=fsdp`). Checkpoints (atomic) hold model, optimizer, scheduler, RNG states and the data
position; the final model is a Hugging Face folder (loads with `AutoModelForCausalLM`) registered with its
tokenizer and the data's lineage. Every check runs before anything is written.

Examples:
    result = pretrain(Path("data/shakespeare"), "my-tiny", config, command="llmctl pretrain …")
    result["final"]["val_bpb"]
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.models.rope import context_length, scale_config
from llmctl.pretrain.data import resolve_tokenizer
from llmctl.pretrain.model import SHAPE_KEYS, check_shape, hf_config, model_shape
from llmctl.training.dist import Dist, in_torchrun, init_dist, pick_device


@dataclass
class Plan:
    """Everything checked before training starts."""

    name: str
    config: dict
    command: str
    resume: bool
    device: str
    data_dir: Path
    data: Any
    tok: Any
    tok_name: str | None
    tok_dir: Path
    shape: dict
    run: Any  # llmctl.training.run_dir.RunDir
    ckpt: Any  # llmctl.training.state.Checkpointer
    state: dict | None
    reservation: Any
    d: Dist
    parents: list = field(default_factory=list)  # lineage (tokenizer, data), known before training for the trackers


def _check_data(data, data_dir: Path, config: dict, shape: dict, context: int) -> None:
    """`context`: the positions the model takes (model.max_position_embeddings, times a RoPE scaling factor)."""
    tcfg, split = config["train"], config["data"]["train_split"]
    n_train = len(data.tokens(split))
    seq_len, bsz = tcfg["seq_len"], tcfg["batch_size"]
    if seq_len > context:
        scaled = f" x rope.factor {config['rope']['factor']:g}" if context != shape["max_position_embeddings"] else ""
        raise LlmctlError(
            f"train.seq_len {seq_len} is longer than model.max_position_embeddings "
            f"{shape['max_position_embeddings']}{scaled}",
            hint=f"use --seq-len {context} or less, or raise model.max_position_embeddings",
        )
    if n_train < bsz * seq_len + 1:
        raise LlmctlError(
            f"the {split!r} split of {data_dir} has {n_train} tokens, fewer than one batch ({bsz} x {seq_len} + 1)",
            hint="encode more text, or lower --batch-size / --seq-len",
        )


def _resume_state(ckpt, run_path: Path, shape: dict) -> dict:
    if not ckpt.steps():
        raise LlmctlError(
            f"--resume: no checkpoint in {ckpt.root}",
            hint="start the run without --resume (checkpoints are written every train.save_every steps)",
        )
    state = ckpt.load_latest()
    saved = state["extra"].get("model_shape", {})
    diff = [f"{k} {saved.get(k)} -> {shape[k]}" for k in SHAPE_KEYS if saved.get(k) != shape[k]]
    if diff:
        raise LlmctlError(
            f"--resume: the model shape changed since the checkpoint in {run_path} ({', '.join(diff)})",
            hint="resume with the run's original model settings, or start over with --force",
        )
    return state


def shape_arch(shape: dict):
    """The estimator's Arch of a pretrain model shape (`model_shape`)."""
    from llmctl.training.estimate import Arch

    gpt2 = shape["arch"] == "gpt2"
    return Arch(
        kind=shape["arch"],
        hidden=shape["hidden_size"],
        layers=shape["num_layers"],
        heads=shape["num_heads"],
        kv_heads=shape["num_kv_heads"],
        head_dim=shape["hidden_size"] // shape["num_heads"],
        inter=shape["intermediate_size"],
        vocab=shape["vocab_size"],
        tied=shape["tie_embeddings"],
        positions=shape["max_position_embeddings"] if gpt2 else 0,
    )


def memory_estimate(shape: dict, config: dict, device: str) -> dict:
    """Peak memory of a pretrain run of this shape (full weights, AdamW), by part."""
    from llmctl.training.estimate import train_estimate
    from llmctl.training.precision import compute_dtype

    dtype = compute_dtype(config["train"]["dtype"], device)
    est = train_estimate(shape_arch(shape), config | {"method": "full"}, device, compute_dtype=dtype)
    return est | {"device": device, "compute_dtype": dtype}


def estimate(data_dir: Path, config: dict, tokenizer: str | None = None, steps: int = 0, on_log=None) -> dict:
    """What `--dry-run` shows: the estimated peak memory by part and, with `steps`, the time per step of that many
    real steps run in a scratch LLMCTL_HOME (nothing of the user's is written, nothing is registered).

    Examples:
        estimate(Path("data/shakespeare"), config)["peak_bytes"]
    """
    from llmctl.data.token_data import TokenData
    from llmctl.models.formats.hf import load_tokenizer
    from llmctl.training.estimate import check_fits, probe, probe_config, scratch_home, unavailable

    device = pick_device(config["train"]["device"])
    data_dir = Path(data_dir).expanduser().resolve()
    try:
        data = TokenData(data_dir)
        _name, tok_dir = resolve_tokenizer(data, tokenizer)
        vocab = max(len(load_tokenizer(str(tok_dir))), int(data.tokenizer.get("vocab_size") or 0))
        shape = model_shape(config["model"], vocab)
        check_shape(shape)
    except LlmctlError as exc:
        if steps:
            raise
        return unavailable(exc)
    est = memory_estimate(shape, config, device)
    check_fits(est, device, ignore=True, override="train.ignore_memory_check")  # records the free memory
    if not steps:
        return est

    def run() -> float:
        with scratch_home():
            cut = probe_config(config, steps)
            cut["data"]["final_eval_tokens"] = 0
            return float(pretrain(data_dir, "estimate-probe", cut, tokenizer=str(tok_dir), on_log=on_log)["seconds"])

    return probe(run, steps, est, device)


def plan_run(
    data_dir: Path, name: str, config: dict, tokenizer: str | None, resume: bool, force: bool, command: str
) -> Plan:
    """Check names, data, tokenizer, shape and run dir; nothing is written when any check fails."""
    from llmctl.data.token_data import TokenData
    from llmctl.models.formats.hf import load_tokenizer
    from llmctl.models.registry import Registry
    from llmctl.training.run_dir import open_run_dir, run_dir_for
    from llmctl.training.state import Checkpointer
    from llmctl.training.tracking import check_reporters

    check_reporters(config)  # a missing llmctl[mlflow] / llmctl[wandb] is refused before anything is read
    device = pick_device(config["train"]["device"])
    main = int(__import__("os").environ.get("RANK", "0")) == 0
    reservation = Registry().reserve(name, force) if main else None
    data_dir = Path(data_dir).expanduser().resolve()
    data = TokenData(data_dir)
    tok_name, tok_dir = resolve_tokenizer(data, tokenizer)
    tok = load_tokenizer(str(tok_dir))
    vocab = max(len(tok), int(data.tokenizer.get("vocab_size") or 0))
    shape = model_shape(config["model"], vocab)
    check_shape(shape)
    from llmctl.training.estimate import check_fits

    t = config["train"]
    check_fits(memory_estimate(shape, config, device), device, t["ignore_memory_check"], "train.ignore_memory_check")
    cfg = hf_config(shape, config["model"], tok)
    scale_config(cfg, config.get("rope"), f"a {shape['arch']} model")  # refused here for gpt2 (no RoPE)
    _check_data(data, data_dir, config, shape, context_length(cfg) or shape["max_position_embeddings"])
    ckpt = Checkpointer(run_dir_for(name) / "checkpoints", keep=2)
    state = _resume_state(ckpt, run_dir_for(name), shape) if resume else None
    run = open_run_dir(name, resume, force, main_process=main)
    return Plan(
        name=name,
        config=config,
        command=command,
        resume=resume,
        device=device,
        data_dir=data_dir,
        data=data,
        tok=tok,
        tok_name=tok_name,
        tok_dir=tok_dir,
        shape=shape,
        run=run,
        ckpt=Checkpointer(run.checkpoints, keep=2),
        state=state,
        reservation=reservation,
        d=Dist(),
    )


def pretrain(
    data_dir: Path,
    name: str,
    config: dict,
    *,
    tokenizer: str | None = None,
    resume: bool = False,
    force: bool = False,
    command: str = "",
    on_log: Callable[[dict], None] | None = None,
) -> dict:
    """Train a model from scratch on a tokenized data dir and register it under `name`.

    Examples:
        pretrain(Path("data/sp"), "tiny-sp", resolve_config("pretrain", "shakespeare-tiny", [], {}))
    """
    from llmctl.config.profiles import save_run_config
    from llmctl.pretrain.loop import PretrainRun

    plan = plan_run(data_dir, name, config, tokenizer, resume, force, command)
    plan.parents = _parents(plan)
    plan.d = init_dist(config, plan.device) if in_torchrun() else Dist()
    try:
        if plan.d.main:
            plan.run.path.mkdir(parents=True, exist_ok=True)
            plan.ckpt.clean_leftovers()
            save_run_config(config, plan.run.path, command)
        plan.d.barrier()
        run = PretrainRun(plan, on_log)
        seconds = run.train()
        final = run.final_eval()
        run.save(run.step)
        result = _result(plan, run, seconds, final)
        model = run.final_model()  # a collective under FSDP: every rank takes part in gathering the weights
        if plan.d.main:
            run.logger.close(title=f"pretrain {name}")
            result.update(_publish(plan, run, final, model))
            (plan.run.path / "result.json").write_text(json.dumps(result, indent=2, default=str))
        return result
    except BaseException:
        if plan.d.main:
            plan.run.abandon()  # --force: the replaced run comes back if this one never wrote a checkpoint
        raise
    finally:
        plan.d.close()


def _result(plan: Plan, run, seconds: float, final: dict) -> dict:
    trained = (run.step - run.first_step) * run.tokens_per_step
    return {
        "name": plan.name,
        "run_dir": str(plan.run.path),
        "steps": run.step,
        "max_steps": run.max_steps,
        "params": run.n_params,
        "tokens_per_step": run.tokens_per_step,
        "tokens_trained": trained,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(trained / seconds, 1) if seconds > 0 and trained else None,
        "world": plan.d.world,
        "device": plan.device,
        "dtype": run.precision.dtype,
        "final": final,
        "bytes_per_token": run.bpt,
        "bytes_per_token_source": run.bpt_source,
    }


def _parents(plan: Plan) -> list[str]:
    """Lineage: the tokenizer's and the data's registry names, when they are registered."""
    from llmctl.models.registry import Registry

    reg, parents = Registry(), []
    if plan.tok_name and (e := reg.find(plan.tok_name)) is not None and e.name != plan.name:
        parents.append(e.name)
    for e in reg.list():
        if (
            e.format == "data"
            and e.name != plan.name
            and Path(e.path).resolve() == plan.data_dir
            and e.name not in parents
        ):
            parents.append(e.name)
    return parents


def _publish(plan: Plan, run, final: dict, model) -> dict:
    """Save the trained model as an HF folder with its tokenizer and register it (rank 0)."""
    from llmctl.data.token_data import file_sha256
    from llmctl.models.publish import publish_model

    config, shape = plan.config, plan.shape
    meta = {
        "arch": shape["arch"],
        "shape": shape,
        "params": run.n_params,
        "data_dir": str(plan.data_dir),
        "data_index_sha256": file_sha256(plan.data_dir / "index.json"),
        "tokenizer": plan.tok_name or str(plan.tok_dir),
        "run_dir": str(plan.run.path),
        "steps": run.step,
        "tokens_trained_total": run.tokens_seen,
        "world": plan.d.world,
        "rope_scaling": getattr(run.cfg_obj, "rope_scaling", None),
        "strategy": config["dist"]["strategy"] if plan.d.active else "single",
        "bytes_per_token": run.bpt,
        "bytes_per_token_source": run.bpt_source,
    }
    metrics = {f"pretrain.{k}": v for k, v in final.items() if k.startswith("val_") and k != "val_tokens_scored"}
    parents = _parents(plan)
    with plan.reservation.staging() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        plan.tok.save_pretrained(tmp)
        if (plan.run.path / "loss.png").exists():
            shutil.copy2(plan.run.path / "loss.png", tmp / "loss.png")
        entry = publish_model(
            plan.reservation,
            tmp,
            "hf",
            parents=parents,
            config=config,
            command=plan.command,
            metrics=metrics,
            meta=meta,
        )
    return {"model_path": entry.path, "parents": parents}
