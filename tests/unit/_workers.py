"""Functions run in spawned worker processes (importable by name)."""

from __future__ import annotations

import random
import threading

import swarmheap as sh


def read_write_free(name: str, handle: sh.Handle, own_handle: sh.Handle) -> bytes:
    with sh.Heap.attach(name) as heap:
        blk = heap.resolve(handle)
        seen = bytes(blk[:16])
        blk[:16] = b"written by child"
        heap.resolve(own_handle).free()  # free the parent's other block
        return seen


def churn(name: str, seed: int, rounds: int) -> int:
    """Two threads allocating, writing, verifying and freeing in every partition."""
    errors: list[BaseException] = []
    heap = sh.Heap.attach(name)

    def work(tseed: int) -> None:
        rng = random.Random(tseed)
        live: list[tuple[sh.Block, bytes]] = []
        try:
            for _ in range(rounds):
                if live and rng.random() < 0.5:
                    blk, pattern = live.pop(rng.randrange(len(live)))
                    assert bytes(blk[: len(pattern)]) == pattern
                    blk.free()
                else:
                    part = rng.choice(sh.PARTITIONS)
                    size = rng.randint(1, 3000)
                    try:
                        blk = heap.alloc(size, part)
                    except sh.PartitionFull:
                        continue
                    pattern = bytes([tseed % 251]) * min(size, 32)
                    blk[: len(pattern)] = pattern
                    live.append((blk, pattern))
            for blk, pattern in live:
                assert bytes(blk[: len(pattern)]) == pattern
                blk.free()
        except BaseException as exc:  # reported to the parent
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed * 10 + i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    heap.close()
    if errors:
        raise errors[0]
    return rounds
