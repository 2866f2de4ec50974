"""An Ollama folder for a GGUF model: model.gguf + a Modelfile with the chat template as Ollama's Go template.

`ollama create NAME -f DIR/Modelfile` then serves the model with the template it was trained with. The Jinja
template is translated by family (llmctl.export.chat_templates: ChatML, Alpaca); a template of no known family
is refused with an error naming the families, never guessed. ChatML's default system prompt (SmolLM2 has one)
becomes `SYSTEM`, which Ollama prepends when a conversation has no system message, as the Jinja does.

Examples:
    write_ollama(Path("smol.Q8_0.gguf"), tokenizer, model.config, Path("smol-ollama"))
    write_ollama(gguf, tokenizer, config, out, template="alpaca")   # a finetune trained with the Alpaca prompt
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.export.chat_templates import FAMILIES, Family, detect_family, family_go_template, family_stops
from llmctl.paths import atomic_dir, check_output_path

GGUF_NAME = "model.gguf"


def write_ollama(
    gguf_path: Path,
    tokenizer,
    config,
    out_dir: Path,
    *,
    template: str | None = None,
    force: bool = False,
    move: bool = False,
) -> dict:
    """Write out_dir with the GGUF file (copied, or moved with move=True) and a Modelfile; return its facts.

    template names the family the model was trained with (one of chatml, alpaca); None or "model" reads it
    from the tokenizer's own chat template.

    Examples:
        write_ollama(Path("m.gguf"), tok, cfg, Path("out"))["stops"]   # ["<|im_start|>", "<|im_end|>"]
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise LlmctlError(f"GGUF file {gguf_path} does not exist", hint="write the GGUF file first")
    out_dir = check_output_path(Path(out_dir), force=force, what="output folder", folder=True)
    if template in (None, "model"):
        family = detect_family(tokenizer)
    elif template in FAMILIES:
        family = Family(template)
    else:
        raise LlmctlError(f"unknown chat template {template!r}", hint=f"use one of: model, {', '.join(FAMILIES)}")
    eos = getattr(tokenizer, "eos_token", None)
    num_ctx = context_length(config)
    text = modelfile_text(family, eos, num_ctx)
    with atomic_dir(out_dir, force=force) as tmp:
        (shutil.move if move else shutil.copyfile)(str(gguf_path), str(tmp / GGUF_NAME))
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
    return {
        "path": str(out_dir),
        "modelfile": str(out_dir / "Modelfile"),
        "template": family.name,
        "system": family.system,
        "stops": family_stops(family, eos),
        "num_ctx": num_ctx,
    }


def context_length(config) -> int:
    """The context length a config declares (llmctl.models.rope.positions); an error when it declares none."""
    from llmctl.models.rope import positions

    if found := positions(config):
        return found
    raise LlmctlError("the model's config declares no context length", hint="set max_position_embeddings")


def modelfile_text(family: Family, eos_token: str | None, num_ctx: int) -> str:
    """The Modelfile for a family: FROM, TEMPLATE, SYSTEM (ChatML's default), PARAMETER stop and num_ctx.

    Examples:
        modelfile_text(Family("chatml"), "<|im_end|>", 8192).splitlines()[0]   # "FROM ./model.gguf"
    """
    lines = [f"FROM ./{GGUF_NAME}", f'TEMPLATE """{family_go_template(family, eos_token)}"""']
    if family.system:
        lines.append(f'SYSTEM """{family.system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in family_stops(family, eos_token)]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"
