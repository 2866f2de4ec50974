"""Which eval tasks run where: lm-eval task names, llmctl's offline task configs, limits and few-shot checks.

Examples:
    plan = plan_tasks(["hellaswag", "perplexity"], config)
    plan.local, plan.passthrough, plan.perplexity
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError, UsageError, first_line

PERPLEXITY = "perplexity"
PASSKEY = "passkey"
REWARD_ACCURACY = "reward_accuracy"

PERPLEXITY_METRICS = {"token_perplexity": False, "bits_per_byte": False, "word_perplexity": False}
REWARD_METRICS = {"pair_accuracy": True, "mean_margin": True}
EXACT_MATCH, WIN_RATE, PREFERENCE_ACCURACY = "exact_match", "win_rate", "preference_accuracy"
# The alignment tasks (llmctl.evaluate.alignment): metric → higher is better, and what each reads from --data.
ALIGNMENT_METRICS = {
    EXACT_MATCH: {"exact_match": True},
    WIN_RATE: {
        "win_rate": True,
        "reward_diff": True,
        "reward": True,
        "reference_reward": True,
        "kl_per_token": False,
        "kl_per_answer": False,
    },
    PREFERENCE_ACCURACY: {"pair_accuracy": True, "mean_margin": True},
}
ALIGNMENT_DATA = {
    EXACT_MATCH: ("a records file", '--data FILE.jsonl ({"prompt": "…", "answer": "…"} per line)'),
    WIN_RATE: ("a prompts file", '--data PROMPTS.jsonl ({"prompt": "…"} per line, or preference pairs)'),
    PREFERENCE_ACCURACY: ("a preference file", "--data PAIRS.jsonl ({prompt, chosen, rejected} or HH-RLHF dialogues)"),
}
# tasks scored by llmctl itself on one file (`--data`)
FILE_TASKS = (PERPLEXITY, REWARD_ACCURACY, *ALIGNMENT_METRICS)


def parse_tasks(values: list[str] | str | None) -> list[str]:
    """`hellaswag,arc_easy` (repeatable) → ["hellaswag", "arc_easy"], order kept, duplicates dropped."""
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for value in values or []:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    if not names:
        raise UsageError("no tasks given", hint="pass --tasks hellaswag,arc_easy (see `llmctl eval --help`)")
    return names


def parse_limit(value: Any) -> int | float | None:
    """A count (integer >= 1) or a fraction in (0, 1); 0, negatives and text are usage errors."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"--limit must be a count or a fraction, got {value!r}", hint="e.g. --limit 200 or --limit 0.1"
        ) from None
    if not math.isfinite(number) or number <= 0:
        raise UsageError(f"--limit must be positive, got {value}", hint="e.g. --limit 200 or --limit 0.1")
    if number < 1:
        return number
    if not number.is_integer():
        raise UsageError(
            f"--limit {value} is neither a whole count nor a fraction below 1", hint="e.g. --limit 200 or --limit 0.1"
        )
    return int(number)


def parse_batch_size(value: Any) -> int | str:
    """An int >= 1 or 'auto' (lm-eval's auto batch size)."""
    text = str(value).strip().lower()
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        number = int(text)
    except ValueError:
        raise UsageError(f"--batch-size must be a positive integer or 'auto', got {value!r}") from None
    if number < 1:
        raise UsageError(f"--batch-size must be at least 1, got {number}")
    return number


def data_dir_of(config: dict) -> Path | None:
    """--data-dir, else $LLMCTL_DATA_DIR, else None (lm-eval's own datasets, network permitting)."""
    value = config.get("data_dir") or os.environ.get("LLMCTL_DATA_DIR")
    return Path(value).expanduser() if value else None


@dataclass
class Plan:
    """Which requested names go where: llmctl's offline configs, lm-eval's own tasks, perplexity."""

    local: list[str] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)
    perplexity_text: Path | None = None
    passkey: bool = False
    reward_data: Path | None = None
    alignment: dict[str, Path] = field(default_factory=dict)  # alignment task → its data file
    order: list[str] = field(default_factory=list)


_DEFAULT_TM = None


def lmeval_task_manager(include_path: str | None = None, include_defaults: bool = True):
    """An lm-eval TaskManager (the default index is built once per process: it scans ~10k YAMLs)."""
    global _DEFAULT_TM
    from lm_eval.tasks import TaskManager

    if include_path is None and include_defaults:
        if _DEFAULT_TM is None:
            _DEFAULT_TM = TaskManager()
        return _DEFAULT_TM
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


_NAMES: set[str] | None = None
_NAME_RE = re.compile(r"^(?:task|group|tag)\s*:\s*[\"']?([A-Za-z0-9_\-.]+)", re.M)


