"""The `llmctl` console script: hand the command to a warm worker when one serves this home, else run it here.

Apart from main.py so that a command the worker runs never imports Typer and the command table here (~50 ms of
a 0.3 s command on the 2-core EPYC).

Examples:
    llmctl models list          # the console script calls run()
"""

from __future__ import annotations

import sys


def run() -> None:
    """Console-script entry point: the command runs in the warm worker when one serves this home, else here."""
    from llmctl.runtime.threads import tame_openmp_spin
    from llmctl.worker.client import forward

    tame_openmp_spin()  # the environment sent to a worker is the one this process would import torch with
    code = forward(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from llmctl.cli.main import app

    app()
