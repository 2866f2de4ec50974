"""A corpus of bad inputs, per command: exact exit code and first stderr line, no traceback, nothing left behind,
the registry intact. Each case builds its files in a fresh folder; `{t}` in an expected line is that folder and
`{h}` is LLMCTL_HOME.

Examples:
    pytest tests/test_bad_inputs.py -q -k finetune
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from conftest import write_jsonl

BAD_UTF8 = b'{"text": "caf\xe9 au lait"}\n'
BINARY = b"\x00\x01\x02PK\x03\x04" * 64


def _w(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def _alpaca(t: Path) -> Path:
    return write_jsonl(t / "alpaca.jsonl", [{"instruction": f"Say {i}.", "output": f"{i}."} for i in range(8)])


def _corrupt_db(h: Path) -> None:
    (h / "registry.db").write_bytes(b"not a database " * 200)


def _garble_row(h: Path) -> None:
    con = sqlite3.connect(h / "registry.db")
    con.execute("UPDATE models SET profile = '{oops' WHERE name = 'tiny'")
    con.commit()
    con.close()


# (id, args (with {t} = the case folder), files to create {relative path: content}, exit code, first stderr line;
# None = the line recorded in bad_inputs_expected.json, refreshed with LLMCTL_RECORD_BAD_INPUTS=FILE and reviewed)
CASES = [
    # ---- profiles and --set ----------------------------------------------------------------------------------
    (
        "profile-not-utf8",
        ["generate", "--prompt", "x", "--profile", "{t}/p.yaml"],
        {"p.yaml": b"top_k: 5 # caf\xe9\n"},
        1,
        "Error: profile {t}/p.yaml is not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8",
    ),
    ("profile-binary", ["generate", "--prompt", "x", "--profile", "{t}/p.yaml"], {"p.yaml": BINARY}, 1, None),
    ("profile-bad-yaml", ["generate", "--prompt", "x", "--profile", "{t}/p.yaml"], {"p.yaml": "top_k: [1,\n"}, 1, None),
    ("profile-unknown-key", ["generate", "--prompt", "x", "--profile", "{t}/p.yaml"], {"p.yaml": "topk: 5\n"}, 2, None),
    (
        "profile-wrong-type",
        ["generate", "--prompt", "x", "--profile", "{t}/p.yaml"],
        {"p.yaml": "top_k: many\n"},
        2,
        None,
    ),
    ("profile-missing", ["generate", "--prompt", "x", "--profile", "{t}/nope.yaml"], {}, 1, None),
    ("profile-unknown-name", ["generate", "--prompt", "x", "--profile", "creativ"], {}, 1, None),
    ("set-no-equals", ["generate", "--prompt", "x", "--set", "top_k"], {}, 2, None),
    ("set-unknown-key", ["generate", "--prompt", "x", "--set", "topk=1"], {}, 2, None),
    ("set-out-of-range", ["generate", "--prompt", "x", "--set", "top_p=1.5"], {}, 2, None),
    ("flag-out-of-range", ["generate", "--prompt", "x", "--top-p", "1.5"], {}, 2, None),
    ("set-not-a-choice", ["finetune", "--data", "{t}/a.jsonl", "--name", "n", "--set", "method=lorax"], {}, 2, None),
    (
        "set-two-pairs",
        ["pretrain", "--data", "{t}", "--name", "n", "--set", "model.hidden_size=32", "model.num_layers=2"],
        {},
        2,
        None,
    ),
    ("profiles-list-unknown-command", ["profiles", "list", "--command", "nope"], {}, 2, None),
    ("profiles-show-unknown", ["profiles", "show", "generate/nope"], {}, 1, None),
    # ---- registry ------------------------------------------------------------------------------------------------
    (
        "registry-damaged-db",
        ["models", "list"],
        {"!db": _corrupt_db},
        1,
        "Error: the registry index {h}/registry.db is damaged (file is not a database); run `llmctl models doctor "
        "--fix`: it keeps the damaged file as a backup and rebuilds the index from the model folders",
    ),
    ("registry-garbled-row", ["models", "show", "tiny"], {"!db": _garble_row}, 1, None),
    ("unknown-model", ["generate", "--model", "tinny", "--prompt", "x"], {}, 1, None),
    ("unknown-model-show", ["models", "show", "nope"], {}, 1, None),
    ("remove-unknown", ["models", "remove", "nope"], {}, 1, None),
    ("invalid-name", ["models", "import", "{t}/m", "--name", "../x"], {"m/config.json": "{}"}, 1, None),
    ("name-exists", ["models", "import", "{t}/tok", "--name", "tiny"], {"tok/tokenizer.json": "{}"}, 1, None),
    ("missing-model-path", ["generate", "--model", "./nope", "--prompt", "x"], {}, 1, None),
    ("hub-id-offline", ["generate", "--model", "org/model", "--prompt", "x"], {}, 1, None),
    # ---- models import ------------------------------------------------------------------------------------------
    ("import-missing", ["models", "import", "{t}/nope"], {}, 1, None),
    ("import-not-a-model", ["models", "import", "{t}/empty"], {"empty/readme.txt": "hi"}, 1, None),
    (
        "import-config-not-json",
        ["models", "import", "{t}/m"],
        {"m/config.json": "{not json"},
        1,
        "Error: model config {t}/m/config.json is not valid JSON (Expecting property name enclosed in double quotes "
        "at line 1); the file is damaged; re-create or re-import the model",
    ),
    ("import-config-not-utf8", ["models", "import", "{t}/m"], {"m/config.json": b'{"a": "\xff"}'}, 1, None),
    ("import-no-weights", ["models", "import", "{t}/m"], {"m/config.json": '{"model_type": "llama"}'}, 1, None),
    (
        "import-truncated-weights",
        ["models", "import", "{t}/m"],
        {"m/config.json": "{}", "m/model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{}"},
        1,
        None,
    ),
    (
        "import-custom-code",
        ["models", "import", "{t}/m"],
        {"m/config.json": '{"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}}'},
        1,
        None,
    ),
    ("import-garbage-gguf", ["models", "import", "{t}/m.gguf"], {"m.gguf": b"GGUF but not really"}, 1, None),
    ("import-text-file", ["models", "import", "{t}/m.txt"], {"m.txt": "hello"}, 1, None),
    (
        "import-garbled-marker",
        ["models", "import", "{t}/m"],
        {"m/config.json": "{}", "m/llmctl-entry.json": "{garbled"},
        1,
        None,
    ),
    # ---- generate -----------------------------------------------------------------------------------------------
    ("generate-input-missing", ["generate", "--model", "tiny", "--input", "{t}/nope.jsonl"], {}, 1, None),
    (
        "generate-input-bad-json",
        ["generate", "--model", "tiny", "--input", "{t}/p.jsonl"],
        {"p.jsonl": '{"prompt": "a"}\n{"prompt": \n'},
        1,
        None,
    ),
    (
        "generate-input-no-prompt",
        ["generate", "--model", "tiny", "--input", "{t}/p.jsonl"],
        {"p.jsonl": '{"question": "a"}\n'},
        1,
        None,
    ),
    (
        "generate-input-not-utf8",
        ["generate", "--model", "tiny", "--input", "{t}/p.jsonl"],
        {"p.jsonl": BAD_UTF8},
        1,
        None,
    ),
    ("generate-input-empty", ["generate", "--model", "tiny", "--input", "{t}/p.jsonl"], {"p.jsonl": ""}, 1, None),
    (
        "generate-prompt-and-input",
        ["generate", "--model", "tiny", "--prompt", "a", "--input", "{t}/p.jsonl"],
        {"p.jsonl": '{"prompt": "a"}\n'},
        2,
        None,
    ),
    (
        "generate-output-under-file",
        ["generate", "--model", "tiny", "--prompt", "a", "--output", "{t}/f/out.jsonl"],
        {"f": "a file"},
        1,
        None,
    ),
    (
        "generate-output-exists",
        ["generate", "--model", "tiny", "--prompt", "a", "--output", "{t}/o.jsonl"],
        {"o.jsonl": "x"},
        1,
        None,
    ),
    ("generate-bad-device", ["generate", "--model", "tiny", "--prompt", "a", "--device", "tpu"], {}, 2, None),
    ("generate-cuda-missing", ["generate", "--model", "tiny", "--prompt", "a", "--device", "cuda"], {}, 1, None),
    (
        "generate-adapter-not-adapter",
        ["generate", "--model", "tiny", "--prompt", "a", "--adapter", "tiny"],
        {},
        1,
        None,
    ),
    (
        "generate-tokenizer-as-model",
        ["generate", "--model", "{t}/tok", "--prompt", "a"],
        {"tok/tokenizer_config.json": "{}"},
        1,
        None,
    ),
    # ---- finetune -----------------------------------------------------------------------------------------------
    ("finetune-data-missing", ["finetune", "--model", "tiny", "--data", "{t}/nope.jsonl", "--name", "n"], {}, 1, None),
    (
        "finetune-data-not-utf8",
        ["finetune", "--model", "tiny", "--data", "{t}/d.jsonl", "--name", "n"],
        {"d.jsonl": BAD_UTF8},
        1,
        None,
    ),
    (
        "finetune-data-binary",
        ["finetune", "--model", "tiny", "--data", "{t}/d.jsonl", "--name", "n"],
        {"d.jsonl": BINARY},
        1,
        None,
    ),
    (
        "finetune-data-bad-line",
        ["finetune", "--model", "tiny", "--data", "{t}/d.jsonl", "--name", "n"],
        {"d.jsonl": '{"text": "a"}\n{"text": }\n'},
        1,
        None,
    ),
    (
        "finetune-data-not-objects",
        ["finetune", "--model", "tiny", "--data", "{t}/d.jsonl", "--name", "n"],
        {"d.jsonl": "[1, 2]\n"},
        1,
        None,
    ),
    (
        "finetune-data-empty",
        ["finetune", "--model", "tiny", "--data", "{t}/d.jsonl", "--name", "n"],
        {"d.jsonl": "\n\n"},
        1,
        None,
    ),
    (
        "finetune-data-unknown-layout",
        ["finetune", "--model", "tiny", "--data", "{t}/d.jsonl", "--name", "n"],
        {"d.jsonl": '{"question": "a", "answer": "b"}\n'},
        1,
        None,
    ),
    (
        "finetune-data-mixed-layouts",
        ["finetune", "--model", "tiny", "--data", "{t}/d.jsonl", "--name", "n"],
        {"d.jsonl": '{"text": "a"}\n{"instruction": "a", "output": "b"}\n'},
        1,
        None,
    ),
    (
        "finetune-data-folder",
        ["finetune", "--model", "tiny", "--data", "{t}/dir", "--name", "n"],
        {"dir/x.txt": "a"},
        1,
        None,
    ),
    ("finetune-no-name", ["finetune", "--model", "tiny", "--data", "{t}/a.jsonl"], {"!alpaca": None}, 2, None),
    (
        "finetune-quantized-base",
        ["finetune", "--model", "{t}/q", "--data", "{t}/a.jsonl", "--name", "n"],
        {"!alpaca": None, "q/config.json": "{}", "q/llmctl-entry.json": '{"format": "inc-int8"}'},
        1,
        None,
    ),
    (
        "finetune-resume-without-run",
        ["finetune", "--model", "tiny", "--data", "{t}/a.jsonl", "--name", "n", "--resume"],
        {"!alpaca": None},
        1,
        None,
    ),
    (
        "finetune-reward-prompt-tuning",
        [
            "finetune",
            "--model",
            "tiny",
            "--data",
            "{t}/a.jsonl",
            "--name",
            "n",
            "--objective",
            "reward",
            "--method",
            "prompt-tuning",
        ],
        {"!alpaca": None},
        1,
        None,
    ),
    (
        "finetune-epochs-zero",
        ["finetune", "--model", "tiny", "--data", "{t}/a.jsonl", "--name", "n", "--epochs", "0"],
        {"!alpaca": None},
        2,
        None,
    ),
    (
        "finetune-lr-negative",
        ["finetune", "--model", "tiny", "--data", "{t}/a.jsonl", "--name", "n", "--lr", "-1"],
        {"!alpaca": None},
        2,
        None,
    ),
    # ---- tokenize -----------------------------------------------------------------------------------------------
    ("tokenize-input-missing", ["tokenize", "train", "--input", "{t}/nope.txt", "--name", "t"], {}, 1, None),
    ("tokenize-input-empty", ["tokenize", "train", "--input", "{t}/e.txt", "--name", "t"], {"e.txt": ""}, 1, None),
    ("tokenize-input-binary", ["tokenize", "train", "--input", "{t}/b.txt", "--name", "t"], {"b.txt": BINARY}, 1, None),
    (
        "tokenize-input-not-utf8",
        ["tokenize", "train", "--input", "{t}/b.txt", "--name", "t"],
        {"b.txt": b"caf\xe9 " * 100},
        1,
        None,
    ),
    ("tokenize-train-no-destination", ["tokenize", "train", "--input", "{t}/c.txt"], {"c.txt": "hello world"}, 2, None),
    (
        "tokenize-train-output-under-file",
        ["tokenize", "train", "--input", "{t}/c.txt", "--output", "{t}/f/tok"],
        {"c.txt": "hello world", "f": "a file"},
        1,
        None,
    ),
    (
        "tokenize-type-unknown",
        ["tokenize", "train", "--input", "{t}/c.txt", "--name", "t", "--type", "bpee"],
        {"c.txt": "hello"},
        2,
        None,
    ),
    (
        "tokenize-encode-unknown-tokenizer",
        ["tokenize", "encode", "--tokenizer", "nope", "--input", "{t}/c.txt", "--output", "{t}/d"],
        {"c.txt": "hello"},
        1,
        None,
    ),
    (
        "tokenize-encode-output-exists",
        ["tokenize", "encode", "--tokenizer", "tiny", "--input", "{t}/c.txt", "--output", "{t}/d"],
        {"c.txt": "hello", "d/x": "x"},
        1,
        None,
    ),
    (
        "tokenize-encode-val-fraction",
        [
            "tokenize",
            "encode",
            "--tokenizer",
            "tiny",
            "--input",
            "{t}/c.txt",
            "--output",
            "{t}/d",
            "--val-fraction",
            "1.5",
        ],
        {"c.txt": "hello"},
        2,
        None,
    ),
    (
        "tokenize-jsonl-no-field",
        ["tokenize", "encode", "--tokenizer", "tiny", "--input", "{t}/c.jsonl", "--output", "{t}/d"],
        {"c.jsonl": '{"body": "hello"}\n'},
        1,
        None,
    ),
    # ---- pretrain -----------------------------------------------------------------------------------------------
    ("pretrain-not-a-data-dir", ["pretrain", "--data", "{t}", "--name", "p"], {}, 1, None),
    (
        "pretrain-index-lacks-format",
        ["pretrain", "--data", "{t}/d", "--name", "p"],
        {"d/index.json": '{"splits": {}}', "d/train-00000.bin": b""},
        1,
        None,
    ),
    (
        "pretrain-index-lacks-dtype",
        ["pretrain", "--data", "{t}/d", "--name", "p"],
        {"d/index.json": '{"format": "llmctl-tokens/1", "splits": {}}', "d/train-00000.bin": b""},
        1,
        None,
    ),
    (
        "pretrain-index-not-json",
        ["pretrain", "--data", "{t}/d", "--name", "p"],
        {"d/index.json": "{oops", "d/train-00000.bin": b""},
        1,
        None,
    ),
    ("pretrain-bad-arch", ["pretrain", "--data", "{t}", "--name", "p", "--set", "model.arch=bert"], {}, 2, None),
    # ---- quantize and prune -------------------------------------------------------------------------------------
    (
        "quantize-bad-combination",
        ["quantize", "--model", "tiny", "--name", "q", "--backend", "bnb", "--algo", "gptq"],
        {},
        2,
        None,
    ),
    ("quantize-bits-unsupported", ["quantize", "--model", "tiny", "--name", "q", "--bits", "5"], {}, 2, None),
    ("quantize-group-size-zero", ["quantize", "--model", "tiny", "--name", "q", "--group-size", "0"], {}, 2, None),
    (
        "quantize-calib-missing",
        ["quantize", "--model", "tiny", "--name", "q", "--algo", "gptq", "--calib-data", "{t}/nope.txt"],
        {},
        1,
        None,
    ),
    (
        "quantize-calib-not-utf8",
        ["quantize", "--model", "tiny", "--name", "q", "--algo", "gptq", "--calib-data", "{t}/c.jsonl"],
        {"c.jsonl": BAD_UTF8},
        1,
        None,
    ),
    (
        "quantize-calib-garbled",
        ["quantize", "--model", "tiny", "--name", "q", "--algo", "gptq", "--calib-data", "{t}/c.jsonl"],
        {"c.jsonl": '{"text": \n'},
        1,
        None,
    ),
    (
        "quantize-calib-too-short",
        ["quantize", "--model", "tiny", "--name", "q", "--algo", "gptq", "--calib-data", "{t}/c.txt"],
        {"c.txt": "short text"},
        1,
        None,
    ),
    ("quantize-needs-calib", ["quantize", "--model", "tiny", "--name", "q", "--algo", "gptq"], {}, 1, None),
    ("prune-sparsity-range", ["prune", "--model", "tiny", "--name", "p", "--sparsity", "1.5"], {}, 2, None),
    ("prune-bad-pattern", ["prune", "--model", "tiny", "--name", "p", "--pattern", "4:2"], {}, 2, None),
    (
        "prune-needs-calib",
        ["prune", "--model", "tiny", "--name", "p", "--method", "wanda", "--sparsity", "0.5"],
        {},
        1,
        None,
    ),
    # ---- merge-lora ---------------------------------------------------------------------------------------------
    ("merge-not-an-adapter", ["merge-lora", "--adapter", "tiny", "--name", "m"], {}, 1, None),
    ("merge-adapter-missing", ["merge-lora", "--adapter", "{t}/nope", "--name", "m"], {}, 1, None),
    (
        "merge-adapter-config-garbled",
        ["merge-lora", "--adapter", "{t}/ad", "--name", "m"],
        {"ad/adapter_config.json": "{oops"},
        1,
        None,
    ),
    # ---- eval ---------------------------------------------------------------------------------------------------
    ("eval-unknown-task", ["eval", "--model", "tiny", "--tasks", "hellaswg"], {}, 1, None),
    ("eval-limit-zero", ["eval", "--model", "tiny", "--tasks", "hellaswag", "--limit", "0"], {}, 2, None),
    ("eval-bad-gate", ["eval", "--model", "tiny", "--tasks", "hellaswag", "--fail-under", "hellaswag"], {}, 2, None),
    (
        "eval-missing-data",
        ["eval", "--model", "tiny", "--tasks", "arc_easy", "--data-dir", "{t}/data"],
        {"data/readme.txt": "x"},
        1,
        None,
    ),
    (
        "eval-garbled-data",
        ["eval", "--model", "tiny", "--tasks", "hellaswag", "--data-dir", "{t}/data"],
        {"data/hellaswag/hellaswag_val.jsonl": '{"ctx": "a", garbled\n'},
        1,
        None,
    ),
    (
        "eval-perplexity-missing-file",
        ["eval", "--model", "tiny", "--tasks", "perplexity", "--data", "{t}/nope.txt"],
        {},
        1,
        None,
    ),
    (
        "eval-stride-above-seqlen",
        ["eval", "--model", "tiny", "--tasks", "perplexity", "--seqlen", "64", "--stride", "128"],
        {},
        2,
        None,
    ),
    (
        "eval-output-under-file",
        ["eval", "--model", "tiny", "--tasks", "perplexity", "--data", "{t}/c.txt", "--output", "{t}/f/r.json"],
        {"c.txt": "hello " * 50, "f": "x"},
        1,
        None,
    ),
]

EXPECTED_PATH = Path(__file__).with_name("bad_inputs_expected.json")
EXPECTED: dict = json.loads(EXPECTED_PATH.read_text()) if EXPECTED_PATH.is_file() else {}


def _build(t: Path, h: Path, files: dict) -> None:
    for rel, content in files.items():
        if rel == "!alpaca":
            _alpaca(t).rename(t / "a.jsonl")
        elif rel.startswith("!"):
            content(h)
        else:
            _w(t / rel, content)


def _snapshot(h: Path) -> tuple[list[str], list[str]]:
    models = h / "models"
    return (
        sorted(p.name for p in models.iterdir()) if models.is_dir() else [],
        sorted(p.name for p in (h / "runs").iterdir()) if (h / "runs").is_dir() else [],
    )


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, cli, tiny_model, tmp_path, llmctl_home):
    name, args, files, code, line = case
    t = tmp_path / "case"
    t.mkdir()
    (t / "a.jsonl").write_text('{"text": "a"}\n') if "!alpaca" not in files else None
    _build(t, llmctl_home, files)
    before = _snapshot(llmctl_home)
    res = cli(*[a.replace("{t}", str(t)).replace("{h}", str(llmctl_home)) for a in args])
    first = res.stderr.splitlines()[0] if res.stderr else ""
    if os.environ.get("LLMCTL_RECORD_BAD_INPUTS"):  # refresh the expected lines (review the diff!)
        record = Path(os.environ["LLMCTL_RECORD_BAD_INPUTS"])
        seen = json.loads(record.read_text()) if record.is_file() else {}
        seen[name] = [res.exit_code, first.replace(str(t), "{t}").replace(str(llmctl_home), "{h}"), res.stderr]
        record.write_text(json.dumps(seen, indent=1))
    expected = (line or EXPECTED.get(name, "")).replace("{t}", str(t)).replace("{h}", str(llmctl_home))
    assert (res.exit_code, first) == (code, expected), res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert first.startswith("Error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    if "!db" not in files:
        assert _snapshot(llmctl_home) == before, "a refused command leaves nothing behind"
        assert [e["name"] for e in json.loads(cli("models", "list", "--json").stdout)] == ["tiny"]


def test_corpus_is_large_enough():
    assert len(CASES) >= 80
