"""The model `finetune` trains: the base (fp32, 4-bit NF4 for QLoRA, or with a reward head) and the method's wrapper.

Examples:
    base = load_base(resolved, config, "cpu", tokenizer)
    net = apply_method(base, config, tokenizer)          # LoRA / DoRA / prompt tuning / full weights
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError, first_line

PEFT_METHODS = ("lora", "qlora", "dora", "prompt-tuning", "prefix-tuning")


def linear_module_names(model) -> list[str]:
    """Short names of the linear layers an adapter can target (not the output head)."""
    import torch

    names = set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for full, module in model.named_modules():
        kind = type(module).__name__
        if module is head or not full:
            continue
        if isinstance(module, torch.nn.Linear) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt"):
            names.add(full.split(".")[-1])
    return sorted(names)


def _check_targets(model, targets: list[str]) -> None:
    if targets in (["all-linear"], "all-linear"):
        return
    names = {n for n, _ in model.named_modules()}
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise LlmctlError(
            f"lora.target_modules {', '.join(missing)} match no module of this model",
            hint=f"linear modules here: {', '.join(linear_module_names(model))} (or all-linear)",
        )


def load_base(base, config: dict, device: str, tokenizer):
    """The base model for a method and objective: fp32, or 4-bit NF4 for qlora, or with a reward head."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llmctl.models.formats.bnb import check_bnb_4bit
    from llmctl.models.formats.hf import check_folder

    method, objective = config["method"], config["objective"]
    if Path(base.path).is_dir():
        check_folder(Path(base.path))
    kwargs: dict = {"dtype": torch.float32}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        check_bnb_4bit(device)
        q = config["qlora"]
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q["quant_type"],
            bnb_4bit_use_double_quant=q["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, q["compute_dtype"]),
        )
        kwargs["device_map"] = {"": device}
    cls = AutoModelForSequenceClassification if objective == "reward" else AutoModelForCausalLM
    if objective == "reward":
        kwargs["num_labels"] = 1
    kwargs.update(_rope_config(base, config, kwargs.pop("num_labels", None)))
    try:
        model = cls.from_pretrained(base.path, trust_remote_code=False, **kwargs)
    except Exception as exc:
        raise LlmctlError(
            f"cannot load base model {base.label} ({first_line(exc)})",
            hint="finetune needs a Hugging Face model folder or registry entry",
        ) from exc
    if objective == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    if method != "qlora":
        model.to(device)
    return model


def _rope_config(base, config: dict, num_labels: int | None) -> dict:
    """from_pretrained arguments: the base's config with `--rope-scaling` written in, so the model is built with it."""
    from llmctl.models.rope import scale_config, wanted

    extra = {"num_labels": num_labels} if num_labels else {}
    if not wanted(config.get("rope")):
        return extra
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base.path, trust_remote_code=False, **extra)
    scale_config(cfg, config["rope"], base.label)
    return {"config": cfg}


def apply_method(model, config: dict, tokenizer):
    """Wrap the base for the training method; return the model to train."""
    method, objective = config["method"], config["objective"]
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    task = "SEQ_CLS" if objective == "reward" else "CAUSAL_LM"
    if method in ("lora", "qlora", "dora"):
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lo = config["lora"]
        targets = lo["target_modules"]
        _check_targets(model, targets)
        peft_config = LoraConfig(
            r=lo["r"],
            lora_alpha=lo["alpha"],
            lora_dropout=lo["dropout"],
            bias=lo["bias"],
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            use_dora=method == "dora",
            task_type=task,
        )
    elif method == "prompt-tuning":
        p = config["prompt"]
        extra = {}
        if p["init_text"]:
            extra = {
                "prompt_tuning_init": "TEXT",
                "prompt_tuning_init_text": p["init_text"],
                "tokenizer_name_or_path": tokenizer.name_or_path,
            }
        peft_config = PromptTuningConfig(task_type=task, num_virtual_tokens=p["num_virtual_tokens"], **extra)
    else:
        peft_config = PrefixTuningConfig(task_type=task, num_virtual_tokens=config["prompt"]["num_virtual_tokens"])
    try:
        if method == "prompt-tuning" and config["prompt"]["init_text"]:
            import transformers

            orig = transformers.AutoTokenizer.from_pretrained
            transformers.AutoTokenizer.from_pretrained = lambda *a, **k: tokenizer  # no hub lookups
            try:
                return get_peft_model(model, peft_config)
            finally:
                transformers.AutoTokenizer.from_pretrained = orig
        return get_peft_model(model, peft_config)
    except LlmctlError:
        raise
    except Exception as exc:
        raise LlmctlError(
            f"cannot set up {method} on this model ({first_line(exc)})",
            hint="see `llmctl profiles show finetune/lora` for the adapter settings",
        ) from exc


def lm_parts(model):
    """(body, head) of a causal LM (through a PEFT wrapper), for the response-only loss path."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return body, head
