"""The chat template families llmctl produces, each as Jinja (HF, llama.cpp) and as Ollama's Go template.

A family is recognised by behaviour, not by text: a Jinja template belongs to a family when it renders a set of
probe conversations exactly as the family's own Jinja does (ChatML may add a default system prompt, which
Ollama gets as `SYSTEM`). `alpaca` renders as llmctl's finetune does (llmctl.data.sft): the user turns
since the last answer joined by a blank line, stripped, in the Alpaca prompt; each answer ends with EOS.

Examples:
    family = detect_family(tokenizer)            # Family(name="chatml", system="You are ...")
    jinja = family_jinja("alpaca")               # a chat template for tokenizer.chat_template / GGUF
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.data.chat_templates import CHATML_END, CHATML_GO, CHATML_JINJA, CHATML_START
from llmctl.data.sft import ALPACA_PROMPT
from llmctl.errors import LlmctlError

FAMILIES = ("chatml", "alpaca")

_ALPACA_HEAD, _ALPACA_TAIL = ALPACA_PROMPT.split("{instruction}")


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


_ALPACA_JINJA = (
    "{% set ns = namespace(turn='') %}{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ "
    + _jinja_str(_ALPACA_HEAD)
    + " + ns.turn | trim + "
    + _jinja_str(_ALPACA_TAIL)
    + " + message['content'] + eos_token }}{% set ns.turn = '' %}"
    "{% else %}{% set ns.turn = ns.turn + message['content'] + '\\n\\n' %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ "
    + _jinja_str(_ALPACA_HEAD)
    + " + ns.turn | trim + "
    + _jinja_str(_ALPACA_TAIL)
    + " }}{% endif %}"
)


def _alpaca_go(eos: str) -> str:
    # Go templates cannot strip: a turn with leading/trailing whitespace renders that whitespace (Jinja trims it).
    return (
        '{{- $turn := "" }}\n{{- range .Messages }}\n{{- if eq .Role "assistant" }}'
        + _ALPACA_HEAD
        + "{{ $turn }}"
        + _ALPACA_TAIL
        + "{{ .Content }}"
        + eos
        + '\n{{- $turn = "" }}\n'
        '{{- else if $turn }}{{ $turn = printf "%s\\n\\n%s" $turn .Content }}\n'
        "{{- else }}{{ $turn = .Content }}\n{{- end }}\n{{- end }}" + _ALPACA_HEAD + "{{ $turn }}" + _ALPACA_TAIL
    )


@dataclass
class Family:
    """A recognised chat template family and the default system prompt its template inserts (ChatML only)."""

    name: str
    system: str | None = None


def family_jinja(name: str) -> str:
    """The Jinja chat template of a family (for tokenizer.chat_template or the GGUF's tokenizer.chat_template).

    Examples:
        family_jinja("chatml").startswith("{% for message in messages %}")   # True
    """
    if name not in FAMILIES:
        raise LlmctlError(f"unknown chat template family {name!r}", hint=f"use one of: {', '.join(FAMILIES)}")
    return CHATML_JINJA if name == "chatml" else _ALPACA_JINJA


def family_go_template(family: Family, eos_token: str | None) -> str:
    """Ollama's TEMPLATE (Go text/template over .Messages) for a family.

    Examples:
        family_go_template(Family("chatml"), "<|im_end|>").startswith("{{- range .Messages }}")   # True
    """
    if family.name == "chatml":
        return CHATML_GO
    return _alpaca_go(eos_token or "")


def family_stops(family: Family, eos_token: str | None) -> list[str]:
    """Ollama's `PARAMETER stop` strings: the end-of-turn markers of the family (as Ollama's own chatml has)."""
    stops = [CHATML_START, CHATML_END] if family.name == "chatml" else ["### Instruction:"]
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    return stops


_PROBES = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"}, {"role": "user", "content": "3"}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ],
]


def detect_family(tokenizer, chat_template: str | None = None) -> Family:
    """The family whose rendering the template (default: the tokenizer's own) reproduces on every probe.

    Examples:
        detect_family(smollm2_tokenizer)   # Family("chatml", system="You are a helpful AI assistant named SmolLM, ...")
    """
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if not template:
        raise LlmctlError(
            "the model's tokenizer has no chat template to translate",
            hint=f"name the template it was trained with: one of {', '.join(FAMILIES)}",
        )
    if not isinstance(template, str):
        raise LlmctlError(
            "the model has several named chat templates, which llmctl cannot translate",
            hint=f"name the template it was trained with: one of {', '.join(FAMILIES)}",
        )

    def render(tmpl: str, messages: list[dict]) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages, chat_template=tmpl, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja2 raises its own types for templates that fail on a probe
            raise _untranslatable(f"it fails on a probe conversation ({type(exc).__name__})") from exc

    system = _default_system(render(template, _PROBES[0]))
    for name in FAMILIES:
        if all(
            render(template, p) == render(family_jinja(name), _with_system(p, system if name == "chatml" else None))
            for p in _PROBES
        ):
            return Family(name, system if name == "chatml" else None)
    raise _untranslatable("it renders conversations unlike ChatML and Alpaca")


def _untranslatable(why: str) -> LlmctlError:
    return LlmctlError(
        f"the model's chat template cannot be translated to an Ollama template: {why}",
        hint=f"name the template it was trained with: one of {', '.join(FAMILIES)}",
    )


def _default_system(rendered: str) -> str | None:
    head = f"{CHATML_START}system\n"
    if rendered.startswith(head) and CHATML_END in rendered:
        return rendered[len(head) : rendered.index(CHATML_END)]
    return None


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]
