"""The agent index: an agent's kind, lease deadline and named entries, encoded
in one block of the shared default's `system` pages (so ten thousand agents do
not need ten thousand pages), or past PIECE_BYTES of entries in pieces: that
block then holds a table of blocks of the agent's own, each holding some of
the entries, so that an update writes the pieces it changes and not every
entry again. The owner's user word holds that block (sh_held_word in the C
header), and the HELD bit tells the C core to free it when it recycles the
agent, whichever process or path does that (the pieces, the agent's blocks,
go with its pages). Any process of the heap can read it; an update writes
new blocks and swaps the word, so a reader sees the old index or the new
one, and checks the word again after reading. The bytes are
index_format's; this module reads, caches and swaps them, whole or in
pieces."""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, NamedTuple

from swarmheap._core import FIRST_AGENT, SEALED_WORD, retry_while_changing, stale_agent
from swarmheap.errors import AgentSealed, AgentStateError, IndexMoved, StaleBlock
from swarmheap.index_format import (  # the format of an index's bytes
    ENTRY,
    HEADER,
    IN_PIECES,
    MAGIC,
    PIECE,
    PIECE_BYTES,
    Entries,
    Index,
    Positions,
    body_of,
    decode,
    decode_entries,
    encode_head,
    encode_update,
    entry_bytes,
    place_entries,
    read_head,
    spliced,
)

if TYPE_CHECKING:
    from swarmheap._core import CoreHeap

__all__ = [
    "MissingEntries",
    "cached_at",
    "put_entries",
    "read_index",
    "read_kind",
    "read_lease",
    "remove_in_pieces",
    "update_index",
]


class MissingEntries(Exception):
    """A put that names others (``names``, its requires) found them gone
    from the index it would have gone into: nothing was written."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"the index no longer holds {', '.join(names)}")
        self.names = names


def _expect(agent_id: int, word: int | None, expect_word: int | None) -> None:
    """IndexMoved unless the index is at ``expect_word`` (when one is given)."""
    if expect_word is not None and word != expect_word:
        raise IndexMoved(f"agent {agent_id}'s index moved on from the word the change was decided under")


def _require(entries: Entries, requires: Collection[str]) -> None:
    missing = [name for name in requires if name not in entries]
    if missing:
        raise MissingEntries(missing)


class Piece(NamedTuple):
    """A piece of an index: its block's offset, its encoded entries and their names."""

    offset: int
    data: bytes
    names: tuple[str, ...]


Pieces = tuple[Piece, ...]


class PieceSet:
    """An index's pieces as this process last read or wrote them, and which
    piece holds each name and where in it: made when a replacement first
    needs them (a walk of the names), then kept, an append adding its names."""

    __slots__ = ("at", "pieces", "where")

    def __init__(
        self, pieces: Pieces, where: dict[str, int] | None = None, at: dict[int, dict[str, int]] | None = None
    ) -> None:
        self.pieces = pieces
        self.where = where
        self.at = {} if at is None else at

    def find(self, name: str) -> tuple[int, int] | None:
        """(the piece's index, the entry's byte position in it), or None if
        no piece of these holds ``name`` (a name another thread added since)."""
        if self.where is None:
            self.where = {n: i for i, p in enumerate(self.pieces) for n in p.names}
        i = self.where.get(name)
        if i is None or i >= len(self.pieces):
            return None
        at = self.at.get(i)
        if at is None:
            at = self.at[i] = {}
            pos = 0
            for n in self.pieces[i].names:
                at[n] = pos
                pos += ENTRY.size + len(n.encode())
        return (i, at[name]) if name in at else None


def _encode_root(kind: str, lease: float, count: int, pieces: Pieces) -> bytes:
    kind_b = kind.encode()
    table = [PIECE.pack(p.offset, len(p.data), len(p.names)) for p in pieces]
    return b"".join([HEADER.pack(MAGIC, IN_PIECES, len(kind_b), lease, count, len(pieces)), kind_b, *table])


