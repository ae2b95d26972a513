"""Typed errors of the cache layer, carrying Tair KVCM's wire error codes.

Every public method of :mod:`kvsim.cache` reports failure by raising :class:`CacheError` with one of the
:class:`ErrorCode` values that KVCM puts in ``header.status.code``; the service layer copies ``code`` and
``message`` onto the wire unchanged (the admin service folds everything but ``INVALID_ARGUMENT`` into
``INTERNAL_ERROR``, as the reference does). Messages name the offending field first, e.g.
``"block_size: must be > 0, got 0"``.
"""

from __future__ import annotations

from enum import IntEnum

from kvsim.core.errors import KvsimError


class ErrorCode(IntEnum):
    """KVCM ``ErrorCode`` with the wire numbering (note ``OK`` is 1, not 0)."""

    UNSPECIFIED = 0
    OK = 1
    UNSUPPORTED = 2
    INTERNAL_ERROR = 3
    SERVICE_NOT_READY = 4
    INVALID_ARGUMENT = 5
    DUPLICATE_ENTITY = 6
    REACH_MAX_ENTITY_CAPACITY = 7
    INSTANCE_NOT_EXIST = 8
    SERVER_NOT_LEADER = 9
    IO_ERROR = 20
    UNKNOWN_ERROR = 100


class CacheError(KvsimError):
    """A cache operation failed; ``code`` is the KVCM error code, ``message`` says why.

    Args:
        code: the KVCM error code a client would see.
        message: one line naming the field or entity and the reason.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[CacheError], tuple[ErrorCode, str]]:
        # Keep the two-argument constructor picklable (exceptions pickle their args by default).
        return (CacheError, (self.code, self.message))


def invalid(field: str, why: str) -> CacheError:
    """Build the ``INVALID_ARGUMENT`` error for ``field`` ("<field>: <why>")."""
    return CacheError(ErrorCode.INVALID_ARGUMENT, f"{field}: {why}")


def internal(message: str) -> CacheError:
    """Build an ``INTERNAL_ERROR`` (the reference's code for runtime failures of the manager)."""
    return CacheError(ErrorCode.INTERNAL_ERROR, message)


def instance_not_exist(instance_id: str) -> CacheError:
    """Build the ``INSTANCE_NOT_EXIST`` error for an unknown or empty instance id."""
    shown = repr(instance_id) if instance_id else "(empty)"
    return CacheError(ErrorCode.INSTANCE_NOT_EXIST, f"instance_id: instance {shown} does not exist")
