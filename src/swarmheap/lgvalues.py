"""How SwarmSaver stores a channel value's serde bytes: typed (the serde
type name, then the bytes), and a version as a delta on the one before it: a
splice (a msgpack list that grew at its end or slid, only its new items
stored) or zstd with the older bytes as its dictionary. (swarmheap.langgraph
uses them; this module needs no LangGraph.)"""

from __future__ import annotations

import itertools
import operator
import struct
from collections.abc import Callable
from typing import Any

from swarmheap import snapshot
from swarmheap._extras import require

__all__ = [
    "SMALL",
    "TYPED",
    "Listed",
    "Splice",
    "array_header",
    "delta",
    "dropped_front",
    "grown",
    "items_bytes",
    "splice_record",
    "type_name",
    "typed_raw",
    "undelta",
]

TYPED = struct.Struct("<H")  # length of the serde type name, then the name, then the bytes
_MSGPACK_HEAD = TYPED.pack(len("msgpack")) + b"msgpack"
# Records and appended tails up to this size are stored raw: zstd spends
# about 4 us setting up a frame, more than the rest of a put, to save a few
# hundred bytes (the whole values every DELTA_CHAIN versions stay compressed)
SMALL = 1024
_SPLICE = struct.Struct("<HH")  # bytes of the base's front to skip, length of the new front
_SPLICE_REACH = 24  # how far into either value a front (serde type, list header) may reach


def delta(base: bytes, new: bytes) -> bytes:
    """``new`` against ``base``. A value that kept ``base``'s body and grew at
    the end (a list appended to: only its header changed in front) is a
    splice, new front + tail, found with a few memcmps; anything else is zstd
    with ``base`` as its raw-content dictionary."""
    # the front both share (the serde type name), found in one xor of
    # integers rather than a loop over bytes: the list header follows it
    reach = min(_SPLICE_REACH, len(base), len(new))
    differ = int.from_bytes(base[:reach], "big") ^ int.from_bytes(new[:reach], "big")
    same = reach - (differ.bit_length() + 7) // 8
    whole = memoryview(base)  # the candidates' bodies are views: slicing bytes copied the value each time
    for skip in range(same, min(same + 6, len(base))):  # a msgpack array header is 1, 3 or 5 bytes
        body = whole[skip:]
        for front in range(same, same + 6):
            if new.startswith(body, front):
                return splice_record((skip, new[:front], new[front + len(body) :]))
    zstd = require("zstandard", "compress")
    prefix = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    return b"Z" + bytes(zstd.ZstdCompressor(level=1, dict_data=prefix).compress(new))


def undelta(base: bytes, delta: bytes) -> bytes:
    """The value ``delta(base, value)`` described (ValueError or ZstdError if damaged)."""
    if delta[:1] == b"S":
        skip, front = _SPLICE.unpack_from(delta, 1)
        at = 1 + _SPLICE.size
        head, packed = delta[at : at + front], delta[at + front :]
        if len(head) != front or skip > len(base):
            raise ValueError("a splice reaches past its data")
        if packed[:1] == b"Z":
            tail = bytes(snapshot.zstd_decompressor().decompressobj().decompress(packed[1:]))
        elif packed[:1] == b"R":
            tail = packed[1:]
        else:
            raise ValueError("a splice's tail is neither raw nor zstd")
        return head + base[skip:] + tail
    if delta[:1] == b"Z":
        zstd = require("zstandard", "compress")
        prefix = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
        return bytes(zstd.ZstdDecompressor(dict_data=prefix).decompressobj().decompress(delta[1:]))
    raise ValueError("a delta is neither a splice nor zstd")


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 65536 else b"\xdd" + n.to_bytes(4, "big")


def _array_items(data: bytes, at: int, n: int) -> int | None:
    """Where the items of the msgpack array of ``n`` items at ``at`` start; None if it is not one."""
    head = array_header(n)
    return at + len(head) if data.startswith(head, at) else None


Splice = tuple[int, bytes, bytes]  # base bytes skipped, new front, appended tail (see delta)


# A list value as this saver last stored it: a copy of its items (the list
# object itself may be changed in place before the next put) and where each
# item ends in the serde bytes' array body (None until a put needed it)
Listed = tuple[list[Any], "list[int] | None"]