def _read_pieces(
    heap: CoreHeap, agent_id: int, generation: int, word: int, data: bytes
) -> tuple[Index, PieceSet] | None:
    """The index whose table ``data`` (the block under ``word``) is: each
    piece read as a block of the agent's (as resolve() checks a handle, so a
    damaged table reads nothing else), then the word again. None if a piece
    is gone or the word moved on (an update freed them): read again."""
    _, kind, lease, count, npieces, pos = read_head(data)
    entries: Entries = {}
    pieces = []
    for _ in range(npieces):
        offset, nbytes, n = PIECE.unpack_from(data, pos)
        pos += PIECE.size
        piece = heap._owner_read(agent_id, generation, offset, nbytes)
        if piece is None:
            return None
        end, names = decode_entries(piece, 0, n, entries)
        if end != nbytes:
            return None
        pieces.append(Piece(offset, piece, tuple(names)))
    if len(entries) != count or heap._owner_word(agent_id, generation) != word:
        return None
    return (kind, lease, entries), PieceSet(tuple(pieces))


def _chunks(items: Iterable[tuple[str, tuple[int, int]]]) -> list[tuple[bytes, tuple[str, ...]]]:
    """Entries (name, (offset, size)) in order, encoded and cut into pieces'
    worth of at most PIECE_BYTES."""
    out: list[tuple[bytes, tuple[str, ...]]] = []
    parts: list[bytes] = []
    names: list[str] = []
    size = 0
    for name, place in items:
        entry = entry_bytes(name, *place)
        if parts and size + len(entry) > PIECE_BYTES:
            out.append((b"".join(parts), tuple(names)))
            parts, names, size = [], [], 0
        parts.append(entry)
        names.append(name)
        size += len(entry)
    if parts:
        out.append((b"".join(parts), tuple(names)))
    return out


def _put_pieces(
    heap: CoreHeap, agent_id: int, generation: int, offloads: int, made: list[tuple[bytes, tuple[str, ...]]]
) -> Pieces:
    """Blocks of the agent's holding ``made`` (all of them, or none on an error)."""
    pieces: list[Piece] = []
    try:
        for data, names in made:
            pieces.append(Piece(heap._owner_piece_put(agent_id, generation, data), data, names))
    except BaseException:
        _free_pieces(heap, agent_id, generation, offloads, pieces)
        raise
    return tuple(pieces)


def _free_pieces(
    heap: CoreHeap, agent_id: int, generation: int, offloads: int, pieces: Iterable[Piece]
) -> None:
    # checked as the agent's in the binding, and of the incarnation of
    # ``offloads``: a recycled or since offloaded agent's are left alone
    for piece in pieces:
        heap._free_entry_block(piece.offset, agent_id, generation, offloads)


def _swap_root(target: _Target, count: int, pieces: Pieces, fresh: Pieces, stale: Iterable[Piece]) -> int:
    """Swap in the table of ``pieces`` (``fresh`` the ones made for it, freed
    if the word moved on; ``stale`` the old ones it no longer names, freed
    once it went in). The new word, or 0 if the word had moved on. A process
    killed in between leaves blocks of the agent's that its recycle frees."""
    heap, agent_id, generation, word, kind, lease, _, offloads = target
    try:
        new_word = heap._owner_held_swap(
            agent_id, generation, word, offloads, _encode_root(kind, lease, count, pieces), b""
        )
    except BaseException:
        # the agent gone, say; or a KeyboardInterrupt landing after the swap
        # went in: what was made for the table goes only if the word did not move
        try:
            unmoved = heap._owner_word(agent_id, generation) == word
        except BaseException:
            unmoved = False
        if unmoved:
            _free_pieces(heap, agent_id, generation, offloads, fresh)
        raise
    _free_pieces(heap, agent_id, generation, offloads, stale if new_word else fresh)
    return new_word


def _in_pieces(agent_id: int, nbytes: int) -> bool:
    """Whether an index of ``nbytes`` of entries goes in pieces (agents' only:
    the registry, owner 1, keeps its shards whole)."""
    return nbytes > PIECE_BYTES and agent_id >= FIRST_AGENT


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
_Cached = OrderedDict[int, tuple[int, int, Index, "bytes | bytearray | PieceSet", "Positions | None"]]


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
) -> tuple[int, int, Index, bytes | bytearray | PieceSet, Positions | None] | None:
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
) -> tuple[bytes | bytearray | PieceSet, Positions | None] | None:
    hit = _hit(heap, agent_id, generation, word)
    return (hit[3], hit[4]) if hit is not None else None


