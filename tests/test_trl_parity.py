"""Loss parity with TRL (trl 1.12.0, pinned in the `test` extra): on the same tiny LLaMA, batch, reference
log-probs and hyper-parameters, each llmctl objective's loss and gradients equal those of TRL's own trainer
methods to 1e-5 (relative): DPOTrainer (sigmoid, hinge, ipo), KTOTrainer, ORPOTrainer, CPOTrainer (simpo),
RewardTrainer, GRPOTrainer (grpo, dapo, dr_grpo: advantages from its own rollout, then its loss) and PPOTrainer's
per-token terms (KL-penalised rewards, GAE, whitening, clipped policy and value losses, spied on inside its
`train`). Models are float64, so the 1e-5 bound measures the formulas, not float32 rounding.

Where llmctl chooses differently from TRL, the TRL-equal setting is the one tested, and the difference is named at
the test: ORPO's NLL (orpo.nll sequence), PPO's score position and value loss mask (TRL puts the score on the token
after the end of sequence, trl#3750).
"""

from __future__ import annotations

import copy
import warnings

import pytest

from conftest import build_tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'")

TOL = 1e-5  # relative, on the loss and on every gradient tensor (max |Δ| / max |g| of each parameter)


# ---- shared: models, batches, comparison -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Two tiny LLaMAs with one tokenizer: the policy (seed 0) and a different reference (seed 1)."""
    root = tmp_path_factory.mktemp("trl-parity")
    return build_tiny_llama(root / "policy", seed=0), build_tiny_llama(root / "ref", seed=1), root


@pytest.fixture(scope="module")
def tok(tiny_dirs):
    from llmctl.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_dirs[0]))


def _lm(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)


@pytest.fixture
def policy_ref(tiny_dirs):
    """The policy in training mode (as both trainers see it; the tiny LLaMA has no dropout) and the reference."""
    return _lm(tiny_dirs[0]).train(), _lm(tiny_dirs[1]).eval()


def _config(objective, *sets):
    from llmctl.config.profiles import resolve_config

    base = {"method": "full", "objective": objective, "train.device": "cpu"}
    return resolve_config("finetune", None, list(sets), base)


_RECORDS = [
    {"prompt": "Say fox.", "chosen": "The fox.", "rejected": "A dog is here."},
    {"prompt": "Capital?", "chosen": "Paris is the capital.", "rejected": "No."},
    {"prompt": "Which gas do plants absorb?", "chosen": "Carbon dioxide.", "rejected": "The quick brown dog."},
]


def _pairs_batch(tok):
    """llmctl's own preference batch (chatml template): chosen rows then rejected rows, labels on the replies."""
    from llmctl.data.sft import collate_pairs, tokenize_pref

    return collate_pairs(tokenize_pref(_RECORDS, tok, "chatml", 96)[0], tok.pad_token_id)


def _halves(batch):
    """TRL's chosen_*/rejected_* layout (ORPO, CPO) of an llmctl pair batch."""
    n = batch["input_ids"].shape[0] // 2
    out = {}
    for side, rows in (("chosen", slice(0, n)), ("rejected", slice(n, None))):
        out[f"{side}_input_ids"] = batch["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{side}_labels"] = batch["labels"][rows]
    return out


def _loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def _rel(a, b) -> float:
    import torch

    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def _assert_parity(ours, theirs, what: str):
    """Same loss and same gradient on every parameter, to TOL relative; prints the measured differences."""
    (loss, grads), (ref_loss, ref_grads) = ours, theirs
    assert grads and grads.keys() == ref_grads.keys(), what
    assert any(float(g.abs().max()) > 0 for g in ref_grads.values()), what
    loss_rel = abs(loss - ref_loss) / abs(ref_loss)
    zero = [k for k in ref_grads if float(ref_grads[k].abs().max()) == 0]
    assert all(float(grads[k].abs().max()) == 0 for k in zero), what
    grad_rel = max(_rel(grads[k], ref_grads[k]) for k in ref_grads if k not in zero)
    print(f"{what}: loss {loss:.10g} vs TRL {ref_loss:.10g}, max rel diff loss {loss_rel:.2e}, grads {grad_rel:.2e}")
    assert loss_rel < TOL and grad_rel < TOL, what


