"""Agents through their whole lives against a plain Python model
(hypothesis stateful testing), with check() after every step: entries put,
replaced and deleted at sizes that cross from nursery blocks to pages of
their own; agent blocks; pins; snapshots restored as new agents; offload to
SQLite and restore (explicit, and by a touch); complete of live, pinned and
offloaded agents; a channel between them. What test_stateful.py does for
blocks and handles, for the layers built on them."""

from __future__ import annotations

import collections
import os
import tempfile

import pytest
from conftest import stateful_examples
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

import swarmheap as sh

KEYS = st.sampled_from(["a", "b", "c", "d"])
# nursery-sized, a page's worth, and past a page (its own run)
VALUES = st.sampled_from([0, 1, 48, 700, 3000, 20000, 70000, 150000, 1500000])
BLOCKS = st.sampled_from([8, 200, 4000, 40000])


class Lives(RuleBasedStateMachine):
    agents = Bundle("agents")

    def __init__(self) -> None:
        super().__init__()
        self.heap = sh.Heap.create(size="32 MiB")
        self.dir = tempfile.TemporaryDirectory()
        self.store = sh.SQLiteStore(os.path.join(self.dir.name, "store.db"))
        self.entries: dict[tuple[int, int], dict[str, bytes]] = {}  # live or offloaded agents
        self.kinds: dict[tuple[int, int], str] = {}
        self.blocks: dict[tuple[int, int], list[tuple[sh.Block, bytes]]] = {}  # agent blocks, what they hold
        self.stale: list[sh.Block] = []  # blocks of agents offloaded or recycled
        # blocks of agents completed while pinned: theirs until the recycle (an
        # array over one keeps working), stale after it
        self.limbo: list[tuple[sh.Agent, sh.Block, bytes]] = []
        self.views: list[tuple[sh.Agent, memoryview, bytes | None, str]] = []  # pins, what they show
        self.channel = self.heap.channel("lives", capacity=4)
        self.queued: collections.deque[bytes] = collections.deque()
        self.counter = 0

    def teardown(self) -> None:
        for _, view, _, _ in self.views:
            view.release()
        self.store.close()
        self.heap.close()
        self.dir.cleanup()

    def _pattern(self, n: int) -> bytes:
        self.counter += 1
        return (self.counter.to_bytes(4, "little") * (n // 4 + 1))[:n]

    def _known(self, agent: sh.Agent | None) -> bool:
        return agent is not None and (agent.id, agent.generation) in self.entries

    def _pinned(self, agent: sh.Agent) -> bool:
        return any(a is agent for a, _, _, _ in self.views)

    def _replaced(self, agent: sh.Agent, key: str) -> None:
        # a view of a replaced or deleted entry is a pin of freed bytes: nothing to compare
        self.views = [(a, v, None if a is agent and k == key else shown, k) for a, v, shown, k in self.views]

    def _live(self, agent: sh.Agent) -> bool:
        """Restore an offloaded agent, as a touch does: False if the heap has
        no room for it now (PartitionFull), and then it stays offloaded,
        whole, for a later touch."""
        try:
            agent.restore()
        except sh.PartitionFull:
            assert agent.state == "offloaded"
            return False
        assert agent.state == "live"
        return True

    def _gone(self, agent: sh.Agent) -> None:
        self.stale += [blk for blk, _ in self.blocks.pop((agent.id, agent.generation), [])]

    # ---- lives ----

    @rule(target=agents, kind=st.sampled_from(["planner", "coder"]), reserve=st.booleans())
    def spawn(self, kind: str, reserve: bool) -> sh.Agent | None:
        try:
            agent = self.heap.spawn(kind, reserve=reserve)
        except (sh.TooManyAgents, sh.PartitionFull):
            return None
        self.entries[agent.id, agent.generation] = {}
        self.kinds[agent.id, agent.generation] = kind
        self.blocks[agent.id, agent.generation] = []
        return agent

    @rule(agent=consumes(agents))
    def complete(self, agent: sh.Agent | None) -> None:
        if not self._known(agent):
            return
        assert agent is not None
        pinned = self._pinned(agent)
        agent.complete()
        del self.entries[agent.id, agent.generation]
        if pinned:
            held = self.blocks.pop((agent.id, agent.generation))
            self.limbo += [(agent, blk, pattern) for blk, pattern in held]
        else:
            self._gone(agent)
        assert agent.state == ("completed" if pinned else "gone")

    @rule(target=agents, agent=agents, codec=st.sampled_from(["zstd", "lz4", "none"]))
    def snapshot_restored(self, agent: sh.Agent | None, codec: str) -> sh.Agent | None:
        if not self._known(agent):
            return None
        assert agent is not None
        was = agent.state
        blob = agent.snapshot(codec=codec)  # an offloaded agent's, from the store: it stays there
        assert agent.state == was
        try:
            copy = self.heap.restore(blob)
        except (sh.TooManyAgents, sh.PartitionFull):
            return None
        key = (agent.id, agent.generation)
        assert copy.kind == self.kinds[key]
        self.entries[copy.id, copy.generation] = dict(self.entries[key])
        self.kinds[copy.id, copy.generation] = self.kinds[key]
        self.blocks[copy.id, copy.generation] = []
        return copy

    @rule(agent=agents)
    def offload(self, agent: sh.Agent | None) -> None:
        if not self._known(agent):
            return
        assert agent is not None
        if agent.state != "live":
            return
        if self._pinned(agent):
            with pytest.raises(sh.AgentStateError):
                agent.offload(self.store)
            assert agent.state == "live"
            return
        final = agent.offload(self.store)
        assert agent.state == "offloaded" and final["state"] == "offloaded"
        self._gone(agent)  # only named entries go to the store
        self.blocks[agent.id, agent.generation] = []

    @rule(agent=agents)
    def restore(self, agent: sh.Agent | None) -> None:
        if not self._known(agent):
            return
        assert agent is not None
        self._live(agent)

    # ---- entries ----

    @rule(agent=agents, key=KEYS, size=VALUES)
    def put(self, agent: sh.Agent | None, key: str, size: int) -> None:
        if not self._known(agent):
            return
        assert agent is not None
        value = self._pattern(size)
        try:
            agent.put(key, value)
        except sh.PartitionFull:
            return
        self.entries[agent.id, agent.generation][key] = value
        self._replaced(agent, key)

    @rule(agent=agents, keys=st.lists(KEYS, min_size=1, max_size=3, unique=True), size=VALUES)
    def put_many(self, agent: sh.Agent | None, keys: list[str], size: int) -> None:
        if not self._known(agent):
            return
        assert agent is not None
        items = {key: self._pattern(size) for key in keys}
        try:
            agent.put_many(items)
        except sh.PartitionFull:
            return
        self.entries[agent.id, agent.generation].update(items)
        for key in keys:
            self._replaced(agent, key)

    @rule(agent=agents, key=KEYS)
    def delete(self, agent: sh.Agent | None, key: str) -> None:
        if not self._known(agent):
            return
        assert agent is not None
        entries = self.entries[agent.id, agent.generation]
        if not self._live(agent):
            return
        if key not in entries:
            with pytest.raises(KeyError):
                agent.delete(key)
            return
        agent.delete(key)
        del entries[key]
        self._replaced(agent, key)

    @rule(agent=agents)
    def read_all(self, agent: sh.Agent | None) -> None:
        """A touch: restores an offloaded agent."""
        if not self._known(agent):
            return
        assert agent is not None
        entries = self.entries[agent.id, agent.generation]
        try:
            names = agent.names()
        except sh.PartitionFull:  # no room to bring it back now
            assert agent.state == "offloaded"
            return
        assert sorted(names) == sorted(entries)
        assert agent.state == "live"
        for key, value in entries.items():
            assert agent.read(key) == value

    @rule(agent=agents, key=KEYS)
    def pin(self, agent: sh.Agent | None, key: str) -> None:
        if not self._known(agent) or key not in self.entries[agent.id, agent.generation]:  # type: ignore[union-attr]
            return
        assert agent is not None
        if not self._live(agent):
            return
        self.views.append((agent, agent.get(key), self.entries[agent.id, agent.generation][key], key))

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        _, view, _, _ = self.views.pop(data.draw(st.integers(0, len(self.views) - 1)))
        view.release()

    # ---- agent blocks ----

    @rule(agent=agents, size=BLOCKS)
    def alloc(self, agent: sh.Agent | None, size: int) -> None:
        if not self._known(agent):
            return
        assert agent is not None
        try:
            blk = agent.alloc(size)  # a touch too
        except sh.PartitionFull:
            return
        pattern = self._pattern(size)
        blk[:size] = pattern
        self.blocks[agent.id, agent.generation].append((blk, pattern))

    @rule(agent=agents, data=st.data())
    def free(self, agent: sh.Agent | None, data: st.DataObject) -> None:
        if not self._known(agent) or not self.blocks.get((agent.id, agent.generation)):  # type: ignore[union-attr]
            return
        assert agent is not None
        held = self.blocks[agent.id, agent.generation]
        blk, pattern = held.pop(data.draw(st.integers(0, len(held) - 1)))
        assert bytes(blk[: len(pattern)]) == pattern
        blk.free()

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def stale_block(self, data: st.DataObject) -> None:
        blk = self.stale[data.draw(st.integers(0, len(self.stale) - 1))]
        with pytest.raises(sh.StaleBlock):
            bytes(blk[:1])

    @precondition(lambda self: self.limbo)
    @rule(data=st.data())
    def limbo_block(self, data: st.DataObject) -> None:
        agent, blk, pattern = self.limbo[data.draw(st.integers(0, len(self.limbo) - 1))]
        if agent.state == "completed":  # still pinned
            assert bytes(blk[: len(pattern)]) == pattern
        else:
            assert agent.state == "gone"
            with pytest.raises(sh.StaleBlock):
                bytes(blk[:1])

    # ---- a channel ----

    @rule(size=st.sampled_from([0, 10, 3000, 30000]))
    def send(self, size: int) -> None:
        message = self._pattern(size)
        try:
            sent = self.channel.try_send(message)
        except sh.PartitionFull:
            return
        assert sent == (len(self.queued) < 4)
        if sent:
            self.queued.append(message)

    @rule()
    def recv(self) -> None:
        got = self.channel.try_recv()
        if not self.queued:
            assert got is None
            return
        assert got is not None
        assert bytes(got) == self.queued.popleft()
        got.free()

    @rule()
    def collect(self) -> None:
        self.heap.collect(generation=2)

    @invariant()
    def consistent(self) -> None:
        self.heap.check()
        for _, view, shown, _ in self.views:
            assert shown is None or bytes(view) == shown
        for held in self.blocks.values():
            for blk, pattern in held:
                assert bytes(blk[: len(pattern)]) == pattern


Lives.TestCase.settings = settings(
    max_examples=stateful_examples(40),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lives_against_model = Lives.TestCase


class LivesUnderPressure(Lives):
    """The same lives in a heap a few agents fill, with the offload policy
    on (no idle time asked): allocations and sweeps offload agents to make
    room, whenever they must. An offloaded agent's blocks are stale (the
    offload hook says which); its entries never change."""

    def __init__(self) -> None:
        super().__init__()
        self.heap.set_offload_policy(self.store, high=0.5, low=0.3, min_idle=0.0)
        self.heap.on("offload", self._offloaded)

    def _offloaded(self, agent_id: int, kind: str, stats: dict[str, object]) -> None:
        for key in [key for key in self.blocks if key[0] == agent_id]:
            self.stale += [blk for blk, _ in self.blocks[key]]
            self.blocks[key] = []


LivesUnderPressure.TestCase.settings = Lives.TestCase.settings
test_lives_under_pressure = LivesUnderPressure.TestCase
