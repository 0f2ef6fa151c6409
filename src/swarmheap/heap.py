"""The Heap users hold: the binding's CoreHeap plus the agent layer."""

from __future__ import annotations

from swarmheap._core import CoreHeap

__all__ = ["Heap"]


class Heap(CoreHeap):
    """An arena. ``Heap.create(name=None, size="64 MiB", *, ratios=None,
    page_size=65536, max_owners=0)`` makes one (``name=None``: private; a
    name: shared memory), ``Heap.attach(name)`` maps one another process
    made. Use as a context manager: a heap created by name is unlinked on exit."""
