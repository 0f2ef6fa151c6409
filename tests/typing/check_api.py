"""Checked by mypy --strict (not run): the public API's types as a user sees them."""

from __future__ import annotations

import numpy as np

import swarmheap as sh


def use_api() -> int:
    with sh.Heap.create(
        "typed", size="16 MiB", ratios={"context": 0.4, "shared": 0.3, "comm": 0.2, "system": 0.1}
    ) as heap:
        blk: sh.Block = heap.alloc(64, "shared")
        handle: sh.Handle = blk.handle
        again: sh.Block = heap.resolve(handle)
        offsets = heap.alloc_many(10, 32)
        heap.free_many(offsets)
        arr = np.frombuffer(memoryview(again), np.uint8)
        heap.check()
        stats = heap.stats()
        blk.free()
        return int(arr.size) + len(stats["partitions"]) + sh.parse_size("1 GiB")
