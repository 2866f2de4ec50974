"""The one table of finetuning objectives: what data each trains on, its batches, its loss and its evaluation.

An objective is one entry in `OBJECTIVES`; the `finetune` loop, resume fingerprints and the `--objective` choices
all read it. Losses are averaged over the whole optimizer step (the `denominator` of its micro-batches), so
gradient accumulation gives the same update as one large batch. The shared parts (models, log-probs, the
`Objective` interface) are `llmctl.finetune.base`; PPO and GRPO, which generate inside the step, are
`llmctl.finetune.ppo` and `llmctl.finetune.grpo`.

- sft: next-token loss on response tokens only (labels -100 on prompts)
- dpo: direct preference optimisation against a reference (the base with the adapter off, or a frozen copy)
- ipo: DPO's pairs with IPO's squared loss around 1/(2τ) on length-averaged log-ratios (Azar et al. 2023)
- kto: unpaired desirable/undesirable examples against a reference, with a batch KL baseline (Ethayarajh et al. 2024)
- orpo: SFT on chosen plus an odds-ratio preference term, no reference (Hong et al. 2024)
- simpo: length-normalised log-likelihood margin with a target margin γ, no reference (Meng et al. 2024)
- reward: a scalar reward head trained with the pairwise loss -log σ(r_chosen - r_rejected)
- ppo: RLHF's third stage: rollouts scored by a reward model or function, KL-penalised, clipped PPO with GAE
- grpo: groups of samples per prompt, group-normalised rewards, clipped objective with a KL term

Examples:
    obj = get("dpo"); obj.data_use              # ("preference",) (layouts whose uses include preference)
    loss, extra = obj.loss(models, batch, denom, config)
"""

from __future__ import annotations

from llmctl.data.sft import IGNORE, tokenize_sft
from llmctl.errors import LlmctlError
from llmctl.finetune.base import Models, Objective, response_counts, reward_scores, token_logps
from llmctl.finetune.batches import Plan, sft_plan, to_device
from llmctl.finetune.grpo import GRPO
from llmctl.finetune.ppo import PPO

__all__ = ["OBJECTIVES", "Models", "Objective", "get", "reward_scores", "sft_eval_loss", "token_logps"]


def _pair_logps(m: Models, batch: dict, reference: bool):
    """Summed response log-probs of the policy (and the reference) for a chosen-then-rejected batch."""
    import torch

    logp = token_logps(m.net, batch, m.fast, want="rows")
    if not reference:
        return logp, None
    with torch.no_grad(), m.reference():
        ref = token_logps(m.ref_net, batch, m.fast, want="rows")
    return logp, ref


class SFT(Objective):
    name, summary, data_use = "sft", "next-token loss on response tokens", ("sft",)

    def examples(self, records, kind, tokenizer, template, seq_len):
        return tokenize_sft(records, kind, tokenizer, template, seq_len)

    def plan(self, items, config, pad_id, packed, seed):
        return sft_plan(items, config, pad_id, packed, seed)

    def denominator(self, micro):
        """Response tokens in all the step's micro-batches (the loss is a mean over them)."""
        return sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)

    def loss(self, m, batch, denom, config):
        s, _ = token_logps(m.net, batch, m.fast)
        return s / max(1, denom), {}

    def evaluate(self, m, plan, config, device, precision, max_batches):
        """Mean response-token loss (nats/token) over the first max_batches batches of the eval plan."""
        return {"eval_loss": sft_eval_loss(m.net, plan, device, precision, m.fast, max_batches)}


class DPO(Objective):
    name, summary, uses_reference = "dpo", "direct preference optimisation", True
    fingerprint_keys = ("dpo",)

    def loss(self, m, batch, denom, config):
        import torch.nn.functional as F

        logp, ref = _pair_logps(m, batch, reference=True)
        n = logp.shape[0] // 2
        margin = (logp[:n] - ref[:n]) - (logp[n:] - ref[n:])
        beta = config["dpo"]["beta"]
        if config["dpo"]["loss"] == "hinge":  # SLiC's hinge on the same margin (TRL's loss_type="hinge")
            losses = F.relu(1 - beta * margin)
        else:
            losses = -F.logsigmoid(beta * margin)
        extra = {
            "reward_accuracy": float((margin > 0).float().mean()),
            "reward_margin": float(beta * margin.detach().mean()),
        }
        return losses.sum() / max(1, denom), extra


class IPO(Objective):
    """(h - 1/(2τ))² with h the chosen-minus-rejected log-ratio to the reference, log-probs averaged over each
    response's tokens (the IPO authors' correction, as TRL does); τ = ipo.beta."""

    name, summary, uses_reference = "ipo", "identity preference optimisation (squared loss)", True
    fingerprint_keys = ("ipo",)

    def loss(self, m, batch, denom, config):
        logp, ref = _pair_logps(m, batch, reference=True)
        ratio = (logp - ref) / response_counts(batch)
        n = logp.shape[0] // 2
        h = ratio[:n] - ratio[n:]
        losses = (h - 1 / (2 * config["ipo"]["beta"])) ** 2
        extra = {"reward_accuracy": float((h > 0).float().mean()), "reward_margin": float(h.detach().mean())}
        return losses.sum() / max(1, denom), extra


