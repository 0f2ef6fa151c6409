"""The Heap users hold: the binding's CoreHeap plus agents, hooks and sweeps.

The binding tells this layer what happens through one events object
(_LayerEvents, installed at create and attach): agent allocations to count
toward the young sweep, a full partition to relieve, a deferred recycle."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmheap import (
    admission,
    agent_snapshot,
    channels,
    dictionaries,
    kinds,
    offload,
    offload_entries,
    offload_policy,
)
from swarmheap._core import FIRST_AGENT, PARTITIONS, CoreHeap, HeapEvents
from swarmheap.agents import Agent, check_lease
from swarmheap.channels import Channel
from swarmheap.errors import AgentStateError, HeapCorrupt, ReadOnlyHeap, StaleBlock
from swarmheap.hooks import EVENTS, Hook, Hooks
from swarmheap.index_format import check_kind, kind_id
from swarmheap.predict import HALF_LIFE, MAX_HALF_LIFE, MIN_HALF_LIFE, Prediction, Predictor
from swarmheap.registry import RegistryCache
from swarmheap.stores import Store, check_store, open_store
from swarmheap.sweep import SweepResult, collect

__all__ = ["EVENTS", "Heap"]


class _Default:
    """spawn(admit=...) left out: the heap's default (set_admission)."""


DEFAULT = _Default()


@dataclass
class OffloadPolicy:
    """Ray's object spilling, per agent: past ``high`` of ``partition``'s
    capacity, the least recently active unpinned agents idle for at least
    ``min_idle`` seconds go to ``store`` until it is under ``low``."""

    store: Store
    partition: str = "context"
    high: float = 0.8
    low: float = 0.6
    min_idle: float = 1.0


