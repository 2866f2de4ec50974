"""response_format on a real server: every answer parses and fits its schema, through raw HTTP and through the
official `openai` client's `chat.completions.parse` (a random tiny model: only the grammar makes it JSON)."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pydantic
import pytest
from test_serve import http, tiny_server

JSON = {"Content-Type": "application/json"}
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "capital": {"type": "boolean"},
        "rank": {"type": "integer", "enum": [1, 2, 3]},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["old", "new"]}, "maxItems": 2},
    },
    "required": ["city", "capital", "rank", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def json_server(tmp_path_factory, tiny_llama_dir):
    srv = tiny_server(tmp_path_factory, tiny_llama_dir, "--max-concurrency", "4")
    yield srv
    srv.stop()


def _chat(server, content: str, fmt: dict, **extra):
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "response_format": fmt,
            "max_tokens": 96, **extra}  # fmt: skip
    return http("POST", server.url + "/v1/chat/completions", json.dumps(body).encode(), JSON)


def test_json_schema_answers_parse_and_validate(json_server):
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    for i in range(20):  # sampled, seeded: 20 different answers
        status, body = _chat(json_server, f"Tell me about city number {i}", fmt, temperature=1.0, seed=i)
        assert status == 200, body
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_json_object_and_completions_endpoint(json_server):
    status, body = _chat(json_server, "Give me JSON", {"type": "json_object"}, temperature=0)
    assert status == 200 and isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)
    req = {"model": "tiny", "prompt": "x", "max_tokens": 64, "response_format": {"type": "json_schema",
           "json_schema": {"name": "n", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                                   "required": ["ok"], "additionalProperties": False}}}}  # fmt: skip
    status, body = http("POST", json_server.url + "/v1/completions", json.dumps(req).encode(), JSON)
    assert status == 200 and isinstance(json.loads(body["choices"][0]["text"])["ok"], bool)


def test_openai_clients_parse_with_a_pydantic_model(json_server):
    class City(pydantic.BaseModel):
        city: Literal["Paris", "Rome", "Oslo"]
        capital: bool

    client = json_server.client()
    for seed in range(3):
        out = client.chat.completions.parse(
            model="tiny", messages=[{"role": "user", "content": "A city?"}], response_format=City, seed=seed,
            max_tokens=64, temperature=1.0,
        )  # fmt: skip
        parsed = out.choices[0].message.parsed
        assert isinstance(parsed, City) and parsed.city in ("Paris", "Rome", "Oslo")


def test_bad_response_formats_are_400s(json_server):
    status, body = _chat(json_server, "x", {"type": "json_schema", "json_schema": {"name": "n"}})
    assert status == 400 and body["error"]["param"] == "response_format"
    status, body = _chat(json_server, "x", {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}})
    assert status == 400 and body["error"]["param"] == "response_format"
    status, body = _chat(json_server, "x", {"type": "yaml"})
    assert status == 400
    status, body = _chat(json_server, "x", {"type": "text"}, temperature=0)
    assert status == 200
