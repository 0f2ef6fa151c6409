"""The agent index: an agent's kind, lease deadline and named entries, encoded
in one block of the shared default's `system` pages (so ten thousand agents do
not need ten thousand pages). The owner's user word holds that block
(sh_held_word in the C header), and the HELD bit tells the C core to free it
when it recycles the agent, whichever process or path does that. Any process
of the heap can read it; an update writes a new block and swaps the word, so
a reader sees the old index or the new one, and checks the word again after
reading. This module is the format's one home."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from swarmheap._core import SEALED_WORD, retry_while_changing, stale_agent
from swarmheap.errors import AgentSealed, AgentStateError, StaleBlock

if TYPE_CHECKING:
    from swarmheap._core import CoreHeap

__all__ = [
    "MAX_KIND",
    "MAX_NAME",
    "Entries",
    "Index",
    "body_of",
    "cached_at",
    "encode_head",
    "encode_update",
    "kind_id",
    "put_entries",
    "read_index",
    "read_kind",
    "read_lease",
    "update_index",
]

_HEADER = struct.Struct("<4sHHdII")  # magic, version, kind length, lease deadline, count, reserved
_ENTRY = struct.Struct("<HQQ")  # name length, offset, size
_MAGIC = b"SHIX"
MAX_NAME = 1024
MAX_KIND = 256

Entries = dict[str, tuple[int, int]]
Index = tuple[str, float, Entries]  # kind, lease deadline (epoch seconds, 0: none), entries


def kind_id(kind: str) -> int:
    """The 32-bit id the C core records for a kind name."""
    return zlib.crc32(kind.encode())


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"entry names are str, not {type(name).__name__}")
    if not name or len(name.encode()) > MAX_NAME:
        raise ValueError(f"entry name must be 1 to {MAX_NAME} bytes of UTF-8")
    return name


def check_kind(kind: object) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str, not {type(kind).__name__}")
    if not kind or len(kind.encode()) > MAX_KIND:
        raise ValueError(f"kind must be 1 to {MAX_KIND} bytes of UTF-8, not {len(kind.encode())}")
    return kind


_encoded: dict[tuple[str, int, int], bytes] = {}  # an entry's bytes: most survive an update unchanged
_ENCODED_MAX = 1 << 16


def _entry_bytes(name: str, offset: int, size: int) -> bytes:
    key = (name, offset, size)
    got = _encoded.get(key)
    if got is None:
        if len(_encoded) >= _ENCODED_MAX:
            _encoded.clear()
        name_b = name.encode()
        got = _encoded[key] = _ENTRY.pack(len(name_b), offset, size) + name_b
    return got


def encode_head(kind: str, lease_deadline: float, count: int) -> bytes:
    """The encoding's head: its kind, lease deadline and entry count (the body follows it)."""
    kind_b = kind.encode()
    return _HEADER.pack(_MAGIC, 1, len(kind_b), lease_deadline, count, 0) + kind_b


def _body(entries: Entries) -> bytes:
    return b"".join([_entry_bytes(name, offset, size) for name, (offset, size) in entries.items()])


def encode(kind: str, lease_deadline: float, entries: Entries) -> bytes:
    return encode_head(kind, lease_deadline, len(entries)) + _body(entries)


def body_of(data: bytes, kind: str) -> bytes:
    """The encoded entries of ``data``, an encoding of kind ``kind`` (decoded already)."""
    return data[_HEADER.size + len(kind.encode()) :]


def decode(data: bytes) -> Index:
    magic, _version, kind_len, lease, count, _ = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC:
        raise ValueError("not an agent index")
    pos = _HEADER.size
    kind = data[pos : pos + kind_len].decode()
    pos += kind_len
    entries: Entries = {}
    for _ in range(count):
        name_len, offset, size = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        entries[data[pos : pos + name_len].decode()] = (offset, size)
        pos += name_len
    return kind, lease, entries


# Decoded indexes by the word they were read under, per heap, for the last
# CACHE_SIZE owners read in this process: an unchanged word is an unchanged
# index (its sequence number changes with every swap), so a lookup costs a
# load of the word and a dict copy, not a decode of every entry. The
# registry (owner 1) holds every offloaded agent's and channel's entry, and a
# LangGraph thread one entry per checkpoint: decoding them on every lookup
# made each operation O(entries).
CACHE_SIZE = 1024
# agent id -> (generation, word, index, the index's encoded entries, where
# each entry starts in them or None until an update needs it). An update
# that adds entries appends to the encoded ones, and one that replaces an
# entry writes its new bytes over the old at the same place (a replacement
# has the old one's length: same name, fixed-width offset and size), so a
# put to an agent of many entries does not encode every one of them again.
Positions = dict[str, int]
_Cached = OrderedDict[int, tuple[int, int, Index, bytes, "Positions | None"]]


def _entries_bytes(items: Iterable[tuple[str, tuple[int, int]]]) -> list[tuple[str, bytes]]:
    return [(name, _entry_bytes(name, offset, size)) for name, (offset, size) in items]


