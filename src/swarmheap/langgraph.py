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

import bisect
import builtins
import random
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

from swarmheap import agent_snapshot, index, lgthreads, lgvalues, snapshot
from swarmheap._extras import require
from swarmheap.errors import CorruptSnapshot, PartitionFull, StaleBlock, SwarmHeapError
from swarmheap.heap import Heap
from swarmheap.lgvalues import SMALL, Listed, Splice
from swarmheap.registry import Registry
from swarmheap.stores import Store

_base = require("langgraph.checkpoint.base", "langgraph")
BaseCheckpointSaver = _base.BaseCheckpointSaver
CheckpointTuple = _base.CheckpointTuple
get_checkpoint_id = _base.get_checkpoint_id
get_checkpoint_metadata = _base.get_checkpoint_metadata
WRITES_IDX_MAP = _base.WRITES_IDX_MAP


def _writes_sort_key(task_path: str, task_id: str = "", idx: int = 0) -> tuple[str, str, int]:
    return (task_path, task_id, idx)


# The order of a super-step's writes, as live execution applies them
# (langgraph-checkpoint 4 names it; older ones sorted the same way)
writes_sort_key = getattr(_base, "writes_sort_key", _writes_sort_key)
# Where LangGraph (DeltaChannel, beta) records, per checkpoint, the delta
# channels with updates since their last snapshot: their value is rebuilt
# from the ancestors' writes back to that snapshot
_DELTA_COUNTERS = "counters_since_delta_snapshot"

__all__ = ["SwarmSaver", "SwarmSaverError"]

# A channel value's record: b"F" + the serde bytes (framed with the saver's
# codec), or b"D" + depth, base name + a zstd delta against the base's serde
# bytes (framed with codec "none": the delta is compressed already).
_FULL, _DELTA = b"F", b"D"
_DELTA_HEAD = struct.Struct("<BH")  # chain depth (1 for a delta on a full value), base name length
DELTA_CHAIN = 16
_RAW_CACHE = 512  # serde bytes of the values this saver last wrote or read
# ... and at most this many bytes of them: a long thread's message list is
# megabytes, and 512 of its versions would hold gigabytes of this process
_RAW_CACHE_BYTES = 64 << 20
# A whole value (every DELTA_CHAIN-th version of a channel) is compressed at
# zstd's level 1: on message lists it ran twice as fast as level 3 for a
# few percent more bytes, and it is on the put path of every 16th step
_WHOLE_ZSTD_LEVEL = 1


_K = TypeVar("_K")
_V = TypeVar("_V")
_R = TypeVar("_R")


class _Recent(OrderedDict[_K, _V]):
    """The values this saver last remembered: at most _RAW_CACHE of them and
    _RAW_CACHE_BYTES of their serde bytes (``size_of`` a value), the least
    recently remembered out first; the newest always stays."""

    def __init__(self, size_of: Callable[[_V], int]) -> None:
        super().__init__()
        self.size_of = size_of
        self.nbytes = 0

    def remember(self, key: _K, value: _V) -> None:
        size_of = self.size_of
        old = self.pop(key, None)
        self[key] = value
        self.nbytes += size_of(value) - (size_of(old) if old is not None else 0)
        while len(self) > 1 and (len(self) > _RAW_CACHE or self.nbytes > _RAW_CACHE_BYTES):
            self.nbytes -= size_of(self.popitem(last=False)[1])


class _ThreadView:
    """What a thread's entry names say, for the index word they were read
    under: its names, checkpoint ids per namespace (sorted) and pending
    writes per checkpoint. Built in one pass when the word is new; moved to
    the next word in place after this saver's own update of it."""

    def __init__(self, generation: int, word: int, names: Any) -> None:
        self.generation, self.word = generation, word
        self.entries = names  # the index's entries under the word _view last read
        self.names: set[str] = set()
        self.ids: dict[str, builtins.list[str]] = {}
        self.writes: dict[tuple[str, str], builtins.list[str]] = {}
        for name in names:
            self._add(name)
        for ids in self.ids.values():
            ids.sort()

    def _add(self, name: str) -> None:
        if name in self.names:
            return
        self.names.add(name)
        if name[:1] == "b":  # a channel value (blob/...), most of what a put adds: neither list
            return
        if name.startswith("cp/"):
            _, ns, cid = name.split("/", 2)
            if "/" not in cid:
                bisect.insort(self.ids.setdefault(ns, []), cid)
        elif name.startswith("w/"):
            parts = name.split("/", 3)
            if len(parts) == 4:
                self.writes.setdefault((parts[1], parts[2]), []).append(name)

    def advance(self, words: tuple[int, int], added: Any) -> bool:
        """After an update from ``words[0]`` to ``words[1]`` that added ``added``."""
        if words[0] != self.word:
            return False
        for name in added:
            self._add(name)
        self.word = words[1]
        return True


