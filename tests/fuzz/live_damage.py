"""Damage a heap while a process has it attached and is using it.

The atheris target (arena_target.py) damages a closed heap and attaches it
after: attach validates the header, and what it copied into the process is
never the arena's again. Here the writes land after attach, into the live
mapping, between the process's own allocations and its next calls, so every
value the process reads again from the arena (its header included) may be
damaged. Each round is a seed: it forks a child that attaches the seed heap
(arena_target.build_seed: what a killed swarm leaves), allocates, spawns an
agent, writes 1 to 8 random bytes or words into the metadata tables (every
region gets its share), then checks, sweeps, allocates in every partition
(each block checked against its partition), frees, runs agents (entries,
a snapshot restored, complete), restores an agent offloaded to SQLite
before the damage, reads a LangGraph thread checkpointed before it (with
the langgraph extra), lists agents and channels, and uses the channels.
Named errors are answers; a crash, a hang over 5 s, another exception or a
block outside its partition fails the round.

    python tests/fuzz/live_damage.py [rounds] [first seed]

A failed round prints its seed; `live_damage.py 1 SEED` replays it.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import struct
import sys
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from arena_target import _exercise_channels, alloc_everywhere, build_seed, write_segment

import swarmheap as sh

ROUND_SECONDS = 5


def _damage(heap: sh.Heap, regions: dict[str, tuple[int, int]], rnd: random.Random) -> None:
    """Writes into the live mapping, through a view of one block of it."""
    anchor = heap.alloc(16, "shared")
    holder = ctypes.c_char.from_buffer(memoryview(anchor))  # kept: the address stays valid
    base = ctypes.addressof(holder) - anchor.offset
    spans = [span for span in regions.values() if span[1] > span[0]]
    for _ in range(rnd.randint(1, 8)):
        lo, hi = rnd.choice(spans)
        at = rnd.randrange(lo, hi)
        value = (0x7FFFFFFF, 0xFFFFFFFF, rnd.randrange(512), rnd.getrandbits(32))[rnd.randrange(4)]
        width = 4 if rnd.random() < 0.5 and at + 4 <= hi else 1
        ctypes.memmove(base + at, struct.pack("<I", value)[:width], width)


def _saver_with_a_checkpoint(heap: sh.Heap | None) -> Any:
    """A SwarmSaver holding one checkpoint of thread "t"; None without
    langgraph (or without a heap: the imports alone)."""
    try:
        from langgraph.checkpoint.base import empty_checkpoint

        from swarmheap.langgraph import SwarmSaver
    except ImportError:
        return None
    if heap is None:
        return None
    saver = SwarmSaver(heap)
    checkpoint = empty_checkpoint()
    version = saver.get_next_version(None, None)
    checkpoint["channel_values"] = {"messages": ["hello"]}
    checkpoint["channel_versions"] = {"messages": version}
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    saver.put(config, checkpoint, {"step": 1}, {"messages": version})
    return saver


def _answers(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except sh.SwarmHeapError:
        pass  # HeapCorrupt above all: any named error is an answer


def _round(image: bytes, regions: dict[str, tuple[int, int]], seed: int) -> None:
    rnd = random.Random(seed)
    name = f"shlive_{os.getpid()}"
    path = write_segment(name, image)
    signal.alarm(ROUND_SECONDS)
    try:
        heap = sh.Heap.attach(name)
    finally:
        os.unlink(path)  # the mapping outlives the name: nothing is left behind
    kept = alloc_everywhere(heap)  # blocks the damage finds in use
    agent = heap.spawn("live")
    agent.put("a", b"x" * 500)
    agent.alloc(64)
    store_path = f"/tmp/shlive_{os.getpid()}.db"
    store = sh.SQLiteStore(store_path)
    try:
        _damage_and_use(heap, agent, kept, store, regions, rnd)
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(store_path + suffix):
                os.unlink(store_path + suffix)


def _damage_and_use(
    heap: sh.Heap,
    agent: sh.Agent,
    kept: list[sh.Block],
    store: Any,
    regions: dict[str, tuple[int, int]],
    rnd: random.Random,
) -> None:
    cold = heap.spawn("cold")
    cold.put("c", b"z" * 3000)
    cold.offload(store)
    saver = _saver_with_a_checkpoint(heap)
    _damage(heap, regions, rnd)

    def the_cold_agent_and_the_thread() -> None:
        try:
            bytes(cold.get("c"))  # restored from the store through the damaged registry
        finally:
            if saver is not None:
                if saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}) is not None:
                    list(saver.list(None))

    _answers(the_cold_agent_and_the_thread)
    for step in (heap.check, heap.stats, heap.collect, heap.info, heap.check):
        _answers(step)
    kept += alloc_everywhere(heap)
    for blk in kept:
        _answers(blk.free)

    def an_agents_life() -> None:
        other = heap.spawn("fuzz")
        other.put("k", b"v" * 100)
        other.put("big", b"w" * 70_000)  # a run of pages of its own
        bytes(other.get("k"))
        twin = heap.restore(other.snapshot(codec="none"))  # the index read back, entries copied
        twin.complete()
        other.complete()

    def the_listings() -> None:
        heap.agents()
        heap.channels()

    def the_first_agent_again() -> None:
        agent.put("a", b"y" * 300)
        agent.complete()

    _answers(an_agents_life)
    _answers(the_listings)
    _answers(the_first_agent_again)
    _exercise_channels(heap)
    _answers(heap.check)


def run(rounds: int, first_seed: int) -> list[str]:
    """Each failed round's seed and what happened."""
    image, regions = build_seed()
    _saver_with_a_checkpoint(None)  # its imports made once, here, not in every forked round
    failures = []
    for seed in range(first_seed, first_seed + rounds):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _round(image, regions, seed)
            except sh.AttachError:
                pass  # attach refused what it saw (it validates the header)
            except BaseException:
                traceback.print_exc()
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            failures.append(f"seed {seed}: {'hang' if sig == signal.SIGALRM else signal.Signals(sig).name}")
        elif os.WEXITSTATUS(status):
            failures.append(f"seed {seed}: an exception (above)")
    return failures


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    failed = run(rounds, first)
    for line in failed:
        print(line)
    print(f"live damage: {rounds} rounds from seed {first}, {len(failed)} failures")
    sys.exit(1 if failed else 0)
