"""Snapshots of agents, their trained dictionaries, and the offload tier.

What lives where:
- an offloaded agent keeps its slot and generation in the owner table,
  state `offloaded`, and no memory; its blob is in a store;
- the heap's registry (the shared default's own index, in `system`) names,
  for each offloaded agent, the store's URL and the key, and caches the
  trained zstd dictionaries, so that any process of the heap finds both;
- a dictionary is also written to the store (key ``__swarmheap__/zdict/ID``)
  before a blob that needs it, so another node can read the blob.

Offload writes the blob first and gives back the memory second, so a crash
at any point leaves the agent in memory or restorable from the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from swarmheap import index, snapshot
from swarmheap._core import PARTITIONS, stale_agent
from swarmheap._extras import available, require
from swarmheap.errors import (
    AgentStateError,
    CorruptSnapshot,
    HeapCorrupt,
    IndexMoved,
    ReadOnlyHeap,
    StaleBlock,
    StoreFull,
    StoreUnavailable,
)
from swarmheap.registry import Registry
from swarmheap.stores import SQLiteStore, Store, check_store

if TYPE_CHECKING:
    from swarmheap.agents import Agent
    from swarmheap.heap import Heap

__all__ = [
    "Dictionaries",
    "agent_key",
    "offload",
    "restore_blob",
    "restore_in_place",
    "snapshot_of",
]

log = logging.getLogger("swarmheap")

DICT_KEY = "__swarmheap__/zdict/"
_DICT_BY_ID = "zdict/id/"  # registry: a dictionary's bytes by its id
_KIND_DICT = "zdict/kind/"  # registry: the id of a kind's dictionary
TRAIN_AFTER = 64  # snapshots of a kind before its dictionary is trained
STALE_AFTER = 300.0  # seconds before a live agent's registry entry is taken for a killed offload's
DICT_SIZE = 16 * 1024
SAMPLE_MAX = 64 * 1024  # larger states gain little from a dictionary and are not kept as samples


class Dictionaries:
    """Per heap and process: samples of each kind's states, the dictionaries
    trained from them, and where to find one by id."""

    def __init__(self, heap: Heap, train_after: int = TRAIN_AFTER) -> None:
        self.heap = heap
        self.train_after = train_after
        self.samples: dict[str, list[bytes]] = defaultdict(list)
        self.by_kind: dict[str, Any] = {}  # kind -> ZstdCompressionDict
        self.by_id: dict[int, Any] = {}
        self.published: set[tuple[str, int]] = set()  # (store URL, dictionary id) known to be in that store
        # training and the tables above, between this process's threads: two
        # that trained a kind at once could make two dictionaries under one id
        self.lock = threading.RLock()

    def for_kind(self, kind: str) -> Any:
        """The kind's dictionary: this process's, else one another process
        trained. Two direct registry reads, not a scan of its names: those
        grow with offloaded agents, and a kind that never trains one (of
        large states) paid the scan on every offload."""
        if kind not in self.by_kind:
            named = Registry(self.heap).get(f"{_KIND_DICT}{kind}")
            found = self.lookup(int(named), []) if named and named.isdigit() else None
            if found is not None:
                self.by_kind[kind] = found
        return self.by_kind.get(kind)

    def note(self, kind: str, raw: Any) -> None:
        """A snapshot of ``kind`` was taken: keep a copy as a sample (``raw``
        may be a view that lives for a ``with``); train once there are enough."""
        if kind in self.by_kind or len(raw) > SAMPLE_MAX or not raw:
            return
        sample = bytes(raw)
        with self.lock:
            if kind in self.by_kind:
                return
            samples = self.samples[kind]
            samples.append(sample)
            if len(samples) < self.train_after:
                return
            zstd = require("zstandard", "compress")
            try:
                trained = zstd.train_dictionary(DICT_SIZE, samples)
            except zstd.ZstdError:
                samples.clear()  # too few distinct bytes to train on: sample again
                return
            samples.clear()
            data, dict_id = trained.as_bytes(), trained.dict_id()
            registry = Registry(self.heap)
            # the dictionary before the kind's pointer to it: a reader never
            # follows a pointer to nothing. An id names one dictionary for
            # good: zstd derives it from the dictionary's content, and two
            # trainings (two processes at once) can make the same id with
            # other tables; blobs made with one and read with the other do
            # not decompress. The first one named stands; a later one uses it.
            key = f"{_DICT_BY_ID}{dict_id}"
            if not registry.swap(key, None, data):
                data = registry.get(key) or data
            registry.put(f"{_KIND_DICT}{kind}", str(dict_id).encode())
            self.by_kind[kind] = self._remember(data)

    def _remember(self, data: bytes) -> Any:
        """The dictionary ``data`` is, as this process holds it: the first
        one it met under that id (an id is one dictionary, see note())."""
        zstd = require("zstandard", "compress")
        d = zstd.ZstdCompressionDict(data)
        with self.lock:
            return self.by_id.setdefault(d.dict_id(), d)

    def lookup(self, dict_id: int, stores: list[Store]) -> Any:
        """The dictionary with this id: this process's, the registry's, or a store's."""
        if dict_id in self.by_id:
            return self.by_id[dict_id]
        data = Registry(self.heap).get(f"{_DICT_BY_ID}{dict_id}")
        if data:
            return self._remember(data)
        for store in stores:
            data = store.get(f"{DICT_KEY}{dict_id}")
            if data:
                return self._remember(data)
        return None

    def publish(self, dictionary: Any, store: Store) -> None:
        """Put the dictionary in the store unless it is there; a store is
        asked once per process and dictionary, not on every offload (a read
        of the store cost a small offload a tenth of its time)."""
        known = (store.url, dictionary.dict_id())
        if known in self.published:
            return
        key = f"{DICT_KEY}{known[1]}"
        if store.get(key) is None:
            store.put(key, dictionary.as_bytes())
        self.published.add(known)


