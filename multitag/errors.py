"""The domain's errors: problems a user can fix, each message saying how.

The CLI maps every `MultitagError` to its message and exit code 1 (cli.py: one handler); any
other exception is a bug and keeps its traceback. Each class also derives from the builtin it
refines, so code that catches `ValueError` or `FileNotFoundError` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass


class MultitagError(Exception):
    """Base of every error the user can act on."""


class MissingInputError(MultitagError, FileNotFoundError):
    """A stage's input is absent; the message names the command that makes it."""


class UsageError(MultitagError, ValueError):
    """What was asked cannot be done as asked (an unknown name, a choice that cannot work)."""


@dataclass(frozen=True)
class Problem:
    """Why one item (an image, a CSV row, an annotation) cannot be used: a short `reason` code for
    quarantine tables, reports and API errors, and a `detail` a person can act on."""

    reason: str
    detail: str

    @classmethod
    def parse(cls, text: str) -> Problem:
        """A problem written as 'reason: detail' (how the dataset readers note them)."""
        reason, _, detail = text.partition(": ")
        return cls(reason, detail)

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class RegistryUnavailableError(MultitagError, RuntimeError):
    """The model registry could not be read or written (server unreachable, database locked or
    corrupt): the gate and promotion stop instead of guessing that there is no champion."""


class StaleVerdictError(MultitagError, RuntimeError):
    """The gate's verdict no longer describes what `register` would promote: it judged other
    candidates, or the champion it compared against has moved since."""
