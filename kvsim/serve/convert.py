"""Field-by-field conversion between KVCM wire messages (protobuf) and ``kvsim.cache`` dataclasses.

The dataclasses of :mod:`kvsim.cache.types` mirror the proto messages with the same field names, so one
generic converter serves every message of the meta, admin and debug packages (each package declares its
own copies of the shared messages; matching is by field *name*, never by message type). Fields that exist
on only one side are skipped, which keeps the converter working when either side gains fields.

Rules, following the reference's proto <-> model conversion:

* An absent sub-message becomes ``None`` when the dataclass field defaults to ``None`` (presence matters:
  ``model_deployment``, ``cache_config``, ``block_mask``, ``success_blocks``, ``storage``); otherwise it is
  converted from the message's default instance, so unset numbers arrive as 0 exactly as in the reference.
* Enum numbers become the dataclass's ``IntEnum`` member; numbers the enum does not know (proto3 enums are
  open) stay plain ints, so the cache's own validation reports them.
* Two oneofs need a hand-written rule: ``BlockMask.info`` (a present mask with neither member set is an
  empty bool list, as in the reference) and ``StorageConfig.storage_spec`` (the member name is the spec
  class's ``ONEOF``). kvsim's ``StorageConfig.is_available`` travels in an extension field when the
  message has one.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kvsim.cache.types import STORAGE_SPEC_CLASSES, BlockMask, StorageConfig

T = TypeVar("T")

_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_ENUM = FieldDescriptor.TYPE_ENUM
_SPEC_BY_ONEOF: dict[str, type] = {cls.ONEOF: cls for cls in STORAGE_SPEC_CLASSES}  # type: ignore[attr-defined]


def _is_repeated(fd: FieldDescriptor) -> bool:
    # ``is_repeated`` replaces ``label`` in newer protobuf releases; support both.
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == FieldDescriptor.LABEL_REPEATED


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldPlan:
    """How one dataclass field converts: its name, the nested class (dataclass or enum) if any, and
    whether an absent sub-message means ``None``."""

    name: str
    target: type | None
    none_when_absent: bool


def _nested_target(hint: object) -> type | None:
    """The dataclass or IntEnum inside a hint such as ``X | None`` or ``tuple[X, ...]``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, tuple):
        for arg in typing.get_args(hint):
            if arg is Ellipsis or arg is type(None):
                continue
            found = _nested_target(arg)
            if found is not None:
                return found
        return None
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or issubclass(hint, enum.IntEnum)):
        return hint
    return None


@functools.cache
def _plan(cls: type) -> tuple[_FieldPlan, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        _FieldPlan(f.name, _nested_target(hints[f.name]), f.default is None)
        for f in dataclasses.fields(cls)
        if f.init
    )


def _enum_value(cls: type | None, value: int) -> int:
    if cls is None or not issubclass(cls, enum.IntEnum):
        return value
    try:
        return cls(value)
    except ValueError:
        return value  # unknown number: left for the cache's validation to report


def from_message(message: Message, cls: type[T]) -> T:
    """Build a ``cls`` dataclass from ``message``, matching fields by name (see the module docstring)."""
    special = _FROM_SPECIAL.get(cls)
    if special is not None:
        return special(message)  # type: ignore[no-any-return]
    fields = message.DESCRIPTOR.fields_by_name
    kwargs: dict[str, Any] = {}
    for plan in _plan(cls):  # type: ignore[arg-type]  # dataclass types are hashable
        fd = fields.get(plan.name)
        if fd is None:
            continue  # a dataclass-only field keeps its default
        value = getattr(message, plan.name)
        if fd.type == _MESSAGE:
            if plan.target is None:
                continue
            if _is_repeated(fd):
                kwargs[plan.name] = tuple(from_message(v, plan.target) for v in value)
            elif plan.none_when_absent and not message.HasField(plan.name):
                kwargs[plan.name] = None
            else:
                kwargs[plan.name] = from_message(value, plan.target)
        elif _is_repeated(fd):
            if fd.type == _ENUM:
                kwargs[plan.name] = tuple(_enum_value(plan.target, v) for v in value)
            else:
                kwargs[plan.name] = tuple(value)
        elif fd.type == _ENUM:
            kwargs[plan.name] = _enum_value(plan.target, value)
        else:
            kwargs[plan.name] = value
    return cls(**kwargs)


