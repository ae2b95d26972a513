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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kvsim.cache.types import STORAGE_SPEC_CLASSES, BlockMask, CacheLocation, StorageConfig

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
    kwargs: dict[str, Any] = {}
    # The steps are compiled once per (class, message type): see _from_plan.
    for name, kind, target in _from_plan(cls, message.DESCRIPTOR):  # type: ignore[arg-type]  # types hash
        value = getattr(message, name)
        if kind == _F_SCALAR:
            kwargs[name] = value
        elif kind == _F_LIST:
            kwargs[name] = tuple(value)
        elif kind == _F_ENUM:
            kwargs[name] = _enum_value(target, value)
        elif kind == _F_ENUM_LIST:
            kwargs[name] = tuple(_enum_value(target, v) for v in value)
        elif kind == _F_MESSAGE_LIST:
            kwargs[name] = tuple(from_message(v, target) for v in value)
        elif kind == _F_OPTIONAL_MESSAGE and not message.HasField(name):
            kwargs[name] = None
        else:  # _F_MESSAGE, or a present optional one
            kwargs[name] = from_message(value, target)
    return cls(**kwargs)


# What from_message does with one field (decided once per dataclass and message type).
_F_SCALAR, _F_LIST, _F_ENUM, _F_ENUM_LIST, _F_MESSAGE, _F_OPTIONAL_MESSAGE, _F_MESSAGE_LIST = range(7)


@functools.cache
def _from_plan(cls: type, descriptor: Any) -> tuple[tuple[str, int, Any], ...]:
    fields = descriptor.fields_by_name
    steps: list[tuple[str, int, Any]] = []
    for plan in _plan(cls):
        fd = fields.get(plan.name)
        if fd is None:
            continue  # a dataclass-only field keeps its default
        repeated = _is_repeated(fd)
        if fd.type == _MESSAGE:
            if plan.target is None:
                continue  # no dataclass to build: the field keeps its default
            if repeated:
                kind = _F_MESSAGE_LIST
            else:
                kind = _F_OPTIONAL_MESSAGE if plan.none_when_absent else _F_MESSAGE
        elif fd.type == _ENUM:
            kind = _F_ENUM_LIST if repeated else _F_ENUM
        else:
            kind = _F_LIST if repeated else _F_SCALAR
        steps.append((plan.name, kind, plan.target))
    return tuple(steps)


def _scalar_list(values: object) -> list[Any]:
    if isinstance(values, np.ndarray):
        return values.tolist()  # numpy scalars are not accepted by protobuf containers
    return [v.item() if isinstance(v, np.generic) else v for v in values]  # type: ignore[attr-defined]


def fill_message(obj: object, message: Message) -> Message:
    """Copy the fields of dataclass ``obj`` into ``message`` (by name; ``None`` leaves a field unset).

    Returns ``message`` for chaining. Slotted dataclasses (every ``kvsim.cache`` type) follow a plan
    compiled once per (class, message type); repeated ``CacheLocation`` fields are appended from memoised
    wire bytes (see :func:`_framed`). Other objects take the generic path, attribute by attribute.
    """
    cls = type(obj)
    special = _TO_SPECIAL.get(cls)
    if special is not None:
        special(obj, message)
        return message
    if not _plannable(cls):  # type: ignore[arg-type]  # classes are hashable
        return _fill_generic(obj, message)
    for name, kind, extra in _fill_plan(cls, message.DESCRIPTOR):  # type: ignore[arg-type]
        value = getattr(obj, name)
        if value is None:
            continue
        if kind == _SCALAR:
            setattr(message, name, value.item() if isinstance(value, np.generic) else value)
        elif kind == _REPEATED_SCALAR:
            getattr(message, name).extend(_scalar_list(value))
        elif kind == _SUB_MESSAGE:
            sub = getattr(message, name)
            sub.SetInParent()
            fill_message(value, sub)
        elif value and type(value[0]) in _MEMO_TYPES:
            _fill_memoised(message, name, value, *extra)
        else:
            container = getattr(message, name)
            for item in value:
                fill_message(item, container.add())
    return message


def _fill_generic(obj: object, message: Message) -> Message:
    """:func:`fill_message` for objects without a compiled plan (any object with matching attributes)."""
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


