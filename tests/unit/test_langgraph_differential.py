"""SwarmSaver against InMemorySaver, LangGraph's reference saver: the same
seeded sequence of runs, forks (update_state on a random earlier checkpoint,
then a run), thread deletions and listings (before, limit, metadata filters)
on a graph with a message list that add_messages trims (RemoveMessage), an
appended log, bytes and a dict, across three threads. Every history and
listing must read the same from both savers, for each codec, and through
the async API."""

from __future__ import annotations

import asyncio
import operator
import random
from typing import Annotated, Any, TypedDict

import pytest

import swarmheap as sh

pytest.importorskip("langgraph.graph")
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from swarmheap.langgraph import SwarmSaver

THREADS = ("t0", "t1", "t2")


class State(TypedDict):
    messages: Annotated[list, add_messages]
    log: Annotated[list, operator.add]
    n: int
    blob: bytes
    meta: dict


def talk(state: State) -> dict[str, Any]:
    n = state.get("n", 0)
    reply = AIMessage(content=f"reply {n} " * (n % 5 + 1), id=f"a{n}-{len(state['messages'])}")
    out: dict[str, Any] = {
        "messages": [reply],
        "log": [n],
        "n": n + 1,
        "blob": bytes([n % 256]) * (n * 37 % 300),
        "meta": {"n": n, "k": [n] * (n % 4)},
    }
    if len(state["messages"]) > 6 and n % 3 == 0:  # a window: the oldest message goes
        out["messages"].append(RemoveMessage(id=state["messages"][0].id))
    return out


def build(saver: Any) -> Any:
    graph = StateGraph(State)
    graph.add_node("talk", talk)
    graph.add_node("check", lambda state: {"log": ["check"]})
    graph.add_edge(START, "talk")
    graph.add_conditional_edges("talk", lambda state: END if state["n"] % 4 == 0 else "check")
    graph.add_edge("check", "talk")
    return graph.compile(checkpointer=saver)


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "content"):
        return (type(value).__name__, value.content, value.id)
    return value


def history(app: Any, thread: str) -> list[Any]:
    return [
        (plain(h.values), h.next, {k: h.metadata.get(k) for k in ("step", "source")})
        for h in app.get_state_history({"configurable": {"thread_id": thread}})
    ]


def replay(saver: Any, seed: int) -> list[Any]:
    rng = random.Random(seed)
    app = build(saver)
    seen: list[Any] = []
    for op in range(25):
        thread = rng.choice(THREADS)
        cfg = {"configurable": {"thread_id": thread}}
        past = list(app.get_state_history(cfg))
        r = rng.random()
        if r < 0.5 or not past:
            message = HumanMessage(content=f"hi {op}", id=f"h{op}")
            app.invoke({"messages": [message], "n": rng.randrange(1, 9)}, cfg)
        elif r < 0.8:
            edit = {"messages": [HumanMessage(content=f"edit {op}", id=f"e{op}")], "n": rng.randrange(1, 9)}
            app.invoke(None, app.update_state(rng.choice(past).config, edit))
        elif r < 0.9:
            saver.delete_thread(thread)
        else:
            listed = list(saver.list(cfg))
            if listed:
                limit = rng.randrange(1, 4)
                before = rng.choice(listed).config
                seen.append(
                    [
                        plain(t.checkpoint["channel_values"])
                        for t in saver.list(cfg, before=before, limit=limit)
                    ]
                )
                updates = saver.list(None, filter={"source": "update"}, limit=limit)
                seen.append([plain(t.checkpoint["channel_values"]) for t in updates])
                at_step = saver.list(cfg, filter={"step": rng.randrange(6)})
                seen.append([(t.metadata.get("step"), len(t.pending_writes or [])) for t in at_step])
        seen.append(history(app, thread))
    seen.extend(history(app, thread) for thread in THREADS)
    return seen


async def areplay(saver: Any, seed: int) -> list[Any]:
    """replay()'s runs and forks through the async API (ainvoke, aupdate_state,
    aget_state_history), which reaches the saver's aput, aget_tuple and alist."""
    rng = random.Random(seed)
    app = build(saver)
    seen: list[Any] = []
    for op in range(20):
        cfg = {"configurable": {"thread_id": rng.choice(THREADS[:2])}}
        past = [h async for h in app.aget_state_history(cfg)]
        if rng.random() < 0.6 or not past:
            message = HumanMessage(content=f"hi {op}", id=f"h{op}")
            await app.ainvoke({"messages": [message], "n": rng.randrange(1, 9)}, cfg)
        else:
            edit = {"messages": [HumanMessage(content=f"edit {op}", id=f"e{op}")], "n": rng.randrange(1, 9)}
            await app.ainvoke(None, await app.aupdate_state(rng.choice(past).config, edit))
        seen.append([(plain(h.values), h.next) async for h in app.aget_state_history(cfg)])
    return seen


def test_the_async_api_reads_as_the_reference_saver() -> None:
    for seed in (0, 1):
        reference = asyncio.run(areplay(InMemorySaver(), seed))
        with sh.Heap.create(size="64 MiB") as heap:
            saver = SwarmSaver(heap)
            assert asyncio.run(areplay(saver, seed)) == reference, f"seed {seed}"
            saver.prune(list(THREADS), strategy="delete")
            heap.check()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("compress", ["zstd", None])
def test_swarmsaver_reads_as_the_reference_saver(seed: int, compress: str | None) -> None:
    reference = replay(InMemorySaver(), seed)
    with sh.Heap.create(size="64 MiB") as heap:
        saver = SwarmSaver(heap, compress=compress)
        got = replay(saver, seed)
        for step, (want, have) in enumerate(zip(reference, got)):
            assert have == want, f"seed {seed}: record {step} differs"
        assert len(got) == len(reference)
        saver.prune(list(THREADS), strategy="delete")
        heap.check()
