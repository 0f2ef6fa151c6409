"""The agent index's bytes: the header, each entry's fixed-width encoding,
and an update's splice of an encoded body (a replaced entry written over
its old bytes, new ones appended). What index.py keeps, caches and swaps
in; nothing here reads or writes the arena."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Iterable

__all__ = [
    "ENTRY",
    "HEADER",
    "IN_PIECES",
    "MAGIC",
    "MAX_KIND",
    "MAX_NAME",
    "PIECE",
    "PIECE_BYTES",
    "WHOLE",
    "Entries",
    "Index",
    "Positions",
    "body_of",
    "check_kind",
    "check_name",
    "decode",
    "decode_entries",
    "encode",
    "encode_head",
    "encode_update",
    "entry_bytes",
    "kind_id",
    "place_entries",
    "read_head",
    "spliced",
    "utf8_text",
]

HEADER = struct.Struct("<4sHHdII")  # magic, version, kind length, lease deadline, count, pieces
ENTRY = struct.Struct("<HQQ")  # name length, offset, size
MAGIC = b"SHIX"
# The header's version: the entries follow the kind in the block (WHOLE), or
# a table of pieces does (IN_PIECES), each a block of the agent's own in
# `system` holding some of the entries, in order. An agent's index past
# PIECE_BYTES of entries goes in pieces of at most that, so that an update
# writes the pieces it changes and the table, not every entry again: a
# LangGraph thread adds three entries a step, and a put after 5 000 steps
# copied 450 KB. Below half of it, an index is one block again.
WHOLE, IN_PIECES = 1, 2
PIECE = struct.Struct("<QII")  # the piece's block offset, its bytes, its entries
PIECE_BYTES = 16 << 10
MAX_NAME = 1024
MAX_KIND = 256

Entries = dict[str, tuple[int, int]]
Index = tuple[str, float, Entries]  # kind, lease deadline (epoch seconds, 0: none), entries


def kind_id(kind: str) -> int:
    """The 32-bit id the C core records for a kind name."""
    return zlib.crc32(kind.encode())


def utf8_text(value: object, what: str, limit: int) -> str:
    """``value`` if it is a str of 1 to ``limit`` bytes of UTF-8 (TypeError
    or ValueError naming ``what`` otherwise): entry names, kinds and channel
    names are checked alike."""
    if not isinstance(value, str):
        raise TypeError(f"{what} is a str, not {type(value).__name__}")
    size = len(value.encode())
    if not 0 < size <= limit:
        raise ValueError(f"{what} is 1 to {limit} bytes of UTF-8, not {size}")
    return value


def check_name(name: object) -> str:
    if type(name) is str and 0 < len(name) <= MAX_NAME // 4:
        return name  # at most 4 bytes a character: surely 1..MAX_NAME bytes, and on every put
    return utf8_text(name, "an entry name", MAX_NAME)


def check_kind(kind: object) -> str:
    return utf8_text(kind, "a kind", MAX_KIND)


_encoded: dict[tuple[str, int, int], bytes] = {}  # an entry's bytes: most survive an update unchanged
_ENCODED_MAX = 1 << 16


def entry_bytes(name: str, offset: int, size: int) -> bytes:
    key = (name, offset, size)
    got = _encoded.get(key)
    if got is None:
        if len(_encoded) >= _ENCODED_MAX:
            _encoded.clear()
        name_b = name.encode()
        got = _encoded[key] = ENTRY.pack(len(name_b), offset, size) + name_b
    return got


def encode_head(kind: str, lease_deadline: float, count: int) -> bytes:
    """The encoding's head: its kind, lease deadline and entry count (the body follows it)."""
    kind_b = kind.encode()
    return HEADER.pack(MAGIC, 1, len(kind_b), lease_deadline, count, 0) + kind_b


def _body(entries: Entries) -> bytes:
    return b"".join([entry_bytes(name, offset, size) for name, (offset, size) in entries.items()])


def encode(kind: str, lease_deadline: float, entries: Entries) -> bytes:
    return encode_head(kind, lease_deadline, len(entries)) + _body(entries)


def body_of(data: bytes, kind: str) -> bytes:
    """The encoded entries of ``data``, an encoding of kind ``kind`` (decoded already)."""
    return data[HEADER.size + len(kind.encode()) :]


