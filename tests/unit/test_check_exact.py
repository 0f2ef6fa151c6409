"""check() is exact while threads come and go (release-engineering issue)."""

from __future__ import annotations

import queue
import threading

import swarmheap as sh


def _churn(heap: sh.Heap, inbox: queue.Queue[sh.Block | None], outbox: queue.Queue[sh.Block | None]) -> None:
    """Allocate, hand half to a neighbour, free what the neighbour handed over, exit."""
    for i in range(1500):
        blk = heap.alloc(16 + (i % 40) * 16, ("context", "shared", "comm")[i % 3])
        if i % 2:
            outbox.put(blk)
        else:
            blk.free()
        try:
            theirs = inbox.get_nowait()
        except queue.Empty:
            continue
        if theirs is not None:
            theirs.free()
    outbox.put(None)


def test_check_is_exact_while_threads_come_and_go() -> None:
    with sh.Heap.create(size="32 MiB") as heap:
        for _round in range(6):
            n = 4 + _round % 5  # 4 to 8 threads
            boxes: list[queue.Queue[sh.Block | None]] = [queue.Queue() for _ in range(n)]
            threads = [
                threading.Thread(target=_churn, args=(heap, boxes[k], boxes[(k + 1) % n])) for k in range(n)
            ]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                heap.check()  # concurrently with the churn and the threads' exit flushes
            for t in threads:
                t.join()
                heap.check()  # right after each join: the exit flush may still be running
            for box in boxes:
                while not box.empty():
                    blk = box.get()
                    if blk is not None:
                        blk.free()
            heap.check()
        for part in ("context", "shared", "comm"):
            heap.flush_thread_cache()
            assert heap.stats()["partitions"][part]["in_use"] == 0
