"""Start `llmctl serve`: load each model on its backend, bind a socket, run uvicorn, shut down gracefully.

Binds 127.0.0.1 unless told otherwise. SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight
requests finish for up to `shutdown_grace_s` seconds, stops the engines and returns (exit code 0). Port 0
picks a free port; the line "listening on http://HOST:PORT" on stderr says which. If a model's engine thread
ends while serving, the same shutdown runs and the command fails (exit code 1), so a supervisor restarts it.

Examples:
    serve(["smollm2-135m-instruct"], [], resolve_config("serve"))
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from llmctl.errors import LlmctlError, UsageError

log = logging.getLogger("llmctl.serve")

_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(json_logs: bool) -> None:
    """Server logs on stderr: plain lines, or JSON lines with --json-logs (uvicorn's own logs included).

    llmctl's CLI switches Python logging off below CRITICAL so that libraries stay quiet
    (`llmctl.runtime.quiet.configure_library_logs`); the server's own loggers must pass, so logging is switched back on
    and the root logger raised to CRITICAL instead: loggers without a level of their own stay quiet.
    """
    if logging.root.manager.disable > logging.NOTSET:
        logging.disable(logging.NOTSET)
        logging.getLogger().setLevel(logging.CRITICAL)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    for name in ("llmctl.serve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)


def api_key_from_env(var: str | None) -> str | None:
    """The API key in environment variable var (None when no var is named); an unset or empty var is an error."""
    if not var:
        return None
    key = os.environ.get(var, "")
    if not key.strip():
        raise UsageError(
            f"--api-key-env {var}: the environment variable {var} is not set or empty",
            hint=f"export {var}=<key> before starting the server",
        )
    return key.strip()


def served_names(specs: list[str], names: list[str], resolved: list) -> list[str]:
    """The name each model is served under: --served-name in order, else its registry name or file stem."""
    if names and len(names) != len(specs):
        raise UsageError(
            f"{len(names)} --served-name for {len(specs)} --model",
            hint="give one --served-name per --model, in the same order, or none",
        )
    out = names or [r.name or Path(r.path).stem for r in resolved]
    dup = {n for n in out if out.count(n) > 1}
    if dup:
        raise UsageError(f"two models would be served as {min(dup)!r}", hint="give each a --served-name")
    return out


def load_models(specs: list[str], names: list[str], config: dict, say=None) -> list:
    """Resolve each --model, pick its backend (auto: fastest that fits), build it and start its engine."""
    from llmctl.inference import backends
    from llmctl.inference.backends.base import BackendOptions
    from llmctl.inference.engine import Engine
    from llmctl.models.resolve import resolve_model
    from llmctl.serve.app import ServedModel

    say = say or (lambda _m: None)
    resolved = [resolve_model(s) for s in specs]
    names = served_names(specs, names, resolved)
    options = BackendOptions(
        max_batch=config["max_concurrency"],
        max_model_len=config["max_model_len"],
        threads=config["threads"],
        device=config["device"],
        dtype=config["dtype"],
        tensor_parallel_size=config["tensor_parallel_size"],
        openvino_bits=config["openvino_bits"],
        rope=config["rope"],
        say=say,
    )
    served = []
    try:
        for name, r in zip(names, resolved):
            backend, why = (
                backends.choose(
                    r, config["device"], hf_only="RoPE scaling" if config["rope"]["scaling"] else None, fp32_ir=False
                )
                if config["backend"] == "auto"
                else (config["backend"], "asked for")
            )
            say(f"loading {name} ({r.format}) on the {backend} backend ({why})")
            auto = config["backend"] == "auto"
            engine = Engine(
                backends.create(backend, r, backends.auto_options(backend, r, options) if auto else options),
                config["max_concurrency"],
                config["max_queue"],
                max_queue_tokens=config["max_queue_tokens"],
            )
            served.append(ServedModel(name, engine.start(), r, backend, why))
            engine.warm_up()
    except BaseException:
        for m in served:
            m.engine.stop()
        raise
    return served


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: any free one), or one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise LlmctlError(
            f"cannot resolve --host {host} ({exc.strerror})", hint="use an IP address such as 127.0.0.1"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise LlmctlError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc})",
            hint="pick another --port (0 = any free port), or stop what is using it",
        ) from exc
    # listening now: clients that connect once "listening on" is logged wait in the backlog until uvicorn runs
    sock.listen(2048)
    return sock


def uvicorn_config(app, config: dict, n_models: int):
    """uvicorn's settings: graceful shutdown and the transport limits (see llmctl/schemas/serve.py for why each)."""
    import uvicorn

    from llmctl.serve.guard import h11_protocol

    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=config["shutdown_grace_s"],
        server_header=False,
        # h11, never httptools: the header size limit and the header read deadline are h11 settings
        http=h11_protocol(config["read_timeout_s"]),
        h11_max_incomplete_event_size=config["max_header_bytes"],
        timeout_keep_alive=config["keep_alive_s"],
        limit_concurrency=config["max_connections"] or 4 * config["max_concurrency"] * n_models + 64,
    )


