"""Alignment after SFT: preference layouts, IPO/KTO/ORPO/SimPO losses against hand-computed values, PPO's and
GRPO's advantages and KL by hand, every objective lowering its loss, PPO resume, reward rules and functions, the
reward_accuracy eval, and bad input as one line (tiny models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import build_tiny_llama, write_jsonl


def _prefs(n: int = 12) -> list[dict]:
    return [{"prompt": f"Capital {i}?", "chosen": "Paris is the capital.", "rejected": "The dog."} for i in range(n)]


def _config(objective, method="lora", sets=(), **explicit):
    from llmctl.config.profiles import resolve_config

    base = {
        "method": method,
        "objective": objective,
        "train.max_steps": 4,
        "train.batch_size": 2,
        "train.seq_len": 96,
        "train.dtype": "float32",
        "train.device": "cpu",
        "train.warmup_steps": 1,
        "train.eval_every": 0,
        "train.save_every": 0,
        "train.log_every": 1,
    }
    base.update(explicit)
    return resolve_config("finetune", None, list(sets), base)


@pytest.fixture
def tok(tiny_llama_dir):
    from llmctl.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_llama_dir))


@pytest.fixture
def prefs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prefs.jsonl", _prefs())


@pytest.fixture
def vowels(tmp_path) -> str:
    """A user reward function: the share of vowels in the answer."""
    (tmp_path / "vowels.py").write_text(
        "def score(prompt, completion, **fields):\n"
        "    return sum(c in 'aeiou' for c in completion) / max(1, len(completion))\n"
    )
    return f"python:{tmp_path / 'vowels.py'}:score"


# ---- layouts ---------------------------------------------------------------------------------------------------


def test_hh_rlhf_dialogues_split_at_the_last_shared_assistant_turn():
    from llmctl.data.layouts import detect

    rec = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Rob a bank?\n\nAssistant: No, I can't help.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Rob a bank?\n\nAssistant: Sure, first",
    }
    layout = detect(rec)
    assert layout.name == "hh-rlhf" and layout.use == "preference" and "prompts" in layout.uses
    assert layout.normalize(rec) == {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Rob a bank?"},
        ],
        "chosen": "No, I can't help.",
        "rejected": "Sure, first",
    }
    # a reply holding further turns (2 pairs of the shared harmless-base file): cut where the two texts part
    odd = {
        "chosen": "\n\nHuman: Q\n\nAssistant: A. Human: more?\n\nAssistant: yes",
        "rejected": "\n\nHuman: Q\n\nAssistant: B.",
    }
    assert detect(odd).normalize(odd) == {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": "A. Human: more?\n\nAssistant: yes",
        "rejected": "B.",
    }


def test_chat_message_pairs_with_and_without_an_explicit_prompt():
    from llmctl.data.layouts import detect

    user, a, b = (
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "assistant", "content": "5"},
    )
    implicit = {"chosen": [user, a], "rejected": [user, b]}
    explicit = {"prompt": [user], "chosen": [a], "rejected": [b]}
    for rec in (implicit, explicit):
        layout = detect(rec)
        assert layout.name == "chat-preference"
        assert layout.normalize(rec) == {"prompt": [user], "chosen": "4", "rejected": "5"}


def test_kto_unpaired_and_prompts_with_extra_fields(tmp_path):
    from llmctl.data.layouts import read_dataset

    kto = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p", "completion": "c", "label": False}])
    records, layout = read_dataset(kto)
    assert layout.name == "kto" and records == [{"prompt": "p", "completion": "c", "label": False}]
    problems = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "2+3?", "answer": "5", "level": 1}])
    assert read_dataset(problems)[1].name == "completion"  # for SFT it is a prompt without an answer
    records, layout = read_dataset(problems, uses=("prompts",))
    assert layout.name == "prompts" and records == [{"prompt": "2+3?", "answer": "5", "level": 1}]
    # preference pairs stay pairs for SFT's sake: never read as prompts without replies
    assert read_dataset(write_jsonl(tmp_path / "p.jsonl", _prefs(1)), uses=("sft",))[1].name == "preference"


def test_the_shared_hh_rlhf_file_reads_as_pairs(shared_data, tok):
    from llmctl.data.sft import read_records, tokenize_pref

    records, kind = read_records(shared_data / "hh-rlhf" / "harmless-base-1800.jsonl")
    assert kind == "hh-rlhf" and len(records) == 1800
    assert all(isinstance(r["prompt"], list) and r["prompt"][-1]["role"] == "user" for r in records)
    pairs, _ = tokenize_pref(records[:3], tok, "model", 4096)
    prompt = tok.decode(pairs[0].prompt)
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert tok.decode(pairs[0].chosen).endswith("<|im_end|>\n")


def test_bad_pairs_are_one_line(tmp_path):
    from llmctl.data.layouts import read_dataset
    from llmctl.errors import LlmctlError

    bad = write_jsonl(
        tmp_path / "b.jsonl",
        [{"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "assistant", "content": "a"}]}],
    )
    with pytest.raises(LlmctlError) as e:
        read_dataset(bad)
    assert str(e.value) == (
        f"data file {bad} line 1 does not fit the chat-preference layout: has a chosen list whose "
        "last message is a 'user' message, not the assistant's reply"
    )
    bad = write_jsonl(tmp_path / "h.jsonl", [{"chosen": "hello", "rejected": "bye"}])
    with pytest.raises(LlmctlError) as e:
        read_dataset(bad)
    assert "does not fit the hh-rlhf layout: has chosen and rejected dialogues that share no '\\n\\nAssistant:'" in str(
        e.value
    )


# ---- losses against hand-computed values ------------------------------------------------------------------------


def _hand_logps(model, prompt: list[int], reply: list[int]) -> list[float]:
    """Per-token log-probs of `reply` after `prompt`, from the full logits (the slow, obvious way)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt + reply])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(reply)]


