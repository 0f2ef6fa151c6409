"""NumPy arrays in the arena through the NEP 49 data-memory handler."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading
from typing import Any

import numpy as np
import pytest

import swarmheap as sh
from swarmheap import _core

get_handler_name = np._core.multiarray.get_handler_name


def data_in(heap: sh.Heap, array: np.ndarray[Any, Any]) -> bool:
    """Whether the array's data starts a block of this heap."""
    owner = array
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    try:
        _core.handle_at(heap, owner.__array_interface__["data"][0], owner.nbytes)
    except sh.InvalidHandle:
        return False
    return True


@pytest.fixture
def big() -> Any:
    heap = sh.Heap.create(size="128 MiB")
    yield heap
    heap.check()
    heap.close()


def test_arrays_of_many_sizes_and_dtypes_live_in_the_arena(big: sh.Heap) -> None:
    heap = big
    agent = heap.spawn("embedder")
    arrays = []
    with sh.numpy_allocator(agent) as alloc:
        assert get_handler_name() == "swarmheap"
        for dtype in (np.uint8, np.int32, np.float32, np.float64, np.complex128, np.bool_):
            for n in (1, 7, 64, 1000, 100_000):
                a = np.arange(n).astype(dtype)
                assert get_handler_name(a) == "swarmheap"
                arrays.append((a, dtype, n))
        records = np.zeros(10, dtype=[("id", "i8"), ("score", "f4")])
    assert get_handler_name() == "default_allocator"
    for a, _, _ in arrays:
        assert data_in(heap, a)
    assert data_in(heap, records) and records["score"].sum() == 0
    assert alloc.stats()["live"] >= len(arrays)
    # arrays made outside the block are NumPy's; values agree
    for a, dtype, n in arrays:
        expected = np.arange(n).astype(dtype)
        assert not data_in(heap, expected)
        np.testing.assert_array_equal(a, expected)
    del arrays, a, expected, records
    assert alloc.stats()["live"] == 0
    agent.complete()
    heap.check()


def test_grow_slice_and_pickle_keep_data_in_the_arena(heap: sh.Heap) -> None:
    agent = heap.spawn("tokens")
    with sh.numpy_allocator(agent) as alloc:
        a = np.arange(9, dtype=np.int64)
        a.resize(10, refcheck=False)  # 72 B had an 80 B block: grows in place
        assert alloc.stats()["in_place_reallocs"] == 1
        a.resize(50_000, refcheck=False)  # a new block, the old bytes carried over
        assert data_in(heap, a) and list(a[:9]) == list(range(9)) and not a[10:].any()
        b = np.append(a, [1, 2, 3])
        assert data_in(heap, b) and b[-3:].tolist() == [1, 2, 3]
        view = b[5:100:3]
        assert view.base is b
        # NumPy copies unpickled data of up to 1000 bytes into a fresh
        # allocation (ours); a larger one keeps the pickle's bytes as its base
        small = pickle.loads(pickle.dumps(b[:100]))
        assert data_in(heap, small)
        np.testing.assert_array_equal(small, b[:100])
        c = pickle.loads(pickle.dumps(b))
        np.testing.assert_array_equal(b, c)
    assert view[0] == 5 and data_in(heap, view)
    del a, b, c, small, view
    assert alloc.stats()["live"] == 0
    agent.complete()
    heap.check()


def test_agent_stats_rise_and_fall_with_arrays(heap: sh.Heap) -> None:
    agent = heap.spawn("scores")
    before = agent.stats()["bytes"]["context"]
    arrays = sh.empty((256, 256), np.float32, agent=agent), sh.zeros(1000, np.int64, agent=agent)
    assert not arrays[1].any()
    during = agent.stats()["bytes"]["context"]
    assert during >= before + 256 * 256 * 4 + 8000
    assert agent.stats()["pins"] == 2
    del arrays
    assert agent.stats()["bytes"]["context"] == before and agent.stats()["pins"] == 0
    agent.complete()
    heap.check()


