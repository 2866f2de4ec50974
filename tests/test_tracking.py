"""`--report-to mlflow,wandb`: a run's params, per-step metrics, artifacts and lineage in MLflow's store and W&B's
offline run files; resume continues the same runs; eval adds its metrics to the producing run; bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import write_jsonl

pytest.importorskip("mlflow", reason="the mlflow extra (make setup installs it)")
pytest.importorskip("wandb", reason="the wandb extra (make setup installs it)")

TINY_RUN = ["--batch-size", "2", "--seq-len", "64", "--dtype", "float32", "--device", "cpu", "--set", "lora.r=4"]


@pytest.fixture(autouse=True)
def no_tracker_env(monkeypatch):
    """The user's own tracker settings must not leak into a test (each test's store lives in its LLMCTL_HOME)."""
    for var in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "LLMCTL_REPORT_TO"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    words = ["fox", "dog", "Paris", "plants", "tokens", "models"]
    rows = [
        {"instruction": f"Say {words[i % 6]}.", "input": "", "output": f"The {words[(i + 1) % 6]}."} for i in range(16)
    ]
    return write_jsonl(tmp_path / "alpaca.jsonl", rows)


def mlflow_runs(home: Path, experiment: str = "llmctl"):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def wandb_records(run_dir: Path) -> list:
    """Every record of a run's offline `.wandb` files (LevelDB-log framing: 7-byte file header, 32 KiB blocks,
    7-byte record headers), parsed with wandb's own protobuf; wandb 0.31 ships no Python reader for them."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        buf, i, pending = path.read_bytes(), 7, b""
        assert buf[:4] == b":W&B"
        while i + 7 <= len(buf):
            if 32768 - i % 32768 < 7:  # a block's tail too short for a header is padding
                i += 32768 - i % 32768
                continue
            _crc, n, kind = struct.unpack("<IHB", buf[i : i + 7])
            data, i = buf[i + 7 : i + 7 + n], i + 7 + n
            pending = data if kind in (1, 2) else pending + data  # FULL/FIRST start a record, MIDDLE/LAST extend
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(pending)
                out.append(rec)
    return out


def history(records: list) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows


def test_finetune_reports_to_mlflow_and_wandb_and_eval_adds_its_metrics(cli, tiny_model, alpaca_file, llmctl_home):
    from mlflow import MlflowClient

    from llmctl.models.registry import Registry

    r = cli(
        "finetune", "--model", tiny_model, "--data", alpaca_file, "--name", "tiny-lora", "--max-steps", "3",
        "--eval-every", "2", "--report-to", "tensorboard,csv,mlflow,wandb", *TINY_RUN,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    entry, run_dir = Registry().get("tiny-lora"), llmctl_home / "runs" / "tiny-lora"
    (run,) = mlflow_runs(llmctl_home)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-lora"
    assert run.data.params["method"] == "lora" and run.data.params["lora.r"] == "4"
    assert run.data.params["tracking.report_to"] == '["tensorboard", "csv", "mlflow", "wandb"]'
    tags = run.data.tags
    assert tags["llmctl.name"] == "tiny-lora" and tags["llmctl.parents"] == "tiny" and tags["llmctl.kind"] == "finetune"
    assert tags["llmctl.command"] == entry.command and "--report-to" in entry.command
    client = MlflowClient(f"sqlite:///{llmctl_home / 'mlflow' / 'mlflow.db'}")
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3]
    csv_rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert losses[-1].value == pytest.approx(float(csv_rows[-1].split(",")[1]), rel=1e-6)
    assert {"lr", "tokens_per_s", "grad_norm", "eval_loss"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss.png", "llmctl-config.yaml", "metrics.csv"} <= artifacts

    records = wandb_records(run_dir)
    (wrun,) = [x.run for x in records if x.WhichOneof("record_type") == "run"]
    state = json.loads((run_dir / "tracking.json").read_text())
    assert wrun.run_id == state["wandb"]["id"] and wrun.display_name == "tiny-lora" and wrun.project == "llmctl"
    assert list(wrun.tags) == ["finetune", "tiny"]
    config = {}
    for x in records:
        if x.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in x.config.update})
    assert config["lora.r"] == "4" and config["llmctl.parents"] == "tiny" and config["llmctl.command"] == entry.command
    rows = history(records)
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3]
    assert [row["loss"] for row in rows if "loss" in row][-1] == pytest.approx(losses[-1].value, rel=1e-6)
    saved = {f.path for x in records if x.WhichOneof("record_type") == "files" for f in x.files.files}
    assert {"loss.png", "llmctl-config.yaml", "metrics.csv"} <= saved

    text = llmctl_home / "wiki.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    e = cli("eval", "--model", "tiny-lora", "--tasks", "perplexity", "--data", text,
            "--seqlen", "64", "--stride", "64", "--device", "cpu")  # fmt: skip
    assert e.exit_code == 0, e.stderr
    assert "Warning" not in e.stderr
    ppl = Registry().get("tiny-lora").metrics["perplexity.token_perplexity"]
    (run,) = mlflow_runs(llmctl_home)  # the same run, not a new one
    assert run.data.metrics["perplexity.token_perplexity"] == pytest.approx(ppl, rel=1e-9)
    (step,) = [m.step for m in client.get_metric_history(run.info.run_id, "perplexity.token_perplexity")]
    assert step == 3
    later = [row for row in history(wandb_records(run_dir)) if "perplexity.token_perplexity" in row]
    assert [row["perplexity.token_perplexity"] for row in later] == [pytest.approx(ppl, rel=1e-9)]


