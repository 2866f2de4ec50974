"""`eval --tasks exact_match|win_rate|preference_accuracy` on tiny models: each metric against a plain, unbatched
computation (one sequence at a time, no padding), gates, registry metrics, a LoRA adapter as the policy, and bad
input as one line with its exit code."""

from __future__ import annotations

import json
import math

import pytest

from conftest import write_jsonl

PROMPTS = ["Capital of France?", "Which gas do plants absorb?", "The quick brown fox", "Language models"]
TOL = 1e-4  # batched (left-padded) vs one-at-a-time fp32 forward passes: sums of ~10 log-probs


@pytest.fixture
def policy(tiny_model, tiny_llama_dir, tmp_path) -> str:
    """A LoRA adapter with random (non-zero) weights on the tiny model, registered as 'pol'."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_alpha=64)
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    import_model(Registry(), str(tmp_path / "adapter"), "pol")
    return "pol"


@pytest.fixture
def reward_model(tiny_llama_dir, tmp_path) -> str:
    """A randomly initialised scalar-head model with the tiny tokenizer, registered as 'rm'."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    cfg.num_labels = 1
    torch.manual_seed(2)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm", safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path / "rm")
    import_model(Registry(), str(tmp_path / "rm"), "rm")
    return "rm"


def _load(name: str):
    from llmctl.models.loading import load_model

    return load_model(name, dtype="float32", device="cpu")


