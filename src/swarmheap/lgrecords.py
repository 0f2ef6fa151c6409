"""The records of a LangGraph thread's data in its agent's named entries,
and what a SwarmSaver remembers of those it last wrote or read.

A channel value's record: b"F" + the serde bytes (framed with the saver's
codec), or b"D" + depth, base name + a delta against the base's serde bytes
(lgvalues.py; framed with codec "none": the delta is compressed already).
A checkpoint's record (``cp/NS/ID``) and a pending write's
(``w/NS/ID/TASK/SLOT``) are serde pairs in a snapshot frame."""

from __future__ import annotations

import struct
from typing import Any

from swarmheap import lgvalues, snapshot
from swarmheap._extras import require
from swarmheap.errors import CorruptSnapshot, IndexMoved, SwarmHeapError
from swarmheap.heap import Heap
from swarmheap.lgvalues import SMALL, Listed, Splice
from swarmheap.lgview import Recent, ThreadView

__all__ = ["DELTA_CHAIN", "DELTA_COUNTERS", "Missing", "SwarmSaverError", "ThreadRecords", "delete_if_there"]

_base = require("langgraph.checkpoint.base", "langgraph")
WRITES_IDX_MAP = _base.WRITES_IDX_MAP


def _writes_sort_key(task_path: str, task_id: str = "", idx: int = 0) -> tuple[str, str, int]:
    return (task_path, task_id, idx)


# The order of a super-step's writes, as live execution applies them
# (langgraph-checkpoint 4 names it; older ones sorted the same way)
writes_sort_key = getattr(_base, "writes_sort_key", _writes_sort_key)

_FULL, _DELTA = b"F", b"D"
# Where LangGraph (DeltaChannel, beta) records, per checkpoint, the delta
# channels with updates since their last snapshot: their value is rebuilt
# from the ancestors' writes back to that snapshot
DELTA_COUNTERS = "counters_since_delta_snapshot"
_HEAD = snapshot.FRAME.size  # a record's frame header: its checksum tells one record from another
_DELTA_HEAD = struct.Struct("<BH")  # chain depth (1 for a delta on a full value), base name length
DELTA_CHAIN = 16
# A whole value (every DELTA_CHAIN-th version of a channel) is compressed at
# zstd's level 1: on message lists it ran twice as fast as level 3 for a
# few percent more bytes, and it is on the put path of every 16th step
_WHOLE_ZSTD_LEVEL = 1


class SwarmSaverError(SwarmHeapError):
    """A thread's checkpoint data is damaged (or names what is not there)."""


class Missing(SwarmSaverError):
    """A record the thread's data names is not there (damage, or a
    concurrent trim of the thread took it)."""


def delete_if_there(agent: Any, name: str) -> None:
    try:
        agent.delete(name)
    except KeyError:
        pass  # another writer of the thread removed it first


