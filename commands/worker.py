"""`llmctl worker`: an opt-in warm worker that later commands reuse, so short commands skip seconds of imports.

Examples:
    llmctl worker start                     # later llmctl commands (same Python, same LLMCTL_HOME) fork from it
    llmctl worker status --json
    llmctl worker stop
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from llmctl.cli._common import JsonOpt, emit_json, err, out

app = typer.Typer(
    help="Start, stop and inspect the opt-in warm worker that later commands reuse (skips start-up imports).",
    no_args_is_help=True,
)


def _describe(info: dict) -> str:
    since = dt.datetime.fromtimestamp(info["started"]).strftime("%Y-%m-%d %H:%M:%S")
    idle = f"{info['idle_timeout_s'] / 60:g} min" if info["idle_timeout_s"] else "never"
    return (f"worker {info['pid']}: since {since}, {info['served']} commands served, {info['running']} running, "
            f"exits after idle {idle}; socket {info['socket']}")  # fmt: skip


@app.command("start")
def start(
    idle_timeout: Annotated[
        float,
        typer.Option("--idle-timeout", min=0, help="Minutes without commands before the worker exits (0 = never)."),
    ] = 30.0,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run the worker in this process (for a service manager), not detached.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Start the warm worker for this Python environment and LLMCTL_HOME (does nothing when one runs).

    While it runs, every `llmctl` command of the same environment and home is forked from it: torch,
    transformers, peft and llmctl are already imported, so `generate --max-new-tokens 1` takes about a tenth of
    its fresh-process time. A command runs in the worker only when its environment matches the worker's in the
    variables read at import time (PYTHON*, HF_*, OMP_*, TRANSFORMERS_*, LANG, HOME…); otherwise, or with
    LLMCTL_WORKER=0, it runs in its own process as usual. The worker retires itself when llmctl or its packages
    change on disk.

    Examples:
        llmctl worker start
        llmctl worker start --idle-timeout 0        # until `llmctl worker stop`
    """
    from llmctl.worker.control import start as start_worker

    info = start_worker(idle_timeout * 60, entry="llmctl.cli.main:app", foreground=foreground)
    if json_out:
        emit_json(info)
        return
    err.print(("already running: " if info["already"] else "started ") + _describe(info))


@app.command("status")
def status(json_out: JsonOpt = False) -> None:
    """Show whether a worker serves this environment and home, and what it has done.

    Examples:
        llmctl worker status
        llmctl worker status --json | jq .running
    """
    from llmctl.worker.control import status as worker_status

    info = worker_status()
    if json_out:
        emit_json({"running": info is not None, **(info or {})})
        return
    out.print(_describe(info) if info else "no worker is running (start one with `llmctl worker start`)")


@app.command("stop")
def stop(json_out: JsonOpt = False) -> None:
    """Stop the worker; commands it is running carry on to their end.

    Examples:
        llmctl worker stop
    """
    from llmctl.worker.control import stop as stop_worker

    info = stop_worker()
    if json_out:
        emit_json({"stopped": info is not None, **({"pid": info["pid"]} if info else {})})
        return
    err.print(f"stopped worker {info['pid']}" if info else "no worker was running")
