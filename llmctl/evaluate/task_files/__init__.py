"""llmctl's offline lm-eval task configs and the code that points them at a user's local data.

The YAML files here are lm-eval task configs that reproduce the standard `hellaswag`, `arc_easy`,
`arc_challenge`, `piqa`, `winogrande`, `mmlu` and `wikitext` tasks (prompts, choices, targets,
metrics). They hold no dataset location: `write_task_dir` finds the user's files under a data dir
and writes, into a scratch folder, one small YAML per task that includes the shipped file and adds
`dataset_path` (json/parquet/csv) and `dataset_kwargs.data_files`. That folder is passed to
lm-eval's `TaskManager(include_path=...)`.

Data dir layout: one folder per task family (`hellaswag/`, `arc/`, `piqa/`, `winogrande/`, `mmlu/`,
`wikitext/`), files in any of jsonl/json/parquet/csv (wikitext also raw text); the split comes from
the file name (val/valid/validation/dev, test, train), ARC's subset from Easy/Challenge in the name.

Examples:
    setup = write_task_dir(["hellaswag", "arc_challenge"], Path("../shared/data"), Path(tmp))
    TaskManager(include_path=str(setup.include_path), include_defaults=False)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmctl.errors import LlmctlError
from llmctl.evaluate.task_files.files import (  # noqa: F401 - split_of is part of this package's interface
    DATA_EXTS,
    TEXT_EXTS,
    _eval_file,
    _first_record,
    _pick_format,
    _words,
    family_dirs,
    scan,
    split_of,
)

HERE = Path(__file__).resolve().parent

# task name → family folder
TASK_FAMILY = {
    "hellaswag": "hellaswag",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "piqa": "piqa",
    "winogrande": "winogrande",
    "mmlu": "mmlu",
    "wikitext": "wikitext",
}
LOCAL_TASKS = tuple(TASK_FAMILY)

# the split each standard task scores (the one that must be present)
EVAL_SPLIT = {
    "hellaswag": "validation",
    "arc": "test",
    "piqa": "validation",
    "winogrande": "validation",
    "mmlu": "test",
    "wikitext": "test",
}

LAYOUT_HELP = """\
Local data (--data-dir DIR or LLMCTL_DATA_DIR): one folder per task family,
  DIR/hellaswag/   HellaSwag original jsonl or HF layout (ctx_a, ctx_b, activity_label, endings, label)
  DIR/arc/         AI2 ARC jsonl (question.stem, question.choices, answerKey) or HF layout; Easy/Challenge in the name
  DIR/piqa/        HF layout (goal, sol1, sol2, label) or original valid.jsonl + valid-labels.lst
  DIR/winogrande/  HF or original layout (sentence, option1, option2, answer)
  DIR/mmlu/        HF layout (question, subject, choices, answer) or original <subject>_test.csv / _dev.csv
  DIR/wikitext*/   raw text (wiki.test.raw) or HF parquet/jsonl (page or text column)
Files may be jsonl, json, parquet or csv; the split comes from the file name
(val/valid/validation/dev = validation, test, train; MMLU's dev is its few-shot split)."""


def expected_files(task: str) -> str:
    """A human description of the files a task needs, for error messages."""
    family = TASK_FAMILY[task]
    split = EVAL_SPLIT[family]
    word = {"validation": "val/valid/validation/dev", "test": "test"}[split]
    if family == "arc":
        subset = "Easy" if task == "arc_easy" else "Challenge"
        return f"arc/*{subset}*{word}*.jsonl|json|parquet|csv (e.g. arc/ARC-{subset}-Test.jsonl)"
    if family == "wikitext":
        return "wikitext/*test*.raw|txt|jsonl|parquet (e.g. wikitext/wiki.test.raw)"
    if family == "mmlu":
        return "mmlu/*test*.parquet|jsonl|csv (HF layout with a subject column) or mmlu/<subject>_test.csv"
    return f"{family}/*{word.split('/')[0]}*.jsonl|json|parquet|csv"


@dataclass
class TaskSetup:
    """What `write_task_dir` produced: the include path and, per task, the files it reads."""

    include_path: Path
    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _missing(task: str, data_dir: Path) -> LlmctlError:
    folders = family_dirs(data_dir, TASK_FAMILY[task])
    where = ", ".join(str(f) for f in folders) if folders else f"{data_dir} (no {TASK_FAMILY[task]}/ folder)"
    return LlmctlError(
        f"no data for task {task!r}: expected {expected_files(task)} under {data_dir}; searched {where}",
        hint="put the files there (see `llmctl eval --help` for the layout) or pass another --data-dir",
    )


def _task_yaml(
    template: str,
    fmt: str,
    data_files: dict[str, list[str]],
    splits: dict[str, str | None],
    extra: dict | None = None,
    functions: dict[str, str] | None = None,
    dataset_kwargs: dict | None = None,
) -> str:
    cfg = {
        "include": str(HERE / template),
        "dataset_path": fmt,
        "dataset_kwargs": {"data_files": data_files, **(dataset_kwargs or {})},
    }
    cfg.update(splits)
    cfg.update(extra or {})
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=10_000)
    for key, fn in (functions or {}).items():
        text += f"{key}: !function {fn}\n"
    return text


