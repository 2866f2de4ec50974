"""`eval`: lm-eval harness tasks and perplexity on any registry model, offline, with CI gates.

Glue, not a reimplementation: the already-loaded model (HF, adapter, quantized, pruned — whatever
`load_model` returns) is wrapped in lm-eval's `HFLM` and scored by `lm_eval.simple_evaluate`;
offline task configs come from `llmctl.eval_tasks`; the `perplexity` task is `llmctl.perplexity`.

Examples:
    result = run_eval("smollm2-135m-instruct", ["hellaswag"], resolve_config("eval", explicit={
        "data_dir": "../shared/data", "limit": 200}))
    result.metrics["hellaswag.acc_norm"]
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llmctl.errors import LlmctlError, UsageError

PERPLEXITY = "perplexity"
PERPLEXITY_METRICS = {"token_perplexity": False, "bits_per_byte": False, "word_perplexity": False}


@dataclass
class Gate:
    """One `--fail-under task.metric=value` gate."""

    task: str
    metric: str
    threshold: float

    @property
    def key(self) -> str:
        return f"{self.task}.{self.metric}"


@dataclass
class EvalResult:
    """lm-eval's results dict (plus llmctl's block), flat metrics and the gates that failed."""

    model: str
    results: dict
    metrics: dict[str, float]
    failed_gates: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---- parsing -------------------------------------------------------------------------------------

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
        raise UsageError(f"--limit must be a count or a fraction, got {value!r}", hint="e.g. --limit 200 or --limit 0.1")
    if not math.isfinite(number) or number <= 0:
        raise UsageError(f"--limit must be positive, got {value}", hint="e.g. --limit 200 or --limit 0.1")
    if number < 1:
        return number
    if not number.is_integer():
        raise UsageError(f"--limit {value} is neither a whole count nor a fraction below 1",
                         hint="e.g. --limit 200 or --limit 0.1")
    return int(number)


def parse_batch_size(value: Any) -> int | str:
    """An int >= 1 or 'auto' (lm-eval's auto batch size)."""
    text = str(value).strip().lower()
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        number = int(text)
    except ValueError:
        raise UsageError(f"--batch-size must be a positive integer or 'auto', got {value!r}")
    if number < 1:
        raise UsageError(f"--batch-size must be at least 1, got {number}")
    return number


_GATE_RE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\.([A-Za-z0-9_\-,@]+)\s*=\s*(\S+)\s*$")


def parse_gates(values: list[str] | None, tasks: list[str]) -> list[Gate]:
    """`hellaswag.acc_norm=0.35` → Gate; malformed text or a task not being run is a usage error."""
    gates = []
    for value in values or []:
        match = _GATE_RE.match(value)
        if not match:
            raise UsageError(f"--fail-under expects task.metric=value, got {value!r}",
                             hint="e.g. --fail-under hellaswag.acc_norm=0.35")
        task, metric, raw = match.groups()
        try:
            threshold = float(raw)
        except ValueError:
            raise UsageError(f"--fail-under {value!r}: {raw!r} is not a number",
                             hint="e.g. --fail-under hellaswag.acc_norm=0.35")
        if not math.isfinite(threshold):
            raise UsageError(f"--fail-under {value!r}: the threshold must be a finite number")
        if task not in tasks:
            raise UsageError(f"--fail-under {value!r} names task {task!r}, which is not in --tasks ({', '.join(tasks)})",
                             hint="gate only tasks you run")
        gates.append(Gate(task, metric, threshold))
    return gates


def data_dir_of(config: dict) -> Path | None:
    """--data-dir, else $LLMCTL_DATA_DIR, else None (lm-eval's own datasets, network permitting)."""
    value = config.get("data_dir") or os.environ.get("LLMCTL_DATA_DIR")
    return Path(value).expanduser() if value else None


# ---- task planning -----------------------------------------------------------------------------

@dataclass
class Plan:
    """Which requested names go where: llmctl's offline configs, lm-eval's own tasks, perplexity."""

    local: list[str] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)
    perplexity_text: Path | None = None
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
    """Task, group and tag names in lm-eval's shipped YAMLs, by a quick text scan (the full index takes ~1 min on CPU)."""
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
    from llmctl.eval_tasks import LOCAL_TASKS

    candidates = sorted(lmeval_task_names() | set(LOCAL_TASKS) | {PERPLEXITY})
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    msg = f"unknown task {name!r}"
    if close:
        msg += f" (close: {', '.join(close)})"
    return LlmctlError(msg, hint="offline tasks: " + ", ".join((*LOCAL_TASKS, PERPLEXITY))
                       + "; any lm-eval task name works with LLMCTL_ALLOW_NETWORK=1")


