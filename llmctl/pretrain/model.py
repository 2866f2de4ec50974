"""The model `pretrain` trains from scratch: its resolved shape, checks, and the transformers config.

Examples:
    shape = model_shape(config["model"], vocab_size=4096); check_shape(shape)
    model = build_model(hf_config(shape, config["model"], tokenizer))
"""

from __future__ import annotations

import math

from llmctl.errors import LlmctlError

# Shape keys a checkpoint must agree on to be resumed.
SHAPE_KEYS = (
    "arch",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "max_position_embeddings",
    "vocab_size",
    "tie_embeddings",
)


def model_shape(model_cfg: dict, vocab_size: int) -> dict:
    """The resolved size of the model: what must match for a checkpoint to be resumed."""
    arch, h = model_cfg["arch"], model_cfg["hidden_size"]
    heads = model_cfg["num_heads"]
    kv = model_cfg["num_kv_heads"] or heads
    if arch == "gpt2":
        kv = heads
    inter = model_cfg["intermediate_size"]
    if inter is None:
        inter = 4 * h if arch == "gpt2" else int(math.ceil(8 * h / 3 / 64) * 64)
    mult = model_cfg["vocab_multiple"]
    padded = int(math.ceil(vocab_size / mult) * mult)
    return {
        "arch": arch,
        "hidden_size": h,
        "num_layers": model_cfg["num_layers"],
        "num_heads": heads,
        "num_kv_heads": kv,
        "intermediate_size": inter,
        "max_position_embeddings": model_cfg["max_position_embeddings"],
        "vocab_size": padded,
        "tie_embeddings": model_cfg["tie_embeddings"],
    }


def check_shape(shape: dict) -> None:
    if shape["hidden_size"] % shape["num_heads"]:
        raise LlmctlError(
            f"model.hidden_size {shape['hidden_size']} is not divisible by model.num_heads {shape['num_heads']}",
            hint="change one of them in the profile or with --set",
        )
    if shape["num_heads"] % shape["num_kv_heads"]:
        raise LlmctlError(
            f"model.num_heads {shape['num_heads']} is not a multiple of model.num_kv_heads {shape['num_kv_heads']}",
            hint="use a divisor of num_heads for num_kv_heads",
        )
    if shape["arch"] == "llama" and (shape["hidden_size"] // shape["num_heads"]) % 2:
        raise LlmctlError(
            f"head size {shape['hidden_size'] // shape['num_heads']} is odd; RoPE needs an even one",
            hint="change model.hidden_size or model.num_heads",
        )


def hf_config(shape: dict, model_cfg: dict, tok):
    """A transformers config (LlamaConfig or GPT2Config) for the shape."""
    ids = {
        "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    if shape["arch"] == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=shape["vocab_size"],
            hidden_size=shape["hidden_size"],
            intermediate_size=shape["intermediate_size"],
            num_hidden_layers=shape["num_layers"],
            num_attention_heads=shape["num_heads"],
            num_key_value_heads=shape["num_kv_heads"],
            max_position_embeddings=shape["max_position_embeddings"],
            rope_theta=model_cfg["rope_theta"],
            rms_norm_eps=model_cfg["norm_eps"],
            attention_dropout=model_cfg["dropout"],
            initializer_range=model_cfg["init_std"],
            tie_word_embeddings=shape["tie_embeddings"],
            hidden_act="silu",
            attn_implementation="sdpa",
            use_cache=True,
            **ids,
        )
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=shape["vocab_size"],
        n_embd=shape["hidden_size"],
        n_layer=shape["num_layers"],
        n_head=shape["num_heads"],
        n_inner=shape["intermediate_size"],
        n_positions=shape["max_position_embeddings"],
        layer_norm_epsilon=model_cfg["norm_eps"],
        resid_pdrop=model_cfg["dropout"],
        embd_pdrop=model_cfg["dropout"],
        attn_pdrop=model_cfg["dropout"],
        initializer_range=model_cfg["init_std"],
        tie_word_embeddings=shape["tie_embeddings"],
        activation_function="gelu_new",
        attn_implementation="sdpa",
        **ids,
    )


def build_model(config_obj):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config_obj, attn_implementation="sdpa")