def snapshot_of(
    agent: Agent, codec: str = "zstd", level: int | None = None, deadline: float | bool | None = False
) -> tuple[bytes, Any]:
    """The agent's blob, and the dictionary it names (None if none);
    ``deadline`` is its lease's, if the caller read it already."""
    if deadline is False:
        deadline = agent.lease_deadline
    lease_left = max(deadline - time.time(), 0.0) if deadline else None
    dictionaries: Dictionaries = agent.heap._dictionaries
    with contextlib.ExitStack() as state:
        with contextlib.ExitStack() as views:  # the entries are copied once, into the state
            entries = [(name, views.enter_context(view)) for name, view in agent.items()]
            raw = state.enter_context(snapshot.encoded_state(agent.kind, lease_left, entries))
        dictionary = dictionaries.for_kind(agent.kind) if codec == "zstd" else None
        blob = snapshot.pack(raw, codec, level, dictionary)
        if codec == "zstd":
            dictionaries.note(agent.kind, raw)
    return blob, dictionary


@contextlib.contextmanager
def stored_state(agent: Agent) -> Iterator[snapshot.State | None]:
    """An offloaded agent's state, read from its blob in the store without
    bringing it back (kind, lease left as it ran on in the store, entries
    as views that live for the ``with``); None if the agent is not
    offloaded here now (live, restoring, or its blob taken by a restore
    since the registry was read): the caller touches it instead."""
    heap = agent.heap
    entry = _entry(heap, agent.id, agent.generation) if heap._owner_state(agent.id) == "offloaded" else None
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


def snapshot_stored(agent: Agent, codec: str, level: int | None) -> bytes | None:
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
            dictionary = dictionaries.for_kind(kind) if codec == "zstd" else None
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
            index.check_kind(kind)
            for name, _ in entries:
                index.check_name(name)
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


def _key_prefix(heap: Heap) -> str:
    return f"swarmheap/agent/{heap._token}/"


