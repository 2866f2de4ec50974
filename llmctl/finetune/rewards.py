"""Rewards for PPO and GRPO: a registry reward model, a built-in rule, or a function from a file the user names.

- `load_reward_model(spec)`: an entry made by `finetune --objective reward` (LoRA adapter with its score head, or a
  full sequence-classification model with one output); it must share the policy's tokenizer (checked).
- rules: `math_exact` (the last number of the completion equals the record's `answer`), `format_regex` (the
  completion matches `reward.pattern` from start to end)
- `python:FILE:FUNC`: `FUNC(prompt, completion, **fields) -> float` imported from FILE only because the user named it
  in `--reward`/`reward.function` (never from the data); `fields` are the record's other fields.

Examples:
    rm = load_reward_model("smol-rm", "cpu"); rm.check_tokenizer(policy_tokenizer, "smol-sft")
    fn = reward_function("math_exact", config["reward"])
    fn(prompt="2+3?", completion="It is 5.", answer="5")            # 1.0
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError, UsageError, first_line

REWARD_HINT = "train one with `llmctl finetune --objective reward --data PAIRS --name N`"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _number(text: str) -> float | None:
    try:
        return float(str(text).replace(",", "").strip())
    except ValueError:
        return None


def math_exact(prompt: Any, completion: str, answer: Any = None, **_fields) -> float:
    """1.0 when the last number in the completion equals `answer` (compared as numbers, commas ignored), else 0.0."""
    found = _NUMBER.findall(completion)
    want = _number(answer) if answer is not None else None
    if not found or want is None:
        return 0.0
    got = _number(found[-1])
    return 1.0 if got is not None and math.isclose(got, want, rel_tol=0, abs_tol=1e-9) else 0.0


def format_regex(pattern: str) -> Callable[..., float]:
    """A rule giving 1.0 when the whole (stripped) completion matches `pattern` (dot matches newlines), else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)

    def score(prompt: Any, completion: str, **_fields) -> float:
        return 1.0 if compiled.fullmatch(completion.strip()) else 0.0

    return score


def load_user_function(spec: str) -> tuple[Callable[..., float], str]:
    """FUNC from FILE for `python:FILE:FUNC`, and the file's sha256 (resume fingerprint)."""
    _, rest = spec.split(":", 1)
    file, name = rest.rsplit(":", 1)
    path = Path(file).expanduser()
    if not path.is_file():
        raise LlmctlError(f"reward file {file} not found (--reward {spec})", hint="give python:FILE.py:FUNCTION")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    module_name = f"llmctl_reward_{digest}"
    try:
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    except Exception as exc:
        raise LlmctlError(
            f"cannot import reward file {file} ({type(exc).__name__}: {first_line(exc)})",
            hint="fix the file; it must import on its own",
        ) from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise LlmctlError(
            f"reward file {file} has no function {name!r}",
            hint=f"functions there: {', '.join(found) or 'none'}; it needs "
            f"def {name}(prompt, completion, **fields) -> float",
        )
    return fn, digest


def check_signature(fn: Callable[..., float], label: str, fields: dict) -> None:
    """Refuse a function that cannot take (prompt, completion, **the record's other fields)."""
    try:
        inspect.signature(fn).bind(prompt="", completion="", **fields)
    except (TypeError, ValueError):
        extra = "".join(f", {k}" for k in fields)
        raise LlmctlError(
            f"reward function {label} cannot be called as f(prompt, completion{extra})",
            hint="define it as def score(prompt, completion, **fields) -> float",
        ) from None


def reward_function(spec: str, reward_config: dict) -> tuple[Callable[..., float], str]:
    """The scoring function for `reward.function` and a fingerprint of it (the rule's name, or the file's hash)."""
    if spec == "math_exact":
        return math_exact, spec
    if spec == "format_regex":
        return format_regex(reward_config["pattern"]), f"{spec}:{reward_config['pattern']}"
    if spec.startswith("python:"):
        fn, digest = load_user_function(spec)
        return fn, f"{spec}@{digest}"
    raise UsageError(f"--reward {spec}: must be math_exact, format_regex or python:FILE:FUNC")


