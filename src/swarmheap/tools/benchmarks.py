"""The benchmark workloads, each against the peer a user would otherwise pick.

One definition serves both `swarmheap bench` (this module's `main`) and the
pytest-benchmark suite in `bench/`. A workload is a set of cases doing the
same job: ours first, then the peers. Every case's `run` is timed alone; its
`setup` and `teardown` are not. Cases run alternately within each repeat (the
order flips every repeat), so drift of the machine lands on all of them.
Between a case's setup and its timed run the interpreter settles (a few
timer reads and a short loop, touching nothing of the case), so a run of a
few microseconds after a setup that streamed megabytes does not time the
interpreter's own code coming back into cache.
Times are per operation; a ratio is our median time over the peer's, so
below 1.0 means faster than the peer.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from swarmheap import _core
from swarmheap.handle import Handle
from swarmheap.heap import Heap
from swarmheap.sizes import format_size
from swarmheap.tools import scenarios
from swarmheap.tools.report import table

__all__ = ["Case", "Env", "Workload", "main", "measure", "workloads"]

SCHEMA_VERSION = 1
PAIR_SIZES = (64, 1024, 16 * 1024, 256 * 1024, 1024 * 1024)


def _size_label(size: int) -> str:
    """A size as a workload name part: "64B", "1.0MiB"."""
    return format_size(size).replace(" ", "")


def _nothing(state: Any) -> None:
    return None


@dataclass(frozen=True)
class Case:
    """One way of doing a workload's job: `run(state)` does `ops` operations."""

    label: str
    run: Callable[[Any], None]
    ops: int
    setup: Callable[[], Any] = lambda: None
    teardown: Callable[[Any], None] = _nothing


@dataclass(frozen=True)
class Target:
    """What the workload should show: `ratio_max` (our time over the first
    peer's), `speedup_min` (the first peer's time over ours) or `ns_max`."""

    kind: str
    value: float

    def met(self, ours_ns: float, peer_ns: float | None) -> bool:
        if self.kind == "ns_max":
            return ours_ns <= self.value
        assert peer_ns is not None
        if self.kind == "ratio_max":
            return ours_ns / peer_ns <= self.value
        return peer_ns / ours_ns >= self.value

    def __str__(self) -> str:
        if self.kind == "ns_max":
            return f"<= {self.value:g} ns per op"
        if self.kind == "ratio_max":
            return f"<= {self.value:g}x the first peer's time"
        return f">= {self.value:g}x faster than the first peer"


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    cases: tuple[Case, ...]  # ours first
    block_size: int | None = None
    target: Target | None = None


