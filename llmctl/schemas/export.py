"""Settings of `llmctl export`: the target format (choices from the export targets table) and its parity check."""

from llmctl.config.schema import Field, Rule, Section
from llmctl.export.targets import (
    FLOAT_TYPES,
    GGUF_TYPES,
    OPENVINO_BITS,
    TARGETS,
    gates_text,
    types_table,
    valid_bits,
    valid_type,
)

SCHEMA = Section(
    rules=(
        Rule(("format", "type"), valid_type, f"--type must be one the format takes ({types_table()})"),
        Rule(("format", "bits"), valid_bits, f"--bits must be one the format takes ({types_table()})"),
        Rule(
            ("format", "lora_gguf"),
            lambda fmt, lora: not lora or fmt == "gguf",
            "lora_gguf writes a GGUF LoRA adapter file: only with format gguf",
        ),
    ),
    format=Field(str, "gguf", "where the model goes: " + ", ".join(TARGETS), choices=list(TARGETS)),
    type=Field(
        str,
        None,
        f"gguf/ollama: GGUF type ({', '.join(GGUF_TYPES)}); hf: safetensors dtype ({', '.join(FLOAT_TYPES)}); "
        "null = q8_0 for GGUF, f32 for hf",
        nullable=True,
        choices=list(GGUF_TYPES),
    ),
    bits=Field(
        int,
        None,
        "openvino: weight bits (4 grouped int4, 8 per-channel int8); null = 8",
        nullable=True,
        check=lambda b: b in OPENVINO_BITS,
        rule=" or ".join(map(str, OPENVINO_BITS)),
    ),
    group_size=Field(int, 128, "openvino --bits 4: weights per int4 group (-1 = per channel)", ge=-1),
    lora_gguf=Field(
        bool,
        False,
        "gguf from an adapter: write the adapter as a GGUF LoRA file (llama.cpp --lora) instead of merging it",
    ),
    template=Field(
        str,
        None,
        "chat template written to GGUF/Ollama: model (the tokenizer's own), chatml or alpaca; null = the "
        "template the registry recorded for a finetune, else the model's own",
        nullable=True,
        choices=["model", "chatml", "alpaca"],
    ),
    check=Section(
        "parity check of the export against the source, by an independent reader",
        enabled=Field(bool, True, "run the check (--no-check skips it)"),
        data=Field(str, None, "held-out text file for perplexity; null = the text bundled with llmctl", nullable=True),
        prompts=Field(int, 8, "prompts of llmctl's fixed set whose greedy continuations are compared", ge=1, le=20),
        max_new_tokens=Field(int, 16, "greedy tokens generated per prompt", ge=1),
        logit_sequences=Field(int, 4, "sequences (prompt + continuation) whose logits are compared", ge=1, le=20),
        seqlen=Field(int, 512, "perplexity window in tokens (non-overlapping windows)", ge=2),
        max_ppl_increase=Field(
            float,
            None,
            f"gate: largest relative perplexity increase (0.02 = 2 %); null = the type's default ({gates_text()})",
            nullable=True,
            ge=0.0,
        ),
        llama_cpp=Field(bool, True, "GGUF: also run llama-cpp-python as a reader when it is installed"),
    ),
)