def _split_files(task: str, data_dir: Path, subset: str | None = None) -> dict[str, list[Path]]:
    family = TASK_FAMILY[task]
    splits: dict[str, list[Path]] = {}
    for path, root in scan(data_dir, family):
        if path.suffix.lower() not in DATA_EXTS:
            continue
        if subset:
            words = _words(path, root.parent)
            other = "easy" if subset == "challenge" else "challenge"
            if subset not in words or other in words:
                continue
        split = split_of(path, root, family)
        if split:
            splits.setdefault(split, []).append(path)
    return splits


def _simple_task(
    task: str, template: str, data_dir: Path, out: Path, setup: TaskSetup, subset: str | None = None
) -> None:
    family = TASK_FAMILY[task]
    splits = _split_files(task, data_dir, subset)
    eval_split = EVAL_SPLIT[family]
    if eval_split not in splits:
        raise _missing(task, data_dir)
    if family == "piqa":
        splits = _piqa_merge_labels(splits, out)
    if family == "winogrande" and len(splits.get("train", [])) > 1:
        # the original release has train_xs … train_xl; lm-eval's winogrande uses winogrande_xl
        xl = [p for p in splits["train"] if "xl" in re.split(r"[^a-z0-9]+", p.stem.lower())]
        splits["train"] = xl or splits["train"][:1]
    # one dataset builder per task: every split in the eval split's format
    fmt, _ = _pick_format(splits[eval_split])
    data_files = {}
    for split in ("train", "validation", "test"):
        files = [str(p) for p in splits.get(split, []) if DATA_EXTS[p.suffix.lower()] == fmt]
        if files:
            data_files[split] = files
    split_keys = {
        "training_split": "train" if "train" in data_files else None,
        "validation_split": "validation" if "validation" in data_files else None,
        "test_split": "test" if "test" in data_files else None,
    }
    _check_files(data_files, fmt)
    (out / f"{task}.yaml").write_text(_task_yaml(template, fmt, data_files, split_keys), encoding="utf-8")
    setup.files[task] = data_files


def _check_files(data_files: dict[str, list[str]], fmt: str) -> None:
    """Read every JSON/JSONL record once, so a bad line is reported by llmctl (file, line, fix), not by datasets."""
    if fmt not in ("json", "jsonl"):
        return
    for files in data_files.values():
        for f in files:
            for _ in _eval_file(Path(f)).check().records():
                pass


def _piqa_merge_labels(splits: dict[str, list[Path]], out: Path) -> dict[str, list[Path]]:
    """Original PIQA keeps labels in `<split>-labels.lst` beside `<split>.jsonl`: merge them into one jsonl."""
    merged: dict[str, list[Path]] = {}
    for split, files in splits.items():
        new = []
        for f in files:
            labels = f.with_name(f.stem + "-labels.lst")
            if f.suffix.lower() == ".jsonl" and labels.is_file():
                from llmctl.data.records import read_text

                rows = [r.value for r in _eval_file(f, "jsonl").check().records()]
                try:
                    marks = [int(x) for x in read_text(labels, what="labels file").split()]
                except ValueError as exc:
                    raise LlmctlError(
                        f"labels file {labels} holds something other than integer labels",
                        hint="give one 0/1 label per line, as in the original PIQA release",
                    ) from exc
                if len(marks) != len(rows):
                    raise LlmctlError(
                        f"{labels} has {len(marks)} labels for {len(rows)} rows in {f}",
                        hint="use the labels file that belongs to this split",
                    )
                target = out / f"piqa-{split}-{f.stem}.jsonl"
                target.write_text(
                    "".join(json.dumps({**r, "label": m}) + "\n" for r, m in zip(rows, marks)), encoding="utf-8"
                )
                new.append(target)
            else:
                new.append(f)
        merged[split] = new
    return merged


