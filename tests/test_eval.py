"""`llmctl eval`: offline lm-eval tasks, equality with lm-eval itself, perplexity, gates, compare."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from conftest import write_jsonl
from llmctl.config.profiles import resolve_config
from llmctl.errors import LlmctlError, UsageError
from llmctl.evaluate import evaluate_gates, flatten, parse_gates, parse_limit, parse_tasks, run_eval

WORDS = (
    "the cat dog runs jumps over a big small red blue house tree river quickly slowly "
    "man woman child eats drinks water food then again later because"
).split()


def _sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def build_data_dir(root: Path, n: int = 12) -> Path:
    """A small data dir in the usual layouts: HellaSwag original, AI2 ARC, PIQA original (+labels),
    WinoGrande, MMLU HF layout (2 subjects), WikiText raw."""
    rng = random.Random(0)
    (root / "hellaswag").mkdir(parents=True)
    write_jsonl(
        root / "hellaswag" / "hellaswag_val_small.jsonl",
        [
            {
                "ind": i,
                "activity_label": rng.choice(["Cooking", "Pole vault"]),
                "ctx_a": _sentence(rng),
                "ctx_b": _sentence(rng, 3),
                "ctx": "",
                "endings": [_sentence(rng, 5) + " [title] x" for _ in range(4)],
                "label": rng.randrange(4),
                "split": "val",
                "split_type": "indomain",
                "source_id": "s",
            }
            for i in range(n)
        ],
    )
    write_jsonl(
        root / "hellaswag" / "hellaswag_train_small.jsonl",
        [
            {
                "ind": i,
                "activity_label": "Cooking",
                "ctx_a": _sentence(rng),
                "ctx_b": _sentence(rng, 3),
                "ctx": "",
                "endings": [_sentence(rng, 5) for _ in range(4)],
                "label": rng.randrange(4),
                "split": "train",
                "split_type": "indomain",
                "source_id": "s",
            }
            for i in range(6)
        ],
    )
    (root / "arc").mkdir()
    for subset in ("Challenge", "Easy"):
        for split, count in (("Test", n), ("Dev", 6)):
            rows = []
            for i in range(count):
                labels = ["A", "B", "C", "D"] if i % 3 else ["1", "2", "3", "4"]
                rows.append(
                    {
                        "id": f"{subset}-{split}-{i}",
                        "question": {
                            "stem": _sentence(rng) + "?",
                            "choices": [{"text": _sentence(rng, 3), "label": lab} for lab in labels],
                        },
                        "answerKey": rng.choice(labels),
                    }
                )
            write_jsonl(root / "arc" / f"ARC-{subset}-{split}.jsonl", rows)
    (root / "piqa").mkdir()
    write_jsonl(
        root / "piqa" / "valid.jsonl",
        [{"goal": _sentence(rng), "sol1": _sentence(rng, 4), "sol2": _sentence(rng, 4)} for _ in range(n)],
    )
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{rng.randrange(2)}\n" for _ in range(n)))
    (root / "winogrande").mkdir()
    write_jsonl(
        root / "winogrande" / "dev.jsonl",
        [
            {
                "qID": str(i),
                "sentence": f"The {rng.choice(WORDS)} saw the {rng.choice(WORDS)} because _ was {rng.choice(WORDS)}.",
                "option1": "cat",
                "option2": "dog",
                "answer": rng.choice(["1", "2"]),
            }
            for i in range(n)
        ],
    )
    (root / "mmlu").mkdir()
    for split, count in (("test", n), ("dev", 5)):
        write_jsonl(
            root / "mmlu" / f"mmlu_{split}.jsonl",
            [
                {
                    "question": _sentence(rng) + "?",
                    "subject": subject,
                    "choices": [_sentence(rng, 2) for _ in range(4)],
                    "answer": rng.randrange(4),
                }
                for subject in ("anatomy", "astronomy")
                for _ in range(count)
            ],
        )
    (root / "wikitext-2-raw").mkdir()
    pages = []
    for p in range(3):
        pages.append(f" = Title {p} = \n")
        pages += [f" {_sentence(rng, 12)} @-@ {_sentence(rng, 6)} . \n" for _ in range(5)]
        pages.append(f" = = Section {p} = = \n")
        pages += [f" {_sentence(rng, 10)} , {_sentence(rng, 4)} . \n" for _ in range(3)]
    (root / "wikitext-2-raw" / "wiki.test.raw").write_text("".join(pages), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return build_data_dir(tmp_path_factory.mktemp("evaldata"))


def cfg(data_dir, **over):
    explicit = {
        "data_dir": str(data_dir) if data_dir else None,
        "device": "cpu",
        "dtype": "float32",
        "bootstrap_iters": 0,
        **over,
    }
    return resolve_config("eval", explicit=explicit)


def _direct(model_dir_or_loaded, tasks, include_path, limit, batch_size=8, num_fewshot=None):
    """lm-eval on its own: TaskManager(include_path) + HFLM(model object) + simple_evaluate."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(include_path), include_defaults=False)
    model, tok = model_dir_or_loaded
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device="cpu")
    return simple_evaluate(
        lm, tasks=tasks, limit=limit, task_manager=tm, bootstrap_iters=0, num_fewshot=num_fewshot, log_samples=True
    )


