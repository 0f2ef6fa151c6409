"""Offload and restore of agents: an agent's state to a store and its
memory back to the heap, and back again into its own slot.

What lives where:
- an offloaded agent keeps its slot and generation in the owner table,
  state `offloaded`, and no memory; its blob is in a store;
- the heap's registry names, for each offloaded agent, the store's URL and
  the key (offload_entries.py), and caches the trained zstd dictionaries
  (dictionaries.py), so that any process of the heap finds both;
- a dictionary is also written to the store before a blob that needs it,
  so another node can read the blob.

Offload writes the blob first and gives back the memory second, so a crash
at any point leaves the agent in memory or restorable from the store. What
sweeps do with offloaded agents is offload_sweep.py's; the watermark policy
is offload_policy.py's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from swarmheap import offload_entries, offload_sweep
from swarmheap._core import SEALED_WORD, stale_agent
from swarmheap._extras import available
from swarmheap.agent_snapshot import parsed, snapshot_of
from swarmheap.errors import AgentStateError, IndexMoved, ReadOnlyHeap, StaleBlock
from swarmheap.offload_entries import MOVED, Entry
from swarmheap.registry import Registry
from swarmheap.stores import SQLiteStore, Store, check_store

if TYPE_CHECKING:
    from swarmheap.agents import Agent
    from swarmheap.heap import Heap

__all__ = ["claim_moved", "default_codec", "default_store", "offload", "restore_in_place"]

log = logging.getLogger("swarmheap")

OFFLOAD_ZSTD_LEVEL = 1


def default_codec() -> str:
    """An offload's codec when none is named: zstd when the `compress` extra
    is installed, else none, so that offloading to the embedded default store
    (SQLite) needs no extra; naming "zstd" without the extra names it."""
    return "zstd" if available("zstandard") else "none"


# An offload whose agent changed after its snapshot (a put landed) snapshots
# again; an agent written to on every try is left in memory after these.
_OFFLOAD_TRIES = 3


def _require_live(agent: Agent) -> None:
    state = agent.state
    if state == "gone":  # recycled: what every other call on it raises
        raise stale_agent(agent.id, agent.generation)
    if state != "live":
        raise AgentStateError(f"agent {agent.id} is {state}, not live: only a live agent is offloaded")


def offload(agent: Agent, store: Store, codec: str | None = None, level: int | None = None) -> dict[str, Any]:
    """agent.offload() (``codec`` None: default_codec())."""
    check_store(store)
    if codec is None:
        codec = default_codec()
    heap = agent.heap
    if heap.read_only:
        raise ReadOnlyHeap("the heap is attached read-only: offload() writes; attach it without read_only")
    _require_live(agent)
    pins = heap._owner_info(agent.id)
    if pins and pins["pins"]:
        raise AgentStateError(
            f"agent {agent.id} has {pins['pins']} pin(s) (views from get() or arrays) open: not offloaded"
        )
    if level is None and codec == "zstd":
        level = OFFLOAD_ZSTD_LEVEL
    tries = 1
    with heap._moving_lock:  # one offload at a time in this process (see _offload_once's clean-up)
        # again under the lock: another thread's offload of it (two threads'
        # offload policies picking the same idle agent) may have won since
        # the check above, and a snapshot of an offloaded agent restores it:
        # room taken in the middle of making room, PartitionFull from a sweep
        _require_live(agent)
        while True:
            try:
                final, blob, key = _offload_once(agent, store, codec, level)
                break
            except IndexMoved:
                if tries == _OFFLOAD_TRIES:
                    raise
                tries += 1
    heap._remember_store(store)
    final["kind"] = agent.kind
    final["blob_bytes"] = len(blob)
    # where it went: heap.restore_from(store, key) elsewhere takes it from there
    final["store"] = store.url
    final["key"] = key
    return final


def _offload_once(
    agent: Agent, store: Store, codec: str, level: int | None
) -> tuple[dict[str, Any], bytes, str]:
    """One snapshot, write and give-back; IndexMoved (the agent stays in
    memory, nothing of this try in the store) if an update landed after the
    snapshot, which the give-back would have lost."""
    heap = agent.heap
    deadline = agent.lease_deadline
    # and the word the snapshot is of: the core gives the memory back only if it still reads so
    blob, dictionary, word = snapshot_of(agent, codec, level, deadline)
    # a key of this try's own: a failed try deletes its blob, and under a key
    # shared by every offload of the agent that took the blob of another
    # process's offload that had just won (the agent restorable from nowhere)
    key = f"{offload_entries.agent_key(heap, agent)}/{os.urandom(4).hex()}"
    if dictionary is not None:
        heap._dictionaries.publish(dictionary, store)
    # The registry first, the blob second, the memory last: a kill after any
    # step leaves the agent in memory (a full sweep drops the registry entry
    # and the blob of a live agent) or offloaded and restorable, and nothing
    # in the store that the registry does not name.
    registry = Registry(heap)
    # the lease's deadline goes with it: the clock runs on while offloaded, and
    # a sweep drops an agent (and its blob) whose lease ran out in the store
    entry = offload_entries.entry_bytes(store.url, key, agent.kind, time.time(), deadline)
    _claim_entry(registry, agent, entry)
    store.put(key, blob)
    try:
        final = heap._owner_offload(agent.id, agent.generation, agent.kind, expected_word=word)
    except BaseException:
        # only while the agent is surely still in memory: an exception can
        # arrive after the core marked it OFFLOADED (a KeyboardInterrupt lands
        # on the next bytecode), and then the blob is all there is of it. An
        # entry left behind for a live agent, a full sweep drops.
        try:
            in_memory = agent.state == "live"
        except Exception:
            in_memory = False
        # and only what this try wrote: a second offload of the agent (a
        # thread of this process, before the lock) that won meanwhile had its
        # entry and blob taken by this clean-up, and the agent, offloaded,
        # could not be restored ("the heap's registry does not say where")
        if in_memory and registry.remove_if(offload_entries.entry_name(agent.id, agent.generation), entry):
            store.delete(key)
        raise
    return final, blob, key


# Restores an agent's touch makes while other processes of the heap restore
# and offload it again under it, each from the newest blob it finds.
RESTORE_TRIES = 8


def _claim_entry(registry: Registry, agent: Agent, entry: bytes) -> None:
    """Write the offload's registry entry, if no other offload's is there:
    two processes offloading one agent at once each wrote theirs over the
    other's, and a restore between the winner's memory going and the
    loser's blob being written read the loser's entry and found no blob
    (the agent restorable from nowhere, as it seemed). This one takes the
    place of an entry that no offload under way holds: one whose writer
    has ended while the agent is still live (a killed offload's; its blob
    is dropped too), one older than STALE_AFTER, and one a restore in this
    process could not drop (no room in `system`). A restore in another
    live process that could not drop its entry holds offloads off until a
    full sweep drops it (STALE_AFTER)."""
    name = offload_entries.entry_name(agent.id, agent.generation)
    for _ in range(3):
        token, there = registry.get_ref(name)
        killed = None  # the entry of an offload whose process ended before the memory went
        if there is not None and there not in agent.heap._left_entries:
            try:
                old = offload_entries.parse_entry(there)
            except ValueError:
                old = None  # unreadable: no offload under way wrote it
            # the writer's end before the agent's state: a process that has
            # ended cannot make the agent offloaded after this reads it live
            if old is not None and offload_entries.writer_gone(old) and agent.state == "live":
                killed = old
            elif old is not None and time.time() - old.written < offload_entries.STALE_AFTER:
                raise AgentStateError(
                    f"agent {agent.id} is being offloaded or restored by another process: not offloaded"
                )
        if registry.swap(name, token, entry):
            agent.heap._left_entries.discard(there or b"")
            if killed is not None:  # its blob: nothing else names it (its key was that try's own)
                offload_sweep.delete_blob(agent.heap, killed.url, killed.key, "a killed offload's snapshot")
            return
    raise AgentStateError(
        f"agent {agent.id}'s offload entry keeps changing under other processes: not offloaded"
    )


def restore_in_place(agent: Agent, tries: int = RESTORE_TRIES) -> bool:
    """Bring an offloaded agent back, unless another thread of this process
    did while this one waited for it: True if this call restored it."""
    with agent.heap._moving_lock:
        if _state_unless_gone(agent) not in ("offloaded", "restoring"):
            return False
        _restore_in_place(agent, tries)
        return True


def _state_unless_gone(agent: Agent) -> str:
    """The agent's state; StaleBlock (as any use after recycle) if another
    thread or process completed it while this restore began."""
    state = agent.state
    if state == "gone":
        raise stale_agent(agent.id, agent.generation)
    return state


def _restore_in_place(agent: Agent, tries: int = RESTORE_TRIES) -> None:
    """Bring an offloaded agent back into its own slot, same id and generation.

    Deleting the blob is the claim, as in restore_from (claim_moved): the
    entries go back while the agent is RESTORING, then the delete, then
    LIVE. A delete that finds no blob lost it to another heap's restore_from
    if the key is marked moved (the memory goes back and the agent is
    reported moved), else to another process of this heap restoring it
    too. No one here sees the agent live before the blob is ours."""
    heap = agent.heap
    # before the registry is read: the entries go in only while the agent is
    # in the offload whose blob this restore reads (restored and offloaded
    # again meanwhile, its blocks and its word's seal are another's)
    epoch = heap._owner_offloads(agent.id)
    for _ in range(5):
        entry = offload_entries.entry_of(heap, agent.id, agent.generation)
        if entry is not None:
            break
        # completed meanwhile: its entry went with it (StaleBlock); restored
        # by another process since its state was read, and its entry dropped
        # (live), and perhaps offloaded again since (read the entry again)
        if _state_unless_gone(agent) == "live":
            return
    else:
        raise AgentStateError(f"agent {agent.id} is offloaded but the heap's registry does not say where")
    url, key = entry.url, entry.key
    store = heap._store_for(url)
    blob = store.get(key)
    if blob is None:
        _state_unless_gone(agent)  # a complete deletes the blob of an offloaded agent
        if store.get(key + MOVED) is not None:
            # a restorer here that died, or is about to learn it lost, gives it back;
            # one that finished (LIVE) took the blob and the mark is a loser's
            if _unrestore(heap, agent, entry.kind) or agent.state != "live":
                raise _moved(agent)
            return
        state = agent.state
        if state == "live":
            return  # another process restored it (and took the blob) since the registry was read
        if state == "offloaded" and tries > 1:
            newer = offload_entries.entry_of(heap, agent.id, agent.generation)
            if newer is not None and newer.key != key:
                # restored and offloaded again elsewhere since: its newer blob
                _restore_in_place(agent, tries - 1)
                return
        if state != "restoring":
            raise AgentStateError(f"agent {agent.id}'s snapshot is not in {url} under {key!r}: deleted")
        # a restorer here took the blob after putting every entry back, and
        # died (or is about) before marking the agent live: finish for it
        _finish(heap, agent, entry)
        return
    began = again = False  # this call moved it from OFFLOADED to RESTORING; to start again
    with parsed(heap, blob, [store]) as (kind, lease_left, entries):
        # RESTORING while the entries go back: a restorer killed half way leaves
        # it RESTORING, blob and registry entry in place, and the next touch
        # (any process) puts every entry again (a put replaces) and finishes
        state = agent.state
        if state == "offloaded":
            try:
                heap._owner_set_state(agent.id, agent.generation, "offloaded", "restoring")
                state = "restoring"
            except AgentStateError:
                state = agent.state  # another process began first, or a sweep took it
            except StaleBlock:
                state = "gone"
            else:
                began = True
        if state == "restoring" and not began:
            # another restorer's, alive or killed: of the blob this one holds,
            # or of a newer one (restored and offloaded again since this one
            # read the registry), whose entries this one's must not replace
            now = offload_entries.entry_of(heap, agent.id, agent.generation)
            if now is None or now.raw != entry.raw:
                if tries > 1:
                    _restore_in_place(agent, tries - 1)
                    return
                raise AgentStateError(f"agent {agent.id} keeps being restored and offloaded: touch it again")
        if state == "live":
            return  # another process restored it meanwhile: its entries may be newer than the blob's
        if state == "gone":  # completed by another thread or process while this touch began
            raise stale_agent(agent.id, agent.generation)
        if state != "restoring":
            raise AgentStateError(
                f"agent {agent.id} (generation {agent.generation}) is {state}: "
                "a sweep reclaimed it while offloaded (its lease ran out)"
            )
        # an agent whose process died while it was offloaded is this
        # process's from here: live again under a dead pid, the next sweep
        # reclaimed what this restore brought back
        heap._owner_adopt_orphan(agent.id, agent.generation)
        heap._restoring.add((agent.id, agent.generation))
        try:
            # the deadline as it stood: the lease ran on in the store (an entry
            # without one predates that; its seconds left count from now)
            deadline = entry.deadline
            if deadline is None and lease_left is not None:
                deadline = time.time() + lease_left
            # entries and lease in one update, on the sealed word only: the
            # first restorer's goes in, and another's (a process that found
            # it RESTORING and took its restorer for dead) never replaces
            # them, nor what writers put once it is live
            try:
                if entries:
                    agent._put_named(
                        dict(entries), expect_word=SEALED_WORD, lease_deadline=deadline, offloads=epoch
                    )
                elif deadline is not None:
                    agent._update_index(
                        lambda e: None, lease_deadline=deadline, expect_word=SEALED_WORD, offloads=epoch
                    )
            except IndexMoved:
                pass  # another restorer's went in first: the same blob's, which stand
        except AgentStateError:
            if heap._owner_offloads(agent.id) != epoch:
                # given back or offloaded again since this restore began (what it
                # made went with that): not this one's to give back; again, from
                # the newest blob
                if tries <= 1:
                    raise
                again = True
            else:
                _unrestore(heap, agent, kind)  # back as it was: still in the store
                if began or tries <= 1 or agent.state != "offloaded":
                    raise
                again = True  # the other restorer finished, and it was offloaded again: from its newer blob
        except BaseException:
            _unrestore(heap, agent, kind)
            raise
        finally:
            heap._restoring.discard((agent.id, agent.generation))
    if again:
        _restore_in_place(agent, tries - 1)
        return
    try:
        claimed = store.delete(key)
    except Exception as exc:
        try:
            gone = store.get(key) is None
        except Exception:
            log.warning(
                "swarmheap: %s failed while agent %d was restored and cannot say whether its snapshot "
                "was deleted: the agent is kept here: %s",
                url,
                agent.id,
                exc,
            )
            gone = True
        if not gone:
            _unrestore(heap, agent, kind)  # the blob is still there: try again later
            raise
        # deleted, perhaps by this call: kept (two copies at worst, never none)
        claimed = True
    if not claimed and store.get(key + MOVED) is not None and _unrestore(heap, agent, kind):
        raise _moved(agent)
    try:
        heap._owner_set_state(agent.id, agent.generation, "restoring", "live")
    except AgentStateError:
        state = agent.state
        if claimed and state == "offloaded":
            # a restorer here gave the memory back, taking a mark left by a
            # restore_from that lost to this one for its win: the blob we
            # took goes back (two copies at worst, never none), and again
            store.put(key, blob)
            if tries > 1:
                _restore_in_place(agent, tries - 1)
                return
            raise AgentStateError(
                f"agent {agent.id} keeps being restored and given back: touch it again"
            ) from None
        if state == "offloaded":
            if store.get(key + MOVED) is not None:
                raise _moved(agent) from None  # a restorer here gave it back: the blob went elsewhere
            # another restorer of this heap took the blob and finished, and
            # the agent was offloaded again since: from its newer blob
            newer = offload_entries.entry_of(heap, agent.id, agent.generation)
            if newer is not None and newer.raw != entry.raw and tries > 1:
                _restore_in_place(agent, tries - 1)
                return
            raise AgentStateError(
                f"agent {agent.id} was offloaded again by another process as it was restored: touch it again"
            ) from None
        if state != "live":
            raise AgentStateError(f"agent {agent.id} (generation {agent.generation}) is {state}") from None
        # else another process of this heap finished first
    _forget_entry(heap, agent, entry)


def _forget_entry(heap: Heap, agent: Agent, entry: Entry) -> None:
    """Remove the registry entry a restore restored from, if it still is that
    one: once the agent is live, another process may offload it again and
    write its own, which an unconditional removal took (the agent offloaded
    and its registry saying nowhere). Left for a full sweep if `system` has
    no room: the agent is live and the restore done."""
    if not offload_entries.drop_entry(heap, agent.id, agent.generation, only=entry.raw):
        heap._left_entries.add(entry.raw)


def _unrestore(heap: Heap, agent: Agent, kind: str) -> bool:
    """Give back a RESTORING agent's memory (OFFLOADED again); False if it is
    not restoring (another restorer here finished it, or gave it back)."""
    try:
        heap._owner_offload(agent.id, agent.generation, kind, only_restoring=True)
        return True
    except (AgentStateError, StaleBlock):
        return False


def _finish(heap: Heap, agent: Agent, entry: Entry) -> None:
    try:
        heap._owner_adopt_orphan(agent.id, agent.generation)  # its restorer died: this process's now
        heap._owner_set_state(agent.id, agent.generation, "restoring", "live")
    except AgentStateError:
        pass  # another process finished first
    _forget_entry(heap, agent, entry)


def _moved(agent: Agent) -> AgentStateError:
    return AgentStateError(
        f"agent {agent.id} was restored in another heap (restore_from): it lives there now, "
        "and this heap's next sweep frees its slot"
    )


def default_store(heap: Heap) -> Store:
    """The embedded default: an SQLite file per heap in the temp directory."""
    import tempfile

    path = f"{tempfile.gettempdir()}/swarmheap-{heap._token}.db"
    return SQLiteStore(path)


def claim_moved(store: Store, key: str) -> bool:
    """Mark the blob under ``key`` moved and delete it, once restore_from has
    restored it: True if this call's delete removed it (the caller keeps the
    agent), False if another heap's restore_from took it first. The mark goes
    first: a touch in the source heap then finds no blob and says the agent
    moved, instead of restoring a second copy there (a kill between leaves
    the blob for the source's sweep). A store error is raised with the blob
    and no mark left behind, unless the delete is known to have happened
    (then the agent is the caller's) or the store cannot say (then it is too,
    logged: two copies at worst, never none)."""
    try:
        store.put(key + MOVED, b"")
        return store.delete(key)
    except Exception as exc:
        try:
            still_there = store.get(key) is not None
        except Exception:
            log.warning(
                "swarmheap: %s failed while restore_from took %r and cannot say whether it did: "
                "the agent is kept here: %s",
                store.url,
                key,
                exc,
            )
            return True
        if not still_there:
            return True
        with contextlib.suppress(Exception):
            store.delete(key + MOVED)
        raise
