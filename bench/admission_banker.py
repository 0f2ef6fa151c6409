"""What the admission scenario's 80 % target would take: a simulation, not
the product. It replays the `admission` scenario's trace (the same seed,
tasks and 16 KiB chunks) with a banker's-algorithm policy that swarmheap
does not have: a task is admitted while the state stays safe (some order
lets every running task reach its claim, the true P90 of its kind's
distribution, with the room free now plus what the tasks before it hold)
and the claims of the running tasks add up to at most `overcommit` times
the room (a safe state alone admits every task that fits by itself),
and each chunk is granted only if the state stays safe after it, else the
task waits a round. A task that outgrows its claim raises it (to the
kind's P99.9); when that leaves the state unsafe, the task furthest over
its first claim is preempted (its memory given back, requeued first, as an
offload and restore would). Run it from a checkout:

    PYTHONPATH=src python bench/admission_banker.py [limit] [z of the claim] [overcommit]

It prints the mean fill of `context` (in use / its size), tasks per 100
rounds and the preemptions; docs/design.md records what it measured."""

from __future__ import annotations

import math
import sys
from collections import deque

from swarmheap.tools.bench_admission import CHUNK, KINDS, Task, trace

CONTEXT = int(64 * 2**20 * 0.4)  # the scenario's 64 MiB heap: `context` is 40 %
SIGMA = 0.35


def median(task: Task) -> float:
    return KINDS[task.kind] * (2.5 if task.shifted else 1.0)


def chunks_of(nbytes: float) -> int:
    """A claim in whole chunks: what a task takes comes in chunks."""
    return -(-int(nbytes) // CHUNK) * CHUNK


def safe(claims: list[tuple[int, int]], free: int) -> bool:
    """Some order lets every (still to grow, held) task finish: in order of
    what is still to grow, the room free grows by each finished task's hold."""
    for left, held in sorted(claims):
        if left > free:
            return False
        free += held
    return True


def replay(limit: float, z: float, overcommit: float, n: int = 2400) -> dict[str, float]:
    bound = int(CONTEXT * limit)
    arrivals = trace(n)
    claim: dict[int, int] = {}
    held: dict[int, int] = {}
    queue: deque[Task] = deque()
    running: list[Task] = []

    def state() -> list[tuple[int, int]]:
        return [(max(claim[t.index] - held[t.index], 0), held[t.index]) for t in running]

    for burst in arrivals:
        for task in burst:
            claim[task.index], held[task.index] = chunks_of(median(task) * math.exp(z * SIGMA)), 0
    used = rounds = completed = preempted = 0
    fill: list[float] = []
    while rounds < len(arrivals) or queue or running:
        if rounds < len(arrivals):
            queue.extend(arrivals[rounds])
        rounds += 1
        while queue:
            task = queue[0]
            left = max(claim[task.index] - held[task.index], 0)
            claimed = sum(claim[t.index] for t in running) + claim[task.index]
            if claimed > overcommit * bound or not safe(
                [*state(), (left, held[task.index])], bound - used - held[task.index]
            ):
                break
            queue.popleft()
            running.append(task)
            used += held[task.index]
        for task in sorted(running, key=lambda t: claim[t.index] - held[t.index]):
            chunks = -(-task.peak // CHUNK)
            want = min(chunks, task.done + -(-chunks // task.rounds))
            while task.done < want:
                if held[task.index] + CHUNK > claim[task.index]:  # outgrew its claim
                    outgrown = chunks_of(median(task) * math.exp(3 * SIGMA))
                    claim[task.index] = max(held[task.index] + CHUNK, outgrown)
                if used + CHUNK > bound:
                    break
                held[task.index] += CHUNK
                used += CHUNK
                if not safe(state(), bound - used):
                    held[task.index] -= CHUNK
                    used -= CHUNK
                    break
                task.done += 1
            if task.done >= chunks:
                task.held += 1
                if task.held > 1:
                    running.remove(task)
                    used -= held[task.index]
                    completed += 1
        if running and not safe(state(), bound - used):
            victim = max(running, key=lambda t: claim[t.index] / median(t))
            running.remove(victim)
            used -= held[victim.index]
            queue.appendleft(victim)
            preempted += 1
        fill.append(used / CONTEXT)
    return {
        "fill": sum(fill) / len(fill),
        "tasks_per_100_rounds": 100 * completed / rounds,
        "completed": completed,
        "preempted": preempted,
    }


if __name__ == "__main__":
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else 0.9
    z = float(sys.argv[2]) if len(sys.argv) > 2 else 1.2816  # the P90
    overcommit = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    got = replay(limit, z, overcommit)
    print(
        f"limit {limit}, claims at z={z}, claims up to {overcommit}x the room: "
        f"context {got['fill']:.1%} full on average, "
        f"{got['tasks_per_100_rounds']:.1f} tasks per 100 rounds, {got['completed']:.0f} completed, "
        f"{got['preempted']:.0f} preempted"
    )
