"""Start, stop and ask about the warm worker (`llmctl worker start|stop|status`).

Examples:
    info = start(idle_timeout_s=1800)      # detached; returns once it accepts commands
    stop()                                 # None when none was running
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.worker import protocol
from llmctl.worker.client import request

START_TIMEOUT_S = 180.0  # importing torch, transformers and peft: ~5 s idle on 2 cores, far more when loaded
ALREADY = "another worker already serves this home"


def log_path() -> Path:
    """The worker's own log (start-up, dropped requests, why it exited): $LLMCTL_HOME/worker.log."""
    from llmctl.paths import llmctl_home

    return llmctl_home() / "worker.log"


def server_argv(idle_timeout_s: float, entry: str) -> list[str]:
    return [sys.executable, "-m", "llmctl.worker.server", "--idle-timeout", str(idle_timeout_s), "--entry", entry]


def status() -> dict | None:
    """The running worker's status (pid, started, served, running, idle_timeout_s, socket…), or None."""
    try:
        return request({"op": "status"})
    except (OSError, EOFError, ValueError):
        return None


def start(idle_timeout_s: float, entry: str, foreground: bool = False) -> dict:
    """Start this home's worker unless one runs; its status, with `already` true when it was running.

    `entry` ("module:callable") runs one command line in a forked process: the CLI passes its own app.

    Examples:
        start(1800, "llmctl.cli.main:app")["pid"]
    """
    if idle_timeout_s < 0:
        raise LlmctlError(f"idle timeout {idle_timeout_s} is negative", hint="give minutes >= 0 (0 = never)")
    try:
        protocol.runtime_dir()  # refuses an unsafe folder before anything starts
    except PermissionError as exc:
        raise LlmctlError(str(exc)) from exc
    info = status()
    if info is not None:
        return {**info, "already": True}
    if foreground:  # this process becomes the worker (a service manager keeps it): never returns
        sys.stdout.flush()
        os.execv(sys.executable, server_argv(idle_timeout_s, entry))
    log = log_path()
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(server_argv(idle_timeout_s, entry), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log_file, start_new_session=True, cwd="/")  # fmt: skip
    return {**wait_until_ready(proc, log), "already": False}


def wait_until_ready(proc: subprocess.Popen, log: Path) -> dict:
    """Poll the new worker until it answers; an error with its log's last line when it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        info = status()
        if info is not None:
            return info
        if proc.poll() is not None:
            last = _last_line(log)
            if ALREADY in last:  # a concurrent `worker start` won the race: that worker serves us
                info = status()
                if info is not None:
                    return info
            raise LlmctlError(f"the worker exited at start-up (code {proc.returncode}): {last}",
                              hint=f"see {log}")  # fmt: skip
        time.sleep(0.2)
    proc.kill()
    raise LlmctlError(f"the worker did not answer within {START_TIMEOUT_S:.0f} s", hint=f"see {log}")


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def stop(timeout_s: float = 10.0) -> dict | None:
    """Ask the worker to exit (commands it runs carry on); its pid, or None when none was running."""
    try:
        reply = request({"op": "stop"})
    except (OSError, EOFError, ValueError):
        return None
    if reply is None:
        return None
    deadline = time.monotonic() + timeout_s
    while protocol.socket_path().exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return reply
