"""Kind names by kind id, for agents that have no index to hold theirs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmheap import index, index_format
from swarmheap.errors import PartitionFull
from swarmheap.registry import Registry

if TYPE_CHECKING:
    from swarmheap.heap import Heap

__all__ = ["kind_of", "name_kind"]

# An agent's index holds its kind's name, but an agent gets an index only
# with its first entry (or a lease): spawn does not write one, which saves
# an index block and a swap per agent. The core keeps each owner's kind id
# (crc32 of the name); the registry maps ids to names, written once per kind.


def name_kind(heap: Heap, kind: str) -> None:
    """Make ``kind``'s name findable by its id from any process (once per
    process and kind). With no room in `system` for the registry's copy,
    this process knows the name and the next spawn of the kind tries
    again: a spawn does not fail for it."""
    kid = index_format.kind_id(kind)
    if heap._kind_names.get(kid) == kind and kid not in heap._kinds_unpublished:
        return
    heap._kind_names[kid] = kind
    registry = Registry(heap)
    key = f"kind/{kid}"
    try:
        if registry.get(key) is None:
            registry.swap(key, None, kind.encode())  # lost to another process naming it: the same name
    except PartitionFull:
        heap._kinds_unpublished.add(kid)
        return
    heap._kinds_unpublished.discard(kid)


def kind_of(heap: Heap, agent_id: int, generation: int, kid: int | None = None) -> str:
    """An agent's kind name: from its index, else by its kind id ("?" if neither says)."""
    kind = index.read_kind(heap, agent_id, generation)
    if kind != "?":
        return kind
    if kid is None:
        info = heap._owner_info(agent_id)
        if not info or info["generation"] != generation:
            return "?"
        kid = int(info["kind_id"])
    name = heap._kind_names.get(kid)
    if name is None:
        data = Registry(heap).get(f"kind/{kid}")
        if data is None:
            return "?"
        name = heap._kind_names[kid] = data.decode(errors="replace")
    return name
