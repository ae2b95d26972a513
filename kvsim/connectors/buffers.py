"""Byte views of the buffers a transfer reads from or writes into.

A *block buffer* is one array or tensor, or a sequence of them (an iovec list, like the reference SDK's
``BlockBuffer`` of ``Iov``), whose bytes, concatenated in order, are the block. Accepted pieces:

* numpy arrays of any dtype;
* torch tensors of any dtype (bfloat16 included), on the CPU or on a GPU.

Contiguous CPU memory is used in place (no copy): saves read from it and loads ``preadv`` straight into it.
Everything else goes through a staging copy: a GPU tensor or a non-contiguous array is copied to a
contiguous host buffer before a save, and a load reads into a host buffer and then copies into the
destination (:meth:`BlockView.commit`). torch is never imported here unless a torch tensor is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvsim.connectors.errors import TransferError


def _is_torch(obj: object) -> bool:
    # Checked by module name so that torch is not imported for numpy-only users.
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "data_ptr")


@dataclass(slots=True)
class BlockView:
    """The bytes of one block buffer: ``views`` are byte memoryviews in block order.

    ``commits`` copy staged data into destinations that could not be read into directly; call
    :meth:`commit` after a successful load.
    """

    views: list[memoryview]
    nbytes: int
    commits: list[Callable[[], None]] = field(default_factory=list)

    def commit(self) -> None:
        """Copy staged bytes into their destinations (a no-op for buffers used in place)."""
        for fn in self.commits:
            fn()


def _numpy_piece(arr: np.ndarray, writable: bool, where: str) -> tuple[memoryview, Callable[[], None] | None]:
    if arr.dtype.hasobject:
        raise TransferError(f"{where}: object arrays hold no raw bytes")
    if writable and not arr.flags.writeable:
        raise TransferError(f"{where}: the array is read-only; a load needs a writable buffer")
    if arr.flags.c_contiguous:
        return arr.reshape(-1).view(np.uint8).data, None
    staged = np.empty(arr.nbytes, dtype=np.uint8)
    if not writable:
        staged[:] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        return staged.data, None

    def commit() -> None:
        arr[...] = staged.view(arr.dtype).reshape(arr.shape)

    return staged.data, commit


def _torch_piece(t: Any, writable: bool, where: str) -> tuple[memoryview, Callable[[], None] | None]:
    import torch  # only reached when the caller passed a torch tensor

    on_cpu = t.device.type == "cpu"
    nbytes = t.numel() * t.element_size()
    if on_cpu and t.is_contiguous():
        if writable and t.requires_grad and t.is_leaf:
            raise TransferError(f"{where}: cannot load into a leaf tensor that requires grad")
        flat = t.detach().reshape(-1).view(torch.uint8)
        return flat.numpy().data, None
    if not writable:
        # GPU or strided: one device-to-host copy into contiguous host memory.
        host = t.detach().contiguous().reshape(-1).view(torch.uint8).to("cpu")
        return host.numpy().data, None
    staged = torch.empty(nbytes, dtype=torch.uint8)

    def commit() -> None:
        t.copy_(staged.view(t.dtype).reshape(t.shape))

    return staged.numpy().data, commit


def block_view(buffer: Any, *, writable: bool, where: str) -> BlockView:
    """Byte views of ``buffer`` (an array, a tensor or a sequence of them).

    Args:
        buffer: the block buffer.
        writable: True for loads (the bytes are written into the buffer).
        where: how to name the buffer in error messages.

    Raises:
        TransferError: an unsupported type, a read-only array for a load, or an empty sequence.
    """
    pieces: Sequence[Any]
    if isinstance(buffer, np.ndarray) or _is_torch(buffer):
        pieces = (buffer,)
    elif isinstance(buffer, list | tuple):
        pieces = buffer
        if not pieces:
            raise TransferError(f"{where}: an empty list of pieces")
    elif isinstance(buffer, bytearray | memoryview | bytes):
        if writable and (isinstance(buffer, bytes) or (isinstance(buffer, memoryview) and buffer.readonly)):
            raise TransferError(f"{where}: the buffer is read-only; a load needs a writable buffer")
        mv = memoryview(buffer).cast("B") if memoryview(buffer).format != "B" else memoryview(buffer)
        return BlockView([mv], mv.nbytes)
    else:
        raise TransferError(
            f"{where}: expected a numpy array, a torch tensor or a list of them, got {type(buffer).__name__}"
        )
    view = BlockView([], 0)
    for i, piece in enumerate(pieces):
        label = where if len(pieces) == 1 else f"{where} piece {i}"
        if isinstance(piece, np.ndarray):
            mv, commit = _numpy_piece(piece, writable, label)
        elif _is_torch(piece):
            mv, commit = _torch_piece(piece, writable, label)
        else:
            raise TransferError(
                f"{label}: expected a numpy array or a torch tensor, got {type(piece).__name__}"
            )
        view.views.append(mv)
        view.nbytes += mv.nbytes
        if commit is not None:
            view.commits.append(commit)
    return view


__all__ = ["BlockView", "block_view"]