def _prompt_ids(tok, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def _greedy(model, tok, ids: list[int], max_new: int) -> list[int]:
    """The greedy answer of one unpadded prompt, up to and including its end-of-turn token."""
    import torch

    out = model.generate(
        input_ids=torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=tok.eos_token_id
    )[0, len(ids) :].tolist()
    return out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out


def _logps(model, ids: list[int], start: int) -> list[float]:
    """Log-probs of tokens ids[start:] given what precedes them (one full forward pass, full logits)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return [float(logp[i - 1, ids[i]]) for i in range(start, len(ids))]


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


# ---- exact_match ------------------------------------------------------------------------------------------------


def test_extraction_rules():
    from llmctl.evaluate.alignment import matches

    assert matches("number", "So 12 + 30 = 1,234 in all.", "1234")  # GRPO's math_exact: the last number
    assert not matches("number", "42 then 7", "42")
    assert matches("number", "It is -3.", -3)
    assert matches("last_line", "Let me think.\n\n  Paris  \n\n", "Paris")
    assert not matches("last_line", "Paris\nI think", "Paris")
    assert matches("exact", "  Paris\n", "Paris") and not matches("exact", "Paris.", "Paris")


def test_exact_match_against_plain_generation_gates_and_registry(cli, tiny_model, tmp_path):
    from llmctl.models.registry import Registry

    loaded = _load(tiny_model)
    tok = loaded.tokenizer
    outputs = [
        tok.decode(_greedy(loaded.model, tok, _prompt_ids(tok, p), 6), skip_special_tokens=True) for p in PROMPTS
    ]
    assert all(outputs) and len(set(outputs)) > 1  # real, differing answers
    # answers that match the greedy output for the first and third records only
    records = [
        {"prompt": p, "answer": o.strip() if i % 2 == 0 else "no such answer"}
        for i, (p, o) in enumerate(zip(PROMPTS, outputs))
    ]
    data = write_jsonl(tmp_path / "records.jsonl", records)
    common = ["eval", "--model", tiny_model, "--tasks", "exact_match", "--data", data, "--device", "cpu"]
    sets = ["--set", "exact_match.extract=exact", "--set", "exact_match.max_new_tokens=6"]
    out = tmp_path / "res.json"
    r = cli(
        *common,
        *sets,
        "--set",
        "exact_match.batch_size=4",
        "--json",
        "--output",
        out,
        "--log-samples",
        "--fail-under",
        "exact_match.exact_match=0.5",
    )
    assert r.exit_code == 0, r.stderr
    body = json.loads(r.stdout)
    mean, se = _mean_se([1.0, 0.0, 1.0, 0.0])
    assert body["metrics"] == {"exact_match.exact_match": pytest.approx(mean, abs=1e-9)}
    assert body["results"]["exact_match"]["exact_match_stderr,none"] == pytest.approx(se, abs=1e-9)
    samples = [json.loads(line) for line in out.with_name("res.samples_exact_match.jsonl").read_text().splitlines()]
    assert [s["output"] for s in samples] == outputs
    assert Registry().get(tiny_model).metrics["exact_match.exact_match"] == pytest.approx(0.5)
    assert Registry().get(tiny_model).meta["eval"]["exact_match"]["extract"] == "exact"
    r = cli(*common, *sets, "--fail-under", "exact_match.exact_match=0.75")
    assert (r.exit_code, r.stderr.splitlines()[-1]) == (
        3,
        "Error: quality gate failed: exact_match.exact_match 0.5000 < 0.75; the model scores below the "
        "--fail-under threshold",
    )
    # the default rule is math_exact's: none of these answers is a number the model says
    r = cli(*common, "--set", "exact_match.max_new_tokens=6", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["metrics"]["exact_match.exact_match"] == 0.0


# ---- win_rate ---------------------------------------------------------------------------------------------------


def _by_hand_win_rate(policy: str, reference: str, rm_name: str, max_new: int) -> dict[str, list[float]]:
    import torch

    from llmctl.finetune.rewards import load_reward_model

    pol, ref, rm = _load(policy), _load(reference), load_reward_model(rm_name)
    tok = pol.tokenizer
    rows: dict[str, list[float]] = {k: [] for k in ("reward", "reference_reward", "kl_per_answer", "kl_per_token")}
    for prompt in PROMPTS:
        ids = _prompt_ids(tok, prompt)
        mine, theirs = _greedy(pol.model, tok, ids, max_new), _greedy(ref.model, tok, ids, max_new)
        with torch.no_grad():
            r_mine = float(rm.model(input_ids=torch.tensor([ids + mine])).logits[0, 0])
            r_theirs = float(rm.model(input_ids=torch.tensor([ids + theirs])).logits[0, 0])
        kl = sum(
            a - b for a, b in zip(_logps(pol.model, ids + mine, len(ids)), _logps(ref.model, ids + mine, len(ids)))
        )
        rows["reward"].append(r_mine)
        rows["reference_reward"].append(r_theirs)
        rows["kl_per_answer"].append(kl)
        rows["kl_per_token"].append(kl / len(mine))
    return rows


def test_win_rate_against_plain_scoring_with_a_lora_policy(cli, tiny_model, policy, reward_model, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "res.json"
    r = cli(
        "eval",
        "--model",
        policy,
        "--tasks",
        "win_rate",
        "--data",
        data,
        "--reward-model",
        reward_model,
        "--reference",
        tiny_model,
        "--set",
        "win_rate.max_new_tokens=8",
        "--set",
        "win_rate.batch_size=3",
        "--device",
        "cpu",
        "--json",
        "--output",
        out,
        "--log-samples",
        "--fail-under",
        "win_rate.kl_per_token=1000",
    )
    assert r.exit_code == 0, r.stderr
    metrics = json.loads(r.stdout)["metrics"]
    hand = _by_hand_win_rate(policy, tiny_model, reward_model, 8)
    samples = [json.loads(line) for line in out.with_name("res.samples_win_rate.jsonl").read_text().splitlines()]
    for key, values in hand.items():
        assert [s[key] for s in samples] == pytest.approx(values, abs=TOL), key
        assert metrics[f"win_rate.{key}"] == pytest.approx(sum(values) / len(values), abs=TOL), key
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(hand["reward"], hand["reference_reward"])]
    assert metrics["win_rate.win_rate"] == pytest.approx(sum(wins) / len(wins))
    diffs = [a - b for a, b in zip(hand["reward"], hand["reference_reward"])]
    assert metrics["win_rate.reward_diff"] == pytest.approx(sum(diffs) / len(diffs), abs=TOL)
    assert max(abs(k) for k in hand["kl_per_answer"]) > 1e-3  # the adapter changes the model: a real KL
    body = json.loads(out.read_text())
    assert body["configs"]["win_rate"]["prompts"] == 4 and body["configs"]["win_rate"]["reward_model"] == "rm"
    # lower is better for the KL: a gate below it fails
    r = cli(
        "eval",
        "--model",
        policy,
        "--tasks",
        "win_rate",
        "--data",
        data,
        "--reward-model",
        reward_model,
        "--reference",
        tiny_model,
        "--set",
        "win_rate.max_new_tokens=8",
        "--fail-under",
        "win_rate.kl_per_token=-1000",
    )
    assert r.exit_code == 3 and "win_rate.kl_per_token" in r.stderr and "(lower is better)" in r.stderr


def test_win_rate_of_a_model_against_itself_is_one_half(cli, tiny_model, reward_model, shared_data):
    """HH-RLHF pairs as the prompts file; the same model on both sides: every answer ties, no KL."""
    hh = shared_data / "hh-rlhf" / "harmless-base-1800.jsonl"
    r = cli(
        "eval",
        "--model",
        tiny_model,
        "--tasks",
        "win_rate",
        "--data",
        hh,
        "--reward-model",
        reward_model,
        "--reference",
        tiny_model,
        "--set",
        "win_rate.max_prompts=3",
        "--set",
        "win_rate.max_new_tokens=4",
        "--device",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    metrics = json.loads(r.stdout)["metrics"]
    assert metrics["win_rate.win_rate"] == 0.5
    assert metrics["win_rate.reward_diff"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["win_rate.kl_per_answer"] == pytest.approx(0.0, abs=1e-6)


# ---- preference_accuracy ----------------------------------------------------------------------------------------


PAIRS = [
    {"prompt": "Capital of France?", "chosen": "Paris is the capital.", "rejected": "The dog."},
    {"prompt": "Which gas?", "chosen": "Carbon dioxide.", "rejected": "The quick brown fox jumps."},
    {"prompt": "Hi", "chosen": "Hello.", "rejected": "Language models predict the next token."},
]


def test_preference_accuracy_with_and_without_a_reference(cli, tiny_model, policy, tmp_path):
    from llmctl.evaluate.reward import read_pairs

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    pol, ref = _load(policy), _load(tiny_model)
    pairs = read_pairs(data, pol.tokenizer, "auto", 1024, None)[0]

    def logp(model, prompt, reply):
        return sum(_logps(model, prompt + reply, len(prompt)))

    ratio = [
        (logp(pol.model, p.prompt, p.chosen) - logp(ref.model, p.prompt, p.chosen))
        - (logp(pol.model, p.prompt, p.rejected) - logp(ref.model, p.prompt, p.rejected))
        for p in pairs
    ]
    own = [
        logp(pol.model, p.prompt, p.chosen) / len(p.chosen) - logp(pol.model, p.prompt, p.rejected) / len(p.rejected)
        for p in pairs
    ]
    for extra, margins in ((["--reference", tiny_model], ratio), ([], own)):
        r = cli(
            "eval",
            "--model",
            policy,
            "--tasks",
            "preference_accuracy",
            "--data",
            data,
            *extra,
            "--set",
            "preference_accuracy.batch_size=2",
            "--device",
            "cpu",
            "--json",
        )
        assert r.exit_code == 0, r.stderr
        metrics = json.loads(r.stdout)["metrics"]
        assert metrics["preference_accuracy.pair_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
        assert metrics["preference_accuracy.mean_margin"] == pytest.approx(sum(margins) / 3, abs=TOL)
    r = cli(
        "eval",
        "--model",
        policy,
        "--tasks",
        "preference_accuracy",
        "--data",
        data,
        "--fail-under",
        "preference_accuracy.pair_accuracy=1.01",
    )
    assert r.exit_code == 3 and "Error: quality gate failed: preference_accuracy.pair_accuracy" in r.stderr


# ---- bad input: one line, exit code -----------------------------------------------------------------------------


def test_bad_input_is_one_line(cli, tiny_model, reward_model, tmp_path):
    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    win = ["eval", "--model", tiny_model, "--tasks", "win_rate", "--data", prompts, "--device", "cpu"]
    cases = [
        (
            [*win, "--reference", tiny_model],
            2,
            "Error: --tasks win_rate needs --reward-model RM (a model made by finetune --objective reward); got "
            "--tasks win_rate and reward_model null (default)",
        ),
        (
            [*win, "--reward-model", reward_model],
            2,
            "Error: --tasks win_rate needs --reference MODEL (the model whose answers it is compared with); got "
            "--tasks win_rate and reference null (default)",
        ),
        (
            [*win, "--reward-model", tiny_model, "--reference", tiny_model],
            1,
            "Error: tiny is not a reward model (LlamaForCausalLM, no scalar reward head); train one with "
            "`llmctl finetune --objective reward --data PAIRS --name N`",
        ),
        (
            ["eval", "--model", tiny_model, "--tasks", "hellaswag", "--reference", tiny_model],
            2,
            "Error: --reference is for --tasks win_rate or preference_accuracy; got --reference tiny and --tasks "
            "hellaswag",
        ),
        (
            ["eval", "--model", tiny_model, "--tasks", "exact_match"],
            1,
            'Error: task \'exact_match\' needs a records file; pass --data FILE.jsonl ({"prompt": "…", "answer": "…"} '
            "per line)",
        ),
        (
            ["eval", "--model", tiny_model, "--tasks", "preference_accuracy", "--data", tmp_path / "none.jsonl"],
            1,
            f"Error: preference file {tmp_path / 'none.jsonl'} not found; check the --data path",
        ),
    ]
    for args, code, line in cases:
        r = cli(*args)
        assert (r.exit_code, r.stderr) == (code, line + "\n"), args

    records = write_jsonl(tmp_path / "records.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?"}])
    r = cli("eval", "--model", tiny_model, "--tasks", "exact_match", "--data", records)
    assert (r.exit_code, r.stderr) == (
        1,
        f'Error: records file {records} line 2 has no "answer" field (fields: prompt); give '
        '{"prompt": "What is 2 + 3?", "answer": "5"}\n',
    )

    import_model(Registry(), str(Registry().get(tiny_model).path), "ref", link=True)
    assert cli("models", "remove", "ref").exit_code == 0
    r = cli(*win, "--reward-model", reward_model, "--reference", "ref")
    assert (r.exit_code, r.stderr) == (
        1,
        "Error: --reference ref: no model named 'ref' in the registry; see `llmctl models list`, or give a path to "
        "a model folder\n",
    )
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    r = cli("eval", "--model", tiny_model, "--tasks", "preference_accuracy", "--data", pairs, "--reference", "ref")
    assert r.exit_code == 1 and r.stderr.startswith("Error: --reference ref: no model named 'ref'")
