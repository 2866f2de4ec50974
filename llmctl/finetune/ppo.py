"""PPO, RLHF's third stage: the policy samples answers to `ppo.rollout_batch` prompts, a reward model (or function)
scores them, and `ppo.epochs` passes of clipped PPO updates follow (Ziegler et al. 2019; Ouyang et al. 2022).

One llmctl step = one rollout and its updates; the learning-rate schedule moves once per step. Per response token
the reward is -kl_coef·(log π(y_t) − log π_ref(y_t)) (the KL penalty to the start model), plus the score on the
last token; advantages come from GAE (γ = ppo.gamma, λ = ppo.lam) over a value head on the policy's last hidden
state, and are whitened over the rollout. The losses: clipped policy ratio (ε = ppo.clip), clipped value error
(ppo.clip_value) weighted by ppo.vf_coef. With ppo.target_kl set, kl_coef adapts (Ziegler et al.'s
proportional controller, horizon ppo.horizon). Dropout is off during the step, so sampling, old log-probs and
updates see one policy (as TRL does). Defaults follow TRL's PPOConfig.

Examples:
    rewards, kl = kl_rewards(score, logp, ref_logp, mask, kl_coef=0.05)
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95); adv = whiten(adv, mask)
"""

from __future__ import annotations

from llmctl.finetune.rollout import OnPolicy, generate, masked_mean, reference_logps, response_stats, subset


def kl_rewards(score, logp, ref_logp, mask, kl_coef: float):
    """Per-token rewards −kl_coef·(logp − ref_logp), the score added on each row's last response token; and the
    per-token KL estimate (logp − ref_logp) on the response, 0 elsewhere."""
    import torch

    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(mask.shape[0]), last] += score
    return rewards * mask, kl


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimates and returns (advantages + values) over response tokens; 0 after the end."""
    import torch

    values = values * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, adv + values


def whiten(x, mask, eps: float = 1e-8):
    """(x − mean) / std over the masked entries (std with Bessel's correction), 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = (((x - mean) ** 2) * mask).sum() / (mask.sum() - 1).clamp(min=1)
    return (x - mean) * (var + eps).rsqrt() * mask


def ppo_terms(logp, values, old_logp, old_values, adv, returns, clip: float, clip_value: float):
    """Per-token clipped policy loss, clipped value loss (½·max of squared errors) and whether the ratio clipped."""
    import torch

    ratio = torch.exp(logp - old_logp)
    pg1, pg2 = -adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)
    v_clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    vf = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
    return torch.max(pg1, pg2), vf, (pg2 > pg1).float()


def adaptive_kl(kl_coef: float, kl: float, target: float, n: int, horizon: int) -> float:
    """Ziegler et al.'s controller: kl_coef · (1 + clip(kl/target − 1, ±0.2) · n/horizon)."""
    error = min(max(kl / target - 1, -0.2), 0.2)
    return kl_coef * (1 + error * n / horizon)


class PPO(OnPolicy):
    name, summary, uses_reference = "ppo", "PPO against a reward model or function (RLHF stage 3)", True
    fingerprint_keys = ("ppo", "reward", "rollout")
    log_keys = ("reward", "kl", "entropy", "clip_frac", "value_loss", "response_length")

    def prompts_per_batch(self, config):
        return config["ppo"]["rollout_batch"]

    def batches_per_step(self, accum):
        return 1  # one rollout per step; grad_accum splits its mini-batches instead

    def prepare(self, s, log) -> None:
        """The reward and sampling context, and a zero-initialised value head on the policy's hidden state."""
        import torch

        super().prepare(s, log)
        head = torch.nn.Linear(s.base_model.config.hidden_size, 1).to(s.device)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        s.net.add_module("v_head", head)  # trained and checkpointed with the policy, dropped before publishing

    def before_publish(self, s) -> None:
        if hasattr(s.net, "v_head"):
            delattr(s.net, "v_head")

    def _rollout(self, run, step: int):
        """Sample, score and evaluate one rollout: (rollout, old log-probs, old values, entropy, score, ref)."""
        import torch

        m, ctx, net = run.models, run.models.ctx, run.s.net
        with torch.no_grad(), run.precision.autocast():
            ro = generate(net, run.s.plan.batch(step - 1), ctx)
            logp, ent, values = response_stats(net, ro, ctx, v_head=net.v_head, entropy=True)
            ref = reference_logps(m, ro, ctx)
            score = ctx.reward.score(ro, ctx)
        return ro, logp.float(), values.float(), ent.float(), score, ref.float()

    def update(self, run, step):
        """One rollout, ppo.epochs passes of mini-batch updates, the schedule stepped once."""
        import torch

        from llmctl.training.optim import optimizer_step

        c, net, t = run.s.config["ppo"], run.s.net, run.t
        net.eval()  # no dropout: sampling, old log-probs and updates see one policy
        ro, old_logp, old_v, ent, score, ref = self._rollout(run, step)
        kl_coef = run.objective_state.setdefault("kl_coef", c["kl_coef"])
        rewards, kl = kl_rewards(score, old_logp, ref, ro.mask, kl_coef)
        adv, returns = gae(rewards, old_v, ro.mask, c["gamma"], c["lam"])
        adv = whiten(adv, ro.mask)
        rows, mb, micro = ro.mask.shape[0], t["batch_size"] * run.accum, t["batch_size"]
        sums = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "clip_frac": 0.0}
        updates, norm = 0, None
        for _ in range(c["epochs"]):
            order = torch.randperm(rows)
            for start in range(0, rows, mb):
                chunk = order[start : start + mb]
                tokens = ro.mask[chunk].sum().clamp(min=1)
                for k in range(0, len(chunk), micro):
                    idx = chunk[k : k + micro]
                    part = self._loss(run, subset(ro, idx), old_logp[idx], old_v[idx], adv[idx], returns[idx], c)
                    run.precision.backward(part["loss"] / tokens)
                    for key in sums:
                        sums[key] += float(part[key].detach()) / float(tokens)
                norm = optimizer_step(run.optimizer, None, run.params, run.precision, t["grad_clip"])
                updates += 1
        run.scheduler.step()
        seq_kl = kl.sum(1).mean()
        if c["target_kl"]:
            run.objective_state["kl_coef"] = adaptive_kl(kl_coef, float(seq_kl), c["target_kl"], rows, c["horizon"])
        extra = {k: v / updates for k, v in sums.items() if k != "loss"}
        extra.update(
            reward=float(score.mean()),
            kl=float(seq_kl),
            entropy=float(masked_mean(ent, ro.mask)),
            response_length=float(ro.lengths.mean()),
            kl_coef=kl_coef,
        )
        return sums["loss"] / updates, extra, int(ro.attention_mask.sum()), norm

    def _loss(self, run, ro, old_logp, old_v, adv, returns, c) -> dict:
        """Summed (over tokens) PPO loss of one micro-batch and its parts."""
        net, ctx = run.s.net, run.models.ctx
        with run.precision.autocast():
            logp, _, values = response_stats(net, ro, ctx, v_head=net.v_head)
        pg, vf, clipped = ppo_terms(
            logp.float(), values.float(), old_logp, old_v, adv, returns, c["clip"], c["clip_value"]
        )
        mask = ro.mask
        policy, value = (pg * mask).sum(), (vf * mask).sum()
        return {
            "loss": policy + c["vf_coef"] * value,
            "policy_loss": policy,
            "value_loss": value,
            "clip_frac": (clipped * mask).sum(),
        }