class Env:
    """What the workloads share: a named heap other processes attach to, and
    helper processes started on first use. Close it to unlink the heap."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.name = f"swarmheap-bench-{os.getpid()}"
        self.heap = Heap.create(self.name, size="640 MiB")
        self.heap.set_sweep_thresholds(0, 0, 0)  # sweeps are timed where asked for, not mid-workload
        self._children: list[Any] = []
        self._handoff: tuple[Connection, Any, Any] | None = None
        self._sweep_heaps: dict[int, Heap] = {}

    def handoff_channels(self) -> tuple[Connection, Any, Any]:
        """(pipe to a process that resolves handles, Queue in, Queue of acks)."""
        if self._handoff is None:
            ctx = mp.get_context("spawn")
            ours, theirs = ctx.Pipe()
            q_in, q_ack = ctx.Queue(), ctx.Queue()
            for target, args in ((_resolve_child, (self.name, theirs)), (_queue_child, (q_in, q_ack))):
                p = ctx.Process(target=target, args=args, daemon=True)
                p.start()
                self._children.append(p)
            ours.send(None)
            ours.recv()  # the child attached
            self._handoff = (ours, q_in, q_ack)
        return self._handoff

    def sweep_heap(self, old_agents: int) -> Heap:
        """A private heap holding `old_agents` live agents, all in generation 2."""
        if old_agents not in self._sweep_heaps:
            # default pages and shares: agents' entry indexes share the system pages
            heap = Heap.create(size="256 MiB", max_owners=old_agents + 1024)
            heap.set_sweep_thresholds(0, 0, 0)
            for _ in range(old_agents):
                heap.spawn("old")
            heap.collect(2)
            heap.collect(2)  # young -> middle -> old
            self._sweep_heaps[old_agents] = heap
        return self._sweep_heaps[old_agents]

    def close(self) -> None:
        if self._handoff is not None:
            self._handoff[0].send("stop")
            self._handoff[1].put(None)
        for p in self._children:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        for heap in self._sweep_heaps.values():
            heap.close()
        self.heap.close()
        self.heap.unlink()

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve_child(name: str, conn: Connection) -> None:
    heap = Heap.attach(name)
    conn.recv()
    conn.send("attached")
    while (msg := conn.recv()) != "stop":
        blk = heap.resolve(Handle(*msg))
        with memoryview(blk) as view:
            ok = view[0] == view[-1] == 7  # the receiver reads the bytes where they lie
        blk.free()
        conn.send(ok)
    heap.close()


def _queue_child(q_in: Any, q_ack: Any) -> None:
    while (payload := q_in.get()) is not None:
        q_ack.put(payload[0] == payload[-1] == 7)


def _libc() -> Any:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _pairs(env: Env, sizes: list[int], name: str, what: str, block_size: int | None) -> Workload:
    heap = env.heap
    libc = _libc()
    empty, uint8 = np.empty, np.uint8

    def ours(_: Any) -> None:
        alloc = heap.alloc
        for s in sizes:
            alloc(s).free()

    def with_bytearray(_: Any) -> None:
        for s in sizes:
            bytearray(s)

    def with_numpy(_: Any) -> None:
        for s in sizes:
            empty(s, uint8)

    def with_malloc(_: Any) -> None:
        malloc, free = libc.malloc, libc.free
        for s in sizes:
            free(malloc(s))

    n = len(sizes)
    return Workload(
        name,
        what,
        (
            Case("swarmheap", ours, n),
            Case("bytearray", with_bytearray, n),
            Case("numpy.empty", with_numpy, n),
            Case("ctypes malloc", with_malloc, n),
        ),
        block_size=block_size,
        target=Target("ratio_max", 1.0) if block_size == 64 else None,
    )


def _alloc_many(env: Env) -> Workload:
    n = 10_000
    heap = env.heap

    def ours(_: Any) -> None:
        heap.free_many(heap.alloc_many(n, 64))

    def peer(_: Any) -> None:
        [bytearray(64) for _ in range(n)]

    return Workload(
        "alloc_many_64B",
        f"alloc_many({n}, 64) + free_many, per block, against a list of {n} bytearray(64)",
        (Case("swarmheap", ours, n), Case("bytearray list", peer, n)),
        target=Target("ns_max", 20),
    )


def _shared_block(env: Env) -> Workload:
    from multiprocessing import shared_memory

    heap = env.heap
    n_ours, n_peer = (2000, 100) if env.quick else (20_000, 500)

    def ours(_: Any) -> None:
        alloc = heap.alloc  # as the pairs workloads do: the loop measures the calls, not the lookup
        for _ in range(n_ours):
            alloc(4096, "shared").free()

    def peer(_: Any) -> None:
        for _ in range(n_peer):
            shm = shared_memory.SharedMemory(create=True, size=4096)
            shm.close()
            shm.unlink()

    return Workload(
        "shared_4KiB",
        "a 4 KiB block other processes can map: heap.alloc(4096, 'shared') + free, "
        "against SharedMemory create + close + unlink",
        (Case("swarmheap", ours, n_ours), Case("SharedMemory", peer, n_peer)),
        target=Target("speedup_min", 500),
    )


def _agent_churn(env: Env) -> Workload:
    heap = env.heap
    n = 200 if env.quick else 1000
    note = b"x" * 200

    def ours(_: Any) -> None:
        for _ in range(n):
            agent = heap.spawn("churn")
            agent.put("note", note)
            for _ in range(32):
                agent.alloc(256)
            agent.complete()

    def peer(_: Any) -> None:
        for _ in range(n):
            pool = {"note": bytes(note), "blocks": [bytearray(256) for _ in range(32)]}
            del pool

    return Workload(
        "agent_churn",
        "per agent: spawn, put a named entry, allocate 32 x 256 B, complete; "
        "against a per-agent dict of bytearrays dropped at the end",
        (Case("swarmheap", ours, n), Case("bytearray pool", peer, n)),
    )


def _spawn_predicted(env: Env) -> Workload:
    """The overhead of prediction at spawn: a kind with a confident
    prediction (agents of 200 KB, past the nursery's share) spawned with its
    reservation and layout, against spawn(reserve=False)."""
    heap = env.heap
    n = 200 if env.quick else 1000
    kind = "bench-predicted"
    for _ in range(30):  # confident from 20 samples
        agent = heap.spawn(kind, reserve=False)
        agent.alloc(200_000)
        agent.complete()
    if not heap.predict(kind).confident:
        raise AssertionError("the bench kind has no confident prediction")

    def spawn_with(reserve: bool) -> Callable[[list[Any]], None]:
        def run(agents: list[Any]) -> None:
            for _ in range(n):
                agents.append(heap.spawn(kind, reserve=reserve))

        return run

    def complete_all(agents: list[Any]) -> None:
        for agent in agents:
            agent.complete()

    return Workload(
        "spawn_predicted",
        "spawn() of a kind with a confident prediction (200 KB agents): its P90 reserved and its own "
        "pages from the start, against spawn(reserve=False); the agents are completed untimed",
        (
            Case("swarmheap", spawn_with(True), n, setup=list, teardown=complete_all),
            Case("reserve=False", spawn_with(False), n, setup=list, teardown=complete_all),
        ),
        target=Target("ratio_max", 1.2),
    )


def _handoff(env: Env, size: int) -> Workload:
    payload = bytes([7]) * size
    n = (20 if size <= 1 << 20 else 2) if env.quick else (100 if size <= 1 << 20 else 5)
    heap = env.heap

    def ours(_: Any) -> None:
        conn = env.handoff_channels()[0]
        for _ in range(n):
            blk = heap.alloc(size, "shared")
            blk[:] = payload  # the producer writes its data into the arena once
            conn.send(tuple(blk.handle))
            if not conn.recv():
                raise AssertionError("the receiving process read the wrong bytes")

    def peer(_: Any) -> None:
        _, q_in, q_ack = env.handoff_channels()
        for _ in range(n):
            q_in.put(payload)
            if not q_ack.get():
                raise AssertionError("the receiving process read the wrong bytes")

    return Workload(
        f"handoff_{_size_label(size)}",
        f"pass a {format_size(size)} buffer to another process and wait for it to read it: "
        "a handle to a shared block, against pickling through multiprocessing.Queue",
        (Case("swarmheap", ours, n), Case("Queue pickling", peer, n)),
        block_size=size,
    )


def _recycle(env: Env) -> Workload:
    heap = env.heap
    n = 100_000
    # the kind's usage model past its young flushes: its first 32 completions
    # each write the model to the arena (so that other processes read a new
    # kind early), 100-400 us that a recycle of a kind in use does not pay
    for _ in range(64):
        heap.spawn("recycle").complete()

    def agent_setup() -> Any:
        agent = heap.spawn("recycle")
        heap.alloc_many(n, 64, owner=agent)
        return agent

    def ours(agent: Any) -> None:
        agent.complete()

    def one_by_one(offsets: Any) -> None:
        _core._free_each(heap, offsets)

    def batched(offsets: Any) -> None:
        heap.free_many(offsets)

    return Workload(
        "recycle_100k",
        f"return {n} blocks of 64 B: complete() of the agent holding them, against freeing them one by one "
        "(a C loop of single-block frees) and against free_many (which pushes each page's run of blocks "
        "with one atomic operation); the kind's first 64 agents completed before (untimed): a young kind's "
        "completions each write its usage model to the arena",
        (
            Case("swarmheap", ours, 1, setup=agent_setup),
            Case("free one by one", one_by_one, 1, setup=lambda: heap.alloc_many(n, 64)),
            Case("free_many (batched)", batched, 1, setup=lambda: heap.alloc_many(n, 64)),
        ),
        target=Target("speedup_min", 100),
    )


def _young_sweep(env: Env) -> Workload:
    young = 100

    def setup_for(old: int) -> Callable[[], Any]:
        def setup() -> Any:
            heap = env.sweep_heap(old)
            return heap, [heap.spawn("young") for _ in range(young)]

        return setup

    def teardown(state: Any) -> None:
        for agent in state[1]:
            agent.complete()

    def young_sweep(state: Any) -> None:
        state[0].collect(0)

    def full_sweep(state: Any) -> None:
        state[0].collect(2)

    return Workload(
        "young_sweep",
        f"a young sweep over {young} young agents with 10 000 old ones live; peers: the same with 1 000 old "
        "ones (equal times mean the cost follows the young generation), and a full sweep over 10 000",
        (
            Case("young, 10k old", young_sweep, 1, setup=setup_for(10_000), teardown=teardown),
            Case("young, 1k old", young_sweep, 1, setup=setup_for(1_000), teardown=teardown),
            Case("full, 10k old", full_sweep, 1, setup=setup_for(10_000), teardown=teardown),
        ),
    )


NUMPY_SIZES = (64, 4096, 64 * 1024, 1024 * 1024)


def _numpy_handler(env: Env, size: int, constructor: str) -> Workload:
    from swarmheap.numpy_alloc import numpy_allocator

    make = getattr(np, constructor)
    alloc = numpy_allocator(env.heap)
    n = (2000 if env.quick else 10_000) if size <= 64 * 1024 else (200 if env.quick else 1000)

    def ours(_: Any) -> None:
        with alloc:
            for _ in range(n):
                make(size, np.uint8)

    def peer(_: Any) -> None:
        for _ in range(n):
            make(size, np.uint8)

    return Workload(
        f"numpy_{constructor}_{_size_label(size)}",
        f"np.{constructor}({format_size(size)}) with its data in the arena (the NEP 49 handler), "
        "against NumPy's default allocator",
        (Case("swarmheap", ours, n), Case("numpy default", peer, n)),
        block_size=size,
        target=Target("ratio_max", 1.2),
    )


def workloads(env: Env) -> list[Workload]:
    """Every Python-level workload, in the order they run."""
    rng = np.random.default_rng(42)
    n_pairs = 5000 if env.quick else 20_000
    mixed = [int(s) for s in rng.integers(16, 64 * 1024, n_pairs)]
    out = [
        _pairs(
            env,
            [size] * (n_pairs if size <= 16 * 1024 else n_pairs // 10),
            f"pairs_{_size_label(size)}",
            f"alloc + free of {format_size(size)}",
            size,
        )
        for size in PAIR_SIZES
    ]
    out.append(_pairs(env, mixed, "pairs_mixed", "alloc + free of random sizes from 16 B to 64 KiB", None))
    out += [
        _alloc_many(env),
        _shared_block(env),
        _agent_churn(env),
        _spawn_predicted(env),
        _handoff(env, 1 << 20),
        _handoff(env, 64 << 20),
        _recycle(env),
        _young_sweep(env),
    ]
    out += [_numpy_handler(env, size, c) for c in ("empty", "zeros") for size in NUMPY_SIZES]
    return out


@dataclass
class CaseResult:
    label: str
    ops: int
    times_ns: list[float] = field(default_factory=list)  # per op, one per repeat

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "ops": self.ops,
            "repeats": len(self.times_ns),
            "median_ns": statistics.median(self.times_ns),
            "min_ns": min(self.times_ns),
            "max_ns": max(self.times_ns),
        }


def _settle() -> None:
    """Bring the interpreter's own hot paths back into cache (see the module doc)."""
    for _ in range(3):
        time.perf_counter_ns()
    sum(range(200))


def measure(workload: Workload, repeats: int, tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Time every case of a workload `repeats` times, alternating, after one warm-up run each."""
    results = [CaseResult(c.label, c.ops) for c in workload.cases]
    for repeat in range(-1, repeats):
        order = list(range(len(workload.cases)))
        if repeat % 2:
            order.reverse()
        for i in order:
            case = workload.cases[i]
            state = case.setup()
            _settle()
            t0 = time.perf_counter_ns()
            case.run(state)
            elapsed = time.perf_counter_ns() - t0
            case.teardown(state)
            if repeat >= 0:
                results[i].times_ns.append(elapsed / case.ops)
        tick()
    cases = [r.summary() for r in results]
    ours = cases[0]["median_ns"]
    out: dict[str, Any] = {
        "name": workload.name,
        "what": workload.what,
        "block_size": workload.block_size,
        "cases": cases,
        "ratios": {c["label"]: ours / c["median_ns"] for c in cases[1:]},
    }
    if workload.target:
        peer = cases[1]["median_ns"] if len(cases) > 1 else None
        out["target"] = {"text": str(workload.target), "met": workload.target.met(ours, peer)}
    return out


def _bench_c_script() -> Path | None:
    """bench/c_core.py of a source checkout (the installed package carries no C benchmark)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "bench" / "c_core.py").is_file():
            return root / "bench" / "c_core.py"
    return None


def c_core() -> dict[str, Any]:
    """The C core against glibc, jemalloc and mimalloc: bench/c_core.py's figures."""
    script = _bench_c_script()
    if script is None:
        return {"skipped": "bench/c is not here: run from a source checkout of swarmheap"}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    if run.returncode:
        return {"skipped": f"bench/c_core.py failed: {run.stderr.strip()[-300:]}"}
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def _progress(total: int) -> tuple[Callable[[str], None], Callable[[], None], Callable[[], None]]:
    """(describe, tick, finish) of a progress bar: rich if installed, else a line per workload."""
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        return (
            (lambda name: print(f"  {name} ...", file=sys.stderr, flush=True)),
            (lambda: None),
            (lambda: None),
        )
    bar = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        console=Console(stderr=True),
    )
    task = bar.add_task("", total=total)
    bar.start()
    return (lambda name: bar.update(task, description=name)), (lambda: bar.advance(task)), bar.stop


