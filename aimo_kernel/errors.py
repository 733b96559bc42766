"""The one base of every error a user is meant to read: the command line prints it as one line.

Each layer raises its own subclass (a bad setting, a bad problems file, an engine that will not load,
a broken competition contract); anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class AimoError(Exception):
    """A failure the user can act on, reported as one line without a traceback."""


class UsageError(AimoError):
    """A command was given arguments it cannot work with."""