def _trainer(cls, config, model, **kwargs):
    """A TRL trainer on CPU with a one-row dataset (it only has to construct; its loss methods are called)."""
    from datasets import Dataset

    rows = kwargs.pop("rows", {"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model=model, args=config, train_dataset=Dataset.from_dict(rows), **kwargs)


def _args(cls, tmp_path, **kwargs):
    return cls(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False, **kwargs)


# ---- DPO, IPO, hinge -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "sets", "trl_loss", "beta"),
    [
        ("dpo", ["dpo.beta=0.3"], "sigmoid", 0.3),
        ("dpo", ["dpo.beta=0.3", "dpo.loss=hinge"], "hinge", 0.3),
        ("ipo", ["ipo.beta=0.2"], "ipo", 0.2),
    ],
)
def test_dpo_family_matches_trl_dpo_trainer(policy_ref, tok, tmp_path, objective, sets, trl_loss, beta):
    from trl import DPOConfig, DPOTrainer

    from llmctl.data.sft import IGNORE
    from llmctl.finetune.objectives import Models, get

    net, ref = policy_ref
    batch = _pairs_batch(tok)
    n = batch["input_ids"].shape[0] // 2
    config = _config(objective, *sets)
    ours = _loss_and_grads(net, lambda: get(objective).loss(Models(net, ref), batch, n, config)[0])

    args = _args(DPOConfig, tmp_path, beta=beta, loss_type=trl_loss)
    trainer = _trainer(DPOTrainer, args, net, ref_model=ref, processing_class=tok)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "completion_mask": (batch["labels"] != IGNORE).long(),
    }
    theirs = _loss_and_grads(net, lambda: trainer.compute_loss(net, dict(inputs)))
    _assert_parity(ours, theirs, f"{objective} {trl_loss}")


# ---- KTO -------------------------------------------------------------------------------------------------------------


def test_kto_matches_trl_kto_trainer(policy_ref, tok, tmp_path):
    """KTO's KL baseline z0 from the mismatched (prompt, other completion) rows, as both build it."""
    from trl import KTOConfig, KTOTrainer

    from llmctl.data.preferences import collate_unpaired, tokenize_unpaired
    from llmctl.data.sft import IGNORE
    from llmctl.finetune.objectives import Models, get

    net, ref = policy_ref
    records = [
        {"prompt": "Say fox.", "completion": "The fox.", "label": True},
        {"prompt": "Capital?", "completion": "Paris is the capital.", "label": True},
        {"prompt": "Say dog.", "completion": "No way at all.", "label": False},
        {"prompt": "Which gas?", "completion": "Carbon dioxide.", "label": False},
    ]
    batch = collate_unpaired(tokenize_unpaired(records, "kto", tok, "chatml", 96)[0], tok.pad_token_id)
    n = len(records)
    config = _config("kto", "kto.beta=0.5", "kto.desirable_weight=1.5", "kto.undesirable_weight=0.7")
    loss_fn = lambda: get("kto").loss(Models(net, ref), batch, n, config)  # noqa: E731
    ours = _loss_and_grads(net, lambda: loss_fn()[0])
    z0 = loss_fn()[1]["kl"]

    args = _args(
        KTOConfig,
        tmp_path,
        beta=0.5,
        desirable_weight=1.5,
        undesirable_weight=0.7,
        per_device_train_batch_size=n,
        train_sampling_strategy="sequential",
    )
    rows = {"prompt": ["a", "b"], "completion": [" c", " d"], "label": [True, False]}
    trainer = _trainer(KTOTrainer, args, net, ref_model=ref, processing_class=tok, rows=rows)
    assert trainer.calculate_KL
    completion = (batch["labels"] != IGNORE).long()
    inputs = {
        "input_ids": batch["input_ids"][:n],
        "attention_mask": batch["attention_mask"][:n],
        "completion_mask": completion[:n],
        "KL_input_ids": batch["input_ids"][n:],
        "KL_attention_mask": batch["attention_mask"][n:],
        "KL_completion_mask": completion[n:],
        "label": batch["label"],
    }
    theirs = _loss_and_grads(net, lambda: trainer.compute_loss(net, dict(inputs)))
    assert z0 > 0 and trainer._metrics["train"]["kl"][-1] == pytest.approx(z0, rel=TOL)
    _assert_parity(ours, theirs, "kto")


