"""ChatML, defined once: its markers, rendered as Python (finetune's `data.template=chatml`), as Jinja
(tokenizer.chat_template, GGUF) and as Ollama's Go template, all from the same pieces (a test renders the
Jinja and the Python on the same conversations and compares them).

Examples:
    chatml([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    # "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"
    tokenizer.chat_template = CHATML_JINJA
"""

from __future__ import annotations

CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
# a turn is START role "\n" content END "\n"; the generation prompt opens the assistant's turn
CHATML_GENERATION = f"{CHATML_START}assistant\n"


def chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    """The conversation in ChatML (what CHATML_JINJA renders)."""
    out = "".join(f"{CHATML_START}{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)
    return out + (CHATML_GENERATION if add_generation_prompt else "")


CHATML_JINJA = (
    "{% for message in messages %}{{ '"
    + CHATML_START
    + "' + message['role'] + '\\n' + message['content'] + '"
    + CHATML_END
    + "' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '"
    + CHATML_GENERATION.replace("\n", "\\n")
    + "' }}{% endif %}"
)
CHATML_GO = (
    "{{- range .Messages }}"
    + CHATML_START
    + "{{ .Role }}\n{{ .Content }}"
    + CHATML_END
    + "\n{{ end }}"
    + CHATML_GENERATION
)
