"""Errors that the CLI turns into a one-line `Error: …` message.

Examples:
    raise LlmctlError("model 'foo' not found", hint="run `llmctl models list`")
"""

from __future__ import annotations


class LlmctlError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    Examples:
        raise LlmctlError("file x.jsonl is empty", hint="give a file with one JSON object per line")
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and its hint as one line."""
        text = self.message.rstrip(".")
        if self.hint:
            text += f"; {self.hint}"
        return text.replace("\n", " ")


class UsageError(LlmctlError):
    """Malformed command-line usage (exit code 2).

    Examples:
        raise UsageError("--set expects key=value, got 'lr'")
    """

    exit_code = 2


class GateFailed(LlmctlError):
    """A quality gate (e.g. `eval --fail-under`) was not met (exit code 3).

    Examples:
        raise GateFailed("hellaswag.acc_norm 0.31 < 0.35")
    """

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text, else its type name (never raises).

    Examples:
        first_line(ValueError(""))          # "ValueError"
        first_line(OSError("disk\nfull"))   # "disk"
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
