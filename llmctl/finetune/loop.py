"""The finetuning loop: set up (data, model, optimizer, resume), step, evaluate, checkpoint.

The training policy (optimizer, precision with fp16 loss scaling, run dir rule, checkpoints, metric logs) is
`llmctl.training`, shared with `pretrain`; the objective (`llmctl.finetune.objectives`) supplies batches and loss;
`llmctl.finetune.parallel` spreads each step over the processes of a torchrun job (one process: plain calls).

Examples:
    run = FinetuneRun(setup, log); run.train(); metrics = run.finish()
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.finetune.objectives import Models
from llmctl.finetune.parallel import Parallel

# Settings a checkpoint must share with the run that resumes it (besides the objective's own sections).
_TRAIN_KEYS = (
    "max_steps",
    "epochs",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "batch_size",
    "grad_accum",
    "seq_len",
    "seed",
    "weight_decay",
    "beta1",
    "beta2",
)


def fingerprint(config: dict, objective, base_label: str, data: Path, world: int = 1) -> dict:
    """What a resumed run must keep: base, method, objective, data file and format, training settings.

    `train.grad_accum` is recorded as grad_accum x processes (the global batch), so a run resumes on another
    number of processes with the same global batch.
    """
    h = hashlib.sha256()
    with open(data, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    d = config["data"]
    fp = {
        "base": base_label,
        "method": config["method"],
        "objective": config["objective"],
        "data_sha256": h.hexdigest()[:16],
        "data_format": d["format"],
        "template": d["template"],
        "packing": d["packing"],
        "eval_split": d["eval_split"],
        "max_examples": d["max_examples"],
    }
    fp.update({f"train.{k}": config["train"][k] for k in _TRAIN_KEYS})
    fp["train.grad_accum"] = config["train"]["grad_accum"] * world
    if config["method"] in ("lora", "qlora", "dora"):
        fp.update({f"lora.{k}": v for k, v in config["lora"].items()})
    if config["method"] == "qlora":
        fp.update({f"qlora.{k}": v for k, v in config["qlora"].items()})
    if config["method"] in ("prompt-tuning", "prefix-tuning"):
        fp["prompt.num_virtual_tokens"] = config["prompt"]["num_virtual_tokens"]
    for section in objective.fingerprint_keys:
        fp.update({f"{section}.{k}": v for k, v in config[section].items()})
    return fp


def check_resume(state: dict, fp: dict, net, root: Path) -> None:
    """Refuse a checkpoint made with other settings or other trainable parameters, naming the differences."""
    try:
        saved = json.loads(state["extra"].get("fingerprint", "{}"))
    except (TypeError, ValueError):
        saved = {}
    diff = [
        f"{k}={saved.get(k)!r} (now {fp.get(k)!r})" for k in sorted(set(saved) | set(fp)) if saved.get(k) != fp.get(k)
    ]
    params = {n: tuple(p.shape) for n, p in net.named_parameters() if p.requires_grad}
    shapes = {n: tuple(v.shape) for n, v in state["model"].items()}
    if not diff and params != shapes:
        diff = ["its trainable parameters differ from this model's"]
    if diff:
        hint = "resume with the same settings, or drop --resume to start over"
        if any(d.startswith("train.grad_accum=") for d in diff):
            hint += " (under torchrun, train.grad_accum counts grad_accum x processes: keep that product)"
        raise LlmctlError(f"cannot resume from {root}: the checkpoint was made with " + ", ".join(diff[:6]), hint=hint)


class FinetuneRun:
    """A finetuning run after set-up: model, objective, plans, optimizer, schedule, precision, logs, counters."""

    def __init__(self, s, log: Callable[[str], None], stop_after: int | None = None):
        """s: a `service.Setup` (checked config, data plans, model, run dir, fingerprint)."""
        from llmctl.training.optim import make_optimizer, make_scheduler
        from llmctl.training.precision import Precision

        self.s, self.log, self.stop_after = s, log, stop_after
        t = s.config["train"]
        self.t, self.accum = t, t["grad_accum"]
        self.max_steps = t["max_steps"]
        if t["epochs"]:
            per_step = s.objective.batches_per_step(self.accum)
            self.max_steps = max(1, math.ceil(t["epochs"] * s.plan.per_epoch / per_step))
        self.precision = Precision.for_run(t["dtype"], s.device)
        self.models = Models(s.net, s.ref_model, s.fast, s.objective_ctx)
        self.par = Parallel(s, self.models, self.accum)  # DDP/FSDP under torchrun, before the optimizer sees params
        self.optimizer = make_optimizer(
            s.net, t["lr"], t["weight_decay"], (t["beta1"], t["beta2"]), fused=not self.par.fsdp
        )
        self.scheduler = make_scheduler(self.optimizer, self.max_steps, t["warmup_steps"], t["min_lr_ratio"])
        self.params = [p for p in s.net.parameters() if p.requires_grad]
        self.objective_state: dict = {}  # what an objective carries from step to step (PPO's adaptive kl_coef)
        self.start, self.tokens_seen, self.resumed_from = 0, 0, None
        self.last_loss, self.last_eval = None, None
        self.ckpt = s.ckpt

    def resume(self) -> None:
        """Continue from the run's latest checkpoint (refused when it was made with other settings)."""
        from llmctl.training.state import set_rng_state

        state = self.ckpt.load_latest()
        if state is None:
            raise LlmctlError(
                f"--resume given but {self.ckpt.root} holds no checkpoint", hint="drop --resume to start a new run"
            )
        check_resume(state, self.s.fingerprint, self.s.net, self.ckpt.root)
        self.par.load(self.optimizer, state)
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.start = self.resumed_from = state["step"]
        self.tokens_seen = state["extra"].get("tokens_seen", 0)
        self.last_loss = state["extra"].get("train_loss")
        self.last_eval = state["extra"].get("eval")
        self.objective_state = dict(state["extra"].get("objective_state") or {})
        self.log(f"resumed from step {self.start} ({self.ckpt.root})")

    def open_logs(self) -> None:
        from llmctl.config.profiles import save_run_config
        from llmctl.training.metrics import NullLogger, open_logger

        if not self.s.d.main:  # rank 0 writes the logs and the config (and reports to MLflow / W&B)
            self.metrics_log = NullLogger()
            return
        s = self.s
        self.metrics_log = open_logger(
            s.run.path,
            s.config,
            self.resumed_from is not None,
            kind="finetune",
            name=s.name,
            parents=[s.base.name or s.base.path, *s.extra_parents],
            command=s.command,
        )
        if self.start:
            self.metrics_log.truncate_after(self.start)
        self.ckpt.clean_leftovers()
        save_run_config(self.s.config, self.s.run.path, self.s.command)

    # ---- one step ---------------------------------------------------------------------------------------------

    def update(self, step: int):
        """One optimizer step (or a rollout objective's whole step): (loss, extras, tokens, grad norm)."""
        from llmctl.training.optim import optimizer_step

        if self.s.objective.rollouts:
            return self.s.objective.update(self, step)
        loss, extra, tokens = self.step_loss(step)
        norm = optimizer_step(self.optimizer, self.scheduler, self.params, self.precision, self.t["grad_clip"])
        return loss, extra, tokens, norm

    def step_loss(self, step: int) -> tuple[float, dict, int]:
        """Forward and backward over the step's micro-batches (this process's share of them, under torchrun);
        returns (loss, objective extras, tokens) of the whole global batch."""
        return self.par.step_loss(step, self.precision)

    def evaluate(self, final: bool) -> dict:
        return self.par.evaluate(
            self.s.eval_plan, self.s.config, self.s.device, self.precision, None if final else self.t["eval_batches"]
        )

    def save(self, step: int) -> None:
        """A checkpoint of the trainable weights, optimizer, schedule and counters (rank 0 writes; all wait)."""
        extra = {
            "tokens_seen": self.tokens_seen,
            "fingerprint": json.dumps(self.s.fingerprint, sort_keys=True),
            "train_loss": self.last_loss,
            "eval": self.last_eval,
            "world": self.s.d.world,
            "objective_state": self.objective_state,
        }
        weights, opt_state = self.par.state(self.optimizer)  # a collective under FSDP
        if self.s.d.main:
            self.ckpt.save(step, weights, opt_state, self.scheduler, extra=extra)
            self.s.run.commit()
        self.s.d.barrier()

    def _log_row(self, step: int, row: dict) -> None:
        self.metrics_log.log(step, row)
        if step % self.t["log_every"] == 0 or step == self.max_steps or "eval_loss" in row:
            ev = f"  eval_loss {row['eval_loss']:.4f}" if "eval_loss" in row else ""
            ev += "".join(
                f"  {k} {row[k]:.4g}"
                for k in (*self.s.objective.log_keys, "eval_reward", "eval_kl")
                if isinstance(row.get(k), (int, float))
            )
            self.log(
                f"step {step}/{self.max_steps}  loss {row['loss']:.4f}{ev}  lr {row['lr']:.2e}  "
                f"{row['tokens_per_s']:.0f} tok/s"
            )

    def train(self) -> bool:
        """Steps from the start (or resume point) to max_steps; False when stopped early by `stop_after`."""
        from llmctl.training.state import maybe_kill

        self.s.net.train()
        t0, cpu0, self.tokens_run = time.time(), time.process_time(), 0
        for step in range(self.start + 1, self.max_steps + 1):
            loss, extra, tokens, norm = self.update(step)
            self.tokens_run += tokens
            self.tokens_seen += tokens
            self.last_loss = loss
            row = {
                "loss": loss,
                "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": float(norm) if norm is not None else 0.0,
                "tokens": self.tokens_seen,
                **extra,
            }
            if (
                self.s.eval_plan is not None
                and self.t["eval_every"]
                and (step % self.t["eval_every"] == 0 or step == self.max_steps)
            ):
                self.last_eval = self.evaluate(final=step == self.max_steps)
                row.update(self.last_eval)
            elapsed = time.time() - t0
            row["tokens_per_s"] = self.tokens_run / elapsed if elapsed else 0.0
            self._log_row(step, row)
            if (self.t["save_every"] and step % self.t["save_every"] == 0) or step == self.stop_after:
                self.save(step)
            maybe_kill(step)
            if self.stop_after is not None and step >= self.stop_after:
                return False
        self.elapsed, self.cpu = time.time() - t0, time.process_time() - cpu0
        return True

    def finish(self) -> dict:
        """Final evaluation, last checkpoint, logs closed; the run's metrics."""
        if self.s.eval_plan is not None and self.last_eval is None:
            self.last_eval = self.evaluate(final=True)
        self.save(max(self.max_steps, self.start))
        self.metrics_log.close(f"finetune {self.s.name} ({self.s.config['method']}, {self.s.config['objective']})")
        elapsed = self.elapsed
        return {
            "train_loss": self.last_loss,
            **(self.last_eval or {}),
            "steps": self.max_steps,
            "compute_dtype": self.precision.dtype,
            "tokens": self.tokens_seen,
            "tokens_per_s": round(self.tokens_run / elapsed, 1) if elapsed else None,
            "train_seconds": round(elapsed, 2),
            "train_cpu_seconds": round(self.cpu, 2),
            "tokens_trained": self.tokens_run,
        }