def agent_key(heap: Heap, agent: Agent) -> str:
    return f"{_key_prefix(heap)}{agent.id}/{agent.generation}"


MOVED = "/moved"  # the suffix of restore_from's mark beside a key (claim_moved)


def _entry_name(agent_id: int, generation: int) -> str:
    return f"offload/{agent_id}/{generation}"


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
    # the word the snapshot is of: the core gives the memory back only if it still reads so
    word = heap._owner_word(agent.id, agent.generation) or 0
    deadline = agent.lease_deadline
    blob, dictionary = snapshot_of(agent, codec, level, deadline)
    # a key of this try's own: a failed try deletes its blob, and under a key
    # shared by every offload of the agent that took the blob of another
    # process's offload that had just won (the agent restorable from nowhere)
    key = f"{agent_key(heap, agent)}/{os.urandom(4).hex()}"
    if dictionary is not None:
        heap._dictionaries.publish(dictionary, store)
    # The registry first, the blob second, the memory last: a kill after any
    # step leaves the agent in memory (a full sweep drops the registry entry
    # and the blob of a live agent) or offloaded and restorable, and nothing
    # in the store that the registry does not name.
    registry = Registry(heap)
    # the lease's deadline goes with it: the clock runs on while offloaded, and
    # a sweep drops an agent (and its blob) whose lease ran out in the store
    entry = _entry_bytes(store.url, key, agent.kind, time.time(), deadline)
    registry.put(_entry_name(agent.id, agent.generation), entry)
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
        if in_memory and registry.remove_if(_entry_name(agent.id, agent.generation), entry):
            store.delete(key)
        raise
    return final, blob, key


# ---- kind names by kind id ----
# An agent's index holds its kind's name, but an agent gets an index only
# with its first entry (or a lease): spawn does not write one, which saves
# an index block and a swap per agent. The core keeps each owner's kind id
# (crc32 of the name); the registry maps ids to names, written once per kind.


def name_kind(heap: Heap, kind: str) -> None:
    """Make ``kind``'s name findable by its id from any process (once per process and kind)."""
    kid = index.kind_id(kind)
    if heap._kind_names.get(kid) == kind:
        return
    registry = Registry(heap)
    key = f"kind/{kid}"
    if registry.get(key) is None:
        registry.swap(key, None, kind.encode())  # lost to another process naming it: the same name
    heap._kind_names[kid] = kind


def kind_of(heap: Heap, agent_id: int, generation: int, kid: int | None = None) -> str:
    """An agent's kind name: from its index, else by its kind id ("?" if neither says)."""
    kind = index.read_kind(heap, agent_id, generation)
    if kind != "?":
        return kind
    if kid is None:
        info = heap._owner_info(agent_id)
        if not info or info["generation"] != generation:
            return "?"
        kid = int(info["kind_id"])
    name = heap._kind_names.get(kid)
    if name is None:
        data = Registry(heap).get(f"kind/{kid}")
        if data is None:
            return "?"
        name = heap._kind_names[kid] = data.decode(errors="replace")
    return name


class _Entry(NamedTuple):
    """An offloaded agent's registry entry."""

    url: str  # of the store its blob is in
    key: str
    kind: str
    written: float  # epoch seconds; 0 if it does not read
    deadline: float | None  # of its lease, which runs on in the store
    raw: bytes  # as read: a restore removes the entry only if it is still this one


_ENTRY_V2 = "2"  # first line of an entry with a deadline; an older one starts with its store URL


def _entry_bytes(url: str, key: str, kind: str, written: float, deadline: float | None) -> bytes:
    # the kind last: a kind name may hold newlines (the entry of format 1
    # put it third, and one that did could not be read past it)
    return f"{_ENTRY_V2}\n{url}\n{key}\n{written}\n{deadline or ''}\n{kind}".encode()