def test_resume_continues_the_same_runs(tiny_model, alpaca_file, llmctl_home):
    from mlflow import MlflowClient

    from llmctl.config.profiles import resolve_config
    from llmctl.finetune import finetune

    explicit = {"train.max_steps": 4, "train.batch_size": 2, "train.seq_len": 64, "train.dtype": "float32",
                "train.device": "cpu", "train.eval_every": 0, "lora.r": 4, "tracking.report_to": ["mlflow", "wandb"],
                "tracking.experiment": "resumed"}  # fmt: skip
    config = resolve_config("finetune", None, [], explicit)
    finetune(tiny_model, alpaca_file, "tiny-r", config, stop_after=2)
    run_dir = llmctl_home / "runs" / "tiny-r"
    first = json.loads((run_dir / "tracking.json").read_text())
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "tensorboard").exists()  # not asked for
    finetune(tiny_model, alpaca_file, "tiny-r", config, resume=True)
    again = json.loads((run_dir / "tracking.json").read_text())
    assert again["mlflow"]["run_id"] == first["mlflow"]["run_id"] and again["wandb"]["id"] == first["wandb"]["id"]
    (run,) = mlflow_runs(llmctl_home, "resumed")
    assert run.info.run_id == first["mlflow"]["run_id"] and run.info.status == "FINISHED"
    client = MlflowClient(f"sqlite:///{llmctl_home / 'mlflow' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    records = wandb_records(run_dir)
    assert {x.run.run_id for x in records if x.WhichOneof("record_type") == "run"} == {first["wandb"]["id"]}
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2  # one per process, one id: `wandb sync` joins them
    assert [row["step"] for row in history(records) if "loss" in row] == [1, 2, 3, 4]


def test_pretrain_reports_to_mlflow_with_lineage(cli, tmp_path, llmctl_home):
    from test_pretrain import TINY, _docs, make_data
    from transformers import AutoTokenizer

    from conftest import build_tiny_tokenizer
    from llmctl.models.registry import ModelEntry, Registry

    build_tiny_tokenizer(tmp_path / "tok")
    data = make_data(tmp_path / "data", AutoTokenizer.from_pretrained(tmp_path / "tok"), _docs(120))
    Registry().add(ModelEntry(name="data-a", format="data", path=str(data)))
    r = cli("pretrain", "--data", data, "--name", "pt", "--max-steps", "3", *TINY, "--report-to", "mlflow")
    assert r.exit_code == 0, r.stderr
    (run,) = mlflow_runs(llmctl_home)
    assert run.data.tags["llmctl.kind"] == "pretrain" and run.data.tags["llmctl.parents"] == "data-a"
    assert run.data.params["model.hidden_size"] == "32" and {"loss", "lr", "tokens_per_s"} <= set(run.data.metrics)
    assert run.info.status == "FINISHED" and not (llmctl_home / "runs" / "pt" / "tensorboard").exists()


@pytest.mark.slow
def test_only_rank_0_reports_under_torchrun(tmp_path):
    import subprocess

    from test_pretrain import LLMCTL, TINY, TORCHRUN, _docs, _env, make_data
    from transformers import AutoTokenizer

    from conftest import build_tiny_tokenizer

    build_tiny_tokenizer(tmp_path / "tok")
    data = make_data(tmp_path / "data", AutoTokenizer.from_pretrained(tmp_path / "tok"), _docs(120))
    home = tmp_path / "home"
    args = ["pretrain", "--data", str(data), "--name", "m", "--max-steps", "3", *TINY, "--report-to", "mlflow,wandb"]
    two = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node", "2", LLMCTL, *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    (run,) = mlflow_runs(home)
    assert run.info.status == "FINISHED" and run.data.tags["llmctl.name"] == "m"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert len(list((home / "runs" / "m").glob("wandb/offline-run-*"))) == 1


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_missing_extra_is_one_error_line(cli, tiny_model, alpaca_file, monkeypatch, llmctl_home, tracker):
    import sys

    monkeypatch.setitem(sys.modules, tracker, None)  # `import TRACKER` fails, as when the extra is not installed
    r = cli("finetune", "--model", tiny_model, "--data", alpaca_file, "--name", "x", "--report-to", f"csv,{tracker}")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        f"Error: --report-to {tracker}: the {tracker} package is not installed; pip install 'llmctl[{tracker}]' "
        f"(or drop {tracker} from --report-to)"
    ]
    assert not (llmctl_home / "runs" / "x").exists()


