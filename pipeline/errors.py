"""Errors a user can fix. The CLI prints their message as one line (no traceback)."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, an option value, a name. The message says what to fix."""
