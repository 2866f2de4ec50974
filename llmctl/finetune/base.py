"""What every finetuning objective shares: the models a loss sees, per-token log-probabilities, reward scores and
the `Objective` interface the loop calls.

Two kinds of objectives: offline ones (SFT, DPO, …) whose data plan yields the micro-batches of each step and
whose `loss` the loop differentiates; rollout ones (`rollouts = True`: PPO, GRPO) that make their own
micro-batches each step by generating from prompts, and run the whole step in `update(run, step)` with the
run's optimizer, schedule and precision (llmctl.training).

Examples:
    logp = token_logps(model, batch, fast=True, want="rows")     # summed response log-probs per row
    scores = reward_scores(reward_model, batch)                   # one scalar per row
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from llmctl.data.sft import IGNORE, tokenize_pref
from llmctl.errors import LlmctlError
from llmctl.finetune.batches import pref_plan, to_device

# What each data use means, for messages (the `use` of llmctl.data.layouts).
NEEDS = {
    "sft": ("responses to learn", '{"instruction": "…", "output": "…"}'),
    "preference": ("preference data (prompt, chosen, rejected)", '{"prompt": "…", "chosen": "…", "rejected": "…"}'),
    "unpaired": (
        "KTO data (prompt, completion, label) or preference pairs",
        '{"prompt": "…", "completion": "…", "label": true}',
    ),
    "prompts": ("prompts ({prompt, …}; other fields go to the reward function)", '{"prompt": "…", "answer": "…"}'),
}


@dataclass
class Models:
    """What a loss needs: the trained net, a frozen reference (None: the net with its adapter off), the fast path."""

    net: Any
    ref: Any = None
    fast: bool = True
    ctx: Any = None  # a rollout objective's run context (reward, sampling settings): `Setup.objective_ctx`

    def reference(self):
        """A context in which `self.ref_net` computes the reference model's outputs."""
        if self.ref is not None or not hasattr(self.net, "disable_adapter"):
            return contextlib.nullcontext()
        return self.net.disable_adapter()

    @property
    def ref_net(self):
        return self.ref if self.ref is not None else self.net


