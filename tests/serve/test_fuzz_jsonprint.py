"""The fast printers of responses are exact: the JSON of HTTP responses is what ``MessageToDict`` +
``json.dumps`` print, for random response messages of every RPC with lists long enough to take the
memoised path; the memoised wire bytes of locations are what the field-by-field conversion builds."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.cache.types import CacheLocation, GetCacheLocationResult, LocationSpec, StorageType
from kvsim.serve import convert, jsonprint
from kvsim.serve.catalog import SERVICE_KINDS, rpcs
from kvsim.serve.proto import meta_service_pb2 as meta

from .test_fuzz import message_json

RESPONSE_TYPES = sorted(
    {info.response_type for kind in SERVICE_KINDS for info in rpcs(kind).values()}, key=lambda t: t.__name__
)


def reference_print(message: Message) -> str:
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


@st.composite
def responses(draw: st.DrawFn) -> Message:
    """A response message with random fields; every list of sub-messages gets 0 to 12 items."""
    cls = draw(st.sampled_from(RESPONSE_TYPES))
    message = cls()
    for key, value in draw(message_json(cls.DESCRIPTOR)).items():
        _merge(message, {key: value})
    for fd in cls.DESCRIPTOR.fields:
        if fd.message_type is not None and fd.is_repeated:
            for _ in range(draw(st.integers(0, 12))):
                item = getattr(message, fd.name).add()
                _merge(item, draw(message_json(fd.message_type)))
    return message


def _merge(message: Message, document: dict[str, Any]) -> None:
    for key, value in document.items():
        part = type(message)()
        try:
            json_format.ParseDict({key: value}, part, ignore_unknown_fields=True)
        except json_format.ParseError:
            continue
        message.MergeFrom(part)


@settings(max_examples=150, deadline=None)
@given(message=responses())
def test_fast_print_is_the_reference_print(message: Message) -> None:
    expected = reference_print(message)
    # First sight: the plain print. Second: the plain print, memoising. Third: from the memo.
    for _ in range(3):
        assert jsonprint.message_json(message) == expected


def test_memoised_items_are_reused_and_exact() -> None:
    response = meta.GetCacheLocationResponse()
    response.header.status.code = 1
    for i in range(jsonprint.LONG_LIST + 2):
        location = response.locations.add(type=4, spec_size=1)
        location.location_specs.add(name="tp0", uri=f'file://nfs_01/a"b\\c/{i % 3}?é')
    first = jsonprint.message_json(response)
    assert first == reference_print(response)
    assert jsonprint.message_json(response) == first  # memoised on this second sight
    size = len(jsonprint._memo)
    assert jsonprint.message_json(response) == first  # from the memo
    assert len(jsonprint._memo) == size
    assert json.loads(first)["locations"][1]["location_specs"][0]["uri"] == 'file://nfs_01/a"b\\c/1?é'
    # A string value that looks like the placeholder cannot confuse the printer.
    response.header.status.message = '"locations":"\x00kvsim-list:locations\x00"'
    assert jsonprint.message_json(response) == reference_print(response)


# ---------------------------------------------------------------------------------------------- wire bytes

_text = st.text(max_size=10)
_locations = st.lists(
    st.builds(
        CacheLocation,
        type=st.sampled_from(list(StorageType)),
        spec_size=st.integers(0, 8),
        location_specs=st.lists(st.builds(LocationSpec, name=_text, uri=_text), max_size=3).map(tuple),
    ),
    max_size=20,
).map(tuple)


@settings(max_examples=100, deadline=None)
@given(locations=_locations, shared=st.booleans())
def test_memoised_wire_bytes_are_exact(locations: tuple[CacheLocation, ...], shared: bool) -> None:
    """fill_message's memoised path (first, second and later sights of the same location objects, some
    of them repeated within one list) builds exactly what the plain field-by-field path builds."""
    if shared and locations:
        locations = locations + locations[:3]  # the same objects twice in one answer
    result = GetCacheLocationResult(locations)
    expected = convert._fill_generic(result, meta.GetCacheLocationResponse()).SerializeToString()
    for _ in range(3):
        assert convert.fill_message(result, meta.GetCacheLocationResponse()).SerializeToString() == expected
