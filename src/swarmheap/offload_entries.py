"""Where an offloaded agent is: its entry in the heap registry (the store's
URL, the key, the kind, when it was written and by which process, its
lease's deadline), and the store keys offloads write. One home for the
entry's format."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, NamedTuple

from swarmheap import _core
from swarmheap.errors import HeapCorrupt, PartitionFull
from swarmheap.registry import Registry

if TYPE_CHECKING:
    from swarmheap.agents import Agent
    from swarmheap.heap import Heap

__all__ = [
    "MOVED",
    "Entry",
    "agent_key",
    "agent_of",
    "drop_entry",
    "entry_bytes",
    "entry_name",
    "entry_of",
    "key_prefix",
    "lease_deadline",
    "offloaded",
    "parse_entry",
    "where",
    "where_if_readable",
    "writer_gone",
]

log = logging.getLogger("swarmheap")


def key_prefix(heap: Heap) -> str:
    return f"swarmheap/agent/{heap._token}/"


def agent_key(heap: Heap, agent: Agent) -> str:
    return f"{key_prefix(heap)}{agent.id}/{agent.generation}"


MOVED = "/moved"  # the suffix of restore_from's mark beside a key (claim_moved)


# Seconds before a live agent's registry entry is taken for one a killed
# offload left: younger, it is an offload under way in some process (entry,
# blob, then memory), or a restore's about to be dropped.
STALE_AFTER = 300.0


def entry_name(agent_id: int, generation: int) -> str:
    return f"offload/{agent_id}/{generation}"


class Entry(NamedTuple):
    """An offloaded agent's registry entry."""

    url: str  # of the store its blob is in
    key: str
    kind: str
    written: float  # epoch seconds; 0 if it does not read
    deadline: float | None  # of its lease, which runs on in the store
    raw: bytes  # as read: a restore removes the entry only if it is still this one
    # the process that wrote it (pid, start time); (0, 0): not said (format 2 or older)
    writer: tuple[int, int] = (0, 0)


_ENTRY_V3 = "3"  # first line of an entry that names its writer
_ENTRY_V2 = "2"  # of one with a deadline; an older one starts with its store URL


def entry_bytes(url: str, key: str, kind: str, written: float, deadline: float | None) -> bytes:
    # the kind last: a kind name may hold newlines (the entry of format 1
    # put it third, and one that did could not be read past it)
    pid, start = _own_process()
    return f"{_ENTRY_V3}\n{url}\n{key}\n{written}\n{deadline or ''}\n{pid} {start}\n{kind}".encode()


_own: tuple[int, int] = (0, 0)  # this process's (pid, start time), read again in a forked child


def _own_process() -> tuple[int, int]:
    global _own
    pid = os.getpid()
    if _own[0] != pid:
        _own = (pid, _core.process_start_time(pid) or 0)
    return _own


def writer_gone(entry: Entry) -> bool:
    """Has the process that wrote ``entry`` ended (pid and start time, so a
    reused pid is not taken for it)? False if the entry does not say who
    wrote it, or /proc cannot tell."""
    pid, start = entry.writer
    if not (0 < pid < 1 << 31 and 0 < start < 1 << 64):  # not said, or not a process's (damage)
        return False
    if (pid, start) == _own_process():  # this one: no read of /proc (tens of microseconds)
        return False
    return _core.process_alive(pid, start) is False


def parse_entry(data: bytes) -> Entry:
    """ValueError (UnicodeDecodeError included) if it does not read as one."""
    text = data.decode()
    if text.startswith(_ENTRY_V3 + "\n"):
        _, url, key, written, deadline, writer, kind = text.split("\n", 6)
        pid, _, start = writer.partition(" ")
        lease = float(deadline) if deadline else None
        return Entry(url, key, kind, _seconds(written), lease, data, (int(pid), int(start)))
    if text.startswith(_ENTRY_V2 + "\n"):
        _, url, key, written, deadline, kind = text.split("\n", 5)
        return Entry(url, key, kind, _seconds(written), float(deadline) if deadline else None, data)
    url, key, kind, written = text.split("\n", 3)  # format 1: no deadline
    return Entry(url, key, kind, _seconds(written), None, data)


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def entry_of(heap: Heap, agent_id: int, generation: int) -> Entry | None:
    """An offloaded agent's registry entry; None if there is none,
    HeapCorrupt if it does not read as one."""
    data = Registry(heap).get(entry_name(agent_id, generation))
    if data is None:
        return None
    try:
        return parse_entry(data)
    except ValueError:
        raise HeapCorrupt(
            f"the heap registry's entry for offloaded agent {agent_id} (generation {generation}) is damaged: "
            "where its snapshot is, is lost"
        ) from None


def where(heap: Heap, agent_id: int, generation: int) -> tuple[str, str, str] | None:
    """(store URL, key, kind) of an offloaded agent, from the registry; None
    if it names none, HeapCorrupt if its entry does not read as one."""
    entry = entry_of(heap, agent_id, generation)
    return None if entry is None else (entry.url, entry.key, entry.kind)


def lease_deadline(heap: Heap, agent_id: int, generation: int) -> float | None:
    """An offloaded agent's lease deadline (epoch seconds), None if it has no
    lease (or its entry does not say, or does not read)."""
    try:
        entry = entry_of(heap, agent_id, generation)
    except HeapCorrupt:
        return None
    return None if entry is None else entry.deadline


def where_if_readable(heap: Heap, agent_id: int, generation: int) -> tuple[str, str, str] | None:
    """where(), None for a damaged entry too: for listings and sweeps, which
    go on past it (restore() is where it is reported)."""
    try:
        return where(heap, agent_id, generation)
    except HeapCorrupt:
        return None


def agent_of(heap: Heap, name: str) -> tuple[int, int] | None:
    """(id, generation) from a registry name offload/ID/GEN; None for a name
    that is not one (the registry is shared memory: read as untrusted)."""
    try:
        _, agent_id, generation = name.split("/")
        aid, gen = int(agent_id), int(generation)
    except ValueError:
        return None
    return (aid, gen) if 0 <= aid < heap._max_owners() and 0 < gen < 1 << 32 else None


def offloaded(heap: Heap) -> list[dict[str, Any]]:
    """The offloaded agents the registry names, with their store and key."""
    out = []
    for name in Registry(heap).names("offload/"):
        parsed_name = agent_of(heap, name)
        if parsed_name is None:
            continue  # not a name offload() writes
        agent_id, generation = parsed_name
        found = where_if_readable(heap, agent_id, generation)
        if found and heap._owner_state(agent_id) in ("offloaded", "restoring"):
            out.append(
                {
                    "id": agent_id,
                    "generation": generation,
                    "store": found[0],
                    "key": found[1],
                    "kind": found[2],
                }
            )
    return out


def drop_entry(
    heap: Heap, agent_id: int, generation: int, *, name: str | None = None, only: bytes | None = None
) -> bool:
    """Remove the agent's registry entry (``name``: as a listing read it,
    else its own name), if it still holds ``only`` when that is given. False
    if it stays: another writer's entry is there now, or `system` has no
    room for the registry's copy of its shard (a removal writes one); then
    it is left for a full sweep (forget_stale), and a complete(), a restore
    or a sweep, the ways out of a full heap, does not fail for it."""
    registry = Registry(heap)
    key = name or entry_name(agent_id, generation)
    try:
        if only is not None:
            return registry.remove_if(key, only)
        registry.remove(key)
    except PartitionFull as exc:
        log.warning("swarmheap: agent %d's offload entry stays for a later sweep: %s", agent_id, exc)
        return False
    return True
