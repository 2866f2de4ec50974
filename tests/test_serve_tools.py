"""Tool calls on a real server through the official `openai` client: forced calls (tool_choice required or a named
function) are valid calls even from a random tiny model; a full round trip; the three parsed formats."""

from __future__ import annotations

import json

import jsonschema
import pytest
from test_serve import ServerProcess, http, tiny_server

from conftest import build_tiny_llama

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}
ZONE = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {**ZONE, "additionalProperties": False}}}


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    """The tiny LLaMA with 2,048 positions: the tools' system message alone is ~750 of its byte-level tokens."""
    srv = tiny_server(
        tmp_path_factory, build_tiny_llama(tmp_path_factory.mktemp("tiny-2k"), max_position_embeddings=2048)
    )
    yield srv
    srv.stop()


def _ask(client, **kw):
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=96, **kw
    )


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_calls_name_a_function_and_fit_its_schema(tool_server, choice):
    client = tool_server.client()
    for seed in range(5):
        out = _ask(client, tools=[WEATHER, TIME], tool_choice=choice, temperature=1.0, seed=seed)
        choice_out = out.choices[0]
        assert choice_out.finish_reason == "tool_calls"
        (call,) = choice_out.message.tool_calls
        assert call.id.startswith("call_") and call.type == "function"
        spec = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
        if not isinstance(choice, str):
            assert call.function.name == "get_time"
        jsonschema.validate(json.loads(call.function.arguments), spec["function"]["parameters"])


def test_round_trip_call_result_answer(tool_server):
    client = tool_server.client()
    first = _ask(client, tools=[WEATHER], tool_choice="required", temperature=0)
    call = first.choices[0].message.tool_calls[0]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})},
    ]
    final = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], tool_choice="none",
                                           max_tokens=8, temperature=0)  # fmt: skip
    assert final.choices[0].message.tool_calls is None and isinstance(final.choices[0].message.content, str)


def test_streamed_forced_call_arrives_as_delta_tool_calls(tool_server):
    client = tool_server.client()
    stream = _ask(client, tools=[WEATHER], tool_choice="required", temperature=0, stream=True)
    deltas, finish = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            deltas += chunk.choices[0].delta.tool_calls
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls" and deltas[0].function.name == "get_weather"
    json.loads(deltas[0].function.arguments)


def test_bad_tool_requests_are_400s(tool_server):
    def post(body):
        raw = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}], **body}).encode()
        return http("POST", tool_server.url + "/v1/chat/completions", raw, {"Content-Type": "application/json"})

    status, body = post({"tool_choice": "required"})
    assert status == 400 and body["error"]["param"] == "tool_choice"
    status, body = post({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert status == 400 and "nope" in body["error"]["message"]
    status, body = post({"tools": [{"type": "function", "function": {"name": "bad name!"}}]})
    assert status == 400
    status, body = post({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}})
    assert status == 400 and body["error"]["param"] == "response_format"


def test_parsers_read_hermes_mistral_and_llama3_calls():
    from llmctl.serve.tools import parse_tool_calls

    f1, g = '{"name": "f", "arguments": {"x": 1}}', '{"name": "g", "arguments": {}}'
    text = f"Sure.\n<tool_call>\n{f1}\n</tool_call><tool_call>{g}</tool_call>"
    assert parse_tool_calls(text) == ("Sure.", [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}])
    assert parse_tool_calls('[TOOL_CALLS] [{"name": "f", "arguments": {"x": 2}}]') == (
        None,
        [{"name": "f", "arguments": {"x": 2}}],
    )
    assert parse_tool_calls('{"name": "f", "parameters": {"y": "z"}}') == (
        None,
        [{"name": "f", "arguments": {"y": "z"}}],
    )
    assert parse_tool_calls("no calls here {") == ("no calls here {", [])
    assert parse_tool_calls('<tool_call>{"name": 3}</tool_call>')[1] == []  # not a call: left as text


@pytest.mark.default_model
def test_default_model_forced_call_and_round_trip(default_model, llmctl_home):
    """SmolLM2's template has no tools: they go in the documented system message; the forced call is valid."""
    srv = ServerProcess(["--model", default_model, "--backend", "hf"], llmctl_home).wait_ready()
    try:
        client = srv.client()
        ask = [{"role": "user", "content": "What is the weather in Oslo, in celsius?"}]
        first = client.chat.completions.create(
            model=default_model, messages=ask, tools=[WEATHER], tool_choice="required", max_tokens=64, temperature=0
        )
        (call,) = first.choices[0].message.tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        messages = ask + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": -3, "sky": "snow"})},
        ]
        final = client.chat.completions.create(
            model=default_model, messages=messages, tools=[WEATHER], max_tokens=48, temperature=0
        )
        message = final.choices[0].message
        assert message.tool_calls or message.content  # the model answers, or calls again: both are valid turns
    finally:
        assert srv.stop() == 0