def _scalar_list(values: object) -> list[Any]:
    if isinstance(values, np.ndarray):
        return values.tolist()  # numpy scalars are not accepted by protobuf containers
    return [v.item() if isinstance(v, np.generic) else v for v in values]  # type: ignore[attr-defined]


def fill_message(obj: object, message: Message) -> Message:
    """Copy the fields of dataclass ``obj`` into ``message`` (by name; ``None`` leaves a field unset).

    Returns ``message`` for chaining.
    """
    special = _TO_SPECIAL.get(type(obj))
    if special is not None:
        special(obj, message)
        return message
    for fd in message.DESCRIPTOR.fields:
        name = fd.name
        if not hasattr(obj, name):
            continue
        value = getattr(obj, name)
        if value is None:
            continue
        if fd.type == _MESSAGE:
            if _is_repeated(fd):
                container = getattr(message, name)
                for item in value:
                    fill_message(item, container.add())
            else:
                sub = getattr(message, name)
                sub.SetInParent()
                fill_message(value, sub)
        elif _is_repeated(fd):
            getattr(message, name).extend(_scalar_list(value))
        else:
            setattr(message, name, value.item() if isinstance(value, np.generic) else value)
    return message


def to_message(obj: object, message_type: type[Message]) -> Message:
    """A new ``message_type`` message holding the fields of ``obj``."""
    return fill_message(obj, message_type())


# ---------------------------------------------------------------------------------------------- oneofs


def _mask_from(message: Message) -> BlockMask:
    which = message.WhichOneof("info")
    if which == "offset":
        return BlockMask(offset=message.offset)  # type: ignore[attr-defined]
    if which == "bool_masks":
        return BlockMask(bool_masks=tuple(message.bool_masks.values))  # type: ignore[attr-defined]
    # A mask that is present but has neither member is an empty bool list, as in the reference.
    return BlockMask(bool_masks=())


def _mask_to(mask: BlockMask, message: Message) -> None:
    if mask.offset is not None:
        message.offset = int(mask.offset)  # type: ignore[attr-defined]
    else:
        bools = message.bool_masks  # type: ignore[attr-defined]
        bools.SetInParent()  # an empty list must still select the bool_masks member
        bools.values.extend(bool(v) for v in mask.bool_masks or ())


def _storage_from(message: Message) -> StorageConfig:
    which = message.WhichOneof("storage_spec")
    spec: Any = None
    if which is not None and which in _SPEC_BY_ONEOF:
        spec = from_message(getattr(message, which), _SPEC_BY_ONEOF[which])
    has_flag = "is_available" in message.DESCRIPTOR.fields_by_name and message.HasField("is_available")
    return StorageConfig(
        global_unique_name=message.global_unique_name,  # type: ignore[attr-defined]
        spec=spec,  # type: ignore[arg-type]
        check_storage_available_when_open=message.check_storage_available_when_open,  # type: ignore[attr-defined]
        is_available=message.is_available if has_flag else True,  # type: ignore[attr-defined]
    )


def _storage_to(config: StorageConfig, message: Message) -> None:
    message.global_unique_name = config.global_unique_name  # type: ignore[attr-defined]
    message.check_storage_available_when_open = config.check_storage_available_when_open  # type: ignore[attr-defined]
    if config.spec is not None:
        sub = getattr(message, config.spec.ONEOF)
        sub.SetInParent()  # LocalStorageSpec has no fields: selecting the member is all there is
        fill_message(config.spec, sub)
    if "is_available" in message.DESCRIPTOR.fields_by_name:
        message.is_available = config.is_available  # type: ignore[attr-defined]


_FROM_SPECIAL: dict[type, Callable[[Message], Any]] = {BlockMask: _mask_from, StorageConfig: _storage_from}
_TO_SPECIAL: dict[type, Callable[[Any, Message], None]] = {BlockMask: _mask_to, StorageConfig: _storage_to}
