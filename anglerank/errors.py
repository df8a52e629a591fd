"""The one base class for mistakes a user can fix.

The CLI prints a :class:`UserError` as one ``error:`` line and exits with 2;
anything else that escapes a command is a bug in anglerank and is reported as
an internal error (exit 1) with its traceback. Library code raises a subclass
(or ``UserError`` itself) for bad input, bad settings, a missing optional
dependency or an output that cannot be written, and plain exceptions for
broken invariants.

``UserError`` derives from ``ValueError`` so callers of the Python API that
catch ``ValueError`` for bad arguments keep working.
"""

from __future__ import annotations

__all__ = ["UserError", "MissingExtra", "Interrupted", "one_line"]


class UserError(ValueError):
    """Bad input, settings or environment that the user can fix; one line, exit 2."""


class MissingExtra(UserError):
    """An optional dependency (matplotlib, trl, ...) is not installed."""


class Interrupted(Exception):
    """A run stopped on Ctrl-C / SIGTERM after saving its state; ``code`` is 130 or 143."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line (library messages often run over several), cut at ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