@pytest.fixture
def two_models(tmp_path):
    """Two different tiny LLaMAs: the policy and a reference."""
    import torch
    from transformers import AutoModelForCausalLM

    a, b = build_tiny_llama(tmp_path / "a", seed=0), build_tiny_llama(tmp_path / "b", seed=1)
    return (
        AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32).eval(),
        AutoModelForCausalLM.from_pretrained(b, dtype=torch.float32).eval(),
    )


def _pairs(tok):
    from llmctl.data.sft import tokenize_pref

    records = [
        {"prompt": "Say fox.", "chosen": "The fox.", "rejected": "A dog is here."},
        {"prompt": "Capital?", "chosen": "Paris is the capital.", "rejected": "No."},
    ]
    return tokenize_pref(records, tok, "chatml", 96)[0]


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("objective", ["dpo", "ipo", "orpo", "simpo"])
def test_pair_losses_equal_the_hand_computed_value(two_models, tok, objective):
    import torch

    from llmctl.data.sft import collate_pairs
    from llmctl.finetune.objectives import Models, get

    net, ref = two_models
    pairs = _pairs(tok)
    config = _config(objective, method="full")
    loss, _ = get(objective).loss(Models(net, ref), collate_pairs(pairs, tok.pad_token_id), len(pairs), config)
    want = []
    for p in pairs:
        pc, pr = _hand_logps(net, p.prompt, p.chosen), _hand_logps(net, p.prompt, p.rejected)
        rc, rr = _hand_logps(ref, p.prompt, p.chosen), _hand_logps(ref, p.prompt, p.rejected)
        if objective == "dpo":
            want.append(-math.log(_sig(0.1 * ((sum(pc) - sum(rc)) - (sum(pr) - sum(rr))))))
        elif objective == "ipo":
            h = (sum(pc) - sum(rc)) / len(pc) - (sum(pr) - sum(rr)) / len(pr)
            want.append((h - 1 / (2 * 0.1)) ** 2)
        elif objective == "orpo":
            ac, ar = sum(pc) / len(pc), sum(pr) / len(pr)
            odds = (ac - math.log(1 - math.exp(ac))) - (ar - math.log(1 - math.exp(ar)))
            want.append(-ac - 0.1 * math.log(_sig(odds)))
        else:
            want.append(-math.log(_sig(2.0 * (sum(pc) / len(pc) - sum(pr) / len(pr)) - 1.0)))
    assert float(loss.detach()) == pytest.approx(sum(want) / len(want), rel=1e-5, abs=1e-6)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad


