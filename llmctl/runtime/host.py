"""Which machine and boot this process runs on: a pid means something only on the host (and boot) that issued it.

LLMCTL_HOME may sit on NFS (HPC home folders) or be shared between containers, so a temp folder or a name
reservation written by pid 123 on node A says nothing about pid 123 on node B. Every temp name and lock llmctl
writes carries `host_id()`, and only leftovers of this host and boot are judged by their pid.

Examples:
    host_id()          # "3f9a0c1d": 4 hex digits of the host name's sha256, then 4 of the boot id's
    hostname()         # "node-a"
"""

from __future__ import annotations

import functools
import hashlib
import platform
import socket
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # Linux: new at every boot, so a rebooted host's pids are stale


def hostname() -> str:
    return socket.gethostname() or "localhost"


@functools.cache
def boot_id() -> str:
    """The kernel's boot id ("" where there is none): pids of an earlier boot are all gone."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _h4(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:4]


@functools.cache
def host_id() -> str:
    """8 hex digits: this host (a container has its own hostname, so its own id), then this boot.

    Same host, other boot: every pid it wrote is gone. Other host: its pids cannot be checked from here.
    """
    return _h4(hostname()) + _h4(boot_id())


def same_host(other_id: str) -> bool:
    """Whether a host id was written on this host (this boot or an earlier one)."""
    return other_id[:4] == host_id()[:4]


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), for the machine a measurement came from; "unknown" elsewhere.

    Examples:
        cpu_name()   # "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8488C"
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
