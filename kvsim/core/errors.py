"""User-facing error types.

Errors caused by what the user asked for (a bad flag, an unknown model, a malformed file) derive from
:class:`UserInputError`; the CLI prints them as one line on stderr and exits with code 2, no traceback.
"""

from __future__ import annotations


class KvsimError(Exception):
    """Base class of every error kvsim raises on purpose."""


class UserInputError(KvsimError):
    """Something the user supplied is invalid; the message says what and why, in one line."""


class ConfigError(UserInputError):
    """An experiment or service configuration is invalid."""


class NotSupportedError(UserInputError):
    """The request is well formed but asks for something kvsim does not model yet."""