def test_kto_loss_equals_the_hand_computed_value(two_models, tok):
    from llmctl.data.preferences import collate_unpaired, tokenize_unpaired
    from llmctl.finetune.objectives import Models, get

    net, ref = two_models
    records = [
        {"prompt": "Say fox.", "completion": "The fox.", "label": True},
        {"prompt": "Capital?", "completion": "Paris.", "label": True},
        {"prompt": "Say dog.", "completion": "No way at all.", "label": False},
    ]
    ex = tokenize_unpaired(records, "kto", tok, "chatml", 96)[0]
    config = _config("kto", method="full", sets=["kto.desirable_weight=1.5", "kto.undesirable_weight=0.5"])
    loss, extra = get("kto").loss(Models(net, ref), collate_unpaired(ex, tok.pad_token_id), 3, config)
    ratio = lambda p, c: sum(_hand_logps(net, p, c)) - sum(_hand_logps(ref, p, c))  # noqa: E731
    z0 = max(0.0, sum(ratio(e.prompt, ex[(i + 1) % 3].completion) for i, e in enumerate(ex)) / 3)
    want = [
        1.5 * (1 - _sig(0.1 * (ratio(e.prompt, e.completion) - z0)))
        if e.label
        else 0.5 * (1 - _sig(0.1 * (z0 - ratio(e.prompt, e.completion))))
        for e in ex
    ]
    assert float(loss) == pytest.approx(sum(want) / 3, rel=1e-5)
    assert extra["kl"] == pytest.approx(z0, rel=1e-5, abs=1e-6)


# ---- PPO and GRPO pieces by hand --------------------------------------------------------------------------------


def test_ppo_kl_penalty_rewards_by_hand():
    import torch

    from llmctl.finetune.ppo import kl_rewards

    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_rewards(torch.tensor([1.0, 2.0]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 1.1], [0.0, 1.9, 0.0]]))


