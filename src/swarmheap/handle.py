"""Handles: what crosses process boundaries instead of pointers."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Handle"]


class Handle(NamedTuple):
    """A block's identity in any process attached to the heap: its offset from
    the arena base, its length, and the owner (agent) id and generation it was
    allocated under. Small and picklable; ``heap.resolve(handle)`` turns it back
    into a Block over the same bytes."""

    offset: int
    size: int
    owner: int = 0
    generation: int = 1
