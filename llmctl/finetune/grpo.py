"""GRPO (Shao et al. 2024, DeepSeekMath): `grpo.num_generations` samples per prompt, each rewarded by a rule, a user
function or a reward model; advantages are the rewards normalised within each prompt's group (no value model);
a clipped policy ratio (ε = grpo.epsilon) and a per-token KL to the reference, weighted by grpo.beta, with the
unbiased estimator exp(r) − r − 1, r = log π_ref − log π.

One llmctl step = train.batch_size × train.grad_accum prompts (grad_accum micro-batches of batch_size prompts
and their groups), then grpo.epochs optimizer updates on those samples (μ in the paper; with 1 the ratio is 1 and
the clip never acts). The loss (grpo.loss_type, TRL's names): "grpo", the paper's, each sample's per-token mean
averaged over samples; "dapo", one mean over all the step's response tokens (Yu et al. 2025, with clip-higher
grpo.epsilon_high); "dr_grpo", the token sum over samples × rollout.max_new_tokens (Liu et al. 2025). Dropout is
off during the step. Defaults: ε 0.2 and β 0.04 (the paper), 8 generations (TRL).

Examples:
    adv = group_advantages(torch.tensor([1., 0., 0., 0.]), group=2, scale=True)    # [0.707, -0.707, 0, 0]
    per_token, clipped, kl = grpo_terms(logp, old_logp, ref_logp, adv, epsilon=0.2, beta=0.04)
    loss = grpo_loss(per_token, mask, "dapo", samples=8, step_tokens=200, max_len=64)
"""

from __future__ import annotations

from llmctl.finetune.rollout import OnPolicy, generate, masked_mean, reference_logps, response_stats

# Added to the group's standard deviation before dividing (TRL's value), so equal rewards give advantage 0.
STD_EPS = 1e-4


def group_advantages(rewards, group: int, scale: bool = True):
    """(r − group mean) / (group std + 1e-4), std with Bessel's correction; without `scale`, r − group mean."""
    r = rewards.view(-1, group)
    centred = r - r.mean(1, keepdim=True)
    if scale:
        centred = centred / (r.std(1, keepdim=True) + STD_EPS)
    return centred.reshape(-1)


def k3_kl(logp, ref_logp):
    """Per-token KL(π ‖ π_ref) estimate exp(r) − r − 1 with r = ref − logp (non-negative, unbiased)."""
    import torch

    r = ref_logp - logp
    return torch.exp(r) - r - 1


def grpo_terms(
    logp, old_logp, ref_logp, adv, epsilon: float, beta: float, epsilon_high: float | None = None, kl_ratio=False
):
    """Per-token loss −(min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A) − β·KL), whether ρ was clipped, and the KL (0 without a
    reference); ε_high defaults to ε. With kl_ratio the KL term is ρ·KL (differentiable ρ, so even at ρ = 1 its
    gradient is the reverse KL's; DeepSeek-V3.2, TRL's use_bias_correction_kl)."""
    import torch

    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    high = epsilon if epsilon_high is None else epsilon_high
    obj1, obj2 = ratio * a, ratio.clamp(1 - epsilon, 1 + high) * a
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    kl_term = kl * ratio if kl_ratio else kl
    return -(torch.min(obj1, obj2) - beta * kl_term), (obj2 < obj1).float(), kl


def grpo_loss(per_token, mask, loss_type: str, samples: int, step_tokens: int, max_len: int):
    """This micro-batch's share of the step's loss: "grpo" Σ_rows (token mean of the row) / samples; "dapo" the
    token sum / the step's response tokens; "dr_grpo" the token sum / (samples × max_len)."""
    if loss_type == "grpo":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / samples
    total = (per_token * mask).sum()
    return total / max(1, step_tokens) if loss_type == "dapo" else total / (samples * max_len)


class GRPO(OnPolicy):
    name, summary, uses_reference = "grpo", "group-relative policy optimisation with reward functions", True
    fingerprint_keys = ("grpo", "reward", "rollout")
    log_keys = ("reward", "reward_std", "kl", "clip_frac", "response_length")

    def _rollouts(self, run, step: int) -> list[dict]:
        """The step's groups: per micro-batch the rollout, advantages, old and reference log-probs (no grad)."""
        import torch

        c, m, ctx, net = run.s.config["grpo"], run.models, run.models.ctx, run.s.net
        out = []
        with torch.no_grad(), run.precision.autocast():
            for k in range(run.accum):
                items = run.s.plan.batch((step - 1) * run.accum + k)
                ro = generate(net, [it for it in items for _ in range(c["num_generations"])], ctx)
                score = ctx.reward.score(ro, ctx)
                adv = group_advantages(score, c["num_generations"], c["scale_rewards"])
                old = response_stats(net, ro, ctx)[0].float() if c["epochs"] > 1 else None
                ref = reference_logps(m, ro, ctx).float() if c["beta"] > 0 else None
                std = score.view(-1, c["num_generations"]).std(1).mean()
                out.append({"ro": ro, "adv": adv, "old": old, "ref": ref, "score": score, "std": float(std)})
        return out

    def update(self, run, step):
        """Sample the step's groups, then grpo.epochs updates over all of them; the schedule moves once."""
        from llmctl.training.optim import optimizer_step

        c, net, t = run.s.config["grpo"], run.s.net, run.t
        net.eval()  # no dropout: sampling and updates see one policy
        groups = self._rollouts(run, step)
        samples = sum(g["ro"].mask.shape[0] for g in groups)
        step_tokens = int(sum(g["ro"].mask.sum() for g in groups))
        max_len = run.models.ctx.gen["max_new_tokens"]
        sums = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
        norm = None
        for _ in range(c["epochs"]):
            for g in groups:
                ro = g["ro"]
                with run.precision.autocast():
                    logp = response_stats(net, ro, run.models.ctx)[0].float()
                old = g["old"] if g["old"] is not None else logp.detach()
                per_token, clipped, kl = grpo_terms(
                    logp, old, g["ref"], g["adv"], c["epsilon"], c["beta"], c["epsilon_high"], c["kl_ratio"]
                )
                loss = grpo_loss(per_token, ro.mask, c["loss_type"], samples, step_tokens, max_len)
                run.precision.backward(loss)
                share = ro.mask.shape[0] / samples
                sums["loss"] += float(loss.detach())
                sums["kl"] += float(masked_mean(kl.detach(), ro.mask)) * share
                sums["clip_frac"] += float(masked_mean(clipped, ro.mask)) * share
            norm = optimizer_step(run.optimizer, None, run.params, run.precision, t["grad_clip"])
        run.scheduler.step()
        scores = [s for g in groups for s in g["score"].tolist()]
        extra = {
            "kl": sums["kl"] / c["epochs"],
            "clip_frac": sums["clip_frac"] / c["epochs"],
            "reward": sum(scores) / len(scores),
            "reward_std": sum(g["std"] for g in groups) / len(groups),
            "response_length": sum(float(g["ro"].lengths.sum()) for g in groups) / samples,
        }
        tokens = sum(int(g["ro"].attention_mask.sum()) for g in groups)
        return sums["loss"] / c["epochs"], extra, tokens, norm
