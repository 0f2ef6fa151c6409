"""SwarmSaver against InMemorySaver, LangGraph's reference saver, at the
saver's own API (hypothesis stateful testing): puts on three threads and
two namespaces, forks from earlier checkpoints, channels changed, grown,
emptied and left alone, values large enough that a small heap offloads
cold threads to SQLite under pressure, pending writes from tasks of several
paths (special ones among them), reads by id and of the latest, listings
with filters, before and limit, thread deletions, and the extended
capabilities (copy_thread, prune, delete_for_runs), which InMemorySaver
lacks and Reference writes on its storage. Every answer must be the
reference's; check() passes at the end."""

from __future__ import annotations

import random
import tempfile
from typing import Any

import pytest
from conftest import stateful_examples
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

import swarmheap as sh

pytest.importorskip("langgraph.checkpoint.memory")
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver

from swarmheap.langgraph import SwarmSaver

THREADS = st.sampled_from(["a", "b", "c"])
SPACES = st.sampled_from(["", "sub:1"])
CHANNELS = ("messages", "count", "blob", "gone")
# A thread holding this share of `context` may not come back (nor take a
# large value more) even with every other thread offloaded: a value of
# 900 KB needs 14 pages of 64 KiB in one piece, and the pages the thread
# caches keep for their size classes (6 of 51 here, empty) break the free
# ones into shorter runs (docs/design.md, known limits)
BIG = 0.25  # "gone": in the versions, never in the values


def plain(found: Any) -> Any:
    if found is None:
        return None
    return (found.config, found.checkpoint, found.metadata, found.parent_config, found.pending_writes)


class Reference(InMemorySaver):  # type: ignore[misc]
    """InMemorySaver with the extended capabilities (which it does not have)
    written on its storage, as BaseCheckpointSaver's docstrings define them."""

    def copy_thread(self, source: str, target: str) -> None:
        for ns, checkpoints in list(self.storage.get(source, {}).items()):
            self.storage[target][ns].update(checkpoints)
        for (thread, ns, cid), writes in list(self.writes.items()):
            if thread == source:
                self.writes[(target, ns, cid)] = {**self.writes.get((target, ns, cid), {}), **writes}
        for (thread, *rest), blob in list(self.blobs.items()):
            if thread == source:
                self.blobs[(target, *rest)] = blob

    def _drop(self, thread: str, ns: str, cid: str) -> None:
        del self.storage[thread][ns][cid]
        self.writes.pop((thread, ns, cid), None)

    def prune(self, thread_ids: list[str], *, strategy: str = "keep_latest") -> None:
        for thread in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread)
                continue
            for ns, checkpoints in list(self.storage.get(thread, {}).items()):
                for cid in sorted(checkpoints)[:-1]:
                    self._drop(thread, ns, cid)

    def delete_for_runs(self, run_ids: list[str]) -> None:
        for thread, spaces in list(self.storage.items()):
            for ns, checkpoints in list(spaces.items()):
                for cid, (_, metadata, _) in list(checkpoints.items()):
                    if self.serde.loads_typed(metadata).get("run_id") in run_ids:
                        self._drop(thread, ns, cid)


class SaverModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.heap = sh.Heap.create(size="8 MiB")
        self.store = sh.SQLiteStore(f"{self.dir.name}/threads.db")
        self.ours = SwarmSaver(self.heap, store=self.store)
        # cold at once: a thread the model is not touching may go to the store at any put
        self.heap.set_offload_policy(self.store, high=0.4, low=0.2, min_idle=0.0)
        self.reference = Reference()
        self.counter = 0
        # (thread, ns) -> its checkpoints in order: (id, channel versions, channel values)
        self.made: dict[tuple[str, str], list[tuple[str, dict[str, str], dict[str, Any]]]] = {}
        self.blob_bytes: dict[str, int] = {}  # each thread's blob values, every version (nothing is trimmed)

    def teardown(self) -> None:
        try:
            self.heap.check()
        finally:
            self.store.close()
            self.heap.close()
            self.dir.cleanup()

    def _next(self) -> str:
        self.counter += 1
        return f"{self.counter:08d}"  # ids and versions both order as strings

    def both(self, call: Any) -> tuple[Any, Any]:
        return call(self.ours), call(self.reference)

    @rule(
        thread=THREADS,
        ns=SPACES,
        back=st.integers(0, 5),
        grow=st.integers(0, 3),
        size=st.sampled_from([0, 100, 5000, 900_000, 900_000]),
        changed=st.sets(st.sampled_from(CHANNELS), min_size=1),
    )
    def put(self, thread: str, ns: str, back: int, grow: int, size: int, changed: set[str]) -> None:
        made = self.made.setdefault((thread, ns), [])
        # back 0: after the latest; 1-3: a fork from an earlier one; 4-5: a new root
        parent = made[-1 - min(back, len(made) - 1)] if made and back < 4 else None
        cid = self._next()
        versions = dict(parent[1]) if parent else {}
        values = dict(parent[2]) if parent else {"messages": [], "count": 0}
        new_versions = {}
        for channel in sorted(changed):
            versions[channel] = new_versions[channel] = self._next()
            if channel == "messages":
                grown = [{"role": "user", "content": f"m{cid}-{i}"} for i in range(grow)]
                values["messages"] = [*values["messages"], *grown]
            elif channel == "count":
                values["count"] = int(cid)
            elif channel == "blob":
                values["blob"] = random.Random(cid).randbytes(size)
        checkpoint = empty_checkpoint()
        checkpoint["id"] = cid
        checkpoint["channel_versions"] = versions
        config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
        if parent:
            config["configurable"]["checkpoint_id"] = parent[0]
        metadata = {
            "source": "input" if parent is None else "loop",
            "step": int(cid) % 4,
            "parents": {},
            "run_id": f"r{int(cid) % 3}",
        }

        def put(saver: Any) -> Any:
            return saver.put(
                config, {**checkpoint, "channel_values": dict(values)}, dict(metadata), dict(new_versions)
            )

        try:
            ours = put(self.ours)
        except sh.PartitionFull:
            self._too_big(thread, size)
            return
        assert ours == put(self.reference)
        made.append((cid, versions, values))
        if "blob" in changed:
            self.blob_bytes[thread] = self.blob_bytes.get(thread, 0) + size

    def read(self, call: Any, threads: list[str]) -> tuple[Any, Any]:
        """Both savers' answers. A read of a cold thread brings it back, and a
        thread too big to come back raises PartitionFull: it starts again
        (see _too_big), and so do the other ones of ``threads`` that are."""
        try:
            return self.both(call)
        except sh.PartitionFull:
            capacity = self.heap.stats()["partitions"]["context"]["capacity"]
            big = [t for t in threads if self.blob_bytes.get(t, 0) > BIG * capacity]
            assert big, self.blob_bytes
            for thread in big:
                self.delete_thread(thread)
            return self.both(call)

    def _too_big(self, thread: str, adding: int) -> None:
        """After a PartitionFull: no room even with every other thread in the
        store, as this one alone (its every version kept; InMemorySaver has
        no bound) fills most of `context`, and the page runs of its large
        values need room in one piece. It starts again in both savers."""
        capacity = self.heap.stats()["partitions"]["context"]["capacity"]
        assert self.blob_bytes.get(thread, 0) + adding > BIG * capacity, (thread, self.blob_bytes)
        self.delete_thread(thread)

    @precondition(lambda self: any(self.made.values()))
    @rule(
        data=st.data(),
        task=st.sampled_from(["t1", "t2"]),
        path=st.sampled_from(["", "~a", "~b"]),
        channels=st.lists(st.sampled_from(["messages", "count", "__error__", "__interrupt__"]), max_size=3),
    )
    def put_writes(self, data: st.DataObject, task: str, path: str, channels: list[str]) -> None:
        where = data.draw(st.sampled_from(sorted(key for key, made in self.made.items() if made)))
        cid = data.draw(st.sampled_from([made[0] for made in self.made[where]]))
        config = {"configurable": {"thread_id": where[0], "checkpoint_ns": where[1], "checkpoint_id": cid}}
        writes = [(channel, f"{channel} {self._next()}") for channel in channels]
        try:
            self.ours.put_writes(config, writes, task, path)  # brings the thread back if it went cold
        except sh.PartitionFull:
            self._too_big(where[0], 0)
            return
        self.reference.put_writes(config, writes, task, path)

    @rule(thread=THREADS, ns=SPACES, data=st.data())
    def get(self, thread: str, ns: str, data: st.DataObject) -> None:
        made = self.made.get((thread, ns)) or []
        config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
        if made and data.draw(st.booleans()):
            config["configurable"]["checkpoint_id"] = data.draw(st.sampled_from([m[0] for m in made]))
        ours, reference = self.read(lambda saver: plain(saver.get_tuple(config)), [thread])
        assert ours == reference

    @rule(
        thread=st.none() | THREADS,
        ns=st.none() | SPACES,
        limit=st.none() | st.integers(1, 4),
        step=st.none() | st.integers(0, 3),
        before=st.none() | st.integers(1, 60),
    )
    def listing(
        self, thread: str | None, ns: str | None, limit: int | None, step: int | None, before: int | None
    ) -> None:
        config = None
        if thread is not None:
            config = {"configurable": {"thread_id": thread, **({} if ns is None else {"checkpoint_ns": ns})}}
        options: dict[str, Any] = {"limit": limit}
        if step is not None:
            options["filter"] = {"step": step}
        if before is not None:
            options["before"] = {"configurable": {"checkpoint_id": f"{before:08d}"}}
        ours, reference = self.read(
            lambda saver: [plain(found) for found in saver.list(config, **options)],
            ["a", "b", "c"] if thread is None else [thread],
        )
        if config is None or ns is None:
            # across threads or namespaces the order is each saver's own (InMemorySaver's is
            # the order they were first written in); within one, newest first in both
            if limit is not None:
                assert len(ours) == len(reference)
                return
            ours, reference = sorted(map(repr, ours)), sorted(map(repr, reference))
        assert ours == reference

    @rule(thread=THREADS)
    def _made_again(self, thread: str) -> None:
        """The model's checkpoints of ``thread``, as the reference now holds them."""
        for key in [key for key in self.made if key[0] == thread]:
            kept = self.reference.storage.get(thread, {}).get(key[1], {})
            self.made[key] = [made for made in self.made[key] if made[0] in kept]

    @rule(source=THREADS, into=THREADS)
    def copy_thread(self, source: str, into: str) -> None:
        if source == into:
            return
        try:
            self.ours.copy_thread(source, into)
        except sh.PartitionFull:
            self._too_big(source, self.blob_bytes.get(into, 0))
            self.delete_thread(into)  # may hold part of the copy
            return
        self.reference.copy_thread(source, into)
        for (thread, ns), made in list(self.made.items()):
            if thread == source:
                mine = {m[0]: m for m in self.made.get((into, ns), [])}
                mine.update({m[0]: m for m in made})
                self.made[(into, ns)] = [mine[cid] for cid in sorted(mine)]
        self.blob_bytes[into] = self.blob_bytes.get(into, 0) + self.blob_bytes.get(source, 0)

    @rule(
        threads=st.lists(THREADS, max_size=2, unique=True),
        strategy=st.sampled_from(["keep_latest", "delete"]),
    )
    def prune(self, threads: list[str], strategy: str) -> None:
        self.read(lambda saver: saver.prune(threads, strategy=strategy), threads)
        for thread in threads:
            self._made_again(thread)

    @rule(runs=st.lists(st.sampled_from(["r0", "r1", "r2", "r9"]), min_size=1, max_size=2))
    def delete_for_runs(self, runs: list[str]) -> None:
        self.read(lambda saver: saver.delete_for_runs(runs), ["a", "b", "c"])
        for thread in ["a", "b", "c"]:
            self._made_again(thread)

    def delete_thread(self, thread: str) -> None:
        self.both(lambda saver: saver.delete_thread(thread))
        for key in [key for key in self.made if key[0] == thread]:
            del self.made[key]
        self.blob_bytes.pop(thread, None)


SaverModel.TestCase.settings = settings(
    max_examples=stateful_examples(40),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_swarmsaver_against_the_reference_saver = SaverModel.TestCase