class SwarmSaverError(SwarmHeapError):
    """A thread's checkpoint data is damaged (or names what is not there)."""


# A write that finds its thread deleted under it (another thread or process
# deleted it) starts the thread again, as a write after the delete would.
_GONE_TRIES = 3


class _ThreadGone(Exception):
    """The thread's agent was recycled (the thread deleted) before a write went in."""


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


class _Missing(SwarmSaverError):
    """A record the thread's data names is not there (damage, or a
    concurrent trim of the thread took it)."""


def _delete_if_there(agent: Any, name: str) -> None:
    try:
        agent.delete(name)
    except KeyError:
        pass  # another writer of the thread removed it first


class SwarmSaver(BaseCheckpointSaver):  # type: ignore[misc,valid-type]
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
        index.check_kind(kind)  # here, not at the first put
        self.heap = heap
        self.codec = compress or "none"
        self.keep = keep
        self.kind = kind
        self.store = store
        # (agent id, generation, entry name) -> (serde bytes, chain depth, the
        # list it was made from, if the value is a list this saver wrote)
        self._raws: _Recent[tuple[int, int, str], tuple[bytes, int, Listed | None]] = _Recent(
            lambda value: len(value[0])
        )
        self._threads: dict[str, Any] = {}  # thread id -> its Agent, checked by generation on use
        self._views: dict[int, _ThreadView] = {}  # agent id -> what its entry names say, by index word
        # (agent id, generation, entry name) -> a checkpoint record's offset,
        # frame header and serde pair, as this saver wrote or checked it
        # (a pending write may hold a large value: bounded in bytes as the values are)
        self._records: _Recent[tuple[int, int, str], tuple[int, bytes, tuple[str, bytes]]] = _Recent(
            lambda record: len(record[2][1])
        )
        # agent id -> (its generation, (ns, channel) -> the entry name of the
        # channel's newest version here): keyed by the owner slot, so a saver
        # that serves thread after thread holds at most max_owners of these
        # (keyed by generation too, it kept one per thread it ever served)
        self._newest: dict[int, tuple[int, dict[tuple[str, str], str]]] = {}
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
            if len(self._threads) >= _RAW_CACHE:
                self._threads.clear()
            self._threads[thread_id] = agent
        return agent

    def _thread(self, thread_id: str, create: bool) -> tuple[Any, _ThreadView | None]:
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
                    return self.heap._agent_at(agent_id, generation)
                if not create:
                    return None
                registry.swap(key, ref, b"")  # the agent is gone (swept): start the thread again
                continue
            if not create:
                return None
            agent = self.heap.spawn(self.kind, reserve=False)
            if registry.swap(key, ref, lgthreads.encode(agent.id, agent.generation)):
                return agent
            agent.complete()  # another process made this thread first

    def _pack(self, typed: tuple[str, bytes]) -> bytes:
        raw = lgvalues.typed_raw(typed)
        return snapshot.pack(raw, self.codec if len(raw) > SMALL else "none")

    def _unpack(self, blob: bytes) -> tuple[str, bytes]:
        try:
            raw = snapshot.unpack(blob)
            kind, start = lgvalues.type_name(raw)
            return kind, raw[start:]
        except (CorruptSnapshot, struct.error, UnicodeDecodeError) as exc:
            raise SwarmSaverError(f"a checkpoint record is damaged: {exc}") from None

    _typed_raw = staticmethod(lgvalues.typed_raw)

    def _remember_raw(
        self, key: tuple[int, int, str], raw: bytes, depth: int, listed: Listed | None = None
    ) -> None:
        self._raws.remember(key, (raw, depth, listed))

    def _serialized(
        self, agent: Any, value: Any, base: str | None
    ) -> tuple[bytes, Splice | None, Listed | None]:
        """The value's serde bytes (as _typed_raw), the splice that makes
        them from ``base``'s if it grew from it, and (for a list) what the
        next put compares with. A list made of the list ``base`` was made
        from, less some of its front and with new items at its end (the same
        objects, as add_messages and a trimmed window leave them),
        serialises only its new items: a msgpack array is a header and its
        items one after another, so the base's kept items are spliced in as
        they are and a put costs O(new messages). Items are taken as
        unchanged while they are the same objects: a message changed in
        place after a put is not seen (docs/design.md)."""
        if type(value) is not list:
            return self._typed_raw(self.serde.dumps_typed(value)), None, None
        known = self._raws.get((agent.id, agent.generation, base)) if base is not None else None
        listed = known[2] if known is not None else None
        if known is not None and listed is not None:
            dropped = lgvalues.dropped_front(listed[0], value)
            if dropped is not None and (dropped == 0 or listed[1] is not None):
                new = value[len(listed[0]) - dropped :]
                tail = lgvalues.items_bytes(self.serde.dumps_typed, new, want_ends=listed[1] is not None)
                grown = (
                    lgvalues.grown(known[0], listed, dropped, tail, len(value)) if tail is not None else None
                )
                if grown is not None:
                    raw, splice, ends = grown
                    return raw, splice, (value[:], ends)
            if dropped:  # a window sliding over the list: learn where its items end for the next put
                items = lgvalues.items_bytes(self.serde.dumps_typed, value, want_ends=True)
                if items is not None:
                    raw = self._typed_raw(("msgpack", lgvalues.array_header(len(value)) + items[0]))
                    return raw, None, (value[:], items[1])
        return self._typed_raw(self.serde.dumps_typed(value)), None, (value[:], None)

    def _pack_value(
        self,
        agent: Any,
        name: str,
        raw: bytes,
        base: str | None,
        listed: Listed | None,
        splice: Splice | None = None,
    ) -> bytes:
        """A channel value's record: a delta on ``base`` where that pays
        (``splice`` if the caller knows it), else whole."""
        key = (agent.id, agent.generation, name)
        known = self._raws.get((agent.id, agent.generation, base)) if base else None
        if self.codec == "zstd" and known is not None and known[1] < DELTA_CHAIN - 1 and base is not None:
            base_b = base.encode()
            head = _DELTA + _DELTA_HEAD.pack(known[1] + 1, len(base_b)) + base_b
            self._remember_raw(key, raw, known[1] + 1, listed)
            delta = lgvalues.splice_record(splice) if splice is not None else lgvalues.delta(known[0], raw)
            return snapshot.pack(head + delta, "none")
        self._remember_raw(key, raw, 0, listed)
        return self._whole(raw)

    def _whole(self, raw: bytes) -> bytes:
        """A channel value's record holding its serde bytes whole (not a delta)."""
        return snapshot.pack(_FULL + raw, self.codec, _WHOLE_ZSTD_LEVEL if self.codec == "zstd" else None)

    def _record(self, agent: Any, name: str) -> bytes:
        try:
            return snapshot.unpack(agent.read(name))
        except KeyError:
            raise SwarmSaverError(f"thread data names {name!r}, which is not there") from None
        except CorruptSnapshot as exc:
            raise SwarmSaverError(f"a checkpoint record is damaged: {exc}") from None

    @staticmethod
    def _delta_parts(record: bytes) -> tuple[int, str, bytes]:
        depth, n = _DELTA_HEAD.unpack_from(record, 1)
        start = 1 + _DELTA_HEAD.size
        return depth, record[start : start + n].decode(), record[start + n :]

    def _value_raw(self, agent: Any, name: str, hops: int = 0) -> bytes:
        """A channel value's serde bytes, decoding its chain of deltas."""
        if hops > DELTA_CHAIN:
            raise SwarmSaverError(f"value {name!r} is in a chain of more than {DELTA_CHAIN} deltas (a loop?)")
        key = (agent.id, agent.generation, name)
        hit = self._raws.get(key)
        if hit is not None:
            return hit[0]
        record = self._record(agent, name)
        try:
            if record[:1] == _FULL:
                raw, depth = record[1:], 0
            elif record[:1] == _DELTA:
                depth, base, delta = self._delta_parts(record)
                if depth >= DELTA_CHAIN:
                    raise SwarmSaverError(f"value {name!r} claims a chain of {depth} deltas")
                raw = lgvalues.undelta(self._value_raw(agent, base, hops + 1), delta)
            else:
                raise SwarmSaverError(f"value {name!r} is neither whole nor a delta")
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise SwarmSaverError(f"value {name!r} is damaged: {exc}") from None
        except require("zstandard", "compress").ZstdError as exc:
            raise SwarmSaverError(f"value {name!r} does not decode against its base: {exc}") from None
        self._remember_raw(key, raw, depth)
        return raw

    def _value(self, agent: Any, name: str) -> tuple[str, bytes | memoryview]:
        raw = self._value_raw(agent, name)
        try:
            kind, start = lgvalues.type_name(raw)
            # msgpack (what states are) is read from a view of the serde bytes:
            # a value is a whole state, and a slice copied it on every read
            return kind, memoryview(raw)[start:] if kind == "msgpack" else raw[start:]
        except (struct.error, UnicodeDecodeError) as exc:
            raise SwarmSaverError(f"value {name!r} is damaged: {exc}") from None

    def _base_of(self, agent: Any, name: str) -> str | None:
        """The value a delta record is decoded against (None for a whole one)."""
        try:
            blob = agent.read(name)
        except KeyError:
            return None
        if snapshot.frame_info(blob)["codec"] != "none":
            return None  # deltas are framed uncompressed; this one is whole
        record = snapshot.unpack(blob)
        return self._delta_parts(record)[1] if record[:1] == _DELTA else None

    def _get(self, agent: Any, name: str, entries: Any = None) -> Any:
        # A record this saver wrote or checked: the frame header (its checksum
        # and sizes) is read back from the arena and compared, so a record
        # rewritten in place, by anyone, is read again; the rest is not.
        entry = (agent._read_index()[2] if entries is None else entries).get(name)
        key = (agent.id, agent.generation, name)
        hit = self._records.get(key)
        if hit is not None and entry is not None and hit[0] == entry[0]:
            head = self.heap._owner_read(agent.id, agent.generation, entry[0], len(hit[1]))
            if head == hit[1]:
                return self.serde.loads_typed(hit[2])
        try:
            blob = agent.read(name)
        except KeyError:
            raise _Missing(f"thread data names {name!r}, which is not there") from None
        typed = self._unpack(blob)
        if entry is not None:
            self._remember_record(key, entry[0], blob, typed)
        return self.serde.loads_typed(typed)

    def _remember_record(
        self, key: tuple[int, int, str], offset: int, blob: bytes, typed: tuple[str, bytes]
    ) -> None:
        self._records.remember(key, (offset, blob[: snapshot.FRAME.size], typed))

    # ---- the BaseCheckpointSaver protocol ----

    def put(
        self, config: dict[str, Any], checkpoint: dict[str, Any], metadata: Any, new_versions: Any
    ) -> Any:
        try:
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
        c = checkpoint.copy()
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        agent, view = self._thread(thread_id, create=True)
        values: dict[str, Any] = c.pop("channel_values")
        names = view.names if view is not None else set()
        items: dict[str, bytes] = {}
        newest = self._newest_of(agent)
        for channel, version in new_versions.items():
            name = f"blob/{ns}/{channel}/{version}"
            base = newest.get((ns, channel))
            if not (base is not None and base != name and base in names):  # a version put again is whole
                base = None
            splice = listed = None
            if channel in values:
                raw, splice, listed = self._serialized(agent, values[channel], base)
            else:
                raw = self._typed_raw(("empty", b""))
            items[name] = self._pack_value(agent, name, raw, base, listed, splice)
            newest[(ns, channel)] = name
        record = (c, get_checkpoint_metadata(config, metadata), conf.get("checkpoint_id"))
        typed = self.serde.dumps_typed(record)
        cp_name = f"cp/{ns}/{checkpoint['id']}"
        items[cp_name] = self._pack(typed)
        offset = self._put_entries_or_gone(agent, items)[cp_name]
        self._remember_record((agent.id, agent.generation, cp_name), offset, items[cp_name], typed)
        if self.keep is not None:
            try:
                self._trim(agent, ns, self.keep)
            except StaleBlock:
                pass  # the thread was deleted after this put wrote: nothing of it is left to trim
        return {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}
        }

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
            items[name] = self._pack(self.serde.dumps_typed((task_id, channel, value, task_path, idx)))
        if items:
            self._put_entries_or_gone(agent, items)

    def _put_entries_or_gone(self, agent: Any, items: dict[str, bytes]) -> dict[str, int]:
        try:
            return self._put_entries(agent, items)
        except StaleBlock:
            raise _ThreadGone from None

    def get_tuple(self, config: dict[str, Any]) -> Any:
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        agent, view = self._thread(thread_id, create=False)
        if agent is None or view is None:
            return None
        ids = view.ids.get(ns, [])
        cid = get_checkpoint_id(config) or (ids[-1] if ids else None)
        if cid is None or f"cp/{ns}/{cid}" not in view.names:
            return None
        return self._tuple(agent, thread_id, ns, cid, view)

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
            agent = self._agent(thread_id, create=False)
            if agent is None:
                continue
            for ns in sorted({n.split("/")[1] for n in agent.names() if n.startswith("cp/")}):
                if ns_wanted is not None and ns != ns_wanted:
                    continue
                for cid in reversed(self._checkpoint_ids(agent, ns)):
                    if (want_id and cid != want_id) or (before_id and cid >= before_id):
                        continue
                    tup = self._tuple(agent, thread_id, ns, cid)
                    if filter and not all(tup.metadata.get(k) == v for k, v in filter.items()):
                        continue
                    if limit is not None and count >= limit:
                        return
                    count += 1
                    yield tup

    def delete_thread(self, thread_id: str) -> None:
        # found, not restored: a cold thread's blob goes with its complete(),
        # and bringing it back first could fail for want of room (PartitionFull)
        agent = self._find_agent(thread_id, create=False)
        self._threads.pop(thread_id, None)
        Registry(self.heap).remove(lgthreads.key(thread_id))
        if agent is not None and agent.state in ("live", "offloaded", "restoring"):
            agent.complete()  # the thread's memory back in one recycle (an offloaded one's blob too)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        runs = set(run_ids)
        for thread_id in lgthreads.thread_ids(self.heap):
            if not self._may_hold_runs(thread_id, runs):
                continue  # a cold thread none of the runs wrote to stays in the store
            agent = self._agent(thread_id, create=False)
            if agent is None:
                continue
            spaces = set()
            for name in [n for n in agent.names() if n.startswith("cp/")]:
                _, ns, cid = name.split("/", 2)
                if self._get(agent, name)[1].get("run_id") in runs:
                    self._drop(agent, ns, cid)
                    spaces.add(ns)
            # the values only the dropped checkpoints named go too (they stayed
            # in the arena until the thread went)
            for ns in spaces:
                names = agent.names()
                self._drop_unnamed_values(agent, ns, names, self._checkpoint_ids(agent, ns, names))

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
                        record = self.serde.loads_typed(self._unpack(bytes(data)))
                    except SwarmSaverError:
                        return True  # damaged: the full path names the error
                    if record[1].get("run_id") in runs:
                        return True
        return False

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        source = self._agent(source_thread_id, create=False)
        if source is None:
            return
        target = self._agent(target_thread_id, create=True)
        for name in source.names():
            target.put(name, source.read(name))

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
                    self._trim(agent, ns, 1)

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

    def _view(self, agent: Any) -> _ThreadView:
        word, (_, _, entries) = agent._read_index_word()
        if not word and agent.state != "live":  # offloaded since _agent() looked: its index is in the store
            agent.restore()
            word, (_, _, entries) = agent._read_index_word()
        view = self._views.get(agent.id)
        if view is None or view.generation != agent.generation or view.word != word:
            if len(self._views) >= _RAW_CACHE:
                self._views.clear()
            view = self._views[agent.id] = _ThreadView(agent.generation, word, entries)
        view.entries = entries
        return view

    def _newest_of(self, agent: Any) -> dict[tuple[str, str], str]:
        """The agent's (ns, channel) -> newest version's entry name, as this saver put or read them."""
        known = self._newest.get(agent.id)
        if known is None or known[0] != agent.generation:
            known = self._newest[agent.id] = (agent.generation, {})
        return known[1]

    def _put_entries(self, agent: Any, items: dict[str, bytes]) -> dict[str, int]:
        """One index update; the thread's view follows it if it was current.
        Returns where each entry went (its block's offset)."""
        words, named = agent._put_named(items)
        view = self._views.get(agent.id)
        if view is not None and view.generation == agent.generation and not view.advance(words, items):
            del self._views[agent.id]
        return {name: offset for name, offset, _ in named}

    def _checkpoint_ids(self, agent: Any, ns: str, names: Any = None) -> builtins.list[str]:
        prefix = f"cp/{ns}/"
        return sorted(
            n[len(prefix) :]
            for n in (agent.names() if names is None else names)
            if n.startswith(prefix) and "/" not in n[len(prefix) :]
        )

    def _tuple(self, agent: Any, thread_id: str, ns: str, cid: str, view: _ThreadView | None = None) -> Any:
        if view is None:
            view = self._view(agent)
        checkpoint, metadata, parent = self._get(agent, f"cp/{ns}/{cid}", view.entries)
        names = view.names
        values = {}
        newest = self._newest_of(agent)
        for channel, version in checkpoint["channel_versions"].items():
            name = f"blob/{ns}/{channel}/{version}"
            if name not in names:
                continue  # a channel with no value at that version
            typed = self._value(agent, name)
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
            pending_writes=self._pending_writes(agent, ns, cid, view),
        )

    def _pending_writes(self, agent: Any, ns: str, cid: str, view: _ThreadView) -> builtins.list[Any]:
        """A checkpoint's pending writes, (task id, channel, value), in the
        order live execution applied them (writes_sort_key: task path first,
        a special write by its slot, as it is stored): a DeltaChannel is
        rebuilt by replaying them, and an order-sensitive reducer rebuilt
        another value from (task id, index) order."""
        writes = []
        for name in view.writes.get((ns, cid), ()):
            if name in view.names:
                task_id, channel, value, path, idx = self._get(agent, name, view.entries)
                key = writes_sort_key(path, task_id, WRITES_IDX_MAP.get(channel, idx))
                writes.append((key, task_id, channel, value))
        writes.sort(key=lambda w: w[0])
        return [(task_id, channel, value) for _, task_id, channel, value in writes]

    def _held_values(
        self, agent: Any, ns: str, checkpoint: Any, channels: Any, names: Any
    ) -> builtins.list[tuple[str, tuple[str, bytes | memoryview]]]:
        """(channel, typed value) for each of ``channels`` that holds a value
        at ``checkpoint`` (not "empty"): where a delta channel's walk up the
        parents ends, its seed."""
        versions = checkpoint["channel_versions"]
        held = []
        for channel in [c for c in channels if c in versions]:
            name = f"blob/{ns}/{channel}/{versions[channel]}"
            if name in names:
                typed = self._value(agent, name)
                if typed[0] != "empty":
                    held.append((channel, typed))
        return held

    def get_delta_channel_history(self, *, config: dict[str, Any], channels: Sequence[str]) -> Any:
        """For each of ``channels`` (DeltaChannel, beta), the pending writes of
        the checkpoint's ancestors back to the nearest one holding the
        channel's value, and that value as its seed: what LangGraph's default
        returns, walking get_tuple. That decoded every channel of every
        ancestor, up to snapshot_frequency of them at each step; this decodes
        each ancestor's record and writes, and a value only for a seed."""
        if not channels:
            return {}
        found: dict[str, builtins.list[Any]] = {channel: [] for channel in channels}
        seeds: dict[str, Any] = {}
        conf = config["configurable"]
        ns = conf.get("checkpoint_ns", "")
        agent, view = self._thread(conf["thread_id"], create=False)
        if agent is not None and view is not None:
            ids = view.ids.get(ns, [])
            cid = get_checkpoint_id(config) or (ids[-1] if ids else None)
            cursor = None
            if cid is not None and f"cp/{ns}/{cid}" in view.names:
                cursor = self._get(agent, f"cp/{ns}/{cid}", view.entries)[2]
            remaining = set(channels)
            while cursor and remaining and f"cp/{ns}/{cursor}" in view.names:
                checkpoint, _, parent = self._get(agent, f"cp/{ns}/{cursor}", view.entries)
                for write in reversed(self._pending_writes(agent, ns, cursor, view)):
                    if write[1] in remaining:
                        found[write[1]].append(write)
                for channel, typed in self._held_values(agent, ns, checkpoint, remaining, view.names):
                    seeds[channel] = self.serde.loads_typed(typed)
                    remaining.discard(channel)
                cursor = parent
        history: dict[str, Any] = {}
        for channel in channels:
            history[channel] = {"writes": builtins.list(reversed(found[channel]))}
            if channel in seeds:
                history[channel]["seed"] = seeds[channel]
        return history

    def _drop(self, agent: Any, ns: str, cid: str, names: Any = None) -> None:
        for name in [
            n
            for n in (agent.names() if names is None else names)
            if n == f"cp/{ns}/{cid}" or n.startswith(f"w/{ns}/{cid}/")
        ]:
            _delete_if_there(agent, name)

    def _trim(self, agent: Any, ns: str, keep: int) -> None:
        # One reading of the names decides, and what another writer of the
        # thread (a thread or process trimming it too) removed meanwhile is
        # passed over: two puts of one thread trimming at once failed on the
        # records and entries the other had dropped, and the second one's
        # blob pass, reading the names again, deleted a version a checkpoint
        # put since then names.
        names = agent.names()
        ids = self._checkpoint_ids(agent, ns, names)
        records: dict[str, Any] = {}  # each checkpoint's record, decoded once for both passes
        kept = self._with_delta_ancestors(agent, ns, ids, ids[-keep:], names, records)
        for cid in ids:
            if cid not in kept:
                self._drop(agent, ns, cid, names)
        self._drop_unnamed_values(agent, ns, names, sorted(kept), records)

    def _checkpoint_record(self, agent: Any, ns: str, cid: str, records: dict[str, Any]) -> Any:
        """(checkpoint, metadata, parent id) of a checkpoint, None if it is
        gone (dropped by another writer of the thread meanwhile)."""
        if cid not in records:
            try:
                records[cid] = self._get(agent, f"cp/{ns}/{cid}")
            except _Missing:
                records[cid] = None
        return records[cid]

    def _with_delta_ancestors(
        self,
        agent: Any,
        ns: str,
        ids: Sequence[str],
        kept: Sequence[str],
        names: Any,
        records: dict[str, Any],
    ) -> set[str]:
        """``kept`` and the ancestors LangGraph reads to rebuild their delta
        channels (DeltaChannel): from each kept checkpoint up its parent
        chain, for each channel its metadata counts updates of since a
        snapshot, to the nearest ancestor that holds the channel's value, as
        get_delta_channel_history walks. Trimmed without them, such a
        channel read back empty or short, and no error said so."""
        present, named = set(ids), set(names)
        keep = set(kept)
        walked: dict[str, set[str]] = {}  # checkpoint -> channels a walk through it looked for already
        for cid in kept:
            record = self._checkpoint_record(agent, ns, cid, records)
            if record is None:
                continue
            _, metadata, parent = record
            remaining = set((metadata or {}).get(_DELTA_COUNTERS) or ())
            while parent and remaining and parent in present:
                if remaining <= walked.get(parent, set()):
                    break  # a walk from a newer checkpoint went on from here for these
                walked.setdefault(parent, set()).update(remaining)
                keep.add(parent)
                record = self._checkpoint_record(agent, ns, parent, records)
                if record is None:
                    break
                checkpoint, _, grandparent = record
                for channel, _ in self._held_values(agent, ns, checkpoint, remaining, named):
                    remaining.discard(channel)  # its seed: the walk for it ends here
                parent = grandparent
        return keep

    def _drop_unnamed_values(
        self, agent: Any, ns: str, names: Any, kept: Sequence[str], records: dict[str, Any] | None = None
    ) -> None:
        """Delete the channel versions of ``ns`` among ``names`` that no
        checkpoint in ``kept`` names any more (``records``: those decoded already)."""
        named: set[str] = set()
        records = {} if records is None else records
        for cid in kept:
            record = self._checkpoint_record(agent, ns, cid, records)
            if record is None:
                continue  # dropped by a writer that saw newer checkpoints: it names what they keep
            checkpoint = record[0]
            named.update(f"blob/{ns}/{ch}/{v}" for ch, v in checkpoint["channel_versions"].items())
        # a kept delta whose base goes is stored whole first, so that keep=N
        # bounds the thread (the chain does not hold older versions back)
        rebased: dict[str, bytes] = {}
        for name in sorted(named):
            base = self._base_of(agent, name)
            if base is not None and base not in named:
                raw = self._value_raw(agent, name)
                rebased[name] = self._whole(raw)
                known = self._raws.get((agent.id, agent.generation, name))
                self._remember_raw((agent.id, agent.generation, name), raw, 0, known[2] if known else None)
        if rebased:
            agent.put_many(rebased)
        for name in names:
            if name.startswith(f"blob/{ns}/") and name not in named:
                _delete_if_there(agent, name)
