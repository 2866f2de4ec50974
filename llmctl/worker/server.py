"""The warm worker: imports torch, transformers, peft and llmctl once, then forks one process per command.

Each command runs in a fresh fork of the pre-imported worker: in the client's working folder, with its
environment, umask, stdin/stdout/stderr and arguments, in its own process group; nothing one command changes
reaches the next or the worker, and commands run side by side. A small keeper process per command waits for it
and sends the client its exit status; when the client goes away the command is ended as a terminal's hang-up
would end it. Start it with `llmctl worker start` (see llmctl/worker/control.py), not by hand.

Measured on the 2-core EPYC (idle, benchmarks/startup.py): one-token `generate` 0.55 s forked from a pre-imported
process against 5.5 s as a fresh process.

Examples:
    python -m llmctl.worker.server --idle-timeout 1800 --entry llmctl.cli.main:app   # what `worker start` runs
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import importlib
import io
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from llmctl.worker import protocol

# Imported before the first fork: what most commands import (seconds each on 2 cores: torch 1.4, transformers
# 1.0, the LLaMA model 0.8, peft 1.3, datasets 0.8). Not openvino or optimum: importing them starts a telemetry
# thread, and a fork copies only the thread that forks. lm-eval, TRL and the server stack are imported by the
# commands that use them.
PRELOAD = (
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.generation.utils",
    "peft",
    "datasets",
    "safetensors.torch",
    "llmctl.inference.generate",
    "llmctl.models.loading",
    "llmctl.models.resolve",
)
ACCEPT_POLL_S = 1.0  # how often the loop looks at finished commands and the idle clock
REQUEST_TIMEOUT_S = 10.0  # a client that connects and sends nothing for this long is dropped
HANGUP_GRACE_S = 5.0  # after the client went away: SIGHUP, then SIGKILL this much later


@dataclass
class Worker:
    """The accepting process's state."""

    listener: socket.socket
    lock_fd: int
    env: dict[str, str]
    fingerprint: str
    idle_timeout: float
    import_env: dict[str, str] = field(default_factory=dict)  # what the preloaded imports set, as they would
    started: float = field(default_factory=time.time)
    served: int = 0
    running: set[int] = field(default_factory=set)
    last_busy: float = field(default_factory=time.monotonic)
    retiring: str | None = None

    def status(self) -> dict:
        return {"pid": os.getpid(), "started": self.started, "served": self.served, "running": len(self.running),
                "idle_timeout_s": self.idle_timeout, "python": sys.executable, "home": str(protocol.home_dir()),
                "socket": str(protocol.socket_path())}  # fmt: skip


@dataclass
class Command:
    """One command's request, as received: what its process needs to look like the client's."""

    argv: list[str]
    argv0: str
    cwd: str
    env: dict[str, str]
    umask: int
    fds: list[int]
    ignored_signals: list[int]


def preload(entry: str) -> None:
    """Import what commands share and the entry point's module, as llmctl's entry point would (OpenMP first)."""
    from llmctl.runtime.threads import tame_openmp_spin

    tame_openmp_spin()
    for name in (*PRELOAD, entry.partition(":")[0]):
        importlib.import_module(name)


