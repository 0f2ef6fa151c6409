"""Admission control and reservations, from the usage model (predict.py).

A confident prediction reserves, for an agent at its spawn, its kind's P90
peak in `context` (under an admission mode, a kind with samples but not yet
confident reserves the largest peak it saw). The reservations of all processes are one counter in the
arena, taken with one compare-and-swap (sh_owner_reserve), so ten spawns at
once are not all admitted into room for one; the agent's reservation goes
back, whole, when the C core recycles or offloads it (complete, sweep,
offload). A reservation is a claim on room, not memory taken: the stats
show it next to what is in use.

Modes, for ``spawn(kind, admit=...)`` or ``heap.set_admission(mode)``:
- None: admit every agent (a confident prediction still reserves);
- "raise": AdmissionDenied unless the predicted peak fits under the limit (a
  fraction of `context`'s capacity, default 0.9) with the bytes in pages
  and what is reserved;
- "wait": sleep until it fits (on a futex word the core bumps whenever any
  process's agent gives memory back), or raise AdmissionTimeout (an
  AdmissionDenied and a TimeoutError) once ``timeout`` seconds passed;
- "offload": make the room by offloading this process's idle agents (to
  the offload policy's store, or the heap's default store), else
  AdmissionDenied.
Reservations, and so admission, cover `context`, where agents live; the
model predicts every partition (Prediction.peak).
"""

from __future__ import annotations

import math
import struct
import time
from typing import TYPE_CHECKING, Optional

from swarmheap import offload_policy
from swarmheap.errors import (
    AdmissionDenied,
    AdmissionTimeout,
    AgentStateError,
    PartitionFull,
    StaleBlock,
    StoreFull,
    StoreUnavailable,
)
from swarmheap.registry import REGISTRY_GENERATION, REGISTRY_OWNER, Registry

if TYPE_CHECKING:
    from swarmheap.heap import Heap
    from swarmheap.predict import Prediction

__all__ = ["DEFAULT_LIMIT", "MODES", "Default", "admit", "default", "need_of", "reserved", "set_default"]

MODES = (None, "raise", "wait", "offload")
DEFAULT_LIMIT = 0.9

# The heap's default mode, limit and wait timeout (set_admission), for
# every process's spawns: a registry entry, its mode's place in MODES, the
# limit and the timeout (NaN: none; an entry written before the timeout
# was kept is the first two). A process keeps what it read with the
# registry's root word it read it under: a spawn costs one load of that
# word while no process writes the registry, and a read of the entry after
# any write.
_DEFAULT_NAME = "admission/default"
_DEFAULT = struct.Struct("<Bdd")
_DEFAULT_BEFORE_TIMEOUT = struct.Struct("<Bd")

Default = tuple[Optional[str], float, Optional[float]]  # Optional: 3.9 evaluates the alias


def set_default(heap: Heap, mode: str | None, limit: float, timeout: float | None = None) -> None:
    wait = math.nan if timeout is None else timeout
    Registry(heap).put(_DEFAULT_NAME, _DEFAULT.pack(MODES.index(mode), limit, wait))


def _decode_default(data: bytes | None) -> Default:
    value: Default = (None, DEFAULT_LIMIT, None)
    if data is None:
        return value
    if len(data) == _DEFAULT.size:
        index, limit, wait = _DEFAULT.unpack(data)
    elif len(data) == _DEFAULT_BEFORE_TIMEOUT.size:
        (index, limit), wait = _DEFAULT_BEFORE_TIMEOUT.unpack(data), math.nan
    else:
        return value
    timeout = None if math.isnan(wait) else wait
    if (
        index < len(MODES)
        and math.isfinite(limit)
        and 0 < limit <= 1
        and (timeout is None or 0 <= timeout < math.inf)
    ):
        value = (MODES[index], limit, timeout)
    return value


