"""Snapshots of agents: an agent's state as a blob (snapshot.py's frame), of
a live agent from its entries or of an offloaded one from its blob in the
store, and a new agent made from a blob."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from swarmheap import index_format, offload_entries, snapshot
from swarmheap.errors import CorruptSnapshot, IndexMoved

if TYPE_CHECKING:
    from swarmheap.agents import Agent
    from swarmheap.dictionaries import Dictionaries
    from swarmheap.heap import Heap
    from swarmheap.stores import Store

__all__ = ["parsed", "restore_blob", "snapshot_of", "snapshot_stored", "stored_state"]


# Readings of a live agent's entries a snapshot makes while other writers
# change them before it gives up (IndexMoved).
SNAPSHOT_TRIES = 8


def snapshot_of(
    agent: Agent,
    codec: str = "zstd",
    level: int | None = None,
    deadline: float | bool | None = False,
    use_dictionary: bool = True,
) -> tuple[bytes, Any, int]:
    """The agent's blob, the dictionary it names (None if none, or not
    ``use_dictionary``), and the index word it is of: its entries as of
    that one word, read again while another writer changes them (a view
    taken after a delete freed its block could see another entry's bytes,
    and an entry deleted after the names were read was left out).
    ``deadline`` is its lease's, if the caller read it already."""
    if deadline is False:
        deadline = agent.lease_deadline
    lease_left = max(deadline - time.time(), 0.0) if deadline else None
    dictionaries: Dictionaries = agent.heap._dictionaries
    heap = agent.heap
    for _ in range(SNAPSHOT_TRIES):
        word = heap._owner_word(agent.id, agent.generation) or 0
        with contextlib.ExitStack() as state:
            # items() passes over an entry deleted after the names were read:
            # the word read again says whether anything changed meanwhile
            with contextlib.ExitStack() as views:  # the entries are copied once, into the state
                entries = [(name, views.enter_context(view)) for name, view in agent.items()]
                raw = state.enter_context(snapshot.encoded_state(agent.kind, lease_left, entries))
            if (heap._owner_word(agent.id, agent.generation) or 0) != word:
                continue
            dictionary = dictionaries.for_kind(agent.kind) if codec == "zstd" and use_dictionary else None
            blob = snapshot.pack(raw, codec, level, dictionary)
            if codec == "zstd":
                dictionaries.note(agent.kind, raw)
        return blob, dictionary, word
    raise IndexMoved(f"agent {agent.id} kept changing under other writers while its snapshot was taken")


@contextlib.contextmanager
def stored_state(agent: Agent) -> Iterator[snapshot.State | None]:
    """An offloaded agent's state, read from its blob in the store without
    bringing it back (kind, lease left as it ran on in the store, entries
    as views that live for the ``with``); None if the agent is not
    offloaded here now (live, restoring, or its blob taken by a restore
    since the registry was read): the caller touches it instead."""
    heap = agent.heap
    entry = (
        offload_entries.entry_of(heap, agent.id, agent.generation)
        if heap._owner_state(agent.id) == "offloaded"
        else None
    )
    if entry is None:
        yield None
        return
    store = heap._store_for(entry.url)
    blob = store.get(entry.key)
    if blob is None:
        yield None
        return
    with parsed(heap, blob, [store]) as (kind, lease_left, entries):
        if entry.deadline is not None:
            lease_left = max(entry.deadline - time.time(), 0.0)
        yield kind, lease_left, entries


def snapshot_stored(agent: Agent, codec: str, level: int | None, use_dictionary: bool = True) -> bytes | None:
    """The snapshot of an offloaded agent, made from its blob in the store
    without bringing it back: a backup or a move of agents the policy sent
    away would otherwise pull each into the arena (and fail with
    PartitionFull under the pressure that sent it). None if the agent is
    not offloaded here now (see stored_state)."""
    with stored_state(agent) as state:
        if state is None:
            return None
        kind, lease_left, entries = state
        with snapshot.encoded_state(kind, lease_left, entries) as raw:
            dictionaries: Dictionaries = agent.heap._dictionaries
            dictionary = dictionaries.for_kind(kind) if codec == "zstd" and use_dictionary else None
            out = snapshot.pack(raw, codec, level, dictionary)
            if codec == "zstd":
                dictionaries.note(kind, raw)
    return out


@contextlib.contextmanager
def parsed(heap: Heap, blob: bytes, stores: list[Store]) -> Iterator[snapshot.State]:
    """The state in a blob, checked whole before anything is allocated; its
    entries are views that live for the ``with`` (snapshot.unpacked())."""
    with snapshot.unpacked(blob, lambda dict_id: heap._dictionaries.lookup(dict_id, stores)) as raw:
        kind, lease_left, entries = snapshot.decode_state(raw)
        try:
            index_format.check_kind(kind)
            for name, _ in entries:
                index_format.check_name(name)
        except (TypeError, ValueError) as exc:
            raise CorruptSnapshot(f"the snapshot holds a state this heap cannot take: {exc}") from None
        yield kind, lease_left, entries


def restore_blob(heap: Heap, blob: bytes, stores: list[Store] | None = None) -> Agent:
    with parsed(heap, blob, stores or []) as (kind, lease_left, entries):
        agent = heap.spawn(kind, lease=lease_left if lease_left else None)
        try:
            if lease_left == 0.0:  # ran out before the snapshot: a sweep takes it, as it would the source
                agent._update_index(lambda e: None, lease_deadline=time.time())
            if entries:
                agent.put_many(dict(entries))  # one index update for all of them
        except BaseException:
            agent.complete()  # nothing of a failed restore stays
            raise
    return agent
