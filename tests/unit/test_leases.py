"""Leases on blocks of the shared default: a sweep frees the ones whose
holder let the lease run out, once, and never a block freed in time."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import pytest

import swarmheap as sh
from _workers import lease_then_die


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


def shared_in_use(heap: sh.Heap) -> int:
    return int(heap.stats()["partitions"]["shared"]["in_use"])


def test_lease_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with sh.Heap.create(size="16 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        before = shared_in_use(heap)
        leased = heap.alloc(1000, "shared", lease=60)
        kept = heap.alloc(1000, "shared")
        assert heap.stats()["leases"] == 1
        deadline = heap.lease_deadline(leased)
        assert deadline is not None and 55 < deadline - time.time() <= 60
        assert heap.lease_deadline(kept) is None
        assert heap.collect(2).leased_blocks == 0
        assert heap.collect(0).leased_blocks == 0  # young sweeps leave leases alone
        later(monkeypatch, 120)
        result = heap.collect(1)
        assert result.leased_blocks == 1 and result.bytes["lease"] == leased.size
        assert result.reclaimed_bytes >= leased.size
        assert shared_in_use(heap) == before + kept.size
        assert heap.collect(2).leased_blocks == 0  # once
        kept.free()
        heap.check()


def test_a_view_left_open_past_its_lease_leaves_the_next_tenant_free(monkeypatch: pytest.MonkeyPatch) -> None:
    # the holder's view outlived its lease: the sweep took the block back and
    # the view is stale (it aliases whoever has the block now); it must not
    # keep the block's next tenants, a Block or an offset, from freeing it
    with sh.Heap.create(size="16 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        leased = heap.alloc(64, "shared", lease=60)
        stale_view = memoryview(leased)
        later(monkeypatch, 120)
        assert heap.collect(1).leased_blocks == 1 and leased.freed
        tenant = heap.alloc(64, "shared")
        assert tenant.offset == leased.offset  # the thread cache hands the block straight back
        with memoryview(tenant) as view:  # a tenant's own buffers still hold its free back
            with pytest.raises(BufferError):
                tenant.free()
            view[:4] = b"mine"
        tenant.free()
        offsets = heap.alloc_many(1, 64, "shared")
        assert int(offsets[0]) == leased.offset
        heap.free_many(offsets)
        stale_view.release()
        heap.check()


def test_renew_and_free_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    with sh.Heap.create(size="16 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        renewed = heap.alloc(64, lease=10)
        freed = heap.alloc(64, lease=10)
        heap.renew_lease(renewed.handle, 1000)  # a Handle works as well as the Block
        freed.free()
        again = heap.alloc(64)  # may reuse the freed block: an old lease must not free it
        later(monkeypatch, 100)
        assert heap.collect(2).leased_blocks == 0
        assert not renewed.freed and not again.freed
        renewed[:4] = b"live"
        assert bytes(renewed[:4]) == b"live"
        heap.renew_lease(again, 5)  # a block without a lease gets one
        later(monkeypatch, 200)
        result = heap.collect(2)
        assert result.leased_blocks == 1  # `again`; `renewed` runs until t+1000
        heap.check()


@pytest.mark.parametrize("lease", [0, -1, float("nan"), float("inf"), True, "10"])
def test_bad_leases(lease: Any) -> None:
    with sh.Heap.create(size="16 MiB") as heap:
        with pytest.raises((ValueError, TypeError)):
            heap.alloc(64, lease=lease)
        blk = heap.alloc(64)
        with pytest.raises((ValueError, TypeError)):
            heap.renew_lease(blk, lease)
        assert heap.lease_deadline(blk) is None
        heap.check()


def test_lease_refusals() -> None:
    with sh.Heap.create(size="16 MiB") as heap:
        agent = heap.spawn("worker")
        with pytest.raises(ValueError, match="shared default"):
            heap.alloc(64, owner=agent, lease=10)
        with pytest.raises(ValueError, match="owner 0"):
            heap.renew_lease(agent.alloc(64), 10)
        blk = heap.alloc(64)
        blk.free()
        with pytest.raises(sh.StaleBlock):
            heap.renew_lease(blk, 10)
        with pytest.raises(TypeError):
            heap.renew_lease(blk.offset, 10)  # type: ignore[arg-type]
        with pytest.raises(sh.PartitionFull, match="block table is full"):
            for _ in range(100_000):
                heap.alloc(16, "comm", lease=60)
        heap.check()
        agent.complete()


def test_orphan_of_a_dead_process(heap_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        before = shared_in_use(heap)
        proc = mp.get_context("spawn").Process(target=lease_then_die, args=(heap_name, 8))
        proc.start()
        proc.join()
        assert proc.exitcode == 0
        assert shared_in_use(heap) == before + 8 * 512  # the orphans
        later(monkeypatch, 120)
        result = heap.collect(2)
        assert result.leased_blocks == 8
        assert shared_in_use(heap) == before
        heap.check()
