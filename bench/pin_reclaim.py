"""How long one reclaim of dead processes' pins takes while live processes
hold many pins (the owner lock is held for part of it, and every spawn, pin
and recycle of the heap waits for that part). Run it from a checkout:

    PYTHONPATH=src python bench/pin_reclaim.py [processes] [agents each]

Each worker process attaches a named heap and holds a view of each of its
agents' entries (a pin of each agent); the parent times the reclaim with all
of them alive (min and median of 20 calls), then kills them and reclaims
their pins. docs/design.md records what it measured."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from typing import Any

from swarmheap import Heap

NAME = f"pin-reclaim-{os.getpid()}"


def _hold_views(ids: list[int], ready: Any, done: Any) -> None:
    heap = Heap.attach(NAME)
    views = [heap.agent(i).get("entry") for i in ids]
    ready.set()
    done.wait()
    del views
    heap.close()


def main(processes: int, per_process: int) -> None:
    heap = Heap.create(NAME, size="256 MiB")
    try:
        agents = [heap.spawn("held") for _ in range(processes * per_process)]
        for agent in agents:
            agent.put("entry", b"x" * 32)
        ctx = mp.get_context("fork")
        done, workers, readies = ctx.Event(), [], []
        for p in range(processes):
            ready = ctx.Event()
            ids = [a.id for a in agents[p * per_process : (p + 1) * per_process]]
            worker = ctx.Process(target=_hold_views, args=(ids, ready, done))
            worker.start()
            workers.append(worker)
            readies.append(ready)
        for ready in readies:
            ready.wait()
        times = []
        for _ in range(20):
            start = time.perf_counter()
            dropped, _ = heap._pins_reclaim_dead()
            times.append(time.perf_counter() - start)
            assert dropped == 0, "a live process's pins were dropped"
        times.sort()
        print(
            f"{processes} live processes x {per_process} pins: reclaim min {times[0] * 1e6:.0f} us, "
            f"median {times[len(times) // 2] * 1e6:.0f} us"
        )
        for worker in workers:
            worker.kill()
            worker.join()
        start = time.perf_counter()
        dropped, _ = heap._pins_reclaim_dead()
        print(f"after killing them: {dropped} pins dropped in {(time.perf_counter() - start) * 1e6:.0f} us")
        heap.check()
    finally:
        heap.unlink()
        heap.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4, int(sys.argv[2]) if len(sys.argv) > 2 else 250)
