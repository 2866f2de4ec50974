"""Settings of `llmctl generate`."""

from llmctl.config.schema import Field, Section, device_field, dtype_field
from llmctl.schemas._rope import ROPE_RULES, rope_section
from llmctl.schemas.serve import BACKENDS

SCHEMA = Section(
    rules=ROPE_RULES,
    max_new_tokens=Field(int, 256, "tokens to generate at most per answer", ge=1),
    do_sample=Field(bool, False, "sample (true) or decode greedily / by beam search (false)"),
    temperature=Field(float, 1.0, "softmax temperature when sampling; 0 means greedy", ge=0.0),
    top_k=Field(int, 50, "sample only from the k most likely tokens; 0 disables", ge=0),
    top_p=Field(float, 1.0, "nucleus sampling: smallest token set with this probability mass", gt=0.0, le=1.0),
    num_beams=Field(int, 1, "beam search width; 1 disables beam search", ge=1),
    length_penalty=Field(float, 1.0, "beam search: exponent on length (>1 favours longer answers)"),
    repetition_penalty=Field(float, 1.0, "divide logits of already seen tokens by this (CTRL style)", gt=0.0),
    frequency_penalty=Field(float, 0.0, "subtract this times a token's count in the answer so far", ge=-2.0, le=2.0),
    presence_penalty=Field(float, 0.0, "subtract this once from every token already in the answer", ge=-2.0, le=2.0),
    stop=Field(list, [], "stop sequences; generation ends at the first and it is trimmed", item=str),
    seed=Field(int, None, "random seed for sampling; null means not seeded", nullable=True),
    num_return_sequences=Field(int, 1, "answers per prompt", ge=1),
    chat=Field(bool, None, "apply the model's chat template; null = when the model has one", nullable=True),
    system=Field(str, None, "system message for chat models", nullable=True),
    batch_size=Field(int, 8, "prompts per forward pass in batch mode", ge=1),
    dtype=dtype_field("auto", "weights dtype; auto = the checkpoint's own"),
    device=device_field(),
    backend=Field(
        str, "auto", "inference backend; auto = the fastest that fits the model and settings", choices=BACKENDS
    ),
    rope=rope_section(),
)
