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
from langgraph.checkpoint.base import empty_checkpoint
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


# ---- parallel tasks, and DeltaChannel (a channel rebuilt from its ancestors' writes) ----


try:
    from langgraph.channels.delta import DeltaChannel
except ImportError:  # a LangGraph before DeltaChannel (beta): its tests skip
    DeltaChannel = None


def extend(state: list | None, writes: list) -> list:
    out = list(state or [])
    for write in writes:
        out.extend(write)
    return out


class Fan(TypedDict):
    delta_log: Annotated[list, DeltaChannel(extend, snapshot_frequency=3)]  # a snapshot every third update
    log: Annotated[list, operator.add]
    n: int


def fan_out_graph(saver: Any) -> Any:
    """Each step sends three tasks that append to an order-sensitive log:
    a DeltaChannel one and a plain one."""
    from langgraph.types import Send

    def work(arg: dict[str, int]) -> dict[str, Any]:
        return {"delta_log": [f"w{arg['i']}-{arg['n']}"], "log": [f"w{arg['i']}-{arg['n']}"]}

    graph = StateGraph(Fan)
    graph.add_node("step", lambda state: {"n": state.get("n", 0) + 1})
    graph.add_node("work", work)
    graph.add_edge(START, "step")
    graph.add_conditional_edges(
        "step", lambda state: [Send("work", {"i": i, "n": state.get("n", 0)}) for i in range(3)], ["work"]
    )
    graph.add_edge("work", END)
    return graph.compile(checkpointer=saver)


def fan_out_runs(saver: Any, rounds: int = 8) -> tuple[list[Any], Any]:
    app = fan_out_graph(saver)
    cfg = {"configurable": {"thread_id": "fan"}}
    outs = [app.invoke({"delta_log": [f"in{r}"], "log": [f"in{r}"]}, cfg) for r in range(rounds)]
    return outs, app.get_state(cfg).values


def test_pending_writes_come_back_in_the_order_live_execution_applied_them(heap: sh.Heap) -> None:
    """By task path, then task id, then index (writes_sort_key), as
    InMemorySaver returns them; (task id, index) order rebuilt a DeltaChannel
    of parallel tasks in another order than the run made it."""
    ours, reference = SwarmSaver(heap), InMemorySaver()
    for saver in (ours, reference):
        cfg = {"configurable": {"thread_id": "w", "checkpoint_ns": ""}}
        cp = empty_checkpoint()
        cfg = saver.put(cfg, cp, {"source": "loop", "step": 0}, {})
        for task_id, path in (("a-task", "~__pregel_push, 2"), ("z-task", "~__pregel_push, 0"), ("m", "")):
            saver.put_writes(cfg, [("log", f"{task_id} 0"), ("log", f"{task_id} 1")], task_id, path)
        # a special write sorts by its slot (an interrupt's is -3): before the task's others
        saver.put_writes(cfg, [("log", "i 0"), ("__interrupt__", "stop")], "i-task", "~__pregel_push, 1")
    want = reference.get_tuple({"configurable": {"thread_id": "w"}}).pending_writes
    assert ours.get_tuple({"configurable": {"thread_id": "w"}}).pending_writes == want
    assert [w[0] for w in want] == ["m", "m", "z-task", "z-task", "i-task", "i-task", "a-task", "a-task"]
    assert want[4][1] == "__interrupt__"


@pytest.mark.parametrize("keep", [None, 1, 2])
def test_a_delta_channel_of_parallel_tasks_reads_as_the_reference_saver(keep: int | None) -> None:
    pytest.importorskip("langgraph.channels.delta")
    reference = fan_out_runs(InMemorySaver())
    with sh.Heap.create(size="64 MiB") as heap:
        saver = SwarmSaver(heap, keep=keep)
        assert fan_out_runs(saver) == reference
        if keep is not None:  # trimmed, yet every checkpoint a delta channel is rebuilt from is there
            assert len(list(saver.list({"configurable": {"thread_id": "fan"}}))) > keep
        heap.check()


def test_prune_keeps_what_a_delta_channel_is_rebuilt_from() -> None:
    pytest.importorskip("langgraph.channels.delta")
    with sh.Heap.create(size="64 MiB") as heap:
        saver, reference = SwarmSaver(heap), InMemorySaver()
        cfg = {"configurable": {"thread_id": "fan"}}
        _, before = fan_out_runs(saver, rounds=7)
        count = len(list(saver.list(cfg)))
        saver.prune(["fan"])
        assert len(list(saver.list(cfg))) < count
        assert fan_out_graph(saver).get_state(cfg).values == before
        # and the thread goes on as one that was never pruned
        app, ref_app = fan_out_graph(saver), fan_out_graph(reference)
        fan_out_runs(reference, rounds=7)
        for app_ in (app, ref_app):
            app_.invoke({"delta_log": ["more"], "log": ["more"]}, cfg)
        assert app.get_state(cfg).values == ref_app.get_state(cfg).values
        heap.check()


def test_delta_channel_history_reads_as_the_reference_saver() -> None:
    """SwarmSaver's own walk (records and writes, a value only for a seed)
    answers as InMemorySaver's, at every checkpoint of the history, sync
    and async, for channels with and without a seed and for one never
    written. (Checkpoint and task ids differ between two runs: compared by
    position, and writes by channel and value.)"""
    pytest.importorskip("langgraph.channels.delta")
    cfg = {"configurable": {"thread_id": "fan", "checkpoint_ns": ""}}
    channels = ["delta_log", "log", "never"]

    def histories(saver: Any) -> list[Any]:
        fan_out_runs(saver, rounds=5)
        ids = [t.config["configurable"]["checkpoint_id"] for t in saver.list(cfg)]
        out = []
        for cid in [None, *ids, "no-such-checkpoint"]:
            at = {"configurable": {**cfg["configurable"], **({"checkpoint_id": cid} if cid else {})}}
            got = saver.get_delta_channel_history(config=at, channels=channels)
            assert asyncio.run(saver.aget_delta_channel_history(config=at, channels=channels)) == got
            out.append(
                {ch: ([w[1:] for w in h["writes"]], h.get("seed", "no seed")) for ch, h in got.items()}
            )
        return out

    want = histories(InMemorySaver())
    with sh.Heap.create(size="64 MiB") as heap:
        saver = SwarmSaver(heap)
        assert histories(saver) == want
        assert any(h["delta_log"][1] == "no seed" and h["delta_log"][0] for h in want)  # from the root
        assert any(h["delta_log"][1] != "no seed" for h in want)  # from a snapshot
        assert saver.get_delta_channel_history(config=cfg, channels=[]) == {}
        nobody = {"configurable": {"thread_id": "nobody", "checkpoint_ns": ""}}
        assert saver.get_delta_channel_history(config=nobody, channels=channels) == {
            channel: {"writes": []} for channel in channels
        }