# ---------------------------------------------------------------------------------------------- fast path
# GetCacheLocation answers with up to thousands of CacheLocations per call, and building each one field by
# field cost ~3 µs (200 µs for 64 keys, more than the cache's own work). Two things make it cheap:
#
# * a per-(dataclass, message type) plan of what each field needs, instead of inspecting descriptors and
#   calling ``hasattr`` for every field of every object;
# * a memo of each CacheLocation's framed wire bytes keyed by object identity. The cache hands out the
#   same frozen CacheLocation objects for as long as a key's record is unchanged (its decode memo), so a
#   hot key costs one dict lookup. Each entry holds a strong reference to its object, so an id can never
#   be reused by another object while its entry exists; the memo starts over when it reaches _MEMO_SIZE.
#   Fresh objects (a StartWriteCache's new locations) are built in place instead (_fill_memoised).

_SCALAR, _REPEATED_SCALAR, _SUB_MESSAGE, _REPEATED_MESSAGE = range(4)
_MEMO_TYPES: frozenset[type] = frozenset({CacheLocation})
_MEMO_SIZE = 1 << 16
_memos: dict[tuple[type, bytes], dict[int, tuple[object, bytes]]] = {}
#: Ids of items built once without being memoised (no reference is kept: a reused id only means an item
#: is memoised on its first sighting).
_seen: dict[int, None] = {}


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def _plannable(cls: type) -> bool:
    # Slotted dataclasses have every field as a class attribute, so ``hasattr(cls, name)`` decides for
    # all instances at once; other objects may carry per-instance attributes.
    return dataclasses.is_dataclass(cls) and "__slots__" in cls.__dict__


@functools.cache
def _fill_plan(cls: type, descriptor: Any) -> tuple[tuple[str, int, Any], ...]:
    steps: list[tuple[str, int, Any]] = []
    for fd in descriptor.fields:
        if not hasattr(cls, fd.name):
            continue
        if fd.type == _MESSAGE and _is_repeated(fd):
            tag = _varint((fd.number << 3) | 2)  # field number, wire type 2 (length-delimited)
            message_cls = message_factory.GetMessageClass(fd.message_type)
            steps.append((fd.name, _REPEATED_MESSAGE, (message_cls, tag)))
        elif fd.type == _MESSAGE:
            steps.append((fd.name, _SUB_MESSAGE, None))
        else:
            steps.append((fd.name, _REPEATED_SCALAR if _is_repeated(fd) else _SCALAR, None))
    return tuple(steps)


def _fill_memoised(
    message: Message, name: str, items: Sequence[object], message_cls: type[Message], tag: bytes
) -> None:
    """Append ``items`` to the repeated field ``name`` (number in ``tag``) of ``message``.

    When at least half of them are memoised, one parse of the joined framed bytes appends them all,
    exactly as ``add()`` + fill would; the others are built and memoised on the way. Otherwise (fresh
    locations, as StartWriteCache hands out) they are built in place, and an item's bytes are memoised
    only the second time it is seen: a location written and then matched once never pays for the memo.
    """
    memo = _memos.get((message_cls, tag))
    if memo is None:
        memo = _memos[(message_cls, tag)] = {}
    get = memo.get
    hits = [get(id(item)) for item in items]
    if 2 * sum(hit is not None for hit in hits) >= len(items):
        parts: list[bytes] = []
        for item, hit in zip(items, hits, strict=True):
            if hit is None:
                data = fill_message(item, message_cls()).SerializeToString()
                hit = _remember(memo, item, tag + _varint(len(data)) + data)
            parts.append(hit[1])
        message.MergeFromString(b"".join(parts))
        return
    container = getattr(message, name)
    for item in items:
        sub = container.add()
        fill_message(item, sub)
        key = id(item)
        if key in _seen:  # the second sighting (or an id reused by a new object: harmless)
            data = sub.SerializeToString()
            _remember(memo, item, tag + _varint(len(data)) + data)
        else:
            if len(_seen) >= _MEMO_SIZE:
                _seen.clear()
            _seen[key] = None


def _remember(memo: dict[int, tuple[object, bytes]], item: object, framed: bytes) -> tuple[object, bytes]:
    if len(memo) >= _MEMO_SIZE:
        # Start over rather than evict the oldest: deleting from the front of a dict leaves dummies that
        # every later next(iter(dict)) scans, O(size) per eviction under churn. Hot items come back.
        memo.clear()
    entry = memo[id(item)] = (item, framed)
    return entry


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