def lmeval_task_names() -> set[str]:
    """Task, group and tag names in lm-eval's shipped YAMLs, by a quick text scan (lm-eval's index: ~1 min on CPU)."""
    global _NAMES
    if _NAMES is None:
        import lm_eval

        names: set[str] = set()
        for dirpath, _, files in os.walk(Path(lm_eval.__file__).parent / "tasks"):
            for f in files:
                if "yaml" in f:
                    try:
                        with open(os.path.join(dirpath, f), encoding="utf-8", errors="ignore") as fh:
                            names.update(_NAME_RE.findall(fh.read()))
                    except OSError:
                        pass
        _NAMES = names
    return _NAMES


def _unknown_task(name: str) -> LlmctlError:
    from llmctl.evaluate.task_files import LOCAL_TASKS

    candidates = sorted(lmeval_task_names() | set(LOCAL_TASKS) | set(FILE_TASKS) | {PASSKEY})
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    msg = f"unknown task {name!r}"
    if close:
        msg += f" (close: {', '.join(close)})"
    return LlmctlError(
        msg,
        hint="offline tasks: "
        + ", ".join((*LOCAL_TASKS, *FILE_TASKS, PASSKEY))
        + "; any lm-eval task name works with LLMCTL_ALLOW_NETWORK=1",
    )


def plan_tasks(tasks: list[str], config: dict) -> Plan:
    """Decide where each task comes from; raise clear errors before any model is loaded."""
    from llmctl.evaluate.task_files import find_text_file, is_local_task
    from llmctl.models.resolve import network_allowed

    data_dir = data_dir_of(config)
    plan = Plan(order=list(tasks))
    for name in tasks:
        if name == PASSKEY:
            plan.passkey = True  # synthetic: no data needed
        elif name == REWARD_ACCURACY:
            plan.reward_data = _reward_data(config, tasks)
        elif name in ALIGNMENT_METRICS:
            plan.alignment[name] = _alignment_data(name, config, tasks)
        elif name == PERPLEXITY:
            text = task_file(config, PERPLEXITY, tasks)
            if text:
                plan.perplexity_text = Path(text).expanduser()
            elif data_dir is not None and find_text_file(data_dir) is not None:
                plan.perplexity_text = find_text_file(data_dir)
            else:
                where = f" (no wikitext/*test*.raw under {data_dir})" if data_dir else ""
                raise LlmctlError(
                    f"task 'perplexity' needs a text file{where}",
                    hint="pass --data FILE.txt, or --data-dir with wikitext/wiki.test.raw",
                )
            if not plan.perplexity_text.is_file():
                raise LlmctlError(f"text file {plan.perplexity_text} not found", hint="check the --data path")
        elif is_local_task(name):
            if data_dir is not None:
                plan.local.append(name)
            elif network_allowed():
                plan.passthrough.append(name)
            else:
                raise LlmctlError(
                    f"task {name!r} needs local data offline",
                    hint="pass --data-dir DIR (or set LLMCTL_DATA_DIR) with the layout in `llmctl eval --help`, "
                    "or set LLMCTL_ALLOW_NETWORK=1 to let lm-eval download it",
                )
        else:
            if network_allowed():
                if name not in lmeval_task_manager().all_tasks:
                    raise _unknown_task(name)
            elif name not in lmeval_task_names():
                raise _unknown_task(name)
            else:
                raise LlmctlError(
                    f"task {name!r} is an lm-eval task without an llmctl offline config; "
                    "its dataset would come from the hub",
                    hint="set LLMCTL_ALLOW_NETWORK=1 to let lm-eval download it, or use one of the offline tasks "
                    "(hellaswag, arc_easy, arc_challenge, piqa, winogrande, mmlu, wikitext, perplexity, passkey)",
                )
            plan.passthrough.append(name)
    return plan


def task_file(config: dict, task: str, tasks: list[str]) -> str | None:
    """The file a file-reading task scores: its own `<task>.data`, else the top-level `data` (`--data`), which
    is refused as ambiguous when both file-reading tasks run without their own keys."""
    own = (config.get(task) or {}).get("data")
    if own or not config.get("data"):
        return own
    others = [t for t in FILE_TASKS if t in tasks and t != task and not (config.get(t) or {}).get("data")]
    if others:
        raise UsageError(
            f"--data {config['data']} is ambiguous: {task} and {others[0]} both read a file",
            hint=f"name each: --set {task}.data=FILE --set {others[0]}.data=FILE",
        )
    return config["data"]