# ---- ORPO, SimPO (no reference) --------------------------------------------------------------------------------------


def test_orpo_matches_trl_orpo_trainer(policy_ref, tok, tmp_path):
    """TRL's NLL term covers the chosen rows' prompt and reply tokens in one token mean: llmctl's orpo.nll
    sequence. (llmctl's default, response, is the paper's L_SFT on the reply alone: only that term differs, so
    the odds-ratio term is checked against TRL's `odds_ratio_loss` in both settings.)"""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from llmctl.finetune.objectives import Models, get

    net, _ = policy_ref
    batch = _pairs_batch(tok)
    n = batch["input_ids"].shape[0] // 2
    config = _config("orpo", "orpo.beta=0.25", "orpo.nll=sequence")
    ours = _loss_and_grads(net, lambda: get("orpo").loss(Models(net), batch, n, config)[0])

    args = _args(ORPOConfig, tmp_path, beta=0.25, max_length=96)
    trainer = _trainer(ORPOTrainer, args, net, processing_class=tok)
    theirs = _loss_and_grads(net, lambda: trainer.compute_loss(net, _halves(batch)))
    _assert_parity(ours, theirs, "orpo (orpo.nll sequence)")

    # the default: the same odds-ratio term, the NLL on replies only (per pair)
    default = _config("orpo", "orpo.beta=0.25")
    loss, _ = get("orpo").loss(Models(net), batch, n, default)
    c, r, _, _, _ = trainer.concatenated_forward(net, _halves(batch))
    odds_term = trainer.odds_ratio_loss(c, r)[0]
    assert float(loss) == pytest.approx(float((-c - odds_term).mean()), rel=TOL)


