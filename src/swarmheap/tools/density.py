"""The `swarm_density` workload: how many agents of a shape fit a 1 GiB heap
at default settings, how much of the `context` pages they hold is in use,
and the bytes held per agent against the peer a user would write by hand, a
dict of bytearrays per agent (sized with tracemalloc)."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable
from typing import Any

from swarmheap.errors import PartitionFull, TooManyAgents
from swarmheap.heap import Heap

HEAP_SIZE = 1 << 30
SMALL_SIZES = (24, 64, 200, 512, 1500, 4000)


def _tiny(rng: random.Random) -> tuple[list[int], int]:
    return [rng.randint(200, 600) for _ in range(5)], 0


def _small(rng: random.Random) -> tuple[list[int], int]:
    return [rng.choice(SMALL_SIZES) for _ in range(10)], 2000


CHATTY_SIZES = (64, 100, 200, 300, 500, 700, 1000, 1500)


def _chatty(rng: random.Random) -> tuple[list[int], int]:
    return [rng.choice(CHATTY_SIZES) for _ in range(48)], 0


def _medium(rng: random.Random) -> tuple[list[int], int]:
    return [65536] * 2 + [16384] * 4 + [4096] * 16, 0


def _medium_random(rng: random.Random) -> tuple[list[int], int]:
    sizes: list[int] = []
    while sum(sizes) < 256 * 1024:
        sizes.append(rng.randint(1024, 64 * 1024))
    return sizes, 0


# name -> (what, blocks and prompt bytes of one agent, targets)
SHAPES: dict[str, tuple[str, Callable[[random.Random], tuple[list[int], int]], dict[str, float]]] = {
    "tiny": ("5 blocks of 200-600 B (about 2 KB)", _tiny, {"utilization": 0.8}),
    "small": (
        "10 blocks from {24, 64, 200, 512, 1500, 4000} B and a 2 000 B put (about 12 KB)",
        _small,
        {"agents": 25000, "utilization": 0.8},
    ),
    "chatty": (
        "48 blocks from {64, 100, 200, 300, 500, 700, 1000, 1500} B (about 26 KB; no target: shown as is)",
        _chatty,
        {},
    ),
    "medium": ("256 KiB: 2 x 64 KiB, 4 x 16 KiB, 16 x 4 KiB", _medium, {"utilization": 0.9}),
    "medium_random": (
        "about 256 KB in blocks of 1-64 KiB, sizes uniform (no target: shown as is)",
        _medium_random,
        {},
    ),
}


def _fill(shape: Callable[[random.Random], tuple[list[int], int]]) -> dict[str, Any]:
    rng = random.Random(7)
    with Heap.create(size=HEAP_SIZE) as heap:
        agents = 0
        data = 0
        stopped = ""
        try:
            while True:
                sizes, prompt = shape(rng)
                agent = heap.spawn("density")
                for size in sizes:
                    agent.alloc(size)
                if prompt:
                    agent.put("prompt", b"p" * prompt)
                agents += 1
                data += sum(sizes) + prompt
        except (PartitionFull, TooManyAgents) as exc:
            stopped = type(exc).__name__
        context = heap.stats()["partitions"]["context"]
        info = heap.info()
        return {
            "agents": agents,
            "stopped_by": stopped,
            "utilization": context["utilization"],
            "in_use": context["in_use"],
            "held": context["held"],
            "held_per_agent": context["held"] / max(agents, 1),
            "data_per_agent": data / max(agents, 1),
            "max_owners": info["max_owners"],
            "metadata_percent": 100 * info["metadata_bytes"] / info["size"],
        }


def _dict_per_agent(shape: Callable[[random.Random], tuple[list[int], int]], agents: int = 500) -> float:
    rng = random.Random(7)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        swarm = []
        for _ in range(agents):
            sizes, prompt = shape(rng)
            state: dict[str, bytearray] = {f"b{k}": bytearray(size) for k, size in enumerate(sizes)}
            if prompt:
                state["prompt"] = bytearray(b"p" * prompt)
            swarm.append(state)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return used / agents


def run(quick: bool = False) -> dict[str, Any]:
    shapes = []
    for name, (what, shape, targets) in SHAPES.items():
        if quick and name in ("medium_random", "chatty"):
            continue
        measured = _fill(shape)
        measured.update(name=name, what=what, dict_per_agent=_dict_per_agent(shape, 100 if quick else 500))
        checks = []
        if "agents" in targets:
            checks.append((f">= {targets['agents']:,.0f} agents", measured["agents"] >= targets["agents"]))
        if "utilization" in targets:
            checks.append(
                (
                    f"context utilization >= {targets['utilization']:.0%}",
                    measured["utilization"] >= targets["utilization"],
                )
            )
        measured["targets"] = [{"text": text, "met": met} for text, met in checks]
        shapes.append(measured)
    meta = shapes[0]["metadata_percent"]
    return {
        "heap": "1 GiB, default settings",
        "shapes": shapes,
        "metadata_percent": meta,
        "metadata_met": meta <= 1.0,
        "max_owners": shapes[0]["max_owners"],
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows: shape, agents, utilization, held per agent, dict per agent, targets."""
    out: list[tuple[str, ...]] = []
    for s in result["shapes"]:
        targets = "; ".join(f"{t['text']}: {'met' if t['met'] else 'NOT met'}" for t in s["targets"]) or "-"
        out.append(
            (
                s["name"],
                f"{s['agents']:,}",
                f"{s['utilization']:.1%}",
                f"{s['held_per_agent'] / 1024:.1f} KiB",
                f"{s['dict_per_agent'] / 1024:.1f} KiB",
                targets,
            )
        )
    return out
