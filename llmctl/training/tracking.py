"""Experiment tracking: each training run in MLflow and/or Weights & Biases, beside the run dir's own files.

- `check_reporters(config)`: before any work, a tracker whose extra is missing is one error naming the
  `pip install 'llmctl[…]'` that adds it
- `start(run_dir, config, …)`: the run in each tracker `tracking.report_to` names (rank 0 only: the callers open
  it where the metric logs are opened); the run ids are kept in `RUN_DIR/tracking.json`, so `--resume`
  continues the same runs
- `Tracker.log(step, values)` for each logged row; `Tracker.finish(files)` adds loss.png, the resolved config and
  metrics.csv as artifacts and ends the runs
- `registry_metrics(entry, metrics, new)`: the registry calls it when metrics are recorded (eval, quantize,
  prune, export): they go to the run that produced the model (found through the registry's lineage), else to a
  run of their own when `LLMCTL_REPORT_TO` names a tracker

MLflow: `MLFLOW_TRACKING_URI`, else `sqlite:///$LLMCTL_HOME/mlflow/mlflow.db` with artifacts beside it (offline;
`mlflow ui --backend-store-uri sqlite:///$LLMCTL_HOME/mlflow/mlflow.db` shows it). W&B: offline unless
`WANDB_MODE` is set; files under `RUN_DIR/wandb` (`WANDB_DIR` wins; `$LLMCTL_HOME/wandb` for runs without a run
dir); `wandb sync RUN_DIR/wandb/offline-run-*` uploads them later.

Examples:
    tracker = start(run_dir, config, kind="finetune", name="smol-lora", parents=["base"], command="llmctl …",
                    resume=False)
    tracker.log(10, {"loss": 2.1, "lr": 1e-4}); tracker.finish([run_dir / "loss.png"])
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError, first_line
from llmctl.paths import atomic_file, llmctl_home

TRACKERS = ("mlflow", "wandb")
STATE_FILE = "tracking.json"
_EXTRA = {"mlflow": "mlflow", "wandb": "wandb"}  # the import each tracker needs → the llmctl extra that adds it
_PARAM_CHARS = 6000  # MLflow's longest param value (characters)
_TAG_CHARS = 64  # W&B's longest tag


def wanted(config: dict) -> list[str]:
    """The trackers a resolved training config asks for (`tracking.report_to`), in order."""
    return [t for t in (config.get("tracking") or {}).get("report_to") or [] if t in TRACKERS]


def check_reporters(config: dict | list[str]) -> None:
    """Refuse, before any work, a tracker whose Python package is not installed (one line naming the extra)."""
    import importlib.util

    for tracker in config if isinstance(config, list) else wanted(config):
        try:
            found = importlib.util.find_spec(_EXTRA[tracker]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise LlmctlError(
                f"--report-to {tracker}: the {tracker} package is not installed",
                hint=f"pip install 'llmctl[{tracker}]' (or drop {tracker} from --report-to)",
            )


def _numeric(values: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _key(key: str) -> str:
    """A metric, param or tag name MLflow accepts (letters, digits, `_ - . / :` and spaces)."""
    return re.sub(r"[^\w\-./: ]", "_", str(key))


def flat_params(config: dict) -> dict[str, str]:
    """The resolved profile as dotted key → text (lists as JSON), as both trackers show params."""
    from llmctl.config.schema import leaves

    out = {}
    for key, value in leaves(config).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[_key(key)] = text[:_PARAM_CHARS]
    return out


def _quiet() -> None:
    """MLflow's store set-up logs INFO lines (table creation, migrations) that would interleave with llmctl's."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---- MLflow ------------------------------------------------------------------------------------------------------


def mlflow_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else a SQLite store under LLMCTL_HOME (its folder is made)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = llmctl_home() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


