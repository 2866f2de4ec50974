"""`llmctl generate` on tiny models (service + CLI) and on the real default model."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from llmctl.config.profiles import resolve_config
from llmctl.errors import LlmctlError
from llmctl.inference.generate import generate, read_prompts_jsonl, trim_at_stop


def cfg(**over):
    return resolve_config("generate", explicit={"device": "cpu", **over})


def test_greedy_is_deterministic_and_batch_matches_single(tiny_model):
    items = [
        {"id": 1, "prompt": "The quick brown fox"},
        {"id": 2, "prompt": "Paris"},
        {"id": 3, "prompt": "Language models predict the next token from"},
    ]
    batched = generate(tiny_model, items, cfg(max_new_tokens=12, batch_size=3, chat=False))
    singles = [generate(tiny_model, [it], cfg(max_new_tokens=12, chat=False)).items[0]["output"] for it in items]
    assert [r["output"] for r in batched.items] == singles  # left padding + attention masks are right
    assert [r["id"] for r in batched.items] == [1, 2, 3]
    assert batched.stats["new_tokens"] == sum(r["new_tokens"] for r in batched.items) > 0


def test_sampling_seed_reproducible_and_n_sequences(tiny_model):
    c = cfg(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7, num_return_sequences=3, chat=False)
    a = generate(tiny_model, [{"id": 1, "prompt": "The"}], c).items[0]["outputs"]
    b = generate(tiny_model, [{"id": 1, "prompt": "The"}], c).items[0]["outputs"]
    assert a == b and len(a) == 3


def test_penalties_change_greedy_output(tiny_model):
    base = generate(tiny_model, [{"id": 1, "prompt": "The"}], cfg(max_new_tokens=20, chat=False)).items[0]["output"]
    pen = generate(
        tiny_model,
        [{"id": 1, "prompt": "The"}],
        cfg(max_new_tokens=20, chat=False, frequency_penalty=2.0, presence_penalty=2.0),
    ).items[0]["output"]
    assert base != pen


def test_stop_sequences_trimmed():
    assert trim_at_stop("abc STOP def", ["STOP"]) == ("abc ", True)
    assert trim_at_stop("abc", ["x"]) == ("abc", False)


def test_stop_in_generation(tiny_model):
    full = generate(tiny_model, [{"id": 1, "prompt": "The"}], cfg(max_new_tokens=20, chat=False)).items[0]["output"]
    assert len(full) > 4
    stop = full[2:4]
    cut = generate(tiny_model, [{"id": 1, "prompt": "The"}], cfg(max_new_tokens=20, chat=False, stop=[stop])).items[0]
    assert cut["output"] == full[: full.find(stop)]


def test_chat_messages_and_system(tiny_model):
    items = [{"id": "a", "messages": [{"role": "user", "content": "hi"}]}]
    res = generate(tiny_model, items, cfg(max_new_tokens=4, system="be brief"))
    assert res.items[0]["id"] == "a" and res.items[0]["prompt_tokens"] > 3


def test_read_prompts_jsonl_errors(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(LlmctlError, match="line 2 is not valid JSON"):
        read_prompts_jsonl(p)
    p.write_text('{"text": "a"}\n')
    with pytest.raises(LlmctlError, match='line 1 has no "prompt" or "messages" field'):
        read_prompts_jsonl(p)
    p.write_text("\n\n")
    with pytest.raises(LlmctlError, match="has no records"):
        read_prompts_jsonl(p)


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_single_prompt_json(cli, tiny_model):
    res = cli(
        "generate", "--model", tiny_model, "--prompt", "The quick", "--max-new-tokens", "5", "--json", "--no-chat"
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["model"] == "tiny" and out["results"][0]["new_tokens"] <= 5


def test_cli_stdin_and_stats(cli, tiny_model):
    res = cli("generate", "--model", tiny_model, "--max-new-tokens", "4", "--stats", input="Tell me a joke\n")
    assert res.exit_code == 0, res.stderr
    assert "prompt tokens" in res.stderr and "tokens/s" in res.stderr
    assert res.stdout.endswith("\n")


def test_cli_stream(cli, tiny_model):
    streamed = cli(
        "generate", "--model", tiny_model, "--prompt", "The", "--max-new-tokens", "10", "--stream", "--no-chat"
    )
    plain = cli("generate", "--model", tiny_model, "--prompt", "The", "--max-new-tokens", "10", "--no-chat")
    assert streamed.exit_code == 0 and streamed.stdout == plain.stdout


def test_cli_batch_file(cli, tiny_model, tmp_path):
    inp = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "x", "prompt": "The"}, {"messages": [{"role": "user", "content": "Paris"}]}]
    )
    out = tmp_path / "out.jsonl"
    res = cli("generate", "--model", tiny_model, "--input", inp, "--output", out, "--max-new-tokens", "3")
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["x", 2] and all("output" in r for r in rows)
    assert (tmp_path / "out.jsonl.config.yaml").is_file()
    res = cli("generate", "--model", tiny_model, "--input", inp, "--output", out)
    assert (
        res.exit_code == 1
        and res.stderr == f"Error: --output {out} already exists; pick another path or pass --force\n"
    )


def test_cli_output_checked_before_the_model_loads(cli, tmp_path):
    """A path that cannot be written fails at once, not after generating everything (no model is even looked up)."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out.jsonl"
    reason = f"{tmp_path / 'file'} is a file, not a folder; pick a path whose parent folders are folders"
    res = cli("generate", "--model", "no-such-model", "--prompt", "hi", "--output", out)
    assert (res.exit_code, res.stderr) == (1, f"Error: cannot write --output {out}: {reason}\n")