# ---- equality with lm-eval -----------------------------------------------------------------------

TASKS = ["hellaswag", "arc_challenge", "arc_easy", "piqa", "winogrande", "mmlu", "wikitext"]


def test_scores_equal_lm_eval_on_same_model_object(tiny_model, data_dir, tmp_path):
    """llmctl eval == lm_eval.simple_evaluate on the same model object, data, task config and limit."""
    from llmctl.evaluate.task_files import write_task_dir
    from llmctl.models.loading import load_model

    loaded = load_model(tiny_model, dtype="float32", device="cpu")
    ours = run_eval(tiny_model, TASKS, cfg(data_dir, limit=6), loaded=loaded)
    write_task_dir(TASKS, data_dir, tmp_path / "tasks")
    theirs = _direct((loaded.model, loaded.tokenizer), TASKS, tmp_path / "tasks", limit=6)
    expected = flatten(theirs, TASKS)
    assert set(ours.metrics) == set(expected) and len(expected) == 13
    for key, value in expected.items():
        assert ours.metrics[key] == pytest.approx(value, abs=1e-6), key


def _reference_dir(tmp_path: Path, data_dir: Path) -> Path:
    """lm-eval's OWN task YAMLs (lm_eval/tasks/...), only pointed at local copies in the HF layout."""
    import lm_eval

    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    ref = tmp_path / "reference"
    ref.mkdir()
    # ARC in the HF layout, converted here independently of llmctl's process_docs
    for subset in ("Challenge", "Easy"):
        rows = [json.loads(line) for line in (data_dir / "arc" / f"ARC-{subset}-Test.jsonl").read_text().splitlines()]
        write_jsonl(
            ref / f"arc_{subset}.jsonl",
            [
                {
                    "id": r["id"],
                    "question": r["question"]["stem"],
                    "answerKey": r["answerKey"],
                    "choices": {
                        "text": [c["text"] for c in r["question"]["choices"]],
                        "label": [c["label"] for c in r["question"]["choices"]],
                    },
                }
                for r in rows
            ],
        )
    piqa_rows = [json.loads(line) for line in (data_dir / "piqa" / "valid.jsonl").read_text().splitlines()]
    labels = (data_dir / "piqa" / "valid-labels.lst").read_text().split()
    write_jsonl(ref / "piqa.jsonl", [{**r, "label": int(lab)} for r, lab in zip(piqa_rows, labels)])

    def yaml_for(name, include, files, **splits):
        lines = [
            f"include: {include}",
            f"task: {name}",
            "dataset_path: json",
            "dataset_name: null",
            "dataset_kwargs:",
            "  data_files:",
        ]
        lines += [f"    {split}: {path}" for split, path in files.items()]
        lines += [f"{k}: {v}" for k, v in splits.items()]
        (ref / f"{name}.yaml").write_text("\n".join(lines) + "\n")

    yaml_for(
        "hellaswag",
        tasks_root / "hellaswag" / "hellaswag.yaml",
        {"validation": data_dir / "hellaswag" / "hellaswag_val_small.jsonl"},
        training_split="null",
    )
    yaml_for(
        "arc_challenge",
        tasks_root / "arc" / "arc_challenge.yaml",
        {"test": ref / "arc_Challenge.jsonl"},
        training_split="null",
        validation_split="null",
    )
    yaml_for(
        "arc_easy",
        tasks_root / "arc" / "arc_easy.yaml",
        {"test": ref / "arc_Easy.jsonl"},
        training_split="null",
        validation_split="null",
    )
    yaml_for("piqa", tasks_root / "piqa" / "piqa.yaml", {"validation": ref / "piqa.jsonl"}, training_split="null")
    yaml_for(
        "winogrande",
        tasks_root / "winogrande" / "default.yaml",
        {"validation": data_dir / "winogrande" / "dev.jsonl"},
        training_split="null",
    )
    # one MMLU subject: lm-eval's own per-subject YAML, reading that subject's rows
    rows = [json.loads(line) for line in (data_dir / "mmlu" / "mmlu_test.jsonl").read_text().splitlines()]
    write_jsonl(ref / "anatomy_test.jsonl", [r for r in rows if r["subject"] == "anatomy"])
    yaml_for(
        "mmlu_anatomy",
        tasks_root / "mmlu" / "default" / "mmlu_anatomy.yaml",
        {"test": ref / "anatomy_test.jsonl"},
        fewshot_split="null",
        fewshot_config="null",
    )
    return ref


