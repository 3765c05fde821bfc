"""The error type of bad user input, kept apart from the errors that mean a bug.

A :class:`UserError` is something the person running a command can fix: an unknown
name, a flag out of range, a missing dataset or weights file, a folder in use. Its
message says what to do, so ``train`` prints it as one ``error:`` line and exits 2,
without a traceback. Every other exception is a bug (or a fault of the machine) and
keeps its traceback. This module imports nothing of ours, so any layer can raise it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input that the user can correct; the message says how.

    A ``ValueError`` subclass, so callers that catch ``ValueError`` around validation keep
    working; what is caught as a user error is this type only, never a bare ``ValueError``.
    """