def watch_engines(models: list, server, grace_s: float, done: threading.Event, failed: list[str]) -> None:
    """Each second: if a model's engine thread has ended while the server is not shutting down, start the graceful
    shutdown (in-flight requests get `grace_s` seconds) and name the model in `failed` (then `serve` fails).

    `done` is set once the server has stopped, before the engines are stopped on purpose. Should the shutdown
    hang past the grace time (a backend blocked in a step), the process leaves anyway, 30 s later, with exit code 1.
    """

    def watch() -> None:
        while not done.wait(1.0):
            dead = [m.name for m in models if not m.engine.alive()]
            if not dead or server.should_exit:
                continue
            failed.extend(dead)
            log.error(
                "the engine of %s stopped; shutting down (exit code 1) so that a supervisor restarts the server",
                ", ".join(dead),
                extra={"event": "engine_failed", "models": dead},
            )
            server.should_exit = True
            if not done.wait(grace_s + 30.0):
                log.error("shutdown did not end in time; exiting", extra={"event": "forced_exit"})
                os._exit(1)
            return

    threading.Thread(target=watch, name="llmctl-engine-watchdog", daemon=True).start()


def serve(specs: list[str], names: list[str], config: dict) -> None:
    """Serve models until SIGTERM/SIGINT; returns after a graceful shutdown (raises if an engine failed).

    Examples:
        serve(["tiny"], [], resolve_config("serve", explicit={"port": 0}))
    """
    import uvicorn

    from llmctl.serve.app import ServeSettings, build_app
    from llmctl.serve.guard import host_policy

    setup_logging(config["json_logs"])
    api_key = api_key_from_env(config["api_key_env"])
    sock = bind(config["host"], config["port"])
    models = load_models(specs, names, config, say=lambda m: log.info(m, extra={"event": "setup"}))
    done, failed = threading.Event(), []
    try:
        host, port = sock.getsockname()[:2]
        settings = ServeSettings(
            api_key=api_key,
            max_request_bytes=config["max_request_bytes"],
            default_max_tokens=config["default_max_tokens"],
            max_sequences=config["max_sequences_per_request"],
            max_request_tokens=config["max_request_tokens"],
            allowed_hosts=host_policy(host, config["allowed_hosts"]),
            max_header_bytes=config["max_header_bytes"],
            read_timeout_s=config["read_timeout_s"],
        )
        server = uvicorn.Server(uvicorn_config(build_app(models, settings), config, len(models)))
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        for m in models:
            log.info(
                "serving %s (%s backend, max length %d)",
                m.name,
                m.backend,
                m.engine.backend.max_model_len,
                extra={"event": "model", "model": m.name, "backend": m.backend, **m.engine.backend.info},
            )
        if host not in ("127.0.0.1", "::1", "localhost") and api_key is None:
            log.warning(
                "listening on %s without an API key: anyone who can reach it can use it (--api-key-env)",
                host,
                extra={"event": "exposed"},
            )
        log.info("listening on %s", url, extra={"event": "listening", "url": url, "models": [m.name for m in models]})
        log.info("chat page: %s/", url, extra={"event": "page", "url": url + "/"})
        _quiet_signals()
        watch_engines(models, server, config["shutdown_grace_s"], done, failed)
        server.run(sockets=[sock])
        done.set()
        log.info("stopped", extra={"event": "stopped"})
        if failed:
            raise LlmctlError(
                f"the engine of {', '.join(failed)} stopped while serving (its worker thread ended)",
                hint="the log above says why; a supervisor should restart the server",
            )
    finally:
        done.set()
        for m in models:
            m.engine.stop()
        sock.close()


def _quiet_signals() -> None:
    """Make SIGTERM/SIGINT no-ops outside uvicorn: it handles them while running (graceful shutdown) and raises
    the captured signal again once done, which must then end in a normal return (exit 0), not a kill."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
