"""Heap: creation, attach, partitions, stats, check, bad input."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import swarmheap as sh


def test_private_heap_layout() -> None:
    with sh.Heap.create(size="64 MiB") as heap:
        info = heap.info()
        assert info["size"] == 64 << 20 and heap.size == 64 << 20
        sizes = {p: info["partitions"][p]["size"] for p in sh.PARTITIONS}
        for part, share in zip(sh.PARTITIONS, (0.4, 0.3, 0.2, 0.1)):
            assert abs(sizes[part] / info["size"] - share) < 0.01
        assert info["metadata_bytes"] <= info["size"] // 100
        assert heap.name is None and "private" in repr(heap) and "64.0 MiB" in repr(heap)


def test_custom_ratios() -> None:
    ratios = {"context": 0.7, "shared": 0.1, "comm": 0.1, "system": 0.1}
    with sh.Heap.create(size="32 MiB", ratios=ratios, page_size=16384) as heap:
        info = heap.info()
        assert info["page_size"] == 16384
        assert abs(info["partitions"]["context"]["size"] / info["size"] - 0.7) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"size": "lots"}, ValueError, "64 MiB"),
        ({"size": -1}, ValueError, "negative"),
        ({"size": 1.5}, TypeError, "int or a string"),
        ({"size": 1000}, ValueError, "too small"),
        ({"ratios": {"context": 0.5, "shared": 0.3, "comm": 0.2, "system": 0.1}}, ValueError, "sum"),
        ({"ratios": {"context": 0.9, "shared": 0.0, "comm": 0.0, "system": 0.1}}, ValueError, "above 0"),
        ({"ratios": {"context": 1.0}}, ValueError, "missing"),
        ({"ratios": {"context": 0.4, "shared": 0.3, "comm": 0.2, "sys": 0.1}}, ValueError, "unknown"),
        ({"ratios": [0.4, 0.3, 0.2, 0.1]}, TypeError, "mapping"),
        ({"page_size": 1000}, ValueError, "power of two"),
        ({"page_size": 65536.0}, TypeError, "page_size"),
        ({"page_size": "64 KB"}, ValueError, "power of two"),  # read as size is: 64 000
        ({"max_owners": -1}, ValueError, "max_owners"),
    ],
)
def test_bad_create_arguments(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    args: dict[str, object] = {"size": "16 MiB", **kwargs}
    with pytest.raises(exc, match=match):
        sh.Heap.create(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("size", "page_size"), [("4 MiB", 65536), ("16 MiB", 262144), ("32 MiB", 1 << 20)])
def test_a_heap_too_small_for_its_records_says_so_at_once(heap_name: str, size: str, page_size: int) -> None:
    # these made a heap whose first spawn (or put, or channel) raised
    # PartitionFull on 'system'; now the create names the remedies
    with pytest.raises(ValueError, match=r"system partition .* raise the size \(to about \d+ MiB\)"):
        sh.Heap.create(heap_name, size=size, page_size=page_size)
    assert not os.path.exists(f"/dev/shm/{heap_name}")


def test_the_smallest_heap_of_default_pages_does_what_the_readme_does() -> None:
    with sh.Heap.create(size="6 MiB") as heap:
        agent = heap.spawn("small")
        agent.alloc(100)
        agent.put("prompt", b"x" * 2000)
        channel = heap.channel("jobs")
        channel.send(b"job")
        assert bytes(channel.recv()) == b"job"
        agent.complete()
        assert heap.predict("small").samples == 1
        heap.check()


def test_what_cannot_cross_a_process_says_what_to_send_instead(heap_name: str) -> None:
    import pickle

    with sh.Heap.create(heap_name, size="16 MiB") as heap, sh.Heap.create(size="16 MiB") as private:
        agent = heap.spawn("worker")
        for obj, remedy in (
            (heap, "Heap.attach"),
            (private, "create it with a name"),
            (agent, "heap.agent"),
            (heap.channel("jobs"), "heap.channel"),
        ):
            with pytest.raises(TypeError, match=remedy):
                pickle.dumps(obj)
        agent.complete()


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 300, 42])
def test_bad_names(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        sh.Heap.create(bad, size="16 MiB")  # type: ignore[arg-type]


def test_named_create_attach_unlink(heap_name: str) -> None:
    heap = sh.Heap.create(heap_name, size="16 MiB")
    assert os.stat(f"/dev/shm/{heap_name}").st_mode & 0o777 == 0o600
    with pytest.raises(sh.HeapExists):
        sh.Heap.create(heap_name, size="16 MiB")
    other = sh.Heap.attach(heap_name)
    blk = heap.alloc(32, "shared")
    blk[:6] = b"shared"
    assert bytes(other.resolve(blk.handle)[:6]) == b"shared"
    other.close()
    heap.unlink()
    with pytest.raises(sh.HeapNotFound):
        sh.Heap.attach(heap_name)
    assert bytes(blk[:6]) == b"shared"  # the mapping outlives the name
    blk.free()
    heap.check()
    heap.close()
    assert heap.closed
    heap.close()  # idempotent


def test_context_manager_unlinks_what_it_created(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        with sh.Heap.attach(heap_name) as view:
            assert not view.closed
        assert os.path.exists(f"/dev/shm/{heap_name}")  # an attacher's exit does not unlink
    assert heap.closed
    assert not os.path.exists(f"/dev/shm/{heap_name}")


def test_attach_missing() -> None:
    with pytest.raises(sh.HeapNotFound) as info:
        sh.Heap.attach("shtest_does_not_exist")
    assert isinstance(info.value, sh.AttachError) and isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda data: data[:100], "SH_ETRUNCATED"),
        (lambda data: b"NOTAHEAP" + data[8:], "SH_EMAGIC"),
        (lambda data: data[:8] + b"\x63" + data[9:], "SH_EVERSION"),
        (lambda data: data[:40] + bytes([data[40] ^ 0xFF]) + data[41:], "SH_ECHECKSUM"),
        (lambda data: bytes(len(data)), "SH_EMAGIC"),
    ],
)
def test_attach_refuses_damaged_heaps(heap_name: str, damage, code: str) -> None:  # type: ignore[no-untyped-def]
    with sh.Heap.create(heap_name, size="4 MiB", page_size=4096):
        pass  # created, then unlinked on exit: rebuild the file by hand
    with sh.Heap.create(heap_name, size="4 MiB", page_size=4096) as heap:
        path = f"/dev/shm/{heap_name}"
        with open(path, "rb") as f:
            data = f.read()
        heap.close()
        with open(path, "wb") as f:
            f.write(damage(data))
        with pytest.raises(sh.AttachError) as info:
            sh.Heap.attach(heap_name)
        assert info.value.code == code
        if code == "SH_EVERSION":  # says what to do about it
            assert "create the heap again" in str(info.value)


def test_partition_full_while_others_serve(heap: sh.Heap) -> None:
    before = heap.stats()["partitions"]
    blocks = []
    with pytest.raises(sh.PartitionFull) as info:
        while True:
            blocks.append(heap.alloc(4000, "comm"))
    assert isinstance(info.value, MemoryError)
    assert "comm" in str(info.value) and "bytes" in str(info.value)
    for part in ("context", "shared", "system"):
        heap.alloc(4000, part).free()
    heap.check()
    for blk in blocks:
        blk.free()
    after = heap.stats()["partitions"]
    assert after["comm"]["in_use"] == before["comm"]["in_use"] == 0
    assert after["comm"]["failures"] == 1
    heap.alloc(100, "comm").free()  # serves again


def test_larger_than_partition(heap: sh.Heap) -> None:
    with pytest.raises(sh.PartitionFull, match="larger than partition 'system'"):
        heap.alloc("8 MiB", "system")
    heap.check()


def test_stats_schema(heap: sh.Heap) -> None:
    blk = heap.alloc(100, "shared")
    stats = heap.stats()
    assert set(stats["partitions"]) == set(sh.PARTITIONS)
    shared = stats["partitions"]["shared"]
    assert shared["in_use"] == 112 and shared["allocs"] == 1 and shared["pages_used"] == 1
    assert shared["capacity"] >= shared["peak"] > 0
    assert any(c["block_size"] == 112 and c["blocks_used"] == 1 for c in stats["classes"])
    owner0 = stats["owners"][0]
    assert owner0["id"] == 0 and owner0["state"] == "live" and owner0["blocks"] == 1
    assert owner0["bytes"]["shared"] == 112
    blk.free()


def test_alloc_many_and_free_many(heap: sh.Heap) -> None:
    offsets = heap.alloc_many(1000, 48, "shared")
    assert offsets.dtype == np.uint64 and len(set(offsets.tolist())) == 1000
    assert heap.stats()["partitions"]["shared"]["in_use"] == 48 * 1000
    heap.free_many(offsets)
    assert heap.stats()["partitions"]["shared"]["in_use"] == 0
    with pytest.raises(sh.StaleBlock, match="freed 0 of 1000"):
        heap.free_many(offsets)
    heap.check()


def test_alloc_many_is_all_or_nothing(heap: sh.Heap) -> None:
    with pytest.raises(sh.PartitionFull):
        heap.alloc_many(1_000_000, 1000, "comm")
    assert heap.stats()["partitions"]["comm"]["in_use"] == 0
    with pytest.raises(ValueError):
        heap.alloc_many(-1, 16)
    heap.check()


def test_free_many_refuses_an_offset_whose_block_has_open_buffers(heap: sh.Heap) -> None:
    plain, with_handle = heap.alloc(64, "shared"), heap.alloc(64, "shared")
    assert with_handle.handle.offset == with_handle.offset  # tagged: its Block can tell a free by offset
    others = heap.alloc_many(10, 64, "shared")
    for blk in (plain, with_handle):
        view = memoryview(blk)
        batch = np.append(others, np.uint64(blk.offset))
        refused = f"cannot free offset {blk.offset} \\(item 10\\).*nothing was freed"
        with pytest.raises(BufferError, match=refused):
            heap.free_many(batch)
        assert heap.stats()["partitions"]["shared"]["in_use"] == 64 * 12  # all or nothing
        view[:4] = b"live"  # still the block's own memory
        view.release()
    heap.free_many(others)
    heap.free_many(np.array([plain.offset], dtype=np.uint64))  # no buffer open: goes back
    heap.free_many(np.array([with_handle.offset], dtype=np.uint64))
    with pytest.raises(sh.StaleBlock):
        with_handle[:4]  # a handle was made of it: its Block knows
    assert heap.stats()["partitions"]["shared"]["in_use"] == 0
    heap.check()


def test_open_buffers_are_counted_per_block_across_many_blocks(heap: sh.Heap) -> None:
    """Hundreds of blocks with buffers opened and released in a shuffled
    order (the table of open buffers grows and empties slots in the middle of
    probe runs), each through one of up to four Blocks of the block (twins
    from its handle: the table names the first two and counts the rest): at
    every step exactly the blocks with a buffer open refuse a free by
    offset, and through any of their Blocks."""
    import random

    rng = random.Random(7)
    blocks = [heap.alloc(rng.choice((64, 128, 1024)), "shared") for _ in range(300)]
    # (every third block: a handle takes a slot of the small heap's block table)
    twins = [
        [b] + [heap.resolve(b.handle) for _ in range(rng.randint(1, 3) if i % 3 == 0 else 0)]
        for i, b in enumerate(blocks)
    ]
    views: list[tuple[int, memoryview]] = []
    for i in range(300):
        for _ in range(rng.randint(1, 3)):
            views.append((i, memoryview(rng.choice(twins[i]))))
    rng.shuffle(views)
    while views:
        i, view = views.pop()
        view.release()
        still = {j for j, _ in views}
        for j in rng.sample(range(300), 20):
            if j in still:
                with pytest.raises(BufferError):
                    heap.free_many(np.array([blocks[j].offset], dtype=np.uint64))
                with pytest.raises(BufferError):
                    rng.choice(twins[j]).free()
    with memoryview(blocks[0]):  # the table, given back once empty, is made again
        with pytest.raises(BufferError):
            heap.free_many(np.array([blocks[0].offset], dtype=np.uint64))
    heap.free_many(np.array([b.offset for b in blocks], dtype=np.uint64))  # none open now
    assert heap.stats()["partitions"]["shared"]["in_use"] == 0
    heap.check()


def test_free_many_bad_offset(heap: sh.Heap) -> None:
    with pytest.raises(sh.InvalidHandle, match="freed 0 of 1"):
        heap.free_many(np.array([12345], dtype=np.uint64))
    heap.check()


def test_write_after_free_is_reported_not_followed() -> None:
    import ctypes

    with sh.Heap.create(size="4 MiB", page_size=4096) as heap:
        a, b = heap.alloc(32), heap.alloc(32)
        handle = a.handle
        address = np.frombuffer(a, np.uint8).ctypes.data
        b.free()
        a.free()
        with pytest.raises(sh.InvalidHandle, match="free block"):
            heap.resolve(handle)  # a freed block does not resolve
        ctypes.memset(address, 0x5A, 16)  # a stray write into freed memory
        with pytest.raises(sh.HeapCorrupt, match="written after it was freed"):
            heap.alloc(32)
        heap.alloc(64).free()  # other size classes still serve
        with pytest.raises(sh.HeapCorrupt, match="quarantined"):
            heap.check()


def test_closed_heap(heap_name: str) -> None:
    heap = sh.Heap.create(heap_name, size="16 MiB")
    blk = heap.alloc(16)
    view = memoryview(blk)
    with pytest.raises(BufferError, match="exported"):
        heap.close()
    view.release()
    heap.close()
    with pytest.raises(ValueError, match="closed"):
        heap.alloc(16)
    with pytest.raises(ValueError, match="closed"):
        bytes(blk)
    assert "closed" in repr(heap)


def test_a_closed_heap_says_so_everywhere(tmp_path: pathlib.Path) -> None:
    """Every call on a closed heap says it is closed: set_offload_policy()
    was taken, restore_from() read the store first and raised its KeyError,
    and repr() of an agent raised (a repr in a traceback must not)."""
    heap = sh.Heap.create(size="16 MiB")
    agent = heap.spawn("k")
    agent.put("e", b"v")
    with sh.SQLiteStore(tmp_path / "s.db") as store:
        heap.close()
        with pytest.raises(ValueError, match="closed"):
            heap.set_offload_policy(store)
        with pytest.raises(ValueError, match="closed"):
            heap.restore_from(store, "no/such/key")
        with pytest.raises(ValueError, match="closed"):
            agent.read("e")
        assert "heap closed" in repr(agent)


def test_read_only_attach(named: sh.Heap) -> None:
    blk = named.alloc(16, "shared")
    blk[:2] = b"ok"
    assert named.name is not None
    with sh.Heap.attach(named.name, read_only=True) as ro:
        view = ro.resolve(blk.handle)
        assert bytes(view[:2]) == b"ok"
        with pytest.raises(TypeError):
            view[:2] = b"no"
        assert ro.read_only
    blk.free()


def test_good_size(heap: sh.Heap) -> None:
    assert heap.good_size(1) == 16
    assert heap.good_size(129) == 160
    assert heap.good_size("100 KiB") % heap.info()["page_size"] == 0


def test_mid_size_blocks_share_pages() -> None:
    # classes reach half a page: three 20 KB blocks on one 64 KiB page, not three pages
    with sh.Heap.create(size="16 MiB", page_size=65536) as heap:
        _mid_size_blocks_share_pages(heap)


def test_the_default_page_size_follows_the_heap_size() -> None:
    # 64 KiB pages from 40 MiB up; below, smaller ones leave `system` 64
    # pages: with 64 KiB pages an 8 MiB heap had 7 to spare, and spawning
    # agents of seven kinds found it full at the 5th
    for size, page in (("4 MiB", 4096), ("8 MiB", 8192), ("16 MiB", 16384), ("64 MiB", 65536)):
        with sh.Heap.create(size=size) as heap:
            assert heap.page_size == page
            system = heap.stats()["partitions"]["system"]
            assert system["pages_total"] >= 32  # 64 KiB pages: 10 at 8 MiB, 6 at 4 MiB (too few to create)
    with sh.Heap.create(size="8 MiB") as heap:
        agents = []
        for i in range(100):
            agent = heap.spawn(f"kind{i % 7}")
            for j in range(i % 8 + 1):
                agent.put(f"entry-{j}", bytes(24 * (j + 1) + i))
            agents.append(agent)
        for agent in agents:
            agent.complete()
        heap.check()
    with pytest.raises(ValueError, match="cannot read size 'big'"):
        sh.Heap.create(size="8 MiB", page_size="big")


def _mid_size_blocks_share_pages(heap: sh.Heap) -> None:
    page = heap.page_size
    assert heap.good_size(20_000) == 20 * 1024 and heap.good_size(page // 2) == page // 2
    assert heap.good_size(page // 2 + 1) == page  # above half a page: a run of whole pages
    before = heap.stats()["partitions"]["shared"]
    blocks = [heap.alloc(20_000, "shared") for _ in range(3)]
    after = heap.stats()["partitions"]["shared"]
    assert after["in_use"] - before["in_use"] == 3 * 20 * 1024
    assert after["held"] - before["held"] <= page
    for blk in blocks:
        blk.free()
    heap.check()


def test_page_size_is_read_as_size_is() -> None:
    with sh.Heap.create(size="16 MiB", page_size="16 KiB") as heap:
        assert heap.info()["page_size"] == heap.page_size == 16 * 1024
    with pytest.raises(ValueError, match="power of two"):
        sh.Heap.create(size="16 MiB", page_size="3 KiB")
    with pytest.raises(ValueError, match="cannot read size"):
        sh.Heap.create(size="16 MiB", page_size="lots")
    with pytest.raises(TypeError, match="16 KiB"):
        sh.Heap.create(size="16 MiB", page_size=3.5)  # type: ignore[arg-type]
