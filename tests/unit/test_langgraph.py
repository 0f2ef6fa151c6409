"""SwarmSaver, the LangGraph checkpointer on the arena."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import tempfile
from typing import Any

import pytest

import swarmheap as sh

pytest.importorskip("langgraph.checkpoint.base")
from conftest import fill_context, fill_system
from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

from _workers import langgraph_resume
from swarmheap import lgkeep, lgthreads, lgvalues
from swarmheap.langgraph import SwarmSaver, SwarmSaverError


def fill(saver: SwarmSaver, thread: str, steps: int, run_id: str = "r1") -> dict[str, Any]:
    cfg: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    cp = empty_checkpoint()
    for step in range(steps):
        cp = create_checkpoint(cp, None, step)
        cp["channel_values"] = {"messages": [f"m{i}" for i in range(step + 1)], "count": step}
        cp["channel_versions"] = {"messages": step + 1, "count": step + 1}
        cfg = saver.put(
            cfg, cp, {"source": "loop", "step": step, "run_id": run_id}, dict(cp["channel_versions"])
        )
        saver.put_writes(cfg, [("messages", f"pending {step}")], task_id="t")
    return cfg


def test_the_protocol(heap: sh.Heap) -> None:
    saver = SwarmSaver(heap)
    last = fill(saver, "a", 4)
    got = saver.get_tuple({"configurable": {"thread_id": "a"}})
    assert got.config == last
    assert got.checkpoint["channel_values"] == {"messages": ["m0", "m1", "m2", "m3"], "count": 3}
    assert got.metadata["step"] == 3 and got.pending_writes == [("t", "messages", "pending 3")]
    parent = saver.get_tuple(got.parent_config)
    assert parent.checkpoint["channel_values"]["count"] == 2
    history = list(saver.list({"configurable": {"thread_id": "a"}}))
    assert [h.metadata["step"] for h in history] == [3, 2, 1, 0]
    assert [h.metadata["step"] for h in saver.list(None, filter={"step": 1})] == [1]
    assert [
        h.metadata["step"]
        for h in saver.list({"configurable": {"thread_id": "a"}}, before=got.config, limit=2)
    ] == [2, 1]
    assert saver.get_tuple({"configurable": {"thread_id": "nobody"}}) is None
    saver.copy_thread("a", "b")
    assert saver.get_tuple({"configurable": {"thread_id": "b"}}).checkpoint == got.checkpoint
    saver.prune(["b"])
    assert len(list(saver.list({"configurable": {"thread_id": "b"}}))) == 1
    fill(saver, "c", 2, run_id="gone")
    saver.delete_for_runs(["gone"])
    assert saver.get_tuple({"configurable": {"thread_id": "c"}}) is None
    saver.delete_thread("a")
    assert saver.get_tuple({"configurable": {"thread_id": "a"}}) is None
    for thread in ("b", "c"):
        saver.delete_thread(thread)
    assert heap.agents() == []  # every thread's memory came back with its agent
    heap.check()


def test_delete_for_runs_takes_the_values_only_those_runs_named(heap: sh.Heap) -> None:
    # a thread whose first run was deleted kept every value that run put
    # (bytes in the arena until the thread went); the second run's values,
    # stored as deltas on the first run's, must still read whole
    saver = SwarmSaver(heap)
    cfg = fill(saver, "t", 20, run_id="first")
    cp = saver.get_tuple(cfg).checkpoint
    for step in range(20, 30):
        cp = create_checkpoint(cp, None, step)
        cp["channel_values"] = {"messages": [f"m{i}" for i in range(step + 1)], "count": step}
        cp["channel_versions"] = {"messages": step + 1, "count": step + 1}
        cfg = saver.put(cfg, cp, {"step": step, "run_id": "second"}, dict(cp["channel_versions"]))
    agent = saver._agent("t", create=False)
    before = _thread_bytes(heap, saver, "t")
    saver.delete_for_runs(["first"])
    assert [h.metadata["step"] for h in saver.list({"configurable": {"thread_id": "t"}})] == list(
        range(29, 19, -1)
    )
    assert sum(n.startswith("blob/") for n in agent.names()) == 2 * 10  # two channels, ten versions
    assert _thread_bytes(heap, saver, "t") < before
    fresh = SwarmSaver(heap)  # nothing cached: the kept deltas decode against what is left
    for h in fresh.list({"configurable": {"thread_id": "t"}}):
        step = h.metadata["step"]
        assert h.checkpoint["channel_values"] == {
            "messages": [f"m{i}" for i in range(step + 1)],
            "count": step,
        }
    saver.delete_for_runs(["second"])
    assert saver.get_tuple({"configurable": {"thread_id": "t"}}) is None
    assert [n for n in agent.names() if n.startswith("blob/")] == []
    saver.delete_thread("t")
    heap.check()


def test_thread_ids_are_the_heaps_whatever_the_kind(heap: sh.Heap) -> None:
    # as two SqliteSavers on one file: a saver of another kind sees the thread,
    # carries it on, and its agent keeps the kind that made it
    planner, other = SwarmSaver(heap, kind="planner"), SwarmSaver(heap, kind="other")
    fill(planner, "shared", 2)
    got = other.get_tuple({"configurable": {"thread_id": "shared"}})
    assert got is not None and got.checkpoint["channel_values"]["count"] == 1
    cp = create_checkpoint(got.checkpoint, None, 2)
    cp["channel_values"] = {"count": 2}
    cp["channel_versions"] = {**cp["channel_versions"], "count": 3}
    other.put(got.config, cp, {"source": "loop", "step": 2}, {"count": 3})
    assert planner.get_tuple({"configurable": {"thread_id": "shared"}}).checkpoint["channel_values"] == {
        "messages": ["m0", "m1"],
        "count": 2,
    }
    assert [a.kind for a in heap.agents()] == ["planner"]
    other.delete_thread("shared")
    assert planner.get_tuple({"configurable": {"thread_id": "shared"}}) is None
    heap.check()


def test_a_clone_with_an_allowlist_uses_its_own_serde(heap: sh.Heap) -> None:
    # BaseCheckpointSaver.with_allowlist makes a shallow copy with another
    # serde (LangGraph does it when a graph names its message types): the
    # clone's values go through the clone's serde, the original's through its own
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    saver = SwarmSaver(heap, serde=JsonPlusSerializer(allowed_msgpack_modules=None))
    clone = saver.with_allowlist([("tests", "Nothing")])
    assert clone is not saver and clone.serde is not saver.serde
    used: list[str] = []
    for who, one in (("clone", clone), ("saver", saver)):
        dumps = one.serde.dumps_typed

        def counted(value: Any, dumps: Any = dumps, who: str = who) -> Any:
            used.append(who)
            return dumps(value)

        one.serde.dumps_typed = counted
    fill(clone, "c", 3)
    assert used and set(used) == {"clone"}
    used.clear()
    fill(saver, "s", 3)
    assert used and set(used) == {"saver"}
    for reader in (saver, clone):
        got = reader.get_tuple({"configurable": {"thread_id": "c"}})
        assert got.checkpoint["channel_values"] == {"messages": ["m0", "m1", "m2"], "count": 2}
    saver.delete_thread("c")
    saver.delete_thread("s")
    heap.check()


def test_a_thread_is_deleted_while_system_has_no_room(heap: sh.Heap) -> None:
    # deleting threads is how a full heap makes room: the registry's removal
    # of the thread's name writes a copy of its shard into `system`, and
    # with no room there delete_thread raised PartitionFull and kept the thread
    saver = SwarmSaver(heap)
    fill(saver, "old", 3)
    fill(saver, "kept", 2)
    in_use = heap.stats()["partitions"]["context"]["in_use"]
    held = fill_system(heap)
    saver.delete_thread("old")
    assert saver.get_tuple({"configurable": {"thread_id": "old"}}) is None
    assert {t.config["configurable"]["thread_id"] for t in saver.list(None)} == {"kept"}
    assert heap.stats()["partitions"]["context"]["in_use"] < in_use
    for blk in held:
        blk.free()
    assert SwarmSaver(heap).get_tuple({"configurable": {"thread_id": "old"}}) is None
    fill(saver, "old", 1)  # the name starts a new thread
    assert len(list(saver.list({"configurable": {"thread_id": "old"}}))) == 1
    heap.check()


def test_keep_bounds_a_thread(heap: sh.Heap) -> None:
    saver = SwarmSaver(heap, keep=2)
    fill(saver, "k", 10)
    assert [h.metadata["step"] for h in saver.list({"configurable": {"thread_id": "k"}})] == [9, 8]
    agent = saver._agent("k", create=False)
    assert sum(n.startswith("blob/") for n in agent.names()) == 4  # 2 channels x the 2 kept versions
    saver.delete_thread("k")


def _checkpoint(parent: Any, step: int, messages: int) -> Any:
    cp = create_checkpoint(parent, None, step)
    cp["channel_values"] = {"messages": [f"m{i}" for i in range(messages)], "count": step}
    cp["channel_versions"] = {"messages": step + 1, "count": step + 1}
    return cp


@pytest.mark.parametrize("trim", ["reading", "known"])
def test_two_writers_trimming_one_thread_at_once(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch, trim: str
) -> None:
    """Two savers (two processes, say) put to one thread with keep=: one's
    trim read the names, then the other put and trimmed, and the first went
    on from what it had read: it failed on records and entries the second
    had dropped, and its blob pass, reading the names again, deleted the
    version the second's checkpoint names. Now the thread reads whole. The
    same with the trim from what the saver knows (lgkeep): the other's put
    comes between the first's put and its drops."""
    first, second = SwarmSaver(heap, keep=2), SwarmSaver(heap, keep=2)
    if trim == "reading":
        monkeypatch.setattr(lgkeep, "build", lambda *args: None)  # never known: each trim reads the thread
    cfg = fill(first, "shared", 3)
    pending: list[tuple[dict[str, Any], Any]] = []  # the second's put, made inside the first's next trim

    def the_other_puts() -> None:
        while pending:
            at, other = pending.pop()
            metadata = {"source": "loop", "step": other["channel_values"]["count"]}
            second.put(at, other, metadata, dict(other["channel_versions"]))

    if trim == "reading":
        reading = first._rec.checkpoint_ids

        def read_then_the_other_puts(agent: Any, ns: str, names: Any = None) -> list[str]:
            ids = reading(agent, ns, names)
            the_other_puts()  # between the first's reading of the names and its drops
            return ids

        monkeypatch.setattr(first._rec, "checkpoint_ids", read_then_the_other_puts)
    else:
        known = lgkeep.trim_known

        def the_other_puts_then_trim(*args: Any) -> bool:
            the_other_puts()  # between the first's put and its drops
            return known(*args)

        monkeypatch.setattr(lgkeep, "trim_known", the_other_puts_then_trim)
    cp = empty_checkpoint()
    raced = 0
    for step in range(3, 8):
        pending.append((cfg, _checkpoint(cp, step * 10 + 1, step * 10 + 1)))
        cp = _checkpoint(cp, step, step)
        cfg = first.put(cfg, cp, {"source": "loop", "step": step}, dict(cp["channel_versions"]))
        # a trim from what the saver knows stops knowing once the other
        # changed the thread: the next put reads the thread again, and knows
        raced += not pending
        pending.clear()
    assert raced == (5 if trim == "reading" else 3)
    monkeypatch.undo()
    for saver in (first, second, SwarmSaver(heap)):
        tuples = list(saver.list({"configurable": {"thread_id": "shared"}}))
        assert tuples and len(tuples) <= 4
        for t in tuples:  # every checkpoint left reads whole: its values are there
            values = t.checkpoint["channel_values"]
            assert len(values["messages"]) == values["count"]
    heap.check()