class _MLflow:
    """One llmctl run as one MLflow run (through MlflowClient: no process-global active run)."""

    name = "mlflow"

    def __init__(self, state: dict | None = None):
        from mlflow import MlflowClient

        _quiet()
        self.state = dict(state or {})
        self.state.setdefault("tracking_uri", mlflow_uri())
        self.client = MlflowClient(tracking_uri=self.state["tracking_uri"])

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise LlmctlError(
                f"MLflow experiment {name!r} was deleted", hint="restore it in MLflow, or --set tracking.experiment=NEW"
            )
        if exp is not None:
            return exp.experiment_id
        local = llmctl_home() / "mlflow"  # llmctl's own store keeps its artifacts beside it (else the server's choice)
        own_store = self.state["tracking_uri"] == f"sqlite:///{local / 'mlflow.db'}"
        where = (local / "artifacts").as_uri() if own_store else None
        try:
            return self.client.create_experiment(name, artifact_location=where)
        except MlflowException:  # made by a concurrent run meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def open(self, experiment: str, name: str, params: dict, tags: dict, resume: bool) -> None:
        from mlflow.entities import Param, RunTag

        run = None
        if resume and self.state.get("run_id"):
            try:
                run = self.client.get_run(self.state["run_id"])
            except Exception:  # the store lost it: a new run, which says what it continues
                tags = {**tags, "llmctl.continues_run": self.state["run_id"]}
        if run is None:
            run = self.client.create_run(self._experiment(experiment), run_name=name, tags=tags)
            self.state["run_id"] = run.info.run_id
            old = {}
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
            old = run.data.params
        new = {k: v for k, v in params.items() if k not in old}
        changed = {f"llmctl.resumed.{k}": v for k, v in params.items() if k in old and old[k] != v}
        items = list(new.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.state["run_id"], params=[Param(k, v) for k, v in items[i : i + 100]])
        more = {**(tags if old else {}), **changed}
        if more:
            self.client.log_batch(self.state["run_id"], tags=[RunTag(_key(k), str(v)) for k, v in more.items()])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.state["run_id"], metrics=metrics)

    def tag(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.state["run_id"], tags=[RunTag(_key(k), str(v)) for k, v in tags.items()])

    def finish(self, files: list[Path], summary: dict, status: str) -> None:
        for f in files:
            self.client.log_artifact(self.state["run_id"], str(f))
        self.client.set_terminated(self.state["run_id"], status)


# ---- Weights & Biases --------------------------------------------------------------------------------------------


class _WandB:
    """One llmctl run as one W&B run: offline unless WANDB_MODE says otherwise; resumed by its id."""

    name = "wandb"

    def __init__(self, state: dict | None = None, folder: Path | None = None):
        self.state = dict(state or {})
        self.state.setdefault("dir", os.environ.get("WANDB_DIR") or str(folder or llmctl_home()))
        self.run = None

    def open(self, experiment: str, name: str, params: dict, tags: dict, resume: bool) -> None:
        import wandb

        Path(self.state["dir"]).mkdir(parents=True, exist_ok=True)
        self.state.setdefault("id", secrets.token_hex(4))  # W&B's own form: 8 lowercase letters and digits
        self.state.setdefault("project", experiment)
        mode = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
        labels = [str(tags.get("llmctl.kind", "")), *str(tags.get("llmctl.parents", "")).split(",")]
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True, save_code=False)
        self.run = wandb.init(
            project=self.state["project"],
            id=self.state["id"],
            name=name,
            dir=self.state["dir"],
            notes=tags.get("llmctl.command"),
            tags=[t[:_TAG_CHARS] for t in labels if t] or None,  # None: a reopened run keeps its tags
            resume="allow",
            reinit="create_new",  # runs of several llmctl calls in one process (tests, notebooks) stay apart
            settings=settings,
            **mode,
        )
        self.run.config.update({**params, **tags}, allow_val_change=True)
        self.run.define_metric("*", step_metric="step")  # a resumed run re-logs steps: its own axis, not _step

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({"step": step, **values})

    def tag(self, tags: dict) -> None:
        self.run.config.update(tags, allow_val_change=True)

    def finish(self, files: list[Path], summary: dict, status: str) -> None:
        import shutil

        for f in files:  # copied into the run's files folder: W&B would symlink (and warn) for a file outside it
            dest = Path(self.run.dir) / f.name
            shutil.copy2(f, dest)
            self.run.save(str(dest), base_path=self.run.dir, policy="now")
        self.run.summary.update(summary)
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _backend(tracker: str, state: dict | None, run_dir: Path | None):
    return _WandB(state, run_dir) if tracker == "wandb" else _MLflow(state)  # W&B writes into FOLDER/wandb/


