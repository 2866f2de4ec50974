"""OpenAI's request shapes for completions and chat completions, their validation, and its error shape.

Types are checked strictly (a string where a number belongs is a 400, never coerced); unknown fields are
ignored, as OpenAI-compatible servers do, except those whose effect llmctl cannot give (suffix, best_of > n),
which are refused. Every problem becomes `ApiError`, rendered as
`{"error": {"message", "type", "param", "code"}}` with a 4xx status.

Examples:
    req = parse(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    error_body("no such model", "invalid_request_error", code="model_not_found")
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An error answered to the client in OpenAI's shape.

    Examples:
        raise ApiError(404, "model 'x' does not exist", param="model", code="model_not_found")
    """

    def __init__(
        self, status: int, message: str, type: str | None = None, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Sampling divides float32 logits (|logit| up to ~1e3) by the temperature and by/with the repetition penalty:
# a temperature of 1e-300 is 0 in float32 and 1e-40 overflows to inf, and either makes every probability NaN.
# Below 1e-5 sampling is greedy in all but name (vLLM's _SAMPLING_EPS is the same 1e-5): 0 asks for that.
MIN_TEMPERATURE = 1e-5
MAX_TOP_K = 2**31 - 1  # a C int: llama.cpp's top_k; OpenVINO's is size_t (2**64 overflowed it)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's response_format: free text, any JSON object, or JSON fitting a schema (enforced while decoding)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def schema(self) -> dict | None:
        """The schema to enforce (None for any JSON object); a 400 when json_schema lacks one."""
        if self.type != "json_schema":
            return None
        if self.json_schema is None or not self.json_schema.schema_:
            raise ApiError(
                400, "response_format.json_schema.schema: required for type json_schema", param="response_format"
            )
        return self.json_schema.schema_


class _Sampling(_Strict):
    """Settings both endpoints share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # and 0 or >= MIN_TEMPERATURE (parse)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)  # extension (vLLM, llama.cpp have it); <= vocab: app
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)  # torch generators and OpenVINO's size_t seed both take it
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=100.0)  # extension (vLLM has it); bounded: see above
    logit_bias: dict[str, float] | None = None  # OpenAI's: token id (as a string key) -> bias in [-100, 100]
    response_format: ResponseFormat | None = None
    user: str | None = None

    def biases(self, vocab: int) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token id, bias) pairs, each id below vocab and each bias in [-100, 100] (else a 400)."""
        out = []
        for key, bias in (self.logit_bias or {}).items():
            if not key.isdigit() or int(key) >= vocab:
                raise ApiError(400, f"logit_bias: {key!r} is not a token id below {vocab}", param="logit_bias")
            if not -100 <= bias <= 100:
                raise ApiError(400, f"logit_bias: {bias:g} for {key} is outside [-100, 100]", param="logit_bias")
            out.append((int(key), float(bias)))
        return tuple(out)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "at most 4 stop sequences", param="stop")
        return [s for s in stops if s]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 only with echo: score the prompt, generate nothing
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def prompts(self) -> list[str | list[int]]:
        """Each prompt (text or token ids) of the request."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        if not p:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        return list(p)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ToolCallFunction(_Strict):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's shape)


class ToolCall(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True


_UNIONS = {
    "prompt": "a string, a list of strings, or token ids",
    "stop": "a string or a list of strings",
    "content": "a string or a list of text parts",
}


def lone_surrogate(value) -> str | None:
    """The path of the first string holding half a UTF-16 pair (JSON's "\\ud800"), which is no text at all.

    Iterative: a body nested as deep as json.loads allows must not overflow the stack here.

    Examples:
        lone_surrogate({"messages": [{"content": "\\udfff"}]})   # "messages[0].content"
    """
    stack = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(item, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


def parse(model: type[BaseModel], data) -> BaseModel:
    """Validate a decoded JSON body against a request model; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ())]
        param = loc[0] if loc else None
        if len(loc) > 1 and not loc[1].isdigit() and param in _UNIONS:  # a union: name what the field takes
            raise ApiError(400, f"{param}: must be {_UNIONS[param]}", param=param) from None
        raise ApiError(400, f"{'.'.join(loc) or 'body'}: {first['msg']}", param=param) from None
    if req.temperature is not None and 0 < req.temperature < MIN_TEMPERATURE:
        raise ApiError(
            400,
            f"temperature: must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {req.temperature:g}",
            param="temperature",
        )
    if isinstance(req, CompletionRequest):
        if req.max_tokens == 0 and not req.echo:
            raise ApiError(400, "max_tokens: must be at least 1 (0 only with echo)", param="max_tokens")
        if req.echo and req.n != 1:
            raise ApiError(400, "echo takes n = 1", param="n")
        if req.suffix:
            raise ApiError(400, "suffix is not supported", param="suffix")
        if req.best_of not in (None, req.n):
            raise ApiError(400, "best_of other than n is not supported", param="best_of")
    return req
