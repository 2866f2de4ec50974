"""What every request passes before the routes, and the transport limits under them.

`Guard` (ASGI middleware) refuses, in OpenAI's error shape: request headers over `max_header_bytes` (431), a
Host header the server does not answer to (403), a missing or wrong API key (401; the static chat page at / loads
without one), a declared body over the limit (413), and a body that does not arrive within `read_timeout_s`
(408); then it counts and logs the request.
`h11_protocol` is uvicorn's h11 protocol with a deadline on the request line and headers (a connection that
sends half of them and stalls is closed), the other half of "a stalled client is cut".

Why the Host check (DNS rebinding): a web page can make its own host name resolve to 127.0.0.1 and then talk to a
loopback server as if it were same-origin, reading the answers. The browser still sends the page's name in Host,
so a loopback server answers only to loopback names and addresses (and names given with --allowed-host). The
refusal is 403, not 421: 421 (Misdirected Request) invites a client to retry on another connection, while this
is a final "not for that name"; 403 is also what the OpenAI client reports as a permission error.

Examples:
    app = Guard(starlette_app, ServeSettings(api_key="k", allowed_hosts=host_policy("127.0.0.1", [])), metrics)
    uvicorn.Config(app, http=h11_protocol(30.0), h11_max_incomplete_event_size=16384)
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time

from starlette.responses import JSONResponse

from llmctl.serve.metrics import Metrics
from llmctl.serve.protocol import ApiError

log = logging.getLogger("llmctl.serve")
_ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics", "/")
# Bodies over the limit are read and dropped up to this size before the 413 (beyond it the connection closes).
_DRAIN_BYTES = 64 << 20


# ---- the Host header ---------------------------------------------------------------------------------------------


def host_name(value: str) -> str:
    """The name or address of a Host header value, lower case, without port, brackets or a final dot.

    Examples:
        host_name("[::1]:8000") == "::1"; host_name("LocalHost.:80") == "localhost"
    """
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :] if end > 0 else "?"
        # "[v6]" or "[v6]:port"; anything else keeps its brackets and so matches no allowed name
        return value[1:end] if rest == "" or (rest[0] == ":" and rest[1:].isdigit()) else value
    name, colon, port = value.rpartition(":")
    if colon and ":" not in name and (port.isdigit() or port == ""):
        value = name
    return value.rstrip(".")


def is_loopback(name: str) -> bool:
    """Whether a host name (from `host_name`) is localhost or a loopback address (127.0.0.0/8, ::1)."""
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def host_policy(bound_host: str, allowed: list[str]) -> frozenset[str] | None:
    """The Host names a server bound to `bound_host` answers to; None = any (no check).

    Bound to a loopback address: loopback names and addresses plus `allowed`. Bound elsewhere: only when names
    are given (then those plus loopback ones, which no page can rebind: a local health check keeps working).
    """
    names = frozenset(host_name(a) for a in allowed)
    if not names and not is_loopback(host_name(bound_host)):
        return None
    return names


# ---- the middleware ----------------------------------------------------------------------------------------------


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


class Guard:
    """ASGI middleware: header size (431), Host (403), API key (401), declared body size (413), body read
    deadline (408), and one metric and one log line per request."""

    def __init__(self, app, settings, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None
        self.limit = settings.max_request_bytes
        self.allowed_hosts = settings.allowed_hosts
        self.max_header_bytes = settings.max_header_bytes
        self.read_timeout_s = settings.read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        # status: of the response sent (None: none); timed_out: the body read deadline passed; gone: receive said
        # the client disconnected (a request answered by nobody is counted as 499, not as a 500)
        state = {"status": None, "timed_out": False, "gone": False}

        async def send_status(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                if state["timed_out"]:  # the rest of a stalled body may still come: close instead of reading it
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            receive = self._deadline(receive, state)
            try:
                await self._refuse(scope, receive)
            except ApiError as exc:
                extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
                return await JSONResponse(exc.body(), exc.status, extra)(scope, receive, send_status)
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, state["status"] or (499 if state["gone"] else 500), started)

    async def _refuse(self, scope, receive) -> None:
        """Raise the ApiError that refuses this request before the routes see it, if any."""
        headers = scope.get("headers") or []
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(k) + len(v) + 4 for k, v in headers)  # "name: value\r\n"
        if size > self.max_header_bytes:
            raise ApiError(
                431,
                f"the request headers are over {self.max_header_bytes} bytes",
                code="request_header_fields_too_large",
            )
        # no Host header at all (HTTP/1.0) is not a browser's request: browsers always send one
        for key, value in headers if self.allowed_hosts is not None else ():
            name = host_name(value.decode("latin-1")) if key == b"host" else None
            if name is not None and not (is_loopback(name) or name in self.allowed_hosts):
                raise ApiError(
                    403,
                    f"this server does not answer to the host {name[:100]!r}: it answers to localhost, 127.0.0.1 and "
                    "[::1] (a page that renamed itself to a loopback address could use it otherwise); start it with "
                    "--allowed-host NAME to add a name",
                    code="host_not_allowed",
                )
        found = dict(headers)
        # the chat page (page.py) is static and holds no data: it loads without the key, then asks for it
        public = scope.get("path") == "/" and scope.get("method") in ("GET", "HEAD")
        if (
            self.expected is not None
            and not public
            and not hmac.compare_digest(found.get(b"authorization", b""), self.expected)
        ):
            raise ApiError(
                401, "missing or wrong API key: send the header Authorization: Bearer <key>", code="invalid_api_key"
            )
        declared = found.get(b"content-length", b"0")
        if not declared.isdigit():
            raise ApiError(400, "bad Content-Length header")
        if int(declared) > self.limit:
            if int(declared) <= _DRAIN_BYTES:
                await _drain(receive)  # a client still sending would see a reset instead of the 413
            raise ApiError(413, f"the request body is over {self.limit} bytes")

    def _deadline(self, receive, state: dict):
        """`receive` that gives the whole body `read_timeout_s` seconds from the request's start (then a 408);
        once the body is in, receive waits for the disconnect as long as the response takes."""
        deadline, body_done = time.monotonic() + self.read_timeout_s, [False]

        async def receive_body():
            if body_done[0]:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        message = await receive()
                except TimeoutError:
                    state["timed_out"] = True
                    raise ApiError(
                        408, f"the request body did not arrive within {self.read_timeout_s:g} s", code="request_timeout"
                    ) from None
                body_done[0] = message["type"] != "http.request" or not message.get("more_body")
            state["gone"] = state["gone"] or message["type"] == "http.disconnect"
            return message

        return receive_body

    def _record(self, scope, status: int, started: float) -> None:
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        for prefix in ("/v1/models/", "/llmctl/v1/models/"):
            endpoint = prefix + "{model}" if path.startswith(prefix) else endpoint
        self.metrics.request(endpoint, status)
        ms = 1000 * (time.perf_counter() - started)
        log.info(
            "%s %s %s %.1f ms",
            scope.get("method"),
            path,
            status,
            ms,
            extra={"method": scope.get("method"), "path": path, "status": status, "ms": round(ms, 1)},
        )


# ---- the transport -----------------------------------------------------------------------------------------------


def h11_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request line and headers within
    `header_timeout_s` seconds of connecting (or of starting its next request). uvicorn bounds only the idle time
    between requests (`timeout_keep_alive`); without this a client sending half a header block holds its
    connection, and a place under `limit_concurrency`, for ever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a whole request line and headers arrived
                self._stop_header_timer()
            elif self._header_timer is None and self.conn.trailing_data[0]:  # the start of the next request
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def connection_lost(self, exc) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.debug("closing a connection that sent no whole request in %g s", header_timeout_s)
                self.transport.close()

    return DeadlineH11Protocol
