"""The `rope:` section (RoPE scaling) shared by pretrain, finetune, generate, eval and serve, with its rules.

A command's schema adds `rope=rope_section()` and `*ROPE_RULES` to its root rules; its CLI maps
`--rope-scaling`, `--rope-factor` and `--rope-original-length` with `ROPE_OPTIONS`.

Examples:
    SCHEMA = Section(rules=(*ROPE_RULES,), rope=rope_section(), ...)
"""

from llmctl.config.schema import Field, Rule, Section
from llmctl.models.rope import ROPE_TYPES


def rope_section() -> Section:
    """The `rope:` section: no override by default (the model's own config.json stands)."""
    return Section(
        "RoPE scaling (longer contexts): written into config.json by training, applied on load otherwise",
        scaling=Field(
            str,
            None,
            "linear (position interpolation), dynamic (NTK-aware, by length), yarn or llama3; null = the model's own",
            choices=ROPE_TYPES,
            nullable=True,
        ),
        factor=Field(float, None, "context multiplier: new length = original length x factor", gt=1, nullable=True),
        original_max_length=Field(
            int,
            None,
            "the context the model was trained at; null = its config's (before any scaling)",
            ge=2,
            nullable=True,
        ),
    )


ROPE_RULES = (
    Rule(
        ("rope.scaling", "rope.factor"),
        lambda scaling, factor: (scaling is None) == (factor is None),
        "rope.scaling and rope.factor go together (e.g. --rope-scaling yarn --rope-factor 4)",
        nullable=True,
    ),
    Rule(
        ("rope.original_max_length", "rope.scaling"),
        lambda original, scaling: original is None or scaling is not None,
        "rope.original_max_length needs rope.scaling",
        nullable=True,
    ),
)