def test_complete_defers_until_the_last_array_is_freed(heap: sh.Heap) -> None:
    agent = heap.spawn("memory")
    in_use = heap.stats()["partitions"]["context"]["in_use"]
    emb = sh.empty(4096, np.float64, agent=agent)
    emb[:] = np.linspace(0, 1, 4096)
    agent.complete()
    assert agent.state == "completed"
    # nothing was reused while the array can see it
    with pytest.raises(sh.StaleBlock):
        agent.alloc(64)
    filler = [heap.alloc(32768) for _ in range(8)]
    np.testing.assert_array_equal(emb, np.linspace(0, 1, 4096))
    for blk in filler:
        blk.free()
    del emb
    assert heap._owner_generation(agent.id) != agent.generation  # recycled by the last free
    assert heap.stats()["partitions"]["context"]["in_use"] == in_use
    heap.check()


def test_arrays_outliving_their_heap_object_are_safe() -> None:
    heap = sh.Heap.create(size="16 MiB")
    a = sh.zeros(1000, np.int32, agent=heap)
    del heap  # the last reference: the mapping must stay for the array
    a += 7
    assert int(a.sum()) == 7000
    del a


def test_free_after_the_heap_was_closed_is_safe() -> None:
    heap = sh.Heap.create(size="16 MiB")
    agent = heap.spawn("late")
    a = sh.zeros(10_000, np.float64, agent=agent)
    a += 1.5
    heap.close()  # the mapping stays while the array needs it
    assert a.sum() == 15_000.0
    del a  # frees into the still-mapped arena, then unmaps it


def test_threads_start_with_the_default_handler(heap: sh.Heap) -> None:
    seen: dict[str, str] = {}
    alloc = sh.numpy_allocator(heap)

    def plain() -> None:
        seen["plain"] = get_handler_name(np.ones(100))

    def entering() -> None:
        with alloc:
            seen["entering"] = get_handler_name(np.ones(100))
            seen["entering_in_arena"] = str(data_in(heap, np.ones(100)))

    with alloc:
        for fn in (plain, entering):
            t = threading.Thread(target=fn)
            t.start()
            t.join()
        seen["main"] = get_handler_name(np.ones(100))
    assert seen == {
        "plain": "default_allocator",
        "entering": "swarmheap",
        "entering_in_arena": "True",
        "main": "swarmheap",
    }
    heap.check()


def test_decorator_form(heap: sh.Heap) -> None:
    agent = heap.spawn("decorated")

    @sh.numpy_allocator(agent, "shared")
    def build(n: int) -> np.ndarray[Any, Any]:
        return np.full(n, 3, dtype=np.int16)

    out = [build(10), build(1000)]
    assert all(data_in(heap, a) for a in out)
    assert agent.stats()["bytes"]["shared"] > 0 and get_handler_name() == "default_allocator"
    del out
    agent.complete()
    heap.check()


def test_last_array_fires_the_recycle_hook(heap: sh.Heap) -> None:
    fired: list[tuple[int, str, int]] = []
    heap.on("recycle", lambda agent_id, kind, stats: fired.append((agent_id, kind, stats["blocks"])))
    agent = heap.spawn("embedder")
    arr = sh.zeros(1000, np.float64, agent=agent)
    final = agent.complete()  # deferred: the array pins the agent
    assert fired == [] and agent.state == "completed"
    del arr  # the core recycles the agent as the last array goes, and the hook hears of it
    assert fired == [(agent.id, "embedder", final["blocks"])]
    assert agent.state == "gone"
    heap.check()


def test_the_heap_object_whose_array_recycles_an_agent_hears_its_kind_and_figures(
    named: sh.Heap, heap_name: str
) -> None:
    """Two Heap objects of one heap: the agent completes through one while an
    array of the other pins it, and the other's handler recycles it as the
    array goes. Its hooks hear the kind (by the kind id the core keeps) and
    the figures the core read as it recycled, not "?" and nothing."""
    with sh.Heap.attach(heap_name) as other:
        heard: list[tuple[int, str, str, int]] = []
        other.on("recycle", lambda i, kind, stats: heard.append((i, kind, stats["state"], stats["blocks"])))
        agent = named.spawn("embedder")
        arr = sh.zeros(1000, np.float64, agent=other.agent(agent.id))
        final = named.agent(agent.id).complete()  # deferred: the array pins the agent
        assert final["state"] == "completed" and heard == []
        del arr
        # the figures are the recycle's: the array's block went just before
        assert final["blocks"] == 1 and heard == [(agent.id, "embedder", "gone", 0)]
        other.check()


def test_zeros_are_zero_on_reused_blocks(heap: sh.Heap) -> None:
    for _ in range(3):
        a = sh.empty(5000, np.uint8, agent=heap)
        a[:] = 0xAB
        del a
        z = sh.zeros(5000, np.uint8, agent=heap)
        assert not z.any()
        del z
    heap.check()