def dropped_front(before: list[Any], value: list[Any]) -> int | None:
    """How many items of ``before`` ``value`` dropped from its front, if it
    is the rest of ``before`` (the same objects) followed by new ones; None
    if it is not such a list. A window kept over a conversation (trimmed
    messages, RemoveMessage) drops from the front and appends at the end."""
    if not before:
        return 0
    if not value:
        return None
    first = value[0]
    k = next((i for i, item in enumerate(before) if item is first), None)
    if k is None:
        return None
    kept = len(before) - k
    if len(value) < kept or not all(map(operator.is_, itertools.islice(before, k, None), value)):
        return None
    return k


def _msgpack_items(typed: tuple[str, bytes], n: int) -> bytes | None:
    """The items of serde bytes ``typed`` if they are a msgpack array of ``n`` items."""
    if typed[0] != "msgpack":
        return None
    data = bytes(typed[1])
    at = _array_items(data, 0, n)
    return data[at:] if at is not None else None


def grown(
    base_raw: bytes, listed: Listed, dropped: int, tail: tuple[bytes, list[int] | None], total: int
) -> tuple[bytes, Splice, list[int] | None] | None:
    """The serde bytes (_typed_raw) of a msgpack list of ``total`` items:
    those of ``base_raw`` (the list ``listed``) past its first ``dropped``,
    then the items ``tail`` holds (their bytes, and where each ends); the
    splice that makes them from ``base_raw`` (what delta would search for,
    known here by construction); and where the new list's items end. None
    unless the base is a msgpack array of its list's length and the splice
    fits its format."""
    before, ends = listed
    if len(base_raw) < TYPED.size:
        return None
    (n,) = TYPED.unpack_from(base_raw, 0)
    front = TYPED.size + n
    if base_raw[TYPED.size : front] != b"msgpack":
        return None
    items = _array_items(base_raw, front, len(before))
    if items is None or (ends is not None and (ends[-1] if ends else 0) != len(base_raw) - items):
        return None
    if dropped and ends is None:
        return None  # where the dropped items end is not known
    cut = ends[dropped - 1] if dropped and ends is not None else 0
    skip = items + cut
    head = base_raw[:front] + array_header(total)
    if skip > 0xFFFF or len(head) > 0xFFFF:
        return None
    appended, tail_ends = tail
    new_ends = None
    if ends is not None and tail_ends is not None:
        kept_ends = [e - cut for e in itertools.islice(ends, dropped, None)] if dropped else ends[:]
        last = kept_ends[-1] if kept_ends else 0
        new_ends = kept_ends + [last + e for e in tail_ends]
    # one copy of the whole value: a chain of + copied it once per piece
    raw = b"".join((head, memoryview(base_raw)[skip:], appended))
    return raw, (skip, head, appended), new_ends


def splice_record(splice: Splice) -> bytes:
    skip, head, tail = splice
    packed = b"Z" + bytes(snapshot.zstd_compressor(3).compress(tail)) if len(tail) > SMALL else b"R" + tail
    return b"".join((b"S", _SPLICE.pack(skip, len(head)), head, packed))


def type_name(raw: bytes) -> tuple[str, int]:
    """The serde type name typed_raw bytes begin with, and where their bytes
    start after it (struct.error or UnicodeDecodeError if damaged)."""
    if type(raw) is bytes and raw.startswith(_MSGPACK_HEAD):  # what states are: one compare, no decode
        return "msgpack", len(_MSGPACK_HEAD)
    (n,) = TYPED.unpack_from(raw, 0)
    return raw[TYPED.size : TYPED.size + n].decode(), TYPED.size + n


def typed_raw(typed: tuple[str, bytes]) -> bytes:
    """Serde's (type name, bytes) as one bytes: the name's length, the name, the bytes."""
    name = typed[0].encode()
    return TYPED.pack(len(name)) + name + bytes(typed[1])


def items_bytes(
    dumps_typed: Callable[[Any], tuple[str, bytes]], values: list[Any], want_ends: bool
) -> tuple[bytes, list[int] | None] | None:
    """The msgpack bytes of ``values``' items one after another (serialised
    with ``dumps_typed``, a serde's), and where each ends (if ``want_ends``,
    or known anyway); None if serde does not make them a msgpack array."""
    if not values:
        return b"", []
    if len(values) == 1 or not want_ends:
        got = _msgpack_items(dumps_typed(values), len(values))
        if got is None:
            return None
        return got, [len(got)] if len(values) == 1 else None
    parts, ends, at = [], [], 0
    for item in values:
        got = _msgpack_items(dumps_typed([item]), 1)
        if got is None:
            return None
        parts.append(got)
        at += len(got)
        ends.append(at)
    return b"".join(parts), ends
