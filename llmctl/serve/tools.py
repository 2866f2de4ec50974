"""Tool calling on /v1/chat/completions: tools into the prompt, calls out of the answer, forced calls by grammar.

- Prompt: a chat template that knows tools (its source mentions `tools`) gets them through transformers'
  `apply_chat_template(tools=…)`, and assistant `tool_calls` / `tool` messages as it expects them. A template
  without tool support (SmolLM2's plain ChatML, for one) gets the tools in a system message in the Hermes / Qwen
  format, documented in SYSTEM_PROMPT below; earlier calls are written back as `<tool_call>` blocks and tool
  results as user turns holding `<tool_response>` blocks.
- Answer: calls are parsed from the model's text in three formats — Hermes / Qwen `<tool_call>{json}</tool_call>`
  (any number), Mistral `[TOOL_CALLS] [{…}, …]`, and Llama 3's whole-answer JSON `{"name": …, "parameters": …}`
  — into OpenAI's `message.tool_calls` (ids `call_…`, arguments as a JSON string) with finish "tool_calls".
- `tool_choice: "required"` or a named function: the answer is constrained by the grammar engine
  (llmctl.inference.structured) to one `<tool_call>` whose JSON names an allowed function and whose
  `arguments` fit its `parameters` schema, so even a small model returns a valid call. `"none"` leaves the
  tools out of the prompt and parses nothing; `"auto"` (the default with tools) lets the model choose.

Examples:
    messages, tools_arg = prompt_messages(req, supports_tools=False)
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
"""

from __future__ import annotations

import json
import os
import re

from llmctl.serve.protocol import ApiError

SYSTEM_PROMPT = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_MISTRAL = "[TOOL_CALLS]"


def supports_tools(codec) -> bool:
    """Whether the model's chat template renders tools itself."""
    return "tools" in (getattr(codec, "chat_template", None) or "")


def active(req) -> bool:
    return bool(req.tools) and req.tool_choice != "none"


def check_request(req) -> None:
    """tool_choice without tools, or naming a function the request does not define, is a 400."""
    if req.tool_choice is not None and not req.tools and req.tool_choice != "none":
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    name = forced_name(req)
    if name is not None and name not in {t.function.name for t in req.tools}:
        raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
    if active(req) and req.response_format is not None and req.response_format.type != "text":
        raise ApiError(400, "response_format and tool calls cannot be combined", param="response_format")


def forced_name(req) -> str | None:
    choice = req.tool_choice
    return choice.function.name if choice is not None and not isinstance(choice, str) else None


def prompt_messages(req, supports: bool) -> tuple[list[dict], list[dict] | None]:
    """The messages for the chat template, and the tools argument (None when they go in a system message)."""
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []] if active(req) else []
    out = []
    for m in req.messages:
        role = "system" if m.role == "developer" else m.role
        if role == "assistant" and m.tool_calls:
            if supports:
                calls = [{"type": "function", "function": {"name": c.function.name,
                                                           "arguments": _arguments(c.function.arguments)}}
                         for c in m.tool_calls]  # fmt: skip
                out.append({"role": "assistant", "content": m.text(), "tool_calls": calls})
            else:
                blocks = [_call_block(c.function.name, _arguments(c.function.arguments)) for c in m.tool_calls]
                out.append({"role": "assistant", "content": "\n".join(filter(None, [m.text(), *blocks]))})
        elif role == "tool":
            if supports:
                out.append({"role": "tool", "content": m.text(), "tool_call_id": m.tool_call_id})
            else:
                out.append({"role": "user", "content": f"<tool_response>\n{m.text()}\n</tool_response>"})
        else:
            out.append({"role": role, "content": m.text()})
    if tools and not supports:
        described = SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out, (tools if tools and supports else None)


def forced_grammar(req) -> str | None:
    """The grammar of one `<tool_call>` with an allowed function and fitting arguments (required / named)."""
    if not active(req) or (req.tool_choice != "required" and forced_name(req) is None):
        return None
    from llguidance import LLMatcher

    name = forced_name(req)
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.function.name},
                "arguments": t.function.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in req.tools
        if name is None or t.function.name == name
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    lark = (
        '%llguidance {}\nstart: "<tool_call>" call "</tool_call>"\n'
        f"call: %json {json.dumps({'x-guidance': {'whitespace_flexible': False}, **schema})}\n"
    )
    grammar = LLMatcher.grammar_from_lark(lark)
    problem = LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise ApiError(400, f"tools: a function's parameters schema cannot be used ({problem[:300]})", param="tools")
    return grammar


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(remaining content or None, [{"name", "arguments": dict}]) from an answer; no calls: (text, [])."""
    found = [_load_call(m) for m in _HERMES.findall(text)]
    if found and all(found):
        rest = _HERMES.sub("", text).strip()
        return (rest or None), found
    stripped = text.strip()
    if stripped.startswith(_MISTRAL):
        calls = _json(stripped[len(_MISTRAL) :].strip())
        calls = calls if isinstance(calls, list) else [calls]
        parsed = [_load_call(c) for c in calls]
        if parsed and all(parsed):
            return None, parsed
    if stripped.startswith("{"):  # Llama 3: the whole answer is one call
        one = _load_call(stripped)
        if one is not None:
            return None, [one]
    return text, []


def openai_calls(calls: list[dict]) -> list[dict]:
    """OpenAI's tool_calls list (arguments as a JSON string, as the API gives them)."""
    return [
        {
            "id": "call_" + os.urandom(12).hex(),
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
        }
        for c in calls
    ]


def with_tool_calls(req, choice: dict) -> dict:
    """A chat choice whose text holds tool calls, as OpenAI gives it: message.tool_calls, finish "tool_calls"."""
    if not active(req):
        return choice
    content, calls = parse_tool_calls(choice["message"]["content"])
    if calls:
        choice["message"] = {"role": "assistant", "content": content, "tool_calls": openai_calls(calls)}
        if choice["finish_reason"] in ("stop", None):
            choice["finish_reason"] = "tool_calls"
    return choice


def tool_delta(message: dict) -> dict:
    if not message.get("tool_calls"):
        return {"content": message["content"]}
    calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    return {"content": message["content"], "tool_calls": calls}


def _load_call(raw) -> dict | None:
    obj = _json(raw) if isinstance(raw, str) else raw
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    args = _json(args) if isinstance(args, str) else args
    return {"name": obj["name"], "arguments": args} if isinstance(args, dict) else None


def _json(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _arguments(arguments: str) -> dict:
    args = _json(arguments)
    if not isinstance(args, dict):
        raise ApiError(400, "messages: a tool call's arguments must be a JSON object string", param="messages")
    return args


def _call_block(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"
