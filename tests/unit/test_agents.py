"""Agents: entries, complete, hooks, pins, leases and the generational sweep."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
from typing import Any

import numpy as np
import pytest

import swarmheap as sh
import swarmheap.index
import swarmheap.index_format
import swarmheap.sweep
from _workers import (
    read_agent_entry,
    spawn_and_exit,
    spawn_and_hang,
    spawn_then_leave,
    sweep_after_barrier,
    view_each,
    view_entry,
)
from swarmheap import _core


@pytest.fixture
def big() -> Any:
    heap = sh.Heap.create(size="128 MiB")
    heap.set_sweep_thresholds(0, 0, 0)  # sweeps by hand unless a test says otherwise
    yield heap
    heap.check()
    heap.close()


def in_use(heap: sh.Heap) -> dict[str, int]:
    return {p: v["in_use"] for p, v in heap.stats()["partitions"].items()}


def test_entries_round_trip(big: sh.Heap) -> None:
    agent = big.spawn("researcher")
    agent.put("messages", b"hello")
    agent.put("scores", np.arange(10, dtype=np.float64))
    agent.put("empty", b"")
    assert sorted(agent.names()) == ["empty", "messages", "scores"]
    assert bytes(agent.get("messages")) == b"hello"
    assert np.frombuffer(agent.get("scores"), np.float64)[9] == 9.0
    assert bytes(agent.get("empty")) == b""
    agent.put("messages", b"replaced, and longer")
    assert bytes(agent.get("messages")) == b"replaced, and longer"
    assert "scores" in agent and "nope" not in agent and 3 not in agent
    agent.delete("scores")
    assert "scores" not in agent.names() and "scores" not in agent
    with pytest.raises(KeyError, match="scores"):
        agent.get("scores")
    with pytest.raises(KeyError):
        agent.delete("scores")
    with pytest.raises(TypeError, match="bytes-like"):
        agent.put("x", 42)
    with pytest.raises(ValueError):
        agent.put("", b"x")
    with pytest.raises(TypeError):
        agent.put(7, b"x")  # type: ignore[arg-type]
    big.check()
    agent.complete()


def test_put_copies_any_buffer_and_leaves_nothing_behind(big: sh.Heap) -> None:
    agent = big.spawn("writer")
    strided = memoryview(bytes(range(20)))[::2]  # not contiguous: copied through put_many
    agent.put("strided", strided)
    assert bytes(agent.get("strided")) == bytes(range(0, 20, 2))
    matrix = np.arange(12, dtype=np.int32).reshape(3, 4)
    agent.put("matrix", matrix.T)  # Fortran order
    assert np.frombuffer(agent.get("matrix"), np.int32).tolist() == matrix.T.ravel().tolist()
    agent.put("strided", b"\0" * 300)
    once = in_use(big)["context"]
    for i in range(50):  # replacing an entry frees the block it replaced
        agent.put("strided", bytes([i]) * 300)
    assert in_use(big)["context"] == once
    assert bytes(agent.get("strided")) == bytes([49]) * 300
    with pytest.raises(TypeError, match="bytes-like"):
        agent.put("x", "a str is not bytes")
    agent.complete()
    with pytest.raises(sh.StaleBlock):
        agent.put("late", b"after complete")
    assert in_use(big)["context"] == 0
    big.check()


def test_an_interrupt_after_the_index_swap_frees_no_named_block(
    big: sh.Heap, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = big.spawn("interrupted")
    agent.put("kept", b"k" * 300)
    agent.put("early", b"e" * 300)  # the index this process read last: put takes the fast path
    real = swarmheap.index._remember
    calls = []

    def interrupted(*args: Any) -> None:
        real(*args)
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt  # as if Ctrl-C landed just after the swap went in

    monkeypatch.setattr(swarmheap.index, "_remember", interrupted)
    with pytest.raises(KeyboardInterrupt):
        agent.put_many({"swapped": b"s" * 300, "other": b"o" * 300})
    monkeypatch.undo()
    assert calls
    assert bytes(agent.get("swapped")) == b"s" * 300  # in the index, and its block not freed
    agent.put("after", b"a" * 300)  # were it freed, this would take its place under a second name
    assert bytes(agent.get("swapped")) == b"s" * 300 and bytes(agent.get("other")) == b"o" * 300
    big.check()
    agent.complete()
    big.check()


def test_a_view_let_go_while_an_exception_is_raised_unpins_its_agent(big: sh.Heap) -> None:
    # Python 3.9 clears a finished generator's frame, and with it the last
    # view, while its StopIteration is being raised; the unpin took that
    # exception for its own and the agent stayed pinned for good
    agent = big.spawn("gen")
    agent.put("notes", b"draft")

    def lines() -> Any:
        view = agent.get("notes")
        yield bytes(view)

    assert list(lines()) == [b"draft"]
    assert agent.stats()["pins"] == 0

    def fails() -> None:
        view = agent.get("notes")  # noqa: F841 - held while the exception leaves the frame
        raise LookupError("on purpose")

    with pytest.raises(LookupError):
        fails()
    assert agent.stats()["pins"] == 0
    agent.complete()
    assert agent.state == "gone"  # recycled at once: no pin held it back
    big.check()


def test_a_view_keeps_its_bytes_when_its_entry_is_replaced_or_deleted(big: sh.Heap) -> None:
    """put() and delete() drop the entry's block, but a view from get() in
    this process is still on it: the block goes when the view does, never
    to the next entry while the view reads (or writes) it."""
    agent = big.spawn("views")
    baseline = big.stats()["partitions"]["context"]["in_use"]
    agent.put("m", b"A" * 100)
    agent.put("gone", b"G" * 100)
    view, doomed = agent.get("m"), agent.get("gone")
    agent.put("m", b"B" * 100)
    agent.delete("gone")
    agent.put("other", b"C" * 100)  # the size class of the dropped blocks: they must not be handed out
    agent.put("more", b"D" * 100)
    assert bytes(view) == b"A" * 100 and bytes(doomed) == b"G" * 100
    view[:1] = b"Z"  # writes land in the dropped block, not in another entry
    assert agent.read("other") == b"C" * 100 and agent.read("more") == b"D" * 100
    assert agent.read("m") == b"B" * 100
    held = big.stats()["partitions"]["context"]["in_use"]
    view.release()
    doomed.release()
    assert big.stats()["partitions"]["context"]["in_use"] == held - 2 * big.good_size(100)  # both freed now
    big.check()
    again = agent.get("m")
    agent.put("m", b"E" * 100)
    agent.complete()  # pinned by the view: deferred, with the dropped block
    assert bytes(again) == b"B" * 100
    again.release()  # frees the dropped block, then the last unpin recycles the agent
    assert big.stats()["partitions"]["context"]["in_use"] == baseline
    big.check()


def test_a_view_in_another_process_keeps_its_bytes_when_its_entry_is_replaced(heap_name: str) -> None:
    """A get() view in one process, a put() and delete() of the agent's
    entries in another: the dropped blocks wait while the agent has views
    elsewhere (never handed to the next entries while the view reads or
    writes one), and a sweep frees them once the views are gone."""
    ctx = mp.get_context("spawn")
    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        agent = heap.spawn("views")
        agent.put("m", b"A" * 100)
        agent.put("gone", b"G" * 100)
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=view_entry, args=(heap_name, agent.id, "m", child_end))
        proc.start()
        assert parent_end.recv() == "ready"
        agent.put("m", b"B" * 100)  # drops the viewed block
        agent.delete("gone")  # not viewed, but the agent is: it waits too (views are counted per agent)
        assert heap.stats()["block_table"]["after_views"] == 2
        for i in range(40):  # the size class of the dropped block: it must not be handed out
            agent.put(f"e{i}", bytes([i]) * 100)
        assert heap.collect(1).viewed_blocks == 0  # the view is still open
        before = in_use(heap)["context"]
        parent_end.send("read")
        assert parent_end.recv() == b"A" * 100
        assert parent_end.recv() == "released"  # the last view's release freed both
        proc.join(30)
        assert proc.exitcode == 0
        assert agent.read("m") == b"B" * 100  # the child's write landed in the dropped block only
        assert all(agent.read(f"e{i}") == bytes([i]) * 100 for i in range(40))
        assert heap.stats()["block_table"]["after_views"] == 0
        assert in_use(heap)["context"] == before - 2 * heap.good_size(100)
        assert heap.collect(1).viewed_blocks == 0  # nothing left for a sweep
        heap.check()
        agent.complete()
        heap.check()


def test_recycles_another_process_ran_leave_nothing_behind_here(heap_name: str) -> None:
    """complete() while another process holds a view defers the recycle, and
    that process's release runs it: the deferral noted here was never taken,
    one left behind for every such agent. Noted by slot now, the next
    deferral in the slot replaces it: at most max_owners of them."""
    ctx = mp.get_context("spawn")
    with sh.Heap.create(heap_name, size="16 MiB", max_owners=40) as heap:
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=view_each, args=(heap_name, child_end))
        proc.start()
        for _ in range(120):
            agent = heap.spawn("deferred")
            agent.put("m", b"v" * 100)
            parent_end.send(agent.id)
            assert parent_end.recv() == "ready"
            agent.complete()  # deferred: the other process's view pins it
            assert agent.state == "completed"
            parent_end.send("release")
            assert parent_end.recv()[0] == "released"  # its release recycled the agent there
            assert agent.state == "gone"
        parent_end.send(None)
        proc.join(30)
        assert proc.exitcode == 0
        assert len(heap._hooks.deferred) <= 40
        heap.check()


def test_the_process_whose_release_recycles_an_agent_hears_its_kind_and_figures(heap_name: str) -> None:
    """complete() here while another process holds a view: the recycle runs
    there, as the view goes, and that process's recycle hooks hear the
    agent's kind and the figures complete() returned here (they once heard
    "?" and an empty dict: the kind was in the index the recycle freed)."""
    ctx = mp.get_context("spawn")
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=view_each, args=(heap_name, child_end))
        proc.start()
        heard_here: list[str] = []
        heap.on("recycle", lambda i, kind, stats: heard_here.append(kind))
        agent = heap.spawn("summarizer")
        agent.put("m", b"v" * 3000)
        agent.alloc(5000)
        parent_end.send(agent.id)
        assert parent_end.recv() == "ready"
        final = agent.complete()  # deferred: the other process's view pins it
        assert final["state"] == "completed" and final["bytes"]["context"] > 0
        parent_end.send("release")
        said, heard = parent_end.recv()
        assert said == "released" and agent.state == "gone"
        assert heard == [(agent.id, "summarizer", "gone", final["bytes"]["context"])]
        assert heard_here == []  # the recycle ran there, not here
        parent_end.send(None)
        proc.join(30)
        assert proc.exitcode == 0
        heap.check()


def test_a_sweep_that_drops_a_killed_process_s_pin_reports_the_agent_it_recycles(heap_name: str) -> None:
    """complete() here while another process holds a view, then that process
    is killed: the sweep that drops its pin recycles the agent, counts it
    among the completed agents it reclaimed, and fires the recycle hooks
    with the agent's kind and figures (it recycled it unseen before)."""
    ctx = mp.get_context("spawn")
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        baseline = in_use(heap)["context"]
        agent = heap.spawn("summarizer")
        agent.put("m", b"v" * 3000)
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=view_each, args=(heap_name, child_end))
        proc.start()
        parent_end.send(agent.id)
        assert parent_end.recv() == "ready"
        final = agent.complete()  # deferred: the other process's view pins it
        assert final["state"] == "completed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        heard: list[tuple[int, str, int]] = []
        heap.on("recycle", lambda i, kind, stats: heard.append((i, kind, stats["total_bytes"])))
        result = heap.collect(1)
        assert result.pins_dropped == 1 and result.agents["completed"] == 1
        assert result.bytes["completed"] == final["total_bytes"] > 0
        assert heard == [(agent.id, "summarizer", final["total_bytes"])]
        assert agent.state == "gone" and in_use(heap)["context"] == baseline
        heap.check()


