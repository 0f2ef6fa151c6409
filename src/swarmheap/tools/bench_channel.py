"""The `channel` scenario: messages between two processes through a swarmheap
channel, against the queues a user would otherwise pick, in the same run:
multiprocessing.Queue, multiprocessing.Pipe, faster-fifo and pyzmq (PAIR
over ipc://). For each peer a child process (spawned once) produces; this
process consumes. A burst is timed from the "go" the parent sends to the
last message received, with the producer's data built before "go" (for
`send_block`, the block is filled before "go": that is the zero-copy
hand-off). swarmheap's channels have the default capacity (1024), and a
ring of 256 has a row of its own. The receiver takes each message (for
swarmheap a Block, freed; for the peers the bytes they return). Ping-pong is
one 64 B message there and back, timed per round trip."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from swarmheap.heap import Heap
from swarmheap.sizes import format_size
from swarmheap.tools.scenarios import median, target

SMALL = (64, 1024, 64 * 1024)
LARGE = (1 << 20, 64 << 20)
PEERS = ("swarmheap", "swarmheap send_block", "swarmheap small ring", "Queue", "Pipe", "faster-fifo", "pyzmq")
# The channels each swarmheap peer uses, and their capacity: the default, as
# heap.channel(name) gives (the targets are read on it), and a ring of 256,
# which a producer faster than its receiver keeps full: then each send waits
# for the receive before it and both sides take the same lines in turn
RINGS = {
    "swarmheap": ("bench", 1024),
    "swarmheap send_block": ("bench", 1024),
    "swarmheap small ring": ("bench256", 256),
}


class _Ends:
    """One peer's two directions, as seen from one side: send(bytes),
    recv() -> bytes-like (whose length is the message's), release(msg)."""

    def __init__(self, peer: str, side: str, spec: dict[str, Any]) -> None:
        self.peer = peer
        self.release: Callable[[Any], None] = lambda msg: None
        if peer.startswith("swarmheap"):
            self.heap = Heap.attach(spec["heap"]) if side == "child" else spec["heap_obj"]
            ring = RINGS[peer][0]
            up, down = self.heap.channel(f"{ring}-up"), self.heap.channel(f"{ring}-down")
            out, inn = (up, down) if side == "child" else (down, up)
            self.send = out.send
            self.recv = inn.recv
            self.release = lambda blk: blk.free()
            self.out = out
        elif peer == "Queue":
            out, inn = (spec["up"], spec["down"]) if side == "child" else (spec["down"], spec["up"])
            self.send, self.recv = out.put, inn.get
        elif peer == "faster-fifo":
            out, inn = (spec["up"], spec["down"]) if side == "child" else (spec["down"], spec["up"])
            self.send, self.recv = out.put, (lambda: inn.get(timeout=60))
        elif peer == "Pipe":
            conn = spec["child_conn"] if side == "child" else spec["parent_conn"]
            self.send, self.recv = conn.send_bytes, conn.recv_bytes
        else:  # pyzmq
            import zmq

            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.PAIR)
            self.sock.setsockopt(zmq.LINGER, 0)  # a context's term() must not wait on unsent messages
            self.sock.setsockopt(zmq.SNDHWM, 1024)
            self.sock.setsockopt(zmq.RCVHWM, 1024)
            if side == "child":
                self.sock.connect(spec["ipc"])
            else:
                self.sock.bind(spec["ipc"])
            self.send = lambda data: self.sock.send(data, copy=len(data) < 65536)
            self.recv = lambda: self.sock.recv(copy=True)

    def close(self) -> None:
        if self.peer == "pyzmq":
            self.sock.close(linger=0)
            self.ctx.term()