class KTO(Objective):
    """Kahneman-Tversky optimisation: desirable examples pushed above, undesirable below, a reference point z0 =
    max(0, mean log-ratio of mismatched prompt/completion pairs), detached (Ethayarajh et al. 2024, eq. 8)."""

    name, summary, uses_reference = "kto", "Kahneman-Tversky optimisation on unpaired examples", True
    data_use = ("unpaired", "preference")
    fingerprint_keys = ("kto",)
    accuracy_key = "kto_accuracy"

    def examples(self, records, kind, tokenizer, template, seq_len):
        from llmctl.data.preferences import tokenize_unpaired

        return tokenize_unpaired(records, kind, tokenizer, template, seq_len)

    def plan(self, items, config, pad_id, packed, seed):
        from llmctl.data.preferences import collate_unpaired

        return Plan(
            items,
            [[i] for i in range(len(items))],
            config["train"]["batch_size"],
            seed,
            lambda rows: collate_unpaired([items[r[0]] for r in rows], pad_id),
        )

    def loss(self, m, batch, denom, config):
        import torch

        logp, ref = _pair_logps(m, batch, reference=True)
        n = logp.shape[0] // 2
        ratio = logp[:n] - ref[:n]
        z0 = (logp[n:] - ref[n:]).mean().clamp(min=0).detach()
        k = config["kto"]
        good = batch["label"].to(ratio.device)
        beta = k["beta"]
        losses = torch.where(
            good,
            k["desirable_weight"] * (1 - torch.sigmoid(beta * (ratio - z0))),
            k["undesirable_weight"] * (1 - torch.sigmoid(beta * (z0 - ratio))),
        )
        right = torch.where(good, ratio > z0, ratio < z0)
        extra = {"kto_accuracy": float(right.float().mean()), "kl": float(z0)}
        return losses.sum() / max(1, denom), extra


class ORPO(Objective):
    """Odds-ratio preference optimisation: mean response NLL of the chosen reply plus λ·-log σ(log odds ratio),
    odds from each reply's length-averaged probability (Hong et al. 2024, eq. 6–7); λ = orpo.beta.

    orpo.nll "sequence" is TRL's ORPOTrainer instead: the NLL over the chosen rows' prompt and reply tokens, one
    token mean over the micro-batch (a second forward pass over those rows)."""

    name, summary = "orpo", "SFT plus an odds-ratio preference term, no reference"
    fingerprint_keys = ("orpo",)

    def loss(self, m, batch, denom, config):
        import torch
        import torch.nn.functional as F

        avg = token_logps(m.net, batch, m.fast, want="rows") / response_counts(batch)
        n = avg.shape[0] // 2
        # log(p / (1 - p)) with p the per-token mean probability; p < 1 is kept strictly below 1 in float32
        log_odds = avg - torch.log1p(-torch.exp(avg).clamp(max=1 - 1e-6))
        ratio = log_odds[:n] - log_odds[n:]
        nll = -avg[:n]
        if config["orpo"]["nll"] == "sequence":
            rows = {k: batch[k][:n] for k in ("input_ids", "attention_mask")}
            s, count = token_logps(
                m.net, {**rows, "labels": rows["input_ids"].masked_fill(rows["attention_mask"] == 0, IGNORE)}, m.fast
            )
            nll = (s / max(1, count)).expand(n)  # the token mean, on every pair: summed / pairs it is the mean again
        losses = nll - config["orpo"]["beta"] * F.logsigmoid(ratio)
        extra = {
            "reward_accuracy": float((ratio > 0).float().mean()),
            "log_odds_ratio": float(ratio.detach().mean()),
            "nll": float(nll.detach().mean()),
        }
        return losses.sum() / max(1, denom), extra


class SimPO(Objective):
    """Simple preference optimisation: -log σ(β·(mean log-prob of chosen − of rejected) − γ), no reference
    (Meng et al. 2024, eq. 6)."""

    name, summary = "simpo", "length-normalised margin with a target gap, no reference"
    fingerprint_keys = ("simpo",)

    def loss(self, m, batch, denom, config):
        import torch.nn.functional as F

        avg = token_logps(m.net, batch, m.fast, want="rows") / response_counts(batch)
        n = avg.shape[0] // 2
        margin = avg[:n] - avg[n:]
        c = config["simpo"]
        losses = -F.logsigmoid(c["beta"] * margin - c["gamma"])
        extra = {"reward_accuracy": float((margin > 0).float().mean()), "reward_margin": float(margin.detach().mean())}
        return losses.sum() / max(1, denom), extra


class Reward(Objective):
    name, summary, head = "reward", "scalar reward head, pairwise loss", "reward"
    refused_methods = ("prompt-tuning", "prefix-tuning")
    accuracy_key = "pair_accuracy"

    def loss(self, m, batch, denom, config):
        import torch.nn.functional as F

        scores = reward_scores(m.net, batch)
        n = scores.shape[0] // 2
        diff = scores[:n] - scores[n:]
        extra = {"pair_accuracy": float((diff.detach() > 0).float().mean())}
        return -F.logsigmoid(diff).sum() / max(1, denom), extra


def sft_eval_loss(model, plan, device: str, precision, fast: bool, max_batches: int | None = None) -> float:
    """Mean response-token loss (nats/token) over the first max_batches batches of an SFT plan."""
    import torch

    was = model.training
    model.eval()
    total, count = 0.0, 0
    n = plan.per_epoch if max_batches is None else min(plan.per_epoch, max_batches)
    with torch.no_grad(), precision.autocast():
        for g in range(n):
            s, c = token_logps(model, to_device(plan.batch(g), device), fast)
            total += float(s)
            count += c
    model.train(was)
    return total / max(1, count)


OBJECTIVES: dict[str, Objective] = {
    o.name: o for o in (SFT(), DPO(), IPO(), KTO(), ORPO(), SimPO(), Reward(), PPO(), GRPO())
}


def get(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise LlmctlError(f"unknown objective {name!r}", hint=f"use one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