def take_lock() -> int | None:
    """The worker's lock (held for its life), or None when another worker holds it (it serves this home)."""
    lock_fd = os.open(protocol.lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        return None
    return lock_fd


def bind(lock_fd: int, idle_timeout: float, env: dict[str, str]) -> Worker:
    """Listen on the socket: only once preloaded, so a client that finds it is answered at once."""
    path = protocol.socket_path()
    path.unlink(missing_ok=True)  # a worker that died without cleaning up; the lock says none runs
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    added = {k: v for k, v in os.environ.items() if k not in env}  # set by the imports (TORCHINDUCTOR_CACHE_DIR…)
    return Worker(listener, lock_fd, env, protocol.code_fingerprint(), idle_timeout, added)


def reap(worker: Worker) -> None:
    """Collect finished keeper processes."""
    for pid in list(worker.running):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            worker.running.discard(pid)
            worker.last_busy = time.monotonic()


def should_exit(worker: Worker) -> bool:
    if worker.retiring:
        return True
    idle = time.monotonic() - worker.last_busy
    return bool(worker.idle_timeout) and not worker.running and idle > worker.idle_timeout


def decline_reason(worker: Worker, request: dict) -> str | None:
    """Why a command cannot run in this worker (it then runs in its own process), or None."""
    name = protocol.env_mismatch(worker.env, request.get("env") or {})
    if name:
        return f"{name} differs from the worker's"
    if protocol.code_fingerprint() != worker.fingerprint:
        worker.retiring = "llmctl or its packages changed since the worker started"
        return worker.retiring
    return None


def handle(worker: Worker, conn: socket.socket, request: dict, fds: list[int]) -> Command | None:
    """Answer one request; returns the command only in the forked keeper process that runs it."""
    op = request.get("op")
    if op == "status":
        protocol.send(conn, {"ok": True, **worker.status()})
    elif op == "stop":
        worker.retiring = "stopped by `llmctl worker stop`"
        protocol.send(conn, {"ok": True, "pid": os.getpid()})
    elif op == "run" and len(fds) == 3:
        reason = decline_reason(worker, request)
        if reason:
            protocol.send(conn, {"declined": reason, "retiring": bool(worker.retiring)})
            return None
        env = {**worker.import_env, **request["env"]}  # a fresh process would have imported torch… itself
        command = Command(list(request["argv"]), str(request["argv0"]), str(request["cwd"]), env,
                          int(request["umask"]), fds, [int(s) for s in request.get("ignored_signals", [])])  # fmt: skip
        pid = os.fork()
        if pid == 0:
            return command
        worker.served += 1
        worker.running.add(pid)
    else:
        protocol.send(conn, {"error": f"unknown request {op!r}"})
    return None


def serve(worker: Worker) -> tuple[Command, socket.socket] | None:
    """The accept loop; returns (command, its connection) in a keeper process, None when the worker ends."""
    while not should_exit(worker):
        reap(worker)
        ready, _, _ = select.select([worker.listener], [], [], ACCEPT_POLL_S)
        if not ready:
            continue
        conn, _ = worker.listener.accept()
        reap(worker)  # a status asked right after a command ended counts it as ended
        fds: list[int] = []
        command = None
        try:
            conn.settimeout(REQUEST_TIMEOUT_S)
            request, fds = protocol.receive(conn, max_fds=3)
            if request is not None and protocol.peer_uid(conn) == os.getuid():
                command = handle(worker, conn, request, fds)
        except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:  # a client that broke off or is not one
            print(f"llmctl worker: dropped a request: {exc}", file=sys.stderr, flush=True)
        if command is not None:  # the keeper: it owns conn and the descriptors now, none of the worker's handles
            worker.listener.close()
            os.close(worker.lock_fd)
            conn.settimeout(None)
            return command, conn
        for fd in fds:
            os.close(fd)
        conn.close()
    return None


def finish(worker: Worker) -> None:
    """Remove the socket (if still ours) and let the lock go; keepers already running carry on."""
    protocol.socket_path().unlink(missing_ok=True)  # ours: the lock kept every other worker from binding it
    worker.listener.close()
    os.close(worker.lock_fd)
    if worker.retiring:
        print(f"llmctl worker {os.getpid()}: exiting ({worker.retiring})", file=sys.stderr, flush=True)


def keep(command: Command, conn: socket.socket) -> Command | None:
    """The keeper: fork the command's process, relay its exit status, end it if the client goes away.

    Returns the command only in the command's own process.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        conn.close()
        return command
    os.setpgid(pid, pid)  # also here: no race with a signal the client forwards at once
    for fd in command.fds:
        os.close(fd)
    try:
        protocol.send(conn, {"pid": pid})
    except OSError:
        pass
    status = wait_for(pid, conn)
    message = {"signal": -os.waitstatus_to_exitcode(status)} if os.WIFSIGNALED(status) else {
        "exit": os.waitstatus_to_exitcode(status)}  # fmt: skip
    try:
        protocol.send(conn, message)
    except OSError:
        pass
    os._exit(0)


def wait_for(pid: int, conn: socket.socket) -> int:
    """Wait for the command; a client that disconnects first hangs it up (SIGHUP, then SIGKILL)."""
    pidfd = os.pidfd_open(pid)
    watching, hung_up_at = [pidfd, conn], None
    while True:
        ready, _, _ = select.select(watching, [], [], 0.5)
        if pidfd in ready:
            return os.waitpid(pid, 0)[1]
        if conn in ready and conn in watching and not conn.recv(1):  # the client is gone
            watching.remove(conn)
            hung_up_at = time.monotonic()
            _signal_group(pid, signal.SIGHUP)
        if hung_up_at is not None and time.monotonic() - hung_up_at > HANGUP_GRACE_S:
            _signal_group(pid, signal.SIGKILL)
            hung_up_at = None


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def become(command: Command) -> None:
    """Turn this forked process into the client's command: descriptors, folder, environment, signals, stdio."""
    for target, fd in enumerate(command.fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(command.cwd)
    os.umask(command.umask)
    os.environ.clear()
    os.environ.update(command.env)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, signal.SIG_IGN if sig in command.ignored_signals else default)  # as Python would
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it: a closed pipe is a BrokenPipeError
    reopen_stdio()
    sys.argv = [command.argv0, *command.argv]
    if "numpy" in sys.modules:  # a fresh process seeds numpy's global generator from the OS; forks share one
        sys.modules["numpy"].random.seed()


def reopen_stdio() -> None:
    """New sys.stdin/stdout/stderr on descriptors 0-2, buffered as Python buffers them (line-wise on a terminal)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    encoding, errors = sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"

    def text(fd: int, mode: str, line: bool, errs: str) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        return io.TextIOWrapper(buffered, encoding=encoding, errors=errs, line_buffering=line)

    sys.stdin = sys.__stdin__ = text(0, "r", False, errors)
    sys.stdout = sys.__stdout__ = text(1, "w", os.isatty(1), errors)
    sys.stderr = sys.__stderr__ = text(2, "w", True, "backslashreplace")


def run_worker(idle_timeout: float, entry: str) -> Command | None:
    """Lock, preload, bind, serve; returns a command only in that command's own process."""
    lock_fd = take_lock()
    if lock_fd is None:
        print("llmctl worker: another worker already serves this home", file=sys.stderr, flush=True)
        return None
    before = dict(os.environ)  # what clients send: llmctl's own defaults and the OpenMP setting applied
    preload(entry)
    worker = bind(lock_fd, idle_timeout, before)
    print(f"llmctl worker {os.getpid()}: ready on {protocol.socket_path()}", file=sys.stderr, flush=True)
    try:
        job = serve(worker)
    except BaseException:  # SIGTERM (SystemExit) or a bug: the socket must not outlive the worker
        finish(worker)
        raise
    if job is None:
        finish(worker)
        return None
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the keeper: the worker's own SIGTERM handler is not its
    return keep(*job)


def run_command(entry: str) -> int:
    """Run the command this process became through `entry` ("module:callable", the CLI's app); its exit code."""
    module, _, name = entry.partition(":")
    app = getattr(importlib.import_module(module), name)
    try:
        app(prog_name="llmctl")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:  # --debug lets errors through: the traceback a fresh process would print
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def exit_now(code: int) -> None:
    """End the command's process as Python would, without tearing down thousands of modules one by one.

    A fresh `llmctl models list` never imports torch; its fork from the worker has 4,000 modules loaded, and
    the interpreter's module teardown took ~1.8 s of a 2.1 s command (2-core EPYC). Non-daemon threads are
    joined and atexit handlers run first, as at a normal exit; then the buffers are flushed.
    """
    shutdown = getattr(threading, "_shutdown", None)  # what Py_Finalize calls first: waits for non-daemon threads
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`llmctl … | head`): Python exits with 120 then
            code = code or 120
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """`python -m llmctl.worker.server`: run the worker in this process until it is stopped or idle."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-timeout", type=float, default=1800.0, help="seconds without commands before exiting")
    ap.add_argument("--entry", required=True, help="module:callable that runs one command line (the CLI's app)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    command = run_worker(args.idle_timeout, args.entry)
    if command is None:
        return
    become(command)
    exit_now(run_command(args.entry))


if __name__ == "__main__":
    main()