def _remember(
    heap: CoreHeap,
    agent_id: int,
    generation: int,
    word: int,
    index: Index,
    body: bytes | bytearray | PieceSet,
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
        if read_head(data)[0] == IN_PIECES:
            got_pieces = _read_pieces(heap, agent_id, generation, word, data)
            if got_pieces is None:
                return None
            _remember(heap, agent_id, generation, word, got_pieces[0], got_pieces[1])
            return word, got_pieces[0]
        index = decode(data)
    except (ValueError, UnicodeDecodeError, struct.error):
        return None  # a block reused at the same place between the reads: read again
    _remember(heap, agent_id, generation, word, index, body_of(data, index[0]))
    return word, index


_WHAT = "agent {1}'s index"


def read_index(heap: CoreHeap, agent_id: int, generation: int, kind: str = "?") -> tuple[int, Index]:
    """The index and the user word it was read under (0: no index yet). The
    entries are shared with the cache: read them, never change them
    (update_index changes a copy). A put from this process adds new names
    to it in place, and in an index in pieces sets a replaced entry's new
    pair (_append_in_place, _replace_in_pieces): iterate a copy (list())."""
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
    expect_word: int | None,
    offloads: int | None,
) -> tuple[int, int] | None:
    if offloads is None:  # before the word: the swap goes in only while it holds
        offloads = heap._owner_offloads(agent_id)
    word, (old_kind, lease, shared) = read_index(heap, agent_id, generation, kind)
    # put_entries' fast path never takes a sealed word (it is never cached): only here
    if word == SEALED_WORD and not sealed_ok:
        raise AgentSealed(f"agent {agent_id} was offloaded while an update of it ran")
    _expect(agent_id, word, expect_word)
    entries = dict(shared)
    change(entries)
    new_lease = lease if lease_deadline is None else lease_deadline
    cached = None
    if word and word != SEALED_WORD:
        cached = _cached_body(heap, agent_id, generation, word)
        if cached is None:  # read by another thread meanwhile, and the cache let it go
            return None  # (its pieces, if in pieces, are the update's to free): read again
    whole: tuple[bytes | bytearray, Positions | None] | None = None
    target = _Target(heap, agent_id, generation, word, old_kind, new_lease, shared, offloads)
    if cached is not None and isinstance(cached[0], PieceSet):
        new_word = _rewrite_pieces(target, cached[0], entries)
    else:
        if cached is not None and not isinstance(cached[0], PieceSet):
            whole = (cached[0], cached[1])
        body, positions = encode_update(shared, whole, entries)
        new_word = _store(target, entries, body, positions)
    if not new_word and word == SEALED_WORD and heap._owner_state(agent_id) not in ("restoring", "live"):
        # the core swaps a sealed word only while the agent is restoring: a
        # restorer whose agent was restored by another and offloaded again
        # would try a hundred times over (live: another restorer's entries
        # went in, and the next attempt reads them)
        raise AgentSealed(f"agent {agent_id} is no longer being restored: it was offloaded again")
    return (word, new_word) if new_word else None


def _store(target: _Target, entries: Entries, body: bytes | bytearray, positions: Positions | None) -> int:
    """Swap in ``entries`` (whose encoding is ``body``) as one block, or in
    pieces once past PIECE_BYTES, and cache them; the new word, or 0 if the
    word had moved on."""
    heap, agent_id, generation, word, kind, lease, _, offloads = target
    if _in_pieces(agent_id, len(body)):
        fresh = _put_pieces(heap, agent_id, generation, offloads, _chunks(entries.items()))
        new_word = _swap_root(target, len(entries), fresh, fresh, ())
        if new_word:
            _remember(heap, agent_id, generation, new_word, (kind, lease, entries), PieceSet(fresh))
        return new_word
    head = encode_head(kind, lease, len(entries))
    new_word = heap._owner_held_swap(agent_id, generation, word, offloads, head, body)
    if new_word:
        _remember(heap, agent_id, generation, new_word, (kind, lease, entries), body, positions)
    return new_word


