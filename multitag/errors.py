"""The domain's errors: problems a user can fix, each message saying how.

The CLI maps every `MultitagError` to its message and exit code 1 (cli.py: one handler); any
other exception is a bug and keeps its traceback. Each class also derives from the builtin it
refines, so code that catches `ValueError` or `FileNotFoundError` keeps working.
"""

from __future__ import annotations


class MultitagError(Exception):
    """Base of every error the user can act on."""


class MissingInputError(MultitagError, FileNotFoundError):
    """A stage's input is absent; the message names the command that makes it."""


class UsageError(MultitagError, ValueError):
    """What was asked cannot be done as asked (an unknown name, a choice that cannot work)."""
