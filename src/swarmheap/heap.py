"""The Heap users hold: the binding's CoreHeap plus agents, hooks and sweeps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swarmheap._core import CoreHeap
from swarmheap.agents import Agent, kind_id, read_kind
from swarmheap.errors import AgentStateError
from swarmheap.sweep import SweepResult, collect

__all__ = ["EVENTS", "Heap"]

log = logging.getLogger("swarmheap")

EVENTS = ("spawn", "complete", "recycle")
Hook = Callable[[int, str, dict[str, Any]], object]


@dataclass
class _ProcessState:
    """What this process alone keeps about a heap: hooks, sweep counters."""

    hooks: dict[str, list[Hook]] = field(default_factory=lambda: {e: [] for e in EVENTS})
    thresholds: tuple[int, int, int] = (2000, 10, 10)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    batch: int = 1  # allocations the heap's countdown stood for when it was last set
    deferred: dict[tuple[int, int], tuple[str, dict[str, Any]]] = field(default_factory=dict)
    sweeping: bool = False


class Heap(CoreHeap):
    """An arena. ``Heap.create(name=None, size="64 MiB", *, ratios=None,
    page_size=65536, max_owners=0, max_threads=0)`` makes one (``name=None``: private; a
    name: shared memory), ``Heap.attach(name)`` maps one another process
    made. Use as a context manager: a heap created by name is unlinked on exit."""

    @property
    def _state(self) -> _ProcessState:
        state = self.__dict__.get("_process_state")
        if state is None:
            state = self.__dict__["_process_state"] = _ProcessState()
        return state

    # ---- agents ----

    def spawn(self, kind: str = "default", *, lease: float | None = None) -> Agent:
        """A new agent of ``kind``: an owner heap in the C core. ``lease``
        (seconds) lets a sweep reclaim it once that time has passed."""
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind must be a non-empty str")
        if lease is not None and not (isinstance(lease, (int, float)) and lease > 0):
            raise ValueError(f"lease must be positive seconds, not {lease!r}")
        self._note_allocation()
        agent_id, generation = self._owner_create(kind_id(kind))
        agent = Agent(self, agent_id, generation, kind)
        try:
            agent._update_index(lambda entries: None, lease_deadline=time.time() + lease if lease else 0.0)
        except BaseException:
            self._owner_recycle(agent_id, generation)
            raise
        self._sweep_push(0, agent_id, generation)
        if self._hooks_for("spawn"):
            self._fire("spawn", agent, agent.stats())
        return agent

    def agent(self, agent_id: int) -> Agent:
        """The live agent with this id, as seen from this process."""
        if isinstance(agent_id, bool) or not isinstance(agent_id, int) or agent_id <= 0:
            raise ValueError(f"agent ids are positive ints, not {agent_id!r}")
        if agent_id >= self._max_owners():
            raise ValueError(f"agent id {agent_id} is beyond this heap's {self._max_owners()} slots")
        generation = self._owner_generation(agent_id)
        if not generation:
            raise AgentStateError(f"no agent {agent_id} in this heap")
        return Agent(self, agent_id, generation, read_kind(self, agent_id, generation))

    def agents(self) -> list[Agent]:
        """Every agent that holds a slot (live, completed, dead or offloaded)."""
        out = []
        for agent_id in range(1, self._max_owners()):
            generation = self._owner_generation(agent_id)
            if generation:
                out.append(Agent(self, agent_id, generation, read_kind(self, agent_id, generation)))
        return out

    # ---- hooks ----

    def on(self, event: str, fn: Hook) -> None:
        """Call ``fn(agent_id, kind, stats)`` on spawn, complete or recycle.
        Hooks are per process; one that raises is logged and changes nothing."""
        self._hooks_for(event).append(fn)

    def off(self, event: str, fn: Hook) -> None:
        """Remove a hook added with on(); ValueError if it is not there."""
        hooks = self._hooks_for(event)
        if fn not in hooks:
            raise ValueError(f"{fn!r} is not a {event!r} hook")
        hooks.remove(fn)

    def _hooks_table(self) -> dict[str, list[Hook]]:
        return self._state.hooks

    def _hooks_for(self, event: str) -> list[Hook]:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: use one of {', '.join(EVENTS)}")
        return self._state.hooks[event]

    def _fire(self, event: str, agent: Agent, stats: dict[str, Any]) -> None:
        hooks = self._state.hooks[event]
        if not hooks:
            return
        for fn in list(hooks):
            try:
                fn(agent.id, agent.kind, stats)
            except Exception:
                log.exception("swarmheap %s hook %r failed for agent %d", event, fn, agent.id)

    def _remember_deferred(self, agent: Agent, stats: dict[str, Any]) -> None:
        self._state.deferred[(agent.id, agent.generation)] = (agent.kind, stats)

    def _pop_deferred_kind(self, agent_id: int, generation: int) -> str | None:
        entry = self._state.deferred.pop((agent_id, generation), None)
        return entry[0] if entry else None

    def _deferred_recycled(self, oid: int, gen: int) -> None:
        kind, stats = self._state.deferred.pop((oid, gen), ("?", {}))
        self._fire("recycle", Agent(self, oid, gen, kind), stats)

    # ---- sweeps ----

    def collect(self, generation: int = 2) -> SweepResult:
        """Sweep generations 0..generation now and report what was reclaimed."""
        state = self._state
        state.sweeping = True
        try:
            result = collect(self, generation)
        finally:
            state.sweeping = False
        for younger in range(generation + 1):
            state.counts[younger] = 0
        if generation < 2:
            state.counts[generation + 1] += 1
        self._restart_countdown(state)
        return result

    def set_sweep_thresholds(self, gen0: int = 2000, gen1: int = 10, gen2: int = 10) -> None:
        """As gc.set_threshold: a young sweep after ``gen0`` agent allocations
        and spawns; a generation-1 sweep after ``gen1`` young sweeps; a full
        one after ``gen2`` generation-1 sweeps. 0 turns automatic sweeps off."""
        for value in (gen0, gen1, gen2):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"thresholds are ints >= 0, not {value!r}")
        state = self._state
        state.counts[0] += state.batch - self._sweep_countdown  # what this countdown saw so far
        state.thresholds = (gen0, gen1, gen2)
        self._restart_countdown(state)

    def get_sweep_thresholds(self) -> tuple[int, int, int]:
        return self._state.thresholds

    # Counting agent allocations toward the young sweep, as CPython's gc counts
    # object allocations, runs on every agent.alloc(): the common case is one
    # decrement of CoreHeap._sweep_countdown (in C, by CoreHeap._agent_alloc);
    # the counts are brought up to date here when it runs out.

    def _note_allocation(self) -> None:
        left = self._sweep_countdown - 1
        if left > 0:
            self._sweep_countdown = left
            return
        state = self._state
        state.counts[0] += state.batch
        self._sweep_countdown = state.batch = 1  # a sweep below restarts it properly
        t0, t1, t2 = state.thresholds
        if t0 == 0 or state.counts[0] < t0 or state.sweeping:
            self._restart_countdown(state)
            return
        generation = 0
        if t1 and state.counts[1] + 1 >= t1:
            generation = 1
            if t2 and state.counts[2] + 1 >= t2:
                generation = 2
        self.collect(generation)

    def _restart_countdown(self, state: _ProcessState) -> None:
        """Next check when the young count reaches its threshold (now, if it has)."""
        t0 = state.thresholds[0]
        state.batch = max(1, t0 - state.counts[0]) if t0 and not state.sweeping else 1 if t0 else 4096
        self._sweep_countdown = state.batch

    def _relieve_pressure(self) -> None:
        """A partition is full: a full sweep before giving up."""
        if not self._state.sweeping:
            self.collect(2)
