"""Thread caches seen from Python: what a thread caches counts as free, and
comes back when the thread exits, on request, or when a sweep finds that the
process that held it died."""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest

import swarmheap as sh
from _workers import cache_then_die


def caches(heap: sh.Heap) -> dict[str, int]:
    return heap.stats()["thread_caches"]


def test_another_threads_cache_counts_as_free() -> None:
    # Python's join returns before the OS thread runs its exit hooks, so the
    # slot may still be bound here: the figures must be right either way. The
    # C tests (test_tcache) check that thread exit gives the slot back.
    with sh.Heap.create(size="16 MiB") as heap:
        before = caches(heap)["bound"]
        kept: list[sh.Block] = []

        def work() -> None:
            blocks = [heap.alloc(64) for _ in range(100)]
            for blk in blocks[50:]:
                blk.free()
            kept.extend(blocks[:50])
            assert caches(heap)["bound"] == before + 1

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        context = heap.stats()["partitions"]["context"]
        assert context["in_use"] == 50 * 64
        assert context["allocs"] == 100 and context["frees"] == 50
        for blk in kept:
            blk.free()
        assert heap.stats()["partitions"]["context"]["in_use"] == 0
        heap.check()


def test_flush_thread_cache() -> None:
    with sh.Heap.create(size="16 MiB") as heap:
        blocks = [heap.alloc(300, "shared") for _ in range(20)]
        for blk in blocks:
            blk.free()
        assert caches(heap)["bound"] >= 1
        heap.flush_thread_cache()
        assert caches(heap)["bound"] == 0
        shared = heap.stats()["partitions"]["shared"]
        assert shared["in_use"] == 0 and shared["allocs"] == 20 and shared["frees"] == 20
        heap.check()
        heap.alloc(300, "shared").free()  # binds a slot again
        assert caches(heap)["bound"] == 1


def test_magazine_blocks_are_free_and_reused() -> None:
    # 16 MiB arenas keep 12 blocks per class in a thread's magazine
    with sh.Heap.create(size="16 MiB") as heap:
        blocks = [heap.alloc(100, "comm") for _ in range(20)]
        offsets = [blk.offset for blk in blocks]
        for blk in blocks:
            blk.free()
        assert caches(heap)["magazine_blocks"] == 12
        comm = heap.stats()["partitions"]["comm"]
        assert comm["in_use"] == 0 and comm["allocs"] == 20 and comm["frees"] == 20
        heap.check()
        again = heap.alloc(100, "comm")
        # the twelfth freed filled the magazine (the rest went to their page)
        # and is the first to come back
        assert again.offset == offsets[11]
        assert caches(heap)["magazine_blocks"] == 11
        with pytest.raises(sh.StaleBlock):
            blocks[11].free()  # the old Block object knows it was freed
        heap.resolve(again.handle)  # the handle still resolves: the block is live again
        stale = blocks[0].handle  # its block waits in the magazine
        with pytest.raises(sh.InvalidHandle, match="free block"):
            heap.resolve(stale)
        again.free()
        twin = heap.alloc(100, "comm")
        copy = heap.resolve(twin.handle)
        twin.free()
        with pytest.raises(sh.StaleBlock, match="already free"):
            copy.free()  # a second free through another Block object is caught by the core
        heap.check()
        heap.flush_thread_cache()
        assert caches(heap)["magazine_blocks"] == 0
        assert heap.stats()["partitions"]["comm"]["in_use"] == 0
        heap.check()


def test_sweep_gives_back_a_dead_process_cache(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        before = caches(heap)["bound"]
        proc = mp.get_context("spawn").Process(target=cache_then_die, args=(heap_name,))
        proc.start()
        proc.join()
        assert proc.exitcode == 0
        assert caches(heap)["bound"] == before + 1  # nobody closed it
        # 200 bytes take the 224-byte class
        comm = heap.stats()["partitions"]["comm"]
        assert comm["in_use"] == 32 * 224 and comm["allocs"] == 64 and comm["frees"] == 32
        heap.check()
        assert heap.collect(0).thread_caches == 0  # young sweeps leave caches alone
        result = heap.collect(1)
        assert result.thread_caches == 1
        assert caches(heap)["bound"] == before
        assert heap.collect(2).thread_caches == 0  # taken back exactly once
        comm = heap.stats()["partitions"]["comm"]
        assert comm["in_use"] == 32 * 224 and comm["allocs"] == 64 and comm["frees"] == 32
        heap.check()


@pytest.mark.parametrize("bad", [-1, 4096, True, 1.5, "8"])
def test_bad_max_threads(bad: object) -> None:
    with pytest.raises(ValueError, match="max_threads"):
        sh.Heap.create(size="16 MiB", max_threads=bad)  # type: ignore[arg-type]


def test_more_threads_than_caches() -> None:
    with sh.Heap.create(size="16 MiB", max_threads=1) as heap:
        errors: list[BaseException] = []

        def churn() -> None:
            try:
                for _ in range(200):
                    blocks = [heap.alloc(48 + 16 * i) for i in range(8)]
                    for blk in blocks:
                        blk.free()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=churn) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert caches(heap)["total"] == 1
        context = heap.stats()["partitions"]["context"]
        assert context["in_use"] == 0 and context["allocs"] == 4 * 200 * 8
        heap.check()