@pytest.mark.parametrize("how", ["list", "get_tuple", "delete_for_runs", "get_delta_channel_history"])
def test_a_thread_another_writer_deletes_as_it_is_read_reads_as_gone(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Another writer deletes a thread between this saver finding it and
    reading a checkpoint of it: list() goes on with the other threads,
    get_tuple() returns None, delete_for_runs() passes over it, and
    get_delta_channel_history() finds no history (each raised StaleBlock,
    the thread's agent recycled under the read)."""
    saver, other = SwarmSaver(heap), SwarmSaver(heap)
    fill(saver, "a", 3)
    fill(saver, "b", 3, run_id="r2")
    b_id = saver._agent("b", create=False).id
    deleted: list[bool] = []

    def deleting_b_first(read: Any) -> Any:
        def first_delete(*args: Any) -> Any:
            agent = next(a for a in args if isinstance(a, sh.Agent))
            if not deleted and agent.id == b_id:
                deleted.append(True)
                other.delete_thread("b")
            return read(*args)

        return first_delete

    if how == "delete_for_runs":
        monkeypatch.setattr(saver._rec, "get", deleting_b_first(saver._rec.get))
        saver.delete_for_runs(["r2"])
        assert [t.metadata["run_id"] for t in saver.list(None)] == ["r1"] * 3
    elif how == "get_delta_channel_history":
        monkeypatch.setattr(saver._rec, "get", deleting_b_first(saver._rec.get))
        got = saver.get_delta_channel_history(
            config={"configurable": {"thread_id": "b", "checkpoint_ns": ""}}, channels=["messages"]
        )
        assert got == {"messages": {"writes": []}}  # as for no thread
    else:
        monkeypatch.setattr(saver, "_tuple", deleting_b_first(saver._tuple))
        if how == "list":
            assert [t.config["configurable"]["thread_id"] for t in saver.list(None)] == ["a"] * 3
        else:
            assert saver.get_tuple({"configurable": {"thread_id": "b", "checkpoint_ns": ""}}) is None
    assert deleted
    heap.check()


def test_a_put_to_a_thread_deleted_under_it_starts_the_thread_again(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch
) -> None:
    saver, other = SwarmSaver(heap), SwarmSaver(heap)
    cfg = fill(saver, "gone", 2)
    write = saver._put_entries
    deleted: list[bool] = []

    def deleted_first(agent: Any, items: dict[str, bytes], requires: Any = ()) -> dict[str, int]:
        if not deleted:
            deleted.append(True)
            other.delete_thread("gone")  # another writer deletes the thread just before this write
        return write(agent, items, requires)

    monkeypatch.setattr(saver, "_put_entries", deleted_first)
    cp = create_checkpoint(empty_checkpoint(), None, 7)
    cp["channel_values"] = {"messages": ["after"], "count": 7}
    cp["channel_versions"] = {"messages": 9, "count": 9}
    saver.put(cfg, cp, {"source": "loop", "step": 7}, dict(cp["channel_versions"]))
    assert deleted
    got = other.get_tuple({"configurable": {"thread_id": "gone"}})
    assert got is not None and got.checkpoint["channel_values"] == {"messages": ["after"], "count": 7}
    assert [t.metadata["step"] for t in other.list({"configurable": {"thread_id": "gone"}})] == [7]
    heap.check()


def test_async_methods(heap: sh.Heap) -> None:
    saver = SwarmSaver(heap, compress="lz4")
    fill(saver, "x", 2)

    async def main() -> list[int]:
        got = await saver.aget_tuple({"configurable": {"thread_id": "x"}})
        assert got.checkpoint["channel_values"]["count"] == 1
        out = [t.metadata["step"] async for t in saver.alist({"configurable": {"thread_id": "x"}})]
        await saver.adelete_thread("x")
        return out

    assert asyncio.run(main()) == [1, 0]


def test_damage_is_a_named_error(heap: sh.Heap) -> None:
    saver = SwarmSaver(heap)
    fill(saver, "d", 1)
    agent = saver._agent("d", create=False)
    name = next(n for n in agent.names() if n.startswith("cp/"))
    agent.put(name, b"SHSNAP garbage")
    with pytest.raises(SwarmSaverError):
        saver.get_tuple({"configurable": {"thread_id": "d"}})
    saver.delete_thread("d")


def test_a_thread_whose_agent_was_swept_starts_again(heap: sh.Heap) -> None:
    saver = SwarmSaver(heap)
    fill(saver, "swept", 2)
    saver._agent("swept", create=False).complete()  # as a sweep recycles a dead worker's agent
    cfg = {"configurable": {"thread_id": "swept", "checkpoint_ns": ""}}
    fresh = SwarmSaver(heap)  # no process-local memory of the thread
    assert fresh.get_tuple(cfg) is None
    fill(fresh, "swept", 1)  # the next put starts the thread again
    got = SwarmSaver(heap).get_tuple(cfg)
    assert got is not None and got.checkpoint["channel_values"]["count"] == 0
    saver.delete_thread("swept")
    heap.check()


def test_a_damaged_thread_entry_is_heap_corrupt(heap: sh.Heap) -> None:
    from swarmheap.registry import Registry

    saver = SwarmSaver(heap)
    fill(saver, "torn", 1)
    Registry(heap).put("lgthread/torn", b"\x01\x02\x03")
    with pytest.raises(sh.HeapCorrupt, match="thread 'torn'"):
        SwarmSaver(heap).get_tuple({"configurable": {"thread_id": "torn", "checkpoint_ns": ""}})
    heap.check()


def _thread_bytes(heap: sh.Heap, saver: SwarmSaver, thread: str) -> int:
    return int(heap._owner_info(saver._agent(thread, create=False).id)["bytes"]["context"])


def test_a_growing_channel_costs_its_new_tail(heap: sh.Heap) -> None:
    # each step appends a message to a list; the list is stored once per
    # version, but as a delta on the version before, so the thread holds
    # about the messages once, not the list again at every step
    words = [f"w{i * 7919 % 1000}" for i in range(4000)]

    def grow(saver: SwarmSaver, thread: str, steps: int) -> None:
        cfg: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        cp = empty_checkpoint()
        for step in range(steps):
            cp = create_checkpoint(cp, None, step)
            cp["channel_values"] = {
                "messages": [" ".join(words[i * 60 : i * 60 + 60]) for i in range(step + 1)]
            }
            cp["channel_versions"] = {"messages": step + 1}
            cfg = saver.put(cfg, cp, {"step": step}, {"messages": step + 1})

    plain, delta = SwarmSaver(heap, compress=None), SwarmSaver(heap)
    grow(plain, "plain", 60)
    grow(delta, "delta", 60)
    assert _thread_bytes(heap, delta, "delta") < 0.15 * _thread_bytes(heap, plain, "plain")
    # every version reads back whole, in this process and in a fresh saver (no cached bases)
    for saver in (delta, SwarmSaver(heap)):
        history = list(saver.list({"configurable": {"thread_id": "delta"}}))
        assert [len(h.checkpoint["channel_values"]["messages"]) for h in history] == list(range(60, 0, -1))
        assert (
            history[0].checkpoint["channel_values"]
            == plain.get_tuple({"configurable": {"thread_id": "plain"}}).checkpoint["channel_values"]
        )
    # keep=N still bounds the thread: a kept delta whose base goes is stored whole
    kept = SwarmSaver(heap, keep=3)
    grow(kept, "kept", 40)
    agent = kept._agent("kept", create=False)
    assert sum(n.startswith("blob/") for n in agent.names()) == 3
    assert (
        len(
            SwarmSaver(heap)
            .get_tuple({"configurable": {"thread_id": "kept"}})
            .checkpoint["channel_values"]["messages"]
        )
        == 40
    )
    # a damaged base is a named error, never a wrong list
    dagent = delta._agent("delta", create=False)
    victim = sorted(n for n in dagent.names() if n.startswith("blob/"))[-2]
    dagent.put(victim, b"SHSNAP garbage")
    with pytest.raises(SwarmSaverError):
        list(SwarmSaver(heap).list({"configurable": {"thread_id": "delta"}}))
    for thread in ("plain", "delta", "kept"):
        plain.delete_thread(thread)
    heap.check()


def test_bad_arguments(heap: sh.Heap) -> None:
    with pytest.raises(ValueError):
        SwarmSaver(heap, compress="gzip")
    with pytest.raises(ValueError):
        SwarmSaver(heap, keep=0)
    with pytest.raises(TypeError, match="keep"):
        SwarmSaver(heap, keep="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="open_store"):
        SwarmSaver(heap, store="sqlite:///threads.db")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SwarmSaver(heap).prune(["x"], strategy="some")
    with pytest.raises(ValueError, match="kind"):
        SwarmSaver(heap, kind="")  # said at once, not at the first put


def test_a_graph_resumes_in_another_process(heap_name: str) -> None:
    pytest.importorskip("langgraph.graph")
    from lg_graph import build

    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        app = build().compile(checkpointer=SwarmSaver(heap))
        cfg = {"configurable": {"thread_id": "chat"}}
        assert app.invoke({"log": ["start"], "n": 0}, cfg) == {"log": ["start", "step 0"], "n": 1}
        with mp.get_context("spawn").Pool(1) as pool:
            resumed = pool.apply(langgraph_resume, (heap_name, "chat"))
        assert resumed == {"log": ["start", "step 0", "resumed", "step 100"], "n": 101}
        assert app.get_state(cfg).values == resumed
        heap.check()


def test_a_thread_outlives_the_process_that_wrote_it(heap_name: str) -> None:
    """A thread is the heap's, not its writer's: a worker writes it and
    exits, a full sweep runs (it reclaims a dead process's agents), and the
    thread is resumed here. It was reclaimed with its writer's agents."""
    pytest.importorskip("langgraph.graph")
    from lg_graph import build

    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        with mp.get_context("spawn").Pool(1) as pool:
            written = pool.apply(langgraph_resume, (heap_name, "made-elsewhere"))
        assert written == {"log": ["resumed", "step 100"], "n": 101}
        result = heap.collect(2)
        assert result.agents["dead_process"] == 0
        app = build().compile(checkpointer=SwarmSaver(heap))
        cfg = {"configurable": {"thread_id": "made-elsewhere"}}
        assert app.get_state(cfg).values == written
        assert app.invoke({"log": ["here"], "n": 7}, cfg)["log"] == ["resumed", "step 100", "here", "step 7"]
        (owner,) = [o for o in heap.stats()["owners"] if o["kind"] == "langgraph"]
        assert owner["pid"] == 0  # the heap's
        heap.check()


def test_the_published_conformance_suite_passes() -> None:
    conformance = pytest.importorskip("langgraph.checkpoint.conformance")

    @conformance.checkpointer_test(name="SwarmSaver")
    async def swarm_saver() -> Any:
        heap = sh.Heap.create(size="256 MiB")
        try:
            yield SwarmSaver(heap)
        finally:
            heap.close()

    report = asyncio.run(conformance.validate(swarm_saver))
    report.print_report()  # shown with pytest -s; the CI log keeps it
    assert report.passed_all(), "SwarmSaver failed capabilities of langgraph-checkpoint-conformance"


def test_a_full_arena_names_the_remedies() -> None:
    with sh.Heap.create(size="16 MiB") as heap:
        saver = SwarmSaver(heap, compress="none")
        with pytest.raises(sh.PartitionFull, match="keep=N"):
            for _ in range(100):
                fill(saver, "big", 1)
                cfg = {"configurable": {"thread_id": "big", "checkpoint_ns": ""}}
                cp = create_checkpoint(empty_checkpoint(), None, 0)
                cp["channel_values"] = {"blob": b"x" * 3_000_000}
                cp["channel_versions"] = {"blob": 1}
                saver.put(cfg, cp, {}, {"blob": 1})


def _counting_items(saver: SwarmSaver) -> tuple[list[int], Any]:
    """Count the list items the saver's serde serialises from now on: the
    count (a one-item list) and the serde's own dumps_typed, to put back."""
    dumps = saver.serde.dumps_typed
    count = [0]

    def counting(value: Any) -> Any:
        count[0] += len(value) if isinstance(value, list) else 0
        return dumps(value)

    saver.serde.dumps_typed = counting
    return count, dumps


def test_a_grown_message_list_is_stored_bit_exact(heap: sh.Heap) -> None:
    # a put of a list that grew from the last one (the same message objects
    # in front, as add_messages leaves them) serialises only the new messages
    # and splices them behind the stored ones: what is stored must be what
    # serialising the whole list gives, across msgpack's array headers (16,
    # then 3-byte counts) and the delta chain's whole versions
    messages_mod = pytest.importorskip("langchain_core.messages")
    saver = SwarmSaver(heap)
    cfg: dict[str, Any] = {"configurable": {"thread_id": "chat", "checkpoint_ns": ""}}
    cp = empty_checkpoint()
    messages: list[Any] = []
    calls, dumps = _counting_items(saver)
    for step in range(40):
        kind = (messages_mod.HumanMessage, messages_mod.AIMessage)[step % 2]
        messages = [*messages, kind(content=f"turn {step} " * (step % 7 + 1), id=f"m{step}")]
        cp = create_checkpoint(cp, None, step)
        cp["channel_values"] = {"messages": messages}
        cp["channel_versions"] = {"messages": step + 1}
        cfg = saver.put(cfg, cp, {"source": "loop", "step": step}, {"messages": step + 1})
    assert calls[0] < 2 * 40  # one new message per put, not the whole list (820 items)
    saver.serde.dumps_typed = dumps
    fresh = SwarmSaver(heap)  # nothing cached: every version decoded from the arena
    for version in (1, 15, 16, 17, 31, 40):
        agent = fresh._agent("chat", create=False)
        raw = fresh._rec.value_raw(agent, f"blob//messages/{version}")
        assert raw == lgvalues.typed_raw(dumps(messages[:version]))
    got = fresh.get_tuple({"configurable": {"thread_id": "chat"}})
    assert got.checkpoint["channel_values"]["messages"] == messages
    heap.check()


def test_a_fork_keeps_the_branch_it_forked_from(heap: sh.Heap) -> None:
    # update_state on an earlier checkpoint, then a run from there: the new
    # branch's checkpoints make the same channel versions + 1 as the first
    # branch's did, and the first branch's checkpoints must still read as
    # they were (they read the fork's values when versions were bare ints)
    memory = pytest.importorskip("langgraph.checkpoint.memory")
    from langgraph.graph import END
    from lg_graph import State, step

    def run(saver: Any) -> tuple[list[Any], list[Any], list[str]]:
        from langgraph.graph import START, StateGraph

        graph = StateGraph(State)
        graph.add_node("step", step)
        graph.add_edge(START, "step")
        graph.add_conditional_edges("step", lambda s: END if s["n"] >= 4 else "step")
        app = graph.compile(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "fork"}}
        app.invoke({"log": ["start"], "n": 0}, cfg)
        first = [(h.config["configurable"]["checkpoint_id"], h.values) for h in app.get_state_history(cfg)]
        forked = app.update_state(list(app.get_state_history(cfg))[-3].config, {"log": ["FORK"], "n": 1})
        app.invoke(None, forked)
        now = {h.config["configurable"]["checkpoint_id"]: h.values for h in app.get_state_history(cfg)}
        return [values for _, values in first], [now[cid] for cid, _ in first], [cid for cid, _ in first]

    swarm_before, swarm_after, ids = run(SwarmSaver(heap))
    assert swarm_after == swarm_before
    assert swarm_before == run(memory.InMemorySaver())[0]
    fresh = SwarmSaver(heap)  # read back with nothing cached
    for cid, values in zip(ids, swarm_before):
        got = fresh.get_tuple(
            {"configurable": {"thread_id": "fork", "checkpoint_ns": "", "checkpoint_id": cid}}
        )
        assert got.checkpoint["channel_values"].get("log", []) == values.get("log", [])
    assert fresh.get_next_version(None) < fresh.get_next_version(fresh.get_next_version(None))
    assert fresh.get_next_version(7) == 8  # a thread begun with integers goes on with them
    fresh.delete_thread("fork")
    heap.check()


def _put_list(saver: SwarmSaver, cfg: Any, cp: Any, step: int, value: list[Any]) -> tuple[Any, Any]:
    cp = create_checkpoint(cp, None, step)
    cp["channel_values"] = {"items": value}
    cp["channel_versions"] = {"items": step + 1}
    return saver.put(cfg, cp, {"step": step}, {"items": step + 1}), cp


def test_a_list_changed_in_place_is_stored_as_it_is_now(heap: sh.Heap) -> None:
    # a node that changes the channel's list object itself (an item replaced,
    # an item appended) between puts: each checkpoint holds the list as it
    # was at its put, not the one the saver saw before
    saver = SwarmSaver(heap)
    cfg: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    cp = empty_checkpoint()
    items = ["a", "b", "c"]
    seen = []
    for step, change in enumerate([None, "append", "replace", "replace", "pop", "append"]):
        if change == "append":
            items.append(f"new{step}")
        elif change == "replace":
            items[step % len(items)] = f"changed{step}"
        elif change == "pop":
            items.pop(0)
        cfg, cp = _put_list(saver, cfg, cp, step, items)
        seen.append(list(items))
        got = saver.get_tuple({"configurable": {"thread_id": "t"}}).checkpoint["channel_values"]["items"]
        assert got == items, f"step {step} ({change})"
    fresh = SwarmSaver(heap)
    history = [
        h.checkpoint["channel_values"]["items"] for h in fresh.list({"configurable": {"thread_id": "t"}})
    ]
    assert history == seen[::-1]
    saver.delete_thread("t")
    heap.check()


def test_a_window_sliding_over_a_list_costs_its_new_items(heap: sh.Heap) -> None:
    # a conversation kept to its last messages (trim_messages, RemoveMessage):
    # each put drops some items at the front and appends some at the end.
    # Only the new items are serialised; what is stored is what serialising
    # the whole list gives, and a fresh saver reads every version back
    messages_mod = pytest.importorskip("langchain_core.messages")
    saver = SwarmSaver(heap)
    cfg: dict[str, Any] = {"configurable": {"thread_id": "window", "checkpoint_ns": ""}}
    cp = empty_checkpoint()
    serialised, dumps = _counting_items(saver)
    window: list[Any] = []
    versions = []
    made = 0
    for step in range(60):
        # drops of 0 to 3 and additions of 0 to 2, a window of about 20
        drop = (step * 7) % 4 if len(window) > 18 else 0
        add = 1 + (step % 3 == 0) - (step % 11 == 5)
        new = []
        for _ in range(add):
            kind = (messages_mod.HumanMessage, messages_mod.AIMessage)[made % 2]
            new.append(kind(content=f"turn {made} " * (made % 9 + 1), id=f"m{made}"))
            made += 1
        window = window[drop:] + new
        cfg, cp = _put_list(saver, cfg, cp, step, window)
        versions.append(window)
    saver.serde.dumps_typed = dumps
    # the first slide serialises its window item by item (to learn where each
    # ends); from then on a put serialises its new items
    assert serialised[0] < made + 2 * 20
    fresh = SwarmSaver(heap)
    agent = fresh._agent("window", create=False)
    for version in range(1, 61):
        raw = fresh._rec.value_raw(agent, f"blob//items/{version}")
        assert raw == lgvalues.typed_raw(dumps(versions[version - 1])), f"version {version}"
    got = fresh.get_tuple({"configurable": {"thread_id": "window"}})
    assert got.checkpoint["channel_values"]["items"] == versions[-1]
    # an item replaced in the middle, or the window emptied, is stored whole and right
    for step, value in (
        (60, [*window[:5], messages_mod.HumanMessage(content="x", id="x"), *window[6:]]),
        (61, []),
    ):
        cfg, cp = _put_list(saver, cfg, cp, step, value)
        assert fresh._rec.value_raw(agent, f"blob//items/{step + 1}") == lgvalues.typed_raw(dumps(value))
    saver.delete_thread("window")
    heap.check()


def test_a_record_rewritten_elsewhere_is_read_again(heap: sh.Heap) -> None:
    # a saver keeps what it wrote, checked against the frame header in the
    # arena: another saver (any process) writing the same checkpoint is seen
    first, second = SwarmSaver(heap), SwarmSaver(heap)
    cfg: dict[str, Any] = {"configurable": {"thread_id": "shared", "checkpoint_ns": ""}}
    cp = create_checkpoint(empty_checkpoint(), None, 1)
    cp["channel_values"], cp["channel_versions"] = {"count": 1}, {"count": 1}
    first.put(cfg, cp, {"source": "loop", "step": 1, "who": "first"}, {"count": 1})
    assert first.get_tuple(cfg).metadata["who"] == "first"
    second.put(cfg, cp, {"source": "loop", "step": 1, "who": "second"}, {"count": 1})
    assert first.get_tuple(cfg).metadata["who"] == "second"
    heap.check()


def test_the_value_cache_is_bounded_in_bytes(heap: sh.Heap, monkeypatch: pytest.MonkeyPatch) -> None:
    # a long thread's message list is large: the saver keeps at most
    # RAW_CACHE_BYTES of serde bytes, and reads what it dropped from the arena
    from swarmheap import lgview

    monkeypatch.setattr(lgview, "RAW_CACHE_BYTES", 64 << 10)
    saver = SwarmSaver(heap)
    cfg: dict[str, Any] = {"configurable": {"thread_id": "long", "checkpoint_ns": ""}}
    cp = empty_checkpoint()
    messages: list[str] = []
    for step in range(40):
        cp = create_checkpoint(cp, None, step)
        messages = [*messages, f"{step:04d}" * 500]  # 2 KB each: the list reaches 80 KB
        cp["channel_values"] = {"messages": messages}
        cp["channel_versions"] = {"messages": step + 1}
        cfg = saver.put(cfg, cp, {"source": "loop", "step": step}, {"messages": step + 1})
        saver.put_writes(cfg, [("messages", messages)], task_id="t")  # a large pending write
        saver.get_tuple(cfg)
        records = sum(len(typed[1]) for _, _, typed in saver._rec.records.values())
        assert records == saver._rec.records.nbytes
        assert records <= max(64 << 10, max(len(typed[1]) for _, _, typed in saver._rec.records.values()))
        held = sum(len(raw) for raw, _, _ in saver._rec.raws.values())
        assert held == saver._rec.raws.nbytes
        assert held <= max(64 << 10, max(len(raw) for raw, _, _ in saver._rec.raws.values()))
    history = list(saver.list({"configurable": {"thread_id": "long"}}))
    assert [len(h.checkpoint["channel_values"]["messages"]) for h in history] == list(range(40, 0, -1))
    assert history[-1].checkpoint["channel_values"]["messages"] == [f"{0:04d}" * 500]
    assert history[0].checkpoint["channel_values"]["messages"] == messages
    assert history[0].pending_writes == [("t", "messages", messages)]
    saver.delete_thread("long")
    heap.check()


def test_a_saver_serving_thread_after_thread_holds_bounded_memory() -> None:
    """The newest version of each channel was remembered per (agent,
    generation): a service that ran thread after thread kept an entry for
    every thread it had ever served. Keyed by the agent's slot, the entries
    are at most the heap's owner slots, and a slot's next thread replaces
    the last one's."""
    with sh.Heap.create(size="16 MiB", max_owners=64) as heap:
        saver = SwarmSaver(heap)
        for n in range(300):
            cfg = fill(saver, f"thread-{n}", 3)
            got = saver.get_tuple(cfg)
            assert got is not None and got.checkpoint["channel_values"]["messages"] == ["m0", "m1", "m2"]
            saver.delete_thread(f"thread-{n}")
        assert len(saver._newest) <= 64
        assert sum(len(names) for _, names in saver._newest.values()) <= 64 * 2
        heap.check()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_cold_threads_go_to_the_store_and_come_back(kind: str, tmp_path: Any, request: Any) -> None:
    import os

    from swarmheap.stores import RedisStore, SQLiteStore

    if kind == "sqlite":
        store: Any = SQLiteStore(tmp_path / "threads.db")
    else:
        store = RedisStore(request.getfixturevalue("redis_url"))
    with sh.Heap.create(size="16 MiB") as heap, store:
        saver = SwarmSaver(heap, store=store)
        heap.set_offload_policy(store, high=0.6, low=0.4, min_idle=0.0)  # cold at once, for the test
        want: dict[str, bytes] = {}
        for t in range(40):  # 40 threads of 200 KB: more than `context` holds (6.4 MiB)
            thread = f"cold-{t}"
            want[thread] = os.urandom(200_000)
            cfg: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            cp = create_checkpoint(empty_checkpoint(), None, 0)
            cp["channel_values"] = {"state": want[thread]}
            cp["channel_versions"] = {"state": 1}
            saver.put(cfg, cp, {"step": 0}, {"state": 1})
        assert len(heap.stats()["offloaded"]) > 0  # the first threads went cold
        for thread, data in want.items():  # each comes back on its first touch, as it was
            cfg = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            got = saver.get_tuple(cfg)
            assert got is not None and got.checkpoint["channel_values"]["state"] == data
            assert [t.checkpoint["channel_values"]["state"] for t in saver.list(cfg)] == [data]
        cold = next(a for a in heap.agents() if a.kind == "langgraph" and a.state == "offloaded")
        thread = lgthreads.by_agent(heap)[(cold.id, cold.generation)]
        cfg = saver.get_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}).config
        cp = create_checkpoint(empty_checkpoint(), None, 1)  # a cold thread goes on from its last step
        cp["channel_values"] = {"state": b"next"}
        cp["channel_versions"] = {"state": 2}
        cfg = saver.put(cfg, cp, {"step": 1}, {"state": 2})
        latest = saver.get_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}})
        assert latest.config == cfg and latest.checkpoint["channel_values"]["state"] == b"next"
        heap.check()
        for thread in want:  # deleting a thread, cold or not, leaves nothing of it in the store
            saver.delete_thread(thread)
        assert store.keys(f"swarmheap/agent/{heap._token}/") == []
        heap.check()