def token_logps(model, batch: dict, fast: bool, want: str = "sum"):
    """Over the labelled (response) positions: the summed NLL and count ("sum"), or per-row log-prob sums ("rows").

    The fast path runs the transformer body and applies the output head only where labels exist, so no
    full (batch, length, vocab) logits tensor is ever built.
    """
    import torch
    import torch.nn.functional as F

    from llmctl.finetune.model import lm_parts

    labels = batch["labels"]
    target = labels[:, 1:]
    sel = target != IGNORE
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    if fast:
        body, head = lm_parts(model)
        hidden = body(**kwargs, use_cache=False).last_hidden_state[:, :-1]
        logits = at_least_fp32(head(hidden[sel]))
    else:
        out = model(**kwargs, use_cache=False)
        logits = at_least_fp32(out.logits[:, -labels.shape[1] :][:, :-1][sel])
    y = target[sel]
    if want == "sum":
        return F.cross_entropy(logits, y, reduction="sum"), int(sel.sum())
    logp = -F.cross_entropy(logits, y, reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(target)[sel]
    return torch.zeros(labels.shape[0], device=logp.device, dtype=logp.dtype).index_add(0, rows, logp)


def at_least_fp32(x):
    """Half-precision tensors in float32 (losses and softmaxes are computed there); float32 and float64 unchanged."""
    import torch

    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def response_counts(batch: dict):
    """Response (labelled) tokens per row, as a float tensor (for length-normalised log-probs)."""
    return (batch["labels"][:, 1:] != IGNORE).sum(1).clamp(min=1).float()


def reward_scores(model, batch: dict):
    """Scalar reward per row, read at each row's last real token."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    hidden = body(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1
    h = hidden[range(hidden.shape[0]), last]
    peft = hasattr(model, "base_model") and hasattr(model, "peft_config")
    head = model.base_model.model.score if peft else base.score
    return at_least_fp32(head(h).squeeze(-1))


class Objective:
    """One training objective (see the module doc); subclasses fill in the data, the loss and the evaluation."""

    name = ""
    summary = ""
    data_use: tuple[str, ...] = ("preference",)  # the layout uses it trains on (llmctl.data.layouts), first = main
    head = "lm"  # "lm" (causal LM) or "reward" (sequence classification head with one output)
    uses_reference = False
    rollouts = False  # True: makes its own micro-batches each step from prompts (`update`), no `loss` plan
    fingerprint_keys: tuple[str, ...] = ()  # profile sections whose values a resumed run must keep
    log_keys: tuple[str, ...] = ()  # step metrics shown on the log line besides the loss
    refused_methods: tuple[str, ...] = ()  # training methods it cannot use
    registry_metrics: tuple[str, ...] = ()  # final metrics kept on the registry entry besides the losses
    accuracy_key = "reward_accuracy"

    def check_data(self, kind: str, path) -> None:
        """Refuse data whose layout serves none of this objective's uses, saying what it needs."""
        from llmctl.data import layouts

        layout = layouts.get(kind)
        if set(layout.uses) & set(self.data_use):
            return
        if layout.use == "preference" and self.data_use[0] == "sft":
            fields = ", ".join(s.label() for s in layout.slots)
            raise LlmctlError(
                f"{path} is preference data ({fields}); {self.name} needs responses",
                hint="use --objective dpo or another preference objective, or --objective reward",
            )
        need, example = NEEDS[self.data_use[0]]
        raise LlmctlError(
            f"--objective {self.name} needs {need}; {path} is {kind} data", hint=f"give a JSONL of {example}"
        )

    def examples(self, records, kind: str, tokenizer, template: str, seq_len: int):
        return tokenize_pref(records, tokenizer, template, seq_len)

    def plan(self, items, config: dict, pad_id: int, packed: bool, seed: int):
        return pref_plan(items, config, pad_id, seed)

    def denominator(self, micro: list[dict]) -> int:
        """The number the step's summed loss is divided by: preference pairs in all its micro-batches."""
        return sum(b["input_ids"].shape[0] // 2 for b in micro)

    def batches_per_step(self, accum: int) -> int:
        """Data-plan batches one step consumes (grad_accum micro-batches; PPO's one rollout batch)."""
        return accum

    def loss(self, m: Models, batch: dict, denom: int, config: dict):
        raise NotImplementedError

    def check(self, config: dict) -> None:
        """Checks of the objective's own settings before anything is read (a reward file, a reward model)."""

    def prepare(self, s, log) -> None:
        """After the model is built (and its reference): load what the objective needs (reward model, value head)."""

    def update(self, run, step: int):
        """Rollout objectives: one whole step (generate, score, optimize); returns (loss, extras, tokens, grad norm)."""
        raise NotImplementedError

    def before_publish(self, s) -> None:
        """Before the result is saved: drop training-only parts (a value head)."""

    def evaluate(self, m: Models, plan, config: dict, device: str, precision, max_batches: int | None) -> dict:
        """Held-out loss and pair accuracy (summed per pair, averaged over pairs)."""
        import torch

        was = m.net.training
        m.net.eval()
        total, correct, count = 0.0, 0.0, 0
        n = plan.per_epoch if max_batches is None else min(plan.per_epoch, max_batches)
        with torch.no_grad(), precision.autocast():
            for g in range(n):
                b = to_device(plan.batch(g), device)
                pairs = b["input_ids"].shape[0] // 2
                loss, extra = self.loss(m, b, 1, config)
                total += float(loss)
                correct += extra[self.accuracy_key] * pairs
                count += pairs
        m.net.train(was)
        return {"eval_loss": total / max(1, count), "eval_accuracy": correct / max(1, count)}
