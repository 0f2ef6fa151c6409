"""What sweeps do about offloaded agents: drop those whose lease ran out in
the store, forget those restored in another heap (restore_from), and drop
registry entries and blobs that name no offloaded agent (an offload killed
half way, an agent completed while offloaded)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from swarmheap import offload_entries
from swarmheap.errors import (
    AgentStateError,
    HeapCorrupt,
    StaleBlock,
    StoreFull,
    StoreUnavailable,
)
from swarmheap.offload_entries import MOVED
from swarmheap.registry import Registry

if TYPE_CHECKING:
    from swarmheap.heap import Heap

__all__ = ["delete_blob", "drop_expired", "forget_completed", "forget_moved", "forget_stale", "moved_away"]

log = logging.getLogger("swarmheap")


def drop_expired(heap: Heap, agent_id: int, generation: int, unreachable: set[str]) -> bool:
    """Reclaim an offloaded agent whose lease ran out: its blob, its registry
    entry, its slot. The state goes DEAD first, so that a restore racing it
    stops; a kill after that leaves a dead slot the next sweep recycles and a
    registry entry a full sweep drops with its blob. True if reclaimed; False
    if a restore began first, or the store could not delete (the next sweep
    tries again)."""
    try:
        entry = offload_entries.entry_of(heap, agent_id, generation)
    except HeapCorrupt:
        return False  # damaged since the sweep read its deadline: whoever restores it hears so
    if entry is not None and entry.url in unreachable:
        return False
    try:
        heap._owner_set_state(agent_id, generation, "offloaded", "dead")
    except (AgentStateError, StaleBlock):
        return False
    if entry is not None:
        try:
            heap._store_for(entry.url).delete(entry.key)
        except (StoreUnavailable, StoreFull) as exc:
            unreachable.add(entry.url)
            log.warning("swarmheap: could not delete an expired agent's snapshot from %s: %s", entry.url, exc)
            return False  # the dead slot and the entry stay: the next sweep recycles, a full one retries
    offload_entries.drop_entry(heap, agent_id, generation)
    return heap._owner_recycle(agent_id, generation)


def moved_away(
    heap: Heap,
    agent_id: int,
    generation: int,
    unreachable: set[str],
    listings: dict[str, set[str]] | None = None,
) -> bool:
    """Was this offloaded agent restored elsewhere (restore_from marks its
    key)? A store that fails is put in ``unreachable`` and not asked again
    by this sweep: each ask of a host that does not answer waits out the
    connect timeout, once per offloaded agent. With ``listings`` (a full
    sweep's, per store URL) a store is listed once for all of this heap's
    keys, not asked twice per offloaded agent."""
    found = offload_entries.where_if_readable(heap, agent_id, generation)
    if found is None or found[0] in unreachable:
        return False
    url, key, _ = found
    try:
        store = heap._store_for(url)
        prefix = offload_entries.key_prefix(heap)
        if listings is not None and key.startswith(prefix):
            moved = listings.get(url)
            if moved is None:
                moved = listings[url] = _moved_keys(store.keys(prefix))
            return key in moved
        # both: a restore_from that lost to this heap's own restore leaves its
        # mark beside a blob this heap may offload again under the same key
        return store.get(key + MOVED) is not None and store.get(key) is None
    except Exception as exc:
        unreachable.add(url)
        log.warning("swarmheap: store %s did not answer this sweep, asked again at the next: %s", url, exc)
        return False


def _moved_keys(keys: list[str]) -> set[str]:
    """The keys of one listing that are marked moved and whose blob is gone."""
    listed = set(keys)
    return {k[: -len(MOVED)] for k in listed if k.endswith(MOVED) and k[: -len(MOVED)] not in listed}


def forget_moved(heap: Heap, agent_id: int, generation: int, unreachable: set[str]) -> bool:
    """Drop what this heap keeps of an agent restored elsewhere: its blob,
    the mark, the registry entry. False (nothing dropped) if the store fails."""
    found = offload_entries.where(heap, agent_id, generation)
    if found and not all(
        delete_blob(heap, found[0], key, "a moved agent's snapshot", unreachable)
        for key in (found[1], found[1] + MOVED)
    ):
        return False
    offload_entries.drop_entry(heap, agent_id, generation)
    return True


def forget_stale(heap: Heap, unreachable: set[str] | None = None) -> int:
    """Registry entries (and their blobs) of agents that are not offloaded: an
    offload killed between writing the blob and giving back the memory, or
    an agent completed since. A full sweep calls this; returns how many. The
    blob goes first and the entry after, so that a store that fails (put in
    ``unreachable``, not asked again) leaves the entry for the next sweep
    rather than a blob nothing names."""
    unreachable = set() if unreachable is None else unreachable
    gone = 0
    registry = Registry(heap)
    ended: dict[tuple[int, int], bool] = {}  # writer (pid, start time) -> has it ended: asked once a sweep
    for name in registry.names("offload/"):
        parsed_name = offload_entries.agent_of(heap, name)
        if parsed_name is None:
            continue  # not a name offload() writes: damage, which where() reports to whoever asks
        aid, gen = parsed_name
        judged = None  # an entry of an agent gone: no offload of it can write another under its name
        if heap._owner_generation(aid) == gen:
            raw = registry.get(name)
            if raw is None:
                continue  # dropped since the listing
            if heap._owner_state(aid) in ("offloaded", "restoring"):
                continue
            try:
                entry: offload_entries.Entry | None = offload_entries.parse_entry(raw)
            except ValueError:
                entry = None
            if entry is not None:
                if entry.writer not in ended:
                    ended[entry.writer] = offload_entries.writer_gone(entry)
                if ended[entry.writer]:
                    # the writer's end, then the state again: a process that
                    # had ended cannot make the agent offloaded after this
                    # reads it live, where one read live before could finish
                    if heap._owner_state(aid) != "live":
                        continue
                elif time.time() - entry.written < offload_entries.STALE_AFTER:
                    # live, and its entry young with its writer running: an
                    # offload under way in some process (entry, blob, then
                    # memory), not one a kill left behind
                    continue
            judged = (raw, entry)
        gone += _forget(heap, name, aid, gen, unreachable, judged)
    return gone


def forget_lost_marks(heap: Heap, listings: dict[str, set[str]], unreachable: set[str]) -> int:
    """Delete restore_from's marks beside this heap's keys that no registry
    entry of the heap names: a restore_from that lost its race to a touch
    here leaves its mark beside a key whose blob the touch took, and nothing
    read it again (one small key left in the store per lost race). A mark
    matters while an entry names its key: to the touch that lost to a
    restore_from, and to the sweep that finds the agent moved away. Each
    store the heap knows is listed once per full sweep (``listings``, shared
    with moved_away). Returns how many went."""
    prefix = offload_entries.key_prefix(heap)
    named: set[str] = set()
    for name in Registry(heap).names("offload/"):
        found = offload_entries.agent_of(heap, name)
        where = offload_entries.where_if_readable(heap, *found) if found is not None else None
        if where is not None:
            named.add(where[1])
    gone = 0
    for url, store in list(heap._stores.items()):
        if url in unreachable:
            continue
        try:
            moved = listings.get(url)
            if moved is None:
                moved = listings[url] = _moved_keys(store.keys(prefix))
            for key in moved - named:
                store.delete(key + MOVED)
                gone += 1
        except Exception as exc:
            unreachable.add(url)
            log.warning(
                "swarmheap: store %s did not answer this sweep, asked again at the next: %s", url, exc
            )
    return gone


def forget_completed(heap: Heap, agent_id: int, generation: int) -> None:
    """The blob and registry entry of an agent completed while offloaded: at
    once, not at the next full sweep. A store that fails leaves both to
    that sweep (forget_stale)."""
    _forget(heap, offload_entries.entry_name(agent_id, generation), agent_id, generation, set())


def _forget(
    heap: Heap,
    name: str,
    agent_id: int,
    generation: int,
    unreachable: set[str],
    judged: tuple[bytes, offload_entries.Entry | None] | None = None,
) -> bool:
    """Delete the blob the entry ``name`` names, then the entry; False (both
    kept) if the store fails, which then goes into ``unreachable``. With
    ``judged`` (the entry as the caller read it, and parsed: None if it
    does not read), that entry's blob, and the entry only if it is still
    that one: another offload's, written since, is its own."""
    only = None
    if judged is None:
        found = offload_entries.where_if_readable(heap, agent_id, generation)
    else:
        only, entry = judged
        found = (entry.url, entry.key, entry.kind) if entry is not None else None
    if found and not delete_blob(heap, found[0], found[1], "a stale snapshot", unreachable):
        return False
    return offload_entries.drop_entry(heap, agent_id, generation, name=name, only=only)


def delete_blob(heap: Heap, url: str, key: str, what: str, unreachable: set[str] | None = None) -> bool:
    """Delete blob ``key`` (``what``, for the log) from the store at ``url``;
    False if the store fails (logged, and the URL put in ``unreachable``,
    which is not asked again)."""
    if unreachable is not None and url in unreachable:
        return False
    try:
        heap._store_for(url).delete(key)
    except (StoreUnavailable, StoreFull, HeapCorrupt) as exc:  # HeapCorrupt: a URL no store has
        if unreachable is not None:
            unreachable.add(url)
        log.warning("swarmheap: could not delete %s from %s: %s", what, url, exc)
        return False
    return True