def plan_tasks(tasks: list[str], config: dict) -> Plan:
    """Decide where each task comes from; raise clear errors before any model is loaded."""
    from llmctl.eval_tasks import find_text_file, is_local_task
    from llmctl.resolve import network_allowed

    data_dir = data_dir_of(config)
    plan = Plan(order=list(tasks))
    for name in tasks:
        if name == PERPLEXITY:
            text = config["perplexity"].get("data")
            if text:
                plan.perplexity_text = Path(text).expanduser()
            elif data_dir is not None and find_text_file(data_dir) is not None:
                plan.perplexity_text = find_text_file(data_dir)
            else:
                where = f" (no wikitext/*test*.raw under {data_dir})" if data_dir else ""
                raise LlmctlError(f"task 'perplexity' needs a text file{where}",
                                  hint="pass --data FILE.txt, or --data-dir with wikitext/wiki.test.raw")
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
                         "or set LLMCTL_ALLOW_NETWORK=1 to let lm-eval download it")
        else:
            if network_allowed():
                if name not in lmeval_task_manager().all_tasks:
                    raise _unknown_task(name)
            elif name not in lmeval_task_names():
                raise _unknown_task(name)
            else:
                raise LlmctlError(
                    f"task {name!r} is an lm-eval task without an llmctl offline config; its dataset would come from the hub",
                    hint="set LLMCTL_ALLOW_NETWORK=1 to let lm-eval download it, or use one of the offline tasks "
                         "(hellaswag, arc_easy, arc_challenge, piqa, winogrande, mmlu, wikitext, perplexity)")
            plan.passthrough.append(name)
    return plan


# ---- running -------------------------------------------------------------------------------------

def _quiet_lmeval() -> None:
    """lm-eval logs every overridden setting at WARNING; keep stderr for what matters."""
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_tasks(plan: Plan, config: dict, workdir: Path):
    """Write the offline configs and load every lm-eval task (data errors surface here, before the model)."""
    from llmctl.eval_tasks import write_task_dir

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
            raise LlmctlError(f"cannot load task {name!r} ({_first_line(exc)})",
                              hint="check the task's data files (see `llmctl eval --help` for the layout)") from exc
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
                    split = c.validation_split if c.validation_split and c.test_split else (c.test_split or c.validation_split)
                    notes.append(f"{task_name}: no train file in the data dir, so few-shot examples come from its "
                                 f"{split} split (lm-eval's rule)")
    return tm, objects, notes


def _first_line(exc: BaseException) -> str:
    """The innermost cause's first line (datasets wraps the useful message in generic ones)."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _check_fewshot(name: str, tasks: dict, num_fewshot: int | None) -> None:
    if not num_fewshot:
        return
    for task_name, task in tasks.items():
        sampler = getattr(task, "sampler", None)
        pool = len(getattr(sampler, "df", None) or []) if sampler is not None else 0
        same_split = task.config.fewshot_split is None or task.config.fewshot_split == (
            task.config.test_split or task.config.validation_split)
        need = num_fewshot + (1 if same_split and task.config.training_split is None else 0)
        if pool < need:
            raise LlmctlError(
                f"--num-fewshot {num_fewshot} is larger than the few-shot pool of {task_name} ({pool} examples"
                f"{', one of them the item itself' if need > num_fewshot else ''})",
                hint=f"use --num-fewshot {max(0, pool - (need - num_fewshot))} or less, or add a train/dev file to the data dir")


def known_metrics(objects: list, plan: Plan) -> dict[str, set[str]]:
    """task/group name → metric names it reports (for validating gates before the run)."""
    out: dict[str, set[str]] = {}
    for obj in objects:
        if hasattr(obj, "get_all_tasks"):  # a group
            names = set()
            for m in (getattr(obj, "aggregate_metric_list", None) or []):
                names.add(m["metric"] if isinstance(m, dict) else getattr(m, "metric", str(m)))
            out[obj.name] = names
            for task in obj.get_all_tasks():
                out[task.task_name] = set(task.aggregation().keys())
            for sub in obj.get_all_groups():
                out[sub.name] = {m["metric"] if isinstance(m, dict) else getattr(m, "metric", str(m))
                                 for m in (getattr(sub, "aggregate_metric_list", None) or [])}
        else:
            out[obj.task_name] = set(obj.aggregation().keys())
    if plan.perplexity_text is not None:
        out[PERPLEXITY] = set(PERPLEXITY_METRICS)
    return out


def check_gates(gates: list[Gate], metrics: dict[str, set[str]]) -> None:
    for gate in gates:
        have = metrics.get(gate.task)
        if have is not None and gate.metric not in have:
            raise UsageError(f"--fail-under {gate.key}: task {gate.task!r} has no metric {gate.metric!r}",
                             hint=f"its metrics: {', '.join(sorted(have))}")


def make_lm(loaded, batch_size: int | str, max_batch_size: int = 64):
    """Wrap an already-loaded model (HF, PEFT, quantized …) for lm-eval."""
    from lm_eval.models.huggingface import HFLM

    from llmctl.loading import ensure_pad_token

    ensure_pad_token(loaded.tokenizer)
    return HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                max_batch_size=max_batch_size, device=str(loaded.device))


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


def run_perplexity(loaded, text_path: Path, pconfig: dict, progress: Callable | None = None) -> dict:
    """The `perplexity` task: llmctl.perplexity over a text file, in lm-eval's result layout."""
    from llmctl.perplexity import perplexity, read_text

    text = read_text(text_path)
    started = time.perf_counter()
    res = perplexity(loaded.model, loaded.tokenizer, text, seqlen=pconfig["seqlen"], stride=pconfig["stride"],
                     batch_size=pconfig["batch_size"], max_tokens=pconfig.get("max_tokens"), progress=progress)
    return {
        "block": {"alias": PERPLEXITY, "token_perplexity,none": res["perplexity"],
                  "bits_per_byte,none": res["bits_per_byte"], "word_perplexity,none": res["word_perplexity"]},
        "config": {"task": PERPLEXITY, "data": str(text_path), **{k: res[k] for k in
                   ("seqlen", "stride", "tokens", "scored_tokens", "bytes", "words")},
                   "max_tokens": pconfig.get("max_tokens"), "seconds": round(time.perf_counter() - started, 3)},
    }


