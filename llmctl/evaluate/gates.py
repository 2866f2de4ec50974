"""Quality gates (`--fail-under task.metric=value`) and flattening lm-eval results into `task.metric` keys.

Examples:
    gates = parse_gates(["hellaswag.acc_norm=0.35"], ["hellaswag"])
    failed = evaluate_gates(gates, {"hellaswag.acc_norm": 0.31}, {"hellaswag.acc_norm": True})
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from llmctl.errors import UsageError


@dataclass
class Gate:
    """One `--fail-under task.metric=value` gate."""

    task: str
    metric: str
    threshold: float

    @property
    def key(self) -> str:
        return f"{self.task}.{self.metric}"


_GATE_RE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\.([A-Za-z0-9_\-,@]+)\s*=\s*(\S+)\s*$")


def parse_gates(values: list[str] | None, tasks: list[str]) -> list[Gate]:
    """`hellaswag.acc_norm=0.35` → Gate; malformed text or a task not being run is a usage error."""
    gates = []
    for value in values or []:
        match = _GATE_RE.match(value)
        if not match:
            raise UsageError(
                f"--fail-under expects task.metric=value, got {value!r}",
                hint="e.g. --fail-under hellaswag.acc_norm=0.35",
            )
        task, metric, raw = match.groups()
        try:
            threshold = float(raw)
        except ValueError:
            raise UsageError(
                f"--fail-under {value!r}: {raw!r} is not a number", hint="e.g. --fail-under hellaswag.acc_norm=0.35"
            ) from None
        if not math.isfinite(threshold):
            raise UsageError(f"--fail-under {value!r}: the threshold must be a finite number")
        if task not in tasks:
            raise UsageError(
                f"--fail-under {value!r} names task {task!r}, which is not in --tasks ({', '.join(tasks)})",
                hint="gate only tasks you run",
            )
        gates.append(Gate(task, metric, threshold))
    return gates


def check_gates(gates: list[Gate], metrics: dict[str, set[str]]) -> None:
    for gate in gates:
        have = metrics.get(gate.task)
        if have is not None and gate.metric not in have:
            raise UsageError(
                f"--fail-under {gate.key}: task {gate.task!r} has no metric {gate.metric!r}",
                hint=f"its metrics: {', '.join(sorted(have))}",
            )


def flatten(results: dict, names: list[str]) -> dict[str, float]:
    """lm-eval's {"task": {"acc,none": v}} → {"task.acc": v} for the requested names (no stderrs)."""
    flat: dict[str, float] = {}
    table = results.get("results", {})
    groups = results.get("groups", {})
    for name in names:
        block = groups.get(name) or table.get(name)
        if block is None:
            continue
        for key, value in block.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            flat[f"{name}.{metric}" if filt == "none" else f"{name}.{metric}.{filt}"] = float(value)
    return flat


def higher_is_better(results: dict) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for task, metrics in (results.get("higher_is_better") or {}).items():
        for metric, better in metrics.items():
            if better is not None:
                out[f"{task}.{metric}"] = bool(better)
    return out


def evaluate_gates(gates: list[Gate], metrics: dict[str, float], better: dict[str, bool]) -> list[str]:
    """Messages of the gates that failed (lower-is-better metrics fail when above the value)."""
    failed = []
    for gate in gates:
        value = metrics.get(gate.key)
        if value is None:
            failed.append(f"{gate.key}: no such result (metrics: {', '.join(sorted(metrics))})")
            continue
        if better.get(gate.key, True):
            if value < gate.threshold:
                failed.append(f"{gate.key} {value:.4f} < {gate.threshold:g}")
        elif value > gate.threshold:
            failed.append(f"{gate.key} {value:.4f} > {gate.threshold:g} (lower is better)")
    return failed
