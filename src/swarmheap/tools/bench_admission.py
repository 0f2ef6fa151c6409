"""The `admission` scenario: a seeded synthetic swarm trace replayed on a
fixed heap (64 MiB: 25.6 MiB of `context`) under three policies.

The trace: three kinds whose peaks are lognormal ("small" median 96 KiB,
"medium" 512 KiB, "large" 1.5 MiB, sigma 0.35); arrivals in bursts (each
round, with probability 0.3 a burst of 10-40 tasks, else 0-3: more than
the heap holds at once, so tasks queue); halfway
through the tasks, "medium" needs 2.5x as much. A task allocates its peak in
16 KiB blocks spread over 4-12 rounds, holds it for a round, and completes.
Tasks not admitted wait in a FIFO queue and try again next round.

Policies: "none" spawns every task at once; "static" is what a user writes
by hand, admitting a task only if the largest peak seen so far of its kind
(of any kind, before its first) fits beside those of the running tasks;
"predicted" is `spawn(kind, admit="raise")`, which reserves the kind's P90
from the heap's usage model; "exact" is no policy a user can have, the
static one told each task's own peak, and shows how full any admission that
holds a task's peak from spawn to completion keeps `context` on this trace
(the tasks grow to their peak: what is held for them and not yet used is the
gap to 100 %). A task whose allocation raises PartitionFull
fails midway. Coverage is the share of tasks whose peak was at or under the
P90 predicted for them at spawn (confident predictions only). Throughput is
in trace time, tasks completed per 100 rounds (the wall-clock rate is shown
too, but it times this replay's Python as much as the policy). Two means
over the rounds read `context`: how full it is (in use / its size, what the
target is read on) and the stats' utilization (in use / held in pages, what
the pages given out waste: the word means that in `swarmheap stats` and in
swarm_density)."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from swarmheap.errors import AdmissionDenied, PartitionFull
from swarmheap.heap import Heap
from swarmheap.tools.scenarios import target

CHUNK = 16 * 1024
KINDS = {"small": 96 * 1024, "medium": 512 * 1024, "large": 1536 * 1024}
SHIFTED = "medium"


@dataclass
class Task:
    index: int
    kind: str
    peak: int
    rounds: int
    shifted: bool
    agent: Any = None
    done: int = 0
    left: int = 0
    predicted: int = 0
    held: int = 0
    blocks: list[Any] = field(default_factory=list)


def trace(n: int, seed: int = 11) -> list[list[Task]]:
    """The arrivals of each round."""
    rng = random.Random(seed)
    rounds: list[list[Task]] = []
    made = 0
    while made < n:
        burst = rng.randint(10, 40) if rng.random() < 0.3 else rng.randint(0, 3)
        arrivals = []
        for _ in range(min(burst, n - made)):
            kind = rng.choice(list(KINDS))
            shifted = kind == SHIFTED and made >= n // 2
            median = KINDS[kind] * (2.5 if shifted else 1.0)
            peak = max(CHUNK, int(rng.lognormvariate(0, 0.35) * median))
            arrivals.append(Task(made, kind, peak, rng.randint(4, 12), shifted))
            made += 1
        rounds.append(arrivals)
    return rounds


def _replay(policy: str, n: int) -> dict[str, Any]:
    heap = Heap.create(size="64 MiB")
    capacity = heap.info()["partitions"]["context"]["size"]
    queue: deque[Task] = deque()
    running: list[Task] = []
    seen_peak: dict[str, int] = {}
    failed = completed = failed_unconfident = 0
    utilization: list[float] = []  # context in use / its size: how full admission keeps it
    packing: list[float] = []  # stats' utilization, in use / held in pages: what the pages waste
    covered: dict[str, list[bool]] = {k: [] for k in KINDS}
    shifted_medium: list[bool] = []
    arrivals = trace(n)
    t0 = time.perf_counter()
    r = 0
    try:
        while r < len(arrivals) or queue or running:
            if r < len(arrivals):
                queue.extend(arrivals[r])
            r += 1
            while queue:  # admit in order; the first that does not fit waits, and those behind it
                task = queue[0]
                if policy in ("static", "exact"):
                    if policy == "static":
                        limit = seen_peak.get(task.kind, max(seen_peak.values(), default=0))
                    else:
                        limit = task.peak  # what no predictor knows: the bound of reserving peaks
                    if sum(t.left for t in running) + limit > capacity:
                        break
                    task.left = limit
                try:
                    if policy == "predicted":
                        prediction = heap.predict(task.kind)
                        task.predicted = (prediction.peak("context", 0.9) or 0) if prediction.confident else 0
                        task.agent = heap.spawn(task.kind, admit="raise")
                    else:
                        task.agent = heap.spawn(task.kind, reserve=False)
                except AdmissionDenied:
                    break
                queue.popleft()
                running.append(task)
            for task in list(running):
                chunks = -(-task.peak // CHUNK)
                want = min(chunks, task.done + -(-chunks // task.rounds))
                try:
                    while task.done < want:
                        task.blocks.append(task.agent.alloc(CHUNK))
                        task.done += 1
                except PartitionFull:
                    failed += 1
                    failed_unconfident += not task.predicted
                    task.agent.complete()
                    running.remove(task)
                    continue
                if task.done >= chunks:
                    task.held += 1
                    if task.held > 1:  # held one round at its peak
                        task.blocks.clear()
                        task.agent.complete()
                        running.remove(task)
                        completed += 1
                        seen_peak[task.kind] = max(seen_peak.get(task.kind, 0), task.peak)
                        if task.predicted:
                            ok = task.peak <= task.predicted
                            (shifted_medium if task.shifted else covered[task.kind]).append(ok)
            context = heap.stats()["partitions"]["context"]
            utilization.append(context["in_use"] / capacity)
            if context["held"]:
                packing.append(context["utilization"])
        elapsed = time.perf_counter() - t0
        heap.check()
    finally:
        heap.close()
    stationary = [ok for k, oks in covered.items() if k != SHIFTED for ok in oks]
    after_shift = shifted_medium[200:] if len(shifted_medium) > 200 else []
    return {
        "failed_midway": failed,
        "failed_unpredicted": failed_unconfident,
        "completed": completed,
        "tasks_per_s": completed / elapsed,
        "rounds": r,
        "tasks_per_100_rounds": 100 * completed / r,
        "utilization": sum(utilization) / len(utilization),
        "packing": sum(packing) / len(packing) if packing else None,
        "coverage_stationary": sum(stationary) / len(stationary) if stationary else None,
        "coverage_after_shift": sum(after_shift) / len(after_shift) if after_shift else None,
        "shifted_tasks": len(shifted_medium),
    }


def admission(quick: bool) -> dict[str, Any]:
    n = 800 if quick else 2400
    results = {policy: _replay(policy, n) for policy in ("none", "static", "predicted", "exact")}

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    rows = [
        [
            policy,
            str(r["failed_midway"]),
            str(r["completed"]),
            f"{r['tasks_per_100_rounds']:.1f}",
            f"{r['tasks_per_s']:,.0f}",
            pct(r["utilization"]),
            pct(r["packing"]),
            pct(r["coverage_stationary"]),
            pct(r["coverage_after_shift"]),
        ]
        for policy, r in results.items()
    ]
    pred, static = results["predicted"], results["static"]
    speedup = pred["tasks_per_100_rounds"] / static["tasks_per_100_rounds"]
    cov = pred["coverage_stationary"] or 0.0
    shift = pred["coverage_after_shift"]
    return {
        "name": "admission",
        "what": f"a seeded swarm trace of {n} tasks under three admission policies, and the exact-peak bound",
        "columns": [
            "policy",
            "failed midway",
            "completed",
            "tasks per 100 rounds",
            "tasks/s (wall)",
            "mean context utilization (in use / size)",
            "mean in use / held (stats' utilization)",
            "P90 coverage (stationary kinds)",
            "P90 coverage after the shift (200 on)",
        ],
        "rows": rows,
        "notes": [
            " ".join((__doc__ or "").split("\n\n")[1].split()),
            " ".join((__doc__ or "").split("\n\n")[2].split()),
        ],
        "targets": [
            target(
                "with prediction, no task fails midway",
                f"{pred['failed_midway']} ({pred['failed_unpredicted']} of them spawned before their kind "
                "had a confident prediction)",
                pred["failed_midway"] == 0,
            ),
            target("throughput >= 1.3x the static policy", f"{speedup:.2f}x", speedup >= 1.3),
            target(
                "mean utilization (context in use / its size) >= 80 %",
                pct(pred["utilization"]),
                pred["utilization"] >= 0.8,
            ),
            target("coverage of stationary kinds in [0.85, 0.95]", pct(cov), 0.85 <= cov <= 0.95),
            target(
                "coverage recovered within 200 agents after the shift",
                pct(shift),
                shift is not None and 0.85 <= shift <= 0.95,
            ),
        ],
        "data": results,
    }