def _rewrite_pieces(target: _Target, known: PieceSet, entries: Entries) -> int:
    """Swap in ``entries``, a changed copy of ``shared`` (in ``pieces``): a
    piece whose entries all kept their value (the same tuple, as a dict copy
    shares them) stays as it is, one that lost or changed some is written
    again, new names go in new pieces; worn into many small pieces, the
    index is cut again, and below half of PIECE_BYTES it is one block."""
    heap, agent_id, generation, _, kind, lease, shared, offloads = target
    pieces = known.pieces
    plan: list[Piece] = []  # offset -1: a piece to make
    stale: list[Piece] = []
    for piece in pieces:
        kept = [n for n in piece.names if n in entries]
        if len(kept) == len(piece.names) and all(entries[n] is shared.get(n) for n in kept):
            plan.append(piece)
            continue
        stale.append(piece)
        plan += [Piece(-1, d, ns) for d, ns in _chunks((n, entries[n]) for n in kept)]  # one piece, or none
    new_names = [n for n in entries if n not in shared]
    plan += [Piece(-1, d, ns) for d, ns in _chunks((n, entries[n]) for n in new_names)]
    total = sum(len(p.data) for p in plan)
    # in the order the pieces give, as a reader reads it
    ordered = {n: entries[n] for p in plan for n in p.names}
    if not _in_pieces(agent_id, 2 * total):  # one block again
        new_word = _store(target, ordered, b"".join([p.data for p in plan]), None)
        if new_word:
            _free_pieces(heap, agent_id, generation, offloads, pieces)
        return new_word
    if len(plan) > 2 * (total // PIECE_BYTES) + 4:
        stale = list(pieces)
        plan = [Piece(-1, d, ns) for d, ns in _chunks(ordered.items())]
    made = iter(
        _put_pieces(heap, agent_id, generation, offloads, [(p.data, p.names) for p in plan if p.offset < 0])
    )
    final = tuple(next(made) if p.offset < 0 else p for p in plan)
    fresh = tuple(p for p, planned in zip(final, plan) if planned.offset < 0)
    new_word = _swap_root(target, len(ordered), final, fresh, stale)
    if new_word:
        _remember(heap, agent_id, generation, new_word, (kind, lease, ordered), PieceSet(final))
    return new_word


def update_index(
    heap: CoreHeap,
    agent_id: int,
    generation: int,
    kind: str,
    change: Callable[[Entries], None],
    lease_deadline: float | None = None,
    sealed_ok: bool = False,
    expect_word: int | None = None,
    offloads: int | None = None,
) -> tuple[int, int]:
    """Apply ``change`` to the entries and swap the new index in; again if
    another update got there first. Returns (the word the change was made
    on, the new word): a reader that knew the first knows the second is its
    index with this change, and nothing else. AgentSealed if the agent was
    offloaded (its word sealed), unless ``sealed_ok`` (its restorer).
    With ``expect_word``, the change goes in on that word or not at all
    (IndexMoved): a removal decided from a reading of the index. With
    ``offloads`` (the agent's offload count its caller read before it made
    the blocks ``change`` names), only while the agent was not offloaded
    since (else AgentSealed: those blocks went back with it)."""
    words: tuple[int, int] = retry_while_changing(
        _update_attempt,
        (heap, agent_id, generation, kind, change, lease_deadline, sealed_ok, expect_word, offloads),
        _WHAT,
    )
    return words


class _Target(NamedTuple):
    """What an update of put_entries' starts from: the agent, and the index
    this process cached for it (its word, kind, lease and entries)."""

    heap: CoreHeap
    agent_id: int
    generation: int
    word: int
    kind: str
    lease: float
    shared: Entries
    # the agent's offload count, read before the word: the incarnation whose
    # blocks (pieces made for the update, pieces it drops) it may free
    offloads: int


def _append_in_place(
    target: _Target,
    body: bytes | bytearray,
    positions: Positions | None,
    new: list[tuple[str, int, int]],
) -> tuple[int, int] | None:
    """put_entries of names all new to ``shared``, the index cached under
    ``word``: the swap copies the cached body and the new entries' bytes,
    and once it went in, the cached entries and body take them in place (a
    dict and a bytearray that grow), so an append costs the new entries,
    not a copy of the index in this process (a long LangGraph thread holds
    thousands: the copies, and freeing the old ones, were most of a put).
    A reader holding the entries sees the names appear (never change or
    go: a replacement or removal copies), and iterates a copy (list()).
    None if the word had moved on, or the index grows past PIECE_BYTES."""
    heap, agent_id, generation, word, kind, lease, shared, offloads = target
    tail_parts = [entry_bytes(name, offset, size) for name, offset, size in new]
    tail = b"".join(tail_parts)
    if _in_pieces(agent_id, len(body) + len(tail)):
        return None  # the splice path puts it in pieces
    head = encode_head(kind, lease, len(shared) + len(new))
    new_word = heap._owner_held_swap(agent_id, generation, word, offloads, head, body, tail)
    if not new_word:
        return None
    if positions is not None:
        place_entries(zip([name for name, _, _ in new], tail_parts), len(body), positions)
    for name, offset, size in new:
        shared[name] = (offset, size)
    # bytes, as read from the arena: a bytearray from here on, grown in place
    grown = body if isinstance(body, bytearray) else bytearray(body)
    try:
        grown += tail
    except BufferError:  # exported by a swap of another thread, its GIL released
        grown = bytearray(body) + tail
    _remember(heap, agent_id, generation, new_word, (kind, lease, shared), grown, positions)
    return word, new_word


def _append_to_pieces(
    target: _Target,
    known: PieceSet,
    new: list[tuple[str, int, int]],
) -> tuple[int, int] | None:
    """_append_in_place for an index in pieces: the new entries go at the end
    of the last piece while it has room (that piece written again), else in
    new ones, and the table is swapped in; the cached entries take them in
    place. None if the word had moved on."""
    heap, agent_id, generation, word, kind, lease, shared, offloads = target
    pieces = known.pieces
    added = tuple(name for name, _, _ in new)
    tail = b"".join([entry_bytes(name, offset, size) for name, offset, size in new])
    if pieces and len(pieces[-1].data) + len(tail) <= PIECE_BYTES:
        last = pieces[-1]
        fresh = _put_pieces(heap, agent_id, generation, offloads, [(last.data + tail, last.names + added)])
        kept, stale = pieces[:-1], pieces[-1:]
    else:
        fresh = _put_pieces(
            heap,
            agent_id,
            generation,
            offloads,
            _chunks((name, (offset, size)) for name, offset, size in new),
        )
        kept, stale = pieces, ()
    now = kept + fresh
    new_word = _swap_root(target, len(shared) + len(new), now, fresh, stale)
    if not new_word:
        return None
    for name, offset, size in new:
        shared[name] = (offset, size)
    where = known.where
    if where is not None:  # shared with the PieceSet of the word before: it only gains names
        for i, piece in enumerate(fresh, len(kept)):
            for name in added if stale else piece.names:
                where[name] = i
    at = {i: positions for i, positions in known.at.items() if i < len(kept)}  # the rewritten piece's: again
    _remember(heap, agent_id, generation, new_word, (kind, lease, shared), PieceSet(now, where, at))
    return word, new_word


def _replace_in_pieces(
    target: _Target,
    known: PieceSet,
    new: list[tuple[str, int, int]],
) -> tuple[list[tuple[int, int]], tuple[int, int]] | None:
    """put_entries of names all in the index (in pieces): each piece holding
    one is written again with the new entries over the old (same name, same
    length), the table swapped in, and the cached entries take the new
    values in place (a reader gets the old pair or the new one, as a reader
    in another process does). Returns the entries replaced and the words;
    None if a name is not where the pieces say, or the word had moved on."""
    heap, agent_id, generation, word, kind, lease, shared, offloads = target
    touched: dict[int, list[tuple[int, bytes]]] = {}
    for name, offset, size in new:
        found = known.find(name)
        if found is None:
            return None
        touched.setdefault(found[0], []).append((found[1], entry_bytes(name, offset, size)))
    pieces = list(known.pieces)
    made = []
    for i, patches in touched.items():
        buf = bytearray(pieces[i].data)
        for pos, entry in patches:
            buf[pos : pos + len(entry)] = entry
        made.append((bytes(buf), pieces[i].names))
    fresh = _put_pieces(heap, agent_id, generation, offloads, made)
    stale = [pieces[i] for i in touched]
    for i, piece in zip(touched, fresh):
        pieces[i] = piece
    now = tuple(pieces)
    new_word = _swap_root(target, len(shared), now, fresh, stale)
    if not new_word:
        return None
    replaced = [shared[name] for name, _, _ in new]
    for name, offset, size in new:
        shared[name] = (offset, size)
    _remember(
        heap, agent_id, generation, new_word, (kind, lease, shared), PieceSet(now, known.where, known.at)
    )
    return replaced, (word, new_word)


def remove_in_pieces(
    heap: CoreHeap,
    agent_id: int,
    generation: int,
    names: Collection[str],
    missing_ok: bool = False,
    expect_word: int | None = None,
) -> tuple[list[tuple[int, int]], tuple[int, int]] | None:
    """Remove entries ``names`` (distinct) from an index in pieces this
    process read last: each piece holding one written again without them
    (or dropped, empty), the table swapped in; the cached entries are a copy
    without them (a reader holding them keeps the names). Returns their
    (offset, size) entries and the index words before and after (as
    update_index); None if the index is not such a one, a name is not in it
    (and not ``missing_ok``), the index would be small enough to be whole
    again, or the word moved on (update_index does those). IndexMoved if
    the index is not at ``expect_word`` (given)."""
    offloads = heap._owner_offloads(agent_id)
    word = heap._owner_word(agent_id, generation)
    _expect(agent_id, word, expect_word)
    hit = _hit(heap, agent_id, generation, word) if word else None
    if hit is None or not isinstance(hit[3], PieceSet):
        return None
    (kind, lease, shared), known = hit[2], hit[3]
    present = [name for name in names if name in shared]
    if not present or (len(present) != len(names) and not missing_ok):
        return None
    pieces = known.pieces
    cuts: dict[int, list[tuple[int, int]]] = {}  # piece -> (position, length) of each entry to cut
    gone = 0
    for name in present:
        found = known.find(name)
        if found is None:
            return None
        length = ENTRY.size + len(name.encode())
        cuts.setdefault(found[0], []).append((found[1], length))
        gone += length
    if not _in_pieces(agent_id, 2 * (sum(len(p.data) for p in pieces) - gone)):
        return None
    dropped = set(present)
    remade: dict[int, tuple[bytes, tuple[str, ...]]] = {}
    for i, cut in cuts.items():
        data, kept_from, parts = pieces[i].data, 0, []
        for pos, length in sorted(cut):
            parts.append(data[kept_from:pos])
            kept_from = pos + length
        parts.append(data[kept_from:])
        remade[i] = (b"".join(parts), tuple(n for n in pieces[i].names if n not in dropped))
    order = sorted(remade)
    fresh = _put_pieces(heap, agent_id, generation, offloads, [remade[i] for i in order if remade[i][0]])
    made = iter(fresh)
    now = tuple(
        piece if i not in remade else next(made)
        for i, piece in enumerate(pieces)
        if i not in remade or remade[i][0]
    )
    assert word is not None
    target = _Target(heap, agent_id, generation, word, kind, lease, shared, offloads)
    new_word = _swap_root(target, len(shared) - len(present), now, fresh, [pieces[i] for i in order])
    if not new_word:
        return None
    entries = dict(shared)
    removed = [entries.pop(name) for name in present]
    emptied = [i for i in order if not remade[i][0]]
    where = known.where
    if emptied:
        where = None  # the pieces after the first one emptied moved down
    elif where is not None:
        for name in present:  # shared with the PieceSet before: its find() of the name misses, as it should
            where.pop(name, None)
    below = emptied[0] if emptied else len(pieces)
    at = {j: positions for j, positions in known.at.items() if j < below and j not in remade}
    _remember(heap, agent_id, generation, new_word, (kind, lease, entries), PieceSet(now, where, at))
    return removed, (word, new_word)


def put_entries(
    heap: CoreHeap,
    agent_id: int,
    generation: int,
    kind: str,
    new: list[tuple[str, int, int]],
    sealed_ok: bool = False,
    requires: Collection[str] = (),
    expect_word: int | None = None,
    lease_deadline: float | None = None,
    offloads: int | None = None,
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """update_index for entries set to (name, offset, size), the common put():
    on an index this process read last, each name costs one encoded entry
    (appended, or written over the one it replaces) and the update a swap.
    Returns the (offset, size) entries they replaced, and the index words
    before and after (as update_index). The entries go in only on an index
    that holds every name of ``requires`` (checked against the entries of
    the word the swap goes in on): else MissingEntries, nothing written.
    With ``expect_word``, only onto the index at that word (else
    IndexMoved); with ``lease_deadline``, the lease is set in the same
    update (a restore's entries and lease go in at once). ``offloads``: the
    agent's offload count read before the blocks of ``new`` were made; the
    entries go in only while it holds (else AgentSealed: the blocks went back
    with an offload, and a restore since may have handed them out again)."""
    if offloads is None:
        offloads = heap._owner_offloads(agent_id)
    word = heap._owner_word(agent_id, generation)
    shared: Entries = {}
    body: bytes | bytearray | PieceSet | None = None
    positions: Positions | None = None
    if word == 0:  # no index yet (None, a stale agent, fails below in update_index)
        old_kind, lease, body, positions = kind, 0.0, b"", {}
    elif (hit := _hit(heap, agent_id, generation, word)) is not None:
        (old_kind, lease, shared), body, positions = hit[2], hit[3], hit[4]
    _expect(agent_id, word, expect_word)
    fast = lease_deadline is None and (len(new) == 1 or len({n for n, _, _ in new}) == len(new))
    if body is not None and word is not None and fast:
        # the index this process read last: replaced entries are written over
        # their old bytes, new ones appended; nothing else is encoded again
        if requires:
            _require(shared, requires)
        all_new = not any(name in shared for name, _, _ in new)
        target = _Target(heap, agent_id, generation, word, old_kind, lease, shared, offloads)
        if isinstance(body, PieceSet):  # in pieces: a put writes the pieces it changes and the table
            if all_new:
                words = _append_to_pieces(target, body, new)
                if words is not None:
                    return [], words
            elif all(name in shared for name, _, _ in new):
                got = _replace_in_pieces(target, body, new)
                if got is not None:
                    return got
        else:
            if all_new:
                words = _append_in_place(target, body, positions, new)
                if words is not None:
                    return [], words
            entries = dict(shared)
            replaced_names: list[str] = []
            appended: list[str] = []
            for name, offset, size in new:
                (replaced_names if name in shared else appended).append(name)
                entries[name] = (offset, size)  # a new name goes to the end, as spliced appends it
            replaced_refs = [shared[name] for name in replaced_names]
            body, positions = spliced(body, positions, shared, entries, replaced_names, appended)
            new_word = _store(target, entries, body, positions)
            if new_word:
                return replaced_refs, (word, new_word)
    replaced: list[tuple[int, int]] = []

    def change(entries: Entries) -> None:
        replaced.clear()  # run again after a race: only the last run's entries count
        if requires:
            _require(entries, requires)
        for name, offset, size in new:
            if name in entries:
                replaced.append(entries[name])
            entries[name] = (offset, size)

    words = update_index(
        heap,
        agent_id,
        generation,
        kind,
        change,
        lease_deadline,
        sealed_ok=sealed_ok,
        expect_word=expect_word,
        offloads=offloads,
    )
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
        magic, _, _, deadline, _, _ = HEADER.unpack_from(got[1], 0)
    except struct.error:
        return 0.0
    return float(deadline) if magic == MAGIC else 0.0