@pytest.mark.parametrize("nbytes", [300_000, 1 << 20, 3 << 20])
def test_large_zeros_fresh_and_reused(heap: sh.Heap, nbytes: int) -> None:
    # the first one comes from pages never handed out (no memset), the later
    # ones from a run this thread kept or took back: cleared
    for _ in range(3):
        z = sh.zeros(nbytes, np.uint8, agent=heap)
        assert not z.any()
        z[:] = 0xCD
        del z
    heap.flush_thread_cache()
    z = sh.zeros(nbytes, np.uint8, agent=heap)
    assert not z.any()
    del z
    heap.check()


def test_full_partition_raises_partition_full_and_heap_stays_consistent(heap: sh.Heap) -> None:
    cap = heap.stats()["partitions"]["comm"]["capacity"] + 1  # one byte more than the partition
    alloc = sh.numpy_allocator(heap, "comm")
    with pytest.raises(sh.PartitionFull, match="'comm' is full") as info:
        with alloc:
            np.ones(cap, dtype=np.uint8)
    assert isinstance(info.value, MemoryError)
    assert alloc.stats()["failures"] == 1
    with pytest.raises(sh.PartitionFull):
        sh.empty(cap * 2, np.uint8, agent=heap, partition="comm")
    heap.check()
    # the partition still serves what fits
    small = sh.empty(100, np.uint8, agent=heap, partition="comm")
    assert data_in(heap, small)
    del small
    heap.check()


def test_fallback_to_the_system_allocator_is_opt_in_and_counted(heap: sh.Heap) -> None:
    cap = heap.stats()["partitions"]["comm"]["capacity"] + 1
    with sh.numpy_allocator(heap, "comm", fallback=True) as alloc:
        big = np.ones(cap, dtype=np.uint8)
        small = np.ones(10, dtype=np.uint8)
    assert alloc.stats()["fallbacks"] == 1 and alloc.stats()["failures"] == 0
    assert not data_in(heap, big) and data_in(heap, small)
    assert big.sum() == cap
    del big, small
    assert alloc.stats()["live"] == 0
    heap.check()


def test_bad_targets_and_partitions(heap: sh.Heap) -> None:
    with pytest.raises(TypeError, match="Heap or an Agent"):
        sh.numpy_allocator("not a heap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown partition"):
        sh.numpy_allocator(heap, "attic")
    agent = heap.spawn("gone")
    agent.complete()
    with pytest.raises(sh.StaleBlock):
        sh.numpy_allocator(agent)
    heap.check()


def test_handles_of_what_is_not_an_array_are_type_errors(heap: sh.Heap) -> None:
    with pytest.raises(TypeError, match="NumPy array"):
        sh.array_handle(heap, [1.0, 2.0])
    with pytest.raises(TypeError, match="ArrayHandle"):
        sh.from_handle(heap, (0, "<f8", (2,), (8,), 0))
    heap.check()


def _read_shared_array(name: str, handle: sh.ArrayHandle, out: Any) -> None:
    heap = sh.Heap.attach(name)
    array = sh.from_handle(heap, handle)
    out.put((array.sum(), array[3, 4], array.shape, sh.Heap is not None))
    array[0, 0] = -1.0  # zero-copy: the parent sees this write
    del array
    heap.close()


def test_a_worker_reads_a_shared_array_through_a_handle(named: sh.Heap, heap_name: str) -> None:
    a = sh.empty((20, 30), np.float64, agent=named, partition="shared")
    a[:] = np.arange(600).reshape(20, 30)
    handle = sh.array_handle(named, a)
    handle = pickle.loads(pickle.dumps(handle))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_read_shared_array, args=(heap_name, handle, out))
    p.start()
    total, item, shape, _ = out.get(timeout=120)
    p.join(timeout=120)
    assert p.exitcode == 0
    assert total == a.sum() + 0.0 - (-1.0) * 0 or total == np.arange(600).sum()
    assert item == a[3, 4] == 94.0 and shape == (20, 30)
    assert a[0, 0] == -1.0
    view = sh.array_handle(named, a[2:5, 1:4])
    assert view.offset == (2 * 30 + 1) * 8 and view.strides == (240, 8)
    del a
    named.check()
