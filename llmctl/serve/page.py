"""The chat page at `/` and the one llmctl-specific endpoint it reads, GET /llmctl/v1/models/{model}.

The page (`chat.html`, package data) is static and offline: inline CSS and JS, no external asset. It talks to the
server's own OpenAI API (/v1/models, streaming /v1/chat/completions) and reads lineage and metrics from
/llmctl/v1/models/{model}. The page itself holds no data, so it is served without the API key (as llama.cpp's
server does) and asks for the key when the API answers 401; every endpoint it calls passes `Guard` as usual.
Its Content-Security-Policy allows only its own inline script and style (by SHA-256 hash) and requests to this
server: no other origin, no eval, no frames.

Examples:
    body, csp = page()
    await model_info(server, request)   # {"id", …, "registry_name", "lineage": [...], "metrics": {...}}
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmctl.errors import LlmctlError
from llmctl.serve.protocol import ApiError

PAGE_FILE = "chat.html"
MAX_LINEAGE = 64  # ancestors listed at most (a registry lineage is a handful; this bounds a pathological one)


def _hashes(kind: str, html: str) -> str:
    """CSP source list of the SHA-256 of each inline <script> or <style> block (what the browser hashes)."""
    blocks = re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


@functools.cache
def page() -> tuple[bytes, str]:
    """The page's bytes and its Content-Security-Policy (read once from the package)."""
    html = resources.files("llmctl.serve").joinpath(PAGE_FILE).read_text(encoding="utf-8")
    csp = (
        f"default-src 'none'; script-src {_hashes('script', html)}; style-src {_hashes('style', html)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode(), csp


async def chat_page(request: Request) -> Response:
    body, csp = page()
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


def registry_facts(name: str | None) -> dict:
    """Lineage (the model, then its parents, breadth first) and metrics of registry entry `name`.

    A model served from a path (no registry name) has neither. Each lineage item: name, format, command,
    parents, created (Unix seconds) and metrics; an ancestor no longer in the registry has format None.
    """
    if name is None:
        return {"registry_name": None, "lineage": [], "metrics": {}}
    from llmctl.models.lineage import ancestry
    from llmctl.models.registry import Registry

    lineage = [
        {"name": n, "format": None, "command": None, "parents": [], "metrics": {}}
        if e is None
        else {
            "name": e.name,
            "format": e.format,
            "command": e.command,
            "parents": e.parents,
            "created": e.created,
            "metrics": e.metrics,
        }
        for n, e in ancestry(Registry(), name, limit=MAX_LINEAGE)
    ]
    return {"registry_name": name, "lineage": lineage, "metrics": lineage[0]["metrics"]}


async def model_info(server, request: Request) -> Response:
    """GET /llmctl/v1/models/{model}: the model card plus registry lineage and metrics (read now, so metrics a
    later `llmctl eval` attached show up); 404 for a model not served, 503 when the registry cannot be read."""
    served = server.pick(request.path_params["model"])
    try:
        facts = await asyncio.to_thread(registry_facts, served.resolved.name)  # sqlite: off the event loop
    except LlmctlError as exc:
        raise ApiError(503, f"cannot read the model registry: {exc}", type="server_error") from None
    return JSONResponse({**server.model_card(served), **facts})