def _reward_data(config: dict, tasks: list[str]) -> Path:
    path = task_file(config, REWARD_ACCURACY, tasks)
    if not path:
        raise LlmctlError(
            "task 'reward_accuracy' needs a preference file",
            hint="pass --data PAIRS.jsonl ({prompt, chosen, rejected}, chat pairs or HH-RLHF dialogues)",
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlmctlError(f"preference file {path} not found", hint="check the --data path")
    return path


def _alignment_data(task: str, config: dict, tasks: list[str]) -> Path:
    what, hint = ALIGNMENT_DATA[task]
    path = task_file(config, task, tasks)
    if not path:
        raise LlmctlError(f"task {task!r} needs {what}", hint=f"pass {hint}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlmctlError(f"{what.split(' ', 1)[1]} {path} not found", hint="check the --data path")
    return path


def _quiet_lmeval() -> None:
    """lm-eval logs every overridden setting at WARNING; keep stderr for what matters."""
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_tasks(plan: Plan, config: dict, workdir: Path):
    """Write the offline configs and load every lm-eval task (data errors surface here, before the model)."""
    from llmctl.evaluate.task_files import write_task_dir

    names = plan.local + plan.passthrough
    if not names:
        return None, [], []
    notes: list[str] = []
    include = None
    if plan.local:
        setup = write_task_dir(plan.local, data_dir_of(config), workdir)
        include = str(setup.include_path)
        notes += setup.notes
    tm = lmeval_task_manager(include, include_defaults=bool(plan.passthrough)) if include else lmeval_task_manager()
    objects = []
    for name in names:
        try:
            loaded = tm.load([name])
        except LlmctlError:
            raise
        except Exception as exc:
            raise LlmctlError(
                f"cannot load task {name!r} ({first_line(exc)})",
                hint="check the task's data files (see `llmctl eval --help` for the layout)",
            ) from exc
        if name in loaded["groups"]:
            objects.append(loaded["groups"][name])
        elif name in loaded["tasks"]:
            objects.append(loaded["tasks"][name])
        else:  # a tag: its tasks
            objects.extend(loaded["tasks"].values())
        _check_fewshot(name, loaded["tasks"], config.get("num_fewshot"))
        if config.get("num_fewshot") and name in plan.local:
            for task_name, task in loaded["tasks"].items():
                c = task.config
                no_pool = c.fewshot_split is None and c.training_split is None
                if no_pool and getattr(task.fewshot_cfg, "samples", None) is None:
                    split = (
                        c.validation_split
                        if c.validation_split and c.test_split
                        else (c.test_split or c.validation_split)
                    )
                    notes.append(
                        f"{task_name}: no train file in the data dir, so few-shot examples come from its "
                        f"{split} split (lm-eval's rule)"
                    )
    return tm, objects, notes


def _check_fewshot(name: str, tasks: dict, num_fewshot: int | None) -> None:
    if not num_fewshot:
        return
    for task_name, task in tasks.items():
        sampler = getattr(task, "sampler", None)
        pool = len(getattr(sampler, "df", None) or []) if sampler is not None else 0
        same_split = task.config.fewshot_split is None or task.config.fewshot_split == (
            task.config.test_split or task.config.validation_split
        )
        need = num_fewshot + (1 if same_split and task.config.training_split is None else 0)
        if pool < need:
            raise LlmctlError(
                f"--num-fewshot {num_fewshot} is larger than the few-shot pool of {task_name} ({pool} examples"
                f"{', one of them the item itself' if need > num_fewshot else ''})",
                hint=f"use --num-fewshot {max(0, pool - (need - num_fewshot))} or less, "
                "or add a train/dev file to the data dir",
            )


def perplexity_metrics(config: dict) -> dict[str, bool]:
    """The perplexity task's metrics → higher is better (never): one per length bucket when asked."""
    out = dict(PERPLEXITY_METRICS)
    edges = [0, *(config["perplexity"].get("length_buckets") or [])]
    out.update({f"token_perplexity@{a}-{b}": False for a, b in zip(edges, edges[1:])})
    return out


def known_metrics(objects: list, plan: Plan, config: dict | None = None) -> dict[str, set[str]]:
    """task/group name → metric names it reports (for validating gates before the run)."""
    out: dict[str, set[str]] = {}
    for obj in objects:
        if hasattr(obj, "get_all_tasks"):  # a group
            names = set()
            for m in getattr(obj, "aggregate_metric_list", None) or []:
                names.add(m["metric"] if isinstance(m, dict) else getattr(m, "metric", str(m)))
            out[obj.name] = names
            for task in obj.get_all_tasks():
                out[task.task_name] = set(task.aggregation().keys())
            for sub in obj.get_all_groups():
                out[sub.name] = {
                    m["metric"] if isinstance(m, dict) else getattr(m, "metric", str(m))
                    for m in (getattr(sub, "aggregate_metric_list", None) or [])
                }
        else:
            out[obj.task_name] = set(obj.aggregation().keys())
    if plan.perplexity_text is not None:
        out[PERPLEXITY] = set(perplexity_metrics(config) if config else PERPLEXITY_METRICS)
    if plan.passkey and config:
        from llmctl.evaluate.passkey import metric_names

        out[PASSKEY] = metric_names(config["passkey"])
    if plan.reward_data is not None:
        out[REWARD_ACCURACY] = set(REWARD_METRICS)
    for name in plan.alignment:
        out[name] = set(ALIGNMENT_METRICS[name])
    return out
