"""The run dir rule shared by `pretrain` and `finetune`: `$LLMCTL_HOME/runs/NAME`, never lost by accident.

- No run dir yet: a new one is made.
- A run dir exists and neither `--resume` nor `--force` is given: refused, nothing touched.
- `--resume`: the run continues in it (its checkpoints must exist).
- `--force`: the old run dir is moved aside (`runs/.NAME.replaced-PID-TIME`) and deleted only once the new run
  has written its first checkpoint; if the new run fails before that, the old one is put back.
- A new run that fails before its first checkpoint leaves no run dir (its config, metrics and event files
  describe nothing to resume), so the same command, mended, runs again without `--force`.

Examples:
    run = open_run_dir("my-run", resume=False, force=True)
    ...; run.commit()       # the new run has written something worth keeping: drop the old one
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.paths import llmctl_home, temp_prefix


def run_dir_for(name: str) -> Path:
    """Where the run called `name` keeps checkpoints, metrics and its resolved config."""
    return llmctl_home() / "runs" / name


@dataclass
class RunDir:
    """A run's folder, and the earlier run it replaces (kept until `commit`)."""

    path: Path
    replaced: Path | None = None
    fresh: bool = False  # made by this run (not --resume): removed if the run fails before its first checkpoint
    committed: bool = False

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def commit(self) -> None:
        """The new run has written its first checkpoint: delete the run it replaced."""
        self.committed = True
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def abandon(self) -> None:
        """The new run failed: before its first checkpoint, put the replaced run back (or leave no run dir)."""
        if self.replaced is not None and self.replaced.exists():
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self.replaced, self.path)
            self.replaced = None
        elif self.fresh and not self.committed and self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)


def open_run_dir(name: str, resume: bool, force: bool, main_process: bool = True) -> RunDir:
    """Apply the run dir rule for run `name` (see the module doc); only the main process moves folders.

    Examples:
        open_run_dir("smol-lora", resume=False, force=False)   # error if runs/smol-lora exists
    """
    path = run_dir_for(name)
    exists = path.exists() and any(path.iterdir()) if path.is_dir() else path.exists()
    if resume or not exists:
        return RunDir(path, fresh=not resume and main_process)
    if not force:
        raise LlmctlError(
            f"run dir {path} already exists (an earlier run called {name!r})",
            hint="continue it with --resume, pick another --name, or pass --force to replace it",
        )
    if not main_process:
        return RunDir(path)
    aside = path.with_name(f"{temp_prefix(path, 'replaced')}{time.time_ns()}")
    os.replace(path, aside)
    return RunDir(path, replaced=aside, fresh=True)
