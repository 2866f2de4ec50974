"""Long contexts: RoPE scaling across commands (config.json round trip, run-time overrides in lineage), the passkey
task and its heat-map, perplexity by length bucket, and the bad inputs (one clear line each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import _CORPUS, write_jsonl

ROPE = {"scaling": "yarn", "factor": 2.0, "original_max_length": None}
EVAL = ["--device", "cpu", "--dtype", "float32"]
FT = [
    "--max-steps",
    "2",
    "--batch-size",
    "2",
    "--seq-len",
    "64",
    "--eval-every",
    "0",
    "--dtype",
    "float32",
    "--device",
    "cpu",
    "--set",
    "train.warmup_steps=1",
    "--set",
    "lora.r=4",
]


@pytest.fixture
def alpaca(tmp_path) -> Path:
    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"The {w} is here."} for w in ["fox", "dog"] * 8]
    return write_jsonl(tmp_path / "a.jsonl", rows)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "long.txt"
    path.write_text(" ".join(_CORPUS) * 2, encoding="utf-8")
    return path


# ---- the transformers form -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, max_pos, extra",
    [
        ("linear", 512, {}),
        ("dynamic", 256, {}),  # dynamic NTK reads max_position_embeddings as the trained length
        ("yarn", 512, {"original_max_position_embeddings": 256}),
        ("llama3", 512, {"original_max_position_embeddings": 256, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    ],
)
def test_scale_config_writes_transformers_form(tiny_llama_dir, kind, max_pos, extra):
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import rope_config_validation

    from llmctl.models.rope import context_length, describe, original_length, scale_config

    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    written = scale_config(cfg, {"scaling": kind, "factor": 2.0, "original_max_length": None})
    assert written == {"rope_type": kind, "factor": 2.0, **extra}
    assert cfg.max_position_embeddings == max_pos and context_length(cfg) == 512 and original_length(cfg) == 256
    rope_config_validation(cfg)  # transformers' own check accepts it
    assert describe(cfg) == f"{kind} x2 (256 → 512)"


def test_run_time_override_changes_long_inputs_only_as_each_type_should(tiny_llama_dir):
    import torch

    from llmctl.models.loading import load_model

    ids = torch.arange(3, 303).remainder(380)[None]  # 300 tokens: past the model's 256 positions
    plain = load_model(str(tiny_llama_dir), dtype="float32", device="cpu").model
    dyn = load_model(
        str(tiny_llama_dir),
        dtype="float32",
        device="cpu",
        rope={"scaling": "dynamic", "factor": 2.0, "original_max_length": None},
    )
    yarn = load_model(str(tiny_llama_dir), dtype="float32", device="cpu", rope=ROPE)
    assert dyn.info["rope"]["rope_scaling"] == {"rope_type": "dynamic", "factor": 2.0}
    assert yarn.info["rope"]["was"] == "none" and yarn.model.model.rotary_emb.rope_type == "yarn"
    with torch.no_grad():
        short = [m(ids[:, :100]).logits for m in (plain, dyn.model)]
        long = [m(ids).logits for m in (plain, dyn.model, yarn.model)]
    assert torch.allclose(short[0], short[1])  # dynamic leaves sequences within the trained length alone
    assert not torch.allclose(long[0], long[1]) and not torch.allclose(long[0], long[2])


# ---- config.json round trip through training, adapters and merging --------------------------------------------


def test_full_finetune_writes_rope_scaling_into_config_json(cli, tiny_model, alpaca):
    from transformers import AutoConfig

    from llmctl.models.loading import load_model
    from llmctl.models.registry import Registry

    res = cli(
        "finetune",
        "--model",
        tiny_model,
        "--method",
        "full",
        "--data",
        alpaca,
        "--name",
        "long",
        *FT,
        "--rope-scaling",
        "yarn",
        "--rope-factor",
        "2",
    )
    assert res.exit_code == 0, res.stderr
    entry = Registry().get("long")
    saved = json.loads((Path(entry.path) / "config.json").read_text())
    assert saved["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256}
    assert saved["max_position_embeddings"] == 512
    assert AutoConfig.from_pretrained(entry.path).rope_scaling["rope_type"] == "yarn"
    assert entry.meta["rope_scaling"]["context"] == "yarn x2 (256 → 512)"
    assert load_model("long", dtype="float32", device="cpu").model.model.rotary_emb.rope_type == "yarn"


def test_lora_adapter_keeps_its_scaling_for_generate_and_merge(cli, tiny_model, alpaca):
    from llmctl.models.loading import load_model
    from llmctl.models.registry import Registry

    res = cli(
        "finetune",
        "--model",
        tiny_model,
        "--data",
        alpaca,
        "--name",
        "ad",
        *FT,
        "--rope-scaling",
        "linear",
        "--rope-factor",
        "2",
    )
    assert res.exit_code == 0, res.stderr
    folder = Path(Registry().get("ad").path)
    assert json.loads((folder / "llmctl-rope.json").read_text())["rope_scaling"] == {
        "rope_type": "linear",
        "factor": 2.0,
    }
    base = load_model("ad", dtype="float32", device="cpu").model.get_base_model()
    assert base.config.rope_scaling["rope_type"] == "linear" and base.model.rotary_emb.rope_type == "linear"
    merged = cli("merge-lora", "--adapter", "ad", "--name", "ad-merged")
    assert merged.exit_code == 0, merged.stderr
    cfg = json.loads((Path(Registry().get("ad-merged").path) / "config.json").read_text())
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 2.0} and cfg["max_position_embeddings"] == 512


def test_pretrain_writes_rope_scaling_and_gpt2_refuses_it(cli, tmp_path, llmctl_home):
    from test_pretrain import TINY, _docs, make_data
    from transformers import AutoTokenizer

    from conftest import build_tiny_tokenizer

    build_tiny_tokenizer(tmp_path / "tok")
    data = make_data(tmp_path / "data", AutoTokenizer.from_pretrained(tmp_path / "tok"), _docs(200))
    res = cli(
        "pretrain",
        "--data",
        data,
        "--name",
        "p",
        "--max-steps",
        "2",
        *TINY,
        "--seq-len",
        "96",
        "--rope-scaling",
        "linear",
        "--rope-factor",
        "2",
    )  # 96 > 64 positions: within 64 x 2
    assert res.exit_code == 0, res.stderr
    cfg = json.loads((llmctl_home / "models" / "p" / "config.json").read_text())
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 2.0} and cfg["max_position_embeddings"] == 128
    bad = cli(
        "pretrain",
        "--data",
        data,
        "--name",
        "g",
        *TINY,
        "--set",
        "model.arch=gpt2",
        "--rope-scaling",
        "yarn",
        "--rope-factor",
        "2",
    )
    assert bad.exit_code == 1
    assert bad.stderr.startswith("Error: --rope-scaling yarn: a gpt2 model (gpt2) has no rotary position embeddings")
    assert not (llmctl_home / "runs" / "g").exists()


def test_generate_and_eval_record_the_run_time_override(cli, tiny_model, tmp_path, text_file):
    from llmctl.models.registry import Registry

    g = cli(
        "generate",
        "--model",
        tiny_model,
        "--prompt",
        "Say fox.",
        "--max-new-tokens",
        "3",
        *EVAL,
        "--rope-scaling",
        "dynamic",
        "--rope-factor",
        "2",
        "--json",
    )
    assert g.exit_code == 0, g.stderr
    assert json.loads(g.stdout)["stats"]["rope_scaling"]["rope_scaling"] == {"rope_type": "dynamic", "factor": 2.0}
    out = tmp_path / "r.json"
    e = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "perplexity",
        "--data",
        text_file,
        *EVAL,
        "--output",
        out,
        "--rope-scaling",
        "yarn",
        "--rope-factor",
        "2",
        "--rope-original-length",
        "128",
    )
    assert e.exit_code == 0, e.stderr
    block = json.loads(out.read_text())["llmctl"]["rope_scaling"]
    assert block["rope_scaling"]["original_max_position_embeddings"] == 128 and block["max_position_embeddings"] == 256
    assert Registry().get(tiny_model).meta["eval"]["perplexity"]["rope_scaling"]["rope_scaling"]["rope_type"] == "yarn"


# ---- passkey -------------------------------------------------------------------------------------------------


def test_passkey_prompts_are_exact_length_with_the_key_at_its_depth(tiny_llama_dir):
    from llmctl.evaluate.passkey import NEEDLE, QUESTION, build, cells
    from llmctl.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_llama_dir))
    needle = tok(NEEDLE.format(key="12345"), add_special_tokens=False)["input_ids"]
    spots = []
    for depth in (0.0, 0.5, 1.0):
        prompt, answer = build(tok, 400, depth, "12345")
        assert len(prompt) == 400 and tok.decode(answer).strip() == "12345"
        at = next(i for i in range(len(prompt)) if prompt[i : i + len(needle)] == needle)
        spots.append(at)
    question = tok(QUESTION, add_special_tokens=False)["input_ids"]
    assert spots[0] < spots[1] < spots[2] == 400 - len(question) - len(needle)
    keys = cells({"context_lengths": [256, 512], "depths": [0.0, 1.0], "samples": 3, "digits": 5}, seed=7)
    assert len(keys) == 12 and len({c["key"] for c in keys}) == 12 and all(len(c["key"]) == 5 for c in keys)
    assert keys == cells({"context_lengths": [256, 512], "depths": [0.0, 1.0], "samples": 3, "digits": 5}, seed=7)


def test_retrieval_is_greedy_decoding_of_the_key():
    import torch

    from llmctl.evaluate.passkey import retrieved

    class Stub(torch.nn.Module):
        """Predicts `then` after the prompt: logits for the last positions only (logits_to_keep)."""

        def __init__(self, then: list[int]):
            super().__init__()
            self.then = then

        def forward(self, input_ids, use_cache=False, logits_to_keep=0):
            logits = torch.zeros(1, logits_to_keep, 50)
            for i, t in enumerate(self.then[:logits_to_keep]):
                logits[0, i, t] = 1.0
            return type("Out", (), {"logits": logits})()

    assert retrieved(Stub([7, 8, 9]), [1, 2, 3], [7, 8, 9], "cpu")
    assert not retrieved(Stub([7, 8, 1]), [1, 2, 3], [7, 8, 9], "cpu")


def test_passkey_cli_table_metrics_and_heat_map(cli, tiny_model, tmp_path):
    out = tmp_path / "pk.json"
    res = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "passkey",
        "--context-lengths",
        "256,320",
        "--set",
        "passkey.depths=[0,0.5,1]",
        "--set",
        "passkey.samples=2",
        *EVAL,
        "--output",
        out,
    )
    assert res.exit_code == 0, res.stderr
    body = json.loads(out.read_text())
    cfg = body["configs"]["passkey"]
    assert cfg["context_lengths"] == [256, 320] and cfg["depths"] == [0, 0.5, 1] and cfg["samples"] == 2
    assert len(cfg["table"]) == 3 and all(len(row) == 2 for row in cfg["table"])
    assert all(v in (0.0, 0.5, 1.0) for row in cfg["table"] for v in row)
    metrics = body["llmctl"]["metrics"]
    assert set(metrics) == {"passkey.acc", "passkey.acc@256", "passkey.acc@320"}
    png = tmp_path / "pk.passkey.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "passkey accuracy (2 per cell)" in res.stdout and "50%" in res.stdout
    gate = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "passkey",
        "--context-lengths",
        "256",
        "--set",
        "passkey.samples=1",
        *EVAL,
        "--fail-under",
        "passkey.acc@256=1.01",
        "--no-attach",
    )
    assert gate.exit_code == 3 and "passkey.acc@256" in gate.stderr


# ---- perplexity by length bucket -------------------------------------------------------------------------------


def test_length_buckets_add_up_to_the_whole(tiny_llama_dir, text_file):
    import math

    from llmctl.evaluate.perplexity import perplexity
    from llmctl.models.loading import load_model

    m = load_model(str(tiny_llama_dir), dtype="float32", device="cpu")
    res = perplexity(m.model, m.tokenizer, text_file.read_text(), buckets=[16, 64, 128])
    assert res["seqlen"] == res["stride"] == 128
    assert [(b["from"], b["to"]) for b in res["buckets"]] == [(0, 16), (16, 64), (64, 128)]
    assert sum(b["tokens"] for b in res["buckets"]) == res["scored_tokens"]
    pooled = sum(b["tokens"] * math.log(b["perplexity"]) for b in res["buckets"]) / res["scored_tokens"]
    assert math.exp(pooled) == pytest.approx(res["perplexity"], rel=1e-6)  # float32 sums per bucket


def test_length_buckets_cli(cli, tiny_model, text_file):
    res = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "perplexity",
        "--data",
        text_file,
        *EVAL,
        "--length-buckets",
        "32,128",
        "--json",
        "--no-attach",
    )
    assert res.exit_code == 0, res.stderr
    metrics = json.loads(res.stdout)["metrics"]
    assert metrics["perplexity.token_perplexity@0-32"] > 1 and metrics["perplexity.token_perplexity@32-128"] > 1


# ---- bad input: one line each ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code, first",
    [
        (["--rope-scaling", "yarn", "--rope-factor", "1"], 2, "Error: --rope-factor 1: must be greater than 1"),
        (
            ["--rope-scaling", "yarn"],
            2,
            "Error: rope.scaling and rope.factor go together (e.g. --rope-scaling yarn --rope-factor 4); got "
            "--rope-scaling yarn and rope.factor null (default)",
        ),
        (
            ["--rope-scaling", "ntk", "--rope-factor", "2"],
            2,
            "Error: --rope-scaling ntk: must be one of linear, dynamic, yarn, llama3",
        ),
        (["--rope-original-length", "512"], 2, "Error: rope.original_max_length needs rope.scaling"),
    ],
)
def test_bad_rope_options(cli, tiny_model, args, code, first):
    res = cli("generate", "--model", tiny_model, "--prompt", "x", *args)
    assert res.exit_code == code
    assert res.stderr.startswith(first), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_scaling_refused_for_a_model_without_rope(cli, tiny_gpt2_dir):
    res = cli(
        "eval",
        "--model",
        tiny_gpt2_dir,
        "--tasks",
        "passkey",
        "--context-lengths",
        "200",
        *EVAL,
        "--rope-scaling",
        "yarn",
        "--rope-factor",
        "2",
    )
    assert res.exit_code == 1
    assert res.stderr.startswith(
        f"Error: --rope-scaling yarn: {tiny_gpt2_dir} (gpt2) has no rotary position embeddings to scale; "
    )
    res = cli("eval", "--model", tiny_gpt2_dir, "--tasks", "passkey", "--context-lengths", "512", *EVAL)
    assert res.exit_code == 1
    assert res.stderr.startswith(
        "Error: --context-lengths 512 is longer than the model can take: it has 256 learned positions"
    )


def test_length_beyond_memory_is_refused_before_loading(cli, tiny_model, monkeypatch):
    import llmctl.models.loading

    monkeypatch.setenv("LLMCTL_MEMORY_BYTES", str(50 * 2**20))
    monkeypatch.setattr(llmctl.models.loading, "load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    res = cli("eval", "--model", tiny_model, "--tasks", "passkey", "--context-lengths", "1024,65536", *EVAL)
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: --context-lengths 65536 needs about ")
    assert "for one forward pass of the model (weights 0.0 GiB, kv cache 0.0 GiB, activations" in res.stderr
    assert "cpu has 0.0 GiB available" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_other_bad_long_context_inputs(cli, tiny_model, tmp_path, text_file, alpaca, monkeypatch):
    short = tmp_path / "short.txt"
    short.write_text("The quick brown fox.", encoding="utf-8")
    res = cli(
        "eval", "--model", tiny_model, "--tasks", "perplexity", "--data", short, *EVAL, "--length-buckets", "64,128"
    )
    assert res.exit_code == 1
    assert (
        res.stderr.startswith("Error: the text has ")
        and "length buckets up to 128 need at least that many" in res.stderr
    )
    res = cli(
        "eval", "--model", tiny_model, "--tasks", "perplexity", "--data", text_file, *EVAL, "--plot", tmp_path / "x.png"
    )
    assert res.exit_code == 2 and res.stderr.startswith("Error: --plot draws the passkey heat-map")
    res = cli("eval", "--model", tiny_model, "--tasks", "passkey", "--context-lengths", "100", *EVAL)
    assert res.exit_code == 1 and res.stderr.startswith("Error: passkey length 100 is too short for the prompt's")
    monkeypatch.setenv("LLMCTL_MEMORY_BYTES", str(2**20))
    res = cli("finetune", "--model", tiny_model, "--data", alpaca, "--name", "x", *FT, "--seq-len", "4096")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: this run needs about ") and "--seq-len" in res.stderr  # training estimate