def test_a_detached_agent_outlives_the_process_that_spawned_it(heap_name: str) -> None:
    """An agent is its process's, and a sweep reclaims it when that process
    is gone; detach() makes it the heap's: the sweep keeps it, and any
    process uses and completes it."""
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        baseline = in_use(heap)["context"]
        with mp.get_context("spawn").Pool(1) as pool:
            kept_id, kept_gen = pool.apply(spawn_then_leave, (heap_name, "detach"))
            left_id, left_gen = pool.apply(spawn_then_leave, (heap_name, "keep"))
        result = heap.collect(2)
        assert result.agents["dead_process"] == 1  # the one that was not detached
        assert heap._owner_generation(left_id) != left_gen
        kept = heap.agent(kept_id)
        assert kept.generation == kept_gen and kept.state == "live" and kept.stats()["pid"] == 0
        assert kept.read("m") == b"kept"
        kept.complete()
        assert in_use(heap)["context"] == baseline
        heap.check()


def test_detach_of_a_gone_agent_or_on_a_read_only_heap_is_refused(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        agent = heap.spawn("k")
        with sh.Heap.attach(heap_name, read_only=True) as viewer:
            with pytest.raises(sh.ReadOnlyHeap):
                viewer.agent(agent.id).detach()
        agent.complete()
        with pytest.raises(sh.StaleBlock):
            agent.detach()
        heap.check()


def test_a_killed_process_s_view_lets_its_dropped_block_go(heap_name: str) -> None:
    ctx = mp.get_context("spawn")
    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        agent = heap.spawn("views")
        agent.put("m", b"A" * 3000)
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=view_entry, args=(heap_name, agent.id, "m", child_end))
        proc.start()
        assert parent_end.recv() == "ready"
        parent_end.send("hang")
        agent.put("m", b"B" * 3000)
        before = in_use(heap)["context"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        result = heap.collect(1)
        assert result.pins_dropped == 1 and result.viewed_blocks == 1
        assert in_use(heap)["context"] == before - heap.good_size(3000)
        assert agent.read("m") == b"B" * 3000
        heap.check()
        agent.complete()


def test_read_copies_an_entry_without_pinning(big: sh.Heap, tmp_path: Any) -> None:
    from swarmheap.stores import SQLiteStore

    agent = big.spawn("reader")
    agent.put("notes", b"first draft")
    copy = agent.read("notes")
    assert copy == b"first draft" and isinstance(copy, bytes)
    assert agent.stats()["pins"] == 0  # no view was left open
    agent.put("notes", b"second, longer draft")
    assert copy == b"first draft" and agent.read("notes") == b"second, longer draft"
    with pytest.raises(KeyError, match="missing"):
        agent.read("missing")
    with SQLiteStore(tmp_path / "cold.db") as store:
        agent.offload(store)  # its entries now live in the store: a read brings it back
        assert agent.read("notes") == b"second, longer draft" and agent.state == "live"
    agent.complete()
    with pytest.raises(sh.StaleBlock):
        agent.read("notes")
    big.check()


def test_entries_visible_from_another_process(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        agent = heap.spawn("planner")
        agent.put("plan", b"step one; step two")
        with mp.get_context("spawn").Pool(1) as pool:
            kind, data = pool.apply(read_agent_entry, (heap_name, agent.id, "plan"))
        assert (kind, data) == ("planner", b"step one; step two")
        agent.complete()


def test_an_agent_without_entries_has_its_kind_everywhere(heap_name: str) -> None:
    # spawn writes no index (it comes with the first entry): the kind is found
    # by the kind id the core keeps, from any process
    from _workers import agent_kind_and_owner_kinds

    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        agent = heap.spawn("quiet-kind")
        agent.alloc(100)
        with mp.get_context("spawn").Pool(1) as pool:
            kind, kinds = pool.apply(agent_kind_and_owner_kinds, (heap_name, agent.id))
        assert kind == "quiet-kind" and kinds == ["quiet-kind"]
        assert heap.agent(agent.id).kind == "quiet-kind"
        agent.complete()
        heap.check()


def test_hundred_thousand_blocks_complete_in_one_piece(big: sh.Heap) -> None:
    before = in_use(big)
    agent = big.spawn("bulk")
    offsets = big.alloc_many(100_000, 24, owner=agent)
    assert len(offsets) == 100_000
    assert agent.stats()["blocks"] == 100_000  # no index yet: it comes with the first entry
    final = agent.complete()
    assert final["blocks"] == 100_000
    assert in_use(big) == before
    assert agent.state == "gone"
    with pytest.raises(sh.StaleBlock):
        agent.alloc(16)


def test_with_block_completes(big: sh.Heap) -> None:
    with big.spawn("scoped") as agent:
        blk = agent.alloc(100)
    assert agent.state == "gone"
    with pytest.raises(sh.StaleBlock, match="recycled"):
        bytes(blk)


def test_pinned_agent_defers_recycle(big: sh.Heap) -> None:
    recycled: list[int] = []
    big.on("recycle", lambda i, k, s: recycled.append(i))
    agent = big.spawn("pinned")
    agent.put("state", b"still here")
    view = agent.get("state")
    arr = np.frombuffer(agent.alloc(64), np.uint8)
    final = agent.complete()
    assert agent.state == final["state"] == "completed" and recycled == []
    assert bytes(view) == b"still here"  # nothing reused while visible
    del view
    assert agent.state == "completed"  # the array still pins it
    del arr
    assert agent.state == "gone" and recycled == [agent.id]


def test_hooks(big: sh.Heap, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, int, str, int]] = []

    def record(event: str) -> Any:
        return lambda i, k, s: seen.append((event, i, k, s["blocks"]))

    def broken(i: int, k: str, s: dict[str, Any]) -> None:
        raise RuntimeError("hook bug")

    for event in sh.EVENTS:
        big.on(event, record(event))
    big.on("complete", broken)
    agent = big.spawn("hooked")
    agent.alloc(10)
    before = in_use(big)["context"]
    with caplog.at_level(logging.ERROR, logger="swarmheap"):
        agent.complete()
    assert "hook bug" in caplog.text
    assert in_use(big)["context"] < before  # the failing hook did not stop the recycle
    assert [e for e, *_ in seen] == ["spawn", "complete", "recycle"]
    assert seen[1] == ("complete", agent.id, "hooked", 1)  # its block (no index: no entries)
    big.off("complete", broken)
    with pytest.raises(ValueError):
        big.off("complete", broken)
    with pytest.raises(ValueError, match="unknown event"):
        big.on("explode", broken)


def test_agent_indexes_share_pages() -> None:
    # each agent's index is a block of the shared default's system pages, held
    # by the agent: many agents do not take a page each, and it goes with them
    with sh.Heap.create(size="64 MiB") as heap:
        system = heap.stats()["partitions"]["system"]
        agents = [heap.spawn("small") for _ in range(200)]
        for agent in agents:
            agent.put("note", b"x" * 40)
        grown = heap.stats()["partitions"]["system"]
        assert grown["pages_used"] - system["pages_used"] <= 4  # not 200
        assert agents[7].get("note") == b"x" * 40
        assert agents[7].stats()["bytes"]["system"] > 0  # the index counts as the agent's
        for agent in agents:
            agent.complete()
        assert heap.stats()["partitions"]["system"]["in_use"] == system["in_use"]
        heap.check()


def test_bad_spawn_arguments(big: sh.Heap) -> None:
    for kwargs in ({"kind": ""}, {"lease": -1}, {"lease": float("nan")}, {"kind": "k" * 100000}):
        with pytest.raises(ValueError):
            big.spawn(**kwargs)  # type: ignore[arg-type]
    for kwargs in ({"kind": 3}, {"lease": "soon"}):
        with pytest.raises(TypeError):
            big.spawn(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        big.agent(0)
    with pytest.raises(sh.AgentStateError):
        big.agent(5)
    with pytest.raises(ValueError):
        big.collect(3)


def test_too_many_agents() -> None:
    with sh.Heap.create(size="8 MiB", max_owners=4) as heap:
        agents = [heap.spawn() for _ in range(3)]
        with pytest.raises(sh.TooManyAgents):
            heap.spawn()
        for a in agents:
            a.complete()
        heap.check()


def future(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real = swarmheap.sweep.time.time
    monkeypatch.setattr(swarmheap.sweep.time, "time", lambda: real() + seconds)


def test_expired_lease_is_reclaimed(big: sh.Heap, monkeypatch: pytest.MonkeyPatch) -> None:
    leased = big.spawn("temp", lease=60)
    leased.alloc(1000)
    kept = big.spawn("kept")
    assert big.collect(2).reclaimed_agents == 0
    future(monkeypatch, 120)
    result = big.collect(2)
    assert result.agents["lease"] == 1 and result.bytes["lease"] > 1000
    assert leased.state == "gone" and kept.state == "live"
    assert [(r["id"], r["state"], r["cause"]) for r in result.recycled] == [(leased.id, "gone", "lease")]
    kept.complete()


def test_young_sweep_touches_no_old_agents(big: sh.Heap, monkeypatch: pytest.MonkeyPatch) -> None:
    old = [big.spawn("old", lease=60) for _ in range(5)]
    promoted = big.collect(1)  # survivors of a generation-1 sweep are old
    assert promoted.examined == 10 and promoted.promoted == 10
    young = [big.spawn("young", lease=60) for _ in range(3)]
    future(monkeypatch, 120)  # every lease has now expired
    result = big.collect(0)
    assert result.examined == 3 and result.agents["lease"] == 3
    assert all(a.state == "gone" for a in young)
    assert all(a.state == "live" for a in old)
    assert big.collect(2).agents["lease"] == 5


def test_automatic_sweep_by_allocation_count(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        with mp.get_context("spawn").Pool(1) as pool:
            orphans = pool.apply(spawn_and_exit, (heap_name, 3))
        heap.set_sweep_thresholds(50, 1, 1)
        worker = heap.spawn("busy")
        for _ in range(60):
            worker.alloc(32)
        assert all(heap._owner_generation(i) == 0 for i in orphans)
        worker.complete()
        heap.check()


def test_sweep_thresholds_count_exactly(big: sh.Heap, monkeypatch: pytest.MonkeyPatch) -> None:
    sweeps: list[int] = []
    real = big.collect
    monkeypatch.setattr(big, "collect", lambda generation=2: sweeps.append(generation) or real(generation))
    big.set_sweep_thresholds(10, 3, 0)
    agent = big.spawn("counted")  # a spawn counts as an allocation
    for _ in range(8):
        agent.alloc(16)
    assert sweeps == []  # 9 so far
    agent.alloc(16)
    assert sweeps == [0]  # the 10th
    for _ in range(20):
        agent.alloc(16)
    assert sweeps == [0, 0, 1]  # every 10th; the third young sweep is a generation-1 one
    big.set_sweep_thresholds(0, 0, 0)
    for _ in range(50):
        agent.alloc(16)
    assert sweeps == [0, 0, 1]
    agent.complete()
    big.check()


@pytest.mark.parametrize("hold_lock", [False, True], ids=["holding-blocks", "inside-slow-path"])
def test_killed_worker_is_reclaimed_exactly(heap_name: str, hold_lock: bool) -> None:
    if hold_lock and not _core.TESTING_BUILD:
        pytest.skip("the lock-holding case needs the test hooks: build with SWARMHEAP_TESTING=1")
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        mine = heap.spawn("survivor")
        patterns = []
        for k in range(200):
            blk = mine.alloc(100 + k)
            blk[:] = bytes([k % 256]) * len(blk)
            patterns.append(blk)
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=spawn_and_hang, args=(heap_name, 4, hold_lock, ready, stop))
        proc.start()
        dead_ids = ready.get(timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        # a slow path of ours must get through the lock the dead worker held
        fresh = mine.alloc(20000)
        result = heap.collect(2)
        assert result.agents["dead_process"] == 4
        assert all(heap._owner_generation(i) == 0 for i in dead_ids)
        assert mine.state == "live"
        for k, blk in enumerate(patterns):
            assert bytes(blk) == bytes([k % 256]) * len(blk)
        fresh.free()
        heap.check()
        assert heap.collect(2).reclaimed_agents == 0  # nothing left to take
        mine.complete()


def test_a_sweep_judges_the_process_a_brief_named_not_the_slot_as_it_reads_later(
    heap_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep reads an agent's brief (pid, start time), then asks /proc. In
    between, the agent may be recycled and its slot taken by another
    process: a verdict read from the slot as it is then was once filed
    under the first process's pid, and a live worker's agents were swept
    for another's death (a crash-matrix worker ended by itself in a CI run).
    Here a dead process's agent is examined first, its brief naming the
    live worker as a brief read before the slot changed hands would."""
    ctx = mp.get_context("spawn")
    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        with ctx.Pool(1) as pool:
            (dead_id,) = pool.apply(spawn_and_exit, (heap_name, 1))
        ready, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=spawn_and_hang, args=(heap_name, 1, False, ready, stop))
        proc.start()
        try:
            (live_id,) = ready.get(timeout=60)
            assert dead_id < live_id  # examined first
            live = heap._owner_info(live_id)
            assert live is not None and live["pid"] == proc.pid
            # the verdict is checked under the lock: a holder the slot no longer has is refused
            dead_gen = heap._owner_generation(dead_id)
            with pytest.raises(sh.AgentStateError):
                heap._owner_set_dead(dead_id, dead_gen, "live", live["pid"], live["pid_start_time"])
            real_brief = heap._owner_brief

            def stale_brief(oid: int) -> Any:
                got = real_brief(oid)
                if oid == dead_id and got is not None:
                    return (got[0], got[1], live["pid"], live["pid_start_time"], *got[4:])
                return got

            monkeypatch.setattr(heap, "_owner_brief", stale_brief)
            heap.collect(2)
            assert heap._owner_info(live_id)["state"] == "live", "a live process's agent was swept"
            monkeypatch.undo()
            assert heap.collect(2).agents["dead_process"] == 1  # the dead one, by its own brief
            assert heap._owner_generation(dead_id) == 0
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
        assert heap.collect(2).agents["dead_process"] == 1
        heap.check()


def test_concurrent_sweeps_reclaim_each_agent_once(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        empty = in_use(heap)  # `system` holds the nursery's records from the start
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            orphans = pool.apply(spawn_and_exit, (heap_name, 60))
        before = in_use(heap)
        assert before["context"] > 0
        with ctx.Manager() as manager:
            barrier = manager.Barrier(2)
            with ctx.Pool(2) as pool:
                results = pool.starmap(sweep_after_barrier, [(heap_name, barrier)] * 2)
        assert sum(n for n, _ in results) == len(orphans) == 60
        assert in_use(heap) == empty
        heap.check()


def test_an_index_grown_by_appends_reads_back_exactly(big: sh.Heap) -> None:
    # updates that only add entries append to the encoded index; replacing,
    # deleting and batches must still read back exactly, here and after the
    # process's decoded-index cache is dropped (a read from the arena)
    import random

    agent = big.spawn("grower")
    rng = random.Random(3)
    model: dict[str, bytes] = {}
    for step in range(300):
        op = rng.random()
        if op < 0.6 or not model:
            name, data = f"k{rng.randrange(60)}", bytes([step % 256]) * rng.randrange(1, 50)
            agent.put(name, data)
            model[name] = data
        elif op < 0.8:
            name = rng.choice(list(model))
            agent.delete(name)
            del model[name]
        elif op < 0.95:
            batch = {f"m{rng.randrange(80)}": bytes([step % 256]) * 3 for _ in range(3)}
            agent.put_many(batch)
            model.update(batch)
        else:
            agent.renew(60.0)  # the entries unchanged, the lease moved
        if step % 40 == 0:
            big._index_cache = None  # forget the decoded indexes: read them from the arena again
        assert {n: bytes(agent.get(n)) for n in agent.names()} == model
        # replacements are written over the old entry's bytes: the arena's
        # index decodes to exactly what this process holds
        _, data = big._owner_held_read(agent.id, agent.generation)
        assert swarmheap.index_format.decode(data)[2] == agent._read_index()[2]
    agent.complete()
    big.check()
