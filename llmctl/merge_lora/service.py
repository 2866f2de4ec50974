"""`merge-lora`: fold a LoRA / DoRA / QLoRA adapter into its base and save a plain Hugging Face model.

QLoRA adapters were trained against the 4-bit NF4 base: by default they are merged onto that base
dequantized to full precision (what the adapter saw), in fp32, and saved as a normal model, optionally
re-quantized with bitsandbytes.

Examples:
    merge_lora("smol-alpaca-lora", "smol-alpaca", resolve_config("merge-lora"))
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError, UsageError, first_line
from llmctl.models.formats.hf import arch_summary


def adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, int]]:
    """module name → (in_features, out_features) that the adapter's LoRA weights expect."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return {}
    shapes: dict[str, list] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            for part, idx in ((".lora_A.", 1), (".lora_B.", 0)):
                if part in key and key.endswith(".weight"):
                    module = key.split(part)[0].removeprefix("base_model.model.")
                    shape = f.get_slice(key).get_shape()
                    shapes.setdefault(module, [None, None])[0 if part == ".lora_A." else 1] = shape[idx]
    return {k: tuple(v) for k, v in shapes.items()}


def check_fits(model, adapter_dir: Path, adapter_label: str, base_label: str, recorded: str | None) -> None:
    """Every module the adapter changes exists in the base with the same shape; else an error naming both."""
    modules = dict(model.named_modules())
    for name, (fin, fout) in adapter_shapes(adapter_dir).items():
        m = modules.get(name)
        have = (getattr(m, "in_features", None), getattr(m, "out_features", None)) if m is not None else None
        if have != (fin, fout):
            what = (
                "has no module " + name
                if m is None
                else f"has {name} of {have[0]}→{have[1]}, the adapter expects {fin}→{fout}"
            )
            trained = f" (trained on {recorded})" if recorded else ""
            raise LlmctlError(
                f"adapter {adapter_label}{trained} does not fit base {base_label} "
                f"({arch_summary(model.config)}): the base {what}",
                hint="pass the base the adapter was trained on with --base (see `llmctl models show`)",
            )


def fake_quantize_4bit(model, quant_type: str = "nf4", double_quant: bool = True, blocksize: int = 64) -> int:
    """Replace every linear weight but the output head by its 4-bit round trip (as QLoRA's base saw it)."""
    import bitsandbytes.functional as F
    import torch

    head = model.get_output_embeddings()
    n = 0
    with torch.no_grad():
        for _, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                w = module.weight.data
                q, state = F.quantize_4bit(
                    w.float().contiguous(), blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type
                )
                module.weight.data = F.dequantize_4bit(q, state).to(w.dtype).reshape(w.shape)
                n += 1
    return n