def decode_entries(data: bytes, pos: int, count: int, entries: Entries) -> tuple[int, list[str]]:
    """Add the ``count`` entries encoded from ``pos`` to ``entries``; where they end, and their names."""
    names = []
    for _ in range(count):
        name_len, offset, size = ENTRY.unpack_from(data, pos)
        pos += ENTRY.size
        name = data[pos : pos + name_len].decode()
        entries[name] = (offset, size)
        names.append(name)
        pos += name_len
    return pos, names


def read_head(data: bytes) -> tuple[int, str, float, int, int, int]:
    """(version, kind, lease, count, pieces, where the rest starts) of an encoding."""
    magic, version, kind_len, lease, count, pieces = HEADER.unpack_from(data, 0)
    if magic != MAGIC or version not in (WHOLE, IN_PIECES):
        raise ValueError("not an agent index")
    pos = HEADER.size + kind_len
    return version, data[HEADER.size : pos].decode(), lease, count, pieces, pos


def decode(data: bytes) -> Index:
    """An index encoded whole (an index in pieces is read_index's to read)."""
    version, kind, lease, count, _, pos = read_head(data)
    if version != WHOLE:
        raise ValueError("an agent index in pieces: read_index reads it")
    entries: Entries = {}
    decode_entries(data, pos, count, entries)
    return kind, lease, entries


# where each entry starts in an encoded body (an update writes a replaced
# entry's new bytes over the old at the same place)
Positions = dict[str, int]


def _entries_bytes(items: Iterable[tuple[str, tuple[int, int]]]) -> list[tuple[str, bytes]]:
    return [(name, entry_bytes(name, offset, size)) for name, (offset, size) in items]


def place_entries(named: Iterable[tuple[str, bytes]], at: int, positions: Positions) -> None:
    """Record where each of ``named``'s entries starts, laid out one after another from ``at``."""
    for name, entry in named:
        positions[name] = at
        at += len(entry)


def spliced(
    body: bytes | bytearray,
    positions: Positions | None,
    shared: Entries,
    entries: Entries,
    changed: list[str],
    appended: list[str],
) -> tuple[bytes | bytearray, Positions | None]:
    """The encoding of ``entries`` made from ``body``, the encoding of
    ``shared`` (whose names ``entries`` begins with, in order): the names in
    ``changed`` written over their old bytes, those in ``appended`` (the
    names past ``shared``'s, in order) appended. Returns it and where each
    entry starts (None if not needed). The caller names the appended ones:
    finding them in ``entries`` walked every entry before them."""
    if changed:
        if positions is None:
            positions = {}
            place_entries(_entries_bytes(list(shared.items())), 0, positions)
        buf = bytearray(body)
        for name in changed:
            at = positions[name]
            encoded = entry_bytes(name, *entries[name])
            buf[at : at + len(encoded)] = encoded
        body = bytes(buf)
    if appended:
        tail = [entry_bytes(name, *entries[name]) for name in appended]
        if positions is not None:  # new names only: a failed swap leaves them in a version never used again
            place_entries(zip(appended, tail), len(body), positions)
        body = b"".join([body, *tail])
    return body, positions


def encode_update(
    shared: Entries, encoded: tuple[bytes | bytearray, Positions | None] | None, entries: Entries
) -> tuple[bytes | bytearray, Positions | None]:
    """The body (the encoded entries, after encode_head) of ``entries``, a
    changed copy of ``shared``, and where each entry starts in it (None if
    not needed). ``encoded`` is shared's body and positions, if known: when
    ``entries`` keeps shared's names in their order, the entries that kept
    their value (the same tuple, as a dict copy shares them) keep their
    bytes, changed ones are written over theirs and new ones appended, so
    the cost follows the change, not the count; otherwise (a removal, or
    nothing known) every entry is encoded."""
    n = len(shared)
    if encoded is not None and len(entries) >= n and list(itertools.islice(entries, n)) == list(shared):
        changed = [name for name, ref in itertools.islice(entries.items(), n) if shared[name] is not ref]
        appended = list(itertools.islice(entries, n, None))
        return spliced(*encoded, shared, entries, changed, appended)
    return _body(entries), None