def _parse_entry(data: bytes) -> _Entry:
    """ValueError (UnicodeDecodeError included) if it does not read as one."""
    text = data.decode()
    if text.startswith(_ENTRY_V2 + "\n"):
        _, url, key, written, deadline, kind = text.split("\n", 5)
        return _Entry(url, key, kind, _seconds(written), float(deadline) if deadline else None, data)
    url, key, kind, written = text.split("\n", 3)  # format 1: no deadline
    return _Entry(url, key, kind, _seconds(written), None, data)


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _entry(heap: Heap, agent_id: int, generation: int) -> _Entry | None:
    """An offloaded agent's registry entry; None if there is none,
    HeapCorrupt if it does not read as one."""
    data = Registry(heap).get(_entry_name(agent_id, generation))
    if data is None:
        return None
    try:
        return _parse_entry(data)
    except ValueError:
        raise HeapCorrupt(
            f"the heap registry's entry for offloaded agent {agent_id} (generation {generation}) is damaged: "
            "where its snapshot is, is lost"
        ) from None


def where(heap: Heap, agent_id: int, generation: int) -> tuple[str, str, str] | None:
    """(store URL, key, kind) of an offloaded agent, from the registry; None
    if it names none, HeapCorrupt if its entry does not read as one."""
    entry = _entry(heap, agent_id, generation)
    return None if entry is None else (entry.url, entry.key, entry.kind)


def lease_deadline(heap: Heap, agent_id: int, generation: int) -> float | None:
    """An offloaded agent's lease deadline (epoch seconds), None if it has no
    lease (or its entry does not say, or does not read)."""
    try:
        entry = _entry(heap, agent_id, generation)
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


def _written(heap: Heap, name: str) -> float:
    """When the registry entry was written (epoch seconds; 0 if unreadable)."""
    data = Registry(heap).get(name)
    try:
        return _parse_entry(data).written if data else 0.0
    except ValueError:
        return 0.0


def restore_in_place(agent: Agent, tries: int = 3) -> bool:
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


def _restore_in_place(agent: Agent, tries: int = 3) -> None:
    """Bring an offloaded agent back into its own slot, same id and generation.

    Deleting the blob is the claim, as in restore_from (claim_moved): the
    entries go back while the agent is RESTORING, then the delete, then
    LIVE. A delete that finds no blob lost it to another heap's restore_from
    if the key is marked moved (the memory goes back and the agent is
    reported moved), else to another process of this heap restoring it
    too. No one here sees the agent live before the blob is ours."""
    heap = agent.heap
    entry = _entry(heap, agent.id, agent.generation)
    if entry is None:
        _state_unless_gone(agent)  # completed meanwhile: its entry went with it
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
            newer = _entry(heap, agent.id, agent.generation)
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
        if state == "live":
            return  # another process restored it meanwhile: its entries may be newer than the blob's
        if state == "gone":  # completed by another thread or process while this touch began
            raise stale_agent(agent.id, agent.generation)
        if state != "restoring":
            raise AgentStateError(
                f"agent {agent.id} (generation {agent.generation}) is {state}: "
                "a sweep reclaimed it while offloaded (its lease ran out)"
            )
        heap._restoring.add((agent.id, agent.generation))
        try:
            # the deadline as it stood: the lease ran on in the store (an entry
            # without one predates that; its seconds left count from now)
            deadline = entry.deadline
            if deadline is None and lease_left is not None:
                deadline = time.time() + lease_left
            if deadline is not None:
                agent._update_index(lambda e: None, lease_deadline=deadline)
            if entries:
                agent.put_many(dict(entries))  # one index update for all of them
        except BaseException:
            _unrestore(heap, agent, kind)  # back as it was: still in the store
            raise
        finally:
            heap._restoring.discard((agent.id, agent.generation))
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
            raise _moved(agent) from None  # a restorer here gave it back: the blob went elsewhere
        if state != "live":
            raise AgentStateError(f"agent {agent.id} (generation {agent.generation}) is {state}") from None
        # else another process of this heap finished first
    _forget_entry(heap, agent, entry)


