"""Generational sweep: reclaim what dead processes, completed agents and
expired leases left behind, looking at young agents often and old ones rarely.

Young (0) and middle-aged (1) agents sit on two queues shared by every
process of the heap (see sh_sweep_* in the C core); old ones (2) are found by
walking the owner table. A young sweep therefore costs O(young agents).
Reclaiming goes through the core's recycle, which checks the agent's
generation under a lock, so two processes sweeping at once reclaim each
agent exactly once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarmheap import channels, kinds, offload_entries, offload_sweep
from swarmheap._core import FIRST_AGENT, process_alive
from swarmheap.errors import AgentStateError, StaleBlock
from swarmheap.index import read_lease

if TYPE_CHECKING:
    from swarmheap.heap import Heap

__all__ = ["CAUSES", "SweepResult", "collect"]

# moved_away: offloaded, then restored in another heap (restore_from); its slot goes
CAUSES = ("dead_process", "completed", "lease", "moved_away")
_TAKE = 4096


@dataclass
class SweepResult:
    """What one sweep reclaimed, by cause."""

    generation: int
    examined: int = 0
    promoted: int = 0
    deferred: int = 0  # reclaimable but pinned by a live view
    thread_caches: int = 0  # dead processes' thread caches given back (sweeps of generation >= 1)
    messages: int = 0  # channel messages dead processes held mid-send or mid-receive, freed (generation >= 1)
    expired_messages: int = 0  # queued channel messages whose lease ran out, dropped from their rings (>= 1)
    leased_blocks: int = 0  # blocks of the shared default whose lease ran out (in bytes["lease"] too)
    pins_dropped: int = 0  # pins (open views) of processes that died (sweeps of generation >= 1)
    # agents' entry blocks a put or delete dropped while another process viewed
    # them (get()), freed now that no view is left (sweeps of generation >= 1)
    viewed_blocks: int = 0
    offloaded: int = 0  # agents the offload policy moved to its store
    nursery_blocks: int = 0  # nursery blocks of frees killed half way (sweeps of generation >= 1)
    agents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))
    # each agent reclaimed: its final dict (kind, cause, figures); the heap
    # fires the recycle hooks from these
    recycled: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reclaimed_agents(self) -> int:
        """Agents reclaimed, over every reason."""
        return sum(self.agents.values())

    @property
    def reclaimed_bytes(self) -> int:
        """Bytes reclaimed, over every reason."""
        return sum(self.bytes.values())

    def merge(self, other: SweepResult) -> None:
        """Add ``other``'s counts and lists to this result's."""
        self.examined += other.examined
        self.promoted += other.promoted
        self.deferred += other.deferred
        self.thread_caches += other.thread_caches
        self.messages += other.messages
        self.expired_messages += other.expired_messages
        self.leased_blocks += other.leased_blocks
        self.pins_dropped += other.pins_dropped
        self.viewed_blocks += other.viewed_blocks
        self.recycled.extend(other.recycled)
        for cause in CAUSES:
            self.agents[cause] += other.agents[cause]
            self.bytes[cause] += other.bytes[cause]


class _Liveness:
    """What a sweep asks once: a process's liveness by (pid, start time), and
    whether a store answers (one that failed is not asked again in it)."""

    def __init__(self, heap: Heap, full: bool) -> None:
        self.heap = heap
        self.known: dict[tuple[int, int], bool] = {}
        self.unreachable: set[str] = set()  # stores that failed this sweep: not asked again in it
        # a full sweep examines every offloaded agent: each store is listed
        # once for the moved ones (offload_sweep.moved_away), not asked per agent
        self.listings: dict[str, set[str]] | None = {} if full else None

    def alive(self, pid: int, start: int) -> bool:
        """Of the pid and start time an agent's brief named: not of the
        agent's slot as it reads now, which may have changed hands since
        (asked of the slot, a live worker's agents were once swept for
        another's death; the verdict is checked under the lock too,
        _owner_set_dead). A pid of 0 is no process's (detached); one /proc
        cannot tell about is kept."""
        if pid == 0:
            return True
        key = (pid, start)
        if key not in self.known:
            self.known[key] = process_alive(pid, start) is not False
        return self.known[key]


def _examine(
    heap: Heap, agent_id: int, generation: int, result: SweepResult, live: _Liveness, now: float
) -> bool:
    """Reclaim the agent if it is reclaimable. True if it survives (still live)."""
    brief = heap._owner_brief(agent_id)  # the full figures only for what is reclaimed
    if brief is None or brief[0] != generation:
        return False  # reclaimed already, by someone
    result.examined += 1
    _, state, pid, start, pins, user_word = brief
    if state == "restoring":
        return True  # a restore half done: the next touch finishes it
    if state == "offloaded":
        if not offload_sweep.moved_away(heap, agent_id, generation, live.unreachable, live.listings):
            deadline = offload_entries.lease_deadline(heap, agent_id, generation)
            if deadline is None or now <= deadline:
                return True
            # its lease ran out in the store: it goes, blob and all, as a live one would
            info = heap._owner_info(agent_id)
            if info is None or info["generation"] != generation:
                return False
            info["kind"] = kinds.kind_of(heap, agent_id, generation, info["kind_id"])
            if not offload_sweep.drop_expired(heap, agent_id, generation, live.unreachable):
                return True
            result.agents["lease"] += 1
            result.recycled.append({**info, "state": "gone", "cause": "lease"})
            return False
        # restored in another heap (restore_from marked its key): the slot goes
        if not offload_sweep.forget_moved(heap, agent_id, generation, live.unreachable):
            return True
        heap._owner_recycle(agent_id, generation)
        result.agents["moved_away"] += 1
        return False
    cause = None
    if state == "completed" and pins == 0:
        cause = "completed"
    elif state in ("live", "completed", "dead") and (
        state == "dead" or (pid != os.getpid() and not live.alive(pid, start))
    ):
        if state != "dead":
            try:
                heap._owner_set_dead(agent_id, generation, state, pid, start)
            except (AgentStateError, StaleBlock):
                return False
        cause = "dead_process"
    elif state == "live":
        lease = read_lease(heap, agent_id, generation, user_word)
        if lease and now > lease:
            cause = "lease"
    if cause is None:
        return state in ("live", "completed")
    if pins:
        result.deferred += 1
        return True
    info = heap._owner_info(agent_id)
    if info is None or info["generation"] != generation:
        return False  # reclaimed meanwhile, by someone
    info["kind"] = kinds.kind_of(
        heap, agent_id, generation, info["kind_id"]
    )  # the index goes with the recycle
    try:
        recycled = heap._owner_recycle(agent_id, generation)
    except StaleBlock:
        return False  # another sweeper got there first
    if not recycled:
        result.deferred += 1
        return True
    _reclaimed(heap, result, info, cause)
    return False


def _reclaimed(heap: Heap, result: SweepResult, info: dict[str, Any], cause: str) -> None:
    """Count an agent the sweep recycled, and keep its final dict for the
    recycle hooks (named by its kind id if ``info`` has no name yet)."""
    if info.get("kind", "?") == "?":
        info["kind"] = kinds.kind_of(heap, info["id"], info["generation"], info["kind_id"])
    result.agents[cause] += 1
    result.bytes[cause] += info["total_bytes"]
    result.recycled.append({**info, "state": "gone", "cause": cause})  # as complete()'s: the state after


def _sweep_queue(heap: Heap, ring: int, result: SweepResult, live: _Liveness, now: float) -> None:
    pending = heap._sweep_pending(ring)
    while pending > 0:
        batch = heap._sweep_take(ring, min(_TAKE, pending))
        if not batch:
            break
        pending -= len(batch)
        for agent_id, generation in batch:
            if _examine(heap, agent_id, generation, result, live, now):
                # survivors move up: to the middle-aged queue, or out to the old
                if ring == 0 and heap._sweep_push(1, agent_id, generation):
                    result.promoted += 1
                elif ring == 1:
                    result.promoted += 1


def collect(heap: Heap, generation: int = 2) -> SweepResult:
    """Sweep generations 0..``generation``; see the module docstring."""
    if generation not in (0, 1, 2):
        raise ValueError(f"generation must be 0, 1 or 2, not {generation!r}")
    result = SweepResult(generation)
    live = _Liveness(heap, full=generation == 2)
    now = time.time()
    if generation >= 1:
        # pins die with their process: drop a dead one's before looking at
        # agents, so that what they pinned is reclaimed in this same sweep
        result.pins_dropped, gone = heap._pins_reclaim_dead()
        for final in gone:  # completed agents that only a dead process's pin kept: recycled with it
            _reclaimed(heap, result, final, "completed")
    _sweep_queue(heap, 0, result, live, now)
    if generation >= 1:
        _sweep_queue(heap, 1, result, live, now)
        # channel messages a dead process's threads held mid-send or
        # mid-receive, then the free blocks they cached, of the shared default
        # heap above all (an agent's come back with the agent anyway)
        result.messages, result.thread_caches = heap._reclaim_dead_threads()
        # nursery blocks a process killed inside a free or a recycle left behind
        result.nursery_blocks = heap._nursery_reclaim()
        # blocks of the shared default whose holder let their lease run out
        blocks, nbytes = heap._lease_reclaim(now)
        result.leased_blocks = blocks
        result.bytes["lease"] += nbytes
        # after the dead's pins went (above): a view a killed process held lets go here
        result.viewed_blocks = heap._views_reclaim()[0]
        # queued channel messages among them: out of their rings too
        result.expired_messages = channels.purge_expired(heap)
    if generation == 2:
        for agent_id in range(FIRST_AGENT, heap._max_owners()):
            agent_gen = heap._owner_generation(agent_id)
            if agent_gen:
                _examine(heap, agent_id, agent_gen, result, live, now)
        if not heap.read_only:
            offload_sweep.forget_stale(heap, live.unreachable)
            assert live.listings is not None  # a full sweep's
            offload_sweep.forget_lost_marks(heap, live.listings, live.unreachable)
    return result
