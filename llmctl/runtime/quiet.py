"""Keeping third-party output out of llmctl's streams: stdout carries results only, stderr llmctl's lines.

Examples:
    with stdout_to_stderr():
        neural_compressor_convert(model)      # its progress prints land on stderr
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Libraries that print progress to stdout (neural-compressor, NNCF, OpenVINO): keep stdout for `--json`."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def configure_library_logs(verbose: bool) -> None:
    """Third-party log records (datasets, lm-eval, transformers, neural-compressor, …) stay off stderr unless
    `verbose` (`--debug` or LOGLEVEL=INFO): llmctl reports through its own console, one line per problem.

    Python's logging is switched off below CRITICAL for every logger (llmctl itself does not use logging), and
    the libraries that read a verbosity at import are told the same before they are imported.
    """
    import logging
    import os

    if verbose:
        logging.disable(logging.NOTSET)
        os.environ["DATASETS_VERBOSITY"] = "info"
        os.environ["TRANSFORMERS_VERBOSITY"] = "info"
        if os.environ.get("LOGLEVEL", "ERROR") == "ERROR":
            os.environ["LOGLEVEL"] = "INFO"
        return
    logging.disable(logging.CRITICAL - 1)
    os.environ.setdefault("DATASETS_VERBOSITY", "critical")
