"""The damaged-arena target: one input is a list of byte and word writes into
a small closed heap's segment (any region, the tables included); the heap is
then attached, checked, read, swept and used (channels too).

Allowed outcomes are named errors (HeapCorrupt, AttachError, ...). A crash, a
hang (the fuzzer's -timeout), an offset outside the mapping or its partition,
or any other exception is a failure.

The seed heap is made by a child process that dies without closing, so the
segment holds what a killed swarm leaves: bound thread slots of a dead
process, a dead agent with entries and a pin, a dead agent whose index is in
pieces, leased blocks, magazines, and a channel with a plain and a leased
message queued.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import uuid

import swarmheap as sh

SEED_SIZE = 4 << 20
SEED_PAGE = 4096
DATA_REGION = "data"  # every byte after the metadata tables


def _populate(name: str) -> None:
    heap = sh.Heap.attach(name)
    keep = [heap.alloc(size, part) for part in sh.PARTITIONS[:3] for size in (16, 64, 200, 1000, 5000, 40000)]
    for blk in keep[::3]:
        blk.free()
    for size in (24, 48, 96):  # blocks that wait in this thread's magazines
        heap.alloc(size, "shared").free()
    leased = heap.alloc(128, "comm", lease=3600.0)
    leased[:5] = b"lease"
    _ = leased.handle  # a handle tag in the block table
    agent = heap.spawn("researcher")
    agent.put("prompt", b"p" * 300)
    agent.alloc(64)
    view = agent.get("prompt")  # a pin this process dies holding
    assert len(view) == 300
    archive = heap.spawn("archive")  # an index past 16 KiB: a table of pieces
    for i in range(700):
        archive.put(f"turn-{i:05d}", i.to_bytes(4, "little"))
    ring = heap.channel("fuzzed", 8)  # queued: one plain message, one with a lease (its tag in the cell)
    ring.send(b"plain")
    ring.send(b"leased", lease=3600.0)
    os._exit(0)  # no close: the slots, the agent and the pin stay as a kill leaves them


def build_seed() -> tuple[bytes, dict[str, tuple[int, int]]]:
    name = "shfuzz_seed_" + uuid.uuid4().hex[:8]
    heap = sh.Heap.create(name, size=SEED_SIZE, page_size=SEED_PAGE)
    try:
        child = mp.get_context("spawn").Process(target=_populate, args=(name,))
        child.start()
        child.join()
        assert child.exitcode == 0, child.exitcode
        # the dead child's view still counts: the dropped block waits in the block table
        for agent in heap.agents():
            agent.put("prompt", b"q" * 300)
        assert heap._after_views == 1
        info = heap.info()
        regions = dict(info["regions"])
        regions[DATA_REGION] = (regions["pins"][1], info["size"])
        heap.close()
        with open(f"/dev/shm/{name}", "rb") as f:
            image = f.read()
    finally:
        sh.unlink(name)
    return image, regions


def write_segment(name: str, image: bytes) -> str:
    """A heap segment named ``name`` holding ``image`` (mode 0600); its path."""
    path = f"/dev/shm/{name}"
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        os.write(fd, image)
    finally:
        os.close(fd)
    return path


class Mutations:
    """Decodes an input into (offset, bytes) writes, each aimed at a region,
    so that every table gets its share whatever the regions' sizes."""

    def __init__(self, regions: dict[str, tuple[int, int]]) -> None:
        self.regions = [(lo, hi) for lo, hi in regions.values() if hi > lo]

    def decode(self, data: bytes) -> list[tuple[int, bytes]]:
        writes = []
        for i in range(0, len(data) - 7, 8):
            region, pos, width, value = struct.unpack_from("<BIBH", data, i)
            lo, hi = self.regions[region % len(self.regions)]
            offset = lo + pos % (hi - lo)
            if width % 3 == 0:
                patch = bytes([value & 0xFF])
            elif width % 3 == 1:
                patch = struct.pack("<I", (value << 16 | value) ^ (0xFFFFFFFF if width & 4 else 0))
            else:
                patch = struct.pack("<I", 0x7FFFFFFF if width & 8 else value)
            writes.append((offset, patch[: hi - offset]))
        return writes[:16]