# ---- wikitext ----------------------------------------------------------------------------------

_HEADING = re.compile(r"^ ?= [^=].* = ?$")


def split_pages(text: str) -> list[str]:
    """Raw WikiText → documents, split at top-level ` = Title = ` lines (as wikitext_document_level is)."""
    text = text.replace("\r\n", "\n")
    pages: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _HEADING.match(line.rstrip("\n")) or not pages:
            pages.append([])
        pages[-1].append(line)
    return ["".join(p) for p in pages if "".join(p).strip()]


def _wikitext_task(data_dir: Path, out: Path, setup: TaskSetup) -> None:
    candidates = [
        (p, r)
        for p, r in scan(data_dir, "wikitext")
        if split_of(p, r, "wikitext") == "test" and (p.suffix.lower() in TEXT_EXTS or p.suffix.lower() in DATA_EXTS)
    ]
    if not candidates:
        raise _missing("wikitext", data_dir)
    pages: list[str] = []
    sources = []
    for path, _ in candidates:
        suffix = path.suffix.lower()
        if suffix in TEXT_EXTS:
            from llmctl.data.records import read_text

            pages += split_pages(read_text(path, what="eval data file"))
        else:
            fmt = DATA_EXTS[suffix]
            first = _first_record(path, fmt)
            if "page" in first:
                (out / "wikitext.yaml").write_text(
                    _task_yaml("wikitext.yaml", fmt, {"test": [str(path)]}, {"test_split": "test"}), encoding="utf-8"
                )
                setup.files["wikitext"] = {"test": [str(path)]}
                return
            if "text" in first:  # wikitext-2-raw-v1 rows: one line each
                import datasets

                rows = datasets.load_dataset(fmt, data_files=str(path), split="train")["text"]
                pages += split_pages("".join(r if r.endswith("\n") else r + "\n" for r in rows))
            else:
                continue
        sources.append(str(path))
        break  # one test file is enough (several copies would double count)
    if not pages:
        raise _missing("wikitext", data_dir)
    target = out / "wikitext-test.jsonl"
    target.write_text("".join(json.dumps({"page": p}, ensure_ascii=False) + "\n" for p in pages), encoding="utf-8")
    (out / "wikitext.yaml").write_text(
        _task_yaml("wikitext.yaml", "json", {"test": [str(target)]}, {"test_split": "test"}), encoding="utf-8"
    )
    setup.files["wikitext"] = {"test": sources}
    setup.notes.append(f"wikitext: {len(pages)} documents from {sources[0]}")


def find_text_file(data_dir: Path) -> Path | None:
    """The WikiText raw test file in a data dir (the `perplexity` task's default text)."""
    for path, root in scan(data_dir, "wikitext"):
        if path.suffix.lower() in TEXT_EXTS and split_of(path, root, "wikitext") == "test":
            return path
    return None


# ---- mmlu --------------------------------------------------------------------------------------


def mmlu_subjects() -> dict[str, dict]:
    """lm-eval's own MMLU subject list: subject → {task, task_alias, tag, description}."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    out = {}
    for path in sorted(root.glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        out[cfg["dataset_name"]] = {k: cfg[k] for k in ("task", "task_alias", "tag", "description") if k in cfg}
    return out


def mmlu_groups() -> list[tuple[str, dict]]:
    """lm-eval's MMLU group files (mmlu, mmlu_stem, …) as (file name, config)."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    return [(p.name, yaml.safe_load(p.read_text(encoding="utf-8"))) for p in sorted(root.glob("_mmlu*.yaml"))]


