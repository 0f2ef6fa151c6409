"""The heap registry's names of LangGraph threads: each thread is an agent,
named ``lgthread/<thread id>`` with the agent's id and generation, so that
every process of the heap finds a thread, and `swarmheap stats` shows the
memory each one holds. (swarmheap.langgraph writes them; this module needs
no LangGraph.)"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from swarmheap.errors import HeapCorrupt
from swarmheap.registry import Registry

if TYPE_CHECKING:
    from swarmheap.heap import Heap

__all__ = ["PREFIX", "by_agent", "decode", "encode", "key", "thread_ids"]

PREFIX = "lgthread/"
_REF = struct.Struct("<II")  # agent id, generation


def key(thread_id: str) -> str:
    return f"{PREFIX}{thread_id}"


def encode(agent_id: int, generation: int) -> bytes:
    return _REF.pack(agent_id, generation)


def decode(thread_id: str, data: bytes | None) -> tuple[int, int] | None:
    """The thread's (agent id, generation); None for no entry, or b"", a
    thread whose agent was swept (its next put starts it again); HeapCorrupt
    for anything else that is not one."""
    if not data:
        return None
    if len(data) != _REF.size:
        raise HeapCorrupt(f"the heap registry's entry for thread {thread_id!r} is damaged")
    agent_id, generation = _REF.unpack(data)
    return agent_id, generation


def thread_ids(heap: Heap) -> list[str]:
    """The ids of the threads the registry names."""
    return [name[len(PREFIX) :] for name in Registry(heap).names(PREFIX)]


def by_agent(heap: Heap) -> dict[tuple[int, int], str]:
    """Thread ids by (agent id, generation), for what reads as a thread."""
    registry = Registry(heap)
    out = {}
    for thread_id in thread_ids(heap):
        try:
            ref = decode(thread_id, registry.get(key(thread_id)))
        except HeapCorrupt:
            continue  # a listing goes on past a damaged entry
        if ref is not None:
            out[ref] = thread_id
    return out
