"""The client half of the warm worker: hand this command to a running worker, or say that it must run here.

Called first thing by the `llmctl` entry point. With no worker for this Python environment and llmctl home (the
common case) it costs one failed stat of the socket path. Signals the client gets (Ctrl-C, SIGTERM, hang-up…)
are passed to the command's process group, and the command's exit status (or the signal that ended it) becomes
the client's own.

Examples:
    code = forward(sys.argv[1:])     # None: no worker, or it declined; run the command in this process
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from llmctl.worker import protocol

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
CONNECT_TIMEOUT_S = 5.0  # the worker accepts in its loop; it answers within one poll (1 s) unless wedged


def connect() -> socket.socket | None:
    """A connection to this home's worker, or None when none is running (or this user's folder is unsafe)."""
    try:
        path = protocol.socket_path(create=False)
        if not path.exists():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(str(path))
    except OSError:  # a stale socket (worker killed), an unsafe folder, a refused connection: run here
        return None
    return sock


def request(message: dict) -> dict | None:
    """One control request (status, stop) and its answer; None when no worker is running."""
    sock = connect()
    if sock is None:
        return None
    with sock:
        protocol.send(sock, message)
        reply, _ = protocol.receive(sock)
    return reply


def forward(argv: list[str]) -> int | None:
    """Run `llmctl ARGV` in the worker and return its exit code; None when it is to run in this process.

    Examples:
        code = forward(["models", "list"])
    """
    if protocol.worker_disabled() or (argv and argv[0] == "worker"):
        return None
    sock = connect()
    if sock is None:
        return None
    with sock:
        try:
            protocol.send(sock, run_request(argv), fds=[0, 1, 2])
            reply, _ = protocol.receive(sock)
        except (OSError, EOFError, ValueError):
            return None  # the worker broke off before it took the command: nothing ran yet
        if reply is None or "pid" not in reply:
            if reply and reply.get("retiring"):
                sys.stderr.write(f"llmctl: the worker retired ({reply['declined']}); `llmctl worker start` "
                                 "starts a new one\n")  # fmt: skip
            return None
        sock.settimeout(None)
        return wait_for_exit(sock, int(reply["pid"]))


def run_request(argv: list[str]) -> dict:
    """What the command's process needs to look like this one."""
    umask = os.umask(0)
    os.umask(umask)
    return {"op": "run", "argv": list(argv), "argv0": sys.argv[0] if sys.argv else "llmctl", "cwd": os.getcwd(),
            "env": dict(os.environ), "umask": umask, "ignored_signals": ignored_signals()}  # fmt: skip


def ignored_signals() -> list[int]:
    """Signals this process inherited as ignored (`nohup`, a background job's SIGINT): the command keeps them so."""
    return [int(sig) for sig in FORWARDED_SIGNALS if signal.getsignal(sig) == signal.SIG_IGN]


def wait_for_exit(sock: socket.socket, pid: int) -> int:
    """Pass signals to the command's process group until its status arrives; end as it ended."""

    def pass_on(sig, _frame):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    ignored = ignored_signals()
    previous = {sig: signal.signal(sig, pass_on) for sig in FORWARDED_SIGNALS if sig not in ignored}
    try:
        reply, _ = protocol.receive(sock)
    except (OSError, EOFError, ValueError):
        reply = None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if reply is None:
        sys.stderr.write("Error: the llmctl worker lost this command (it was killed?); run `llmctl worker stop`, "
                         "then run the command again\n")  # fmt: skip
        return 1
    if "signal" in reply:  # ended by a signal: end the same way, so a shell sees what it would see
        sig = int(reply["signal"])
        sys.stdout.flush()
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught, so need no reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return int(reply.get("exit", 1))