def _mmlu_tasks(data_dir: Path, out: Path, setup: TaskSetup) -> list[str]:
    subjects = mmlu_subjects()
    splits = _split_files("mmlu", data_dir)
    if "test" not in splits:
        raise _missing("mmlu", data_dir)
    per_subject: dict[str, dict[str, list[Path]]] = {}
    shared: dict[str, list[Path]] = {}
    for split, files in splits.items():
        if split not in ("test", "dev"):
            continue
        for f in files:
            parts = [f.parent.name.lower()] + [re.sub(r"[_-](test|dev|val|validation)$", "", f.stem.lower())]
            subject = next((p for p in parts if p in subjects), None)
            if subject:
                per_subject.setdefault(subject, {}).setdefault(split, []).append(f)
            elif "auxiliary" not in str(f).lower():
                shared.setdefault(split, []).append(f)
    present: set[str] = set(per_subject)
    if shared.get("test"):
        fmt, files = _pick_format(shared["test"])
        present |= _subjects_in(files, fmt)
    if not present:
        raise _missing("mmlu", data_dir)
    written = []
    for subject in sorted(present):
        meta = subjects[subject]
        src = per_subject.get(subject) or shared
        if "test" not in src:
            src = {**shared, **src}
        fmt, _ = _pick_format(src["test"])
        data_files = {
            s: [str(p) for p in src[s] if DATA_EXTS[p.suffix.lower()] == fmt] for s in ("test", "dev") if s in src
        }
        data_files = {s: v for s, v in data_files.items() if v}
        kwargs = {}
        if fmt == "csv" and "question" not in _first_record(Path(data_files["test"][0]), "csv"):
            kwargs["column_names"] = ["question", "A", "B", "C", "D", "answer"]
        splits_cfg = {"test_split": "test"}
        extra = dict(meta)
        if "dev" not in data_files:
            extra["fewshot_split"] = None
            extra["fewshot_config"] = None
        text = _task_yaml(
            "mmlu_subject.yaml",
            fmt,
            data_files,
            splits_cfg,
            extra,
            {"process_docs": f"llmctl.evaluate.task_files.utils.mmlu_docs_{subject}"},
            kwargs,
        )
        (out / f"{meta['task']}.yaml").write_text(text, encoding="utf-8")
        written.append(meta["task"])
    # lm-eval's groups, keeping only members that exist here (an empty tag would break the group)
    tags = {subjects[s]["tag"] for s in present}
    groups = mmlu_groups()
    kept = {cfg["group"] for _, cfg in groups if any(t in tags for t in _as_list(cfg["task"]))}
    for name, cfg in groups:
        members = [t for t in _as_list(cfg["task"]) if t in tags or t in kept]
        if members:
            (out / name).write_text(yaml.safe_dump({**cfg, "task": members}, sort_keys=False), encoding="utf-8")
    setup.files["mmlu"] = {"subjects": sorted(present)}
    if len(present) < len(subjects):
        setup.notes.append(f"mmlu: {len(present)} of {len(subjects)} subjects found in {data_dir / 'mmlu'}")
    return written


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _subjects_in(files: list[Path], fmt: str) -> set[str]:
    import datasets

    ds = datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train")
    if "subject" not in ds.column_names:
        raise LlmctlError(
            f"MMLU file {files[0]} has no 'subject' column and its name names no subject",
            hint="use the HF layout (question, subject, choices, answer) or <subject>_test.csv files",
        )
    return set(ds.unique("subject"))


# ---- entry point -------------------------------------------------------------------------------


def is_local_task(name: str) -> bool:
    """Whether llmctl ships an offline config for this task name (incl. mmlu subjects and groups)."""
    if name in TASK_FAMILY:
        return True
    return name.startswith("mmlu_") and (name[5:] in _mmlu_names())


def _mmlu_names() -> set[str]:
    subjects = mmlu_subjects()
    return set(subjects) | {"stem", "humanities", "social_sciences", "other"}


def write_task_dir(tasks: list[str], data_dir: Path, out: Path) -> TaskSetup:
    """Write lm-eval task YAMLs for `tasks` pointing at the files under data_dir into `out`.

    Examples:
        write_task_dir(["hellaswag"], Path("data"), Path("/tmp/x")).files["hellaswag"]["validation"]
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise LlmctlError(
            f"data dir {data_dir} does not exist",
            hint="pass --data-dir DIR (or set LLMCTL_DATA_DIR) with one folder per task family",
        )
    out.mkdir(parents=True, exist_ok=True)
    setup = TaskSetup(include_path=out)
    done: set[str] = set()
    for task in tasks:
        key = "mmlu" if task.startswith("mmlu") else task
        if key in done:
            continue
        done.add(key)
        if key == "hellaswag":
            _simple_task(key, "hellaswag.yaml", data_dir, out, setup)
        elif key in ("arc_easy", "arc_challenge"):
            _simple_task(key, f"{key}.yaml", data_dir, out, setup, subset=key.split("_")[1])
        elif key == "piqa":
            _simple_task(key, "piqa.yaml", data_dir, out, setup)
        elif key == "winogrande":
            _simple_task(key, "winogrande.yaml", data_dir, out, setup)
        elif key == "wikitext":
            _wikitext_task(data_dir, out, setup)
        elif key == "mmlu":
            _mmlu_tasks(data_dir, out, setup)
        else:
            raise LlmctlError(f"llmctl has no offline config for task {task!r}")
    return setup
