"""A LangGraph checkpointer on swarmheap: ``SwarmSaver(heap, *, store=None,
compress="zstd", keep=None, kind="langgraph")`` (the ``langgraph`` extra).

- Threads are agents (of ``kind``), found by thread id through the heap's
  registry from any process: a deleted or pruned thread's memory comes back
  in one recycle, and ``swarmheap stats`` shows each thread's usage. Thread
  ids are the heap's, as they are a database file's for SqliteSaver: every
  SwarmSaver on the heap (whatever its ``kind``, which names the agents for
  stats and prediction) sees the same threads.
- Checkpoints, their pending writes, and channel values live in the arena
  as the agent's named entries. A channel value is stored once per version
  (``blob/NS/CHANNEL/VERSION``), as LangGraph's versioned channels allow, so
  a step that changed one channel writes one value, not the whole state.
  Values are serialised with LangGraph's own ``serde`` and, with
  ``compress="zstd"`` (or "lz4"), compressed in a snapshot frame
  (swarmheap.snapshot): checksummed, so damage is a SwarmSaverError, never
  wrong state. With zstd, a channel's new version is stored as a delta: zstd
  with the previous version (the one this process wrote or read last) as
  its raw-content dictionary, so a list that grew by one message costs that
  message, not the list again; every 16th version of a chain is stored
  whole, so a read decodes at most 15 deltas.
- ``keep=N`` keeps the last N checkpoints per thread and namespace (and the
  channel versions they still name).
- With a ``store``, the heap's offload policy sends cold threads there under
  memory pressure; touching a thread restores it.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

from swarmheap import agent_snapshot, index, index_format, lgkeep, lgthreads, lgvalues, lgwalks, snapshot
from swarmheap._core import SEALED_WORD
from swarmheap._extras import require
from swarmheap.errors import PartitionFull, StaleBlock
from swarmheap.heap import Heap
from swarmheap.lgrecords import Missing, SwarmSaverError, ThreadRecords
from swarmheap.lgview import RAW_CACHE, ThreadView
from swarmheap.registry import Registry
from swarmheap.stores import Store

_base = require("langgraph.checkpoint.base", "langgraph")
BaseCheckpointSaver = _base.BaseCheckpointSaver
CheckpointTuple = _base.CheckpointTuple
get_checkpoint_id = _base.get_checkpoint_id
get_checkpoint_metadata = _base.get_checkpoint_metadata
WRITES_IDX_MAP = _base.WRITES_IDX_MAP


__all__ = ["SwarmSaver", "SwarmSaverError"]

_R = TypeVar("_R")
# A write that finds its thread deleted under it (another thread or process
# deleted it) starts the thread again, as a write after the delete would.
_GONE_TRIES = 3


class _ThreadGone(Exception):
    """The thread's agent was recycled (the thread deleted) before a write went in."""


# Reads of a thread's newest checkpoint that another writer's trim may take
# from under it (newer ones came meanwhile) before get_tuple gives up.
_READ_TRIES = 8


def _again_if_gone(config: dict[str, Any], write: Callable[..., _R], *args: Any) -> _R:
    """``write(*args)``, again while the thread is deleted under it (the
    write then starts the thread again, as one after the delete would)."""
    for _ in range(_GONE_TRIES):
        try:
            return write(*args)
        except _ThreadGone:
            continue
    raise SwarmSaverError(
        f"thread {config['configurable']['thread_id']!r} was deleted under each of {_GONE_TRIES} writes"
    )


def _wanted_id(config: dict[str, Any], view: ThreadView, ns: str) -> str | None:
    """The checkpoint ``config`` names, else the thread's newest in ``ns`` (None: it has none)."""
    ids = view.ids.get(ns, [])
    return get_checkpoint_id(config) or (ids[-1] if ids else None)


def _detached(agent: Any) -> bool:
    """Make a thread's agent the heap's, not the process's that made it: a
    thread outlives the process that wrote it, which may exit (or be killed)
    before another resumes the thread; a sweep reclaimed it as a dead
    process's agent. False if the agent is gone."""
    try:
        agent.detach()
    except StaleBlock:
        return False
    return True


