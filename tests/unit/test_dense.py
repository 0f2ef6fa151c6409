"""Dense agents: small agents share nursery pages instead of holding a page
per size class each (see docs/design.md, "The nursery")."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading

import pytest

import swarmheap as sh
from _workers import small_swarm, small_swarm_and_die


def in_use(heap: sh.Heap) -> dict[str, int]:
    return {p: v["in_use"] for p, v in heap.stats()["partitions"].items()}


def test_a_gib_heap_defaults_to_32768_agents_within_one_percent() -> None:
    with sh.Heap.create(size="1 GiB") as heap:
        info = heap.info()
        assert info["max_owners"] - 1 >= 32768  # owner 0 is the shared default
        assert info["metadata_bytes"] <= info["size"] // 100


@pytest.mark.parametrize("page_size", [16384, 4096])
def test_smaller_pages_still_default_to_thousands_of_agents(page_size: int) -> None:
    # their per-page tables alone pass 1 % of the arena; owners used to be
    # left the floor of 64 then, whatever the heap's size
    with sh.Heap.create(size="1 GiB", page_size=page_size) as heap:
        info = heap.info()
        assert info["max_owners"] - 1 >= 16384
        agents = [heap.spawn("small") for _ in range(2000)]
        for agent in agents:
            agent.alloc(200)
        for agent in agents:
            agent.complete()
        heap.check()


def test_twenty_thousand_small_agents_over_two_processes(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="1 GiB", max_owners=20001) as heap:
        baseline = in_use(heap)
        ctx = mp.get_context("spawn")
        with ctx.Pool(2) as pool:
            results = pool.starmap(small_swarm, [(heap_name, 10_000, 1), (heap_name, 10_000, 2)])
        assert [n for n, _ in results] == [10_000, 10_000]
        heap.check()
        assert in_use(heap) == baseline
        assert heap.agents() == []


def test_small_agents_pack_densely() -> None:
    heap = sh.Heap.create(size="64 MiB")
    agents = []
    for _ in range(200):
        agent = heap.spawn("small")
        for size in (24, 64, 200, 512, 1500, 4000):
            agent.alloc(size)
        agents.append(agent)
    context = heap.stats()["partitions"]["context"]
    # 200 agents of ~6.3 KB: a page per class each would hold 200 * 6 pages
    assert context["held"] < 200 * 6 * heap.page_size // 10
    assert context["utilization"] > 0.8
    for agent in agents:
        agent.complete()
    heap.check()
    heap.close()


def test_agent_stats_count_nursery_blocks_exactly(heap: sh.Heap) -> None:
    agent = heap.spawn("small")
    sizes = (24, 64, 200, 512, 1500, 4000)
    blocks = [agent.alloc(size) for size in sizes]
    # counted at their class's size; a nursery block is at least 64 bytes
    held = [heap.good_size(max(size, 64)) for size in sizes]
    stats = agent.stats()
    assert stats["bytes"]["context"] == sum(held)
    # no pages of its own, yet its peak never reads below what it holds
    assert stats["pages"]["context"] == stats["peak_pages"]["context"] == 0
    assert stats["peak"]["context"] == sum(held)
    blocks[0].free()
    assert agent.stats()["bytes"]["context"] == sum(held[1:])
    final = agent.complete()
    assert final["bytes"]["context"] == sum(held[1:]) <= final["peak"]["context"]
    assert final["state"] == agent.state == "gone"  # what it is after the call
    for blk in blocks[1:]:
        with pytest.raises(sh.StaleBlock):
            blk[:1] = b"x"


def test_mid_size_blocks_start_in_the_nursery() -> None:
    # an agent's first blocks up to 8 KiB share pages with other agents': a
    # few 6 KB blocks of many agents do not cost each agent a page
    with sh.Heap.create(size="64 MiB") as heap:
        info = heap.info()
        assert info["nursery_limit"] == 28672 and info["nursery_blocks"] == 64
        assert {5120, 6144, 8192} <= set(info["nursery_classes"])
        assert info["nursery_class_blocks"] == 16  # a class past 16 blocks (and 4 KiB) gets pages of its own
        agents = [heap.spawn("mid") for _ in range(20)]
        for agent in agents:
            for size in (5000, 6000, 8000):
                agent.alloc(size)
        for agent in agents:
            stats = agent.stats()
            assert stats["pages"]["context"] == 0 and stats["bytes"]["context"] == sum(
                heap.good_size(s) for s in (5000, 6000, 8000)
            )
        context = heap.stats()["partitions"]["context"]
        assert context["held"] <= 20 * 3 * 8192 * 1.3  # shared pages, not 60 of 64 KiB
        for agent in agents:
            agent.complete()
        heap.check()


def test_blocks_above_8_kib_share_pages_where_the_map_costs_no_block() -> None:
    # 10-28 KiB blocks of many agents share nursery pages as long as a page
    # holds as many of them beside its map as it would without one: a
    # medium agent's 20 KiB block no longer holds a 64 KiB page alone, and a
    # 16 KiB block, whose nursery page would hold 3 where its own holds 4,
    # still takes a page of its own
    with sh.Heap.create(size="64 MiB") as heap:
        classes = set(heap.info()["nursery_classes"])
        assert {10240, 12288, 14336, 20480, 24576, 28672} <= classes
        assert not {16384, 32768} & classes
        agents = [heap.spawn("mid") for _ in range(12)]
        blocks = []
        for n, agent in enumerate(agents):
            for size in (10_000, 20_000, 28_000):
                blk = agent.alloc(size)
                blk[:4] = n.to_bytes(4, "little")
                blocks.append((blk, n))
        for agent in agents:
            assert agent.stats()["pages"]["context"] == 0  # all of it on nursery pages
        held = heap.stats()["partitions"]["context"]["held"]
        # 6, 3 and 2 of them to a page: 2 + 4 + 6 pages, not 36 of their own
        assert held <= (2 + 4 + 6 + 2) * heap.info()["page_size"]
        own = heap.spawn("own")
        own.alloc(16384)
        assert own.stats()["pages"]["context"] == 1
        for blk, n in blocks:
            assert bytes(blk[:4]) == n.to_bytes(4, "little")
        for agent in [*agents, own]:
            agent.complete()
        heap.check()
        assert heap.stats()["partitions"]["context"]["in_use"] == 0


def test_a_nursery_share_is_bounded(heap: sh.Heap) -> None:
    agent = heap.spawn("grower")
    share = heap.info()["nursery_blocks"]
    sizes = [64 * (1 + i % 32) for i in range(share)]  # at most 2 of a class: none past its threshold
    blocks = [agent.alloc(size) for size in sizes]
    assert agent.stats()["pages"]["context"] == 0  # its share, all on nursery pages
    blocks.extend(agent.alloc(size) for size in sizes)
    # past its share: the rest are on pages of its own
    assert agent.stats()["pages"]["context"] >= 1
    for blk in blocks:
        blk.free()
    agent.complete()
    heap.check()


def test_nursery_blocks_freed_from_other_threads_while_others_allocate(heap: sh.Heap) -> None:
    agents = [heap.spawn("t") for _ in range(8)]
    blocks = [[a.alloc(64 + 32 * k) for k in range(12)] for a in agents]
    errors: list[BaseException] = []

    def free_all(mine: list[sh.Block]) -> None:
        try:
            for blk in mine:
                blk.free()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=free_all, args=(b,)) for b in blocks]
    for t in threads:
        t.start()
    more = [a.alloc(300) for a in agents]
    for t in threads:
        t.join()
    assert not errors
    for agent, blk in zip(agents, more):
        assert agent.stats()["bytes"]["context"] == heap.good_size(len(blk))
        agent.complete()
    heap.check()


def test_double_free_and_stale_handle_of_a_nursery_block(heap: sh.Heap) -> None:
    agent = heap.spawn("x")
    blk = agent.alloc(64)
    handle = blk.handle
    blk.free()
    with pytest.raises(sh.StaleBlock):
        heap.resolve(handle)
    with pytest.raises(sh.StaleBlock):
        blk.free()
    other = agent.alloc(64)  # may reuse the place
    with pytest.raises(sh.StaleBlock):
        heap.resolve(handle)
    other.free()
    agent.complete()
    heap.check()


def test_killed_process_nursery_blocks_are_reclaimed(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        baseline = in_use(heap)
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        proc = ctx.Process(target=small_swarm_and_die, args=(heap_name, 300, ready))
        proc.start()
        ids = ready.get(timeout=60)
        assert in_use(heap)["context"] > 300 * 6000
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        result = heap.collect(2)
        assert result.agents["dead_process"] == len(ids) == 300
        assert in_use(heap) == baseline
        heap.check()


def test_agents_of_a_few_dozen_small_blocks_stay_packed() -> None:
    # 48 blocks in eight classes (about 26 KB): past a share of 16 blocks each
    # agent took a 64 KiB page per class, and a 1 GiB heap held 805 of them
    # at 5 % use; a class gets a page of the agent's own only past 16 blocks
    sizes = (64, 100, 200, 300, 500, 700, 1000, 1500)
    with sh.Heap.create(size="64 MiB") as heap:
        agents = []
        for _ in range(200):
            agent = heap.spawn("chatty")
            for i in range(48):
                agent.alloc(sizes[i % len(sizes)])
            agents.append(agent)
        assert all(agent.stats()["pages"]["context"] == 0 for agent in agents)
        context = heap.stats()["partitions"]["context"]
        assert context["utilization"] > 0.8
        for agent in agents:
            agent.complete()
        assert heap.stats()["partitions"]["context"]["in_use"] == 0
        heap.check()


def test_a_class_an_agent_uses_much_gets_a_page_of_its_own(heap: sh.Heap) -> None:
    # past its first 16 nursery blocks, 16 of one class holding a sixteenth of
    # a page are the threshold: that class's next blocks come from a page of
    # its own, while a class it has used little still takes a nursery slot
    threshold = max(16, -(-heap.page_size // 16 // heap.good_size(300)))
    agent = heap.spawn("mixed")
    for size in (100, 200, 700, 1500):
        agent.alloc(size)
    for _ in range(threshold):
        agent.alloc(300)
    assert agent.stats()["pages"]["context"] == 0  # all packed
    agent.alloc(300)
    assert agent.stats()["pages"]["context"] == 1  # past the threshold: a page of its own
    agent.alloc(3000)
    assert agent.stats()["pages"]["context"] == 1  # a class it has not used: the nursery
    agent.complete()
    heap.check()


def test_many_tiny_blocks_of_one_class_stay_packed() -> None:
    # 40 blocks of 64 B (2.5 KB): a sixteenth of a page is not reached, so
    # no page of its own, as it took past 16 blocks before
    with sh.Heap.create(size="64 MiB") as heap:
        agents = []
        for _ in range(300):
            agent = heap.spawn("tiny-many")
            for _ in range(40):
                agent.alloc(64)
            agents.append(agent)
        assert all(agent.stats()["pages"]["context"] == 0 for agent in agents)
        assert heap.stats()["partitions"]["context"]["utilization"] > 0.8
        for agent in agents:
            agent.complete()
        heap.check()
