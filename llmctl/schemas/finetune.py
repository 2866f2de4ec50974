"""Settings of `llmctl finetune`: method, objective, data handling, LoRA/QLoRA/prompt options, training."""

from llmctl.schema import Field, Section
from llmctl.schemas._train import train_section

METHODS = ["full", "lora", "qlora", "dora", "prompt-tuning", "prefix-tuning"]
OBJECTIVES = ["sft", "dpo", "reward"]

SCHEMA = Section(
    method=Field(str, "lora", "what is trained: full weights, LoRA/QLoRA/DoRA adapters, or virtual tokens",
                 choices=METHODS),
    objective=Field(str, "sft", "sft (next-token loss on responses), dpo (preference pairs against a reference "
                    "model) or reward (scalar reward head, pairwise loss)", choices=OBJECTIVES),
    data=Section(
        "training data",
        format=Field(str, "auto", "data format; auto detects it from the fields",
                     choices=["auto", "alpaca", "chat", "text", "preference"]),
        template=Field(str, "auto", "prompt template: auto (the model's chat template, else alpaca), model, "
                       "chatml or alpaca", choices=["auto", "model", "chatml", "alpaca"]),
        eval_split=Field(float, 0.05, "held-out examples taken from the end of the file: a fraction (< 1) "
                         "or a count (>= 1); 0 disables", ge=0),
        packing=Field(bool, True, "pack short examples into full sequences (no attention across examples)"),
        max_examples=Field(int, None, "use only the first N records", ge=1, nullable=True),
    ),
    lora=Section(
        "LoRA / QLoRA / DoRA adapter",
        r=Field(int, 16, "adapter rank", ge=1),
        alpha=Field(float, 32.0, "scaling numerator: updates are scaled by alpha / r", gt=0),
        dropout=Field(float, 0.05, "dropout on the adapter input", ge=0, lt=1),
        target_modules=Field(list, ["all-linear"], "module names to adapt; all-linear = every linear layer "
                             "but the output head", item=str),
        bias=Field(str, "none", "which biases to train", choices=["none", "all", "lora_only"]),
    ),
    qlora=Section(
        "4-bit base for QLoRA (bitsandbytes)",
        quant_type=Field(str, "nf4", "4-bit data type", choices=["nf4", "fp4"]),
        double_quant=Field(bool, True, "also quantize the quantization constants"),
        compute_dtype=Field(str, "bfloat16", "dtype of the dequantized matmuls",
                            choices=["float32", "bfloat16", "float16"]),
    ),
    prompt=Section(
        "prompt-tuning and prefix-tuning",
        num_virtual_tokens=Field(int, 20, "trained virtual tokens", ge=1),
        init_text=Field(str, None, "prompt-tuning: initialise the virtual tokens from this text", nullable=True),
    ),
    dpo=Section(
        "direct preference optimisation",
        beta=Field(float, 0.1, "strength of the KL anchor to the reference model", gt=0),
    ),
    train=train_section(lr=2e-4, max_steps=300, warmup_steps=20, batch_size=8, seq_len=512, eval_every=50,
                        eval_batches=25, save_every=100, log_every=10, weight_decay=0.0, beta2=0.999),
)
