"""Block: buffer protocol, handles, lifetime errors, processes and threads."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import swarmheap as sh
from _workers import churn, read_write_free


def test_buffer_protocol_zero_copy(heap: sh.Heap) -> None:
    blk = heap.alloc(4096)
    assert len(blk) == 4096 and blk.size == 4096 and blk.partition == "context"
    blk[:5] = b"hello"
    arr = np.frombuffer(blk, np.uint8)
    assert bytes(arr[:5]) == b"hello"
    arr[5] = ord("!")  # writes through: same bytes
    assert blk[5] == ord("!") and blk[:6] == b"hello!"
    view = memoryview(blk)
    assert view.nbytes == 4096 and not view.readonly
    assert blk.exported == 2
    view.release()
    del arr
    assert blk.exported == 0
    blk.free()


def test_usable_size_and_repr(heap: sh.Heap) -> None:
    with heap.alloc(100, "shared") as blk:
        assert len(blk) == 100 and blk.size == 112
        assert "100 B" in repr(blk) and "usable 112 B" in repr(blk) and "shared" in repr(blk)
    assert blk.freed and "freed" in repr(blk)


def test_free_refused_while_exported(heap: sh.Heap) -> None:
    blk = heap.alloc(64)
    view = memoryview(blk)
    in_use = heap.stats()["partitions"]["context"]["in_use"]
    with pytest.raises(BufferError, match="exported"):
        blk.free()
    assert heap.stats()["partitions"]["context"]["in_use"] == in_use  # nothing freed
    heap.check()
    view.release()
    blk.free()


def test_use_after_free_is_stale(heap: sh.Heap) -> None:
    blk = heap.alloc(64)
    blk.free()
    with pytest.raises(sh.StaleBlock):
        blk.free()
    with pytest.raises(sh.StaleBlock):
        memoryview(blk)
    with pytest.raises(sh.StaleBlock):
        blk[0] = 1
    heap.check()


def test_handles_pickle_and_resolve(heap: sh.Heap) -> None:
    blk = heap.alloc(40, "comm")
    blk[:4] = b"ping"
    handle = pickle.loads(pickle.dumps(blk.handle))
    assert handle == blk.handle and isinstance(handle, sh.Handle)
    same = heap.resolve(handle)
    assert same.offset == blk.offset and same[:4] == b"ping" and len(same) == 40
    with pytest.raises(TypeError, match="handle"):
        pickle.dumps(blk)
    same.free()
    with pytest.raises(sh.InvalidHandle):
        heap.resolve(handle)
    heap.check()


@pytest.mark.parametrize(
    "bad",
    [sh.Handle(1 << 40, 16), sh.Handle(3, 16), sh.Handle(64, 16), (1, 2), "handle", sh.Handle(-1, 0)],
)
def test_resolve_bad_handles(heap: sh.Heap, bad: object) -> None:
    with pytest.raises(sh.InvalidHandle):
        heap.resolve(bad)  # type: ignore[arg-type]
    heap.check()


def test_resolve_size_beyond_block(heap: sh.Heap) -> None:
    blk = heap.alloc(16)
    with pytest.raises(sh.InvalidHandle, match="exceeds"):
        heap.resolve(sh.Handle(blk.offset, 1000, 0, 1))
    blk.free()


@pytest.mark.parametrize(
    ("size", "partition", "exc"),
    [
        (-1, "context", ValueError),
        ("huge", "context", ValueError),
        (1.5, "context", TypeError),
        (None, "context", TypeError),
        (16, "bogus", ValueError),
        (16, 3, ValueError),
    ],
)
def test_bad_alloc_arguments_leave_heap_consistent(
    heap: sh.Heap, size: object, partition: object, exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        heap.alloc(size, partition)  # type: ignore[arg-type]
    heap.check()
    assert heap.stats()["partitions"]["context"]["in_use"] == 0


@pytest.mark.parametrize("owner", [12345, -3, 2**40, "agent"])
def test_bad_owner(heap: sh.Heap, owner: object) -> None:
    with pytest.raises((sh.StaleBlock, ValueError, TypeError)):
        heap.alloc(16, owner=owner)
    heap.check()


def test_block_cannot_be_constructed() -> None:
    with pytest.raises(TypeError):
        sh.Block()


def test_threads_share_a_heap(heap: sh.Heap) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(2000):
                blk = heap.alloc(16 + (seed * 7 + i) % 700, ("context", "shared", "comm")[i % 3])
                blk[:1] = bytes([seed])
                assert blk[0] == seed
                blk.free()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(p["in_use"] == 0 for p in heap.stats()["partitions"].values())


def test_spawned_process_reads_writes_and_frees(named: sh.Heap) -> None:
    assert named.name is not None
    mine = named.alloc(64, "shared")
    mine[:16] = b"written by mama!"
    other = named.alloc(128, "shared")
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        seen = pool.apply(read_write_free, (named.name, mine.handle, other.handle))
    assert seen == b"written by mama!"
    assert mine[:16] == b"written by child"
    with pytest.raises(sh.InvalidHandle):
        named.resolve(other.handle)  # the child freed it
    mine.free()
    named.check()
    assert named.stats()["partitions"]["shared"]["in_use"] == 0


def test_two_processes_two_threads_each(named: sh.Heap) -> None:
    assert named.name is not None
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        done = pool.starmap(churn, [(named.name, 1, 3000), (named.name, 2, 3000)])
    assert done == [3000, 3000]
    named.check()
    assert all(p["in_use"] == 0 for p in named.stats()["partitions"].values())


class HeapModel(RuleBasedStateMachine):
    """The real heap and a dict of expected contents, side by side."""

    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.heap = sh.Heap.create(size="8 MiB", page_size=4096)
        self.model: dict[int, bytes] = {}
        self.handles: dict[int, sh.Block] = {}

    @rule(
        target=blocks,
        size=st.integers(1, 20000),
        part=st.sampled_from(sh.PARTITIONS),
        fill=st.binary(min_size=1, max_size=8),
    )
    def alloc(self, size: int, part: str, fill: bytes) -> int:
        try:
            blk = self.heap.alloc(size, part)
        except sh.PartitionFull:
            return -1
        data = (fill * (size // len(fill) + 1))[:size]
        blk[:] = data
        assert blk.offset not in self.model
        self.model[blk.offset] = data
        self.handles[blk.offset] = blk
        return blk.offset

    @rule(offset=consumes(blocks))
    def free(self, offset: int) -> None:
        if offset < 0:
            return
        blk = self.handles.pop(offset)
        assert bytes(blk) == self.model.pop(offset)
        blk.free()

    @rule(offset=blocks, data=st.binary(min_size=1, max_size=16))
    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset not in self.handles:
            return
        blk = self.handles[offset]
        n = min(len(data), len(blk))
        blk[:n] = data[:n]
        self.model[offset] = data[:n] + self.model[offset][n:]

    @invariant()
    def contents_and_accounting(self) -> None:
        for offset, data in self.model.items():
            assert bytes(self.handles[offset]) == data
        in_use = sum(p["in_use"] for p in self.heap.stats()["partitions"].values())
        assert in_use == sum(b.size for b in self.handles.values())

    def teardown(self) -> None:
        self.heap.check()
        for blk in self.handles.values():
            blk.free()
        self.heap.close()


HeapModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestHeapModel = HeapModel.TestCase
