"""`swarmheap demo`: a swarm of worker processes on one named heap.

Workers spawn agents of a few kinds (sized by their kind's usage model once
it is confident), put named entries, allocate context, keep a pool of small
note agents alive (dense agents: they share nursery pages), offload their
idle memory agent to SQLite every few rounds (its next put restores it),
hand buffers to each other through channels in `comm` (the block moves, no
copy), and complete their agents. One worker is killed partway; a sweep
reclaims what it left. That worker also ran a LangGraph thread whose
checkpoints SwarmSaver keeps in the arena (with the `langgraph` extra): the
parent resumes it from its last checkpoint. (One worker's, not each one's:
importing LangGraph costs each process 0.7 s of CPU, and on two cores four
of them took the demo from 3 to 7 s.) The parent shows occupancy while
they run and prints a report at the end. The heap is unlinked on exit,
Ctrl-C included.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import operator
import os
import random
import signal
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Annotated, Any, TypedDict, cast

from swarmheap import offload, offload_entries
from swarmheap._core import PARTITIONS
from swarmheap._extras import available
from swarmheap.channels import Channel
from swarmheap.errors import PartitionFull
from swarmheap.heap import Heap
from swarmheap.sizes import class_label, format_size
from swarmheap.stores import SQLiteStore

KINDS = ("researcher", "planner", "critic")
MEMORY_KIND = "memory"
NOTE_KIND = "note"
ARCHIVE_KIND = "archive"
NOTES_PER_ROUND = 8  # small agents a worker spawns each round, next to its big one
NOTE_POOL = 1200  # notes a worker keeps alive at once (dense agents: they share nursery pages)
ARCHIVE_EVERY = 5  # rounds between a worker's archive agents: idle once written, kept to the end
ARCHIVE_BYTES = 384 * 1024  # more of them than `context` holds: the offload policy makes room
PRESSURE_HIGH, PRESSURE_LOW = 0.85, 0.6  # the policy's marks, fractions of `context`
SAMPLE_EVERY = 0.05  # seconds between occupancy samples for the plot
SHOW_EVERY = 0.5  # seconds between occupancy lines on the terminal
MEMORY_WINDOW = 32  # summaries a worker's memory agent keeps
OFFLOAD_EVERY = 10  # rounds between offloads of a worker's memory agent
DIGEST = 16  # bytes of a hand-off's checksum, ahead of its payload
HANDOFF_LEASE = 60.0  # a hand-off a killed worker received and never freed: a sweep takes it back
GRAPH_TURNS = 10  # turns of the killed worker's LangGraph thread, were it to run all its rounds
GRAPH_KIND = "langgraph"  # SwarmSaver's threads are agents of this kind


class GraphState(TypedDict):
    """The demo graph's state: a log that each node appends to (LangGraph's reducer)."""

    log: Annotated[list[str], operator.add]


@dataclass
class WorkerReport:
    worker: int
    agents: int = 0
    recycled_bytes: int = 0
    sent: int = 0
    received: int = 0
    bytes_moved: int = 0
    errors: int = 0
    allocation_failures: int = 0  # allocations a full partition refused
    behind: int = 0  # hand-offs a neighbour's full channel turned away (its timeout)
    offloads: int = 0  # the memory agent written to the store and its pages given back
    restores: int = 0  # ... and brought back by the next touch
    offloaded_bytes: int = 0  # what offloading it freed in the heap
    blob_bytes: int = 0  # what its snapshots took in the store
    sized: int = 0  # big agents spawned with their kind's P90 reserved (its prediction confident)
    reserved_bytes: int = 0  # what those reservations held at spawn
    notes: int = 0  # small agents spawned
    note_bytes: int = 0  # what they held, in all
    archives: int = 0  # idle agents written once and read back at the end
    archive_errors: int = 0  # read back different from what was written
    pressure_offloads: int = 0  # idle agents the offload policy moved out to make room (some more than once)
    pressure_bytes: int = 0  # what those offloads freed in the heap
    pressure_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class DemoReport:
    workers: int
    agents_run: int = 0
    bytes_moved_zero_copy: int = 0
    buffers_handed_over: int = 0
    reclaimed_by_recycle: int = 0
    reclaimed_by_sweep: int = 0
    agents_swept: int = 0
    killed_worker: int = 0
    offloads: int = 0
    offloaded_bytes: int = 0
    blob_bytes: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    allocation_failures: int = 0
    behind: int = 0
    handover_errors: int = 0
    workers_failed: list[int] = field(default_factory=list)
    check_passed: bool = False
    check_message: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    sized: int = 0
    reserved_bytes: int = 0
    notes: int = 0  # small agents the workers spawned (each keeps its last NOTE_POOL alive)
    note_bytes: int = 0
    archives: int = 0
    archive_errors: int = 0
    pressure_offloads: int = 0
    pressure_bytes: int = 0
    pressure_kinds: dict[str, int] = field(default_factory=dict)
    stayed_offloaded: int = 0  # the killed worker's agents still in the store at the end (restorable)
    agents_per_worker: int = 0  # rounds: one big agent each
    peak_agents_live: int = 0  # agents holding a slot at once, at the busiest sample
    context_held_per_agent: float = 0.0  # context bytes in pages per live agent then (dense agents)
    context_utilization: float = 0.0  # context bytes in use over bytes in pages then
    # kind -> (samples, P90 context peak, its largest block size by share: 0 for runs of whole pages)
    predicted: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    graph: str = ""  # why there was no LangGraph part ("" if there was)
    graph_turns: int = 0  # turns the killed worker's LangGraph thread ran (three log entries each)
    graph_checkpoints: int = 0  # the thread's checkpoints, all kept
    graph_bytes: int = 0  # what its agent holds in the arena
    resumed_from: int = 0  # log entries of the killed worker's thread, as its last checkpoint held them
    resumed_to: int = 0  # ... after one more turn, run by the parent
    resumed_intact: bool = False  # the resumed thread's log begins with what the killed worker wrote


# WorkerReport counts that DemoReport sums under the same name
_SUMMED = (
    "offloads",
    "offloaded_bytes",
    "blob_bytes",
    "sized",
    "reserved_bytes",
    "notes",
    "note_bytes",
    "archives",
    "archive_errors",
    "pressure_offloads",
    "pressure_bytes",
    "behind",
    "allocation_failures",
)


# Every channel is a one-writer pipe, never a multiprocessing.Queue: a Queue
# shares a cross-process lock between its writers, and the worker this demo
# SIGKILLs could die holding it and wedge everyone else.


def _worker(
    name: str,
    index: int,
    rounds: int,
    inbox_name: str,
    outbox_name: str,
    progress: Connection,
    victim: bool,
) -> None:
    # Ctrl-C reaches the whole process group: the parent alone answers it
    # (it stops the workers), so the workers print no tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    heap = Heap.attach(name)
    heap.set_sweep_thresholds(0, 0, 0)  # the parent sweeps
    inbox, outbox = heap.channel(inbox_name), heap.channel(outbox_name)
    rng = random.Random(index)
    report = WorkerReport(index)
    store = SQLiteStore(os.path.join(tempfile.gettempdir(), f"{name}-offload.db"))
    heap.on("restore", lambda *_: setattr(report, "restores", report.restores + 1))
    heap.on("offload", lambda _id, kind, stats: _count_pressure(report, kind, stats))
    # idle agents go to the store when `context` passes the high mark (an
    # allocation that would fail makes room first), back on their next touch
    heap.set_offload_policy(store, high=PRESSURE_HIGH, low=PRESSURE_LOW, min_idle=0.2)
    try:
        # a long-lived memory agent per worker, next to the short-lived ones
        memory = heap.spawn(MEMORY_KIND)
        report.agents += 1
        notes: deque[Any] = deque()  # small agents, oldest first
        archives: list[tuple[Any, bytes]] = []  # (agent, digest of what it holds)
        graph = _graph(heap) if victim else None
        turn_every = max(1, rounds // GRAPH_TURNS)
        for round_no in range(rounds):
            if graph is not None and round_no % turn_every == 0:
                # a turn of this worker's LangGraph thread: its checkpoints go
                # into the arena, where any process can resume the thread
                graph.invoke({"log": [f"turn {round_no}"]}, _thread_config(index))
            _take_notes(heap, rng, notes, report)
            if round_no % ARCHIVE_EVERY == 0:
                archives.append(_archive(heap, rng, report))
            kind = KINDS[(index + round_no) % len(KINDS)]
            agent = heap.spawn(kind)  # its P90 reserved once its kind's usage model is confident
            report.agents += 1
            reserved = agent.stats()["reserved"]["context"]
            report.sized += reserved > 0
            report.reserved_bytes += reserved
            try:
                agent.put("prompt", f"{kind} {index}.{round_no}: ".encode() * rng.randint(40, 4000))
                for _ in range(rng.randint(20, 200)):
                    agent.alloc(rng.choice((64, 512, 4096, 32768, 200_000)))[:8] = b"scratch!"
                memory.put(f"summary-{round_no}", rng.randbytes(rng.randint(1000, 50_000)))
                if round_no >= MEMORY_WINDOW:
                    memory.delete(f"summary-{round_no - MEMORY_WINDOW}")
            except PartitionFull:
                report.allocation_failures += 1  # a runtime would back off; the demo carries on
            # hand a buffer to a neighbour through its channel in `comm`: the
            # block itself moves (send_block), its digest in its first bytes
            size = rng.randint(1024, 256 * 1024)
            try:
                blk = heap.alloc(DIGEST + size, "comm", lease=HANDOFF_LEASE)
                payload = rng.randbytes(size)
                blk[DIGEST:] = payload
                blk[:DIGEST] = hashlib.blake2b(payload, digest_size=DIGEST).digest()
                report.received += _drain(heap, inbox, report)  # room for a neighbour before we wait on ours
                outbox.send_block(blk, timeout=0.0)
                report.sent += 1
            except PartitionFull:
                report.allocation_failures += 1
            except TimeoutError:  # a neighbour that fell behind: its channel is full
                report.behind += 1
            if victim and round_no == rounds // 2:
                # wait for an answer that never comes: the parent kills this
                # process here, with its agents live
                progress.send(("halfway", index))
                progress.recv()
            report.recycled_bytes += agent.complete()["total_bytes"]
            report.received += _drain(heap, inbox, report)
            if round_no % OFFLOAD_EVERY == OFFLOAD_EVERY - 1:
                # the memory agent idles between rounds: to the store with it;
                # its next put() brings it back, whichever process touches it
                moved = memory.offload(store)
                report.offloads += 1
                report.offloaded_bytes += moved["total_bytes"]
                report.blob_bytes += moved["blob_bytes"]
        report.recycled_bytes += memory.complete()["total_bytes"]
        while notes:
            report.recycled_bytes += notes.popleft().complete()["total_bytes"]
        for archive, digest in archives:  # a touch restores one the policy offloaded
            with archive.get("state") as view:
                report.archive_errors += hashlib.blake2b(view, digest_size=DIGEST).digest() != digest
            report.recycled_bytes += archive.complete()["total_bytes"]
        progress.send(("done", index, asdict(report)))
    finally:
        store.close()
        heap.close()


def _graph(heap: Heap) -> Any:
    """A two-node LangGraph graph (plan, then act) checkpointed by SwarmSaver
    on ``heap``; None without the `langgraph` extra."""
    if not available("langgraph.graph"):
        return None
    from langgraph.graph import END, START, StateGraph

    from swarmheap.langgraph import SwarmSaver

    graph = StateGraph(GraphState)
    graph.add_node("plan", lambda state: {"log": [f"plan after {len(state['log'])}"]})
    graph.add_node("act", lambda state: {"log": [f"act after {len(state['log'])}"]})
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "act")
    graph.add_edge("act", END)
    return graph.compile(checkpointer=SwarmSaver(heap, kind=GRAPH_KIND))


def _thread_config(worker: int) -> dict[str, Any]:
    return {"configurable": {"thread_id": f"worker-{worker}"}}


def _resume_graph(heap: Heap, graph: Any, report: DemoReport) -> None:
    """Resume the killed worker's LangGraph thread here (``graph``, from
    _graph), from the last checkpoint it wrote into the arena, and count
    what the thread holds."""
    if graph is None:
        report.graph = "the langgraph extra is not installed (pip install 'swarmheap[langgraph]')"
        return
    config = _thread_config(report.killed_worker)
    saver = graph.checkpointer
    report.graph_checkpoints = len(list(saver.list(config)))
    before = list(graph.get_state(config).values.get("log", []))
    report.graph_turns = len(before) // 3  # its input, plan and act
    after = graph.invoke({"log": ["resumed by the parent"]}, config)["log"]
    report.resumed_from, report.resumed_to = len(before), len(after)
    report.resumed_intact = bool(before) and after[: len(before)] == before
    report.graph_bytes = sum(o["total_bytes"] for o in heap.stats()["owners"] if o["kind"] == GRAPH_KIND)
    saver.delete_thread(config["configurable"]["thread_id"])  # its memory comes back in one recycle


def _take_notes(heap: Heap, rng: random.Random, notes: deque[Any], report: WorkerReport) -> None:
    """Spawn this round's small agents (a note and a few small blocks, about
    2 KB: blocks an agent's own page per size class would leave 3 % used)
    and complete the oldest beyond the pool."""
    for _ in range(NOTES_PER_ROUND):
        note = heap.spawn(NOTE_KIND)
        note.put("note", rng.randbytes(rng.randint(600, 1500)))
        for size in rng.sample((24, 64, 200, 512), 3):
            note.alloc(size)
        notes.append(note)
        report.agents += 1
        report.notes += 1
        report.note_bytes += note.stats()["total_bytes"]
    while len(notes) > NOTE_POOL:
        report.recycled_bytes += notes.popleft().complete()["total_bytes"]


def _archive(heap: Heap, rng: random.Random, report: WorkerReport) -> tuple[Any, bytes]:
    """An agent that writes its state once and idles to the end: what the
    offload policy moves out when `context` fills up."""
    state = rng.randbytes(ARCHIVE_BYTES)
    agent = heap.spawn(ARCHIVE_KIND)
    agent.put("state", state)
    report.agents += 1
    report.archives += 1
    return agent, hashlib.blake2b(state, digest_size=DIGEST).digest()


def _count_pressure(report: WorkerReport, kind: str, stats: dict[str, Any]) -> None:
    if kind != MEMORY_KIND:  # the memory agent's own offloads are counted where they are made
        report.pressure_offloads += 1
        report.pressure_bytes += stats["total_bytes"]
        report.pressure_kinds[kind] = report.pressure_kinds.get(kind, 0) + 1


def _drain(heap: Heap, inbox: Channel, report: WorkerReport) -> int:
    got = 0
    while (blk := inbox.try_recv()) is not None:
        with memoryview(blk) as view:
            if hashlib.blake2b(view[DIGEST:], digest_size=DIGEST).digest() != view[:DIGEST]:
                report.errors += 1
        report.bytes_moved += len(blk) - DIGEST
        blk.free()
        got += 1
    return got


def _sweep(heap: Heap, report: DemoReport, start: float, quiet: bool) -> None:
    swept = heap.collect(2)
    report.agents_swept += swept.reclaimed_agents
    report.reclaimed_by_sweep += swept.reclaimed_bytes
    if swept.reclaimed_agents:
        report.events.append({"t": round(time.monotonic() - start, 3), "event": "swept"})
        if not quiet:
            print(
                f"  sweep reclaimed {format_size(swept.reclaimed_bytes)} in {swept.reclaimed_agents} agents "
                "of the dead worker",
                flush=True,
            )


def _sample(heap: Heap, start: float) -> dict[str, Any]:
    parts, agents_live = heap._usage()  # stats() builds a dict per agent: thousands, twenty times a second
    return {
        "t": round(time.monotonic() - start, 3),
        **{p: v["in_use"] / v["capacity"] for p, v in parts.items()},
        "agents_live": agents_live,
        "context_held": parts["context"]["held"],
        "context_utilization": parts["context"]["utilization"],
    }


def _show(sample: dict[str, Any]) -> None:
    bars = "  ".join(f"{p[:4]} {sample[p] * 100:5.1f}%" for p in PARTITIONS)
    print(f"  t={sample['t']:6.2f}s  {bars}", flush=True)


def run_demo(
    workers: int = 4,
    rounds: int = 600,
    size: str = "256 MiB",
    plot: str | None = None,
    quiet: bool = False,
    timeout: float = 600.0,
) -> DemoReport:
    """Run the swarm and return its report; the heap is gone when this returns."""
    if plot:
        from swarmheap._extras import require

        require("matplotlib.pyplot", "bench")  # fail before the run, not after it
    if workers < 2:
        raise ValueError("the demo needs at least 2 workers (one of them is killed)")
    name = f"swarmheap-demo-{os.getpid()}"
    report = DemoReport(workers, agents_per_worker=rounds)
    ctx = mp.get_context("spawn")
    start = time.monotonic()
    procs: list[Any] = []
    heap = Heap.create(name, size=size)
    heap.set_sweep_thresholds(0, 0, 0)
    try:
        # worker i sends to worker i+1; the parent keeps every read end to
        # drain what a finished or killed worker never took
        links = [heap.channel(f"inbox-{i}", 256) for i in range(workers)]
        reports = [ctx.Pipe() for _ in range(workers)]
        victim = 0
        procs = [
            ctx.Process(
                target=_worker,
                daemon=True,
                args=(
                    name,
                    i,
                    rounds,
                    f"inbox-{i}",
                    f"inbox-{(i + 1) % workers}",
                    reports[i][1],
                    i == victim,
                ),
            )
            for i in range(workers)
        ]
        for p in procs:
            p.start()
        for _, child_end in reports:
            child_end.close()  # so a dead worker's report pipe reads as EOF
        graph = _graph(heap)  # LangGraph's import while the workers start, not after them
        if not quiet:
            print(f"swarmheap demo: {workers} workers on heap {name!r} ({size})")
        finished: dict[int, dict[str, Any]] = {}
        waiting: dict[Connection, int] = {reports[i][0]: i for i in range(workers)}
        deadline = start + timeout
        leftover = WorkerReport(-1)
        stood_in: list[int] = []
        shown = -SHOW_EVERY
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo's workers did not finish within {timeout:.0f} s")
            for ready in wait(list(waiting), timeout=SAMPLE_EVERY):
                conn = cast(Connection, ready)
                i = waiting[conn]
                try:
                    msg = conn.recv()
                except EOFError:
                    del waiting[conn]
                    if i == victim and i not in finished:
                        # the others are still running: sweeping now shows the
                        # dead worker's agents coming back while they work
                        procs[i].join()
                        _sweep(heap, report, start, quiet)
                        stood_in.append(i)
                    continue
                if msg[0] == "halfway" and i == victim and procs[i].is_alive():
                    os.kill(cast(int, procs[i].pid), signal.SIGKILL)
                    report.killed_worker = victim
                    report.events.append({"t": round(time.monotonic() - start, 3), "event": "killed"})
                    if not quiet:
                        print(f"  killed worker {victim} (pid {procs[i].pid}) halfway through", flush=True)
                elif msg[0] == "done":
                    finished[i] = msg[2]
                    stood_in.append(i)
            for i in stood_in:
                _drain(heap, links[i], leftover)  # a finished or dead worker no longer reads its inbox
            if not report.samples or time.monotonic() - start - report.samples[-1]["t"] >= SAMPLE_EVERY:
                sample = _sample(heap, start)
                report.samples.append(sample)
                if not quiet and sample["t"] - shown >= SHOW_EVERY:
                    shown = sample["t"]
                    _show(sample)
        for p in procs:
            p.join()
        # what arrived after its reader finished, or was killed
        for inbox in links:
            _drain(heap, inbox, leftover)
        _sweep(heap, report, start, quiet=True)
        _resume_graph(heap, graph, report)
        # the killed worker's agents the policy had offloaded: a dead creator
        # does not make them garbage, any process of the heap restores them
        report.stayed_offloaded = len(offload_entries.offloaded(heap))
        for w in finished.values():
            report.agents_run += w["agents"]
            report.reclaimed_by_recycle += w["recycled_bytes"]
            report.bytes_moved_zero_copy += w["bytes_moved"]
            report.buffers_handed_over += w["received"]
            for count in _SUMMED:  # the counts that keep their name from worker to report
                setattr(report, count, getattr(report, count) + w[count])
            for kind, n in w["pressure_kinds"].items():
                report.pressure_kinds[kind] = report.pressure_kinds.get(kind, 0) + n
            report.handover_errors += w["errors"]
        report.workers_failed = [i for i in range(workers) if i != victim and i not in finished]
        report.handover_errors += leftover.errors
        report.bytes_moved_zero_copy += leftover.bytes_moved
        report.buffers_handed_over += leftover.received
        report.agents_run += report.agents_swept
        try:
            heap.check()
            report.check_passed = True
            report.check_message = "ok"
        except Exception as exc:
            report.check_message = str(exc)
        report.samples.append(_sample(heap, start))
        for kind in (*KINDS, NOTE_KIND):  # what the usage model learned from every worker's agents
            p = heap.predict(kind)
            top = p.top_classes(1)
            report.predicted[kind] = (p.samples, p.peak("context", 0.9) or 0, top[0] if top else -1)
        busiest = max(report.samples, key=lambda s: s["agents_live"])
        report.peak_agents_live = busiest["agents_live"]
        report.context_held_per_agent = busiest["context_held"] / max(busiest["agents_live"], 1)
        report.context_utilization = busiest["context_utilization"]
        report.seconds = time.monotonic() - start
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        heap.close()
        try:
            Heap.attach(name).unlink()
        except Exception:
            pass
        for suffix in ("", "-wal", "-shm"):  # the workers' offload store
            try:
                os.unlink(os.path.join(tempfile.gettempdir(), f"{name}-offload.db{suffix}"))
            except FileNotFoundError:
                pass
    if plot:
        _plot(report, plot)
    return report


def succeeded(report: DemoReport) -> bool:
    """Whether the run showed what it should: a consistent heap, no lost or corrupted handover."""
    return (
        report.check_passed
        and not report.handover_errors
        and not report.archive_errors
        and not report.workers_failed
        and (bool(report.graph) or report.resumed_intact)
    )


def print_report(report: DemoReport) -> None:
    print()
    print("swarmheap demo report")
    codec = offload.default_codec().replace("none", "uncompressed")
    by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(report.pressure_kinds.items()))
    by_kind = f" ({by_kind})" if by_kind else ""
    rows = [
        ("workers (one killed halfway)", f"{report.workers} (worker {report.killed_worker})"),
        ("agents run (survivors and swept)", str(report.agents_run)),
        (
            "agents live at the busiest moment",
            f"{report.peak_agents_live:,}: {format_size(int(report.context_held_per_agent))} of context held "
            f"per agent, {report.context_utilization:.0%} of it in use",
        ),
        (
            "small agents (notes) the survivors spawned",
            f"{report.notes:,}, about {format_size(report.note_bytes // max(report.notes, 1))} each; "
            f"each worker keeps its last {NOTE_POOL:,} alive, in nursery pages they share",
        ),
        ("buffers handed over (channels, zero-copy)", str(report.buffers_handed_over)),
        (
            "memory agents offloaded (SQLite)",
            f"{report.offloads} times: {format_size(report.offloaded_bytes)} freed in the heap, "
            f"{format_size(report.blob_bytes)} in the store ({codec}), restored on next touch",
        ),
        (
            "offloaded under pressure (policy)",
            f"{report.pressure_offloads} idle agents{by_kind}, {format_size(report.pressure_bytes)} freed "
            f"when context passed {PRESSURE_HIGH:.0%}; "
            f"{report.archives} archives of {format_size(ARCHIVE_BYTES)}, "
            f"{report.archives - report.archive_errors} read back intact",
        ),
        ("bytes moved zero-copy", format_size(report.bytes_moved_zero_copy)),
        (
            "killed worker's LangGraph thread (SwarmSaver)",
            report.graph
            or f"{report.graph_turns} turns, {report.graph_checkpoints} checkpoints in the arena "
            f"({format_size(report.graph_bytes)}); resumed by the parent from its last checkpoint "
            f"({report.resumed_from} log entries, {'intact' if report.resumed_intact else 'NOT INTACT'}), "
            f"{report.resumed_to} after one more turn; then deleted, in one recycle",
        ),
        (
            "spawns sized by prediction",
            f"{report.sized} of the survivors' {report.workers - 1} x {report.agents_per_worker} big agents, "
            f"{format_size(report.reserved_bytes // max(report.sized, 1))} reserved each at spawn "
            "(its kind's P90)",
        ),
        (
            "usage model (P90 context peak, top class)",
            ", ".join(
                f"{k} {format_size(p90)} ({n} agents, {class_label(top) if top >= 0 else 'no mix yet'})"
                for k, (n, p90, top) in report.predicted.items()
            ),
        ),
        ("reclaimed by complete() (recycle)", format_size(report.reclaimed_by_recycle)),
        (
            "reclaimed by sweep (dead worker)",
            f"{format_size(report.reclaimed_by_sweep)} in {report.agents_swept} agents; "
            f"{report.stayed_offloaded} of its agents "
            f"{'stays' if report.stayed_offloaded == 1 else 'stay'} offloaded, restorable by any process",
        ),
        ("allocations refused (PartitionFull)", str(report.allocation_failures)),
        ("hand-offs turned away (a neighbour's channel full)", str(report.behind)),
        ("handovers that failed to verify", str(report.handover_errors)),
        ("workers that failed", ", ".join(map(str, report.workers_failed)) or "none"),
        ("check()", "passed" if report.check_passed else f"FAILED: {report.check_message}"),
        ("time", f"{report.seconds:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _plot(report: DemoReport, path: str) -> None:
    from swarmheap._extras import require

    plt = require("matplotlib.pyplot", "bench")
    fig, ax = plt.subplots(figsize=(8, 4))
    ts = [s["t"] for s in report.samples]
    for part in PARTITIONS:
        ax.plot(ts, [s[part] * 100 for s in report.samples], label=part)
    for n, event in enumerate(report.events):
        ax.axvline(event["t"], color="grey", linestyle=":")
        ax.annotate(
            f" {event['event']}",
            (event["t"], 0.95 - 0.06 * n),
            xycoords=("data", "axes fraction"),
            color="grey",
        )
    ax.set_xlabel("seconds")
    ax.set_ylabel("in use, % of partition")
    ax.set_title(f"swarmheap demo: {report.workers} workers, worker {report.killed_worker} killed halfway")
    live = ax.twinx()  # the dense agents: thousands of small ones in a few percent of context
    counts = [s["agents_live"] for s in report.samples]
    live.plot(ts, counts, color="black", linestyle="--", label="agents live")
    live.set_ylabel("agents live")
    live.set_ylim(bottom=0)
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = live.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