def test_cli_malformed_jsonl_writes_nothing(cli, tiny_model, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "ok"}\n{oops}\n')
    out = tmp_path / "out.jsonl"
    res = cli("generate", "--model", tiny_model, "--input", inp, "--output", out)
    assert res.exit_code == 1
    assert res.stderr == (
        f"Error: input file {inp} line 2 is not valid JSON (Expecting property name enclosed in "
        'double quotes at column 2); each line must be one JSON object, e.g. {"prompt": "…"}\n'
    )
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "llmctl-home"]


def test_cli_empty_prompt_file(cli, tiny_model, tmp_path):
    inp = tmp_path / "empty.jsonl"
    inp.write_text("")
    res = cli("generate", "--model", tiny_model, "--input", inp)
    assert res.exit_code == 1
    assert res.stderr == (
        f"Error: input file {inp} is empty; give one JSON object per line (.jsonl), "
        'e.g. {"prompt": "…"}, a JSON array of them, or .parquet\n'
    )


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--top-p", "1.5"], "Error: --top-p 1.5: must be greater than 0 and at most 1\n"),
        (["--temperature", "-1"], "Error: --temperature -1: must be at least 0\n"),
        (["--set", "temperature=-1"], "Error: --set temperature=-1: must be at least 0\n"),
        (
            ["--dtype", "fp8"],
            "Error: --dtype fp8: must be one of auto, float32, bfloat16, float16 (or fp32, bf16, fp16)\n",
        ),
    ],
)
def test_cli_out_of_range_options(cli, tiny_model, args, msg):
    res = cli("generate", "--model", tiny_model, "--prompt", "hi", *args)
    assert (res.exit_code, res.stderr) == (2, msg)


def test_cli_unknown_model(cli, tiny_model):
    res = cli("generate", "--model", "tinyy", "--prompt", "hi")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: no model named 'tinyy' in the registry (did you mean: tiny?)")


def test_cli_path_not_a_model(cli, tmp_path):
    res = cli("generate", "--model", str(tmp_path), "--prompt", "hi")
    assert res.exit_code == 1 and "is not a model" in res.stderr


def test_cli_adapter(cli, tiny_model, tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    res = cli(
        "generate",
        "--model",
        tiny_model,
        "--adapter",
        tmp_path / "adapter",
        "--prompt",
        "The",
        "--max-new-tokens",
        "3",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    res = cli("generate", "--model", tiny_model, "--adapter", tiny_model, "--prompt", "The")
    assert res.exit_code == 1 and "is a 'hf' model, not a PEFT adapter" in res.stderr


# ---- the real default model ------------------------------------------------------------------


@pytest.mark.default_model
def test_default_model_answers_paris(cli, default_model):
    res = cli(
        "generate",
        "--model",
        default_model,
        "--prompt",
        "What is the capital of France?",
        "--greedy",
        "--max-new-tokens",
        "20",
    )
    assert res.exit_code == 0, res.stderr
    assert "Paris" in res.stdout


@pytest.mark.default_model
def test_default_model_tokenizer_round_trip(default_model_dir):
    from llmctl.models.loading import load_tokenizer

    tok = load_tokenizer(str(default_model_dir))
    text = "Café naïve — déjà vu 😀🎉\nsecond line\n\ttabbed  double space, 日本語"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token_id is not None
