"""Rollouts for the on-policy objectives (PPO, GRPO): sample responses to prompts, score them, and read the
per-token log-probabilities, entropies and values of a policy on them.

A `Rollout` holds left-padded prompts followed by the sampled responses (padding after each response's end of
sequence), so every row's response starts at the same column `prompt_len`. Log-probs use position ids counted
from each row's first real token, so they equal what generation saw. Sampling uses torch's global RNG: the
same seed and RNG state (restored by `--resume`) give the same rollouts.

Examples:
    ctx = RolloutContext(reward, gen={"max_new_tokens": 32, "temperature": 1.0, "top_k": 0, "top_p": 1.0}, ...)
    ro = generate(policy, items, ctx)                      # sampled; generate(..., greedy=True) for evaluation
    logp, entropy, values = response_stats(policy, ro, ctx, v_head=head, entropy=True)
    scores = ctx.reward.score(ro, ctx)                     # one float per row
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.finetune.base import Objective, at_least_fp32
from llmctl.finetune.batches import Plan
from llmctl.finetune.rewards import RewardModel, call_reward


@dataclass
class RewardSource:
    """Where rewards come from: a reward model, or a rule / user function of (prompt, completion, **fields)."""

    label: str
    model: RewardModel | None = None
    fn: Any = None

    def score(self, ro: Rollout, ctx: RolloutContext):
        """One reward per row of the rollout (a float tensor on the context's device)."""
        import torch

        if self.model is not None:
            rows = [item.ids + ro.response[i, : int(ro.lengths[i])].tolist() for i, item in enumerate(ro.items)]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), ctx.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            batch = {"input_ids": ids.to(ctx.device), "attention_mask": mask.to(ctx.device)}
            return self.model.scores(batch).float().to(ctx.device)
        values = [
            call_reward(self.fn, self.label, item.prompt, text, item.fields) for item, text in zip(ro.items, ro.texts)
        ]
        return torch.tensor(values, dtype=torch.float32, device=ctx.device)


@dataclass
class RolloutContext:
    """What generation and scoring need during a run: the reward, sampling settings, tokenizer, device."""

    reward: RewardSource
    gen: dict
    tokenizer: Any
    device: str
    v_head: Any = None
    eos_ids: list[int] = field(default_factory=list)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


@dataclass
class Rollout:
    """Prompts (left-padded to `prompt_len`) and sampled responses; `mask` marks response tokens up to and
    including each row's end of sequence."""

    items: list
    input_ids: Any
    attention_mask: Any
    prompt_len: int
    mask: Any
    texts: list[str]

    @property
    def response(self):
        return self.input_ids[:, self.prompt_len :]

    @property
    def lengths(self):
        return self.mask.sum(1)


