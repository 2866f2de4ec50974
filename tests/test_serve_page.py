"""The chat page at / of `llmctl serve`, in a real headless Chromium driven by Playwright.

A real server process on loopback serves the tiny model registered as `tiny-chat` (parent `base`, with metrics);
the browser opens /, sees the model list, lineage and metrics, asks two questions and watches the answers
stream in; with --api-key-env it is asked for the key first. Chromium is the system's package (`make setup`
installs it with apt where it can; LLMCTL_CHROMIUM names another binary); without it or without Playwright the
browser tests skip with one line, and the HTTP checks of the page still run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest
from test_serve import ServerProcess, _register, http

CHROMIUM = os.environ.get("LLMCTL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
WAIT_MS = 120_000  # the loaded machine: a tiny model's answer can take seconds
PROBE = "<img src=x id=probe>"  # text that would become an element if the page parsed registry text as HTML
# the answer in a bubble: its text nodes (the notes after it, such as "stopped at max tokens", are spans)
ANSWER_TEXT = "el => Array.from(el.childNodes).filter(n => n.nodeType === 3).map(n => n.textContent).join('')"
METRICS = {"perplexity": 41.25, "hellaswag.acc_norm": 0.3125, PROBE: 1}


def _lineage_home(home: Path, model_dir: Path) -> Path:
    """A registry with `base` (the tiny model) and `tiny-chat` derived from it, carrying metrics."""
    from llmctl.models.registry import ModelEntry, Registry

    _register(home, model_dir, "base")
    command = f"llmctl finetune --model base --name tiny-chat --set note='{PROBE}'"
    entry = ModelEntry(
        name="tiny-chat", format="hf", path=str(model_dir), parents=["base"], command=command, metrics=METRICS
    )
    Registry(home).add(entry)
    return home


@pytest.fixture(scope="module")
def page_home(tmp_path_factory, tiny_llama_dir) -> Path:
    return _lineage_home(tmp_path_factory.mktemp("page-home"), tiny_llama_dir)


@pytest.fixture(scope="module")
def page_server(page_home, tiny_llama_dir):
    """tiny-chat from the registry, and the same files served by path as `raw` (no registry facts)."""
    names = ["--served-name", "tiny-chat", "--served-name", "raw"]
    srv = ServerProcess(["--model", "tiny-chat", "--model", str(tiny_llama_dir), *names], page_home).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install '.[test]')")
    if not CHROMIUM:
        pytest.skip("no Chromium found: apt-get install chromium (or set LLMCTL_CHROMIUM to its binary)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def _open(browser, url: str):
    """A fresh page on url that records console errors and uncaught exceptions (a CSP violation is one)."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda exc: page.problems.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    page.goto(url + "/")
    return page


def _ask(page, question: str) -> dict:
    """Type a question, send it with Enter; the request body sent and the finished answer's text and chunks."""
    done = len(page.query_selector_all(".msg.assistant[data-done]")) + 1  # counted first: a 400 is done at once
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        page.fill("#prompt", question)
        page.press("#prompt", "Enter")
    # locator waits, not wait_for_function: that evaluates a string, which the page's CSP forbids (no eval)
    page.locator(".msg.assistant[data-done]").nth(done - 1).wait_for(state="attached")
    bubble = page.query_selector_all(".msg.assistant")[-1]
    return {
        "body": json.loads(sent.value.post_data),
        "text": bubble.evaluate(ANSWER_TEXT),
        "shown": bubble.inner_text(),
        "chunks": int(bubble.get_attribute("data-chunks")),
        "failed": "failed" in bubble.get_attribute("class"),
    }


def test_page_headers_and_model_info(page_server):
    status, html = http("GET", page_server.url + "/")
    assert status == 200 and "<title>llmctl serve</title>" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # offline: nothing loaded from elsewhere
    with urllib.request.urlopen(page_server.url + "/", timeout=60) as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert csp.startswith("default-src 'none'; script-src 'sha256-") and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp

    status, info = http("GET", page_server.url + "/llmctl/v1/models/tiny-chat")
    assert status == 200
    assert (info["id"], info["registry_name"], info["backend"]) == ("tiny-chat", "tiny-chat", "hf")
    assert [e["name"] for e in info["lineage"]] == ["tiny-chat", "base"]
    assert info["lineage"][0]["parents"] == ["base"] and info["lineage"][1]["format"] == "hf"
    assert info["metrics"] == METRICS
    status, raw = http("GET", page_server.url + "/llmctl/v1/models/raw")
    assert status == 200 and (raw["registry_name"], raw["lineage"], raw["metrics"]) == (None, [], {})
    status, body = http("GET", page_server.url + "/llmctl/v1/models/nope")
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    for path in ("/", "/llmctl/v1/models/tiny-chat"):  # the Host check (DNS rebinding) covers the page too
        status, body = http("GET", page_server.url + path, headers={"Host": "evil.example"})
        assert status == 403 and body["error"]["code"] == "host_not_allowed", path