def test_gae_and_whitening_by_hand():
    import torch

    from llmctl.finetune.ppo import gae, whiten

    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [0.1, 0.3, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 1: δ2 = 1 − 0.4 = 0.6; δ1 = 0.4 − 0.2 = 0.2, A1 = 0.2 + 0.5·0.6 = 0.5; δ0 = 0.2 − 0.5, A0 = −0.3 + 0.25
    # row 2 ends at t=1 (value 9 is padding): A1 = 2 − 0.3 = 1.7; A0 = 0.3 − 0.1 + 0.5·1.7 = 1.05
    assert torch.allclose(adv, torch.tensor([[-0.05, 0.5, 0.6], [1.05, 1.7, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.45, 0.7, 1.0], [1.15, 2.0, 0.0]]))
    w = whiten(torch.tensor([[1.0, 2.0, 3.0, 50.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert torch.allclose(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6)


def test_ppo_clipped_losses_and_adaptive_kl_by_hand():
    import torch

    from llmctl.finetune.ppo import adaptive_kl, ppo_terms

    logp, old = torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2)
    pg, vf, clipped = ppo_terms(
        logp,
        torch.tensor([[1.0, 0.5]]),
        old,
        torch.tensor([[0.5, 0.5]]),
        torch.tensor([[2.0, -1.0]]),
        torch.tensor([[2.0, 0.5]]),
        clip=0.2,
        clip_value=0.2,
    )
    # ratio 1.5, A 2: max(−3, −2.4) = −2.4 (clipped); ratio 0.5, A −1: max(0.5, 0.8) = 0.8 (clipped)
    assert torch.allclose(pg, torch.tensor([[-2.4, 0.8]])) and clipped.tolist() == [[1.0, 1.0]]
    # v 1.0 from 0.5, clipped to 0.7; return 2: ½·max(1, 1.69) = 0.845; second token: v = R → 0
    assert torch.allclose(vf, torch.tensor([[0.845, 0.0]]))
    assert adaptive_kl(0.1, kl=8.0, target=6.0, n=16, horizon=10000) == pytest.approx(0.1 * (1 + 0.2 * 16 / 10000))
    assert adaptive_kl(0.1, kl=5.7, target=6.0, n=16, horizon=10000) == pytest.approx(0.1 * (1 - 0.05 * 16 / 10000))


def test_grpo_group_advantages_and_kl_by_hand():
    import torch

    from llmctl.finetune.grpo import group_advantages, grpo_terms, k3_kl

    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0]), group=2)
    s = math.sqrt(0.5)  # std (n−1) of {1, 0}; of {3, 1} it is √2
    assert torch.allclose(
        adv,
        torch.tensor(
            [0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0, 0, 1 / (math.sqrt(2) + 1e-4), -1 / (math.sqrt(2) + 1e-4)]
        ),
    )
    assert torch.allclose(group_advantages(torch.tensor([1.0, 0.0]), 2, scale=False), torch.tensor([0.5, -0.5]))
    kl = k3_kl(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25])))
    assert float(kl) == pytest.approx(0.5 + math.log(0.5) * -1 - 1)
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    per_token, clipped, k = grpo_terms(
        logp, logp, torch.log(torch.tensor([[0.25, 0.5]])), torch.tensor([2.0]), epsilon=0.2, beta=0.04
    )
    assert torch.allclose(per_token, torch.tensor([[-(2.0 - 0.04 * float(kl)), -2.0]]))
    assert clipped.tolist() == [[0.0, 0.0]] and torch.allclose(k[0, 1], torch.tensor(0.0))


