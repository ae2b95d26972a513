"""The reference's JSON print of response messages, fast for long lists that repeat.

``json_format.MessageToDict`` is pure Python: printing a GetCacheLocation response with 64 locations
takes ~450 µs, far more than the cache spends finding them. Long lists of sub-messages (at least
:data:`LONG_LIST` items) are therefore printed item by item from a memo of each item's JSON text, keyed
by its message type and wire bytes (a location's bytes are the same every time it is served); the rest
of the message goes through ``MessageToDict`` as before. When fewer than half of a list's items are in
the memo (fresh locations, as StartWriteCache hands out), the whole message is printed the plain way,
and an item's text is memoised only the second time its bytes are seen: a location written and matched
once never pays for the memo.

The output is byte-for-byte what ``json.dumps(MessageToDict(message, preserving_proto_field_name=True,
always_print_fields_with_no_presence=True), separators=(",", ":"), ensure_ascii=False)`` gives
(``tests/serve/test_fuzz_jsonprint.py`` checks it on random messages).
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

#: Lists of sub-messages at least this long take the memoised path.
LONG_LIST = 8
_MEMO_SIZE = 1 << 16
_memo: dict[tuple[str, bytes], str] = {}
#: Keys printed once and not memoised yet (see the module docstring).
_seen: dict[tuple[str, bytes], None] = {}
# json.dumps builds a new encoder on every call with these options; one shared encoder prints the same.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _is_repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)  # newer protobuf; ``label`` is deprecated there
    if flag is not None:
        return bool(flag)
    return fd.label == FieldDescriptor.LABEL_REPEATED


def _remember(key: tuple[str, bytes], text: str) -> str:
    if len(_memo) >= _MEMO_SIZE:
        # Start over rather than evict the oldest: deleting from the front of a dict leaves dummies that
        # every later next(iter(dict)) scans, O(size) per eviction under churn. Hot items come back.
        _memo.clear()
    _memo[key] = text
    return text


def message_json(message: Message) -> str:
    """``message`` as the reference prints it: snake_case keys, fields without presence included,
    enums by name, int64 as strings, compact."""
    long_fields = [
        fd.name
        for fd in message.DESCRIPTOR.fields
        if fd.type == FieldDescriptor.TYPE_MESSAGE
        and _is_repeated(fd)
        and not fd.message_type.GetOptions().map_entry
        and len(getattr(message, fd.name)) >= LONG_LIST
    ]
    if not long_fields:
        return _encode(_to_dict(message))
    keys: dict[str, list[tuple[str, bytes]]] = {}
    texts: dict[str, list[str | None]] = {}
    for name in long_fields:
        items = getattr(message, name)
        full_name = items[0].DESCRIPTOR.full_name
        keys[name] = [(full_name, item.SerializeToString()) for item in items]
        texts[name] = [_memo.get(key) for key in keys[name]]
    if any(2 * sum(t is not None for t in texts[name]) < len(texts[name]) for name in long_fields):
        return _print_plain(message, keys)
    return _print_memoised(message, long_fields, texts)


def _print_plain(message: Message, keys: dict[str, list[tuple[str, bytes]]]) -> str:
    """The plain print; items seen before are memoised from it on the way."""
    data = _to_dict(message)
    for name, field_keys in keys.items():
        for key, item in zip(field_keys, data[name], strict=True):
            if key in _memo:
                continue
            if key in _seen:
                _remember(key, _encode(item))
            else:
                if len(_seen) >= _MEMO_SIZE:
                    _seen.clear()
                _seen[key] = None
    return _encode(data)


def _print_memoised(message: Message, long_fields: list[str], texts: dict[str, list[str | None]]) -> str:
    shell = type(message)()
    shell.CopyFrom(message)
    for name in long_fields:
        shell.ClearField(name)
    shell_data = _to_dict(shell)
    # MessageToDict prints the fields that are set first (by number), then the unset ones with their
    # defaults; the emptied lists moved to the second group, so restore the message's own order.
    first = [fd.name for fd, _ in message.ListFields()]
    if any(name not in shell_data for name in first):  # an extension or anything unexpected
        return _encode(_to_dict(message))
    data = {name: shell_data[name] for name in first}
    data.update((key, value) for key, value in shell_data.items() if key not in data)
    # A placeholder keeps each list's place among the keys; the structure ``"<name>":"<placeholder>"``
    # with unescaped quotes occurs only as that top-level member, never inside a string value.
    placeholders = {name: f"\x00kvsim-list:{name}\x00" for name in long_fields}
    for name, placeholder in placeholders.items():
        data[name] = placeholder
    text = _encode(data)
    for name, placeholder in placeholders.items():
        items = getattr(message, name)
        field_texts = texts[name]
        for i, known in enumerate(field_texts):
            if known is None:  # a minority: print and memoise them one by one
                item = items[i]
                field_texts[i] = _remember(
                    (item.DESCRIPTOR.full_name, item.SerializeToString()), _encode(_to_dict(item))
                )
        joined = ",".join(field_texts)  # type: ignore[arg-type]  # every entry is filled now
        text = text.replace(f"{_encode(name)}:{_encode(placeholder)}", f"{_encode(name)}:[{joined}]", 1)
    return text
