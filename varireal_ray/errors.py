"""Errors a user can act on. Each module raises its own subclass of ``UserError`` whose message
says what is wrong, where, and what to do; the CLI prints it as one line instead of a traceback.
Anything else is a bug and keeps its traceback. (This module imports nothing heavy, so a bad
config is reported before Ray or torch load.)"""


class UserError(Exception):
    """Base of every error caused by input, configuration or environment rather than a bug."""