def test_a_cold_thread_is_deleted_without_coming_back(tmp_path: Any) -> None:
    """delete_thread of a thread in the store completes its agent there (its
    blob goes): it brought the thread back first, which raised PartitionFull
    when the arena had no room for it."""
    import os

    from swarmheap.stores import SQLiteStore

    with sh.Heap.create(size="8 MiB") as heap, SQLiteStore(tmp_path / "threads.db") as store:
        saver = SwarmSaver(heap, store=store)
        cfg: dict[str, Any] = {"configurable": {"thread_id": "cold", "checkpoint_ns": ""}}
        cp = create_checkpoint(empty_checkpoint(), None, 0)
        cp["channel_values"] = {"state": os.urandom(2 << 20)}
        cp["channel_versions"] = {"state": 1}
        saver.put(cfg, cp, {"step": 0}, {"state": 1})
        (agent,) = [a for a in heap.agents() if a.kind == "langgraph"]
        agent.offload(store)
        fill_context(heap)
        with pytest.raises(sh.PartitionFull):
            saver.get_tuple(cfg)  # reading it needs it back: no room
        saver.delete_thread("cold")
        assert agent.state == "gone" and store.keys("swarmheap/agent/") == []
        assert saver.get_tuple(cfg) is None
        heap.check()


def test_delete_for_runs_leaves_cold_threads_of_other_runs_in_the_store(tmp_path: Any) -> None:
    """It read every thread to find the runs' checkpoints, bringing each cold
    one back; a cold thread's checkpoints are now read from its blob, and
    only a thread that holds one of the runs comes back to have it deleted."""
    from swarmheap.stores import SQLiteStore

    with sh.Heap.create(size="16 MiB") as heap, SQLiteStore(tmp_path / "threads.db") as store:
        saver = SwarmSaver(heap, store=store)
        fill(saver, "mine", 3, run_id="r1")
        fill(saver, "theirs", 3, run_id="r2")
        agents = {
            lgthreads.by_agent(heap)[(a.id, a.generation)]: a for a in heap.agents() if a.kind == "langgraph"
        }
        for agent in agents.values():
            agent.offload(store)
        saver.delete_for_runs(["r9"])
        assert all(a.state == "offloaded" for a in agents.values())
        saver.delete_for_runs(["r1"])
        assert agents["theirs"].state == "offloaded"
        assert saver.get_tuple({"configurable": {"thread_id": "mine"}}) is None
        assert saver.get_tuple({"configurable": {"thread_id": "theirs"}}).metadata["run_id"] == "r2"
        heap.check()


def test_a_thread_offloaded_as_it_is_listed_reads_whole(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's offload policy sends a thread to the store between
    list() finding it and reading a checkpoint of it: the view of its
    sealed index named nothing, the record read brought the thread back, and
    the checkpoint listed with no values at all."""
    from swarmheap.stores import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp, SQLiteStore(os.path.join(tmp, "s.db")) as store:
        saver = SwarmSaver(heap, store=store)
        fill(saver, "cold", 3)
        read = saver._tuple
        offloaded: list[bool] = []

        def offloaded_first(agent: Any, *rest: Any) -> Any:
            if not offloaded:
                offloaded.append(True)
                agent.offload(store)  # as another process's policy would
            return read(agent, *rest)

        monkeypatch.setattr(saver, "_tuple", offloaded_first)
        listed = list(saver.list({"configurable": {"thread_id": "cold"}}))
        assert offloaded and len(listed) == 3
        for t in listed:
            values = t.checkpoint["channel_values"]
            assert values["messages"] == [f"m{i}" for i in range(values["count"] + 1)]
        saver.delete_thread("cold")
        heap.check()