class ThreadRecords:
    """Encodes and reads threads' records, remembering the serde bytes of
    the values it last wrote or read (the bases of the next deltas, and
    reads that decode nothing) and the checkpoint and write records it
    wrote or checked. Calls that (de)serialise take the saver's serde: a
    clone of the saver (BaseCheckpointSaver.with_allowlist) has its own and
    shares these."""

    def __init__(self, heap: Heap, codec: str) -> None:
        self.heap = heap
        self.codec = codec
        # (agent id, generation, entry name) -> (serde bytes, chain depth, the
        # list it was made from, if the value is a list this saver wrote)
        self.raws: Recent[tuple[int, int, str], tuple[bytes, int, Listed | None]] = Recent(
            lambda value: len(value[0])
        )
        # (agent id, generation, entry name) -> a checkpoint record's offset,
        # frame header and serde pair, as this saver wrote or checked it
        # (a pending write may hold a large value: bounded in bytes as the values are)
        self.records: Recent[tuple[int, int, str], tuple[int, bytes, tuple[str, bytes]]] = Recent(
            lambda record: len(record[2][1])
        )
        # (agent id, generation, entry name) -> (offset, frame header, what a
        # trim needs of it, the index entry it was last checked under): a
        # checkpoint's channel versions, delta counters and parent; a
        # channel value's base (None: whole). keep=N trims on
        # every put, and decoded each kept checkpoint and read each value's
        # record whole to learn them: 4.8 ms a put at keep=200
        self.summaries: Recent[tuple[int, int, str], tuple[Any, ...]] = Recent(lambda _: 256)

    def pack(self, typed: tuple[str, bytes]) -> bytes:
        raw = lgvalues.typed_raw(typed)
        return snapshot.pack(raw, self.codec if len(raw) > SMALL else "none")

    def unpack(self, blob: bytes) -> tuple[str, bytes]:
        try:
            raw = snapshot.unpack(blob)
            kind, start = lgvalues.type_name(raw)
            return kind, raw[start:]
        except (CorruptSnapshot, struct.error, UnicodeDecodeError) as exc:
            raise SwarmSaverError(f"a checkpoint record is damaged: {exc}") from None

    def remember_raw(
        self, key: tuple[int, int, str], raw: bytes, depth: int, listed: Listed | None = None
    ) -> None:
        self.raws.remember(key, (raw, depth, listed))

    def serialized(
        self, serde: Any, agent: Any, value: Any, base: str | None
    ) -> tuple[bytes, Splice | None, Listed | None]:
        """The value's serde bytes (as lgvalues.typed_raw), the splice that makes
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
            return lgvalues.typed_raw(serde.dumps_typed(value)), None, None
        known = self.raws.get((agent.id, agent.generation, base)) if base is not None else None
        listed = known[2] if known is not None else None
        if known is not None and listed is not None:
            dropped = lgvalues.dropped_front(listed[0], value)
            if dropped is not None and (dropped == 0 or listed[1] is not None):
                new = value[len(listed[0]) - dropped :]
                tail = lgvalues.items_bytes(serde.dumps_typed, new, want_ends=listed[1] is not None)
                grown = (
                    lgvalues.grown(known[0], listed, dropped, tail, len(value)) if tail is not None else None
                )
                if grown is not None:
                    raw, splice, ends = grown
                    return raw, splice, (value[:], ends)
            if dropped:  # a window sliding over the list: learn where its items end for the next put
                items = lgvalues.items_bytes(serde.dumps_typed, value, want_ends=True)
                if items is not None:
                    raw = lgvalues.typed_raw(("msgpack", lgvalues.array_header(len(value)) + items[0]))
                    return raw, None, (value[:], items[1])
        return lgvalues.typed_raw(serde.dumps_typed(value)), None, (value[:], None)

    def pack_value(
        self,
        agent: Any,
        name: str,
        raw: bytes,
        base: str | None,
        listed: Listed | None,
        splice: Splice | None = None,
    ) -> tuple[bytes, str | None]:
        """A channel value's record: a delta on ``base`` where that pays
        (``splice`` if the caller knows it), else whole; and the base it is a
        delta on (None: whole)."""
        key = (agent.id, agent.generation, name)
        known = self.raws.get((agent.id, agent.generation, base)) if base else None
        if self.codec == "zstd" and known is not None and known[1] < DELTA_CHAIN - 1 and base is not None:
            base_b = base.encode()
            head = _DELTA + _DELTA_HEAD.pack(known[1] + 1, len(base_b)) + base_b
            self.remember_raw(key, raw, known[1] + 1, listed)
            delta = lgvalues.splice_record(splice) if splice is not None else lgvalues.delta(known[0], raw)
            return snapshot.pack(head + delta, "none"), base
        self.remember_raw(key, raw, 0, listed)
        return self.whole(raw), None

    def rewhole(self, agent: Any, name: str, word: int) -> bytes:
        """Value ``name``'s record made whole again (its base is about to go),
        its serde bytes remembered as whole (depth 0). ``word``: the index
        word the caller chose ``name`` under; a value missing once the index
        moved on from it raises IndexMoved (another writer's trim stored it
        whole and dropped its base), and Missing under that very word (damage)."""
        try:
            raw = self.value_raw(agent, name)
        except Missing:
            if agent._read_index_word()[0] == word:
                raise
            raise IndexMoved(f"agent {agent.id} changed as its trim read it") from None
        key = (agent.id, agent.generation, name)
        known = self.raws.get(key)
        self.remember_raw(key, raw, 0, known[2] if known else None)
        return self.whole(raw)

    def whole(self, raw: bytes) -> bytes:
        """A channel value's record holding its serde bytes whole (not a delta)."""
        return snapshot.pack(_FULL + raw, self.codec, _WHOLE_ZSTD_LEVEL if self.codec == "zstd" else None)

    def _summary_hit(self, agent: Any, name: str, entries: Any) -> tuple[bool, Any]:
        """(True, what the saver remembers of entry ``name``) if the arena
        still holds the record it was learnt from (its offset, and its frame
        header read back); (False, None) otherwise."""
        entry = entries.get(name)
        key = (agent.id, agent.generation, name)
        hit = self.summaries.get(key)
        if entry is None or hit is None or hit[0] != entry[0]:
            return False, None
        if hit[3] is entry:
            # the very entry it was checked under: the index has not named
            # another block since (a change makes a new pair), and a named
            # block's record does not change
            return True, hit[2]
        if self.heap._owner_read(agent.id, agent.generation, entry[0], len(hit[1])) != hit[1]:
            return False, None
        self.summaries[key] = (hit[0], hit[1], hit[2], entry)
        return True, hit[2]

    def remember_summary(self, agent: Any, name: str, offset: int, blob: bytes, summary: Any) -> None:
        """Remember what a trim reads of the record ``blob`` (or its frame
        header) at ``offset``, to be checked against the index when asked."""
        self.summaries.remember((agent.id, agent.generation, name), (offset, blob[:_HEAD], summary, None))

    @staticmethod
    def checkpoint_summary(checkpoint: Any, metadata: Any, parent: str | None) -> Any:
        """What a trim reads of a checkpoint record: (checkpoint, metadata,
        parent) with only its channel versions and delta counters."""
        counters = (metadata or {}).get(DELTA_COUNTERS)
        return (
            {"channel_versions": dict(checkpoint["channel_versions"])},
            {DELTA_COUNTERS: counters} if counters else {},
            parent,
        )

    def record(self, agent: Any, name: str) -> bytes:
        try:
            return snapshot.unpack(agent.read(name))
        except KeyError:
            raise Missing(f"thread data names {name!r}, which is not there") from None
        except CorruptSnapshot as exc:
            raise SwarmSaverError(f"a checkpoint record is damaged: {exc}") from None

    @staticmethod
    def delta_parts(record: bytes) -> tuple[int, str, bytes]:
        depth, n = _DELTA_HEAD.unpack_from(record, 1)
        start = 1 + _DELTA_HEAD.size
        return depth, record[start : start + n].decode(), record[start + n :]

    def value_raw(self, agent: Any, name: str, hops: int = 0) -> bytes:
        """A channel value's serde bytes, decoding its chain of deltas."""
        if hops > DELTA_CHAIN:
            raise SwarmSaverError(f"value {name!r} is in a chain of more than {DELTA_CHAIN} deltas (a loop?)")
        key = (agent.id, agent.generation, name)
        hit = self.raws.get(key)
        if hit is not None:
            return hit[0]
        record = self.record(agent, name)
        try:
            if record[:1] == _FULL:
                raw, depth = record[1:], 0
            elif record[:1] == _DELTA:
                depth, base, delta = self.delta_parts(record)
                if depth >= DELTA_CHAIN:
                    raise SwarmSaverError(f"value {name!r} claims a chain of {depth} deltas")
                raw = lgvalues.undelta(self.value_raw(agent, base, hops + 1), delta)
            else:
                raise SwarmSaverError(f"value {name!r} is neither whole nor a delta")
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise SwarmSaverError(f"value {name!r} is damaged: {exc}") from None
        except require("zstandard", "compress").ZstdError as exc:
            raise SwarmSaverError(f"value {name!r} does not decode against its base: {exc}") from None
        self.remember_raw(key, raw, depth)
        return raw

    def value(self, agent: Any, name: str) -> tuple[str, bytes | memoryview]:
        raw = self.value_raw(agent, name)
        try:
            kind, start = lgvalues.type_name(raw)
            # msgpack (what states are) is read from a view of the serde bytes:
            # a value is a whole state, and a slice copied it on every read
            return kind, memoryview(raw)[start:] if kind == "msgpack" else raw[start:]
        except (struct.error, UnicodeDecodeError) as exc:
            raise SwarmSaverError(f"value {name!r} is damaged: {exc}") from None

    def base_of(self, agent: Any, name: str, entries: Any = None) -> str | None:
        """The value a delta record is decoded against (None for a whole one)."""
        entries = agent._read_index()[2] if entries is None else entries
        known, base = self._summary_hit(agent, name, entries)
        if known:
            return base if isinstance(base, str) else None
        try:
            blob = agent.read(name)
        except KeyError:
            return None
        found: str | None = None  # deltas are framed uncompressed: a compressed one is whole
        if snapshot.frame_info(blob)["codec"] == "none":
            record = snapshot.unpack(blob)
            found = self.delta_parts(record)[1] if record[:1] == _DELTA else None
        entry = entries.get(name)
        if entry is not None:
            self.remember_summary(agent, name, entry[0], blob, found)
        return found

    def get(self, serde: Any, agent: Any, name: str, entries: Any = None) -> Any:
        # A record this saver wrote or checked: the frame header (its checksum
        # and sizes) is read back from the arena and compared, so a record
        # rewritten in place, by anyone, is read again; the rest is not.
        entry = (agent._read_index()[2] if entries is None else entries).get(name)
        key = (agent.id, agent.generation, name)
        hit = self.records.get(key)
        if hit is not None and entry is not None and hit[0] == entry[0]:
            head = self.heap._owner_read(agent.id, agent.generation, entry[0], len(hit[1]))
            if head == hit[1]:
                return serde.loads_typed(hit[2])
        try:
            blob = agent.read(name)
        except KeyError:
            raise Missing(f"thread data names {name!r}, which is not there") from None
        typed = self.unpack(blob)
        if entry is not None:
            self.remember_record(key, entry[0], blob, typed)
        return serde.loads_typed(typed)

    def remember_record(
        self, key: tuple[int, int, str], offset: int, blob: bytes, typed: tuple[str, bytes]
    ) -> None:
        self.records.remember(key, (offset, blob[: snapshot.FRAME.size], typed))

    def checkpoint_ids(self, agent: Any, ns: str, names: Any = None) -> list[str]:
        prefix = f"cp/{ns}/"
        return sorted(
            n[len(prefix) :]
            for n in (agent.names() if names is None else names)
            if n.startswith(prefix) and "/" not in n[len(prefix) :]
        )

    def pending_writes(self, serde: Any, agent: Any, ns: str, cid: str, view: ThreadView) -> list[Any]:
        """A checkpoint's pending writes, (task id, channel, value), in the
        order live execution applied them (writes_sort_key: task path first,
        a special write by its slot, as it is stored): a DeltaChannel is
        rebuilt by replaying them, and an order-sensitive reducer rebuilt
        another value from (task id, index) order."""
        names = view.writes.get((ns, cid))
        if not names:
            return []  # most checkpoints, read back after their put: no sort, no list made
        writes = []
        for name in names:
            if name in view.names:
                task_id, channel, value, path, idx = self.get(serde, agent, name, view.entries)
                key = writes_sort_key(path, task_id, WRITES_IDX_MAP.get(channel, idx))
                writes.append((key, task_id, channel, value))
        writes.sort(key=lambda w: w[0])
        return [(task_id, channel, value) for _, task_id, channel, value in writes]

    def held_values(
        self, agent: Any, ns: str, checkpoint: Any, channels: Any, names: Any
    ) -> list[tuple[str, tuple[str, bytes | memoryview]]]:
        """(channel, typed value) for each of ``channels`` that holds a value
        at ``checkpoint`` (not "empty"): where a delta channel's walk up the
        parents ends, its seed."""
        versions = checkpoint["channel_versions"]
        held = []
        for channel in [c for c in channels if c in versions]:
            name = f"blob/{ns}/{channel}/{versions[channel]}"
            if name in names:
                typed = self.value(agent, name)
                if typed[0] != "empty":
                    held.append((channel, typed))
        return held

    def checkpoint_record(self, serde: Any, agent: Any, ns: str, cid: str, records: dict[str, Any]) -> Any:
        """(checkpoint, metadata, parent id) of a checkpoint as a trim reads
        it (channel versions and delta counters only), None if it is gone
        (dropped by another writer of the thread meanwhile)."""
        if cid not in records:
            name = f"cp/{ns}/{cid}"
            entries = agent._read_index()[2]
            known, summary = self._summary_hit(agent, name, entries)
            if not known:
                try:
                    checkpoint, metadata, parent = self.get(serde, agent, name, entries)
                except Missing:
                    summary = None
                else:
                    summary = self.checkpoint_summary(checkpoint, metadata, parent)
                    hit = self.records.get((agent.id, agent.generation, name))
                    if hit is not None:  # get() checked it: its offset and header
                        self.remember_summary(agent, name, hit[0], hit[1], summary)
            records[cid] = summary
        return records[cid]