def test_simpo_matches_trl_cpo_trainer(policy_ref, tok, tmp_path):
    """SimPO is TRL's CPOTrainer with loss_type simpo and cpo_alpha 0 (no NLL term); γ is simpo_gamma."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from llmctl.finetune.objectives import Models, get

    net, _ = policy_ref
    batch = _pairs_batch(tok)
    n = batch["input_ids"].shape[0] // 2
    config = _config("simpo", "simpo.beta=2.5", "simpo.gamma=0.8")
    ours = _loss_and_grads(net, lambda: get("simpo").loss(Models(net), batch, n, config)[0])

    args = _args(CPOConfig, tmp_path, loss_type="simpo", cpo_alpha=0.0, beta=2.5, simpo_gamma=0.8, max_length=96)
    trainer = _trainer(CPOTrainer, args, net, processing_class=tok)
    theirs = _loss_and_grads(net, lambda: trainer.compute_loss(net, _halves(batch)))
    _assert_parity(ours, theirs, "simpo")


# ---- reward modelling ------------------------------------------------------------------------------------------------


def test_reward_matches_trl_reward_trainer(tiny_dirs, tok, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from llmctl.finetune.objectives import Models, get

    torch.manual_seed(3)  # the new score head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rm = AutoModelForSequenceClassification.from_pretrained(tiny_dirs[0], num_labels=1, dtype=torch.float64)
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    batch = _pairs_batch(tok)
    n = batch["input_ids"].shape[0] // 2
    ours = _loss_and_grads(rm, lambda: get("reward").loss(Models(rm), batch, n, _config("reward"))[0])

    args = _args(RewardConfig, tmp_path, center_rewards_coefficient=None)
    trainer = _trainer(RewardTrainer, args, rm, processing_class=tok)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    theirs = _loss_and_grads(rm, lambda: trainer.compute_loss(rm, dict(inputs)))
    _assert_parity(ours, theirs, "reward")


# ---- GRPO: TRL's rollout and advantages, then its loss ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_type", "sets", "trl_kwargs"),
    [
        ("grpo", ["grpo.kl_ratio=true"], {"scale_rewards": "group"}),
        ("dapo", ["grpo.kl_ratio=true", "grpo.epsilon_high=0.28"], {"scale_rewards": "group", "epsilon_high": 0.28}),
        ("dr_grpo", ["grpo.scale_rewards=false"], {"scale_rewards": "none", "use_bias_correction_kl": False}),
    ],
)
def test_grpo_losses_match_trl_grpo_trainer(policy_ref, tok, tmp_path, loss_type, sets, trl_kwargs):
    """TRL samples 2 prompts × 4 answers and scores them; llmctl's group advantages of those rewards equal TRL's;
    on that batch (answers cut to varied lengths, old log-probs perturbed so the clip acts) the losses and
    gradients are equal. The prompts tokenize to one length: TRL's forward passes no position ids, so with
    left-padded prompts its positions would start at the padding, where llmctl counts from the first real token
    (as generation does)."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from llmctl.finetune.grpo import group_advantages, grpo_loss, grpo_terms
    from llmctl.finetune.rollout import Rollout, RolloutContext, response_stats

    net, ref = policy_ref
    sets = ["reward.function=math_exact", f"grpo.loss_type={loss_type}", "grpo.beta=0.07", "grpo.epsilon=0.15", *sets]
    c = _config("grpo", *sets)["grpo"]
    rewards = []

    def vowels(prompts, completions, **_):
        rewards.extend(sum(ch in "aeiou" for ch in x) / max(1, len(x)) for x in completions)
        return rewards[-len(completions) :]

    length, temperature = 6, 0.9
    args = _args(
        GRPOConfig,
        tmp_path,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=length,
        temperature=temperature,
        beta=0.07,
        epsilon=0.15,
        loss_type=loss_type,
        **trl_kwargs,
    )
    trainer = _trainer(GRPOTrainer, args, net, reward_funcs=vowels, processing_class=tok, rows={"prompt": ["Say fox."]})
    trainer.ref_model = ref
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions([{"prompt": "Say fox."}] * 4 + [{"prompt": "Say dog."}] * 4)
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), 4, c["scale_rewards"])
    assert _rel(adv, inputs["advantages"]) < TOL and float(inputs["advantages"].abs().max()) > 0

    # varied answer lengths (a cut answer is padded after its end), and old log-probs the clip acts on
    keep = torch.tensor([6, 2, 5, 1, 3, 6, 4, 2])[:, None]
    cut = torch.arange(length)[None, :] < keep
    inputs["completion_mask"] = inputs["completion_mask"] * cut
    inputs["completion_ids"] = inputs["completion_ids"].masked_fill(~cut, tok.pad_token_id)
    inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
    prompt_len = inputs["prompt_ids"].shape[1]
    ro = Rollout(
        items=[None] * 8,
        input_ids=torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
        attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
        prompt_len=prompt_len,
        mask=inputs["completion_mask"].double(),
        texts=[""] * 8,
    )
    ctx = RolloutContext(None, {"temperature": temperature}, tok, "cpu")
    with torch.no_grad():
        old = response_stats(net, ro, ctx)[0] + 0.3 * torch.randn(8, length, dtype=torch.float64)
    inputs["old_per_token_logps"] = old

    def ours_loss():
        logp = response_stats(net, ro, ctx)[0]
        ref_logp = inputs["ref_per_token_logps"]
        per_token, clipped, _ = grpo_terms(
            logp, old, ref_logp, adv, c["epsilon"], c["beta"], c["epsilon_high"], c["kl_ratio"]
        )
        assert float((clipped * ro.mask).sum()) > 0
        return grpo_loss(per_token, ro.mask, c["loss_type"], 8, int(ro.mask.sum()), length)

    ours = _loss_and_grads(net, ours_loss)
    theirs = _loss_and_grads(net, lambda: trainer.compute_loss(net, dict(inputs)))
    _assert_parity(ours, theirs, f"grpo {loss_type}")


