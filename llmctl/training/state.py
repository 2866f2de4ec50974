"""Seeds, RNG states and atomic, resumable training checkpoints.

Examples:
    seed_everything(1234)
    ckpt = Checkpointer(run_dir / "checkpoints")
    ckpt.save(100, model_state, opt, sched, extra={"tokens_seen": 12800})
    state = ckpt.load_latest()  # {"step", "model", "optimizer", "scheduler", "rng", "extra"}
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

from llmctl.errors import LlmctlError, first_line
from llmctl.paths import atomic_dir

# Test hook: SIGKILL the training process right after this optimizer step (and its checkpoint, if one is due),
# as a power cut would. LLMCTL_PRETRAIN_KILL_AT_STEP is the older name, still read. Under torchrun,
# LLMCTL_KILL_RANK=R kills only rank R (torchrun then stops the others, as when one machine dies).
KILL_ENV = "LLMCTL_KILL_AT_STEP"
KILL_RANK_ENV = "LLMCTL_KILL_RANK"
_KILL_ENVS = (KILL_ENV, "LLMCTL_PRETRAIN_KILL_AT_STEP")


def maybe_kill(step: int) -> None:
    """SIGKILL this process after `step` when the kill hook asks for it (tests of resume after a crash)."""
    only = os.environ.get(KILL_RANK_ENV, "")
    if only.isdigit() and int(only) != int(os.environ.get("RANK", "0")):
        return
    for var in _KILL_ENVS:
        at = os.environ.get(var, "")
        if at.isdigit() and int(at) == step:
            os.kill(os.getpid(), signal.SIGKILL)


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
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy": {
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
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

    def clean_leftovers(self) -> list[Path]:
        """Remove half-written checkpoint dirs (`.step-*.tmp-*`, `.step-*.old-*`) that a killed run left."""
        gone = []
        if self.root.is_dir():
            for path in self.root.glob(".step-*"):
                shutil.rmtree(path, ignore_errors=True)
                gone.append(path)
        return gone

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(
            int(p.name.split("-")[1])
            for p in self.root.glob("step-*")
            if p.is_dir() and (p / "state.pt").is_file() and p.name.split("-")[1].isdigit()
        )

    def save(self, step: int, model_state: dict, optimizer, scheduler, extra: dict | None = None) -> Path:
        import torch

        dest = self.root / f"step-{step:07d}"
        with atomic_dir(dest, force=True, point="checkpoint") as tmp:
            torch.save(
                {
                    "step": step,
                    "model": model_state,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "extra": extra or {},
                },
                tmp / "state.pt",
            )
            (tmp / "meta.json").write_text(json.dumps({"step": step, **(extra or {})}, default=str))
        for old in self.steps()[: -self.keep]:
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
            raise LlmctlError(
                f"checkpoint {path} cannot be read ({first_line(exc)})",
                hint="delete that checkpoint folder and resume from the previous one",
            ) from exc
