"""PEFT adapter folders: which base an adapter belongs to, and putting it on a loaded base model.

An adapter is not a model by itself: the loading service loads its base (the recorded registry parent, else
`base_model_name_or_path` in adapter_config.json) and attaches it here.

Examples:
    base = adapter_base(Path("runs/lora"), parents=["smollm2-135m-instruct"])
    model = attach(model, "runs/lora", "my-lora")
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError, first_line
from llmctl.models.formats.hf import read_json, refuse_remote_code


def adapter_config(path: Path) -> dict:
    """The adapter's adapter_config.json (checked: readable JSON, no custom code)."""
    refuse_remote_code(Path(path))
    return read_json(Path(path) / "adapter_config.json", "adapter config")


def adapter_base(path: Path, parents: list[str], label: str) -> str:
    """The base model an adapter was trained on: its recorded parent, else adapter_config.json's base."""
    if parents:
        return parents[0]
    base = adapter_config(path).get("base_model_name_or_path")
    if not base:
        raise LlmctlError(
            f"adapter {label} does not record its base model",
            hint="pass the base with --model and the adapter with --adapter",
        )
    return base


def attach(model, adapter_path: str, label: str):
    """Put a PEFT adapter on a loaded model; a mismatched base is a clear error."""
    from peft import PeftModel

    from llmctl.models.rope import apply_adapter_file

    adapter_config(Path(adapter_path))
    try:
        attached = PeftModel.from_pretrained(model, adapter_path)
    except Exception as exc:
        raise LlmctlError(
            f"adapter {label} does not fit this base model ({first_line(exc)})",
            hint="use the base model the adapter was trained on (see `llmctl models show`)",
        ) from exc
    apply_adapter_file(attached, Path(adapter_path), label)  # RoPE scaling it was trained with, if any
    return attached
