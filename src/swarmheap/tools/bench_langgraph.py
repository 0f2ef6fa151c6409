"""The `langgraph` scenario: N threads x M steps of a chat-like state, each
step appending a 60-word message to the thread's `messages` channel and
writing a checkpoint (`put`), then reading the thread's latest one back
(`get_tuple`), as LangGraph does around every super-step. Against
InMemorySaver and SqliteSaver (langgraph-checkpoint-sqlite) in the same run,
in lockstep: each step of each thread runs on the three savers one after
the other, with the same message, in an order drawn (seeded) for each step
and thread, so that each saver follows each other equally often. The
messages are LangChain's HumanMessage and AIMessage, as in a graph on
MessagesState (the targets are read on these); the same run with plain
dicts as messages, where serialisation is cheap and each saver's own
bookkeeping shows, is reported beside them.
Memory held after the run: arena bytes in use for SwarmSaver (context and
system, less what the heap held before), tracemalloc growth for
InMemorySaver (measured in a separate, untimed pass), and the database file
size (with its WAL) for SqliteSaver."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from swarmheap.heap import Heap
from swarmheap.tools.bench_tiers import _VOCAB
from swarmheap.tools.scenarios import median, target


def _message(rng: random.Random, step: int, thread: int, objects: bool) -> Any:
    content = " ".join(rng.choices(_VOCAB, k=60))
    if not objects:
        return {"role": ("user", "assistant")[step % 2], "content": content}
    from langchain_core.messages import AIMessage, HumanMessage

    return (HumanMessage, AIMessage)[step % 2](content=content, id=f"{thread}-{step}")


def _drive(
    saver: Any, threads: int, steps: int, seed: int = 5, objects: bool = True
) -> tuple[list[float], list[float]]:
    """Run the workload on ``saver``: (put times, get_tuple times) in ns."""
    return _drive_together({"saver": saver}, threads, steps, seed, objects)["saver"]


def _drive_together(
    savers: dict[str, Any], threads: int, steps: int, seed: int = 5, objects: bool = True
) -> dict[str, tuple[list[float], list[float]]]:
    """Run the workload on every saver in lockstep, each (step, thread) on
    one saver after the other with the same message: a slow spell of the
    machine falls on all of them, not on whichever ran then. The order is
    drawn for each step and thread: a saver that always ran first (or last)
    was measured a few percent off either way, cache and allocator state
    left by the one before; and one that follows SqliteSaver runs on a
    cache its fsync let go cold (a put that ran 38 us after a saver that
    does nothing ran 63 us after one that writes and fsyncs 20 KB). Turning
    the order by one each step made SwarmSaver follow SqliteSaver twice as
    often as InMemorySaver did. Returns each saver's (put times, get_tuple
    times) in ns."""
    from langgraph.checkpoint.base import empty_checkpoint

    rng = random.Random(seed)
    order = random.Random(seed + 1)  # its own stream: the messages do not depend on how many savers run
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in savers}
    state: dict[tuple[str, int], tuple[list[Any], Any, dict[str, Any]]] = {}
    for step in range(steps):
        for t in range(threads):
            message = _message(rng, step, t, objects)
            start = {"configurable": {"thread_id": f"t{t}", "checkpoint_ns": ""}}
            turn = list(savers.items())
            order.shuffle(turn)
            for name, saver in turn:
                messages, version, config = state.get((name, t), ([], None, start))
                messages = [*messages, message]
                version = saver.get_next_version(version, None)
                cp = empty_checkpoint()
                cp["id"] = f"{step:08d}-{t:06d}"
                cp["channel_values"] = {"messages": messages}
                cp["channel_versions"] = {"messages": version}
                metadata = {"source": "loop", "step": step, "parents": {}}
                t0 = time.perf_counter_ns()
                config = saver.put(config, cp, metadata, {"messages": version})
                t1 = time.perf_counter_ns()
                got = saver.get_tuple({"configurable": {"thread_id": f"t{t}", "checkpoint_ns": ""}})
                t2 = time.perf_counter_ns()
                if got is None or len(got.checkpoint["channel_values"]["messages"]) != step + 1:
                    raise AssertionError(f"{type(saver).__name__} returned a wrong checkpoint for thread {t}")
                times[name][0].append(t1 - t0)
                times[name][1].append(t2 - t1)
                state[(name, t)] = (messages, version, config)
    return times


@contextmanager
def _sqlite_saver(path: str) -> Iterator[Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    with SqliteSaver.from_conn_string(path) as saver:
        yield saver


def _file_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def langgraph(quick: bool) -> dict[str, Any]:
    from langgraph.checkpoint.memory import InMemorySaver

    from swarmheap.langgraph import SwarmSaver

    threads, steps = (20, 20) if quick else (100, 50)

    def in_use(heap: Heap) -> int:
        parts = heap.stats()["partitions"]
        return int(parts["context"]["in_use"] + parts["system"]["in_use"])

    def run_all(objects: bool) -> dict[str, Any]:
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "lg.db")
            with contextlib.ExitStack() as stack:
                heap = stack.enter_context(Heap.create(size="1 GiB"))
                before = in_use(heap)
                savers: dict[str, Any] = {"SwarmSaver": SwarmSaver(heap), "InMemorySaver": InMemorySaver()}
                if sqlite_skip is None:
                    savers["SqliteSaver"] = stack.enter_context(_sqlite_saver(path))
                times = _drive_together(savers, threads, steps, objects=objects)
                for name, (puts, gets) in times.items():
                    results[name] = {"put": median(puts), "get": median(gets)}
                results["SwarmSaver"]["held"] = in_use(heap) - before
            if sqlite_skip is None:  # once the saver closed: its WAL checkpointed, as before
                results["SqliteSaver"]["held"] = _file_bytes(path)
        tracemalloc.start()  # an untimed pass: tracing slows every allocation
        base = tracemalloc.get_traced_memory()[0]
        keep = InMemorySaver()
        _drive(keep, threads, steps, objects=objects)
        results["InMemorySaver"]["held"] = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del keep
        return results

    sqlite_skip = None
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401
    except ImportError:
        sqlite_skip = "langgraph-checkpoint-sqlite is not installed"
    results = run_all(objects=True)
    plain = run_all(objects=False)
    how = {"SwarmSaver": "arena in use", "InMemorySaver": "tracemalloc growth", "SqliteSaver": "file size"}
    rows = [
        [
            f"{name}{label}",
            f"{r['put'] / 1e3:.1f} µs",
            f"{r['get'] / 1e3:.1f} µs",
            f"{r['held'] / 1e6:.1f} MB ({how[name]})",
        ]
        for label, group in (("", results), (" (dict messages)", plain))
        for name, r in group.items()
    ]
    if sqlite_skip:
        rows.append(["SqliteSaver", sqlite_skip, "", ""])
    ours, mem = results["SwarmSaver"], results["InMemorySaver"]
    sql = results.get("SqliteSaver")
    fastest_get = min(r["get"] for name, r in results.items() if name != "SwarmSaver")
    checks: list[tuple[str, float, Callable[[float], bool], str]] = [
        ("put no slower than InMemorySaver", ours["put"] / mem["put"], lambda r: r <= 1, "{:.2f}x its time"),
        (
            "get_tuple no slower than the faster peer",
            ours["get"] / fastest_get,
            lambda r: r <= 1.0,
            "{:.2f}x its time",
        ),
        ("memory after <= 0.2x InMemorySaver's", ours["held"] / mem["held"], lambda r: r <= 0.2, "{:.2f}x"),
    ]
    if sql:
        checks.insert(
            1, ("put >= 5x faster than SqliteSaver", sql["put"] / ours["put"], lambda r: r >= 5, "{:.1f}x")
        )
    return {
        "name": "langgraph",
        "what": f"{threads} threads x {steps} steps of a chat-like state "
        "(a 60-word LangChain message per step)",
        "columns": ["saver", "put median", "get_tuple median", "held after the run"],
        "rows": rows,
        "notes": [(__doc__ or "").split("\n\n")[0].replace("\n", " ")],
        "targets": [target(text, fmt.format(value), ok(value)) for text, value, ok, fmt in checks],
        "data": {**results, "dict messages": plain},
    }