# ---- PPO: TRL's per-token terms, spied on inside its own `train` -----------------------------------------------------


class _Spy:
    """Wraps TRL's module-level helpers during `PPOTrainer.train`, keeping what went in and came out."""

    def __init__(self, module, monkeypatch):
        import numpy as np

        self.generated, self.scores, self.whitened, self.means, self.steps, self.orders = [], [], [], [], [], []
        wrap = {"batch_generation": self._generation, "get_reward": self._reward, "masked_whiten": self._whiten}
        for name, spy in wrap.items():
            original = getattr(module, name)
            monkeypatch.setattr(module, name, lambda *a, _o=original, _s=spy, **k: _s(_o, *a, **k))
        mean = module.masked_mean
        monkeypatch.setattr(module, "masked_mean", lambda v, m, *a: self._mean(mean, v, m, *a))
        permutation = np.random.permutation
        monkeypatch.setattr(np.random, "permutation", lambda n: self.orders.append(permutation(n)) or self.orders[-1])

    def _generation(self, original, *args, **kwargs):
        out = original(*args, **kwargs)
        self.generated.append(out[0])
        return out

    def _reward(self, original, *args, **kwargs):
        out = original(*args, **kwargs)
        self.scores.append(out[1])  # per rollout: the value model's call, then the reward model's
        return out

    def _whiten(self, original, values, mask, shift_mean=True):
        # whiten_rewards is on only so that TRL's KL-penalised rewards pass through here: handed back unchanged
        # (TRL's default, whiten_rewards off); the advantages are whitened by TRL's own function
        out = values if not shift_mean else original(values, mask, shift_mean)
        self.whitened.append((values.clone(), mask.clone(), out.clone()))
        return out

    def _mean(self, original, values, mask, *args):
        if values.requires_grad:  # the policy and value losses of a micro-batch (not metrics, not whitening)
            self.means.append((values.detach().clone(), mask.clone()))
        return original(values, mask, *args)