def test_offline_configs_reproduce_lm_eval_standard_tasks(tiny_model, data_dir, tmp_path):
    """Same prompts, choices, targets and scores as lm-eval's own task YAMLs on the same items."""
    from llmctl.evaluate.task_files import write_task_dir
    from llmctl.models.loading import load_model

    loaded = load_model(tiny_model, dtype="float32", device="cpu")
    names = ["hellaswag", "arc_challenge", "arc_easy", "piqa", "winogrande", "mmlu_anatomy"]
    ref = _direct((loaded.model, loaded.tokenizer), names, _reference_dir(tmp_path, data_dir), limit=None)
    write_task_dir(names, data_dir, tmp_path / "ours")
    ours = _direct((loaded.model, loaded.tokenizer), names, tmp_path / "ours", limit=None)
    for name in names:
        a, b = ref["samples"][name], ours["samples"][name]
        assert len(a) == len(b) > 0, name
        for x, y in zip(a, b):
            assert x["arguments"] == y["arguments"], name  # prompt + every choice, exactly
            assert x["target"] == y["target"], name
        assert flatten(ref, [name]) == pytest.approx(flatten(ours, [name]), abs=1e-9), name


def test_batch_size_does_not_change_multiple_choice_scores(tiny_model, data_dir):
    from llmctl.models.loading import load_model

    loaded = load_model(tiny_model, dtype="float32", device="cpu")
    tasks = ["hellaswag", "arc_challenge", "winogrande"]
    one = run_eval(tiny_model, tasks, cfg(data_dir, batch_size="1"), loaded=loaded, attach=False)
    eight = run_eval(tiny_model, tasks, cfg(data_dir, batch_size="8"), loaded=loaded, attach=False)
    assert one.metrics == eight.metrics
    assert len(one.metrics) == 5