def _place(named: Iterable[tuple[str, bytes]], at: int, positions: Positions) -> None:
    """Record where each of ``named``'s entries starts, laid out one after another from ``at``."""
    for name, entry in named:
        positions[name] = at
        at += len(entry)


def _spliced(
    body: bytes,
    positions: Positions | None,
    shared: Entries,
    entries: Entries,
    changed: list[str],
    appended: list[str],
) -> tuple[bytes, Positions | None]:
    """The encoding of ``entries`` made from ``body``, the encoding of
    ``shared`` (whose names ``entries`` begins with, in order): the names in
    ``changed`` written over their old bytes, those in ``appended`` (the
    names past ``shared``'s, in order) appended. Returns it and where each
    entry starts (None if not needed). The caller names the appended ones:
    finding them in ``entries`` walked every entry before them."""
    if changed:
        if positions is None:
            positions = {}
            _place(_entries_bytes(shared.items()), 0, positions)
        buf = bytearray(body)
        for name in changed:
            at = positions[name]
            encoded = _entry_bytes(name, *entries[name])
            buf[at : at + len(encoded)] = encoded
        body = bytes(buf)
    if appended:
        tail = [_entry_bytes(name, *entries[name]) for name in appended]
        if positions is not None:  # new names only: a failed swap leaves them in a version never used again
            _place(zip(appended, tail), len(body), positions)
        body = b"".join([body, *tail])
    return body, positions


def encode_update(
    shared: Entries, encoded: tuple[bytes, Positions | None] | None, entries: Entries
) -> tuple[bytes, Positions | None]:
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
        return _spliced(*encoded, shared, entries, changed, appended)
    return _body(entries), None


def _per_heap(heap: CoreHeap, create: bool = False) -> _Cached | None:
    per_heap: _Cached | None = heap._index_cache  # the binding's slot for it
    if per_heap is None and create:
        per_heap = heap._index_cache = OrderedDict()
    return per_heap


def _cached(heap: CoreHeap, agent_id: int, generation: int) -> tuple[int, Index] | None:
    per_heap = _per_heap(heap)
    hit = per_heap.get(agent_id) if per_heap is not None else None
    if hit is None or hit[0] != generation or heap._owner_word(agent_id, generation) != hit[1]:
        return None
    return hit[1], hit[2]


def _hit(
    heap: CoreHeap, agent_id: int, generation: int, word: int | None
) -> tuple[int, int, Index, bytes, Positions | None] | None:
    """The cache's entry for the agent if it was read or written under ``word``."""
    per_heap = _per_heap(heap)
    hit = per_heap.get(agent_id) if per_heap is not None else None
    return hit if hit is not None and hit[0] == generation and hit[1] == word else None


def cached_at(heap: CoreHeap, agent_id: int, generation: int, word: int) -> Index | None:
    """The index this process last read or wrote for the agent, if that was
    under ``word`` (which the caller just loaded): no load of the word again."""
    hit = _hit(heap, agent_id, generation, word)
    return hit[2] if hit is not None else None


def _cached_body(
    heap: CoreHeap, agent_id: int, generation: int, word: int
) -> tuple[bytes, Positions | None] | None:
    hit = _hit(heap, agent_id, generation, word)
    return (hit[3], hit[4]) if hit is not None else None


def _remember(
    heap: CoreHeap,
    agent_id: int,
    generation: int,
    word: int,
    index: Index,
    body: bytes,
    positions: Positions | None = None,
) -> None:
    per_heap = _per_heap(heap, create=True)
    assert per_heap is not None
    per_heap[agent_id] = (generation, word, index, body, positions)
    per_heap.move_to_end(agent_id)
    if len(per_heap) > CACHE_SIZE:
        per_heap.popitem(last=False)


def _read_attempt(heap: CoreHeap, agent_id: int, generation: int, kind: str) -> tuple[int, Index] | None:
    got = heap._owner_held_read(agent_id, generation)
    if got is None:
        raise stale_agent(agent_id, generation)
    word, data = got
    if not word or word == SEALED_WORD:  # no index yet, or offloaded
        return word, (kind, 0.0, {})
    try:
        index = decode(data)
    except (ValueError, UnicodeDecodeError, struct.error):
        return None  # a block reused at the same place between the reads: read again
    _remember(heap, agent_id, generation, word, index, body_of(data, index[0]))
    return word, index


_WHAT = "agent {1}'s index"


def read_index(heap: CoreHeap, agent_id: int, generation: int, kind: str = "?") -> tuple[int, Index]:
    """The index and the user word it was read under (0: no index yet). The
    entries are shared with the cache: read them, never change them
    (update_index changes a copy)."""
    hit = _cached(heap, agent_id, generation)
    if hit is not None:
        return hit
    result: tuple[int, Index] = retry_while_changing(_read_attempt, (heap, agent_id, generation, kind), _WHAT)
    return result