def call_reward(fn: Callable[..., float], label: str, prompt: Any, completion: str, fields: dict) -> float:
    """One reward from a rule or user function, as a finite float; anything else is one clear error."""
    try:
        value = fn(prompt=prompt, completion=completion, **fields)
    except LlmctlError:
        raise
    except Exception as exc:
        raise LlmctlError(
            f"reward function {label} raised {type(exc).__name__}: {first_line(exc)}",
            hint="fix the function; it must return a number for every completion",
        ) from exc
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LlmctlError(
            f"reward function {label} returned {value!r}, not a finite number",
            hint="return a float for every completion",
        )
    return float(value)


@dataclass
class RewardModel:
    """A loaded reward model (scalar head), its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    label: str
    name: str | None
    template: str | None

    def check_tokenizer(self, tokenizer, policy_label: str) -> None:
        """Refuse a reward model whose token ids mean other text than the policy's."""
        mine, theirs = self.tokenizer.get_vocab(), tokenizer.get_vocab()
        if mine != theirs:
            raise LlmctlError(
                f"reward model {self.label} uses another tokenizer than {policy_label} "
                f"({len(mine):,} vs {len(theirs):,} tokens, different ids)",
                hint=f"train the reward model from {policy_label}'s family: llmctl finetune "
                f"--objective reward --model {policy_label} …",
            )

    def scores(self, batch: dict):
        """Scalar reward per row of a right-padded batch (read at each row's last real token)."""
        import torch

        from llmctl.finetune.base import reward_scores

        with torch.no_grad():
            return reward_scores(self.model, batch)


def locate_reward_model(spec: str) -> tuple:
    """(resolved entry, its kind, the folder of the base weights) of a reward model; anything else is refused."""
    from llmctl.models import formats
    from llmctl.models.formats.adapter import adapter_base, adapter_config
    from llmctl.models.formats.hf import read_json
    from llmctl.models.resolve import resolve_model

    resolved = resolve_model(spec)
    kind = formats.get(resolved.format).kind
    path = Path(resolved.path)
    if kind == "adapter":
        if adapter_config(path).get("task_type") != "SEQ_CLS":
            raise LlmctlError(
                f"{resolved.label} is not a reward model (an adapter without a reward head)", hint=REWARD_HINT
            )
        return resolved, kind, resolve_model(adapter_base(path, resolved.parents, resolved.label)).path
    if resolved.format == "hf":
        cfg = read_json(path / "config.json", "model config") if (path / "config.json").is_file() else {}
        arch = (cfg.get("architectures") or [""])[0]
        if not arch.endswith("ForSequenceClassification") or len(cfg.get("id2label") or {"0": 0}) != 1:
            raise LlmctlError(
                f"{resolved.label} is not a reward model ({arch or 'no architecture'}, no scalar reward head)",
                hint=REWARD_HINT,
            )
        return resolved, kind, str(path)
    raise LlmctlError(
        f"{resolved.label} has format {resolved.format!r}; a reward model is an hf or "
        "peft-adapter entry with a scalar head",
        hint=REWARD_HINT,
    )


def load_reward_model(spec: str, device: str = "cpu") -> RewardModel:
    """Load a reward model (`finetune --objective reward` output) frozen, in fp32, for scoring."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from llmctl.models.formats.adapter import attach
    from llmctl.models.formats.hf import check_folder, load_tokenizer

    resolved, kind, base_path = locate_reward_model(spec)
    path = Path(resolved.path)
    check_folder(Path(base_path))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base_path, num_labels=1, dtype=torch.float32, trust_remote_code=False
        )
    except Exception as exc:
        raise LlmctlError(f"cannot load reward model {resolved.label} ({first_line(exc)})", hint=REWARD_HINT) from exc
    if kind == "adapter":
        model = attach(model, str(path), resolved.label)
    tokenizer = load_tokenizer(str(path) if (path / "tokenizer_config.json").is_file() else base_path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    meta = resolved.entry.meta if resolved.entry else {}
    return RewardModel(model, tokenizer, resolved.label, resolved.name, meta.get("template"))