def default(heap: Heap) -> Default:
    """The heap's default (mode, limit, timeout): (None, DEFAULT_LIMIT, None)
    until a process sets one, and for an entry that does not decode."""
    word = heap._owner_word(REGISTRY_OWNER, REGISTRY_GENERATION)
    seen = heap._admission_seen
    if seen is not None and seen[0] == word:
        return seen[1]
    value = _decode_default(Registry(heap).get(_DEFAULT_NAME))
    heap._admission_seen = (word, value)  # the word from before the read: a write since is seen next time
    return value


def reserved(heap: Heap) -> dict[str, int]:
    """Bytes reserved per partition by admitted agents."""
    return {"context": heap._reserved(), "shared": 0, "comm": 0, "system": 0}


def admit(
    heap: Heap,
    agent_id: int,
    generation: int,
    prediction: Prediction,
    mode: str | None,
    limit: float,
    timeout: float | None = None,
) -> None:
    """Reserve the agent's predicted share; in modes "raise", "wait" and
    "offload", only if it fits."""
    need = need_of(prediction)
    if not need:
        return
    bound = int(limit * heap._capacity["context"]) if mode is not None else 0
    if heap._owner_reserve(agent_id, generation, need, bound):
        return
    if mode == "wait":
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = heap._room_seq()  # read before the try: a release in between moves it
            if heap._owner_reserve(agent_id, generation, need, bound):
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _refusal(
                    AdmissionTimeout,
                    heap,
                    bound,
                    need,
                    prediction,
                    f"a {prediction.kind!r} agent (predicted {need} bytes of context at P90) did not fit "
                    f"within {timeout} s",
                )
            heap._room_wait(seen, -1 if left is None else int(left * 1e9), agent_id, generation)
    tried = ""
    if mode == "offload":
        moved, freed = _make_room(heap, need, agent_id)
        if moved and heap._owner_reserve(agent_id, generation, need, bound):
            return
        tried = (
            f"; offloading freed {freed} bytes in {moved} idle agent(s) of this process"
            if moved
            else "; this process had no idle agent holding context to offload"
        )
    raise _refusal(
        AdmissionDenied,
        heap,
        bound,
        need,
        prediction,
        f"a {prediction.kind!r} agent is predicted to need {need} bytes of context at P90 "
        f"({prediction.samples} samples){tried}",
    )


def need_of(prediction: Prediction) -> int:
    """The bytes an agent of the predicted kind reserves: its P90 peak in
    `context` once confident, the largest it saw before; in whole KiB."""
    peak = prediction.peak("context", 0.9 if prediction.confident else 1.0)
    return 0 if peak is None else -(-peak // 1024) * 1024


def _refusal(
    cls: type[AdmissionDenied], heap: Heap, bound: int, need: int, prediction: Prediction, what: str
) -> AdmissionDenied:
    """The error, with the bytes of `context` free under the admission bound
    (less pages in use and reservations) and how many more were needed."""
    in_pages = heap._partitions()["context"]["pages_used"] * heap.page_size
    free = int(max(bound - heap._reserved() - in_pages, 0))
    return cls(
        f"{what}; {free} bytes are free under the admission limit, less reservations",
        prediction=prediction,
        short={"context": max(need - free, 0)},
        free={"context": free},
    )


def _make_room(heap: Heap, need: int, admitting: int) -> tuple[int, int]:
    """Offload this process's idle agents until ``need`` bytes came back, as
    the offload policy picks them (those holding a page or more of
    `context` first, least recently active first): how many moved, and the
    bytes they held."""
    store = heap.store
    freed = moved = 0
    for agent_id, generation in offload_policy.idle_agents(heap, "context", 0.0):
        if freed >= need:
            break
        if agent_id == admitting:
            continue
        try:
            freed += heap._agent_at(agent_id, generation).offload(store)["total_bytes"]
            moved += 1
        except (AgentStateError, StaleBlock, StoreUnavailable, StoreFull):
            continue
        except PartitionFull:
            break  # no room in `system` for the registry entry an offload writes: none will go
    return moved, freed