@contextlib.contextmanager
def quiet_blas() -> Iterator[str]:
    """NumPy's BLAS keeps worker threads that spin between calls. On a small
    machine they take CPU from the workloads timed in single microsecond-long
    runs (here a recycle measured 28 us instead of 8 over a long run). No
    workload uses BLAS, so for the run it gets one thread (threadpoolctl, in
    the bench extra) and helper processes start with OPENBLAS_NUM_THREADS=1.
    Yields what was done, for the results."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # children import NumPy afresh
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print(
            "note: NumPy's BLAS threads keep their default (install 'swarmheap[bench]' for threadpoolctl)",
            file=sys.stderr,
        )
        yield "default"
        return
    with threadpool_limits(limits=1):
        yield "1"


def source_commit(where: Path | None = None) -> str | None:
    """The git commit of the swarmheap being measured (of the checkout that
    holds ``where``, this package's folder unless given), with "+changes" if
    its tracked files differ from it; None outside a git checkout (an
    installed wheel, an unpacked sdist)."""
    where = Path(__file__).resolve().parent if where is None else where

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0 or not git("ls-files", ".").stdout.strip():
            return None  # not in a checkout, or in one that does not hold it (a venv inside a project)
        changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git on the machine
    return head.stdout.strip() + ("+changes" if changed else "")


def run(quick: bool = False, only: str | None = None, with_c: bool = True) -> dict[str, Any]:
    """Run the workloads (all, or `only` one) and return the JSON-ready results."""
    repeats = 5 if quick else 15
    out: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "quick": quick,
        "repeats": repeats,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
        },
        "commit": source_commit(),
        "command": "swarmheap bench" + (" --quick" if quick else "") + (f" --only {only}" if only else ""),
        "workloads": [],
        "c_core": None,
        "density": None,
        "scenarios": [],
    }
    with quiet_blas() as blas_threads, Env(quick) as env:
        out["machine"]["blas_threads"] = blas_threads
        every = workloads(env)
        chosen = [w for w in every if only in (None, w.name)]
        names = [w.name for w in every] + ["swarm_density", *scenarios.NAMES, "c_core"]
        if only is not None and only not in names:
            raise ValueError(f"no workload named {only!r}; the workloads are: {', '.join(names)}")
        describe, tick, finish = _progress(len(chosen) * (repeats + 1))
        try:
            for w in chosen:
                describe(w.name)
                out["workloads"].append(measure(w, repeats, tick))
        finally:
            finish()
    if only in (None, "swarm_density"):
        from swarmheap.tools import density

        out["density"] = density.run(quick)
    for name in scenarios.NAMES:
        if only in (None, name):
            print(f"  {name} ...", file=sys.stderr, flush=True)
            out["scenarios"].append(scenarios.run(name, quick))
    if with_c and only in (None, "c_core"):
        out["c_core"] = c_core()
    return out


def _ratio_text(ratio: float) -> str:
    """ours / peer as people say it: "1.20x" (slower), "111x faster"."""
    if ratio >= 1 or ratio <= 0:
        return f"{ratio:.2f}x"
    faster = 1 / ratio
    return f"{faster:.0f}x faster" if faster >= 10 else f"{faster:.2f}x faster"


def _ns(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def render(results: dict[str, Any]) -> str:
    """The results as text tables."""
    rows = []
    for w in results["workloads"]:
        ours = w["cases"][0]
        for c in w["cases"][1:]:
            rows.append(
                (
                    w["name"],
                    _ns(ours["median_ns"]),
                    c["label"],
                    _ns(c["median_ns"]),
                    _ratio_text(w["ratios"][c["label"]]),
                )
            )
    parts = [
        table(
            f"workloads: time per op, median of {results['repeats']} (ratio = ours / peer, < 1 is faster)",
            ("workload", "swarmheap", "peer", "peer time", "ratio"),
            rows,
        )
    ]
    targets = [
        (w["name"], w["target"]["text"], "met" if w["target"]["met"] else "NOT met")
        for w in results["workloads"]
        if "target" in w
    ]
    if targets:
        parts.append(table("targets", ("workload", "target", "result"), targets))
    d = results.get("density")
    if d:
        from swarmheap.tools import density

        parts.append(
            table(
                f"swarm_density: agents until full, {d['heap']} (metadata {d['metadata_percent']:.3f} %, "
                f"max_owners {d['max_owners']:,})",
                ("shape", "agents", "context utilization", "held per agent", "dict of bytearrays", "targets"),
                density.rows(d),
            )
        )
    parts += [scenarios.render(sc) for sc in results.get("scenarios", [])]
    c = results.get("c_core")
    if c:
        if "skipped" in c:
            parts.append(f"C core: skipped ({c['skipped']})")
        else:
            names = list(next(iter(c["workloads"].values())))
            crow = [
                (
                    w,
                    *(f"{v[n]:.1f}" for n in names),
                    f"{v['swarmheap'] / v['mimalloc']:.2f}x" if "mimalloc" in v else "-",
                )
                for w, v in c["workloads"].items()
            ]
            parts.append(
                table(
                    f"C core, ns per op (median of {c['rounds']})", ("workload", *names, "vs mimalloc"), crow
                )
            )
            parts.append(
                f"  recycle of 100 000 blocks {c['recycle_100k_s'] * 1e6:.1f} us, freeing one by one "
                f"{c['free_100k_s'] * 1e6:.1f} us; metadata {c['metadata_percent']:.3f} % of the arena"
            )
            parts.extend(f"  {n}" for n in c["notes"])
    return "\n\n".join(parts)


def plot(results: dict[str, Any], directory: str) -> list[str]:
    """Write ratios.png and latency_by_size.png into `directory`; return their paths."""
    from swarmheap._extras import require

    plt = require("matplotlib.pyplot", "bench")
    os.makedirs(directory, exist_ok=True)
    written = []
    labels, ratios = [], []
    for w in results["workloads"]:
        for peer, ratio in w["ratios"].items():
            labels.append(f"{w['name']} vs {peer}")
            ratios.append(ratio)
    if labels:
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(labels) + 1.5))
        ax.barh(labels, ratios, color=["tab:green" if r < 1 else "tab:red" for r in ratios])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("swarmheap time / peer time (log; left of 1 is faster)")
        ax.set_title("swarmheap against its peers")
        fig.tight_layout()
        path = os.path.join(directory, "ratios.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    sized = [w for w in results["workloads"] if w["name"].startswith("pairs_") and w["block_size"]]
    if sized:
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, case in enumerate(sized[0]["cases"]):
            ax.plot(
                [w["block_size"] for w in sized],
                [w["cases"][i]["median_ns"] for w in sized],
                marker="o",
                label=case["label"],
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("block size, bytes")
        ax.set_ylabel("alloc + free, ns (median)")
        ax.set_title("latency by block size")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(directory, "latency_by_size.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(
    quick: bool = False,
    json_path: str | None = None,
    plot_dir: str | None = None,
    only: str | None = None,
    check: bool = False,
) -> int:
    """`swarmheap bench`: run, print the tables, write JSON and charts if asked."""
    if plot_dir:
        from swarmheap._extras import require

        require("matplotlib.pyplot", "bench")  # fail before the run, not after it
    results = run(quick=quick, only=only)
    print(render(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    if plot_dir:
        for path in plot(results, plot_dir):
            print(f"wrote {path}")
    missed = [w["name"] for w in results["workloads"] if w.get("target") and not w["target"]["met"]]
    d = results.get("density")
    if d and (not d["metadata_met"] or any(not t["met"] for s in d["shapes"] for t in s["targets"])):
        missed.append("swarm_density")
    missed += [sc["name"] for sc in results.get("scenarios", []) if any(not t["met"] for t in sc["targets"])]
    if check and missed:
        print(f"targets not met: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0
