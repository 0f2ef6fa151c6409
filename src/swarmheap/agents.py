"""Agents: owner heaps with named entries, recycled in one piece."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from swarmheap._core import AgentCore
from swarmheap.errors import AgentStateError, InvalidHandle, StaleBlock
from swarmheap.handle import Handle

if TYPE_CHECKING:
    from swarmheap.heap import Heap

__all__ = ["Agent", "kind_id"]

# The index of an agent's named entries lives in one block of the shared
# default's `system` pages (so ten thousand agents do not need ten thousand
# pages); the owner's user word holds HELD | length << 40 | offset of it, and
# the HELD bit tells the C core to free the block when it recycles the agent,
# whichever process or path does that. Any process of the heap can read it; an
# update writes a new block and swaps the word, so a reader sees the old index
# or the new one, and checks the word again after reading.
_HEADER = struct.Struct("<4sHHdII")  # magic, version, kind length, lease deadline, count, reserved
_ENTRY = struct.Struct("<HQQ")  # name length, offset, size
_MAGIC = b"SHIX"


_MAX_NAME = 1024


def kind_id(kind: str) -> int:
    """The 32-bit id the C core records for a kind name."""
    return zlib.crc32(kind.encode())


def _encode_index(kind: str, lease_deadline: float, entries: dict[str, tuple[int, int]]) -> bytes:
    kind_b = kind.encode()
    parts = [_HEADER.pack(_MAGIC, 1, len(kind_b), lease_deadline, len(entries), 0), kind_b]
    for name, (offset, size) in entries.items():
        name_b = name.encode()
        parts.append(_ENTRY.pack(len(name_b), offset, size))
        parts.append(name_b)
    return b"".join(parts)


def _decode_index(data: bytes) -> tuple[str, float, dict[str, tuple[int, int]]]:
    magic, _version, kind_len, lease, count, _ = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC:
        raise ValueError("not an agent index")
    pos = _HEADER.size
    kind = data[pos : pos + kind_len].decode()
    pos += kind_len
    entries: dict[str, tuple[int, int]] = {}
    for _ in range(count):
        name_len, offset, size = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        entries[data[pos : pos + name_len].decode()] = (offset, size)
        pos += name_len
    return kind, lease, entries


class Agent(AgentCore):
    """An owner heap: its own pages per size class, its own accounting, its
    named entries. Get one from ``heap.spawn(kind)`` or, in any process of the
    heap, ``heap.agent(agent_id)``. ``with heap.spawn(...) as agent:``
    completes it on exit."""

    # _heap, id and generation are AgentCore's C fields, as is alloc()
    __slots__ = ("_hooks", "kind")
    _heap: Heap

    def __init__(self, heap: Heap, agent_id: int, generation: int, kind: str) -> None:
        self._heap = heap
        # the heap's hook lists themselves (on/off change them in place): a
        # complete runs with cold caches, and this saves it two lookups
        self._hooks = heap._hooks_table()
        self.id = agent_id
        self.generation = generation
        self.kind = kind

    # ---- identity and state ----

    @property
    def heap(self) -> Heap:
        return self._heap

    @property
    def state(self) -> str:
        """live, completed (recycle deferred by pins), dead, offloaded, or gone."""
        info = self._heap._owner_info(self.id)
        if info is None or info["generation"] != self.generation:
            return "gone"
        return str(info["state"])

    @property
    def lease_deadline(self) -> float | None:
        """Epoch seconds after which a sweep reclaims the agent, or None."""
        lease = self._read_index()[1]
        return lease or None

    def __repr__(self) -> str:
        return f"<Agent {self.id} kind={self.kind!r} generation={self.generation} {self.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Agent) and (self.id, self.generation) == (other.id, other.generation)

    def __hash__(self) -> int:
        return hash((self.id, self.generation))

    def _require_live(self) -> None:
        if self._heap._owner_generation(self.id) != self.generation:
            raise StaleBlock(f"agent {self.id} (generation {self.generation}) was recycled", "SH_EOWNER")

    # ---- memory ----

    def touch(self) -> None:
        """Mark the agent active now (idle time drives offloading)."""
        self._heap._owner_touch(self.id, self.generation)

    def renew(self, lease: float) -> None:
        """Move the lease deadline to ``lease`` seconds from now."""
        if lease <= 0:
            raise ValueError(f"lease must be positive seconds, not {lease!r}")
        self._update_index(lambda entries: None, lease_deadline=time.time() + lease)

    # ---- named entries ----

    def put(self, name: str, data: Any) -> None:
        """Copy bytes-like ``data`` into the agent's pages under ``name``,
        replacing what was there."""
        _check_name(name)
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError(f"put() takes bytes-like data, not {type(data).__name__}") from None
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        view = view.cast("B")
        blk = self.alloc(max(view.nbytes, 1))
        if view.nbytes:
            blk[: view.nbytes] = view
        replaced: list[tuple[int, int]] = []

        def change(entries: dict[str, tuple[int, int]]) -> None:
            if name in entries:
                replaced.append(entries[name])
            entries[name] = (blk.offset, view.nbytes)

        try:
            self._update_index(change)
        except BaseException:
            blk.free()
            raise
        for offset, size in replaced:
            self._free_entry(offset, size)

    def get(self, name: str) -> memoryview:
        """A zero-copy view of entry ``name``. While it is alive the agent is
        pinned: complete() defers its recycle until the view is released."""
        entries = self._read_index()[2]
        if name not in entries:
            raise KeyError(f"agent {self.id} has no entry {name!r}")
        offset, size = entries[name]
        blk = self._heap.resolve(Handle(offset, size, self.id, self.generation))
        return memoryview(blk)

    def delete(self, name: str) -> None:
        """Remove entry ``name`` and free its bytes."""
        removed: list[tuple[int, int]] = []

        def change(entries: dict[str, tuple[int, int]]) -> None:
            if name not in entries:
                raise KeyError(f"agent {self.id} has no entry {name!r}")
            removed.append(entries.pop(name))

        self._update_index(change)
        for offset, size in removed:
            self._free_entry(offset, size)

    def names(self) -> list[str]:
        """Names of the agent's entries."""
        return list(self._read_index()[2])

    def items(self) -> Iterator[tuple[str, memoryview]]:
        """(name, view) pairs; each view pins the agent while alive."""
        for name in self.names():
            yield name, self.get(name)

    def _free_entry(self, offset: int, size: int) -> None:
        try:
            self._heap.resolve(Handle(offset, size, self.id, self.generation)).free()
        except (InvalidHandle, StaleBlock):
            pass  # already gone with a concurrent update

    # ---- the index ----

    def _read_index_word(self) -> tuple[int, tuple[str, float, dict[str, tuple[int, int]]]]:
        """The index and the user word it was read under (0: no index yet)."""
        for _ in range(100):
            got = self._heap._owner_held_read(self.id, self.generation)
            if got is None:
                raise StaleBlock(f"agent {self.id} (generation {self.generation}) was recycled", "SH_EOWNER")
            word, data = got
            if not word:
                return 0, (self.kind, 0.0, {})
            try:
                return word, _decode_index(data)
            except (ValueError, UnicodeDecodeError, struct.error):
                continue  # a block reused at the same place between the reads: read again
        raise AgentStateError(f"agent {self.id}'s index keeps changing under concurrent updates")

    def _read_index(self) -> tuple[str, float, dict[str, tuple[int, int]]]:
        return self._read_index_word()[1]

    def _update_index(self, change: Any, lease_deadline: float | None = None) -> None:
        for _ in range(100):
            word, (kind, lease, entries) = self._read_index_word()
            change(entries)
            data = _encode_index(kind, lease if lease_deadline is None else lease_deadline, entries)
            if self._heap._owner_held_swap(self.id, self.generation, word, data):
                return
        raise AgentStateError(f"agent {self.id}'s index keeps changing under concurrent updates")

    # ---- life ----

    def stats(self) -> dict[str, Any]:
        """Bytes, pages and peak per partition, block count, pins, state."""
        return self._heap._owner_stats(self.id, self.generation, self.kind)

    def complete(self) -> dict[str, Any]:
        """Return all of the agent's memory in O(pages) and fire the complete
        and recycle hooks. If a view or array still pins it, the recycle waits
        for the last pin (or the next sweep). Returns the final stats, read in
        the same pass over the agent's pages that gives them back."""
        try:
            recycled, final = self._heap._owner_complete(self.id, self.generation, self.kind)
        except StaleBlock:
            message = f"agent {self.id} (generation {self.generation}) was recycled"
            raise StaleBlock(message, "SH_EOWNER") from None
        hooks = self._hooks
        if hooks["complete"]:
            self._heap._fire("complete", self, final)
        if not recycled:
            self._heap._remember_deferred(self, final)
        elif hooks["recycle"]:
            self._heap._fire("recycle", self, final)
        return final

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._heap._owner_generation(self.id) == self.generation and self.state == "live":
            self.complete()


def _check_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"entry names are str, not {type(name).__name__}")
    if not name or len(name.encode()) > _MAX_NAME:
        raise ValueError(f"entry name must be 1 to {_MAX_NAME} bytes of UTF-8")


def read_kind(heap: Heap, agent_id: int, generation: int) -> str:
    """The kind name stored in an agent's index ("?" if it has no index yet)."""
    probe = Agent(heap, agent_id, generation, "?")
    try:
        return probe._read_index()[0]
    except (StaleBlock, AgentStateError):
        return "?"


def read_lease(heap: Heap, agent_id: int, generation: int, word: int) -> float:
    """The lease deadline in an index word's block, 0.0 if none or unreadable."""
    if word == 0:
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
