from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

import swarmheap as sh

# one prefix per test session: the leftover check below must not take the
# heaps of another session running at the same time (it once did, and their
# workers then failed to attach)
PREFIX = f"shtest_{uuid.uuid4().hex[:6]}_"


def stateful_examples(default: int) -> int:
    """Examples per hypothesis state machine: ``default``, or more for a
    reliability run (bench/reliability.py sets SWARMHEAP_STATEFUL_EXAMPLES)."""
    return int(os.environ.get("SWARMHEAP_STATEFUL_EXAMPLES", default))


def fill_context(heap: sh.Heap) -> sh.Agent:
    """An agent holding every MiB of `context` it could take: a heap with no
    room left for a large entry to come back."""
    filler = heap.spawn("filler")
    with pytest.raises(sh.PartitionFull):
        while True:
            filler.alloc(1 << 20)
    return filler


def fill_system(heap: sh.Heap) -> list[sh.Block]:
    """Blocks of one size class after another in `system` until it has no
    page left: a heap whose bookkeeping (the registry, usage models,
    indexes) finds no room for a block of a new size."""
    held, size = [], 16
    with pytest.raises(sh.PartitionFull):
        while True:
            held.append(heap.alloc(size, "system"))
            size += 16
    return held


def _leftovers() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(PREFIX)}


@pytest.fixture(scope="session", autouse=True)
def no_shm_leftovers() -> Iterator[None]:
    before = _leftovers()
    yield
    left = _leftovers() - before
    for name in left:  # clean up, then fail: a test leaked a named heap
        os.unlink(os.path.join("/dev/shm", name))
    assert not left, f"tests left named heaps behind: {sorted(left)}"


@pytest.fixture
def heap_name() -> Iterator[str]:
    name = PREFIX + uuid.uuid4().hex[:12]
    yield name
    try:
        sh.unlink(name)
    except sh.HeapNotFound:
        pass


@pytest.fixture
def heap() -> Iterator[sh.Heap]:
    h = sh.Heap.create(size="16 MiB")
    yield h
    h.check()
    h.close()


@pytest.fixture
def named(heap_name: str) -> Iterator[sh.Heap]:
    h = sh.Heap.create(heap_name, size="16 MiB")
    yield h
    h.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server: the one CI started (SWARMHEAP_REDIS_URL), else one
    started here on a free loopback port and stopped after the session (the
    benchmark's helper). Skipped, saying why, only when no redis-server can be had."""
    pytest.importorskip("redis")
    from swarmheap.tools.bench_tiers import redis_server

    with redis_server() as url:
        if url is None:
            pytest.skip(
                "no redis-server on this machine (apt-get install redis-server, or set SWARMHEAP_REDIS_URL)"
            )
        yield url