def run_eval(model: str, tasks: list[str], config: dict, *, adapter: str | None = None,
             gates: list[Gate] | None = None, command: str = "", loaded=None, attach: bool = True,
             progress: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate one model on tasks with the resolved `eval` config.

    Examples:
        run_eval("tiny", ["hellaswag"], resolve_config("eval", explicit={"data_dir": "data", "limit": 10}))
    """
    from llmctl import __version__
    from llmctl.loading import load_model

    gates = gates or []
    limit = parse_limit(config.get("limit"))
    batch_size = parse_batch_size(config["batch_size"])
    if config.get("num_fewshot") is not None and config["num_fewshot"] < 0:
        raise UsageError(f"--num-fewshot must be 0 or more, got {config['num_fewshot']}")
    say = progress or (lambda msg: None)
    _quiet_lmeval()
    import datasets

    datasets.disable_progress_bars()  # lm-eval's own progress bars stay
    plan = plan_tasks(tasks, config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmctl-eval-") as tmp:
        say("Preparing tasks …")
        tm, objects, notes = load_tasks(plan, config, Path(tmp))
        check_gates(gates, known_metrics(objects, plan))
        say(f"Loading {model} …")
        loaded = loaded or load_model(model, dtype=config["dtype"], device=config["device"], adapter=adapter)
        results: dict = {"results": {}, "groups": {}, "configs": {}, "versions": {}, "n-shot": {},
                         "higher_is_better": {}, "n-samples": {}}
        if objects:
            from lm_eval import simple_evaluate

            say("Scoring " + ", ".join(plan.local + plan.passthrough) + " with lm-eval …")
            lm = make_lm(loaded, batch_size)
            seed = config.get("seed")
            seeds = {} if seed is None else {"random_seed": seed, "numpy_random_seed": seed,
                                             "torch_random_seed": seed, "fewshot_random_seed": seed}
            out = simple_evaluate(
                model=lm, tasks=objects, task_manager=tm, num_fewshot=config.get("num_fewshot"),
                limit=limit, bootstrap_iters=config["bootstrap_iters"], log_samples=config["log_samples"],
                apply_chat_template=config["apply_chat_template"], system_instruction=config.get("system_instruction"),
                **seeds)
            results.update(out)
        if plan.perplexity_text is not None:
            say(f"Perplexity over {plan.perplexity_text} …")
            ppl = run_perplexity(loaded, plan.perplexity_text, config["perplexity"])
            results.setdefault("results", {})[PERPLEXITY] = ppl["block"]
            results.setdefault("configs", {})[PERPLEXITY] = ppl["config"]
            results.setdefault("higher_is_better", {})[PERPLEXITY] = dict(PERPLEXITY_METRICS)
            results.setdefault("versions", {})[PERPLEXITY] = 1.0
    seconds = time.perf_counter() - started
    metrics = flatten(results, plan.order)
    resolved = loaded.resolved
    entry = resolved.entry
    results["llmctl"] = {
        "version": __version__, "model": resolved.label, "registry_name": resolved.name,
        "format": resolved.format, "path": resolved.path, "parents": list(resolved.parents),
        "lineage": lineage(resolved.name) if resolved.name else [],
        "adapter": adapter, "command": command, "config": config, "tasks": plan.order,
        "data_dir": str(data_dir_of(config)) if data_dir_of(config) else None, "seconds": round(seconds, 3),
        "metrics": metrics,
    }
    if attach and entry is not None and not adapter:
        attach_results(resolved.name, metrics, config, plan.order)
    failed = evaluate_gates(gates, metrics, higher_is_better(results))
    return EvalResult(model=resolved.label, results=results, metrics=metrics, failed_gates=failed,
                      seconds=seconds, notes=notes)


def lineage(name: str) -> list[dict]:
    """The model's ancestry: [{name, format, command}, …] from itself up through its parents."""
    from llmctl.registry import Registry

    reg = Registry()
    out, queue, seen = [], [name], set()
    while queue:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        entry = reg.find(current)
        if entry is None:
            out.append({"name": current, "format": None, "command": None})
            continue
        out.append({"name": entry.name, "format": entry.format, "command": entry.command, "parents": entry.parents})
        queue.extend(entry.parents)
    return out


def attach_results(name: str, metrics: dict[str, float], config: dict, tasks: list[str]) -> None:
    """Store metrics on the registry entry (and, in meta.eval, the settings they were measured with)."""
    from llmctl.registry import Registry

    reg = Registry()
    reg.update_metrics(name, metrics)
    entry = reg.get(name)
    evals = dict(entry.meta.get("eval") or {})
    settings = {"limit": config.get("limit"), "num_fewshot": config.get("num_fewshot"),
                "data_dir": str(data_dir_of(config)) if data_dir_of(config) else None,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for task in tasks:
        evals[task] = settings if task != PERPLEXITY else {**settings, **{k: config["perplexity"].get(k) for k in ("data", "seqlen", "stride", "max_tokens")}}
    reg.update_meta(name, {"eval": evals})


def write_results(result: EvalResult, output: Path) -> list[Path]:
    """Write lm-eval's JSON layout (+ llmctl block) to output; samples (if logged) beside it as JSONL."""
    from lm_eval.utils import handle_non_serializable

    from llmctl.paths import atomic_file

    samples = result.results.get("samples")
    body = {k: v for k, v in result.results.items() if k != "samples"}
    written = []
    with atomic_file(output) as fh:
        fh.write(json.dumps(body, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    written.append(output)
    for task, rows in (samples or {}).items():
        path = output.with_name(f"{output.stem}.samples_{task}.jsonl")
        with atomic_file(path) as fh:
            for row in rows:
                fh.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
        written.append(path)
    return written


# ---- compare -------------------------------------------------------------------------------------

def compare(models: list[str], tasks: list[str], config: dict, *, from_registry: bool = False,
            command: str = "", progress: Callable[[str], None] | None = None) -> dict:
    """Evaluate several models on the same tasks (or read their stored metrics) → {columns, rows}.

    Examples:
        compare(["base", "base-gptq"], ["hellaswag"], config)["rows"][0]["metrics"]
    """
    from llmctl.registry import Registry

    if len(models) < 1:
        raise UsageError("eval compare needs at least one model", hint="e.g. llmctl eval compare M1 M2 --tasks hellaswag")
    rows = []
    for model in models:
        if from_registry:
            entry = Registry().get(model)
            metrics = {k: v for k, v in entry.metrics.items() if k.split(".", 1)[0] in tasks}
            missing = [t for t in tasks if not any(k.startswith(t + ".") for k in metrics)]
            if missing:
                raise LlmctlError(f"model {model!r} has no stored results for {', '.join(missing)}",
                                  hint=f"run `llmctl eval --model {model} --tasks {','.join(missing)}` first, or drop --from-registry")
        else:
            if progress:
                progress(f"[{len(rows) + 1}/{len(models)}] {model}")
            metrics = run_eval(model, tasks, config, command=command, progress=progress).metrics
        rows.append({"model": model, "metrics": metrics})
    columns = []
    for row in rows:
        for key in row["metrics"]:
            if key not in columns:
                columns.append(key)
    columns.sort(key=lambda k: (tasks.index(k.split(".", 1)[0]) if k.split(".", 1)[0] in tasks else 99, k))
    return {"tasks": tasks, "columns": columns, "rows": rows}


def plot_compare(table: dict, path: Path) -> Path:
    """A PNG bar chart: one panel per metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmctl.paths import atomic_file

    columns = table["columns"]
    if not columns:
        raise LlmctlError("nothing to plot: the models have no metrics for these tasks")
    models = [r["model"] for r in table["rows"]]
    n = len(columns)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, col in enumerate(columns):
        ax = axes[i // ncols][i % ncols]
        values = [r["metrics"].get(col, float("nan")) for r in table["rows"]]
        bars = ax.bar(range(len(models)), values, color=[colors[j % len(colors)] for j in range(len(models))])
        ax.set_title(col, fontsize=10)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        for bar, v in zip(bars, values):
            if v == v:
                ax.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.tight_layout()
    with atomic_file(path, mode="wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path