def _left_pad(items: list, pad_id: int):
    import torch

    width = max(len(it.ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        ids[i, width - len(it.ids) :] = torch.tensor(it.ids)
        mask[i, width - len(it.ids) :] = 1
    return ids, mask


def response_mask(response, eos_ids: list[int]):
    """1.0 on response tokens up to and including the first end-of-sequence token of each row, else 0.0."""
    import torch

    is_eos = torch.zeros_like(response, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response == e
    before = torch.cumsum(is_eos.long(), 1) - is_eos.long()  # end tokens strictly before this position
    return (before == 0).float()


def generate(net, items: list, ctx: RolloutContext, greedy: bool = False) -> Rollout:
    """Sample (or, for evaluation, greedily decode) one response per item with the policy, without gradients."""
    import torch
    from transformers import GenerationConfig

    g = ctx.gen
    ids, mask = _left_pad(items, ctx.pad_id)
    ids, mask = ids.to(ctx.device), mask.to(ctx.device)
    sample = {} if greedy else {"temperature": g["temperature"], "top_k": g["top_k"], "top_p": g["top_p"]}
    config = GenerationConfig(
        max_new_tokens=g["max_new_tokens"],
        do_sample=not greedy,
        pad_token_id=ctx.pad_id,
        eos_token_id=ctx.eos_ids,
        **sample,
    )
    with torch.no_grad():
        out = net.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    width = ids.shape[1]
    response = out[:, width:]
    rmask = response_mask(response, ctx.eos_ids)
    response = torch.where(rmask.bool(), response, torch.full_like(response, ctx.pad_id))
    texts = [ctx.tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(response, rmask)]
    return Rollout(items, torch.cat([ids, response], 1), torch.cat([mask, rmask.long()], 1), width, rmask, texts)


def response_stats(
    net, ro: Rollout, ctx: RolloutContext, v_head=None, entropy: bool = False, temperature: float | None = None
):
    """Per response token: the policy's log-prob of the sampled token (at the sampling temperature unless given),
    its entropy (when asked) and the value head's estimate of the state before it (when a head is given)."""
    import torch.nn.functional as F

    from llmctl.finetune.model import lm_parts

    body, head = lm_parts(net)
    positions = (ro.attention_mask.cumsum(1) - 1).clamp(min=0)
    hidden = body(
        input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    h = hidden[:, ro.prompt_len - 1 : -1]  # the state before each response token
    logits = at_least_fp32(head(h)) / (temperature or ctx.gen["temperature"])
    logp_all = F.log_softmax(logits, -1)
    logp = logp_all.gather(-1, ro.response[..., None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1) if entropy else None
    values = v_head(h.to(next(v_head.parameters()).dtype)).squeeze(-1) if v_head is not None else None
    return logp, ent, values


def masked_mean(x, mask):
    """Mean of x over mask == 1 (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def reference_logps(models, ro: Rollout, ctx: RolloutContext, temperature: float | None = None):
    """The reference model's per-token log-probs of the rollout's responses (no gradients)."""
    import torch

    with torch.no_grad(), models.reference():
        return response_stats(models.ref_net, ro, ctx, temperature=temperature)[0]


def subset(ro: Rollout, idx) -> Rollout:
    """The rows `idx` (a tensor of row numbers) of a rollout."""
    rows = idx.tolist()
    return Rollout(
        [ro.items[i] for i in rows],
        ro.input_ids[idx],
        ro.attention_mask[idx],
        ro.prompt_len,
        ro.mask[idx],
        [ro.texts[i] for i in rows],
    )


class OnPolicy(Objective):
    """What PPO and GRPO share: prompts as data, a reward source, sampling settings, greedy held-out evaluation."""

    data_use = ("prompts",)
    rollouts = True
    refused_methods = ("prompt-tuning", "prefix-tuning")
    registry_metrics = ("eval_reward", "eval_kl")

    def prompts_per_batch(self, config: dict) -> int:
        return config["train"]["batch_size"]

    def examples(self, records, kind, tokenizer, template, seq_len):
        from llmctl.data.preferences import tokenize_prompts

        return tokenize_prompts(records, tokenizer, template, seq_len)

    def plan(self, items, config, pad_id, packed, seed):
        return Plan(
            items,
            [[i] for i in range(len(items))],
            self.prompts_per_batch(config),
            seed,
            lambda rows: [items[r[0]] for r in rows],
        )

    def check(self, config: dict) -> None:
        """The reward model is one; the reward file exists, imports and has the function (before any loading)."""
        from llmctl.finetune.rewards import locate_reward_model, reward_function

        r = config["reward"]
        if r["model"]:
            locate_reward_model(r["model"])
        else:
            reward_function(r["function"], r)

    def prepare(self, s, log) -> None:
        """The reward (model or function, checked against the data and the tokenizer) and the sampling context."""
        r = s.config["reward"]
        if r["model"]:
            from llmctl.finetune.rewards import load_reward_model

            rm = load_reward_model(r["model"], s.device)
            rm.check_tokenizer(s.tokenizer, s.base.label)
            source = RewardSource(rm.label, model=rm)
            s.extra_parents.append(rm.name or rm.label)
            s.fingerprint_extra["reward.model_path"] = str(rm.model.name_or_path)
        else:
            from llmctl.finetune.rewards import check_signature, reward_function

            fn, fp = reward_function(r["function"], r)
            fields = s.plan.items[0].fields
            if r["function"] == "math_exact" and "answer" not in fields:
                raise LlmctlError(
                    f"--reward math_exact needs an 'answer' field in each record; the first has "
                    f"{', '.join(['prompt', *fields])}",
                    hint='give {"prompt": "…", "answer": "42"}',
                )
            check_signature(fn, r["function"], fields)
            source = RewardSource(r["function"], fn=fn)
            s.fingerprint_extra["reward.function_id"] = fp
        eos = s.base_model.generation_config.eos_token_id if s.base_model.generation_config else None
        eos_ids = sorted(
            {*(eos if isinstance(eos, list) else [eos] if eos is not None else []), s.tokenizer.eos_token_id} - {None}
        )
        s.objective_ctx = RolloutContext(source, dict(s.config["rollout"]), s.tokenizer, s.device, eos_ids=eos_ids)
        s.extra_meta["reward"] = source.label
        log(f"reward: {source.label}; {self.name} samples up to {s.config['rollout']['max_new_tokens']} new tokens")

    def evaluate(self, m, plan, config, device, precision, max_batches):
        """Greedy answers to held-out prompts: mean reward, KL to the reference (nats/answer), length."""
        import torch

        ctx, net = m.ctx, m.net
        was = net.training
        net.eval()
        rewards, kls, lengths = [], [], []
        n = plan.per_epoch if max_batches is None else min(plan.per_epoch, max_batches)
        with torch.no_grad(), precision.autocast():
            for g in range(n):
                ro = generate(net, plan.batch(g), ctx, greedy=True)
                logp = response_stats(net, ro, ctx, temperature=1.0)[0]
                ref = reference_logps(m, ro, ctx, temperature=1.0)
                rewards += ctx.reward.score(ro, ctx).tolist()
                kls += ((logp - ref).float() * ro.mask).sum(1).tolist()
                lengths += ro.lengths.tolist()
        net.train(was)
        mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
        return {"eval_reward": mean(rewards), "eval_kl": mean(kls), "eval_response_length": mean(lengths)}
