"""keep=N's trim from what the saver knows (lgkeep) leaves each thread as
the trim from a reading of the thread (lgwalks.trim) does: the same
entries, the same checkpoints, the same values, after every call of a
random history of puts (forks from older checkpoints carrying unchanged
channel versions, a checkpoint put again, values no checkpoint names),
pending writes, deletes of runs and another saver's puts."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

import swarmheap as sh

pytest.importorskip("langgraph.checkpoint.base")
from conftest import stateful_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.base import empty_checkpoint

from swarmheap import lgwalks
from swarmheap.langgraph import SwarmSaver

# (what, a namespace, which earlier checkpoint a fork starts from, which channels change)
_OP = st.tuples(
    st.sampled_from(["step", "step", "step", "fork", "again", "writes", "stray", "other", "offload"]),
    st.sampled_from(["", "", "sub"]),
    st.integers(0, 50),
    st.sets(st.sampled_from(["messages", "count", "notes"]), min_size=1),
)


def _reading_saver(heap: sh.Heap, keep: int) -> SwarmSaver:
    """A saver whose every trim reads the thread (never the known path)."""
    saver = SwarmSaver(heap, keep=keep)

    def trim(agent: Any, ns: str, *rest: Any) -> None:
        lgwalks.trim(saver._rec, saver.serde, agent, ns, keep)

    saver._trim = trim  # type: ignore[method-assign]
    return saver


def _state(saver: SwarmSaver, heap: sh.Heap) -> tuple[list[str], list[tuple[Any, ...]]]:
    agent = saver._agent("t", create=False)
    names = sorted(agent.names()) if agent is not None else []
    tuples = [
        (
            t.config["configurable"]["checkpoint_ns"],
            t.checkpoint["id"],
            t.checkpoint["channel_values"],
            t.metadata["step"],
            t.pending_writes,
        )
        for ns in ("", "sub")
        for t in saver.list({"configurable": {"thread_id": "t", "checkpoint_ns": ns}})
    ]
    heap.check()
    return names, tuples


def _side_by_side(keep: int, ops: list[Any], known_heap: sh.Heap, read_heap: sh.Heap, store: Any) -> None:
    known = SwarmSaver(known_heap, keep=keep)
    other = SwarmSaver(known_heap, keep=keep)  # another writer of the thread (a process, say)
    reading = _reading_saver(read_heap, keep)
    reading_other = _reading_saver(read_heap, keep)
    made: dict[str, list[Any]] = {"": [], "sub": []}  # each namespace's checkpoints, in put order
    serial = 0
    for what, ns, pick, changed in ops:
        serial += 1
        cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": ns}}
        history = made[ns]
        if what in ("writes", "again") and not history:
            what = "step"
        if what == "offload":  # the known saver's thread goes to the store; its next touch restores it
            agent = known._agent("t", create=False)
            if agent is not None:
                agent.offload(store)
            continue
        if what == "writes":
            cid = history[-1]["id"]
            at = {"configurable": {"thread_id": "t", "checkpoint_ns": ns, "checkpoint_id": cid}}
            for saver in (known, reading):
                saver.put_writes(at, [("messages", f"pending {serial}")], task_id=f"task{serial}")
        elif what == "again":  # the newest checkpoint put again (a retried step)
            cp = history[-1]
            for saver in (known, reading):
                saver.put(cfg, cp, {"source": "loop", "step": serial, "run_id": "r"}, {})
        elif what == "stray":  # a put naming a value its checkpoint does not name
            cp = empty_checkpoint()
            cp["id"] = f"{serial:08d}"
            cp["channel_values"] = {"messages": [f"stray {serial}"]}
            cp["channel_versions"] = {}
            new = {"messages": f"{serial:08d}.stray"}
            for saver in (known, reading):
                saver.put(cfg, cp, {"source": "loop", "step": serial, "run_id": "r"}, new)
            history.append(cp)
        else:
            parent = (
                history[pick % len(history)]
                if what == "fork" and history
                else (history[-1] if history else None)
            )
            cp = empty_checkpoint()
            cp["id"] = f"{serial:08d}"
            values = dict(parent["channel_values"]) if parent else {}
            versions = dict(parent["channel_versions"]) if parent else {}
            for channel in changed:
                values[channel] = [*values.get(channel, []), f"{channel} {serial}"]
                versions[channel] = f"{serial:08d}.{channel}"
            cp["channel_values"], cp["channel_versions"] = values, versions
            new = {channel: versions[channel] for channel in changed}
            writers = (other, reading_other) if what == "other" else (known, reading)
            for saver in writers:
                saver.put(cfg, cp, {"source": "loop", "step": serial, "run_id": "r"}, new)
            history.append(cp)
        assert _state(known, known_heap) == _state(reading, read_heap), (what, ns)
    tuples = _state(known, known_heap)[1]
    for ns in ("", "sub"):
        assert sum(t[0] == ns for t in tuples) == min(keep, len(made[ns]))
    known.delete_thread("t")
    reading.delete_thread("t")


@settings(max_examples=stateful_examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keep=st.sampled_from([1, 2, 3, 5]), ops=st.lists(_OP, min_size=1, max_size=30))
def test_the_known_trim_leaves_what_a_reading_trim_leaves(keep: int, ops: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp, sh.SQLiteStore(f"{tmp}/threads.db") as store:
        with sh.Heap.create(size="64 MiB") as known_heap, sh.Heap.create(size="64 MiB") as read_heap:
            _side_by_side(keep, ops, known_heap, read_heap, store)


def test_a_long_thread_keeps_its_last_n_and_their_values(heap: sh.Heap) -> None:
    """Hundreds of puts with keep=N: each put leaves the newest N
    checkpoints, each reading back whole, and no value none of them names."""
    saver = SwarmSaver(heap, keep=7)
    cfg: dict[str, Any] = {"configurable": {"thread_id": "long", "checkpoint_ns": ""}}
    messages: list[str] = []
    for step in range(300):
        messages = [*messages, f"message {step}"][-20:]
        cp = empty_checkpoint()
        cp["id"] = f"{step:08d}"
        cp["channel_values"] = {"messages": messages, "step": step}
        cp["channel_versions"] = {"messages": f"{step + 1:08d}.m", "step": f"{step + 1:08d}.s"}
        cfg = saver.put(cfg, cp, {"source": "loop", "step": step}, dict(cp["channel_versions"]))
    got = list(saver.list({"configurable": {"thread_id": "long"}}))
    assert [t.metadata["step"] for t in got] == list(range(299, 292, -1))
    for t in got:
        step = t.metadata["step"]
        assert t.checkpoint["channel_values"]["step"] == step
        assert t.checkpoint["channel_values"]["messages"][-1] == f"message {step}"
    agent = saver._agent("long", create=False)
    assert sum(name.startswith("blob/") for name in agent.names()) == 2 * 7
    saver.delete_thread("long")
    heap.check()


def test_a_delta_on_a_version_another_writers_trim_dropped_is_put_whole(heap: sh.Heap) -> None:
    """One saver chose the version its put is a delta on; before the put
    went in, another writer's keep=1 trim dropped that version. The put's
    value is stored whole, and the thread reads back from a saver that
    remembers nothing."""
    first, other = SwarmSaver(heap), SwarmSaver(heap, keep=1)
    cfg: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    messages = [f"message {i}" for i in range(30)]

    def put(saver: SwarmSaver, step: int, upto: int) -> None:
        cp = empty_checkpoint()
        cp["id"] = f"{step:08d}"
        cp["channel_values"] = {"messages": messages[:upto]}
        cp["channel_versions"] = {"messages": f"{step:08d}.m"}
        saver.put(cfg, cp, {"source": "loop", "step": step}, {"messages": f"{step:08d}.m"})

    put(first, 1, 10)
    serialized = first._rec.serialized

    def the_other_trims_first(*args: Any) -> Any:
        first._rec.serialized = serialized  # type: ignore[method-assign]
        put(other, 2, 20)
        put(other, 3, 25)  # keep=1: version 1, the base first chose, is gone
        return serialized(*args)

    first._rec.serialized = the_other_trims_first  # type: ignore[method-assign]
    put(first, 4, 11)  # messages[:10] and one more: a delta on version 1
    got = SwarmSaver(heap).get_tuple(cfg)
    assert got is not None and got.checkpoint["channel_values"]["messages"] == messages[:11]
    first.delete_thread("t")
    heap.check()


def _fork_put(
    saver: SwarmSaver,
    cid: str,
    parent: str | None,
    values: dict[str, Any],
    versions: dict[str, str],
    new: Any,
) -> None:
    conf = {"thread_id": "t", "checkpoint_ns": ""}
    if parent is not None:
        conf["checkpoint_id"] = parent
    cp = empty_checkpoint()
    cp["id"] = cid
    cp["channel_values"] = dict(values)
    cp["channel_versions"] = dict(versions)
    saver.put({"configurable": conf}, cp, {"source": "fork", "step": 0}, {k: versions[k] for k in new})


def _read(heap: sh.Heap, cid: str) -> dict[str, Any]:
    got = SwarmSaver(heap).get_tuple(
        {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": cid}}
    )
    assert got is not None
    return dict(got.checkpoint["channel_values"])


@pytest.mark.parametrize("path", ["reading", "known"])
def test_a_fork_naming_a_version_a_trim_dropped_just_before_it_holds_the_value(
    heap: sh.Heap, path: str
) -> None:
    """A fork from an old checkpoint names that checkpoint's version of an
    unchanged channel; another writer's keep=2 trim dropped that version
    after this saver chose what to write and before its put went in. The
    fork reads back with the channel's value (it read back without it)."""
    writer = SwarmSaver(heap, keep=2) if path == "known" else _reading_saver(heap, 2)
    forker = SwarmSaver(heap)
    _fork_put(writer, "c1", None, {"a": "a1", "b": "b1"}, {"a": "1", "b": "1"}, "ab")
    _fork_put(writer, "c2", "c1", {"a": "a2", "b": "b2"}, {"a": "2", "b": "2"}, "ab")
    forker.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})  # its view: b/1 is there
    write = forker._put_entries

    def others_put_first(*args: Any) -> Any:
        forker._put_entries = write  # type: ignore[method-assign]
        _fork_put(writer, "c3", "c2", {"a": "a3", "b": "b3"}, {"a": "3", "b": "3"}, "ab")  # drops c1, b/1
        assert "blob//b/1" not in writer._agent("t", create=False).names()
        return write(*args)

    forker._put_entries = others_put_first  # type: ignore[method-assign]
    _fork_put(forker, "c4", "c1", {"a": "a4", "b": "b1"}, {"a": "4", "b": "1"}, "a")
    assert _read(heap, "c4") == {"a": "a4", "b": "b1"}
    writer.delete_thread("t")
    heap.check()


