"""Admission control and reservations, from the usage model (predict.py).

A confident prediction reserves, for an agent at its spawn, its kind's P90
peak in each partition. Reservations are shared by every process (a
registry entry, updated by compare-and-swap) so that ten spawns at once are
not all admitted into room for one; an agent's reservation goes back whole
when it completes, is offloaded, or is swept. A reservation is a claim on
room, not memory taken: the stats show it next to what is in use.

Modes, for ``spawn(kind, admit=...)`` or ``heap.set_admission(mode)``:
- None: admit every agent (reserve all the same, when the prediction is confident);
- "raise": AdmissionDenied if the predicted peak does not fit under the
  partition's limit (a fraction of capacity, default 0.9) with what is in
  use and reserved;
- "offload": make the room by offloading this process's idle agents (the
  offload policy's store, or the heap's default store), else AdmissionDenied.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from swarmheap._core import PARTITIONS
from swarmheap.errors import AdmissionDenied, AgentStateError, StaleBlock, StoreFull, StoreUnavailable
from swarmheap.offload import Registry

if TYPE_CHECKING:
    from swarmheap.heap import Heap
    from swarmheap.predict import Prediction

__all__ = ["MODES", "admit", "release", "reserved"]

MODES = (None, "raise", "offload")
_NAME = "reservations"
_ENTRY = struct.Struct("<II" + "Q" * len(PARTITIONS))  # agent id, generation, bytes per partition

Table = dict[tuple[int, int], tuple[int, ...]]


def _decode(data: bytes | None) -> Table:
    if not data or len(data) % _ENTRY.size:
        return {}
    out: Table = {}
    for i in range(0, len(data), _ENTRY.size):
        agent_id, generation, *need = _ENTRY.unpack_from(data, i)
        out[(agent_id, generation)] = tuple(need)
    return out


def _encode(table: Table) -> bytes:
    return b"".join(_ENTRY.pack(a, g, *need) for (a, g), need in table.items())


def reserved(heap: Heap) -> dict[str, int]:
    """Bytes reserved per partition by admitted agents."""
    table = _decode(Registry(heap).get_ref(_NAME)[1])
    return {p: sum(need[i] for need in table.values()) for i, p in enumerate(PARTITIONS)}


def _update(heap: Heap, change: object) -> bool:
    registry = Registry(heap)
    while True:
        ref, data = registry.get_ref(_NAME)
        table = _decode(data)
        result = change(table)  # type: ignore[operator]
        if result is False:
            return False
        if registry.swap(_NAME, ref, _encode(table)):
            return True


def _room(heap: Heap, need: tuple[int, ...], table: Table, limit: float) -> dict[str, int]:
    """Bytes short per partition (empty if it fits)."""
    parts = heap.stats()["partitions"]
    short = {}
    for i, p in enumerate(PARTITIONS):
        if not need[i]:
            continue
        taken = parts[p]["in_use"] + sum(n[i] for n in table.values())
        free = int(limit * parts[p]["capacity"]) - taken
        if need[i] > free:
            short[p] = need[i] - free
    return short


def admit(
    heap: Heap, agent_id: int, generation: int, prediction: Prediction, mode: str | None, limit: float
) -> None:
    """Reserve the agent's predicted share; in mode "raise"/"offload", only if it fits."""
    need = tuple(prediction.peak(p, 0.9) for p in PARTITIONS)
    if not any(need):
        return
    short: dict[str, int] = {}

    def change(table: Table) -> bool:
        short.clear()
        if mode is not None:
            short.update(_room(heap, need, table, limit))
            if short:
                return False
        table[(agent_id, generation)] = need
        return True

    for attempt in range(2):
        if _update(heap, change):
            return
        if mode == "offload" and attempt == 0 and _make_room(heap, short):
            continue
        raise AdmissionDenied(
            f"a {prediction.kind!r} agent is predicted to need {dict(zip(PARTITIONS, need))} bytes at P90 "
            f"({prediction.samples} samples); short by {short} under {limit:.0%} of capacity",
            prediction=prediction,
            short=short,
        )


def _make_room(heap: Heap, short: dict[str, int]) -> bool:
    """Offload this process's idle agents, least recently active first, until
    the shortfall is covered; True if anything moved."""
    import os

    store = heap.store
    candidates = []
    for agent in heap.agents():
        info = heap._owner_info(agent.id)
        if info and info["state"] == "live" and info["pid"] == os.getpid() and not info["pins"]:
            candidates.append((info["last_active_ns"], agent))
    freed = 0
    need = sum(short.values())
    for _, agent in sorted(candidates, key=lambda c: c[0]):
        if freed >= need:
            break
        try:
            freed += agent.offload(store)["total_bytes"]
        except (AgentStateError, StaleBlock, StoreUnavailable, StoreFull):
            continue
    return freed > 0


def release(heap: Heap, agent_id: int, generation: int) -> None:
    """The agent's reservation back, whole (a no-op if it had none)."""
    if heap.read_only or heap.closed:
        return

    def change(table: Table) -> bool:
        return table.pop((agent_id, generation), None) is not None

    _update(heap, change)


def drop_stale(heap: Heap) -> int:
    """Reservations of agents that are no longer live (completed, swept,
    offloaded in another process): a full sweep gives them back. Returns how many."""
    dropped: list[tuple[int, ...]] = []

    def change(table: Table) -> bool:
        dropped.clear()
        for key in list(table):
            agent_id, generation = key
            if heap._owner_generation(agent_id) != generation or heap._owner_state(agent_id) != "live":
                dropped.append(table.pop(key))
        return bool(dropped)

    _update(heap, change)
    return len(dropped)
