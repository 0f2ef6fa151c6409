"""Heap, Block, handles and agents against a plain Python model (hypothesis
stateful testing), with check() after every step. A second process of the
heap reads live handles and probes stale ones, so what one process did is
checked from another."""

from __future__ import annotations

import multiprocessing as mp
import uuid
from typing import Any

import pytest
from conftest import PREFIX, stateful_examples
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

import swarmheap as sh
from _workers import peer_read, peer_serve

SIZES = st.sampled_from([1, 16, 24, 64, 200, 1000, 4000, 20000, 70000])
PARTS = st.sampled_from(sh.PARTITIONS[:3])


class Peer:
    """A second process attached to the heap, serving read requests."""

    def __init__(self, name: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=peer_serve, args=(name, child), daemon=True)
        self.proc.start()

    def read(self, handle: sh.Handle) -> Any:
        return peer_read(self.conn, handle)

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


class HeapModel(RuleBasedStateMachine):
    blocks = Bundle("blocks")
    stale = Bundle("stale")
    agents = Bundle("agents")

    def __init__(self) -> None:
        super().__init__()
        self.name = PREFIX + uuid.uuid4().hex[:12]
        self.heap = sh.Heap.create(self.name, size="16 MiB")
        self.peer = Peer(self.name)
        self.data: dict[int, bytes] = {}  # id(Block) -> what it holds
        self.entries: dict[tuple[int, int], dict[str, bytes]] = {}  # (id, generation) -> its entries
        # pins held, and what they show (None once a put() replaced the entry: its
        # old bytes are freed then, and a view of them is only a pin)
        self.views: list[tuple[sh.Agent, memoryview, bytes | None, str]] = []
        self.counter = 0

    def teardown(self) -> None:
        for _, view, _, _ in self.views:
            view.release()
        self.peer.close()
        self.heap.close()
        sh.unlink(self.name)

    def _pattern(self, n: int) -> bytes:
        self.counter += 1
        return (self.counter.to_bytes(4, "little") * (n // 4 + 1))[:n]

    # ---- blocks and handles ----

    @rule(target=blocks, size=SIZES, part=PARTS)
    def alloc(self, size: int, part: str) -> tuple[sh.Block, sh.Handle]:
        try:
            blk = self.heap.alloc(size, part)
        except sh.PartitionFull:
            return None  # type: ignore[return-value]
        pattern = self._pattern(size)
        blk[:size] = pattern
        self.data[id(blk)] = pattern
        return blk, blk.handle

    @rule(target=stale, item=consumes(blocks))
    def free(self, item: tuple[sh.Block, sh.Handle] | None) -> sh.Handle | None:
        if item is None:
            return None
        blk, handle = item
        assert bytes(blk[: len(self.data[id(blk)])]) == self.data.pop(id(blk))
        blk.free()
        assert blk.freed
        return handle

    @rule(item=blocks)
    def resolve_live(self, item: tuple[sh.Block, sh.Handle] | None) -> None:
        if item is None:
            return
        blk, handle = item
        expected = self.data[id(blk)]
        assert bytes(self.heap.resolve(handle)[: len(expected)]) == expected

    @rule(item=blocks)
    def peer_reads_live(self, item: tuple[sh.Block, sh.Handle] | None) -> None:
        if item is None:
            return
        blk, handle = item
        expected = self.data[id(blk)]
        assert self.peer.read(handle)[: len(expected)] == expected

    @rule(handle=stale)
    def resolve_stale(self, handle: sh.Handle | None) -> None:
        if handle is None:
            return
        with pytest.raises(sh.StaleBlock):
            self.heap.resolve(handle)
        assert self.peer.read(handle) == "StaleBlock"

    # ---- agents ----

    @rule(target=agents, kind=st.sampled_from(["planner", "coder"]))
    def spawn(self, kind: str) -> sh.Agent | None:
        try:
            agent = self.heap.spawn(kind)
        except (sh.TooManyAgents, sh.PartitionFull):
            return None
        self.entries[agent.id, agent.generation] = {}
        return agent

    @rule(agent=agents, key=st.sampled_from(["a", "b", "c"]), size=st.integers(0, 5000))
    def put(self, agent: sh.Agent | None, key: str, size: int) -> None:
        if agent is None or (agent.id, agent.generation) not in self.entries:
            return
        value = self._pattern(size)
        try:
            agent.put(key, value)
        except sh.PartitionFull:
            return
        self.entries[agent.id, agent.generation][key] = value
        self.views = [(a, v, None if a is agent and k == key else shown, k) for a, v, shown, k in self.views]

    @rule(agent=agents)
    def get_all(self, agent: sh.Agent | None) -> None:
        if agent is None or (agent.id, agent.generation) not in self.entries:
            return
        assert sorted(agent.names()) == sorted(self.entries[agent.id, agent.generation])
        for key, value in self.entries[agent.id, agent.generation].items():
            view = agent.get(key)
            assert bytes(view) == value
            view.release()

    @rule(agent=agents, key=st.sampled_from(["a", "b", "c"]))
    def pin(self, agent: sh.Agent | None, key: str) -> None:
        if agent is None or key not in self.entries.get((agent.id, agent.generation), {}):
            return
        self.views.append((agent, agent.get(key), self.entries[agent.id, agent.generation][key], key))

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        _, view, _, _ = self.views.pop(data.draw(st.integers(0, len(self.views) - 1)))
        view.release()

    @rule(agent=consumes(agents))
    def complete(self, agent: sh.Agent | None) -> None:
        if agent is None or (agent.id, agent.generation) not in self.entries:
            return
        pinned = any(a is agent for a, _, _, _ in self.views)
        agent.complete()
        del self.entries[agent.id, agent.generation]
        assert agent.state == ("completed" if pinned else "gone")

    @rule()
    def collect(self) -> None:
        self.heap.collect()

    @invariant()
    def consistent(self) -> None:
        self.heap.check()
        for _, view, shown, _ in self.views:
            assert shown is None or bytes(view) == shown  # a pinned view keeps its bytes through complete()


HeapModel.TestCase.settings = settings(
    max_examples=stateful_examples(60),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_heap_against_model = HeapModel.TestCase