def _update_attempt(
    heap: CoreHeap,
    agent_id: int,
    generation: int,
    kind: str,
    change: Callable[[Entries], None],
    lease_deadline: float | None,
    sealed_ok: bool,
) -> tuple[int, int] | None:
    word, (old_kind, lease, shared) = read_index(heap, agent_id, generation, kind)
    # put_entries' fast path never takes a sealed word (it is never cached): only here
    if word == SEALED_WORD and not sealed_ok:
        raise AgentSealed(f"agent {agent_id} was offloaded while an update of it ran")
    entries = dict(shared)
    change(entries)
    new_lease = lease if lease_deadline is None else lease_deadline
    cached = _cached_body(heap, agent_id, generation, word) if word else None
    body, positions = encode_update(shared, cached, entries)
    new_word = heap._owner_held_swap(
        agent_id, generation, word, encode_head(old_kind, new_lease, len(entries)), body
    )
    if not new_word:
        return None
    _remember(heap, agent_id, generation, new_word, (old_kind, new_lease, entries), body, positions)
    return word, new_word


def update_index(
    heap: CoreHeap,
    agent_id: int,
    generation: int,
    kind: str,
    change: Callable[[Entries], None],
    lease_deadline: float | None = None,
    sealed_ok: bool = False,
) -> tuple[int, int]:
    """Apply ``change`` to the entries and swap the new index in; again if
    another update got there first. Returns (the word the change was made
    on, the new word): a reader that knew the first knows the second is its
    index with this change, and nothing else. AgentSealed if the agent was
    offloaded (its word sealed), unless ``sealed_ok`` (its restorer)."""
    words: tuple[int, int] = retry_while_changing(
        _update_attempt, (heap, agent_id, generation, kind, change, lease_deadline, sealed_ok), _WHAT
    )
    return words


def put_entries(
    heap: CoreHeap,
    agent_id: int,
    generation: int,
    kind: str,
    new: list[tuple[str, int, int]],
    sealed_ok: bool = False,
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """update_index for entries set to (name, offset, size), the common put():
    on an index this process read last, each name costs one encoded entry
    (appended, or written over the one it replaces) and the update a swap.
    Returns the (offset, size) entries they replaced, and the index words
    before and after (as update_index)."""
    word = heap._owner_word(agent_id, generation)
    shared: Entries = {}
    body: bytes | None = None
    positions: Positions | None = None
    if word == 0:  # no index yet (None, a stale agent, fails below in update_index)
        old_kind, lease, body, positions = kind, 0.0, b"", {}
    elif (hit := _hit(heap, agent_id, generation, word)) is not None:
        (old_kind, lease, shared), body, positions = hit[2], hit[3], hit[4]
    if body is not None and word is not None and (len(new) == 1 or len({n for n, _, _ in new}) == len(new)):
        # the index this process read last: replaced entries are written over
        # their old bytes, new ones appended; nothing else is encoded again
        entries = dict(shared)
        replaced_names: list[str] = []
        appended: list[str] = []
        for name, offset, size in new:
            (replaced_names if name in shared else appended).append(name)
            entries[name] = (offset, size)  # a new name goes to the end, as _spliced appends it
        replaced_refs = [shared[name] for name in replaced_names]
        body, positions = _spliced(body, positions, shared, entries, replaced_names, appended)
        new_word = heap._owner_held_swap(
            agent_id, generation, word, encode_head(old_kind, lease, len(entries)), body
        )
        if new_word:
            _remember(heap, agent_id, generation, new_word, (old_kind, lease, entries), body, positions)
            return replaced_refs, (word, new_word)
    replaced: list[tuple[int, int]] = []

    def change(entries: Entries) -> None:
        replaced.clear()  # run again after a race: only the last run's entries count
        for name, offset, size in new:
            if name in entries:
                replaced.append(entries[name])
            entries[name] = (offset, size)

    words = update_index(heap, agent_id, generation, kind, change, sealed_ok=sealed_ok)
    return replaced, words


def read_kind(heap: CoreHeap, agent_id: int, generation: int) -> str:
    """The kind name stored in an agent's index ("?" if it has none yet)."""
    try:
        return read_index(heap, agent_id, generation)[1][0]
    except (StaleBlock, AgentStateError):
        return "?"


def read_lease(heap: CoreHeap, agent_id: int, generation: int, word: int) -> float:
    """The lease deadline in an index word's block, 0.0 if none or unreadable."""
    if word == 0 or word == SEALED_WORD:
        return 0.0
    try:
        got = heap._owner_held_read(agent_id, generation)
    except AgentStateError:
        return 0.0
    # the block is read only if it still is this agent's index: one freed by
    # an update and handed out again must not decide a reclaim
    if got is None or got[0] != word:
        return 0.0
    try:
        magic, _, _, deadline, _, _ = _HEADER.unpack_from(got[1], 0)
    except struct.error:
        return 0.0
    return float(deadline) if magic == _MAGIC else 0.0
