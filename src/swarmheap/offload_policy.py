"""The watermark offload policy (heap.set_offload_policy): which agents it
takes, and when."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from swarmheap._core import PARTITIONS
from swarmheap.errors import AgentStateError, PartitionFull, StaleBlock, StoreFull, StoreUnavailable

if TYPE_CHECKING:
    from swarmheap.heap import Heap

__all__ = ["idle_agents", "relieve"]

log = logging.getLogger("swarmheap")


def idle_agents(heap: Heap, partition: str, min_idle: float) -> list[tuple[int, int]]:
    """(id, generation) of this process's live, unpinned agents (and the
    heap's: detached ones, SwarmSaver's threads) idle for
    ``min_idle`` seconds and holding some of ``partition``, in the order an
    offload takes them: least recently active first, but those holding a
    page's worth of the partition before the smaller ones. Each offload is a
    store write, and a swarm of small idle agents (a few KB each in shared
    nursery pages) took thousands of them to free what a few large ones hold."""
    active_before = time.time_ns() - int(min_idle * 1e9)
    candidates = heap._offload_candidates(PARTITIONS.index(partition), os.getpid(), active_before)
    return [(agent_id, generation) for _, _, agent_id, generation in sorted(candidates)]


def _fullness(heap: Heap, partition: str) -> float:
    """How full ``partition`` is, as a fraction: of its bytes in use, or of
    its pages taken, whichever is more. A partition whose pages are all
    taken is full, however little of them is in use (an agent's pages with
    free blocks in them are no room for another agent's run): the policy
    read bytes in use alone, and a LangGraph thread's put failed with
    PartitionFull at 68 % in use, every page taken, nothing offloaded."""
    part = heap._partitions()[partition]
    return float(max(part["in_use"] / part["capacity"], part["pages_used"] / max(part["pages_total"], 1)))


def relieve(heap: Heap, policy: Any, at_least: int = 0) -> int:
    """The watermark policy: offload this process's idle, unpinned agents
    (and the heap's) that hold some of the partition, least recently active first (those
    holding a page's worth before smaller ones), while the partition is
    above ``high`` (_fullness), down to ``low``; ``at_least`` of them
    whatever the marks say (an allocation found no room under them). A
    store that fails is logged; the next try is the next full partition or
    sweep."""
    if not at_least and _fullness(heap, policy.partition) <= policy.high:
        return 0
    moved = 0
    for agent_id, generation in idle_agents(heap, policy.partition, policy.min_idle):
        if moved >= at_least and _fullness(heap, policy.partition) <= policy.low:
            break
        try:
            heap._agent_at(agent_id, generation).offload(policy.store)
            moved += 1
        except (StoreUnavailable, StoreFull, PartitionFull) as exc:
            # PartitionFull: no room in `system` for the registry entry that says where the agent went
            log.warning("swarmheap: offload to %s failed, retried later: %s", policy.store.url, exc)
            break
        except (AgentStateError, StaleBlock):
            continue  # pinned or gone meanwhile
    return moved
