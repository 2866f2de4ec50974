"""Training machinery shared by `pretrain` and `finetune`: optimizer, schedule, checkpoints, metric logs.

Examples:
    opt = make_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), device="cpu")
    sched = make_scheduler(opt, max_steps=1000, warmup_steps=100, min_lr_ratio=0.1)
    ckpt = Checkpointer(run_dir / "checkpoints")
    ckpt.save(step, model, opt, sched, extra={"data_position": 1234})
    logger = MetricsLogger(run_dir); logger.log(step, {"loss": 2.3}); logger.close()
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.paths import atomic_dir


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices (and embeddings), not biases or norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model, lr: float, weight_decay: float, betas: tuple[float, float], device: str):
    """AdamW, fused where the device supports it (CUDA; CPU in recent torch)."""
    import torch

    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise LlmctlError("the model has no trainable parameters", hint="check the training method's settings")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_factor(step: int, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at max_steps.

    Examples:
        lr_factor(0, 100, 10, 0.1) == 0.1 * 0 ... ; lr_factor(10, 100, 10, 0.1) == 1.0
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer, max_steps: int, warmup_steps: int, min_lr_ratio: float):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, max_steps, warmup_steps, min_lr_ratio))


def autocast(device: str, dtype: str):
    """bf16 autocast where supported ('auto' on CUDA with bf16, or 'bfloat16' asked); else a no-op."""
    import torch

    kind = "cuda" if device.startswith("cuda") else "cpu"
    if dtype == "bfloat16" or (dtype == "auto" and kind == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    if dtype == "float16" and kind == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AMX or AVX512-BF16; Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return " amx_bf16" in flags or " avx512_bf16" in flags


def compute_dtype(dtype: str, device: str) -> str:
    """`auto` → bf16 autocast on GPUs with bf16 and on CPUs with native bf16 (measured 1.35x faster than fp32
    on an AMX CPU, benchmarks/pretrain_speed.py), else float32. Explicit values are kept."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state, in types `torch.load(weights_only=True)` accepts."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "numpy": {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate((state["python_version"], tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Atomic training checkpoints: trainable weights, optimizer, scheduler, RNG and data position.

    Each checkpoint is a folder `step-000123/` written to a temp dir and renamed; `latest` is the
    highest complete step. Only `keep` newest checkpoints are kept.

    Examples:
        ckpt.save(100, model, opt, sched, extra={"epoch": 0, "position": 800})
        state = ckpt.load_latest()  # {"step", "model", "optimizer", "scheduler", "rng", "extra"}
    """

    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.name.split("-")[1]) for p in self.root.glob("step-*")
                      if p.is_dir() and (p / "state.pt").is_file() and p.name.split("-")[1].isdigit())

    def save(self, step: int, model_state: dict, optimizer, scheduler, extra: dict | None = None) -> Path:
        import torch

        dest = self.root / f"step-{step:07d}"
        with atomic_dir(dest, force=True) as tmp:
            torch.save({"step": step, "model": model_state, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra or {}},
                       tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps({"step": step, **(extra or {})}, default=str))
        for old in self.steps()[:-self.keep]:
            shutil.rmtree(self.root / f"step-{old:07d}", ignore_errors=True)
        return dest

    def load_latest(self) -> dict | None:
        import torch

        steps = self.steps()
        if not steps:
            return None
        path = self.root / f"step-{steps[-1]:07d}" / "state.pt"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LlmctlError(f"checkpoint {path} cannot be read ({str(exc).splitlines()[0]})",
                              hint="delete that checkpoint folder and resume from the previous one") from exc


class MetricsLogger:
    """Metrics to CSV, JSONL and TensorBoard event files, plus a loss-curve PNG on close.

    Examples:
        log = MetricsLogger(run_dir); log.log(10, {"loss": 3.2, "lr": 1e-4}); log.close()
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, append: bool = False):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        mode = "a" if append else "w"
        self.jsonl = open(self.dir / "metrics.jsonl", mode, encoding="utf-8")
        if append and (self.dir / "metrics.jsonl").exists():
            self.rows = [json.loads(l) for l in (self.dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
            except Exception:  # tensorboard missing: CSV/JSONL still carry everything
                self.writer = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, **values}
        self.rows.append(row)
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """Forget rows logged after `step` (used when resuming or rolling back)."""
        self.rows = [r for r in self.rows if r["step"] <= step]
        self.jsonl.close()
        with open(self.dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
            for r in self.rows:
                fh.write(json.dumps(r) + "\n")
        self.jsonl = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")

    def close(self, title: str = "loss") -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with open(self.dir / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        self.plot(title)

    def plot(self, title: str) -> Path | None:
        """loss.png: training loss (and validation loss when logged) against steps."""
        series = {k: [(r["step"], r[k]) for r in self.rows if isinstance(r.get(k), (int, float))]
                  for k in ("loss", "val_loss", "eval_loss")}
        series = {k: v for k, v in series.items() if v}
        if not series:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for k, pts in series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, marker="o" if len(pts) < 30 else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.dir / "loss.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