def _child(peer: str, spec: dict[str, Any], control: Any) -> None:
    ends = _Ends(peer, "child", spec)
    while True:
        cmd = control.recv()
        if cmd[0] == "stop":
            ends.close()
            return
        if cmd[0] == "burst":
            _, size, n = cmd
            payload = b"\x5a" * size  # written, so its pages are in before "go"
            if peer == "swarmheap send_block":
                blocks = [ends.heap.alloc(size, "comm") for _ in range(n)]
                for b in blocks:
                    b[:] = payload
                control.send("ready")
                control.recv()
                for b in blocks:
                    ends.out.send_block(b)
            else:
                control.send("ready")
                control.recv()
                for _ in range(n):
                    ends.send(payload)
        else:  # echo
            for _ in range(cmd[1]):
                msg = ends.recv()
                ends.send(bytes(msg))
                ends.release(msg)
        control.send("done")


def _available(peer: str) -> str | None:
    """None if the peer can run here, else why not."""
    module = {"faster-fifo": "faster_fifo", "pyzmq": "zmq"}.get(peer)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{peer} is not installed (pip install {peer})"
    return None


def _spec(peer: str, ctx: Any, heap: Heap, tmp: str) -> dict[str, Any]:
    if peer.startswith("swarmheap"):
        return {"heap": heap.name}
    if peer == "Queue":
        return {"up": ctx.Queue(), "down": ctx.Queue()}
    if peer == "faster-fifo":
        from faster_fifo import Queue as FifoQueue

        return {"up": FifoQueue(max_size_bytes=200 << 20), "down": FifoQueue(max_size_bytes=1 << 20)}
    if peer == "Pipe":
        a, b = ctx.Pipe()
        return {"parent_conn": a, "child_conn": b}
    return {"ipc": f"ipc://{tmp}/{peer}.sock"}


def _memcpy_ns(size: int, repeats: int) -> float:
    src, dst = ctypes.create_string_buffer(size), ctypes.create_string_buffer(size)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        ctypes.memmove(dst, src, size)
        times.append(time.perf_counter_ns() - t0)
    return median(times)


def _await(control: Any, proc: Any, what: str) -> Any:
    """The child's next reply; an error (not a hang) if it died first."""
    for _ in range(600):
        if control.poll(0.5):
            return control.recv()
        if not proc.is_alive():
            raise RuntimeError(f"the {what} child process died (exit code {proc.exitcode})")
    raise TimeoutError(f"the {what} child process did not answer in 300 s")