@pytest.mark.parametrize("path", ["reading", "known"])
def test_a_trim_keeps_a_version_a_fork_named_after_its_reading(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Another writer's fork names an old version after a keep=2 trim read
    the thread and before its removal went in: the removal does not go in
    on the changed thread (it dropped the version under the fork)."""
    writer = SwarmSaver(heap, keep=2) if path == "known" else _reading_saver(heap, 2)
    forker = SwarmSaver(heap)
    _fork_put(writer, "c1", None, {"a": "a1", "b": "b1"}, {"a": "1", "b": "1"}, "ab")
    _fork_put(writer, "c2", "c1", {"a": "a2", "b": "b2"}, {"a": "2", "b": "2"}, "ab")
    forker.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
    remove = sh.Agent._delete_present
    forked: list[bool] = []

    def fork_first(agent: Any, names: Any, expect_word: Any = None) -> Any:
        if not forked and "blob//b/1" in set(names):
            forked.append(True)  # the fork goes in between the trim's reading and its removal
            _fork_put(forker, "c9", "c1", {"a": "a9", "b": "b1"}, {"a": "9", "b": "1"}, "a")
        return remove(agent, names, expect_word)

    monkeypatch.setattr(sh.Agent, "_delete_present", fork_first)
    _fork_put(writer, "c3", "c2", {"a": "a3", "b": "b3"}, {"a": "3", "b": "3"}, "ab")
    assert forked
    assert _read(heap, "c9") == {"a": "a9", "b": "b1"}
    _fork_put(
        writer, "c5", "c3", {"a": "a5", "b": "b3"}, {"a": "5", "b": "3"}, "a"
    )  # the next trim bounds it
    agent = writer._agent("t", create=False)
    assert sorted(n for n in agent.names() if n.startswith("cp/")) == ["cp//c5", "cp//c9"]
    assert _read(heap, "c5") == {"a": "a5", "b": "b3"}
    assert _read(heap, "c9") == {"a": "a9", "b": "b1"}
    writer.delete_thread("t")
    heap.check()


def test_writers_in_processes_forking_one_thread_with_keep_read_back_right(heap_name: str) -> None:
    """Three processes put to one thread with keep=3, steps and forks from
    their older checkpoints mixed, pending writes, copies of the thread
    and deletes of runs, truly at once:
    every checkpoint any of them lists, in the thread or a copy, reads back
    with each channel's value at its version, and
    at the end the thread holds at most keep checkpoints past the last
    trim's and reads the same from a new saver."""
    import multiprocessing as mp

    from _workers import langgraph_forking_writer

    ctx = mp.get_context("spawn")
    with sh.Heap.create(heap_name, size="256 MiB") as heap:
        barrier = ctx.Manager().Barrier(3)
        with ctx.Pool(3) as pool:
            runs = [
                pool.apply_async(langgraph_forking_writer, (heap_name, who, 100 + who, 150, 3, barrier))
                for who in range(3)
            ]
            wrong = [line for run in runs for line in run.get(timeout=600)]
        assert wrong == []
        saver = SwarmSaver(heap, keep=3)
        listed = list(saver.list({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}))
        assert 0 < len(listed) <= 3 + 3  # a trim that met another writer's put leaves it to the next
        for got in listed:
            want = {c: f"{c}@{v}" for c, v in got.checkpoint["channel_versions"].items()}
            assert got.checkpoint["channel_values"] == want
        saver.delete_thread("t")
        heap.check()


def test_writers_in_processes_on_threads_that_go_to_the_store_and_back_read_back_right(
    heap_name: str, tmp_path: Any
) -> None:
    """Three processes step and fork 100 threads with keep=3 in an 8 MiB
    heap the threads outgrow several times, every thread not in use a
    candidate for the store (min_idle=0: with 0.02, a fast host touched
    every thread within 20 ms, none went, and puts raised PartitionFull),
    each thread offloaded by one process and restored by another, at once:
    every checkpoint read back holds each channel's value at its version,
    and nothing raised."""
    import multiprocessing as mp

    from _workers import langgraph_pressure_writer

    ctx = mp.get_context("spawn")
    url = f"sqlite:///{tmp_path / 'cold.db'}"
    with sh.Heap.create(heap_name, size="8 MiB") as heap:
        barrier = ctx.Manager().Barrier(3)
        with ctx.Pool(3) as pool:
            runs = [
                pool.apply_async(
                    langgraph_pressure_writer, (heap_name, who, 300 + who, 400, 100, url, barrier)
                )
                for who in range(3)
            ]
            wrong = [line for run in runs for line in run.get(timeout=600)]
        assert wrong == []
        with sh.open_store(url) as store:
            assert store.keys("swarmheap/agent/")  # the store was used: threads are there now
        heap.check()
