"""What the warm worker and its clients share: where the socket is, how messages are framed, which environments
match, and when the worker's code has gone stale. Standard library only: the client imports it on every start.

A message is a 4-byte big-endian length and that many bytes of UTF-8 JSON. The first message of a `run` request
carries the client's stdin, stdout and stderr as file descriptors (SCM_RIGHTS), so the command writes to the
client's own terminal, pipe or file, as a fresh process would.

Examples:
    path = socket_path()                       # /run/user/0/llmctl/worker-3f2a….sock
    send(sock, {"op": "status"}); reply = receive(sock)
    mismatch = env_mismatch(worker_env, dict(os.environ))   # None when a command may run in the worker
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import socket
import stat
import struct
import sys
from pathlib import Path

# Environment variables read by Python or by the libraries a worker has already imported, at start-up or import
# time (encodings, thread pools, instruction sets, hub offline flags and cache folders, library log levels): a
# command whose value differs from the worker's would not behave as in a fresh process, so it runs in one. All
# other variables (LLMCTL_HOME, LLMCTL_DATA_DIR, PATH…) are the command's own and are applied in its process.
IMPORT_TIME_PREFIXES = (
    "PYTHON", "LD_", "LANG", "LC_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "ATEN_", "TORCH", "PYTORCH_",
    "CUDA_", "NVIDIA_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "SAFETENSORS_", "PEFT_",
    "BITSANDBYTES_", "TMPDIR", "XDG_CACHE_HOME", "LLMCTL_ALLOW_NETWORK", "VIRTUAL_ENV",
)  # fmt: skip
IMPORT_TIME_NAMES = ("HOME", "LOGLEVEL")
MAX_MESSAGE = 16 * 1024 * 1024  # bytes; a request is argv + environment, a few KiB
OFF_VALUES = ("0", "off", "no", "false")


def worker_disabled() -> bool:
    """LLMCTL_WORKER=0 (or off/no/false): run every command in its own process even when a worker is up."""
    return os.environ.get("LLMCTL_WORKER", "").strip().lower() in OFF_VALUES


def home_dir() -> Path:
    """LLMCTL_HOME as llmctl.paths resolves it, without creating it (the worker serves one home)."""
    from llmctl.paths import llmctl_home

    return llmctl_home(create=False).expanduser().resolve()


def runtime_dir(create: bool = True) -> Path:
    """A folder only this user can enter: $XDG_RUNTIME_DIR/llmctl, else /tmp/llmctl-UID (made 0700 by the worker).

    Raises PermissionError when it exists but belongs to someone else or others may enter it, and
    FileNotFoundError when it does not exist and `create` is false (no worker ever ran: nothing is made).
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    path = Path(base) / ("llmctl" if os.environ.get("XDG_RUNTIME_DIR") else f"llmctl-{os.getuid()}")
    if create:
        path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path} is not a private folder of this user (owner {info.st_uid}, mode "
                              f"{oct(info.st_mode & 0o777)}); remove it or set XDG_RUNTIME_DIR")  # fmt: skip
    return path


def worker_key() -> str:
    """One worker per Python environment and llmctl home: a hash of both (unix socket paths are short)."""
    text = f"{Path(sys.prefix).resolve()}\0{home_dir()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def socket_path(create: bool = True) -> Path:
    """The worker's socket for this environment and home (`create=False`: make no folder, for a client)."""
    return runtime_dir(create) / f"worker-{worker_key()}.sock"


def lock_path() -> Path:
    """Held (flock) by the running worker for its whole life: a second one started at once sees it and exits."""
    return runtime_dir() / f"worker-{worker_key()}.lock"


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment that must equal the worker's for a command to run in it."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) or k in IMPORT_TIME_NAMES}


def env_mismatch(worker_env: dict[str, str], client_env: dict[str, str]) -> str | None:
    """The first variable whose value differs between the two environments (by name), or None."""
    ours, theirs = import_time_env(worker_env), import_time_env(client_env)
    for name in sorted(set(ours) | set(theirs)):
        if ours.get(name) != theirs.get(name):
            return name
    return None


def code_fingerprint() -> str:
    """A hash of the files behind every imported module (path, size, mtime) and the installed distributions.

    A worker whose fingerprint no longer matches would run old code (an upgrade, an edited checkout) and retires.
    Modules not yet imported do not count: a command's process reads them from disk itself.
    """
    digest = hashlib.sha256()
    files = sorted({f for m in list(sys.modules.values()) if isinstance(f := getattr(m, "__file__", None), str)})
    for path in files:
        try:
            info = os.stat(path)
        except OSError:
            digest.update(f"{path}\0gone\n".encode())
            continue
        digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    for site in sorted({p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)}):
        digest.update("\n".join(sorted(os.listdir(site))).encode())  # dist-info names carry the versions
    return digest.hexdigest()


def send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    """Send one framed JSON message, with file descriptors attached to its first bytes when given."""
    data = json.dumps(message).encode()
    frame = struct.pack(">I", len(data)) + data
    if fds:
        sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def _read_exact(sock: socket.socket, size: int, head: bytes = b"") -> bytes:
    """Exactly `size` bytes (recv never reads past them, so the next message stays in the socket)."""
    chunks, have = [head], len(head)
    while have < size:
        chunk = sock.recv(min(size - have, 1 << 20))
        if not chunk:
            raise EOFError("connection closed mid-message")
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """Read one framed message (None at a clean end of the connection) and the descriptors sent with it."""
    fds: list[int] = []
    if max_fds:  # the descriptors ride on the first bytes, so the first read takes them (4 bytes at most)
        head, fds, _flags, _addr = socket.recv_fds(sock, 4, max_fds)
    else:
        head = sock.recv(4)
    if not head:
        return None, fds
    (size,) = struct.unpack(">I", _read_exact(sock, 4, head))
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes is over {MAX_MESSAGE}")
    return json.loads(_read_exact(sock, size).decode()), fds


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a unix socket (SO_PEERCRED: pid, uid, gid)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]