def merge_adapter(ad, b, qlora_base: str = "dequantized", check: bool = True):
    """Load base `b` in fp32, put adapter `ad` (resolved models) on it and merge; return (model, tokenizer, diff, n).

    diff is the max |Δlogit| of the merged model against base + adapter on a probe (None without check); n counts
    the linear layers a QLoRA base was dequantized in (qlora_base "dequantized": the NF4 weights it was trained on).

    Examples:
        merged, tok, diff, _ = merge_adapter(resolve_model("smol-lora"), resolve_model("smollm2-135m-instruct"))
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmctl.models.formats.bnb import check_bnb_4bit
    from llmctl.models.formats.hf import check_folder, load_tokenizer

    meta_ad = ad.entry.meta if ad.entry is not None else {}
    qlora = meta_ad.get("method") == "qlora"
    check_folder(Path(b.path))
    try:
        model = AutoModelForCausalLM.from_pretrained(b.path, dtype=torch.float32, trust_remote_code=False)
    except Exception as exc:
        raise LlmctlError(
            f"cannot load base {b.label} ({first_line(exc)})", hint="pass a loadable base with --base"
        ) from exc
    recorded = meta_ad.get("base_arch")
    check_fits(model, Path(ad.path), ad.label, b.label, recorded)
    dequantized = 0
    if qlora and qlora_base == "dequantized":
        check_bnb_4bit("cpu")
        q = meta_ad.get("base_quantization", {})
        dequantized = fake_quantize_4bit(model, q.get("quant_type", "nf4"), q.get("double_quant", True))
    try:
        peft_model = PeftModel.from_pretrained(model, ad.path)
    except Exception as exc:
        raise LlmctlError(
            f"adapter {ad.label} does not fit base {b.label} ({first_line(exc)})",
            hint="pass the base the adapter was trained on with --base",
        ) from exc
    from llmctl.models.rope import apply_adapter_file

    apply_adapter_file(peft_model, Path(ad.path), ad.label)  # the merged config.json keeps its RoPE scaling
    peft_model.eval()
    tokenizer = load_tokenizer(ad.path if (Path(ad.path) / "tokenizer_config.json").is_file() else b.path)
    probe = tokenizer("The capital of France is Paris. Merging must not change this.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = peft_model(input_ids=probe).logits if check else None
        merged = peft_model.merge_and_unload()
        diff = float((merged(input_ids=probe).logits - before).abs().max()) if check else None
    if diff is not None and diff > 1e-2:
        raise LlmctlError(
            f"merged model's logits differ from base + adapter by {diff:.3g}",
            hint="report this; the adapter may use a layer type that does not merge exactly",
        )
    return merged, tokenizer, diff, dequantized


def merge_lora(
    adapter: str, name: str | None, config: dict, base: str | None = None, force: bool = False, command: str = ""
) -> dict:
    """Merge `adapter` into its base (or `base`) and register the result as `name`."""
    import torch

    from llmctl.models.formats.adapter import adapter_base
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model

    registry = Registry()
    ad = resolve_model(adapter, registry)
    if ad.entry is not None and ad.entry.meta.get("merged_from"):
        return {
            "already_merged": True,
            "name": ad.label,
            "adapter": ad.entry.meta["merged_from"],
            "message": f"{ad.label} is already merged (from adapter {ad.entry.meta['merged_from']}); nothing to do",
        }
    _check_adapter(ad)
    if not name:
        raise UsageError("missing --name for the merged model")
    reservation = registry.reserve(name, force)
    b = resolve_model(base or adapter_base(Path(ad.path), ad.parents, ad.label), registry)
    if b.format != "hf":
        raise LlmctlError(
            f"base {b.label} has format {b.format!r}; merging needs a full-precision model (hf)",
            hint="pass the original model with --base",
        )
    meta_ad = ad.entry.meta if ad.entry is not None else {}
    merged, tokenizer, diff, dequantized = merge_adapter(ad, b, config["qlora_base"], config["check"])
    dtype = config["dtype"]  # float32|bfloat16|float16: the schema stores fp32|bf16|fp16 in the long form
    merged = merged.to(getattr(torch, dtype))
    meta = {
        "merged_from": ad.label,
        "base": b.label,
        "dtype": config["dtype"],
        "max_abs_logit_diff": diff,
        "adapter_method": meta_ad.get("method"),
        "requantized": config["requantize"],
    }
    if meta_ad.get("method") == "qlora":
        meta["qlora_base"] = config["qlora_base"]
        meta["dequantized_linear_layers"] = dequantized
    fmt = _save(reservation, merged, tokenizer, config, meta, [ad.name or ad.path, b.name or b.path], command)
    return {
        "already_merged": False,
        "name": name,
        "path": str(registry.model_dir(name)),
        "format": fmt,
        "adapter": ad.label,
        "base": b.label,
        "dtype": config["dtype"],
        "max_abs_logit_diff": diff,
        "requantized": config["requantize"],
    }


def _check_adapter(ad) -> None:
    """`ad` is a LoRA-family adapter (the only PEFT type with weights to fold in)."""
    from llmctl.models.formats.adapter import adapter_config

    if ad.format != "peft-adapter":
        raise LlmctlError(
            f"{ad.label} is a {ad.format!r} model, not a LoRA adapter",
            hint="pass an adapter made by `llmctl finetune --method lora|qlora|dora`",
        )
    acfg = adapter_config(Path(ad.path))
    if acfg.get("peft_type") != "LORA":
        raise LlmctlError(
            f"adapter {ad.label} is {acfg.get('peft_type')}, which has no weights to merge",
            hint="only LoRA/QLoRA/DoRA adapters merge; use the adapter directly with `llmctl generate`",
        )


def _save(reservation, merged, tokenizer, config: dict, meta: dict, parents: list, command: str) -> str:
    """Save the merged model (as `bnb` when re-quantized) and publish it; returns its format."""
    from llmctl.models.formats.bnb import bnb_config_dict, check_bnb_4bit
    from llmctl.models.publish import publish_model

    fmt, facts = "hf", {}
    with reservation.staging() as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        if config["requantize"]:
            # the registry's `bnb` format (as `llmctl quantize --backend bnb` writes it): the weights plus the
            # bitsandbytes config, applied when the model is loaded
            check_bnb_4bit("cpu")
            bnb = bnb_config_dict({"double_quant": True, "compute_dtype": config["dtype"]}, config["requantize"])
            fmt, facts = "bnb", {"bnb_config": bnb}
            meta.update(bits=4, bnb_config=bnb)
        tokenizer.save_pretrained(tmp)
        publish_model(reservation, tmp, fmt, parents=parents, config=config, command=command, meta=meta, **facts)
    return fmt
