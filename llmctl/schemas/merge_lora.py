"""Settings of `llmctl merge-lora`."""

from llmctl.config.schema import Field, Section, dtype_field

SCHEMA = Section(
    dtype=dtype_field("float32", "dtype of the saved merged weights", auto=False),
    requantize=Field(
        str, None, "re-quantize the merged model with bitsandbytes after merging", choices=["nf4", "fp4"], nullable=True
    ),
    qlora_base=Field(
        str,
        "dequantized",
        "QLoRA adapters: merge onto the 4-bit base they were trained on, "
        "dequantized to full precision, or onto the original full-precision weights",
        choices=["dequantized", "original"],
    ),
    check=Field(bool, True, "verify the merged model's logits match base + adapter on a probe input"),
)
