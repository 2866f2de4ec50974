"""The pretraining loop: set up, step (with the loss-spike guard), log, evaluate, save.

One `PretrainRun` holds what a run needs between steps; each method is one piece of the loop. Batches come
from `data.batch_offsets(seed, step, rollbacks)`, so N processes see the same global batch as one process with
N x grad-accum, and a resumed run continues exactly (the loss of a partly filled log window is in the checkpoint).

Examples:
    run = PretrainRun(plan, on_log); run.train(); final = run.final_eval(); run.save(run.step)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from llmctl.errors import LlmctlError, first_line
from llmctl.models.rope import scale_config
from llmctl.pretrain.data import batch_offsets, evaluate, lm_loss, val_bytes_per_token, val_metrics, windows
from llmctl.pretrain.model import build_model, hf_config
from llmctl.training.dist import full_state, load_full_state, wrap_model

# Dense bf16 peak FLOP/s of common GPUs, for MFU (by substring of the device name).
_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in _PEAK_FLOPS.items() if key in name), None)


class PretrainRun:
    """A pretraining run between `setup` and `save`: model, optimizer, schedule, precision, logs, counters."""

    def __init__(self, plan, on_log: Callable[[dict], None] | None):
        self.p, self.on_log = plan, on_log
        self.tcfg, self.scfg = plan.config["train"], plan.config["spike"]
        self.d, self.device = plan.d, plan.device
        split = plan.config["data"]["train_split"]
        self.train_tokens = plan.data.tokens(split)
        self.bsz, self.accum, self.seq_len = self.tcfg["batch_size"], self.tcfg["grad_accum"], self.tcfg["seq_len"]
        self.global_seqs = self.bsz * self.accum * self.d.world
        self.tokens_per_step = self.global_seqs * self.seq_len
        self.max_steps = self.tcfg["max_steps"]
        if self.tcfg["epochs"]:
            self.max_steps = max(1, math.ceil(self.tcfg["epochs"] * len(self.train_tokens) / self.tokens_per_step))
        self.step, self.rollbacks, self.loss_hist, self.tokens_seen = 0, 0, [], 0
        self.window_steps = 0  # optimizer steps in the current log window (its loss sum is self.loss_acc)
        self._setup_model()
        self._setup_eval()
        if plan.state is not None:
            self._resume(plan.state)

    # ---- set-up --------------------------------------------------------------------------------------------

    def _setup_model(self) -> None:
        import torch

        from llmctl.training.optim import make_optimizer, make_scheduler
        from llmctl.training.precision import Precision
        from llmctl.training.state import seed_everything

        seed_everything(self.tcfg["seed"])
        self.cfg_obj = hf_config(self.p.shape, self.p.config["model"], self.p.tok)
        scale_config(self.cfg_obj, self.p.config.get("rope"))  # saved in config.json with the model
        self.raw = build_model(self.cfg_obj).to(self.device)
        if self.tcfg["gradient_checkpointing"]:  # non-reentrant: the one torch recommends, FSDP-safe
            self.raw.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.n_params = sum(w.numel() for w in self.raw.parameters())
        self.model, self.fsdp = wrap_model(self.raw, self.d, self.p.config, self.device)
        self.opt = make_optimizer(
            self.raw,
            self.tcfg["lr"],
            self.tcfg["weight_decay"],
            (self.tcfg["beta1"], self.tcfg["beta2"]),
            fused=not self.fsdp,
        )
        self.sched = make_scheduler(self.opt, self.max_steps, self.tcfg["warmup_steps"], self.tcfg["min_lr_ratio"])
        self.precision = Precision.for_run(self.tcfg["dtype"], self.device)
        self.ctx = self.precision.autocast
        self.loss_acc = torch.zeros((), device=self.device)

    def _setup_eval(self) -> None:
        from llmctl.training.metrics import open_logger

        dcfg = self.p.config["data"]
        self.has_val = self.p.data.num_tokens(dcfg["val_split"]) > 0
        self.val_tokens = self.p.data.tokens(dcfg["val_split"]) if self.has_val else None
        self.bpt, self.bpt_source = (
            val_bytes_per_token(self.p.data, dcfg["val_split"], self.p.tok) if self.has_val else (None, "none")
        )
        self.logger = None
        if self.d.main:  # rank 0 writes the logs (and reports to MLflow / W&B)
            self.logger = open_logger(
                self.p.run.path,
                self.p.config,
                self.p.resume,
                kind="pretrain",
                name=self.p.name,
                parents=self.p.parents,
                command=self.p.command,
            )
        shape = self.p.shape
        self.flops_per_token = 6 * self.n_params + 12 * shape["num_layers"] * shape["hidden_size"] * self.seq_len
        self.peak = peak_flops(self.device)

    def _load(self, state: dict) -> None:
        from llmctl.training.state import set_rng_state

        try:
            load_full_state(self.raw, self.opt, state, self.fsdp)
        except RuntimeError as exc:
            raise LlmctlError(
                f"the checkpoint in {self.p.run.path} does not fit this model ({first_line(exc)})",
                hint="resume with the run's original model settings, or start over with --force",
            ) from exc
        self.sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])

    def _resume(self, state: dict) -> None:
        self._load(state)
        ex = state["extra"]
        self.step, self.rollbacks = int(state["step"]), int(ex.get("rollbacks", 0))
        self.loss_hist, self.tokens_seen = list(ex.get("loss_hist", [])), int(ex.get("tokens_seen", 0))
        window = ex.get("log_window") or {"loss_sum": 0.0, "steps": 0}
        self.loss_acc.fill_(float(window["loss_sum"]))  # every rank holds the mean: the next log is exact
        self.window_steps = int(window["steps"])
        if self.logger is not None:
            self.logger.truncate_after(self.step)

    # ---- logging -----------------------------------------------------------------------------------------

    def emit(self, row: dict) -> None:
        if self.logger is not None:
            self.logger.log(row["step"], {k: v for k, v in row.items() if k != "step"})
        if self.on_log is not None and self.d.main:
            self.on_log(row)

    def announce(self) -> None:
        if self.d.main and self.on_log is not None:
            self.on_log(
                {
                    "event": "start",
                    "params": self.n_params,
                    "device": self.device,
                    "world": self.d.world,
                    "max_steps": self.max_steps,
                    "resumed_from": self.step if self.p.state is not None else None,
                    "tokens_per_step": self.tokens_per_step,
                    "dtype": self.precision.dtype,
                    "run_dir": str(self.p.run.path),
                    "strategy": self.p.config["dist"]["strategy"] if self.d.active else None,
                }
            )

    def _log_step(self, gnorm) -> None:
        now = time.perf_counter()
        loss = float(self.d.mean(self.loss_acc)) / self.window_steps
        tps = self._tok_log / max(now - self._t_log, 1e-9)
        row = {
            "step": self.step,
            "loss": round(loss, 6),
            "lr": self.sched.get_last_lr()[0],
            "tokens": self.tokens_seen,
            "tokens_per_s": round(tps, 1),
        }
        if gnorm is not None:
            g = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
            row["grad_norm"] = round(float(g), 4)
        if self.peak:
            row["mfu"] = round(tps * self.flops_per_token / (self.peak * self.d.world), 4)
        self.emit(row)
        self._t_log, self._tok_log = time.perf_counter(), 0
        self.loss_acc.zero_()
        self.window_steps = 0

    # ---- one step ------------------------------------------------------------------------------------------

    def forward_backward(self):
        """The step's micro-batches through the model (gradients accumulated); returns the step's mean loss."""
        import contextlib

        import torch

        offs = batch_offsets(
            self.tcfg["seed"], self.step + 1, self.rollbacks, len(self.train_tokens), self.seq_len, self.global_seqs
        )
        mine = offs[self.d.rank * self.bsz * self.accum : (self.d.rank + 1) * self.bsz * self.accum]
        step_loss = torch.zeros((), device=self.device)
        for m in range(self.accum):
            batch = windows(self.train_tokens, mine[m * self.bsz : (m + 1) * self.bsz], self.seq_len)
            batch = batch.to(self.device, non_blocking=True)
            sync = contextlib.nullcontext()
            if self.d.active and not self.fsdp and m < self.accum - 1:
                sync = self.model.no_sync()  # DDP: all-reduce once, on the last micro-batch
            elif self.fsdp:
                self.model.set_requires_gradient_sync(m == self.accum - 1)
            with sync:
                loss = lm_loss(self.model, batch, self.ctx()) / self.accum
                self.precision.backward(loss)
            step_loss += loss.detach()
        return step_loss

    def spike_rollback(self, step_loss) -> bool:
        """Loss-spike guard: a loss far above the recent mean rolls back to the last checkpoint with a lower LR."""
        from llmctl.training.optim import lr_factor

        cur = float(self.d.mean(step_loss))
        recent = self.loss_hist[-self.scfg["window"] :]
        spike = (
            len(recent) >= min(5, self.scfg["window"])
            and cur > self.scfg["threshold"] * sum(recent) / len(recent)
            and self.rollbacks < self.scfg["max_rollbacks"]
        )
        if not spike:
            self.loss_hist = (self.loss_hist + [cur])[-self.scfg["window"] :]
            return False
        self.opt.zero_grad(set_to_none=True)
        back = self.p.ckpt.load_latest()
        if back is None:
            if self.on_log is not None and self.d.main:
                self.on_log(
                    {"event": "spike", "step": self.step + 1, "loss": cur, "note": "no checkpoint to roll back to"}
                )
            self.loss_hist = (self.loss_hist + [cur])[-self.scfg["window"] :]
            return False
        self._load(back)
        self.rollbacks += 1
        self.step = int(back["step"])
        self.loss_hist = list(back["extra"].get("loss_hist", []))
        self.tokens_seen = int(back["extra"].get("tokens_seen", 0))
        factor = self.scfg["lr_factor"] ** self.rollbacks
        self.sched.base_lrs = [self.tcfg["lr"] * factor for _ in self.sched.base_lrs]
        for g, lr0 in zip(self.opt.param_groups, self.sched.base_lrs):
            g["lr"] = lr0 * lr_factor(self.step, self.max_steps, self.tcfg["warmup_steps"], self.tcfg["min_lr_ratio"])
        if self.logger is not None:
            self.logger.truncate_after(self.step)
        self.emit(
            {
                "step": self.step,
                "event": "rollback",
                "spike_loss": round(cur, 6),
                "rollbacks": self.rollbacks,
                "lr_scale": factor,
            }
        )
        self.loss_acc.zero_()
        self.window_steps = 0
        return True

    def train(self) -> float:
        """Run steps until max_steps (evaluating, logging and checkpointing on schedule); returns seconds."""
        from llmctl.training.optim import optimizer_step
        from llmctl.training.state import maybe_kill

        self.announce()
        self.model.train()
        t_start = time.perf_counter()
        self._t_log, self._tok_log, self.first_step = time.perf_counter(), 0, self.step
        gnorm = None
        while self.step < self.max_steps:
            step_loss = self.forward_backward()
            if self.scfg["enabled"] and self.spike_rollback(step_loss):
                continue
            gnorm = optimizer_step(
                self.opt, self.sched, self.model.parameters(), self.precision, self.tcfg["grad_clip"]
            )
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            self._tok_log += self.tokens_per_step
            self.loss_acc += step_loss
            self.window_steps += 1
            if self.step % self.tcfg["log_every"] == 0 or self.step == self.max_steps:
                self._log_step(gnorm)
            self._on_schedule()
            maybe_kill(self.step)
        return time.perf_counter() - t_start

    def _on_schedule(self) -> None:
        """Validation and checkpoints every eval_every / save_every steps (their time is not in tokens/s)."""
        t_pause = time.perf_counter()
        if (
            self.has_val
            and self.tcfg["eval_every"]
            and self.step % self.tcfg["eval_every"] == 0
            and self.step != self.max_steps
        ):
            vl = evaluate(
                self.model,
                self.val_tokens,
                self.seq_len,
                self.bsz,
                self.tcfg["eval_batches"] * self.bsz,
                self.device,
                self.ctx(),
                self.d,
            )
            self.emit({"step": self.step, **val_metrics(vl, self.bpt)})
        if self.tcfg["save_every"] and self.step % self.tcfg["save_every"] == 0 and self.step != self.max_steps:
            self.save(self.step)
        self._t_log += time.perf_counter() - t_pause

    # ---- evaluate and save ---------------------------------------------------------------------------------

    def final_eval(self) -> dict:
        """Validation metrics over the whole val split (up to data.final_eval_tokens)."""
        limit = self.p.config["data"]["final_eval_tokens"]
        if not (self.has_val and limit):
            return {}
        vt = self.val_tokens[: limit + 1] if len(self.val_tokens) > limit + 1 else self.val_tokens
        final = val_metrics(
            evaluate(self.model, vt, self.seq_len, self.bsz, None, self.device, self.ctx(), self.d), self.bpt
        )
        final["val_tokens_scored"] = int((len(vt) - 1) // self.seq_len * self.seq_len)
        self.emit({"step": self.step, **final})
        return final

    def save(self, at: int) -> None:
        """An atomic checkpoint of everything a resume needs (written by rank 0; all ranks wait)."""
        msd, osd = full_state(self.raw, self.opt, self.fsdp)
        window = {"loss_sum": float(self.d.mean(self.loss_acc)), "steps": self.window_steps}
        if self.d.main:
            self.p.ckpt.save(
                at,
                msd,
                osd,
                self.sched,
                extra={
                    "model_shape": self.p.shape,
                    "data_position": {
                        "step": at,
                        "seed": self.tcfg["seed"],
                        "rollbacks": self.rollbacks,
                        "sequences_seen": at * self.global_seqs,
                    },
                    "rollbacks": self.rollbacks,
                    "loss_hist": self.loss_hist[-self.scfg["window"] :],
                    "tokens_seen": self.tokens_seen,
                    "world": self.d.world,
                    "log_window": window,
                },
            )
            self.p.run.commit()
        self.d.barrier()

    def final_model(self) -> Any:
        """The trained model as a plain (unwrapped, unsharded) transformers model; None on ranks other than 0.

        Every rank must call it: under FSDP gathering the full weights is a collective.
        """
        state = full_state(self.raw, self.opt, self.fsdp)[0] if self.fsdp else self.raw.state_dict()
        if not self.d.main:
            return None
        out = build_model(self.cfg_obj)
        out.load_state_dict(state)
        out.generation_config.pad_token_id = self.p.tok.pad_token_id
        return out
