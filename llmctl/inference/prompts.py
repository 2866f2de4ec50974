"""Prompts: the model's own chat template, plain text prompts, and stop sequences (shared by generate and serve).

The tokenizer argument is anything with `chat_template` and `apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)`: an HF tokenizer, or a backend's text codec.

Examples:
    texts, used_chat = prompt_texts(tokenizer, [{"prompt": "Hi"}], chat=None, system=None)
    trim_at_stop("abc STOP def", ["STOP"])     # ("abc ", True)
"""

from __future__ import annotations

from llmctl.errors import LlmctlError


def has_chat_template(tokenizer) -> bool:
    """Whether the model brings its own chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_text(tokenizer, messages: list[dict], system: str | None = None) -> str:
    """The model's chat template applied to messages, ready for the assistant's answer.

    Examples:
        chat_text(tok, [{"role": "user", "content": "Hi"}])
        # "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"
    """
    messages = list(messages)
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_texts(tokenizer, items: list[dict], chat: bool | None, system: str | None) -> tuple[list[str], bool]:
    """The prompt text of each item ({"prompt"} or {"messages"}); chat None = when the model has a template.

    Examples:
        prompt_texts(tok, [{"prompt": "Hi"}], chat=False, system=None)   # (["Hi"], False)
    """
    has_template = has_chat_template(tokenizer)
    use_chat = has_template if chat is None else chat
    if use_chat and not has_template:
        raise LlmctlError(
            "--chat asked for, but this model's tokenizer has no chat template",
            hint="use --no-chat to send the prompt as plain text",
        )
    texts = []
    for item in items:
        if "messages" in item and not use_chat:
            raise LlmctlError(
                f'prompt {item.get("id")} has "messages" but chat templating is off',
                hint='drop --no-chat, or give {"prompt": ...} lines',
            )
        if use_chat:
            texts.append(
                chat_text(tokenizer, item.get("messages") or [{"role": "user", "content": item["prompt"]}], system)
            )
        else:
            texts.append((system + "\n\n" if system else "") + item["prompt"])
    return texts, use_chat


def trim_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut text at the first stop sequence; return (text, whether one was found).

    Examples:
        trim_at_stop("abc", ["x"])   # ("abc", False)
    """
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def stop_holdback(stops: list[str]) -> int:
    """Characters a stream must hold back so that it never sends the start of a stop sequence."""
    return max((len(s) for s in stops if s), default=1) - 1