def test_ppo_terms_match_trl_ppo_trainer(tiny_dirs, tok, tmp_path, monkeypatch):
    """One TRL PPO rollout of 8 prompts and two epochs of updates (lr large enough that epoch 2 clips); llmctl's
    kl_rewards, gae, whiten and ppo_terms on the same rollout give TRL's tensors, and the loss and gradients of the
    second update are equal.

    Two TRL choices differ from llmctl's and are the setting tested: TRL adds the score on the token after the end
    of sequence (trl#3750; llmctl on the end-of-sequence token itself, Ziegler et al.), and its value loss covers
    that token too, a separate token mean; so the llmctl functions get TRL's mask extended by one token (`mask_p1`)
    for the rewards, GAE and the value loss. TRL's value model gets the policy's own body, as llmctl's value head
    sits on the policy's last hidden state."""
    import torch
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from llmctl.finetune.ppo import gae, kl_rewards, ppo_terms, whiten
    from llmctl.finetune.rollout import Rollout, RolloutContext, response_mask, response_stats

    policy, ref = _lm(tiny_dirs[0]).train(), _lm(tiny_dirs[1]).eval()
    left = copy.deepcopy(tok)
    left.padding_side = "left"
    prompts = ["Say fox.", "Capital?", "Which gas do plants absorb?", "Hi", "The dog.", "Paris?", "Emoji 😀", "Why?"]
    with torch.no_grad():  # an end-of-sequence logit ~5 above the rest, so answers end at varied lengths
        h = policy.model(**left(prompts, return_tensors="pt", padding=True)).last_hidden_state[:, -1].mean(0)
        policy.lm_head.weight[tok.eos_token_id] += 5.0 * h / h.dot(h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq = dict(num_labels=1, dtype=torch.float64)
        value = AutoModelForSequenceClassification.from_pretrained(tiny_dirs[0], **seq)
        reward = AutoModelForSequenceClassification.from_pretrained(tiny_dirs[1], **seq).eval()
    value.model = policy.model  # one body: llmctl's value head reads the policy's last hidden state
    torch.manual_seed(4)
    torch.nn.init.normal_(value.score.weight, std=0.3)
    torch.nn.init.normal_(reward.score.weight, std=1.0)
    hp = dict(kl_coef=0.05, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=0.97, lam=0.9, temperature=0.8)
    args = _args(
        PPOConfig,
        tmp_path,
        per_device_train_batch_size=8,
        num_mini_batches=1,
        num_ppo_epochs=2,
        total_episodes=8,
        response_length=8,
        stop_token="eos",
        learning_rate=3e-2,
        whiten_rewards=True,
        num_sample_generations=0,
        save_strategy="no",
        **hp,
    )
    data = Dataset.from_dict({"input_ids": [left(p).input_ids for p in prompts]})
    spy = _Spy(trl_ppo, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = PPOTrainer(
            args=args,
            processing_class=left,
            model=policy,
            ref_model=ref,
            reward_model=reward,
            value_model=value,
            train_dataset=data,
            eval_dataset=data,
        )
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    backward = trainer.accelerator.backward

    def spy_backward(loss, **kwargs):
        backward(loss, **kwargs)
        params = {n: p.detach().clone() for n, p in wrapper.named_parameters()}
        grads = {n: p.grad.detach().clone() for n, p in wrapper.named_parameters() if p.grad is not None}
        spy.steps.append((float(loss.detach()), grads, params))

    trainer.accelerator.backward = spy_backward
    torch.manual_seed(0)
    trainer.train()
    assert len(spy.steps) == 2 and len(spy.means) == 4 and len(spy.whitened) == 2

    # llmctl's rollout of TRL's sample: the same query and answer tokens, padding after each answer's end
    query_response = spy.generated[0]
    width = max(len(x) for x in data["input_ids"])
    response = query_response[:, width:]
    mask = response_mask(response, [tok.eos_token_id]).double()
    ids = torch.cat([query_response[:, :width], response.masked_fill(mask == 0, tok.pad_token_id)], 1)
    ro = Rollout(
        [None] * 8, ids, torch.cat([(ids[:, :width] != tok.pad_token_id).long(), mask.long()], 1), width, mask, [""] * 8
    )
    ends = mask.sum(1).long()
    assert 0 < int((ends < 8).sum()) < 8  # some answers end early, some run to the limit
    mask_p1 = (torch.arange(8)[None, :] <= ends[:, None]).double()  # TRL's: one token past the end
    ctx = RolloutContext(None, {"temperature": hp["temperature"] + 1e-7}, tok, "cpu")  # TRL's temperature + 1e-7
    score = spy.scores[1]  # the reward model's score of each answer (TRL's get_reward)

    def load(params):
        with torch.no_grad():
            for n, p in wrapper.named_parameters():
                p.copy_(params[n])

    load(spy.steps[0][2])  # the rollout's policy (the first update starts from it)
    with torch.no_grad():
        old_logp, _, old_v = response_stats(policy, ro, ctx, v_head=value.score)
        ref_logp = response_stats(ref, ro, ctx)[0]
    rewards, _ = kl_rewards(score, old_logp * mask, ref_logp * mask, mask_p1, hp["kl_coef"])
    trl_rewards, _, _ = spy.whitened[0]
    assert _rel(rewards, trl_rewards) < TOL
    adv, returns = gae(rewards, old_v, mask_p1, hp["gamma"], hp["lam"])
    trl_adv, trl_mask, trl_white = spy.whitened[1]
    assert _rel(adv, trl_adv) < TOL and torch.equal(trl_mask.double(), mask)
    adv = whiten(adv, mask)
    assert _rel(adv, trl_white * mask) < TOL

    load(spy.steps[1][2])  # the second update's policy: ratios away from 1
    order = torch.as_tensor(spy.orders[1])
    (trl_vf, _), (trl_pg, _) = spy.means[2], spy.means[3]

    def ours_loss():
        logp, _, values = response_stats(policy, ro, ctx, v_head=value.score)
        pg, vf, clipped = ppo_terms(logp, values, old_logp, old_v, adv, returns, hp["cliprange"], hp["cliprange_value"])
        assert float((clipped * mask).sum()) > 0
        assert _rel((pg * mask)[order], trl_pg * mask[order]) < TOL
        assert _rel((vf * mask_p1)[order], 0.5 * trl_vf * mask_p1[order]) < TOL
        policy_loss = (pg * mask).sum() / mask.sum()
        return policy_loss + hp["vf_coef"] * (vf * mask_p1).sum() / mask_p1.sum()

    ours = _loss_and_grads(wrapper, ours_loss)
    _assert_parity(ours, spy.steps[1][:2], "ppo")


# ---- the TRL-named settings reach the training step -----------------------------------------------------------------


def test_grpo_step_uses_loss_type_clip_higher_and_kl_ratio(tiny_model, tmp_path, monkeypatch):
    """A GRPO step with grpo.loss_type dapo hands grpo_loss the step's own response-token count, and grpo_terms
    the clip-higher bound and kl_ratio; the step's loss is the sum of its micro-batches' grpo_loss."""
    from conftest import write_jsonl
    from llmctl.finetune import grpo
    from llmctl.finetune.loop import FinetuneRun
    from llmctl.finetune.service import setup

    (tmp_path / "vowels.py").write_text(
        "def score(prompt, completion, **fields):\n    return sum(c in 'aeiou' for c in completion) / 9\n"
    )
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say {w}."} for w in ("fox", "dog", "cat", "Paris")])
    sets = ["data.eval_split=0", "rollout.max_new_tokens=5", "grpo.num_generations=4", "grpo.loss_type=dapo"]
    sets += ["grpo.epsilon_high=0.28", "grpo.kl_ratio=true", "train.grad_accum=2", "train.batch_size=1"]
    config = _config("grpo", *sets, f"reward.function=python:{tmp_path / 'vowels.py'}:score")
    s = setup(tiny_model, data, "t", config, False, False, "", lambda _m: None)
    run = FinetuneRun(s, lambda _m: None)
    run.open_logs()
    calls, terms = [], []
    real_loss, real_terms = grpo.grpo_loss, grpo.grpo_terms

    def loss_spy(per_token, mask, *args):
        out = real_loss(per_token, mask, *args)
        calls.append((float(mask.sum()), args, float(out)))
        return out

    monkeypatch.setattr(grpo, "grpo_loss", loss_spy)
    monkeypatch.setattr(grpo, "grpo_terms", lambda *a: terms.append(a[4:]) or real_terms(*a))
    loss, *_ = s.objective.update(run, 1)
    assert len(calls) == 2 and terms == [(0.2, 0.04, 0.28, True)] * 2
    step_tokens = sum(tokens for tokens, _, _ in calls)
    assert all(args == ("dapo", 8, step_tokens, 5) for _, args, _ in calls)
    assert loss == pytest.approx(sum(out for _, _, out in calls), rel=1e-6)