def _check_block(heap: sh.Heap, blk: sh.Block, partition: str) -> None:
    part = heap.info()["partitions"][partition]
    n = len(blk)
    if not part["offset"] <= blk.offset < blk.offset + max(n, 1) <= part["offset"] + part["size"]:
        raise AssertionError(f"alloc in {partition!r} returned offset {blk.offset} (+{n}), outside it")
    if n:  # a damaged ring may name a message of no bytes
        blk[:1] = b"x"
        blk[n - 1 :] = b"y"


def alloc_everywhere(heap: sh.Heap) -> list[sh.Block]:
    """Blocks of several sizes in each partition but `system`, each checked
    to lie in its partition and written at both ends."""
    got = []
    for partition in sh.PARTITIONS[:3]:
        for size in (16, 64, 1000, 40000, 100000):
            try:
                blk = heap.alloc(size, partition)
            except sh.SwarmHeapError:
                continue
            _check_block(heap, blk, partition)
            got.append(blk)
    return got


def _exercise_channels(heap: sh.Heap) -> None:
    """Every channel the damaged registry names: stats, a send, and every
    message it gives back, each a block inside `comm`."""
    try:
        names = heap.channels()
    except sh.SwarmHeapError:
        return
    for name in names:
        try:
            ring = heap.channel(name)
            ring.stats()
            ring.try_send(b"fuzz")
            for _ in range(ring.capacity + 1):  # a ring counts at most its capacity
                got = ring.try_recv()
                if got is None:
                    break
                _check_block(heap, got, "comm")
                got.free()
        except sh.SwarmHeapError:
            continue


def _exercise_agents(heap: sh.Heap) -> None:
    """Every agent the damaged owner table names: its entries read (an index
    whole or in pieces), one added and one deleted."""
    try:
        agents = heap.agents()
    except sh.SwarmHeapError:
        return
    for agent in agents:
        try:
            names = agent.names()
            for entry in names[:: max(1, len(names) // 8)]:
                agent.read(entry)
            agent.put("fuzz-added", b"added")
            agent.delete("fuzz-added")
        except (sh.SwarmHeapError, KeyError):  # KeyError: a damaged index names what it does not hold
            continue


def exercise(name: str) -> None:
    """Attach a damaged heap and use it; named errors are fine, anything else fails."""
    try:
        heap = sh.Heap.attach(name)
    except (sh.AttachError, sh.HeapCorrupt):
        return
    # the mapping outlives the name: unlinked now, a crash below leaves no segment behind
    sh.unlink(name)
    try:
        for step in (heap.check, heap.stats, heap.collect, heap.check):
            try:
                step()
            except sh.SwarmHeapError:  # HeapCorrupt above all; any named error is an answer
                pass
        live = alloc_everywhere(heap)
        for blk in live:
            try:
                blk.free()
            except sh.SwarmHeapError:
                pass
        try:
            agent = heap.spawn("fuzz")
            agent.put("k", b"v" * 100)
            agent.complete()
        except sh.SwarmHeapError:  # a damaged owner table answers with named errors
            pass
        _exercise_agents(heap)
        _exercise_channels(heap)
        try:
            heap.check()
        except sh.SwarmHeapError:
            pass
    finally:
        heap.close()


class Target:
    def __init__(self) -> None:
        self.image, regions = build_seed()
        self.mutations = Mutations(regions)
        self.name = f"shfuzz_{os.getpid()}"

    def __call__(self, data: bytes) -> None:
        image = bytearray(self.image)
        for offset, patch in self.mutations.decode(data):
            image[offset : offset + len(patch)] = patch
        path = write_segment(self.name, bytes(image))
        try:
            exercise(self.name)
        finally:
            if os.path.exists(path):  # attach refused it: exercise() did not unlink it
                os.unlink(path)