def _measure_peer(peer: str, heap: Heap, tmp: str, quick: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    spec = _spec(peer, ctx, heap, tmp)
    parent_control, child_control = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(peer, spec, child_control), daemon=True)
    proc.start()
    local = dict(spec, heap_obj=heap)
    ends = _Ends(peer, "parent", local)
    repeats = 1 if quick else 3  # a quick run (the tests' smoke run) checks that it runs, not how fast
    out: dict[str, Any] = {"throughput": {}, "pingpong": None}
    try:
        sizes = {"swarmheap send_block": LARGE, "swarmheap small ring": SMALL}.get(peer, SMALL + LARGE)
        for size in sizes:
            if size >= 64 << 20:
                n = 2
            elif size >= 1 << 20:
                n = 16 if quick else 64
            else:
                n = 4000 if quick else 20_000
            times = []
            for repeat in range(repeats + 1):  # the first burst warms up and is not counted
                parent_control.send(("burst", size, n))
                _await(parent_control, proc, peer)  # ready
                t0 = time.perf_counter_ns()
                parent_control.send("go")
                for _ in range(n):
                    msg = ends.recv()
                    if len(msg) != size:
                        raise AssertionError(f"{peer}: a {size} B message came back {len(msg)} B")
                    ends.release(msg)
                if repeat:
                    times.append(time.perf_counter_ns() - t0)
                _await(parent_control, proc, peer)  # done
            out["throughput"][size] = {"n": n, "ns": median(times)}
        if peer not in ("swarmheap send_block", "swarmheap small ring"):
            rounds = 500 if quick else 3000
            parent_control.send(("echo", rounds))
            ping = bytes(64)
            rtts = []
            for _ in range(rounds):
                t0 = time.perf_counter_ns()
                ends.send(ping)
                msg = ends.recv()
                rtts.append(time.perf_counter_ns() - t0)
                ends.release(msg)
            _await(parent_control, proc, peer)
            rtts.sort()
            out["pingpong"] = {"p50_ns": rtts[len(rtts) // 2], "p99_ns": rtts[int(len(rtts) * 0.99)]}
    finally:
        parent_control.send(("stop",))
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        ends.close()
    return out


def _rate(size: int, cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    per_s = cell["n"] / (cell["ns"] / 1e9)
    if size >= 1 << 20:
        return f"{per_s * size / (1 << 20):,.0f} MiB/s"
    return f"{per_s:,.0f} msg/s"


def channel(quick: bool) -> dict[str, Any]:
    data: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        Heap.create(f"swarmheap-chbench-{os.getpid()}", size="2 GiB") as heap,
    ):
        for ring, capacity in set(RINGS.values()):
            heap.channel(f"{ring}-up", capacity=capacity, max_message=64 << 20)
            heap.channel(f"{ring}-down", capacity=capacity, max_message=64 << 20)
        try:
            for peer in PEERS:
                why = _available(peer)
                if why:
                    skipped[peer] = why
                    continue
                data[peer] = _measure_peer(peer, heap, tmp, quick)
        finally:
            heap.unlink()
    memcpy_ns = _memcpy_ns(64 << 20, 5)
    data["memcpy_64MiB_ns"] = memcpy_ns
    rows = []
    for peer in PEERS:
        if peer in skipped:
            rows.append([peer, skipped[peer]] + [""] * (len(SMALL) + len(LARGE) + 1))
            continue
        d = data[peer]
        tp = d["throughput"]
        pp = d["pingpong"]
        rows.append(
            [peer, f"capacity {RINGS[peer][1]}" if peer in RINGS else ""]
            + [_rate(s, tp.get(s)) for s in SMALL + LARGE]
            + [f"{pp['p50_ns'] / 1e3:.1f} / {pp['p99_ns'] / 1e3:.1f} µs" if pp else "-"]
        )

    def per_s(peer: str, size: int) -> float:
        cell = data.get(peer, {}).get("throughput", {}).get(size)
        return cell["n"] / cell["ns"] * 1e9 if cell else float("nan")

    def handoff_ns(peer: str) -> float:
        cell = data.get(peer, {}).get("throughput", {}).get(64 << 20)
        return cell["ns"] / cell["n"] if cell else float("nan")

    targets = []
    ours_1k = per_s("swarmheap", 1024)
    for peer, want in (("Queue", 10.0), ("faster-fifo", 1.5)):
        if peer in data:
            r = ours_1k / per_s(peer, 1024)
            targets.append(target(f"1 KiB messages/s >= {want:g}x {peer}", f"{r:.2f}x", r >= want))
    pipe = data.get("Pipe", {}).get("pingpong")
    if pipe:
        r = data["swarmheap"]["pingpong"]["p50_ns"] / pipe["p50_ns"]
        targets.append(target("ping-pong p50 <= 0.5x Pipe's", f"{r:.2f}x", r <= 0.5))
    r = handoff_ns("Queue") / handoff_ns("swarmheap send_block")
    targets.append(target("64 MiB hand-off with send_block >= 50x faster than Queue", f"{r:.0f}x", r >= 50))
    r = handoff_ns("swarmheap") / memcpy_ns
    targets.append(target("64 MiB send (one copy) within 1.5x of one memcpy", f"{r:.2f}x memcpy", r <= 1.5))
    return {
        "name": "channel",
        "what": "messages from one process to another, and ping-pong",
        "columns": ["peer", "note"] + [f"{format_size(s)}" for s in SMALL + LARGE] + ["ping-pong p50 / p99"],
        "rows": rows,
        "notes": [
            "messages/s up to 64 KiB, MiB/s from 1 MiB; each cell "
            + ("one burst" if quick else "the median of 3 bursts")
            + " (after one not counted) timed from 'go' to the last message received; "
            "the producer's data exists before 'go'",
            f"one memcpy of 64 MiB here: {memcpy_ns / 1e6:.2f} ms",
        ],
        "targets": targets,
        "data": {k: v for k, v in data.items()},
    }