def test_peft_adapter_model_object(tiny_model, tiny_llama_dir, data_dir, tmp_path):
    """HFLM wraps a PeftModel; the adapter changes scores and llmctl matches lm-eval on it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmctl.evaluate.task_files import write_task_dir
    from llmctl.models.loading import load_model

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_alpha=64)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = load_model(tiny_model, dtype="float32", device="cpu", adapter=str(tmp_path / "adapter"))
    assert type(loaded.model).__name__.startswith("Peft")
    tasks = ["hellaswag", "arc_challenge"]
    ours = run_eval(tiny_model, tasks, cfg(data_dir), loaded=loaded, attach=False)
    write_task_dir(tasks, data_dir, tmp_path / "tasks")
    theirs = flatten(_direct((loaded.model, loaded.tokenizer), tasks, tmp_path / "tasks", limit=None), tasks)
    assert ours.metrics == pytest.approx(theirs, abs=1e-6)
    base = run_eval(tiny_model, tasks, cfg(data_dir), attach=False)
    base_samples = base.metrics
    assert base_samples.keys() == ours.metrics.keys()


def test_tokenizer_without_pad_token(tiny_llama_dir, data_dir, tmp_path, cli):
    """A model whose tokenizer has no pad token is handled (pad = eos), not a crash."""
    import shutil

    from transformers import AutoTokenizer

    from llmctl.evaluate import make_lm
    from llmctl.models.loading import load_model

    dest = tmp_path / "nopad"
    shutil.copytree(tiny_llama_dir, dest)
    tok = AutoTokenizer.from_pretrained(dest)
    tok.pad_token = None
    tok.save_pretrained(dest)
    cfg_path = dest / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    tc.pop("pad_token", None)
    cfg_path.write_text(json.dumps(tc))
    assert AutoTokenizer.from_pretrained(dest).pad_token is None
    loaded = load_model(str(dest), dtype="float32", device="cpu")
    loaded.tokenizer.pad_token = None  # as if a loader had not set one
    lm = make_lm(loaded, 4)
    assert lm.tokenizer.pad_token is not None
    res = cli(
        "eval",
        "--model",
        dest,
        "--tasks",
        "hellaswag",
        "--data-dir",
        data_dir,
        "--limit",
        "4",
        "--batch-size",
        "4",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    assert 0.0 <= json.loads(res.stdout)["metrics"]["hellaswag.acc"] <= 1.0


# ---- perplexity ----------------------------------------------------------------------------------


def test_perplexity_task_uses_llmctl_perplexity(tiny_model, data_dir):
    from llmctl.evaluate.perplexity import perplexity, read_text
    from llmctl.models.loading import load_model

    loaded = load_model(tiny_model, dtype="float32", device="cpu")
    text_path = data_dir / "wikitext-2-raw" / "wiki.test.raw"
    res = run_eval(
        tiny_model, ["perplexity"], cfg(data_dir, **{"perplexity.seqlen": 64, "perplexity.stride": 32}), loaded=loaded
    )
    ref = perplexity(loaded.model, loaded.tokenizer, read_text(text_path), seqlen=64, stride=32)
    assert res.metrics["perplexity.token_perplexity"] == pytest.approx(ref["perplexity"], rel=1e-9)
    assert res.metrics["perplexity.bits_per_byte"] == pytest.approx(ref["bits_per_byte"], rel=1e-9)
    assert res.metrics["perplexity.word_perplexity"] == pytest.approx(ref["word_perplexity"], rel=1e-9)
    assert res.results["configs"]["perplexity"]["data"] == str(text_path)


# ---- CLI -----------------------------------------------------------------------------------------


def test_cli_happy_path_json_output_and_registry(cli, tiny_model, data_dir, tmp_path):
    out = tmp_path / "results.json"
    res = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "hellaswag,arc_challenge",
        "--tasks",
        "perplexity",
        "--data-dir",
        data_dir,
        "--limit",
        "5",
        "--seqlen",
        "64",
        "--stride",
        "32",
        "--output",
        out,
        "--log-samples",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    payload = json.loads(res.stdout)
    assert set(payload["metrics"]) >= {
        "hellaswag.acc",
        "hellaswag.acc_norm",
        "arc_challenge.acc",
        "perplexity.token_perplexity",
        "perplexity.bits_per_byte",
    }
    assert payload["n-samples"]["hellaswag"]["effective"] == 5
    saved = json.loads(out.read_text())
    assert saved["results"]["hellaswag"]["acc,none"] == payload["metrics"]["hellaswag.acc"]
    assert saved["llmctl"]["registry_name"] == "tiny" and saved["llmctl"]["version"]
    assert saved["llmctl"]["lineage"][0]["name"] == "tiny"
    assert "configs" in saved and "n-shot" in saved and "versions" in saved  # lm-eval's layout
    samples = [json.loads(x) for x in (tmp_path / "results.samples_hellaswag.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and "arguments" in samples[0]
    shown = json.loads(cli("models", "show", "tiny", "--json").stdout)
    assert shown["metrics"]["hellaswag.acc"] == payload["metrics"]["hellaswag.acc"]
    assert shown["meta"]["eval"]["hellaswag"]["limit"] == 5
    text = cli("models", "show", "tiny").stdout
    assert "hellaswag.acc_norm" in text and "perplexity.bits_per_byte" in text


def test_cli_human_table_and_env_data_dir(cli, tiny_model, data_dir, monkeypatch):
    monkeypatch.setenv("LLMCTL_DATA_DIR", str(data_dir))
    res = cli("eval", "--model", tiny_model, "--tasks", "winogrande,piqa", "--limit", "0.5")
    assert res.exit_code == 0, res.stderr
    assert "winogrande" in res.stdout and "piqa" in res.stdout and "acc_norm" in res.stdout


def test_cli_fail_under_gate(cli, tiny_model, data_dir):
    ok = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "hellaswag",
        "--data-dir",
        data_dir,
        "--limit",
        "4",
        "--fail-under",
        "hellaswag.acc_norm=0.0",
    )
    assert ok.exit_code == 0, ok.stderr
    bad = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "hellaswag,perplexity",
        "--data-dir",
        data_dir,
        "--limit",
        "4",
        "--seqlen",
        "64",
        "--stride",
        "64",
        "--fail-under",
        "hellaswag.acc_norm=1.01",
        "--fail-under",
        "perplexity.token_perplexity=1.5",
    )
    assert bad.exit_code == 3
    assert "Error: quality gate failed: hellaswag.acc_norm" in bad.stderr and "< 1.01" in bad.stderr
    assert "perplexity.token_perplexity" in bad.stderr and "> 1.5 (lower is better)" in bad.stderr


@pytest.mark.parametrize(
    "gate, message",
    [
        ("hellaswag.accnorm=0.3", "task 'hellaswag' has no metric 'accnorm'"),
        ("hellaswag.acc_norm=high", "'high' is not a number"),
        ("hellaswag=0.3", "expects task.metric=value"),
        ("arc_easy.acc=0.3", "names task 'arc_easy', which is not in --tasks"),
    ],
)
def test_cli_bad_gates(cli, tiny_model, data_dir, gate, message):
    res = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "hellaswag",
        "--data-dir",
        data_dir,
        "--limit",
        "2",
        "--fail-under",
        gate,
    )
    assert res.exit_code == 2 and message in res.stderr, res.stderr


@pytest.mark.parametrize(
    "limit, line",
    [
        ("0", "--limit 0: must be a whole count of at least 1 or a fraction in (0, 1)"),
        ("-5", "--limit -5: must be a whole count of at least 1 or a fraction in (0, 1)"),
        ("1.5", "--limit 1.5: must be a whole count of at least 1 or a fraction in (0, 1)"),
        (
            "abc",
            "Invalid value for '--limit': Input should be a valid number, unable to parse string as a number "
            "(see `llmctl eval --help`)",
        ),
    ],
)
def test_cli_bad_limit(cli, tiny_model, data_dir, limit, line):
    res = cli("eval", "--model", tiny_model, "--tasks", "hellaswag", "--data-dir", data_dir, "--limit", limit)
    assert (res.exit_code, res.stderr) == (2, f"Error: {line}\n")


def test_cli_unknown_task_lists_close_names(cli, tiny_model, data_dir):
    res = cli("eval", "--model", tiny_model, "--tasks", "hellaswg", "--data-dir", data_dir)
    assert res.exit_code == 1
    assert "Error: unknown task 'hellaswg'" in res.stderr and "hellaswag" in res.stderr


def test_cli_missing_task_files_names_expected_files(cli, tiny_model, data_dir, tmp_path):
    empty = tmp_path / "data"
    (empty / "arc").mkdir(parents=True)
    (empty / "arc" / "ARC-Easy-Test.jsonl").write_text((data_dir / "arc" / "ARC-Easy-Test.jsonl").read_text())
    res = cli("eval", "--model", tiny_model, "--tasks", "arc_challenge", "--data-dir", empty)
    assert res.exit_code == 1
    assert "no data for task 'arc_challenge'" in res.stderr and "ARC-Challenge-Test.jsonl" in res.stderr
    assert str(empty) in res.stderr
    res = cli("eval", "--model", tiny_model, "--tasks", "piqa", "--data-dir", empty)
    assert res.exit_code == 1 and "no piqa/ folder" in res.stderr
    res = cli("eval", "--model", tiny_model, "--tasks", "hellaswag", "--data-dir", tmp_path / "nope")
    assert res.exit_code == 1 and "data dir" in res.stderr and "does not exist" in res.stderr


def test_cli_offline_without_data_dir_is_an_error_not_a_hang(cli, tiny_model, monkeypatch):
    monkeypatch.delenv("LLMCTL_DATA_DIR", raising=False)
    monkeypatch.delenv("LLMCTL_ALLOW_NETWORK", raising=False)
    res = cli("eval", "--model", tiny_model, "--tasks", "hellaswag")
    assert res.exit_code == 1 and "needs local data offline" in res.stderr and "--data-dir" in res.stderr
    res = cli("eval", "--model", tiny_model, "--tasks", "lambada_openai")
    assert res.exit_code == 1 and "without an llmctl offline config" in res.stderr


def test_cli_num_fewshot_larger_than_pool(cli, tiny_model, data_dir):
    res = cli(
        "eval", "--model", tiny_model, "--tasks", "mmlu", "--data-dir", data_dir, "--num-fewshot", "6", "--limit", "2"
    )
    assert res.exit_code == 1
    assert "--num-fewshot 6 is larger than the few-shot pool of mmlu_" in res.stderr and "(5 examples" in res.stderr
    ok = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "mmlu,arc_challenge",
        "--data-dir",
        data_dir,
        "--num-fewshot",
        "5",
        "--limit",
        "2",
        "--json",
    )
    assert ok.exit_code == 0, ok.stderr
    payload = json.loads(ok.stdout)
    assert "mmlu.acc" in payload["metrics"] and "mmlu_stem" in payload["groups"]


def test_cli_output_checked_before_the_model_loads(cli, tmp_path, data_dir):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "results.json"
    res = cli("eval", "--model", "no-such-model", "--tasks", "hellaswag", "--data-dir", data_dir, "--output", out)
    assert (res.exit_code, res.stderr) == (
        1,
        f"Error: cannot write --output {out}: {tmp_path / 'file'} is a file, "
        "not a folder; pick a path whose parent folders are folders\n",
    )
    res = cli("eval", "compare", "no-such-model", "--tasks", "hellaswag", "--data-dir", data_dir, "--plot", out)
    assert (res.exit_code, res.stderr) == (
        1,
        f"Error: cannot write --plot {out}: {tmp_path / 'file'} is a file, "
        "not a folder; pick a path whose parent folders are folders\n",
    )


def test_cli_bad_options(cli, tiny_model, data_dir):
    res = cli("eval", "--model", tiny_model, "--tasks", "hellaswag", "--data-dir", data_dir, "--batch-size", "0")
    assert (res.exit_code, res.stderr) == (
        2,
        "Error: --batch-size 0: must be a whole number of at least 1, auto, or auto:N\n",
    )
    res = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "perplexity",
        "--data-dir",
        data_dir,
        "--seqlen",
        "64",
        "--stride",
        "128",
    )
    assert (res.exit_code, res.stderr) == (
        2,
        "Error: perplexity.stride must be at most perplexity.seqlen; got --stride 128 and --seqlen 64\n",
    )
    res = cli("eval", "--model", tiny_model, "--tasks", "perplexity", "--data", data_dir / "missing.txt")
    assert res.exit_code == 1 and "missing.txt not found" in res.stderr
    res = cli("eval", "--model", tiny_model, "--tasks", "hellaswag", "--data-dir", data_dir, "--log-samples")
    assert res.exit_code == 2 and "--log-samples needs --output" in res.stderr
    res = cli("eval", "--model", "no-such-model", "--tasks", "hellaswag", "--data-dir", data_dir)
    assert res.exit_code == 1 and "no model named 'no-such-model'" in res.stderr


def test_cli_dry_run_and_profile(cli, data_dir):
    res = cli("eval", "--profile", "quick", "--tasks", "hellaswag", "--data-dir", data_dir, "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    config = json.loads(res.stdout)
    assert config["limit"] == 100 and config["tasks"] == ["hellaswag"] and config["perplexity"]["seqlen"] == 512


def test_cli_help_documents_both_forms_and_layout(cli):
    res = cli("eval", "--help")
    assert res.exit_code == 0
    for text in ("eval compare", "--fail-under", "hellaswag/", "arc/", "wikitext/", "val/valid/validation/dev"):
        assert text in res.stdout, text
    bare = cli("eval")  # no options: the help, not a run on guessed settings
    assert bare.exit_code == 0 and "eval compare" in bare.stdout


def test_cli_compare_table_plot_and_from_registry(cli, tiny_model, tiny_llama_dir, data_dir, tmp_path):
    from conftest import build_tiny_llama
    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    other = build_tiny_llama(tmp_path / "other", seed=1)
    import_model(Registry(), str(other), "tiny2", link=True)
    png = tmp_path / "cmp.png"
    res = cli(
        "eval",
        "compare",
        "tiny",
        "tiny2",
        "--tasks",
        "hellaswag,perplexity",
        "--data-dir",
        data_dir,
        "--limit",
        "4",
        "--seqlen",
        "64",
        "--stride",
        "64",
        "--plot",
        png,
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    table = json.loads(res.stdout)
    assert [r["model"] for r in table["rows"]] == ["tiny", "tiny2"]
    assert "hellaswag.acc_norm" in table["columns"] and "perplexity.token_perplexity" in table["columns"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = cli("eval", "compare", "tiny", "tiny2", "--tasks", "hellaswag", "--from-registry")
    assert again.exit_code == 0, again.stderr
    assert "tiny2" in again.stdout and "hellaswag.acc" in again.stdout
    missing = cli("eval", "compare", "tiny", "--tasks", "arc_easy", "--from-registry")
    assert missing.exit_code == 1 and "has no stored results for arc_easy" in missing.stderr
    exists = cli("eval", "compare", "tiny", "--tasks", "hellaswag", "--from-registry", "--plot", png)
    assert exists.exit_code == 1 and "already exists" in exists.stderr


# ---- units ---------------------------------------------------------------------------------------


def test_parsers():
    assert parse_tasks(["a,b", "b", " c "]) == ["a", "b", "c"]
    assert parse_limit("200") == 200 and parse_limit("0.25") == 0.25 and parse_limit(None) is None
    for bad in ("0", "-1", "1.5", "x", "nan"):
        with pytest.raises(UsageError):
            parse_limit(bad)
    gates = parse_gates(["hellaswag.acc_norm=0.35"], ["hellaswag"])
    assert gates[0].key == "hellaswag.acc_norm" and gates[0].threshold == 0.35
    assert evaluate_gates(gates, {"hellaswag.acc_norm": 0.3}, {}) == ["hellaswag.acc_norm 0.3000 < 0.35"]
    assert evaluate_gates(gates, {"hellaswag.acc_norm": 0.4}, {}) == []


def test_split_detection_and_layouts(tmp_path, data_dir):
    from llmctl.evaluate.task_files import split_of, split_pages, write_task_dir

    root = tmp_path / "arc"
    for name, split in [
        ("ARC-Challenge-Dev.jsonl", "validation"),
        ("test-00000-of-00001.parquet", "test"),
        ("hellaswag_val_1000.jsonl", "validation"),
        ("train_xl.jsonl", "train"),
        ("wiki.valid.raw", "validation"),
        ("notes.jsonl", None),
    ]:
        assert split_of(root / name, root, "arc") == split, name
    assert split_of(root / "abstract_algebra_dev.csv", root, "mmlu") == "dev"
    pages = split_pages(" = A = \r\n x \r\n = = B = = \r\n y \r\n = C = \r\n z \r\n")
    assert pages == [" = A = \n x \n = = B = = \n y \n", " = C = \n z \n"]
    setup = write_task_dir(["arc_challenge", "piqa", "wikitext"], data_dir, tmp_path / "out")
    assert setup.files["arc_challenge"]["test"][0].endswith("ARC-Challenge-Test.jsonl")
    assert setup.files["arc_challenge"]["validation"][0].endswith("ARC-Challenge-Dev.jsonl")
    piqa = json.loads(Path(setup.files["piqa"]["validation"][0]).read_text().splitlines()[0])
    assert piqa["label"] in (0, 1)  # labels merged from valid-labels.lst
    text = (tmp_path / "out" / "arc_challenge.yaml").read_text()
    assert "dataset_path: json" in text and "include:" in text


def test_mmlu_original_csv_layout(tiny_model, tmp_path):
    """Headerless <subject>_test.csv / _dev.csv files (the original MMLU release)."""
    root = tmp_path / "data" / "mmlu"
    for split, n in (("test", 6), ("dev", 5)):
        (root / split).mkdir(parents=True)
        with open(root / split / f"anatomy_{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            for i in range(n):
                w.writerow([f"Question {i}?", "bone", "muscle", "skin", "blood", "ABCD"[i % 4]])
    res = run_eval(tiny_model, ["mmlu"], cfg(tmp_path / "data", num_fewshot=2), attach=False)
    assert set(res.metrics) == {"mmlu.acc"}
    assert res.results["n-samples"]["mmlu_anatomy"]["effective"] == 6
    assert any("1 of 57 subjects" in n for n in res.notes)


def test_unknown_task_service_error(tiny_model, data_dir):
    with pytest.raises(LlmctlError, match="unknown task 'arc_chalenge'.*arc_challenge"):
        run_eval(tiny_model, ["arc_chalenge"], cfg(data_dir))


def test_flatten_groups_and_filters():
    results = {
        "results": {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict": 0.2, "alias": "t"}},
        "groups": {"g": {"acc,none": 0.7}},
    }
    assert flatten(results, ["t", "g"]) == {"t.acc": 0.5, "t.exact_match.strict": 0.2, "g.acc": 0.7}


def test_passthrough_with_network(monkeypatch, data_dir):
    """With LLMCTL_ALLOW_NETWORK=1 any lm-eval task name goes to the harness; local ones stay local with data."""
    import llmctl.evaluate.tasks as ev

    class FakeTM:
        all_tasks = ["lambada_openai", "hellaswag"]

    monkeypatch.setenv("LLMCTL_ALLOW_NETWORK", "1")
    monkeypatch.setattr(ev, "lmeval_task_manager", lambda *a, **k: FakeTM())
    plan = ev.plan_tasks(["lambada_openai", "hellaswag"], cfg(None))
    assert plan.passthrough == ["lambada_openai", "hellaswag"] and plan.local == []
    plan = ev.plan_tasks(["lambada_openai", "hellaswag"], cfg(data_dir))
    assert plan.passthrough == ["lambada_openai"] and plan.local == ["hellaswag"]
    with pytest.raises(LlmctlError, match="unknown task 'lambada_opena'"):
        ev.plan_tasks(["lambada_opena"], cfg(data_dir))


def test_fewshot_from_validation_is_noted(tiny_model, data_dir, tmp_path):
    res = run_eval(tiny_model, ["winogrande"], cfg(data_dir, num_fewshot=2, limit=3), attach=False)
    assert any("few-shot examples come from its validation split" in n for n in res.notes)
    assert res.results["n-shot"]["winogrande"] == 2


def test_quantized_model_formats(cli, tiny_model, data_dir, tmp_path):
    """A registry model of another format (RTN 4-bit, quantize's compressed-tensors layout) evaluates through the
    same path."""
    from llmctl.evaluate.task_files import write_task_dir
    from llmctl.models.loading import load_model

    res = cli(
        "quantize", "--model", tiny_model, "--algo", "rtn", "--bits", "4", "--group-size", "32", "--name", "tiny-rtn4"
    )
    assert res.exit_code == 0, res.stderr
    loaded = load_model("tiny-rtn4", dtype="float32", device="cpu")
    ours = run_eval(
        "tiny-rtn4",
        ["hellaswag", "perplexity"],
        cfg(data_dir, **{"perplexity.seqlen": 64, "perplexity.stride": 64}),
        loaded=loaded,
    )
    write_task_dir(["hellaswag"], data_dir, tmp_path / "tasks")
    theirs = flatten(
        _direct((loaded.model, loaded.tokenizer), ["hellaswag"], tmp_path / "tasks", limit=None), ["hellaswag"]
    )
    assert {k: v for k, v in ours.metrics.items() if k.startswith("hellaswag")} == pytest.approx(theirs, abs=1e-6)
    shown = json.loads(cli("models", "show", "tiny-rtn4", "--json").stdout)
    assert shown["format"] == "compressed-tensors" and "perplexity.token_perplexity" in shown["metrics"]