class SwarmSaver(BaseCheckpointSaver):  # type: ignore[misc,valid-type]
    """LangGraph's checkpointer on a swarmheap heap:
    ``graph.compile(checkpointer=SwarmSaver(heap, keep=20))``. Each thread
    is an agent of ``kind``, shared by every process that attaches the heap;
    ``compress`` ("zstd", "lz4", None) frames and compresses what it stores;
    ``keep=N`` keeps a thread's last N checkpoints; ``store`` (an SQLite,
    LMDB or Redis store) sets the heap's offload policy, so cold threads
    leave the arena under pressure and come back when touched; ``serde`` is
    LangGraph's serializer (its default if None). Damaged data raises
    SwarmSaverError; a full arena PartitionFull naming keep= and store=."""

    def __init__(
        self,
        heap: Heap,
        *,
        store: Store | None = None,
        compress: str | None = "zstd",
        keep: int | None = None,
        kind: str = "langgraph",
        serde: Any = None,
    ) -> None:
        super().__init__(serde=serde)
        if compress not in (None, "none", *snapshot.CODECS):
            raise ValueError(f"compress is one of {', '.join(snapshot.CODECS)} or None, not {compress!r}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int)):
            raise TypeError(f"keep is a count of checkpoints (int >= 1) or None, not {type(keep).__name__}")
        if keep is not None and keep < 1:
            raise ValueError(f"keep is a count of checkpoints >= 1, or None, not {keep!r}")
        index_format.check_kind(kind)  # here, not at the first put
        self.heap = heap
        self.codec = compress or "none"
        self.keep = keep
        self.kind = kind
        self.store = store
        self._rec = ThreadRecords(heap, self.codec)  # the records' codec, and what was last read or written
        self._threads: dict[str, Any] = {}  # thread id -> its Agent, checked by generation on use
        self._views: dict[int, ThreadView] = {}  # agent id -> what its entry names say, by index word
        # agent id -> (its generation, (ns, channel) -> the entry name of the
        # channel's newest version here): keyed by the owner slot, so a saver
        # that serves thread after thread holds at most max_owners of these
        # (keyed by generation too, it kept one per thread it ever served)
        self._newest: dict[int, tuple[int, dict[tuple[str, str], str]]] = {}
        # with keep=, one put at a time in this process: a put's checkpoint
        # goes into the view's lgkeep.Kept after its index update, and a
        # trim between the two (another thread's put) would not count what
        # it names
        self._keep_lock = threading.RLock() if keep is not None else contextlib.nullcontext()
        if store is not None:
            heap.set_offload_policy(store)

    def get_next_version(self, current: Any, channel: None = None) -> Any:
        """A channel's next version: its number (zero-padded, so versions
        order as strings) and a random tag. A value is stored under its
        version, and two checkpoints made from one parent (a fork: update_state
        on an earlier checkpoint, a replay) both make the parent's version + 1;
        with bare integers the second put overwrote the first branch's value,
        and that branch's checkpoints read the fork's state. A thread begun
        with integer versions (by this saver before it made these) goes on
        with integers: LangGraph compares the versions of a checkpoint's
        channels with each other, and an int beside a str fails."""
        if isinstance(current, int):
            return current + 1
        number = 0 if current is None else int(str(current).split(".", 1)[0])
        return f"{number + 1:016}.{random.getrandbits(48):012x}"

    # ---- threads are agents ----

    def _agent(self, thread_id: str, create: bool) -> Any:
        """The thread's agent, live: a cold thread the offload policy sent to
        the store comes back here, on its first touch."""
        known = self._threads.get(thread_id)
        if known is not None and self.heap._owner_word(known.id, known.generation) is not None:
            # that generation still holds the slot: a deleted thread's agent is completed or recycled
            state = self.heap._owner_state(known.id)
            if state == "live":
                return known
            if state in ("offloaded", "restoring"):
                known.restore()
                return known
        agent = self._find_agent(thread_id, create)
        if agent is not None:
            agent.restore()
            if len(self._threads) >= RAW_CACHE:
                self._threads.clear()
            self._threads[thread_id] = agent
        return agent

    def _thread(self, thread_id: str, create: bool) -> tuple[Any, ThreadView | None]:
        """The thread's agent, live, and its view (None: no such thread). A
        thread this saver touched last, unchanged since, costs one call into
        the core (its word, if live) and two dict lookups; anything else
        takes the full path (_agent, then _view)."""
        known = self._threads.get(thread_id)
        if known is not None:
            word = self.heap._owner_live_word(known.id, known.generation)
            view = self._views.get(known.id) if word else None
            if view is not None and view.generation == known.generation and view.word == word:
                entries = index.cached_at(self.heap, known.id, known.generation, word)
                if entries is not None:
                    view.entries = entries[2]
                    return known, view
        agent = self._agent(thread_id, create)
        return agent, (self._view(agent) if agent is not None else None)

    def _find_agent(self, thread_id: str, create: bool) -> Any:
        key = lgthreads.key(thread_id)
        registry = Registry(self.heap)
        while True:
            ref, data = registry.get_ref(key)
            found = lgthreads.decode(thread_id, data)
            if found is not None:
                agent_id, generation = found
                if self.heap._owner_generation(agent_id) == generation:
                    agent = self.heap._agent_at(agent_id, generation)
                    if self.heap.read_only or _detached(agent):
                        return agent
                    continue  # gone meanwhile: read again
                if not create:
                    return None
                registry.swap(key, ref, b"")  # the agent is gone (swept): start the thread again
                continue
            if not create:
                return None
            agent = self.heap.spawn(self.kind, reserve=False)
            if registry.swap(key, ref, lgthreads.encode(agent.id, agent.generation)):
                # named first, then the heap's: killed in between, this
                # process leaves a thread with no checkpoint that a sweep
                # reclaims (its first put comes after this)
                _detached(agent)
                return agent
            agent.complete()  # another process made this thread first

    # ---- the BaseCheckpointSaver protocol ----

    def put(
        self, config: dict[str, Any], checkpoint: dict[str, Any], metadata: Any, new_versions: Any
    ) -> Any:
        try:
            with self._keep_lock:
                return _again_if_gone(config, self._put, config, checkpoint, metadata, new_versions)
        except PartitionFull as exc:
            raise PartitionFull(
                f"{exc}; SwarmSaver: keep=N bounds each thread to its last N checkpoints, and store=... "
                "(an SQLiteStore, say) lets cold threads leave the arena",
                exc.code,
            ) from exc

    def _put(
        self, config: dict[str, Any], checkpoint: dict[str, Any], metadata: Any, new_versions: Any
    ) -> Any:
        """The checkpoint goes in only onto an index holding every value it
        names (index.MissingEntries otherwise, nothing written): the bases
        of its deltas, and the versions of its unchanged channels. Another
        writer's keep= trim may have dropped one since this saver's view of
        the thread: the put is made again with that value whole, from the
        checkpoint's own values. So a checkpoint never reads back without a
        channel it holds. Each try stores at least one more value itself,
        so the tries end."""
        absent: set[str] = set()
        while True:
            try:
                return self._put_once(config, checkpoint, metadata, new_versions, absent)
            except index.MissingEntries as exc:
                absent.update(exc.names)

    def _put_once(
        self,
        config: dict[str, Any],
        checkpoint: dict[str, Any],
        metadata: Any,
        new_versions: Any,
        absent: set[str],
    ) -> Any:
        c = checkpoint.copy()
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        agent, view = self._thread(thread_id, create=True)
        values: dict[str, Any] = c.pop("channel_values")
        names = view.names if view is not None else set()
        items: dict[str, bytes] = {}
        bases: dict[str, str | None] = {}
        requires: set[str] = set()
        newest = self._newest_of(agent)
        for channel, version in new_versions.items():
            name = f"blob/{ns}/{channel}/{version}"
            base = newest.get((ns, channel))
            if not (base is not None and base != name and base in names) or base in absent:
                base = None  # a version put again is whole, and one on a base gone
            splice = listed = None
            if channel in values:
                raw, splice, listed = self._rec.serialized(self.serde, agent, values[channel], base)
            else:
                raw = lgvalues.typed_raw(("empty", b""))
            items[name], used = self._rec.pack_value(agent, name, raw, base, listed, splice)
            bases[name] = used
            if used is not None:
                requires.add(used)
            newest[(ns, channel)] = name
        for channel, version in c["channel_versions"].items():
            if channel in new_versions or channel not in values:
                continue  # written above, or no value at that version
            name = f"blob/{ns}/{channel}/{version}"
            if name not in absent:
                requires.add(name)
            elif name not in items:
                raw, _, listed = self._rec.serialized(self.serde, agent, values[channel], None)
                items[name], bases[name] = self._rec.pack_value(agent, name, raw, None, listed, None)
        record = (c, get_checkpoint_metadata(config, metadata), conf.get("checkpoint_id"))
        typed = self.serde.dumps_typed(record)
        cp_name = f"cp/{ns}/{checkpoint['id']}"
        items[cp_name] = self._rec.pack(typed)
        offsets, words = self._put_entries_or_gone(agent, items, requires)
        self._rec.remember_record(
            (agent.id, agent.generation, cp_name), offsets[cp_name], items[cp_name], typed
        )
        if self.keep is not None:
            # what the trim reads of what this put wrote, known here
            for name, base in bases.items():
                self._rec.remember_summary(agent, name, offsets[name], items[name], base)
            summary = self._rec.checkpoint_summary(*record)
            self._rec.remember_summary(agent, cp_name, offsets[cp_name], items[cp_name], summary)
            try:
                self._trim(agent, ns, c, summary, bases, words)
            except StaleBlock:
                pass  # the thread was deleted after this put wrote: nothing of it is left to trim
        return {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}
        }

    def _trim(
        self,
        agent: Any,
        ns: str,
        checkpoint: dict[str, Any],
        summary: Any,
        bases: dict[str, str | None],
        words: tuple[int, int],
    ) -> None:
        """keep=N after a put (``words``, the index words around it) of
        ``checkpoint`` and values whose delta bases are ``bases``: from what
        the thread's view knows if it followed every change (lgkeep), else
        from a reading of the thread (lgwalks.trim), which teaches the view."""
        assert self.keep is not None
        view = self._views.get(agent.id)
        if view is None or view.generation != agent.generation or view.word != words[1]:
            lgwalks.trim(self._rec, self.serde, agent, ns, self.keep)
            return
        known = view.kept.get(ns)
        if known is None or summary[1]:  # not known yet, or a delta channel's counters (ancestors kept)
            lgwalks.trim(self._rec, self.serde, agent, ns, self.keep, view)
            return
        known.add(checkpoint["id"], lgkeep.values_named(ns, checkpoint))
        for name, base in bases.items():
            known.written(name, base)
        if len(known.ids) > self.keep and not lgkeep.trim_known(self._rec, agent, ns, self.keep, view, known):
            view.kept.pop(ns, None)

    def put_writes(
        self, config: dict[str, Any], writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        _again_if_gone(config, self._put_writes, config, writes, task_id, task_path)

    def _put_writes(
        self, config: dict[str, Any], writes: Sequence[tuple[str, Any]], task_id: str, task_path: str
    ) -> None:
        conf = config["configurable"]
        agent, view = self._thread(conf["thread_id"], create=True)
        ns, cid = conf.get("checkpoint_ns", ""), conf["checkpoint_id"]
        names = view.names if view is not None else set()
        items: dict[str, bytes] = {}
        for idx, (channel, value) in enumerate(writes):
            slot = WRITES_IDX_MAP.get(channel, idx)
            name = f"w/{ns}/{cid}/{task_id}/{slot}"
            if slot >= 0 and name in names:
                continue  # a special write already stored: kept, as LangGraph's savers do
            items[name] = self._rec.pack(self.serde.dumps_typed((task_id, channel, value, task_path, idx)))
        if items:
            self._put_entries_or_gone(agent, items)

    def _put_entries_or_gone(
        self, agent: Any, items: dict[str, bytes], requires: Collection[str] = ()
    ) -> tuple[dict[str, int], tuple[int, int]]:
        try:
            return self._put_entries(agent, items, requires)
        except StaleBlock:
            raise _ThreadGone from None

    def get_tuple(self, config: dict[str, Any]) -> Any:
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        for _ in range(_READ_TRIES):
            try:
                agent, view = self._thread(thread_id, create=False)
                if agent is None or view is None:
                    return None
                cid = _wanted_id(config, view, ns)
                if cid is None or f"cp/{ns}/{cid}" not in view.names:
                    return None
                got = self._tuple(agent, thread_id, ns, cid, view)
            except StaleBlock:
                continue  # the thread was deleted as it was read: look it up again
            if got is not None or get_checkpoint_id(config):
                return got  # the checkpoint asked for, or None: another writer's trim took it as it was read
            # the newest checkpoint went as it was read (newer ones came): the newest again
        raise SwarmSaverError(
            f"thread {thread_id!r}: its newest checkpoint was dropped by another writer "
            f"{_READ_TRIES} times over while it was read; read again"
        )

    def list(
        self,
        config: dict[str, Any] | None,
        *,
        filter: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[Any]:
        if config is None:
            threads = lgthreads.thread_ids(self.heap)
        else:
            threads = [config["configurable"]["thread_id"]]
        ns_wanted = config["configurable"].get("checkpoint_ns") if config else None
        want_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        count = 0
        for thread_id in threads:
            for tup in self._listed(thread_id, ns_wanted, want_id, before_id):
                if filter and not all(tup.metadata.get(k) == v for k, v in filter.items()):
                    continue
                if limit is not None and count >= limit:
                    return
                count += 1
                yield tup

    def _listed(
        self, thread_id: str, ns_wanted: str | None, want_id: str | None, before_id: str | None
    ) -> Iterator[Any]:
        """A thread's checkpoints for list(), newest first in each namespace:
        one another writer's trim took since the ids were read is passed
        over, and a thread deleted as it is listed ends there."""
        try:
            agent = self._agent(thread_id, create=False)
            if agent is None:
                return
            names = agent.names()
        except StaleBlock:
            return
        for ns in sorted({n.split("/")[1] for n in names if n.startswith("cp/")}):
            if ns_wanted is not None and ns != ns_wanted:
                continue
            for cid in reversed(self._rec.checkpoint_ids(agent, ns, names)):
                if (want_id and cid != want_id) or (before_id and cid >= before_id):
                    continue
                try:
                    tup = self._tuple(agent, thread_id, ns, cid)
                except StaleBlock:
                    return
                if tup is not None:
                    yield tup

    def delete_thread(self, thread_id: str) -> None:
        # found, not restored: a cold thread's blob goes with its complete(),
        # and bringing it back first could fail for want of room (PartitionFull)
        agent = self._find_agent(thread_id, create=False)
        self._threads.pop(thread_id, None)
        key = lgthreads.key(thread_id)
        registry = Registry(self.heap)
        try:
            registry.remove(key)
            named = None
        except PartitionFull:
            # no room in `system` for the registry's copy of the name's shard:
            # the thread goes all the same (deleting threads is how a full
            # heap makes room), its name after its memory, if the name is
            # still its own; a name left naming a recycled agent reads as no
            # thread (as a swept thread's does) until a put starts it again
            named = lgthreads.encode(agent.id, agent.generation) if agent is not None else None
        if agent is not None and agent.state in ("live", "offloaded", "restoring"):
            agent.complete()  # the thread's memory back in one recycle (an offloaded one's blob too)
        if named is not None:
            with contextlib.suppress(PartitionFull):
                registry.remove_if(key, named)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        runs = set(run_ids)
        for thread_id in lgthreads.thread_ids(self.heap):
            if not self._may_hold_runs(thread_id, runs):
                continue  # a cold thread none of the runs wrote to stays in the store
            with contextlib.suppress(StaleBlock):  # a thread deleted meanwhile holds no run
                self._delete_runs_of(thread_id, runs)

    def _delete_runs_of(self, thread_id: str, runs: set[str]) -> None:
        agent = self._agent(thread_id, create=False)
        if agent is None:
            return
        spaces = set()
        for name in [n for n in agent.names() if n.startswith("cp/")]:
            _, ns, cid = name.split("/", 2)
            try:
                run_id = self._rec.get(self.serde, agent, name)[1].get("run_id")
            except Missing:
                if name in agent:  # (a touch: an offloaded thread's index is in the store)
                    raise  # still named: its data is damaged
                continue  # another writer's trim took it since the names were read
            if run_id in runs:
                lgwalks.drop(agent, ns, cid)
                spaces.add(ns)
        # the values only the dropped checkpoints named go too (they stayed
        # in the arena until the thread went)
        for ns in spaces:
            lgwalks.drop_unnamed(self._rec, self.serde, agent, ns)

    def _may_hold_runs(self, thread_id: str, runs: set[str]) -> bool:
        """False if the thread is in the store and none of its checkpoints
        names one of ``runs`` (read from its blob: it stays there; bringing
        every cold thread back to look could not fit, and need not)."""
        agent = self._find_agent(thread_id, create=False)
        if agent is None or agent.state != "offloaded":
            return True
        with agent_snapshot.stored_state(agent) as state:
            if state is None:
                return True  # back in the arena meanwhile
            for name, data in state[2]:
                if name.startswith("cp/"):
                    try:
                        record = self.serde.loads_typed(self._rec.unpack(bytes(data)))
                    except SwarmSaverError:
                        return True  # damaged: the full path names the error
                    if record[1].get("run_id") in runs:
                        return True
        return False

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        source = self._agent(source_thread_id, create=False)
        if source is None:
            return
        # the source as of one index word, into the target in one update:
        # copied entry by entry, a trim of the source by another writer
        # meanwhile failed the copy (KeyError), or left the target a
        # checkpoint without the values it names
        entries = source._read_all()
        target = self._agent(target_thread_id, create=True)
        if entries:
            target.put_many(entries)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"strategy is 'keep_latest' or 'delete', not {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            agent = self._agent(thread_id, create=False)
            if agent is not None:
                for ns in {n.split("/")[1] for n in agent.names() if n.startswith("cp/")}:
                    lgwalks.trim(self._rec, self.serde, agent, ns, 1)

    # ---- async: the arena answers without I/O, so these run inline ----

    async def aget_tuple(self, config: dict[str, Any]) -> Any:
        return self.get_tuple(config)

    async def aget_delta_channel_history(self, *, config: dict[str, Any], channels: Sequence[str]) -> Any:
        return self.get_delta_channel_history(config=config, channels=channels)

    async def alist(self, config: dict[str, Any] | None, **kwargs: Any) -> AsyncIterator[Any]:
        for item in self.list(config, **kwargs):
            yield item

    async def aput(self, config: dict[str, Any], checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: dict[str, Any], writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.delete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.copy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.prune(thread_ids, strategy=strategy)

    # ---- helpers ----

    def _view(self, agent: Any) -> ThreadView:
        word, (_, _, entries) = agent._read_index_word()
        for tries_left in range(_READ_TRIES, -1, -1):
            # offloaded since _agent() looked (its word sealed, or none): its
            # index is in the store. A view of the sealed word named nothing,
            # and a checkpoint read through it (its record read restores the
            # thread) read back with no values at all
            if word != SEALED_WORD and (word or agent.state == "live"):
                break
            if not tries_left:
                raise SwarmSaverError(
                    f"thread agent {agent.id} was offloaded again each time it was brought back "
                    f"({_READ_TRIES} times): read again"
                )
            agent.restore()
            word, (_, _, entries) = agent._read_index_word()
        view = self._views.get(agent.id)
        if view is None or view.generation != agent.generation or view.word != word:
            if len(self._views) >= RAW_CACHE:
                self._views.clear()
            view = self._views[agent.id] = ThreadView(agent.generation, word, entries)
        view.entries = entries
        return view

    def _newest_of(self, agent: Any) -> dict[tuple[str, str], str]:
        """The agent's (ns, channel) -> newest version's entry name, as this saver put or read them."""
        known = self._newest.get(agent.id)
        if known is None or known[0] != agent.generation:
            known = self._newest[agent.id] = (agent.generation, {})
        return known[1]

    def _put_entries(
        self, agent: Any, items: dict[str, bytes], requires: Collection[str] = ()
    ) -> tuple[dict[str, int], tuple[int, int]]:
        """One index update (onto an index holding ``requires``); the
        thread's view follows it if it was current. Returns where each entry
        went (its block's offset), and the index words before and after."""
        words, named = agent._put_named(items, requires)
        view = self._views.get(agent.id)
        if view is not None and view.generation == agent.generation and not view.advance(words, items):
            del self._views[agent.id]
        return {name: offset for name, offset, _ in named}, words

    def _tuple(self, agent: Any, thread_id: str, ns: str, cid: str, view: ThreadView | None = None) -> Any:
        """Checkpoint ``cid``'s tuple; None if another writer's trim dropped
        it while it was read. A checkpoint goes with its values and writes in
        one update, and a value's delta base only after the value was stored
        whole again: what a checkpoint still there names is missing only if
        it was read across such a change (read again) or damaged."""
        for _ in range(_READ_TRIES - 1):
            try:
                return self._tuple_read(agent, thread_id, ns, cid, view)
            except Missing:
                if f"cp/{ns}/{cid}" not in agent:  # (a touch: an offloaded thread's index is in the store)
                    return None
                view = None  # a delta's base went as it was read: again, from the index as it is now
        return self._tuple_read(agent, thread_id, ns, cid, None)  # damaged: it says what is missing

    def _tuple_read(
        self, agent: Any, thread_id: str, ns: str, cid: str, view: ThreadView | None = None
    ) -> Any:
        if view is None:
            view = self._view(agent)
        checkpoint, metadata, parent = self._rec.get(self.serde, agent, f"cp/{ns}/{cid}", view.entries)
        names = view.names
        values = {}
        newest = self._newest_of(agent)
        for channel, version in checkpoint["channel_versions"].items():
            name = f"blob/{ns}/{channel}/{version}"
            if name not in names:
                continue  # a channel with no value at that version
            typed = self._rec.value(agent, name)
            newest[(ns, channel)] = name
            if typed[0] != "empty":
                values[channel] = self.serde.loads_typed(typed)
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}
        parent_config = (
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
            if parent
            else None
        )
        return CheckpointTuple(
            config=config,
            checkpoint={**checkpoint, "channel_values": values},
            metadata=metadata,
            parent_config=parent_config,
            pending_writes=self._rec.pending_writes(self.serde, agent, ns, cid, view),
        )

    def get_delta_channel_history(self, *, config: dict[str, Any], channels: Sequence[str]) -> Any:
        """For each of ``channels`` (DeltaChannel, beta), the pending writes of
        the checkpoint's ancestors back to the nearest one holding the
        channel's value, and that value as its seed (lgwalks.delta_history)."""
        if not channels:
            return {}
        conf = config["configurable"]
        ns = conf.get("checkpoint_ns", "")
        for _ in range(_READ_TRIES - 1):
            try:
                return self._delta_history(conf["thread_id"], ns, config, channels)
            except (Missing, StaleBlock):
                # another writer's trim or delete changed the thread as it was
                # walked: again, from the thread as it is now (a checkpoint gone
                # by then has no history, as get_tuple finds none)
                continue
        return self._delta_history(
            conf["thread_id"], ns, config, channels
        )  # damaged: it says what is missing

    def _delta_history(self, thread_id: str, ns: str, config: dict[str, Any], channels: Sequence[str]) -> Any:
        agent, view = self._thread(thread_id, create=False)
        if agent is None or view is None:
            return {channel: {"writes": []} for channel in channels}
        return lgwalks.delta_history(
            self._rec, self.serde, agent, view, ns, _wanted_id(config, view, ns), channels
        )
