"""Handles: what crosses process boundaries instead of pointers."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Handle"]


class Handle(NamedTuple):
    """A block's identity in any process attached to the heap: its offset from
    the arena base, its length, and the owner (agent) id and generation it was
    allocated under, and the block's tag: a number the heap gives the block
    when its first handle is made and drops when the block is freed, so a
    handle of a freed or reused block resolves to StaleBlock, never to someone
    else's bytes (0: no tag, only the owner's generation is checked). Small and
    picklable; ``heap.resolve(handle)`` turns it back into a Block over the
    same bytes."""

    offset: int
    size: int
    owner: int = 0
    generation: int = 1
    tag: int = 0