# ---- every objective trains ------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["sft", "dpo", "ipo", "kto", "orpo", "simpo", "reward"])
def test_every_offline_objective_lowers_its_loss(tiny_model, tmp_path, llmctl_home, objective):
    from llmctl.finetune import finetune

    rows = _prefs(4) if objective != "sft" else [{"instruction": f"Capital {i}?", "output": "Paris."} for i in range(4)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    config = _config(
        objective,
        sets=["data.eval_split=0", "lora.dropout=0"],
        **{"train.max_steps": 6, "train.lr": 5e-3, "train.batch_size": 4, "train.warmup_steps": 0},
    )
    finetune(tiny_model, data, f"t-{objective}", config)
    losses = [
        json.loads(line)["loss"]
        for line in (llmctl_home / "runs" / f"t-{objective}" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 6 and losses[-1] < losses[0]


@pytest.mark.parametrize("objective", ["ppo", "grpo"])
def test_on_policy_step_lowers_its_loss_on_its_own_samples(tiny_model, tmp_path, vowels, monkeypatch, objective):
    """One step: answers scored above the mean gain log-probability against those below, and GRPO's surrogate
    loss on the step's own groups falls below its starting value 0 (ratio 1, centred advantages)."""
    import importlib

    import torch

    from llmctl.finetune.grpo import group_advantages
    from llmctl.finetune.loop import FinetuneRun
    from llmctl.finetune.rollout import response_stats
    from llmctl.finetune.service import setup

    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say {w}."} for w in ("fox", "dog", "cat", "Paris")])
    config = _config(
        objective,
        method="full",
        sets=[
            "data.eval_split=0",
            "rollout.max_new_tokens=6",
            "ppo.rollout_batch=4",
            "grpo.num_generations=4",
            "grpo.beta=0",
        ],
        **{"reward.function": vowels, "train.lr": 2e-3, "train.warmup_steps": 0},
    )
    s = setup(tiny_model, data, "t", config, False, False, "", lambda _m: None)
    run = FinetuneRun(s, lambda _m: None)
    run.open_logs()
    module = importlib.import_module(f"llmctl.finetune.{objective}")
    real, seen = module.generate, []

    def spy(net, items, ctx, greedy=False):
        ro = real(net, items, ctx, greedy)
        with torch.no_grad():
            seen.append((ro, response_stats(net, ro, ctx)[0]))  # the policy before the update
        return ro

    monkeypatch.setattr(module, "generate", spy)
    loss, extra, tokens, _ = s.objective.update(run, 1)
    assert math.isfinite(loss) and tokens > 0 and {"reward", "kl", "clip_frac", "response_length"} <= set(extra)
    ((ro, before),) = seen
    with torch.no_grad():
        after = response_stats(s.net, ro, run.models.ctx)[0]
    scores = run.models.ctx.reward.score(ro, run.models.ctx)
    gained = ((after - before) * ro.mask).sum(1)
    assert float(gained[scores > scores.mean()].mean()) > float(gained[scores < scores.mean()].mean())
    if objective == "grpo":
        adv = group_advantages(scores, 4)
        ratio = torch.exp(after - before)
        surrogate = torch.min(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None])
        loss_after = -((surrogate * ro.mask).sum(1) / ro.mask.sum(1)).mean()
        assert float(loss_after) < 0


# ---- PPO and GRPO runs: resume, lineage, rules ------------------------------------------------------------------


def test_ppo_from_a_reward_model_resumes_exactly_and_records_the_reward_model(tiny_model, prefs_file, llmctl_home):
    """2 steps, stop, --resume to 4 == 4 steps straight (adaptive KL state and RNG restored); the reward model is a
    parent of the result; the value head is not published."""
    import torch
    from safetensors.torch import load_file

    from llmctl.finetune import finetune
    from llmctl.models.registry import Registry

    finetune(tiny_model, prefs_file, "rm", _config("reward", **{"train.max_steps": 2}))
    sets = ["rollout.max_new_tokens=6", "ppo.rollout_batch=4", "ppo.target_kl=1.0", "lora.r=4"]
    cfg = _config("ppo", sets=sets, **{"reward.model": "rm", "train.eval_every": 2})
    straight = finetune(tiny_model, prefs_file, "straight", cfg)
    part = finetune(tiny_model, prefs_file, "resumed", cfg, stop_after=2)
    assert part.path == ""
    resumed = finetune(tiny_model, prefs_file, "resumed", cfg, resume=True)
    assert resumed.resumed_from == 2
    a = load_file(Path(straight.path) / "adapter_model.safetensors")
    b = load_file(Path(resumed.path) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("v_head" in k for k in a)
    assert resumed.metrics["train_loss"] == straight.metrics["train_loss"]
    rows = [json.loads(line) for line in (llmctl_home / "runs" / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and (llmctl_home / "runs" / "resumed" / "loss.png").is_file()
    assert {"reward", "kl", "entropy", "clip_frac", "value_loss", "response_length", "kl_coef"} <= set(rows[0])
    assert rows[0]["kl"] == 0 and rows[1]["kl_coef"] != rows[2]["kl_coef"]  # the policy starts at the reference
    entry = Registry().get("straight")
    assert entry.parents == [tiny_model, "rm"] and entry.meta["reward"] == "rm"
    assert "finetune.eval_reward" in entry.metrics and "finetune.eval_kl" in entry.metrics


def test_grpo_cli_with_math_exact_and_num_generations(cli, tiny_model, tmp_path):
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in ((1, 2), (3, 4), (5, 6), (2, 2))]
    data = write_jsonl(tmp_path / "math.jsonl", rows)
    r = cli(
        "finetune",
        "--model",
        tiny_model,
        "--objective",
        "grpo",
        "--reward",
        "math_exact",
        "--data",
        data,
        "--num-generations",
        "3",
        "--name",
        "g",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--set",
        "rollout.max_new_tokens=4",
        "--set",
        "data.eval_split=0",
        "--set",
        "train.log_every=1",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["objective"] == "grpo" and out["format"] == "peft-adapter"
    assert "reward 0" in r.stderr and "reward_std" in r.stderr and "kl" in r.stderr
    d = cli(
        "finetune",
        "--data",
        data,
        "--name",
        "x",
        "--objective",
        "grpo",
        "--reward",
        "math_exact",
        "--num-generations",
        "3",
        "--dry-run",
        "--json",
    )
    cfg = json.loads(d.stdout)
    assert cfg["grpo"]["num_generations"] == 3 and cfg["reward"]["function"] == "math_exact"


def test_reward_rules():
    from llmctl.finetune.rewards import format_regex, math_exact

    assert math_exact("2+3?", "The answer is 5.", answer="5") == 1.0
    assert math_exact("?", "5 apples and 7 pears: 12", answer=12) == 1.0
    assert math_exact("?", "It is -3", answer="-3") == 1.0 and math_exact("?", "1,000", answer=1000) == 1.0
    assert math_exact("?", "5.0", answer="5") == 1.0 and math_exact("?", "12 then 5", answer="12") == 0.0
    assert math_exact("?", "no number", answer="5") == 0.0 and math_exact("?", "5", answer=None) == 0.0
    rule = format_regex(r"<answer>\d+</answer>")
    assert rule("?", " <answer>42</answer>\n") == 1.0 and rule("?", "x <answer>42</answer>") == 0.0


# ---- reward_accuracy -------------------------------------------------------------------------------------------


def test_reward_accuracy_eval_by_hand_with_gates_output_and_attach(cli, tiny_model, prefs_file, tmp_path):
    from llmctl.evaluate.reward import pair_margins, read_pairs
    from llmctl.finetune import finetune
    from llmctl.finetune.rewards import load_reward_model
    from llmctl.models.registry import Registry

    finetune(tiny_model, prefs_file, "rm", _config("reward", **{"train.max_steps": 3, "train.lr": 5e-3}))
    held = write_jsonl(
        tmp_path / "held.jsonl",
        [
            {"prompt": "Capital 99?", "chosen": "Paris is the capital.", "rejected": "The dog."},
            {"prompt": "Capital 98?", "chosen": "The dog.", "rejected": "Paris is the capital."},
            {"prompt": "Capital 97?", "chosen": "Paris is the capital.", "rejected": "The dog barks."},
        ],
    )
    rm = load_reward_model("rm")
    assert rm.template == "model"
    pairs = read_pairs(held, rm.tokenizer, rm.template, 1024, None)[0]
    import torch

    def score(ids: list[int]) -> float:  # one sequence at a time, no padding: the plain way
        return float(rm.model(input_ids=torch.tensor([ids])).logits[0, 0])

    margins = [score(p.prompt + p.chosen) - score(p.prompt + p.rejected) for p in pairs]
    assert pair_margins(rm, pairs, 2, "cpu") == pytest.approx(margins, abs=1e-5)
    out = tmp_path / "res.json"
    r = cli(
        "eval",
        "--model",
        "rm",
        "--tasks",
        "reward_accuracy",
        "--data",
        held,
        "--json",
        "--output",
        out,
        "--fail-under",
        "reward_accuracy.pair_accuracy=0.1",
    )
    assert r.exit_code == 0, r.stderr
    metrics = json.loads(r.stdout)["metrics"]
    assert metrics["reward_accuracy.pair_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert metrics["reward_accuracy.mean_margin"] == pytest.approx(sum(margins) / 3, abs=1e-5)
    body = json.loads(out.read_text())
    assert body["configs"]["reward_accuracy"]["pairs"] == 3 and body["llmctl"]["model"] == "rm"
    assert Registry().get("rm").metrics["reward_accuracy.pair_accuracy"] == metrics["reward_accuracy.pair_accuracy"]
    r = cli(
        "eval",
        "--model",
        "rm",
        "--tasks",
        "reward_accuracy",
        "--data",
        held,
        "--fail-under",
        "reward_accuracy.pair_accuracy=1.01",
    )
    assert r.exit_code == 3 and "Error: quality gate failed: reward_accuracy.pair_accuracy" in r.stderr


def test_reward_accuracy_on_the_shared_hh_rlhf_pairs(cli, tiny_model, shared_data, tmp_path):
    from llmctl.finetune import finetune

    hh = shared_data / "hh-rlhf" / "harmless-base-1800.jsonl"
    finetune(
        tiny_model,
        hh,
        "rm",
        _config("reward", sets=["data.max_examples=16"], **{"train.max_steps": 1, "train.seq_len": 256}),
    )
    r = cli(
        "eval",
        "--model",
        "rm",
        "--tasks",
        "reward_accuracy",
        "--data",
        hh,
        "--set",
        "reward_accuracy.max_pairs=8",
        "--set",
        "reward_accuracy.seq_len=256",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["n-samples"]["reward_accuracy"]["effective"] <= 8


# ---- bad input: one line ----------------------------------------------------------------------------------------


def _other_tokenizer_reward_model(tiny_llama_dir, dest: Path) -> Path:
    """A reward model folder whose tokenizer has one more token than the tiny model's."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.add_tokens(["<extra-token>"])
    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    cfg.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def test_on_policy_bad_input_is_one_line(cli, tiny_model, tiny_llama_dir, prefs_file, tmp_path):
    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    common = [
        "finetune",
        "--model",
        tiny_model,
        "--data",
        prefs_file,
        "--name",
        "x",
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--force",
    ]
    r = cli(*common, "--objective", "ppo")
    assert (r.exit_code, r.stderr.splitlines()[0]) == (
        2,
        (
            "Error: --objective ppo and grpo need one reward: --reward-model NAME or --reward RULE (not both); got "
            "--objective ppo and reward.model null (default) and reward.function null (default)"
        ),
    )
    r = cli(*common, "--objective", "grpo", "--reward", "exact")
    assert (r.exit_code, r.stderr) == (
        2,
        "Error: --reward exact: must be math_exact, format_regex or python:FILE:FUNC\n",
    )
    r = cli(*common, "--reward", "math_exact")
    assert r.exit_code == 2 and r.stderr.startswith("Error: --reward is for --objective ppo or grpo")
    r = cli(*common, "--objective", "kto", "--batch-size", "1")
    assert r.exit_code == 2 and r.stderr.startswith("Error: kto needs train.batch_size of at least 2")
    missing = tmp_path / "nope.py"
    r = cli(*common, "--objective", "ppo", "--reward", f"python:{missing}:score")
    assert (r.exit_code, r.stderr) == (
        1,
        f"Error: reward file {missing} not found (--reward python:{missing}:score); give python:FILE.py:FUNCTION\n",
    )
    (tmp_path / "r.py").write_text("def other(prompt, completion):\n    return 1.0\n")
    r = cli(*common, "--objective", "ppo", "--reward", f"python:{tmp_path / 'r.py'}:score")
    assert (r.exit_code, r.stderr) == (
        1,
        f"Error: reward file {tmp_path / 'r.py'} has no function 'score'; functions "
        "there: other; it needs def score(prompt, completion, **fields) -> float\n",
    )
    r = cli(*common, "--objective", "ppo", "--reward", f"python:{tmp_path / 'r.py'}:other")
    assert r.exit_code == 1 and r.stderr.splitlines()[-1] == (
        f"Error: reward function python:{tmp_path / 'r.py'}:other cannot be called as f(prompt, completion, chosen, "
        "rejected); define it as def score(prompt, completion, **fields) -> float"
    )
    (tmp_path / "boom.py").write_text("def score(prompt, completion, **f):\n    return 1 / 0\n")
    r = cli(
        *common,
        "--objective",
        "grpo",
        "--reward",
        f"python:{tmp_path / 'boom.py'}:score",
        "--num-generations",
        "2",
        "--set",
        "rollout.max_new_tokens=2",
    )
    assert (r.exit_code, r.stderr.splitlines()[-1]) == (
        1,
        (
            f"Error: reward function python:{tmp_path / 'boom.py'}:score raised ZeroDivisionError: division by zero; "
            "fix the function; it must return a number for every completion"
        ),
    )
    r = cli(*common, "--objective", "grpo", "--reward", "math_exact")
    assert r.exit_code == 1 and r.stderr.splitlines()[-1] == (
        "Error: --reward math_exact needs an 'answer' field in each record; the first has prompt, chosen, rejected; "
        'give {"prompt": "…", "answer": "42"}'
    )
    import_model(Registry(), str(_other_tokenizer_reward_model(tiny_llama_dir, tmp_path / "orm")), "orm", link=True)
    r = cli(*common, "--objective", "ppo", "--reward-model", "orm")
    assert r.exit_code == 1 and r.stderr.splitlines()[-1] == (
        f"Error: reward model orm uses another tokenizer than {tiny_model} (385 vs 384 tokens, different ids); train "
        f"the reward model from {tiny_model}'s family: llmctl finetune --objective reward --model {tiny_model} …"
    )
    r = cli(*common, "--objective", "ppo", "--reward-model", tiny_model)
    assert (
        r.exit_code == 1 and "Error: tiny is not a reward model (LlamaForCausalLM, no scalar reward head)" in r.stderr
    )
    r = cli(*common, "--objective", "ppo", "--reward", "math_exact", "--method", "prompt-tuning")
    assert r.exit_code == 1 and "Error: --objective ppo cannot be trained with --method prompt-tuning" in r.stderr


def test_data_that_does_not_fit_the_objective(cli, tiny_model, tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Say hi.", "output": "Hi."}] * 4)
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}] * 4)
    common = ["finetune", "--model", tiny_model, "--name", "x", "--max-steps", "1"]
    r = cli(*common, "--data", alpaca, "--objective", "kto")
    assert (r.exit_code, r.stderr) == (
        1,
        f"Error: --objective kto needs KTO data (prompt, completion, label) or "
        f"preference pairs; {alpaca} is alpaca data; give a JSONL of "
        '{"prompt": "…", "completion": "…", "label": true}\n',
    )
    r = cli(*common, "--data", text, "--objective", "grpo", "--reward", "math_exact")
    assert r.exit_code == 1 and r.stderr.startswith(
        f"Error: --objective grpo needs prompts ({{prompt, …}}; other fields go to the reward function); {text} is "
        "text data"
    )
    r = cli("eval", "--model", tiny_model, "--tasks", "reward_accuracy", "--data", alpaca)
    assert r.exit_code == 1 and r.stderr.startswith("Error: tiny is not a reward model")
    r = cli("eval", "--model", tiny_model, "--tasks", "reward_accuracy")
    assert r.exit_code == 1 and r.stderr.startswith("Error: task 'reward_accuracy' needs a preference file")
    r = cli("eval", "--model", tiny_model, "--tasks", "reward_accuracy,perplexity", "--data", alpaca)
    assert r.exit_code == 2 and r.stderr.startswith(
        f"Error: --data {alpaca} is ambiguous: reward_accuracy and perplexity both read a file"
    )
