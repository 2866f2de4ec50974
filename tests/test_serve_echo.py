"""`echo` + prompt log-probabilities and `logit_bias` on a real server, and lm-eval's own client against it.

lm-eval's `local-completions` model (what `llmctl eval --base-url` runs) scores log-likelihood tasks through
`echo` + `logprobs` on token ids; its numbers must equal in-process lm-eval on the same items.
"""

from __future__ import annotations

import json

import pytest
from test_serve import http, tiny_server

from conftest import build_tiny_llama

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def long_tiny_dir(tmp_path_factory):
    """The tiny LLaMA with 2,048 positions: HellaSwag items fit whole, so neither side truncates a context
    (lm-eval keeps max_length tokens for HFLM and max_length - 1 for API models: 256 would cut them differently)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-2k"), max_position_embeddings=2048)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory, long_tiny_dir):
    srv = tiny_server(tmp_path_factory, long_tiny_dir, "--max-concurrency", "4")
    yield srv
    srv.stop()


def _post(server, body: dict):
    return http("POST", server.url + "/v1/completions", json.dumps({"model": "tiny", **body}).encode(), JSON)


def test_echo_logprobs_are_the_models_own(echo_server, long_tiny_dir):
    """Each prompt token's logprob equals log_softmax of one plain forward (fp32, to 1e-4); first is null."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = [5, 77, 130, 42, 9, 200]
    status, body = _post(echo_server, {"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0})
    assert status == 200, body
    lp = body["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None and all(len(t) == 1 for t in lp["top_logprobs"][1:])
    model = AutoModelForCausalLM.from_pretrained(long_tiny_dir).eval()
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    for i, token in enumerate(ids[1:], start=1):
        assert abs(lp["token_logprobs"][i] - float(want[i - 1, token])) < 1e-4
        assert abs(max(lp["top_logprobs"][i].values()) - float(want[i - 1].max())) < 1e-4


def test_echo_alone_and_echo_text(echo_server):
    status, body = _post(echo_server, {"prompt": "Paris is", "echo": True, "max_tokens": 0})
    assert status == 200 and body["choices"][0]["text"] == "Paris is" and body["usage"]["completion_tokens"] == 0
    status, body = _post(echo_server, {"prompt": "Paris is", "echo": True, "max_tokens": 4, "temperature": 0})
    _, plain = _post(echo_server, {"prompt": "Paris is", "max_tokens": 4, "temperature": 0})
    assert status == 200 and body["choices"][0]["text"] == "Paris is" + plain["choices"][0]["text"]
    status, body = _post(echo_server, {"prompt": "x", "max_tokens": 0})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body = _post(echo_server, {"prompt": "x", "echo": True, "n": 2})
    assert status == 400 and body["error"]["param"] == "n"


def test_logit_bias_bans_and_forces_tokens(echo_server):
    def first(bias):
        status, body = _post(echo_server, {"prompt": [5, 77], "max_tokens": 1, "temperature": 0, "logit_bias": bias,
                                           "logprobs": 0})  # fmt: skip
        assert status == 200, body
        return body["choices"][0]["logprobs"]["tokens"][0]

    greedy = first({})
    _, body = _post(echo_server, {"prompt": [5, 77], "max_tokens": 1, "temperature": 0})
    assert first({}) == greedy
    forced = first({"123": 100})
    assert forced != greedy or greedy == first({"124": 100})  # +100 wins the argmax
    status, body = _post(echo_server, {"prompt": "x", "logit_bias": {"abc": 1}})
    assert status == 400 and body["error"]["param"] == "logit_bias"
    status, body = _post(echo_server, {"prompt": "x", "logit_bias": {"3": 101}})
    assert status == 400 and body["error"]["param"] == "logit_bias"


def test_lm_evals_own_client_against_the_server_equals_in_process_lm_eval(
    cli, echo_server, long_tiny_dir, shared_data, tmp_path
):
    """hellaswag, 20 items: acc equal, every item's four log-likelihoods within 1e-4 (fp32 on both sides)."""
    common = ["--tasks", "hellaswag", "--data-dir", shared_data, "--limit", "20", "--log-samples", "--no-attach"]
    # in-process eval in float32 like the server (`auto` is bfloat16 on CPUs with AMX)
    r = cli("eval", "--model", long_tiny_dir, "--dtype", "float32", "--output", tmp_path / "local.json", *common)
    assert r.exit_code == 0, r.stderr
    r = cli("eval", "--model", long_tiny_dir, "--base-url", echo_server.url, "--output", tmp_path / "served.json",
            *common)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    local, served = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("local", "served"))
    assert local["results"]["hellaswag"]["acc,none"] == served["results"]["hellaswag"]["acc,none"]
    assert served["llmctl"]["base_url"] == echo_server.url

    def logliks(name):
        rows = [json.loads(x) for x in (tmp_path / f"{name}.samples_hellaswag.jsonl").read_text().splitlines()]
        return {row["doc_id"]: [float(r[0]) for r in row["filtered_resps"]] for row in rows}

    a, b = logliks("local"), logliks("served")
    assert a.keys() == b.keys() and len(a) == 20
    worst = max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))
    assert worst < 1e-4, worst


def test_eval_base_url_bad_inputs(cli, tiny_model, shared_data):
    where = ["--tasks", "hellaswag", "--data-dir", shared_data]
    r = cli("eval", "--model", tiny_model, "--base-url", "http://127.0.0.1:9", *where)
    assert r.exit_code == 1 and r.stderr.startswith("Error: cannot read http://127.0.0.1:9/v1/models")
    r = cli("eval", "--model", tiny_model, "--served-name", "x", *where)
    assert r.exit_code == 2 and "go with --base-url" in r.stderr
    r = cli("eval", "--model", tiny_model, "--base-url", "http://127.0.0.1:9", "--tasks", "perplexity")
    assert r.exit_code == 2 and r.stderr.startswith("Error: perplexity needs the weights in-process")
