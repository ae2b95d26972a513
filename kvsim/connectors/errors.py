"""Errors of the client side: one type per kind of failure, each with a message that says what to fix.

* :class:`ConnectorError` is the root; catch it to treat every connector failure alike.
* :class:`TransferError`: a load or save was refused before any byte moved (unknown URI scheme or storage,
  a buffer of the wrong size, a read-only buffer, a missing optional package). Failures of single blocks
  during I/O are *not* raised: they come back as ``False`` in
  :class:`~kvsim.connectors.transfer.TransferResult`.
* :class:`ManagerError`: the meta service refused a call or could not be reached; ``code`` is the KVCM
  :class:`~kvsim.cache.ErrorCode` (SERVICE_NOT_READY when no server answered).
* :class:`WriteAborted`: a two-phase write did not complete (FinishWriteCache failed, or the session expired
  or was lost in a server restart); none of its blocks counts as stored.
"""

from __future__ import annotations

from kvsim.cache import ErrorCode


class ConnectorError(Exception):
    """Base class of every error raised by :mod:`kvsim.connectors`."""


class TransferError(ConnectorError):
    """A transfer was refused before any I/O (bad URI, unknown storage, wrong buffer, missing package)."""


class ManagerError(ConnectorError):
    """The meta service answered with a non-OK status, or no configured server answered.

    Args:
        code: the KVCM error code (SERVICE_NOT_READY when unreachable).
        message: what happened, naming the RPC.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ManagerError], tuple[ErrorCode, str]]:  # type: ignore[override]
        return (type(self), (self.code, self.message))


class WriteAborted(ManagerError):
    """A write session ended without its blocks being stored (finish failed, expired, or lost)."""


__all__ = ["ConnectorError", "ManagerError", "TransferError", "WriteAborted"]