class _ThreadSet:
    """A set each thread has its own of: what this thread is restoring. A
    restore's own puts go to an agent still RESTORING; another thread's use
    of it must wait for the restore, not slip in as if it were the restorer."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _items(self) -> set[tuple[int, int]]:
        items: set[tuple[int, int]] | None = getattr(self._local, "items", None)
        if items is None:
            items = self._local.items = set()
        return items

    def add(self, item: tuple[int, int]) -> None:
        self._items().add(item)

    def discard(self, item: tuple[int, int]) -> None:
        self._items().discard(item)

    def __contains__(self, item: object) -> bool:
        return item in self._items()


@dataclass
class _SweepState:
    """This process's sweep counters for one heap (as CPython's gc keeps its own)."""

    thresholds: tuple[int, int, int] = (2000, 10, 10)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    batch: int = 1  # allocations the heap's countdown stood for when it was last set
    sweepers: set[int] = field(default_factory=set)  # the threads in collect() now

    @property
    def sweeping(self) -> bool:
        return bool(self.sweepers)


class _LayerEvents(HeapEvents):
    """What the binding tells a Heap."""

    def on_countdown(self, heap: Any) -> None:
        heap._note_allocations()

    def on_partition_full(self, heap: Any, partition: str, nbytes: int) -> bool:
        # Not from inside this thread's own sweep (an offload's allocation).
        # Another thread's sweep does not stop this one: a thread that gave
        # up because one was running raised PartitionFull while that sweep
        # was offloading the agents that made the room (LangGraph puts from
        # a helper thread as the graph writes from its own)
        if threading.get_ident() in heap._sweep.sweepers:
            return False
        return bool(heap._make_room(partition, nbytes))

    def on_not_live(self, heap: Any, agent_id: int, generation: int) -> bool:
        if heap._owner_state(agent_id) not in ("offloaded", "restoring"):
            return False
        heap._agent_at(agent_id, generation).restore()  # touching an offloaded agent brings it back
        return True

    def on_recycled(self, heap: Any, agent_id: int, generation: int, final: dict[str, Any] | None) -> None:
        deferred = heap._hooks.take_deferred(agent_id, generation)
        if deferred is not None:  # this process completed it: its own figures and name
            heap._hooks.fire("recycle", agent_id, *deferred)
        elif heap._hooks.table["recycle"]:
            # another process completed it while this one pinned it: the
            # figures are the core's, read as it recycled, and the kind is
            # found by its id (the agent's index went with it)
            stats = final if final is not None else {}
            try:
                kind = kinds.kind_of(heap, agent_id, generation, stats.get("kind_id"))
            except HeapCorrupt:  # a damaged registry: the hook still hears of the recycle
                kind = "?"
            if stats:
                stats["kind"] = kind
            heap._hooks.fire("recycle", agent_id, kind, stats)


_EVENTS = _LayerEvents()


class Heap(CoreHeap):
    """An arena. ``Heap.create(name=None, size="64 MiB", *, ratios=None,
    page_size=None, max_owners=0, max_threads=0)`` makes one (``name=None``: private; a
    name: shared memory), ``Heap.attach(name)`` maps one another process
    made. Use as a context manager: a heap created by name is unlinked on exit."""

    _hooks: Hooks
    _sweep: _SweepState

    @classmethod
    def create(
        cls,
        name: str | None = None,
        size: int | str = "64 MiB",
        *,
        ratios: Mapping[str, float] | None = None,
        page_size: int | str | None = None,
        max_owners: int = 0,
        max_threads: int = 0,
        path: str | os.PathLike[str] | None = None,
    ) -> Heap:
        """See CoreHeap.create: a new arena, private (no name), shared by name,
        or mapping the file at ``path`` (it outlives the processes; attach it
        after a crash, and a sweep reclaims what the dead left)."""
        heap = super().create(
            name,
            size,
            ratios=ratios,
            page_size=page_size,
            max_owners=max_owners,
            max_threads=max_threads,
            path=path,
        )
        heap._install()
        return heap

    @classmethod
    def attach(
        cls, name: str | None = None, *, read_only: bool = False, path: str | os.PathLike[str] | None = None
    ) -> Heap:
        """See CoreHeap.attach: map a heap another process created, by name or by path."""
        heap = super().attach(name, read_only=read_only, path=path)
        heap._install()
        return heap

    def _install(self) -> None:
        self._hooks = Hooks()
        self._sweep = _SweepState()
        self._dictionaries = dictionaries.Dictionaries(self)
        self._stores: dict[str, Store] = {}
        self._own_stores: list[Store] = []  # opened here (the default, or by URL): closed with the heap
        self._default_store: Store | None = None
        self._offload_policy: OffloadPolicy | None = None
        self._restoring = _ThreadSet()  # agents this thread is restoring now
        # offload entries a restore here could not drop (no room in `system`):
        # a later offload here replaces them (offload._claim_entry)
        self._left_entries: set[bytes] = set()
        # one offload or restore at a time in this process: a second thread's
        # touch waits for the first's restore, and a clean-up of a failed
        # offload cannot take what another thread's offload wrote. One lock
        # for both: a restore's put may offload others to make room, and an
        # offload's snapshot may restore, so two locks could be taken in
        # both orders
        self._moving_lock = threading.RLock()
        self._kind_names: dict[int, str] = {}  # kind id -> name, as kinds.name_kind/kind_of learned them
        self._kinds_unpublished: set[int] = set()  # kind ids name_kind could not write for want of room
        self._registry_shards: RegistryCache = {}  # the registry's shards as this process last decoded them
        self._spawned_kinds: dict[str, int] = {}  # kinds spawned here (checked and named), to their ids
        self._predictor = Predictor(self)
        # the heap's admission default as this process last read it, and the registry word it read it under
        self._admission_seen: tuple[int | None, admission.Default] | None = None
        info = self.info()
        self._capacity = {p: v["size"] for p, v in info["partitions"].items()}
        # a kind predicted to hold more of the nursery's largest blocks than
        # the core keeps there of one class (16 of 28 KiB by default) gets
        # pages of its own from the start: most of such an agent's memory is
        # on pages of its own anyway, and a kind's peak counts those pages
        # whole, so a mid-size kind read as blocks from its mix was taken for
        # a big one
        self._nursery_share = info["nursery_class_blocks"] * info["nursery_limit"]
        self.events = _EVENTS
        self._restart_countdown()

    def __reduce__(self) -> Any:
        # the cryptic default was Cython's "no default __reduce__ due to non-trivial __cinit__"
        if self.name is None and self.path is None:
            raise TypeError(
                "a private heap (made without a name) is this process's alone: create it with a "
                "name (or a path) to share it, and attach it by that in the other process"
            )
        where = f"its name ({self.name!r})" if self.name is not None else f"its path ({self.path!r})"
        raise TypeError(
            f"a Heap is this process's mapping and cannot be pickled: send {where} and call "
            f"swarmheap.Heap.attach(...) with it in the other process"
        )

    def __del__(self) -> None:
        # dropped without close(): what this process learned still reaches the shared model
        predictor = getattr(self, "_predictor", None)
        if predictor is not None:
            predictor.flush_quietly()

    # ---- agents ----

    def spawn(
        self,
        kind: str = "default",
        *,
        lease: float | None = None,
        admit: str | _Default | None = DEFAULT,
        timeout: float | _Default | None = DEFAULT,
        reserve: bool = True,
    ) -> Agent:
        """A new agent of ``kind``: an owner heap in the C core. ``lease``
        (seconds) lets a sweep reclaim it once that time has passed. With a
        confident prediction for the kind (``predict``), ``reserve`` holds its
        P90 peak for it against later admissions, and ``admit`` ("raise",
        "wait" up to ``timeout`` seconds, "offload", None; each left out is
        the heap's default from ``set_admission``, and ``timeout=None`` waits
        without a limit) decides what happens when that does not fit (see
        swarmheap.admission)."""
        kid = self._spawned_kinds.get(kind) if type(kind) is str else None
        if kid is None:  # a kind's first spawn in this process: checked and named once
            check_kind(kind)
            kinds.name_kind(self, kind)
            kid = kind_id(kind)
            if kid not in self._kinds_unpublished:  # else named at a later spawn, when `system` has room
                self._spawned_kinds[kind] = kid
        deadline = time.time() + check_lease(lease) if lease is not None else 0.0
        mode, limit, wait = admission.default(self)  # the heap's; an explicit admit= takes its limit
        if not isinstance(admit, _Default):
            mode = admit
            if mode not in admission.MODES:
                raise ValueError(f"admit must be one of None, 'raise', 'wait', 'offload', not {mode!r}")
        if isinstance(timeout, _Default):
            timeout = wait
        else:
            channels.check_timeout(timeout)
        if reserve is not True and reserve is not False:
            raise TypeError(f"reserve is a bool, not {type(reserve).__name__}")
        if mode is None:
            # outside admission modes a confident kind's reservation and layout
            # come with the owner: the plan is one dict lookup per spawn
            prediction = None
            need, own_pages = (self._predictor.plans.get(kind) or self._plan(kind)) if reserve else (0, False)
        else:
            prediction = self._predictor.cached(kind)
            need, own_pages = 0, False
        agent_id, generation = self._owner_spawn(kid, need, own_pages)
        agent = Agent(self, agent_id, generation, kind)
        if deadline or (mode is not None and prediction is not None and prediction.samples):
            self._prepare_agent(agent, deadline, prediction, mode, limit, timeout)
        if self._hooks.table["spawn"]:
            self._hooks.fire("spawn", agent.id, kind, agent.stats())
        return agent

    def _plan(self, kind: str) -> tuple[int, bool]:
        """What spawn(kind) reserves and whether it takes pages of its own
        from the start (a confident kind past the nursery's share), worked
        out once per cached prediction (until this process's next flush)."""
        plan = self._predictor.plans.get(kind)
        if plan is None:
            prediction = self._predictor.cached(kind)
            if prediction.confident:
                own_pages = (prediction.peak("context", 0.9) or 0) > self._nursery_share
                plan = (admission.need_of(prediction), own_pages)
            else:
                plan = (0, False)
            self._predictor.plans[kind] = plan
        return plan

    def _prepare_agent(
        self,
        agent: Agent,
        deadline: float,
        prediction: Prediction | None,
        mode: str | None,
        limit: float,
        timeout: float | None,
    ) -> None:
        """spawn's part for a lease or an admission mode: the index with the
        lease, admission and the reservation, the layout. A refusal recycles
        the agent."""
        agent_id, generation = agent.id, agent.generation
        try:
            if deadline:  # else the index comes with the first entry (kinds.kind_of finds the kind)
                agent._update_index(lambda entries: None, lease_deadline=deadline)
            # under an admission mode, a confident prediction reserves its
            # P90 if it fits, and a kind with a few samples but no confidence
            # yet the largest it saw, so the first bursts of a kind are
            # admitted on what is known of it rather than on nothing
            if mode is not None and prediction is not None and prediction.samples:
                admission.admit(self, agent_id, generation, prediction, mode, limit, timeout)
                if self._plan(agent.kind)[1]:
                    # a kind that outgrows the nursery's share gets pages of its own from the start;
                    # a small kind stays packed on the shared pages
                    self._owner_nursery_opt_out(agent_id, generation)
        except BaseException:
            try:
                self._owner_recycle(agent_id, generation)
            except (ValueError, StaleBlock):
                pass  # a close() called the wait for room off: the wait recycled it, the heap is closed
            raise

    def agent(self, agent_id: int) -> Agent:
        """The live agent with this id, as seen from this process."""
        if isinstance(agent_id, bool) or not isinstance(agent_id, int):
            raise TypeError(f"agent ids are ints, not {type(agent_id).__name__}")
        if agent_id < FIRST_AGENT:
            raise ValueError(f"agent ids start at {FIRST_AGENT} (0 and 1 are the heap's), not {agent_id!r}")
        if agent_id >= self._max_owners():
            raise ValueError(f"agent id {agent_id} is beyond this heap's {self._max_owners()} slots")
        generation = self._owner_generation(agent_id)
        if not generation:
            raise AgentStateError(f"no agent {agent_id} in this heap")
        return self._agent_at(agent_id, generation)

    def agents(self) -> list[Agent]:
        """Every agent that holds a slot (live, completed, dead or offloaded)."""
        out = []
        for agent_id in range(FIRST_AGENT, self._max_owners()):
            generation = self._owner_generation(agent_id)
            if generation:
                out.append(self._agent_at(agent_id, generation))
        return out

    def stats(self) -> dict[str, Any]:
        """A plain dict: per partition (capacity, in use, bytes held in pages,
        utilization), per size class and per owner (kind named)."""
        stats: dict[str, Any] = super().stats()
        stats["offloaded"] = offload_entries.offloaded(self)
        stats["channels"], stats["damaged_channels"] = [], []
        for name in self.channels():
            try:
                stats["channels"].append(self.channel(name).stats())
            except HeapCorrupt as exc:  # the rest of the heap is still worth seeing
                stats["damaged_channels"].append({"name": name, "error": str(exc)})
        stats["reserved"] = admission.reserved(self)
        stats["kinds"] = self._predictor.table()
        for owner in stats["owners"]:
            if owner["id"] >= FIRST_AGENT:
                owner["kind"] = kinds.kind_of(self, owner["id"], owner["generation"], owner["kind_id"])
            else:
                owner["kind"] = "shared default" if owner["id"] == 0 else "nursery"
        return stats

    def close(self) -> None:
        """As CoreHeap.close; this process's usage samples go to the shared model first."""
        if hasattr(self, "_predictor"):
            self._predictor.flush_quietly()  # nothing on a closed or read-only heap
        super().close()
        for store in getattr(self, "_own_stores", ()):
            store.close()
        if hasattr(self, "_own_stores"):
            self._own_stores.clear()

    def unlink(self) -> None:
        """Remove the heap's name (a file-backed heap's file); mapped views
        stay valid until closed. To remove a heap by name without opening it:
        swarmheap.unlink(name)."""
        if not isinstance(self, Heap):  # Heap.unlink("name"), as if it took a name
            raise TypeError(
                f"Heap.unlink() removes the name of a heap you hold (heap.unlink()); "
                f"to remove one by name, call swarmheap.unlink({self!r})"
            )
        super().unlink()

    # ---- channels (swarmheap.channels) ----

    def channel(self, name: str, capacity: int = 1024, *, max_message: int | None = None) -> Channel:
        """The channel ``name``, made if no process of the heap made it yet: a
        bounded queue of up to ``capacity`` messages of at most
        ``max_message`` bytes (a quarter of `comm` by default). A channel that
        exists is opened as it was made, whatever ``capacity`` says."""
        return channels.open_channel(self, name, capacity, max_message)

    def channels(self) -> list[str]:
        """The names of the heap's channels."""
        return channels.channel_names(self)

    # ---- snapshots and the offload tier (swarmheap.offload) ----

    def restore(self, blob: bytes) -> Agent:
        """A new live agent made from ``agent.snapshot()``'s blob, with the same
        kind, lease and entries, bit-exact. CorruptSnapshot if the blob is
        damaged (nothing is allocated then)."""
        return agent_snapshot.restore_blob(self, blob, list(self._stores.values()))

    def restore_from(self, store: Store, key: str) -> Agent:
        """Restore an agent another heap (process, machine) offloaded to
        ``store`` under ``key``. The source heap frees its slot at its next
        sweep; the blob leaves the store. Of two heaps restoring one key at
        once, one gets the agent and the other AgentStateError."""
        self._require_open()  # before the store is read: its KeyError would hide a closed heap
        blob = check_store(store).get(key)
        if blob is None:
            raise KeyError(f"no snapshot under {key!r} in {store.url}")
        self._remember_store(store)
        agent = agent_snapshot.restore_blob(self, blob, [store, *self._stores.values()])
        try:
            claimed = offload.claim_moved(store, key)
        except BaseException:
            agent.complete()  # the blob stays in the store for another try
            raise
        if not claimed:
            agent.complete()
            raise AgentStateError(
                f"the snapshot under {key!r} in {store.url} was restored by another heap while this one "
                "restored it: that heap has the agent, and this heap's copy was dropped"
            )
        return agent

    @property
    def store(self) -> Store:
        """Where offload() writes by default: the store of the offload policy,
        else an SQLite file in the temp directory for this heap."""
        if self._offload_policy is not None:
            return self._offload_policy.store
        if self._default_store is None:
            self._default_store = offload.default_store(self)
            self._remember_store(self._default_store)
            self._own_stores.append(self._default_store)
        return self._default_store

    def set_admission(
        self,
        mode: str | _Default | None = DEFAULT,
        limit: float = admission.DEFAULT_LIMIT,
        *,
        timeout: float | None = None,
        admit: str | _Default | None = DEFAULT,
    ) -> None:
        """The default of ``spawn(admit=...)``: None, "raise", "wait" or
        "offload" (``admit=`` names it as spawn does; ``mode``, the first
        argument, is the same); ``limit`` is the fraction of a partition's
        capacity admissions fill; ``timeout`` the seconds a "wait" spawn that
        names none waits (None: no limit). Set for the heap: every process's
        spawns follow it."""
        if not isinstance(admit, _Default):
            if not isinstance(mode, _Default):
                raise TypeError(
                    "set_admission() takes the mode once: as its first argument or as admit=, not both"
                )
            mode = admit
        if isinstance(mode, _Default):
            mode = None
        if mode not in admission.MODES:
            raise ValueError(f"admission mode must be one of None, 'raise', 'wait', 'offload', not {mode!r}")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit <= 1:
            raise ValueError(f"limit is a fraction of capacity in (0, 1], not {limit!r}")
        timeout = channels.check_timeout(timeout)
        if self.read_only:
            raise ReadOnlyHeap(
                "the heap is attached read-only: set_admission() writes; attach it without read_only"
            )
        admission.set_default(self, mode, float(limit), timeout)

    def set_prediction(self, half_life: float = HALF_LIFE) -> None:
        """How fast the usage models forget: a sample ``half_life`` agents old
        (of its kind) weighs half as much as the newest. Set for the heap:
        every process's next fold of samples uses it, and a model folded
        under another half-life keeps what it learned and decays on with this
        one. Lower follows a kind whose needs change sooner; higher smooths
        out a noisy one."""
        if isinstance(half_life, bool) or not isinstance(half_life, (int, float)):
            raise TypeError(f"half_life is a number of agents, not {type(half_life).__name__}")
        if not MIN_HALF_LIFE <= half_life <= MAX_HALF_LIFE:  # NaN fails this too
            raise ValueError(f"half_life is {MIN_HALF_LIFE:g} to {MAX_HALF_LIFE:g} agents, not {half_life!r}")
        if self.read_only:
            raise ReadOnlyHeap(
                "the heap is attached read-only: set_prediction() writes; attach it without read_only"
            )
        self._predictor.flush()  # what this process learned so far, under the half-life it was learned with
        self._predictor.set_half_life(float(half_life))

    def predict(self, kind: str) -> Prediction:
        """What agents of ``kind`` needed, learned from every process's
        completed, recycled and swept agents (see swarmheap.predict)."""
        check_kind(kind)
        return self._predictor.predict(kind)

    def set_offload_policy(
        self,
        store: Store | None,
        partition: str = "context",
        high: float = 0.8,
        low: float = 0.6,
        min_idle: float = 1.0,
    ) -> None:
        """Offload idle agents of this process when ``partition`` passes
        ``high`` (a fraction: of its bytes in use or of its pages taken,
        whichever is more) until it is under ``low``: in sweeps, and before a
        PartitionFull is raised (then at least one, whatever the marks say). The least recently active
        go first, those holding a page or more of the partition before the
        small ones (an offload is a store write: a few large agents free what
        thousands of small ones hold). ``None`` turns it off."""
        self._require_open()
        if store is None:
            self._offload_policy = None
            return
        if self.read_only:  # it could never act: an offload gives memory back
            raise ReadOnlyHeap(
                "the heap is attached read-only: an offload policy offloads agents, which writes; "
                "attach it without read_only"
            )
        check_store(store)
        if partition not in PARTITIONS:
            raise ValueError(f"unknown partition {partition!r}: use one of {', '.join(PARTITIONS)}")
        for name, value in (("high", high), ("low", low)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} is a fraction in (0, 1], not {value!r}")
        if low > high:
            raise ValueError(f"low ({low}) must not be above high ({high})")
        # NaN compared false with every idle time: a policy that never offloaded
        number = isinstance(min_idle, (int, float)) and not isinstance(min_idle, bool)
        if not number or not math.isfinite(min_idle) or min_idle < 0:
            raise ValueError(f"min_idle is finite seconds >= 0, not {min_idle!r}")
        self._offload_policy = OffloadPolicy(store, partition, float(high), float(low), float(min_idle))
        self._remember_store(store)

    def _make_room(self, partition: str, nbytes: int) -> bool:
        """An agent allocation of ``nbytes`` found ``partition`` full: a full
        sweep (with the offload policy), and if that made no room, one idle
        agent more offloaded whatever the policy's marks say (the pages free
        may not be the run the allocation needs). True if the allocation
        should try again: room was made, or enough pages are free now
        (another thread's offload may have given them back since the
        allocation failed: this one waited for that offload, and found
        nothing left to move)."""
        result = self.collect(2)
        if result.offloaded or result.reclaimed_agents or any(result.bytes.values()):
            return True
        policy = self._offload_policy
        if policy is not None and policy.partition == partition and offload_policy.relieve(self, policy, 1):
            return True
        part = self._partitions()[partition]
        return bool((part["pages_total"] - part["pages_used"]) * self.page_size >= nbytes)

    def _apply_offload_policy(self) -> int:
        """Offload idle agents while the policy's partition is above its high
        mark; returns how many went. A store that fails is logged and left
        for the next try."""
        policy = self._offload_policy
        if policy is None:
            return 0
        return offload_policy.relieve(self, policy)

    @property
    def _token(self) -> str:
        if self.path:
            return "file-" + self.path.strip("/").replace("/", "_")
        return self.name or f"private-{os.getpid()}-{id(self):x}"

    def _remember_store(self, store: Store) -> None:
        known = self._stores.get(store.url)
        if known is None or known.closed:
            self._stores[store.url] = store

    def _store_for(self, url: str) -> Store:
        """The store at ``url`` (read from the registry): the one this process
        used last, or (if it was closed since, or never seen here) the URL
        opened again; HeapCorrupt if no store has such a URL."""
        if url not in self._stores or self._stores[url].closed:
            try:
                store = open_store(url)
            except ValueError:  # a URL no store was ever made from: the entry is damaged
                raise HeapCorrupt(f"the heap registry names a store at {url!r}, which no store has") from None
            self._stores[url] = store
            self._own_stores.append(store)
        return self._stores[url]

    def _agent_at(self, agent_id: int, generation: int) -> Agent:
        if self._owner_state(agent_id) in ("offloaded", "restoring"):  # its index went with its memory
            found = offload_entries.where_if_readable(self, agent_id, generation)
            kind = found[2] if found else "?"
        else:
            kind = kinds.kind_of(self, agent_id, generation)
        return Agent(self, agent_id, generation, kind)

    # ---- hooks ----

    def on(self, event: str, fn: Hook) -> None:
        """Call ``fn(agent_id, kind, stats)`` on spawn, complete or recycle.
        Hooks are per process; one that raises is logged and changes nothing."""
        self._hooks.add(event, fn)

    def off(self, event: str, fn: Hook) -> None:
        """Remove a hook added with on(); ValueError if it is not there."""
        self._hooks.remove(event, fn)

    # ---- sweeps ----

    def collect(self, generation: int = 2) -> SweepResult:
        """Sweep generations 0..generation now and report what was reclaimed;
        the recycle hooks fire for each agent reclaimed."""
        state = self._sweep
        me = threading.get_ident()
        state.sweepers.add(me)
        try:
            if generation == 2:
                # young sweeps run every few dozen agents: folding this
                # process's samples in at each (a registry swap) cost more
                # than the agents did; note() folds every FLUSH_EVERY anyway
                self._predictor.flush_unless_full()
            result = collect(self, generation)
            result.offloaded = self._apply_offload_policy()
        finally:
            state.sweepers.discard(me)
        for younger in range(generation + 1):
            state.counts[younger] = 0
        if generation < 2:
            state.counts[generation + 1] += 1
        self._restart_countdown()
        for final in result.recycled:
            deferred = self._hooks.take_deferred(final["id"], final["generation"])
            kind = deferred[0] if deferred else final["kind"]
            self._predictor.note(kind, final)
            if self._hooks.table["recycle"]:
                self._hooks.fire("recycle", final["id"], kind, final)
        return result

    def set_sweep_thresholds(self, gen0: int = 2000, gen1: int = 10, gen2: int = 10) -> None:
        """As gc.set_threshold: a young sweep after ``gen0`` agent allocations
        and spawns; a generation-1 sweep after ``gen1`` young sweeps; a full
        one after ``gen2`` generation-1 sweeps. 0 turns automatic sweeps off."""
        for value in (gen0, gen1, gen2):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 31:
                raise ValueError(f"thresholds are ints from 0 to 2**31 - 1, not {value!r}")
        state = self._sweep
        state.counts[0] += state.batch - self._sweep_countdown  # what this countdown saw so far
        state.thresholds = (gen0, gen1, gen2)
        self._restart_countdown()

    def get_sweep_thresholds(self) -> tuple[int, int, int]:
        """The three generations' thresholds, as set_sweep_thresholds took them."""
        return self._sweep.thresholds

    # Counting agent allocations and spawns toward the young sweep, as
    # CPython's gc counts object allocations, runs on every agent.alloc() and
    # spawn: the common case is one decrement of CoreHeap._sweep_countdown (in
    # C); the counts are brought up to date here when it runs out (the
    # binding's events call).

    def _note_allocations(self) -> None:
        state = self._sweep
        state.counts[0] += state.batch
        self._sweep_countdown = state.batch = 1  # a sweep below restarts it properly
        t0, t1, t2 = state.thresholds
        if t0 == 0 or state.counts[0] < t0 or state.sweeping or self.read_only:
            self._restart_countdown()
            return
        generation = 0
        if t1 and state.counts[1] + 1 >= t1:
            generation = 1
            if t2 and state.counts[2] + 1 >= t2:
                generation = 2
        self.collect(generation)

    def _restart_countdown(self) -> None:
        """Next check when the young count reaches its threshold (now, if it has)."""
        state = self._sweep
        t0 = state.thresholds[0]
        state.batch = max(1, t0 - state.counts[0]) if t0 and not state.sweeping else 1 if t0 else 4096
        self._sweep_countdown = state.batch