def test_mlflow_tracking_uri_is_honoured(tmp_path, monkeypatch, llmctl_home):
    from llmctl.config.profiles import resolve_config
    from llmctl.training.tracking import read_state, start

    uri = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = resolve_config("pretrain", None, [], {"tracking.report_to": ["mlflow"], "tracking.experiment": "team"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = start(run_dir, config, kind="pretrain", name="p", parents=[], command="llmctl pretrain", resume=False)
    tracker.log(1, {"loss": 2.5, "note": "text is not a metric"})
    tracker.finish([])
    import mlflow

    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["team"], output_format="list")
    assert run.data.metrics == {"loss": 2.5} and read_state(run_dir)["mlflow"]["tracking_uri"] == uri
    assert not (llmctl_home / "mlflow").exists()


def test_unknown_report_to_value_is_a_usage_error(cli, alpaca_file):
    r = cli("finetune", "--data", alpaca_file, "--name", "x", "--report-to", "tensorboard,neptune")
    assert r.exit_code == 2
    assert "--report-to" in r.stderr and "tensorboard, csv, mlflow, wandb" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_registry_metrics_go_to_the_producing_run_else_a_run_of_their_own(tiny_llama_dir, monkeypatch, llmctl_home):
    """quantize / prune / export publish entries with metrics: they reach the run up the lineage that was tracked,
    prefixed with the derived model's name; a model with no tracked lineage gets a run of its own when
    LLMCTL_REPORT_TO asks for one, and none otherwise."""
    from llmctl.config.profiles import resolve_config
    from llmctl.models.registry import ModelEntry, Registry
    from llmctl.training.tracking import start

    config = resolve_config("finetune", None, [], {"tracking.report_to": ["mlflow"]})
    run_dir = llmctl_home / "runs" / "parent"
    run_dir.mkdir(parents=True)
    tracker = start(run_dir, config, kind="finetune", name="parent", parents=["tiny"], command="llmctl x", resume=False)
    tracker.log(5, {"loss": 1.0})
    tracker.finish([])
    reg = Registry()
    reg.add(ModelEntry(name="parent", format="hf", path=str(tiny_llama_dir), meta={"run_dir": str(run_dir)},
                       metrics={"finetune.train_loss": 1.0}))  # fmt: skip
    reg.add(ModelEntry(name="mid", format="hf", path=str(tiny_llama_dir), parents=["parent"]))
    reg.add(ModelEntry(name="child+q", format="hf", path=str(tiny_llama_dir), parents=["mid"],
                       metrics={"heldout.perplexity": 12.5}))  # fmt: skip
    (run,) = mlflow_runs(llmctl_home)
    assert "finetune.train_loss" not in run.data.metrics  # the run's own model: the run logged its values itself
    assert run.data.metrics["child_q/heldout.perplexity"] == 12.5 and "llmctl.derived.child_q" in run.data.tags

    reg.add(ModelEntry(name="alone", format="hf", path=str(tiny_llama_dir), metrics={"heldout.perplexity": 9.0}))
    assert len(mlflow_runs(llmctl_home)) == 1  # no tracked lineage, no LLMCTL_REPORT_TO: nothing new
    monkeypatch.setenv("LLMCTL_REPORT_TO", "mlflow")
    reg.update_metrics("alone", {"hellaswag.acc": 0.25})
    own = [r for r in mlflow_runs(llmctl_home) if r.data.tags["llmctl.name"] == "alone"]
    assert len(own) == 1 and own[0].data.metrics == {"hellaswag.acc": 0.25}
