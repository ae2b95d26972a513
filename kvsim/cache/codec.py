"""JSON codec for the cache's frozen dataclasses and NamedTuple records (registry documents, config
snapshots, meta records).

``to_jsonable`` turns a dataclass tree into plain JSON values: enums by *name*, tuples as lists, a
storage ``spec`` as an object tagged with its reference type name (``{"type": "file", ...}``).
``from_jsonable`` rebuilds the object from the dataclass's type hints and is strict: unknown fields and
values of the wrong type raise :class:`ValueError` naming the path (``instance_groups[0].quota.capacity``),
so a bad snapshot is refused before anything is applied. Missing fields take their defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from enum import IntEnum
from functools import cache
from typing import Any, TypeVar

from kvsim.cache import types as model

T = TypeVar("T")

_SPEC_BY_NAME: dict[str, type] = {cls.TYPE_NAME: cls for cls in model.STORAGE_SPEC_CLASSES}  # type: ignore[attr-defined]
_SPEC_CLASSES = frozenset(model.STORAGE_SPEC_CLASSES)


def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` (a dataclass tree) as JSON-compatible dicts, lists, strings and numbers."""
    if isinstance(obj, IntEnum):
        return obj.name
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple record
        return {name: to_jsonable(getattr(obj, name)) for name in obj._fields}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if type(obj) in _SPEC_CLASSES:
            out["type"] = obj.TYPE_NAME  # type: ignore[attr-defined]
        for f in dataclasses.fields(obj):
            out[f.name] = to_jsonable(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple | list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(obj: Any) -> str:
    """Compact JSON text of ``obj`` with a stable key order (field order)."""
    return json.dumps(to_jsonable(obj), separators=(",", ":"), ensure_ascii=False)


def loads(cls: type[T], text: str) -> T:
    """Parse ``text`` as JSON and decode it into ``cls`` (see :func:`from_jsonable`)."""
    return from_jsonable(cls, json.loads(text))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_jsonable(cls: type[T], data: Any, path: str = "") -> T:
    """Decode JSON ``data`` into an instance of the dataclass (or NamedTuple) ``cls``.

    Raises:
        ValueError: unknown field, wrong type or unknown enum name; the message starts with the path.
    """
    return _decode(cls, data, path or cls.__name__)  # type: ignore[no-any-return]


def _decode(tp: Any, data: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if all(a in _SPEC_CLASSES for a in options):
            return _decode_spec(data, path)
        if len(options) == 1:
            return _decode(options[0], data, path)
        raise ValueError(f"{path}: cannot decode a value of type {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list, got {type(data).__name__}")
        item = args[0]
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(data))
    if isinstance(tp, type) and issubclass(tp, IntEnum):
        if isinstance(data, str):
            try:
                return tp[data]
            except KeyError:
                raise ValueError(f"{path}: unknown {tp.__name__} {data!r}") from None
        if isinstance(data, int) and not isinstance(data, bool):
            try:
                return tp(data)
            except ValueError:
                raise ValueError(f"{path}: unknown {tp.__name__} value {data}") from None
        raise ValueError(f"{path}: expected a {tp.__name__} name")
    if tp in _SPEC_CLASSES:
        return _decode_spec(data, path)
    if dataclasses.is_dataclass(tp) or (
        isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")
    ):
        return _decode_dataclass(tp, data, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(data, bool):
            raise ValueError(f"{path}: expected true/false, got {data!r}")
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ValueError(f"{path}: expected an integer, got {data!r}")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise ValueError(f"{path}: expected a number, got {data!r}")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise ValueError(f"{path}: expected a string, got {data!r}")
        return data
    raise ValueError(f"{path}: unsupported field type {tp}")


def _decode_dataclass(cls: type, data: Any, path: str, skip: tuple[str, ...] = ()) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object, got {type(data).__name__}")
    hints = _hints(cls)
    names = set(cls._fields) if hasattr(cls, "_fields") else {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - set(skip)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
    kwargs = {k: _decode(hints[k], v, f"{path}.{k}") for k, v in data.items() if k in names}
    return cls(**kwargs)


def _decode_spec(data: Any, path: str) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError(f"{path}: a storage spec needs a string 'type'")
    cls = _SPEC_BY_NAME.get(data["type"])
    if cls is None:
        raise ValueError(f"{path}.type: unknown storage type {data['type']!r}")
    return _decode_dataclass(cls, data, path, skip=("type",))