def test_chat_page_streams_answers_in_chromium(browser, page_server, tmp_path):
    page = _open(browser, page_server.url)
    page.wait_for_selector("#model option", state="attached")
    assert [o.inner_text() for o in page.query_selector_all("#model option")] == ["tiny-chat", "raw"]
    page.wait_for_selector("#lineage li")
    page.select_option("#model", "raw")  # served by path: nothing from the registry
    registry_name = page.locator("#facts dd:nth-of-type(2)")  # after "served as"
    registry_name.filter(has_text="(not in the registry)").wait_for()
    assert page.inner_text("#lineage") == "none recorded" and page.inner_text("#metrics") == "none recorded"
    page.select_option("#model", "tiny-chat")
    registry_name.filter(has_text=re.compile("^tiny-chat$")).wait_for()
    lineage = page.inner_text("#lineage")
    assert "tiny-chat (hf)" in lineage and "base (hf)" in lineage and PROBE in lineage  # escaped, shown as text
    metrics = page.inner_text("#metrics")
    assert "perplexity\t41.25" in metrics and "hellaswag.acc_norm\t0.3125" in metrics and PROBE in metrics
    assert page.query_selector("#probe") is None  # registry text never became markup

    page.fill("#max-tokens", "24")
    first = _ask(page, "What is the capital of France?")
    assert not first["failed"] and first["text"].strip()
    assert first["chunks"] > 1, first  # streamed: the answer grew event by event
    assert first["body"]["stream"] is True and first["body"]["model"] == "tiny-chat"
    second = _ask(page, "And of Italy?")
    assert not second["failed"] and second["chunks"] > 1
    roles = [m["role"] for m in second["body"]["messages"]]
    assert roles == ["user", "assistant", "user"]  # multi-turn: the first answer went back with the question
    assert second["body"]["messages"][1]["content"] == first["text"]
    page.fill("#max-tokens", "100000")  # over the model's length: the server's 400 is shown, the question dropped
    refused = _ask(page, "Too long?")
    assert refused["failed"] and "maximum length is 256 tokens" in refused["shown"], refused
    page.fill("#max-tokens", "24")
    third = _ask(page, "Once more?")
    assert [m["role"] for m in third["body"]["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    shot = tmp_path / "chat-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    # no CSP violation, no script error: the browser's line about the refused request is the only one
    assert [p for p in page.problems if "status of 400" not in p] == [], page.problems
    page.close()


def test_chat_page_asks_for_the_api_key(browser, page_home, tmp_path):
    srv = ServerProcess(
        ["--model", "tiny-chat", "--api-key-env", "LLMCTL_PAGE_KEY"], page_home, env={"LLMCTL_PAGE_KEY": "s3cret"}
    ).wait_ready()
    try:
        assert http("GET", srv.url + "/")[0] == 200  # the static page loads without the key
        assert http("POST", srv.url + "/", b"{}", {"Content-Type": "application/json"})[0] == 401  # only GET is open
        status, body = http("GET", srv.url + "/llmctl/v1/models/tiny-chat")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"  # its data does not
        page = _open(browser, srv.url)
        page.wait_for_selector("#key-panel:not([hidden])")
        assert page.is_hidden("#app")
        page.screenshot(path=str(tmp_path / "key-prompt.png"))
        print(f"screenshot: {tmp_path / 'key-prompt.png'}")
        page.fill("#key", "wrong")
        page.press("#key", "Enter")
        page.locator("#key-error", has_text="refused").wait_for()
        page.fill("#key", "s3cret")
        page.press("#key", "Enter")
        page.wait_for_selector("#lineage li")
        assert page.is_hidden("#key-panel")
        assert [o.inner_text() for o in page.query_selector_all("#model option")] == ["tiny-chat"]
        page.fill("#max-tokens", "16")
        answer = _ask(page, "Hello?")
        assert not answer["failed"] and answer["chunks"] > 1
        shot = tmp_path / "chat-page-key.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        # the two refused requests (no key, wrong key) are the only console errors: the browser logs each 401
        assert all("401" in p for p in page.problems), page.problems
        page.close()
    finally:
        assert srv.stop() == 0