def _forget_entry(heap: Heap, agent: Agent, entry: _Entry) -> None:
    """Remove the registry entry a restore restored from, if it still is that
    one: once the agent is live, another process may offload it again and
    write its own, which an unconditional removal took (the agent offloaded
    and its registry saying nowhere)."""
    Registry(heap).remove_if(_entry_name(agent.id, agent.generation), entry.raw)


def _unrestore(heap: Heap, agent: Agent, kind: str) -> bool:
    """Give back a RESTORING agent's memory (OFFLOADED again); False if it is
    not restoring (another restorer here finished it, or gave it back)."""
    try:
        heap._owner_offload(agent.id, agent.generation, kind, only_restoring=True)
        return True
    except (AgentStateError, StaleBlock):
        return False


def _finish(heap: Heap, agent: Agent, entry: _Entry) -> None:
    try:
        heap._owner_set_state(agent.id, agent.generation, "restoring", "live")
    except AgentStateError:
        pass  # another process finished first
    _forget_entry(heap, agent, entry)


def _moved(agent: Agent) -> AgentStateError:
    return AgentStateError(
        f"agent {agent.id} was restored in another heap (restore_from): it lives there now, "
        "and this heap's next sweep frees its slot"
    )


def drop_expired(heap: Heap, agent_id: int, generation: int, unreachable: set[str]) -> bool:
    """Reclaim an offloaded agent whose lease ran out: its blob, its registry
    entry, its slot. The state goes DEAD first, so that a restore racing it
    stops; a kill after that leaves a dead slot the next sweep recycles and a
    registry entry a full sweep drops with its blob. True if reclaimed; False
    if a restore began first, or the store could not delete (the next sweep
    tries again)."""
    try:
        entry = _entry(heap, agent_id, generation)
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
    Registry(heap).remove(_entry_name(agent_id, generation))
    return heap._owner_recycle(agent_id, generation)


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
    found = where_if_readable(heap, agent_id, generation)
    if found is None or found[0] in unreachable:
        return False
    url, key, _ = found
    try:
        store = heap._store_for(url)
        prefix = _key_prefix(heap)
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
    found = where(heap, agent_id, generation)
    if found:
        try:
            store = heap._store_for(found[0])
            store.delete(found[1])
            store.delete(found[1] + MOVED)
        except (StoreUnavailable, StoreFull) as exc:
            unreachable.add(found[0])
            log.warning("swarmheap: could not drop a moved agent's snapshot from %s: %s", found[0], exc)
            return False
    Registry(heap).remove(_entry_name(agent_id, generation))
    return True


def idle_agents(heap: Heap, partition: str, min_idle: float) -> list[tuple[int, int]]:
    """(id, generation) of this process's live, unpinned agents idle for
    ``min_idle`` seconds and holding some of ``partition``, in the order an
    offload takes them: least recently active first, but those holding a
    page's worth of the partition before the smaller ones. Each offload is a
    store write, and a swarm of small idle agents (a few KB each in shared
    nursery pages) took thousands of them to free what a few large ones hold."""
    active_before = time.time_ns() - int(min_idle * 1e9)
    candidates = heap._offload_candidates(PARTITIONS.index(partition), os.getpid(), active_before)
    return [(agent_id, generation) for _, _, agent_id, generation in sorted(candidates)]


def _fullness(heap: Heap, partition: str) -> float:
    """How full ``partition`` is, as a fraction: of its bytes in use, or of
    its pages taken, whichever is more. A partition whose pages are all
    taken is full, however little of them is in use (an agent's pages with
    free blocks in them are no room for another agent's run): the policy
    read bytes in use alone, and a LangGraph thread's put failed with
    PartitionFull at 68 % in use, every page taken, nothing offloaded."""
    part = heap._partitions()[partition]
    return float(max(part["in_use"] / part["capacity"], part["pages_used"] / max(part["pages_total"], 1)))