# ---- a training run's trackers -----------------------------------------------------------------------------------


def read_state(run_dir: Path) -> dict | None:
    """The trackers and run ids a run dir's run reports to (`tracking.json`), or None."""
    path = Path(run_dir) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_state(run_dir: Path, state: dict) -> None:
    with atomic_file(Path(run_dir) / STATE_FILE) as fh:
        json.dump(state, fh, indent=2)


class Tracker:
    """The external trackers one training run reports to; `log` never stops training (a failure is said once).

    Examples:
        tracker.log(10, {"loss": 2.1}); tracker.finish([run_dir / "loss.png"], {"eval_loss": 1.9})
    """

    def __init__(self, run_dir: Path, backends: list, state: dict):
        import atexit

        self.run_dir, self.backends, self.state = Path(run_dir), backends, state
        self.failed: set[str] = set()
        # a run that ends without `finish` (an error, Ctrl-C) is marked FAILED in the trackers, not left RUNNING
        atexit.register(lambda: self.backends and self.finish([], status="FAILED"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        numeric = _numeric(values)
        if not numeric:
            return
        self.state["last_step"] = max(int(step), int(self.state.get("last_step", 0)))
        for b in self.backends:
            self._safely(b, "log", step, numeric)

    def _safely(self, backend, method: str, *args) -> None:
        if backend.name in self.failed:
            return
        try:
            getattr(backend, method)(*args)
        except Exception as exc:  # a tracker that went away costs its own records, never the training run
            self.failed.add(backend.name)
            sys.stderr.write(f"Warning: {backend.name} stopped recording this run ({first_line(exc)})\n")

    def finish(self, files: list[Path], summary: dict | None = None, status: str = "FINISHED") -> None:
        """Add the run's files (loss.png, config, metrics.csv) as artifacts, its final values, and end the runs."""
        present = [Path(f) for f in files if Path(f).is_file()]
        for b in self.backends:
            self._safely(b, "finish", present, _numeric(summary or {}), status)
        for b in self.backends:
            self.state[b.name] = b.state
        _write_state(self.run_dir, self.state)
        self.backends = []


def start(
    run_dir: Path, config: dict, *, kind: str, name: str, parents: list[str], command: str, resume: bool
) -> Tracker | None:
    """Open (or, with `resume`, continue) the run in each tracker the config names; None when it names none.

    Examples:
        start(run.path, config, kind="pretrain", name="tiny", parents=["data-sp"], command="llmctl …", resume=False)
    """
    trackers = wanted(config)
    if not trackers:
        return None
    check_reporters(trackers)
    old = (read_state(run_dir) or {}) if resume else {}
    state = {"name": name, "kind": kind, "last_step": int(old.get("last_step", 0))}
    tags = {
        "llmctl.name": name,
        "llmctl.kind": kind,
        "llmctl.parents": ",".join(parents),
        "llmctl.command": command,
        "llmctl.run_dir": str(run_dir),
    }
    experiment, params, backends = config["tracking"]["experiment"], flat_params(config), []
    for tracker in trackers:
        backend = _backend(tracker, old.get(tracker), Path(run_dir))
        try:
            backend.open(experiment, name, params, tags, resume and tracker in old)
        except Exception as exc:
            for opened in backends:  # the trackers opened before this one: marked FAILED, not left RUNNING
                opened.finish([], {}, "FAILED")
            if isinstance(exc, LlmctlError):
                raise
            raise LlmctlError(
                f"--report-to {tracker}: could not open the run ({first_line(exc)})",
                hint="check MLFLOW_TRACKING_URI / WANDB_MODE, or drop it from --report-to",
            ) from exc
        state[tracker] = backend.state
        backends.append(backend)
    _write_state(run_dir, state)  # the ids, before the first step: a run killed now still resumes into them
    return Tracker(run_dir, backends, state)


# ---- metrics recorded in the registry (eval, quantize, prune, export) ------------------------------------------


def _producer(entry, new: bool) -> tuple[str, dict] | bool:
    """(name, tracking state) of the nearest run in the model's lineage that reported to a tracker; False when
    there is none, True when the entry is that run's own new model (the run logged these values itself)."""
    from llmctl.models.registry import Registry

    reg, queue, seen = None, [entry], set()
    while queue:
        current = queue.pop(0)
        if current.name in seen:
            continue
        seen.add(current.name)
        run_dir = (current.meta or {}).get("run_dir")
        state = read_state(Path(run_dir)) if run_dir else None
        if state is not None and state.get("name") == current.name:
            return True if new and current is entry else (current.name, state)
        reg = reg or Registry()
        queue.extend(p for p in (reg.find(n) for n in current.parents) if p is not None)
    return False


def registry_metrics(entry, metrics: dict, new: bool) -> None:
    """Metrics just recorded for `entry` (`new`: with the entry itself) → the run that produced it, else a run of
    its own when LLMCTL_REPORT_TO names trackers. Never raises: the registry already holds the values.

    Examples:
        registry_metrics(reg.get("smol-lora"), {"hellaswag.acc_norm": 0.41}, new=False)
    """
    numeric = _numeric(metrics)
    if not numeric:
        return
    try:
        found = _producer(entry, new)
        own = [t.strip() for t in os.environ.get("LLMCTL_REPORT_TO", "").split(",") if t.strip() in TRACKERS]
        if found is True or (found is False and not own):
            return
        command = shlex.join(["llmctl", *sys.argv[1:]])
        if found:
            _to_producer(entry, numeric, found, command)
        else:
            _own_run(entry, numeric, own, command)
    except Exception as exc:
        sys.stderr.write(f"Warning: metrics of {entry.name} not sent to the experiment tracker ({first_line(exc)})\n")


def _to_producer(entry, numeric: dict, found: tuple[str, dict], command: str) -> None:
    """Add the values to the producing run at its last step; a derived model's are prefixed with its name."""
    name, state = found
    prefix = "" if entry.name == name else f"{entry.name}/"
    values = {f"{prefix}{k}": v for k, v in numeric.items()}
    tags = {} if not prefix else {f"llmctl.derived.{entry.name}": command}
    for tracker in TRACKERS:
        if tracker not in state:
            continue
        check_reporters([tracker])
        backend = _backend(tracker, state[tracker], None)
        if tracker == "wandb":  # W&B adds to a run by opening it again with its id
            backend.open(state[tracker]["project"], name, {}, {}, True)
        backend.log(int(state.get("last_step", 0)), values)
        if tags:
            backend.tag(tags)
        if tracker == "wandb":
            backend.finish([], values, "FINISHED")


def _own_run(entry, numeric: dict, trackers: list[str], command: str) -> None:
    """A run for a model with no tracked lineage: its registry profile as params, the values at step 0."""
    check_reporters(trackers)
    kind = command.split()[1] if len(command.split()) > 1 else "llmctl"
    tags = {
        "llmctl.name": entry.name,
        "llmctl.kind": kind,
        "llmctl.parents": ",".join(entry.parents),
        "llmctl.command": command,
    }
    experiment = os.environ.get("LLMCTL_TRACKING_EXPERIMENT", "llmctl")
    for tracker in trackers:
        backend = _backend(tracker, None, None)
        backend.open(experiment, f"{entry.name} ({kind})", flat_params(entry.profile or {}), tags, False)
        backend.log(0, numeric)
        backend.finish([], numeric, "FINISHED")
