"""Training metrics: metrics.jsonl, metrics.csv, TensorBoard event files, a loss-curve PNG, MLflow / W&B runs.

Examples:
    log = MetricsLogger(run_dir); log.log(10, {"loss": 3.2, "lr": 1e-4}); log.close()
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Metrics to CSV, JSONL and TensorBoard event files, plus a loss-curve PNG on close.

    Examples:
        log = MetricsLogger(run_dir); log.log(10, {"loss": 3.2, "lr": 1e-4}); log.close()
    """

    def __init__(
        self, run_dir: Path, tensorboard: bool = True, append: bool = False, csv: bool = True, tracker: Any = None
    ):
        self.dir = Path(run_dir)
        self.csv, self.tracker = csv, tracker  # tracker: llmctl.training.tracking.Tracker (MLflow, W&B) or None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        mode = "a" if append else "w"
        self.jsonl = open(self.dir / "metrics.jsonl", mode, encoding="utf-8")
        if append and (self.dir / "metrics.jsonl").exists():
            self.rows = [
                json.loads(line) for line in (self.dir / "metrics.jsonl").read_text().splitlines() if line.strip()
            ]
        self.writer = None
        self._tensorboard = tensorboard  # the event file is made with the first row: a run resumed at its
        # last step (nothing left to log) adds no empty event file to the run dir

    def _tb(self):
        if self._tensorboard and self.writer is None:
            self._tensorboard = False
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
            except Exception:  # tensorboard missing: CSV/JSONL still carry everything
                self.writer = None
        return self.writer

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, **values}
        self.rows.append(row)
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self._tb() is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, step)
        if self.tracker is not None:
            self.tracker.log(step, values)

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
        if self.csv:
            self.write_csv()
        self.plot(title)
        if self.tracker is not None:
            from llmctl.config.profiles import RUN_CONFIG_FILE

            names = ("loss.png", RUN_CONFIG_FILE, "metrics.csv")
            self.tracker.finish([self.dir / n for n in names])

    def write_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with open(self.dir / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)

    def plot(self, title: str) -> Path | None:
        """loss.png: training loss (and validation loss when logged) against steps."""
        series = {
            k: [(r["step"], r[k]) for r in self.rows if isinstance(r.get(k), (int, float))]
            for k in ("loss", "val_loss", "eval_loss")
        }
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


def open_logger(run_dir: Path, config: dict, append: bool, **run) -> MetricsLogger:
    """The metric logs `tracking.report_to` asks for (rank 0 calls it): files in the run dir, MLflow/W&B runs.

    `run`: kind, name, parents, command (the tags of the tracker runs); `append` continues a resumed run's logs
    and its tracker runs.

    Examples:
        open_logger(run.path, config, False, kind="finetune", name="smol", parents=["base"], command="llmctl …")
    """
    from llmctl.training.tracking import start

    report = (config.get("tracking") or {"report_to": ["tensorboard", "csv"]}).get("report_to") or []
    tracker = start(run_dir, config, resume=append, **run)
    return MetricsLogger(run_dir, "tensorboard" in report, append, csv="csv" in report, tracker=tracker)


class NullLogger:
    """The metrics logger of processes other than rank 0 under torchrun: rank 0 writes the logs."""

    rows: list = []

    def log(self, step: int, values: dict[str, Any]) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self, title: str = "loss") -> None:
        pass