def relieve(heap: Heap, policy: Any, at_least: int = 0) -> int:
    """The watermark policy: offload this process's idle, unpinned agents
    that hold some of the partition, least recently active first (those
    holding a page's worth before smaller ones), while the partition is
    above ``high`` (_fullness), down to ``low``; ``at_least`` of them
    whatever the marks say (an allocation found no room under them). A
    store that fails is logged; the next try is the next full partition or
    sweep."""
    if not at_least and _fullness(heap, policy.partition) <= policy.high:
        return 0
    moved = 0
    for agent_id, generation in idle_agents(heap, policy.partition, policy.min_idle):
        if moved >= at_least and _fullness(heap, policy.partition) <= policy.low:
            break
        try:
            heap._agent_at(agent_id, generation).offload(policy.store)
            moved += 1
        except (StoreUnavailable, StoreFull) as exc:
            log.warning("swarmheap: offload to %s failed, retried later: %s", policy.store.url, exc)
            break
        except (AgentStateError, StaleBlock):
            continue  # pinned or gone meanwhile
    return moved


def _agent_of(heap: Heap, name: str) -> tuple[int, int] | None:
    """(id, generation) from a registry name offload/ID/GEN; None for a name
    that is not one (the registry is shared memory: read as untrusted)."""
    try:
        _, agent_id, generation = name.split("/")
        aid, gen = int(agent_id), int(generation)
    except ValueError:
        return None
    return (aid, gen) if 0 <= aid < heap._max_owners() and 0 < gen < 1 << 32 else None


def forget_stale(heap: Heap, unreachable: set[str] | None = None) -> int:
    """Registry entries (and their blobs) of agents that are not offloaded: an
    offload killed between writing the blob and giving back the memory, or
    an agent completed since. A full sweep calls this; returns how many. The
    blob goes first and the entry after, so that a store that fails (put in
    ``unreachable``, not asked again) leaves the entry for the next sweep
    rather than a blob nothing names."""
    unreachable = set() if unreachable is None else unreachable
    gone = 0
    for name in Registry(heap).names("offload/"):
        parsed_name = _agent_of(heap, name)
        if parsed_name is None:
            continue  # not a name offload() writes: damage, which where() reports to whoever asks
        aid, gen = parsed_name
        if heap._owner_generation(aid) == gen:
            if heap._owner_state(aid) in ("offloaded", "restoring"):
                continue
            # live, and its entry young: an offload under way in some process
            # (entry, blob, then memory), not one a kill left behind
            if time.time() - _written(heap, name) < STALE_AFTER:
                continue
        gone += _forget(heap, name, aid, gen, unreachable)
    return gone


def forget_completed(heap: Heap, agent_id: int, generation: int) -> None:
    """The blob and registry entry of an agent completed while offloaded: at
    once, not at the next full sweep. A store that fails leaves both to
    that sweep (forget_stale)."""
    _forget(heap, _entry_name(agent_id, generation), agent_id, generation, set())


def _forget(heap: Heap, name: str, agent_id: int, generation: int, unreachable: set[str]) -> bool:
    """Delete the blob the entry ``name`` names, then the entry; False (both
    kept) if the store fails, which then goes into ``unreachable``."""
    found = where_if_readable(heap, agent_id, generation)
    if found:
        if found[0] in unreachable:
            return False
        try:
            heap._store_for(found[0]).delete(found[1])
        except (StoreUnavailable, StoreFull, HeapCorrupt) as exc:  # HeapCorrupt: a URL no store has
            unreachable.add(found[0])
            log.warning("swarmheap: could not delete a stale snapshot from %s: %s", found[0], exc)
            return False
    Registry(heap).remove(name)
    return True


def offloaded(heap: Heap) -> list[dict[str, Any]]:
    """The offloaded agents the registry names, with their store and key."""
    out = []
    for name in Registry(heap).names("offload/"):
        parsed_name = _agent_of(heap, name)
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
