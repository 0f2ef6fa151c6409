"""Recycling hooks: per process, per heap. A hook that raises is logged and
changes nothing; agents whose recycle was deferred by pins are remembered
here so that their hooks fire when the last pin drops."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["EVENTS", "Hook", "Hooks"]

log = logging.getLogger("swarmheap")

EVENTS = ("spawn", "complete", "recycle", "offload", "restore")
Hook = Callable[[int, str, dict[str, Any]], object]


class Hooks:
    """The hook lists of one heap in one process, and the deferred recycles."""

    __slots__ = ("deferred", "table")

    def __init__(self) -> None:
        self.table: dict[str, list[Hook]] = {event: [] for event in EVENTS}
        # agent id -> (generation, kind, stats) of its deferred recycle. By
        # slot: a recycle another process ran (its view was the last pin)
        # never comes to take its entry here, and the slot's next deferral
        # replaces it, so these stay at most max_owners.
        self.deferred: dict[int, tuple[int, str, dict[str, Any]]] = {}

    def for_event(self, event: str) -> list[Hook]:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: use one of {', '.join(EVENTS)}")
        return self.table[event]

    def add(self, event: str, fn: Hook) -> None:
        if not callable(fn):
            raise TypeError(f"a hook must be callable, not {type(fn).__name__}")
        self.for_event(event).append(fn)

    def remove(self, event: str, fn: Hook) -> None:
        hooks = self.for_event(event)
        if fn not in hooks:
            raise ValueError(f"{fn!r} is not a {event!r} hook")
        hooks.remove(fn)

    def fire(self, event: str, agent_id: int, kind: str, stats: dict[str, Any]) -> None:
        for fn in list(self.table[event]):
            try:
                fn(agent_id, kind, stats)
            except Exception:
                log.exception("swarmheap %s hook %r failed for agent %d", event, fn, agent_id)

    def defer(self, agent_id: int, generation: int, kind: str, stats: dict[str, Any]) -> None:
        """The agent completed while pinned: fire its recycle later."""
        self.deferred[agent_id] = (generation, kind, stats)

    def take_deferred(self, agent_id: int, generation: int) -> tuple[str, dict[str, Any]] | None:
        got = self.deferred.get(agent_id)
        if got is None or got[0] != generation:
            return None
        del self.deferred[agent_id]
        return got[1], got[2]
