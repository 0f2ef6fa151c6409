"""The crash matrix: workers in tight loops of alloc/free, spawn/complete,
put/get and pin/unpin are SIGKILLed at random points, over and over. After
every kill the survivors go on, a sweep reclaims everything the dead worker
held (pins and agents), check() is clean, and the survivors' data verifies.
SWARMHEAP_CRASH_KILLS sets the number of kills (default 100)."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from typing import Any

import swarmheap as sh
from _workers import crash_loop

MODES = ("alloc", "spawn", "putget", "pin")
KILLS = int(os.environ.get("SWARMHEAP_CRASH_KILLS", "100"))


def test_crash_matrix(heap_name: str) -> None:
    ctx = mp.get_context("spawn")
    rng = random.Random(1234)
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        mine = heap.spawn("parent")
        keep = [(mine.alloc(500 + k), bytes([k]) * (500 + k)) for k in range(50)]
        for blk, want in keep:
            blk[: len(want)] = want
        baseline = {p: v["in_use"] for p, v in heap.stats()["partitions"].items()}

        modes: dict[int, str] = {}

        def start(k: int) -> tuple[Any, Any]:
            here, there = ctx.Pipe()
            proc = ctx.Process(
                target=crash_loop, args=(heap_name, MODES[k % len(MODES)], k, there), daemon=True
            )
            proc.start()
            modes[proc.pid] = MODES[k % len(MODES)]
            return proc, here

        workers = [start(k) for k in range(3)]
        kills = 0
        for k in range(3, KILLS + 3):
            victim = rng.randrange(len(workers))
            proc, conn = workers[victim]
            assert conn.poll(60), "a worker never reached its loop"
            msg = conn.recv()
            assert msg == "ready", msg
            # a random point inside the loop (not a synchronisation: any point must do)
            time.sleep(rng.random() * 0.02)
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended on its own, and was reaped by a start()
                pass
            proc.join()
            if proc.exitcode != -signal.SIGKILL:
                said = conn.recv() if conn.poll(0) else "nothing"
                mode = modes[proc.pid]
                raise AssertionError(f"a {mode} worker ended by itself (exit code {proc.exitcode}): {said}")
            kills += 1
            heap.collect(2)
            heap.check()
            infos = [heap._owner_info(a.id) for a in heap.agents()]  # None: completed since listed
            dead = [i["id"] for i in infos if i is not None and i["pid"] == proc.pid]
            assert not dead, f"agents of the killed worker left after a sweep: {dead}"
            for blk, want in keep:
                assert bytes(blk[: len(want)]) == want, "the parent's data changed"
            workers[victim] = start(k)
        for proc, conn in workers:
            conn.send("stop")
            assert conn.poll(60)
            msg = conn.recv()
            if msg == "ready":
                assert conn.poll(60)
                msg = conn.recv()
            assert msg == "ok", f"a surviving worker failed: {msg}"
            proc.join()
        heap.collect(2)
        heap.check()
        assert kills >= KILLS, f"{kills} kills"
        after = {p: v["in_use"] for p, v in heap.stats()["partitions"].items()}
        # Exact but for two windows of a few instructions (docs/design.md, known
        # limits): a kill between taking an agent's new index block (`system`,
        # at most 4 KiB here) or a nursery block (`context`, shared pages: up
        # to the nursery's largest class, 28 KiB since format 16, and the
        # workers' 9 000-byte blocks are nursery blocks of 10 KiB) and
        # recording it loses that block; seen about once in a few hundred kills.
        leaked = {p: after[p] - baseline[p] for p in after}
        assert leaked["shared"] == leaked["comm"] == 0, f"bytes of killed workers not reclaimed: {leaked}"
        windows = 1 + KILLS // 100
        assert 0 <= leaked["system"] <= 4096 * windows, f"leaked past the windows' bound: {leaked}"
        nursery_block = heap.info()["nursery_limit"]
        assert 0 <= leaked["context"] <= nursery_block * windows, f"leaked past the windows' bound: {leaked}"
        assert [a.id for a in heap.agents()] == [mine.id], f"agents left: {heap.agents()}"
        mine.complete()
