"""detbatch's own error types: the ones the CLI turns into a one-line message.

Every error that means "the user's input, config or storage is wrong, and here is the fix" derives from
:class:`DetbatchError`. Anything else is a bug, and the CLI lets it show its traceback.
"""

from __future__ import annotations


class DetbatchError(Exception):
    """An error a user can act on; its message names the value and the fix."""


class InputError(DetbatchError, ValueError):
    """Input that cannot be listed, read or understood, naming the URI and the fix."""


class OutputExistsError(DetbatchError, FileExistsError):
    """An output that holds something already, naming it and the flag that replaces it."""


class RunFailed(DetbatchError):
    """A run that started and did not finish (the CLI exits 1, not 2); the message says how to resume."""
