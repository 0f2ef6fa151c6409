from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

import swarmheap as sh

PREFIX = "shtest_"


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
