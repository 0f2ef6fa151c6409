"""Snapshots, stores and the offload tier, against real stores: SQLite
through the stdlib, LMDB through lmdb, a real redis-server."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import random
import signal
import struct
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import fill_context, fill_system

import _workers
import swarmheap as sh
from _workers import restore_from_store, restore_snapshot, snapshot_dict_id
from swarmheap import _extras, agent_snapshot, index, snapshot
from swarmheap.stores import LMDBStore, RedisStore, SQLiteStore, Store, open_store

CODECS = ("zstd", "lz4", "none")


def entries_of(agent: sh.Agent) -> dict[str, bytes]:
    return {n: bytes(agent.get(n)) for n in agent.names()}


def in_use(heap: sh.Heap) -> dict[str, int]:
    return {p: v["in_use"] for p, v in heap.stats()["partitions"].items()}


@pytest.fixture
def agent(heap: sh.Heap) -> sh.Agent:
    a = heap.spawn("planner", lease=600.0)
    a.put("prompt", b"plan the trip " * 50)
    a.put("tools", bytes(range(256)) * 20)
    a.put("empty", b"")
    return a


@pytest.fixture(params=["sqlite", "lmdb", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "offload.db")
    elif request.param == "lmdb":
        s = LMDBStore(tmp_path / "offload.lmdb", map_size=64 << 20)
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url)
        for key in s.keys("swarmheap/"):
            s.delete(key)
    with s:
        yield s


# ---- snapshots ----


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_in_this_heap(heap: sh.Heap, agent: sh.Agent, codec: str) -> None:
    blob = agent.snapshot(codec)
    assert snapshot.frame_info(blob)["codec"] == codec
    again = heap.restore(blob)
    assert again.kind == "planner" and again.id != agent.id
    assert entries_of(again) == entries_of(agent)
    assert again.lease_deadline is not None and abs(again.lease_deadline - agent.lease_deadline) < 60
    again.complete()


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_across_processes(named: sh.Heap, codec: str) -> None:
    a = named.spawn("critic")
    a.put("notes", os.urandom(3000))
    blob = a.snapshot(codec)
    with mp.get_context("spawn").Pool(1) as pool:
        got = pool.apply(restore_snapshot, (named.name, blob))
    assert got.pop("__kind__") == b"critic"
    assert got == entries_of(a)


def test_a_kind_gets_a_trained_dictionary(heap: sh.Heap, named: sh.Heap) -> None:
    blobs = []
    for i in range(80):
        a = heap.spawn("chat")
        a.put("turn", chat_turn(i))
        blobs.append(a.snapshot())
        a.complete()
    first, last = snapshot.frame_info(blobs[0]), snapshot.frame_info(blobs[-1])
    assert first["dict_id"] == 0 and last["dict_id"] != 0
    assert len(blobs[-1]) < len(blobs[0])
    restored = heap.restore(blobs[-1])  # the dictionary is found through the arena's registry
    assert bytes(restored.get("turn")).startswith(b'{"role": "user", "content": "question 79')
    restored.complete()
    # another heap of this process finds the dictionary this process trained
    twin = named.restore(blobs[-1])
    assert twin.read("turn") == chat_turn(79)
    twin.complete()
    plain = heap.spawn("chat")
    plain.put("turn", chat_turn(80))
    portable = plain.snapshot(dictionary=False)
    assert snapshot.frame_info(portable)["dict_id"] == 0
    assert snapshot.frame_info(plain.snapshot())["dict_id"] != 0
    with pytest.raises(TypeError, match="dictionary"):
        plain.snapshot(dictionary="no")  # type: ignore[arg-type]
    with mp.get_context("spawn").Pool(1) as pool:
        # a process that never saw the dictionary, on a heap whose registry lacks it, and no store
        with pytest.raises(sh.CorruptSnapshot, match=r"snapshot\(dictionary=False\)"):
            pool.apply(restore_snapshot, (named.name, blobs[-1]))
        assert pool.apply(restore_snapshot, (named.name, portable))["turn"] == chat_turn(80)
    named.check()


def chat_turn(i: int) -> bytes:
    return f'{{"role": "user", "content": "question {i} about the weather in Lyon"}}'.encode() * 4


def test_a_dictionary_id_names_one_dictionary(heap: sh.Heap, monkeypatch: pytest.MonkeyPatch) -> None:
    """zstd derives a dictionary's id from its content, and two trainings of
    a kind (two processes, or two threads of one, at once) can make one id
    with other tables: blobs compressed with one and read with the other
    failed ("Data corruption detected", one run in three of four threads
    offloading and restoring). The first dictionary named under an id
    stands; a later training that makes the same id uses it."""
    zstd = pytest.importorskip("zstandard")
    from swarmheap.dictionaries import Dictionaries

    turn = '{{"role": "user", "content": "question {} about the weather in Lyon"}}'
    samples = [turn.format(i).encode() * 4 for i in range(80)]
    first = Dictionaries(heap, train_after=64)
    for sample in samples[:64]:
        first.note("chat", sample)
    trained = first.for_kind("chat")
    assert trained is not None
    # the same id over other bytes: the header (magic, id) kept, the content's tail changed
    forged = bytearray(trained.as_bytes())
    forged[-200:] = bytes(200)
    twin = zstd.ZstdCompressionDict(bytes(forged))
    assert twin.dict_id() == trained.dict_id() and twin.as_bytes() != trained.as_bytes()
    monkeypatch.setattr(zstd, "train_dictionary", lambda size, samples: twin)
    second = Dictionaries(heap, train_after=64)  # another process's, as it trains the kind too
    for sample in samples[:64]:
        second.note("chat", sample)
    assert second.for_kind("chat").as_bytes() == trained.as_bytes()
    blob = snapshot.pack(samples[70], "zstd", 1, second.for_kind("chat"))
    assert snapshot.unpack(blob, lambda dict_id: first.lookup(dict_id, [])) == samples[70]
    heap.check()


def test_another_process_compresses_with_the_kind_s_dictionary(named: sh.Heap) -> None:
    turn = b'{"role": "assistant", "content": "the forecast for Lyon is sunny"}' * 3
    for _ in range(70):
        a = named.spawn("chat")
        a.put("turn", turn)
        trained = snapshot.frame_info(a.snapshot())["dict_id"]
        a.complete()
    assert trained != 0
    with mp.get_context("spawn").Pool(1) as pool:
        # its first snapshot of the kind: no samples of its own, the registry's dictionary
        assert pool.apply(snapshot_dict_id, (named.name, "chat", turn)) == trained
        assert pool.apply(snapshot_dict_id, (named.name, "other", turn)) == 0


def test_offload_and_restore_read_the_registry_by_name(
    heap: sh.Heap, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the registry's names grow with the offloaded agents: a scan of them
    # in every offload (of a kind with no dictionary) made offload O(agents)
    from swarmheap.registry import Registry

    def no_scan(self: Registry, prefix: str = "") -> list[str]:
        raise AssertionError(f"the registry's names were scanned for {prefix!r}")

    monkeypatch.setattr(Registry, "names", no_scan)
    with SQLiteStore(tmp_path / "offload.db") as db:
        agents = [heap.spawn("large-states") for _ in range(3)]
        for a in agents:
            a.put("state", os.urandom(100_000))  # past the dictionary's sample limit
            a.offload(db)
        for a in agents:
            a.restore()
            assert len(a.get("state")) == 100_000
            a.complete()
    heap.check()


def _corruptions(blob: bytes) -> dict[str, bytes]:
    frame = snapshot.FRAME
    fields = list(frame.unpack_from(blob, 0))
    payload = blob[frame.size :]

    def with_fields(**changes: int) -> bytes:
        names = ["magic", "version", "codec", "check", "flags", "dict_id", "raw", "size", "sum"]
        values = [changes.get(n, v) for n, v in zip(names, fields)]
        return frame.pack(*values) + payload

    flipped = bytearray(blob)
    flipped[-5] ^= 0x40
    return {
        "truncated": blob[: len(blob) - 7],
        "header only, cut": blob[:20],
        "flipped payload byte": bytes(flipped),
        "wrong magic": b"NOTSNP" + blob[6:],
        "checksum mismatch": with_fields(sum=fields[8] ^ 1),
        "lying raw size": with_fields(raw=fields[6] + 1),
        "huge raw size": with_fields(raw=1 << 50),
        "unknown codec": with_fields(codec=9),
        "payload size lies": with_fields(size=fields[7] + 3),
        "empty": b"",
    }


@pytest.mark.parametrize("codec", CODECS)
def test_corrupt_blobs_raise_and_allocate_nothing(heap: sh.Heap, agent: sh.Agent, codec: str) -> None:
    blob = agent.snapshot(codec)
    before, agents = in_use(heap), len(heap.agents())
    for what, bad in _corruptions(blob).items():
        with pytest.raises(sh.CorruptSnapshot):
            heap.restore(bad)
        assert in_use(heap) == before, what
        assert len(heap.agents()) == agents, what
    heap.check()


def _big_agent(heap: sh.Heap) -> sh.Agent:
    rng = random.Random(5)
    words = [bytes(rng.choice(b"abcdefgh") for _ in range(rng.randint(2, 9))) for _ in range(300)]
    a = heap.spawn("big")
    a.put("transcript", b" ".join(rng.choice(words) for _ in range(300_000)))  # about 1.7 MB
    a.put("tail", os.urandom(snapshot.CHUNK + 17))  # a piece that does not compress
    return a


@pytest.mark.parametrize("codec", CODECS)
def test_a_large_state_is_cut_into_pieces_and_round_trips(heap: sh.Heap, codec: str) -> None:
    a = _big_agent(heap)
    want = entries_of(a)
    blob = a.snapshot(codec)
    info = snapshot.frame_info(blob)
    # pieces only where a codec works and a second core can take half of it
    assert info["chunked"] == (codec != "none" and snapshot.codec_threads() > 1)
    assert blob[6] == (2 if info["chunked"] else 1)
    assert entries_of(heap.restore(blob)) == want
    heap.check()


def test_a_plain_frame_of_bytes_is_the_frame_of_any_buffer() -> None:
    # bytes take a short path (every SwarmSaver put frames records with it);
    # the frame must be the one the general path writes for the same data
    for raw in (b"", b"x", os.urandom(700), os.urandom(3) * 70_000):
        blob = snapshot.pack(raw, "none")
        assert blob == snapshot.pack(memoryview(raw), "none") == snapshot.pack(bytearray(raw), "none")
        info = snapshot.frame_info(blob)
        fields = (info["codec"], info["dict_id"], info["raw_size"], info["chunked"])
        assert fields == ("none", 0, len(raw), False)
        assert blob[6] == 1 and snapshot.unpack(blob) == raw


def test_pieces_work_in_a_forked_child_of_a_process_that_used_them() -> None:
    raw = os.urandom(100) * 20_000  # 2 MB, compressible
    blob = snapshot.pack(raw, "zstd")  # pieces on helper threads, which the child must not need
    with warnings.catch_warnings():  # 3.12+ warns of NumPy's BLAS threads; the child runs only this
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        ok = snapshot.unpack(snapshot.pack(raw, "lz4")) == raw and snapshot.unpack(blob) == raw
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_pieces_are_done_in_this_thread_when_no_thread_can_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import _thread

    def refuse(*args: object) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    raw = os.urandom(64) * 40_000  # 2.5 MB
    monkeypatch.setattr(snapshot, "codec_threads", lambda: 2)
    monkeypatch.setattr(_thread, "start_new_thread", refuse)
    for codec in ("zstd", "lz4"):
        blob = snapshot.pack(raw, codec)
        assert snapshot.frame_info(blob)["chunked"]
        assert snapshot.unpack(blob) == raw


def test_parallel_pieces_keep_their_order_and_raise_the_first_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "codec_threads", lambda: 4)
    items = [(i,) for i in range(200)]
    assert snapshot._map_parallel(lambda i: i * i, items) == [i * i for i in range(200)]

    def fail_on_seven(i: int) -> int:
        if i == 7:
            raise ValueError("piece 7 is damaged")
        return i

    with pytest.raises(ValueError, match="piece 7"):
        snapshot._map_parallel(fail_on_seven, items)
    # and the next call is whole again: nothing of the failed one is left to interfere
    assert snapshot._map_parallel(lambda i: -i, items[:5]) == [0, -1, -2, -3, -4]


def _chunked_with(blob: bytes, payload: bytes, **changes: int) -> bytes:
    """The blob with a new payload (and frame fields), its checksum made right:
    what only the piece table's own checks can catch."""
    fields = dict(
        zip(
            ["magic", "version", "codec", "check", "flags", "dict_id", "raw", "size", "sum"],
            snapshot.FRAME.unpack_from(blob, 0),
        )
    )
    fields.update(changes, size=len(payload), sum=snapshot._checksum(fields["check"], payload))
    return snapshot.FRAME.pack(*fields.values()) + payload


def test_a_lying_piece_table_is_corrupt(heap: sh.Heap) -> None:
    if snapshot.codec_threads() < 2:
        pytest.skip("one core: large states are not cut into pieces here")
    a = _big_agent(heap)
    blob = a.snapshot("zstd")
    a.complete()
    payload = blob[snapshot.FRAME.size :]
    (count,) = struct.unpack_from("<I", payload, 0)
    sizes = [struct.unpack_from("<II", payload, 4 + 8 * i) for i in range(count)]
    frames = payload[4 + 8 * count :]

    def table(pieces: list[tuple[int, int]], n: int | None = None) -> bytes:
        head = struct.pack("<I", len(pieces) if n is None else n)
        return head + b"".join(struct.pack("<II", c, r) for c, r in pieces)

    (c0, r0), (c1, r1) = sizes[0], sizes[1]
    bad = {
        "count beyond the payload": _chunked_with(blob, table(sizes, 1 << 30) + frames),
        "no pieces": _chunked_with(blob, table([], 0) + frames),
        "no table at all": _chunked_with(blob, b"\x01"),
        "compressed sizes off": _chunked_with(blob, table([(c0 + 1, r0), (c1 - 1, r1), *sizes[2:]]) + frames),
        "raw sizes moved between pieces": _chunked_with(
            blob, table([(c0, r0 + 1), (c1, r1 - 1), *sizes[2:]]) + frames
        ),
        "a piece larger than a piece can be": _chunked_with(
            blob,
            table([(c0, r0 + r1), (c1, 0), *sizes[2:]]) + frames,
        ),
        "the flag on a format-1 frame": _chunked_with(blob, payload, version=1),
        "an unknown flag": _chunked_with(blob, payload, flags=3),
    }
    before = in_use(heap)
    for what, damaged in bad.items():
        with pytest.raises(sh.CorruptSnapshot):
            heap.restore(damaged)
        assert in_use(heap) == before, what
    heap.check()


def test_a_large_state_lying_about_its_raw_size_is_corrupt(heap: sh.Heap) -> None:
    # over SCRATCH_FROM, under a chunked state: decompressed into the scratch buffer whole
    raw_state = snapshot.encode_state("big", None, [("words", b"chat transcript " * 20_000)])
    assert snapshot.SCRATCH_FROM <= len(raw_state) < snapshot.CHUNKED_MIN
    for codec in ("zstd", "lz4"):
        blob = snapshot.pack(raw_state, codec)
        payload = blob[snapshot.FRAME.size :]
        before = in_use(heap)
        for lie in (len(raw_state) - 1, len(raw_state) + 1, len(raw_state) * 2):
            with pytest.raises(sh.CorruptSnapshot, match="raw bytes"):
                heap.restore(_chunked_with(blob, payload, raw=lie))
            assert in_use(heap) == before, (codec, lie)
        assert entries_of(heap.restore(blob)) == {"words": b"chat transcript " * 20_000}
    heap.check()


def test_a_state_unpacked_in_the_scratch_buffer_survives_another_use_of_it() -> None:
    # a restore whose put relieves pressure offloads another agent while its
    # own state is still being read: the second must not write over the first
    first, second = os.urandom(64) * 4_000, os.urandom(64) * 5_000
    blob = snapshot.pack(first, "zstd")
    with snapshot.unpacked(blob) as held:
        assert snapshot.unpack(snapshot.pack(second, "zstd")) == second
        with snapshot.encoded_state("other", None, [("x", second)]) as other:
            assert snapshot.decode_state(other)[2][0][1] == second
        assert held == first
    with pytest.raises(ValueError):
        held.tobytes()  # the view ends with the with: nothing reads the buffer after it is reused


def test_threads_that_restore_large_states_keep_a_bounded_number_of_buffers() -> None:
    import threading

    raw = os.urandom(64) * 6_000  # 384 KB: through a kept buffer
    blob = snapshot.pack(raw, "zstd")
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def restore_one() -> None:
        with snapshot.unpacked(blob) as state:
            barrier.wait()  # all eight hold a buffer at once
            results.append(state == raw)

    threads = [threading.Thread(target=restore_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
    assert len(snapshot._kept) <= snapshot.SCRATCH_KEPT
    assert snapshot.unpack(blob) == raw  # and a kept one serves the next


def test_a_newer_format_says_so(heap: sh.Heap, agent: sh.Agent) -> None:
    blob = bytearray(agent.snapshot("none"))
    blob[6] = snapshot.FORMAT_VERSION + 1
    with pytest.raises(sh.SnapshotTooNew, match="upgrade"):
        heap.restore(bytes(blob))


def test_bad_snapshot_arguments(heap: sh.Heap, agent: sh.Agent) -> None:
    with pytest.raises(ValueError, match="codec"):
        agent.snapshot("gzip")
    with pytest.raises(TypeError):
        heap.restore("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="level"):
        agent.snapshot(level="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="22"):
        agent.snapshot(level=99)
    with pytest.raises(ValueError, match="16"):
        agent.snapshot("lz4", level=17)
    assert heap.restore(agent.snapshot(level=-5)).names() == agent.names()  # zstd's fast levels
    with pytest.raises(TypeError, match="open_store"):
        agent.offload("sqlite:///a.db")  # type: ignore[arg-type]
    assert agent.state == "live"
    heap.check()


def test_a_state_packed_by_hand_round_trips() -> None:
    raw = snapshot.encode_state("k", None, [("a", b"1"), ("b", b"")])
    assert snapshot.decode_state(raw) == ("k", None, [("a", b"1"), ("b", b"")])
    with pytest.raises(sh.CorruptSnapshot):
        snapshot.decode_state(raw + b"x")
    with pytest.raises(sh.CorruptSnapshot):
        snapshot.decode_state(raw[:-1])
    assert struct.calcsize("<6sBBBBIQQQ") == snapshot.FRAME.size


# ---- stores ----


def test_store_protocol(store: Store) -> None:
    store.put("swarmheap/a/1", b"one")
    store.put("swarmheap/a/2", b"two")
    store.put("swarmheap/b/1", b"")
    store.put("swarmheap/a/1", b"uno")  # replaced whole
    assert store.get("swarmheap/a/1") == b"uno"
    assert store.get("swarmheap/missing") is None
    assert store.keys("swarmheap/a/") == ["swarmheap/a/1", "swarmheap/a/2"]
    assert store.delete("swarmheap/a/2") and not store.delete("swarmheap/a/2")
    assert store.get("swarmheap/b/1") == b""
    with pytest.raises(TypeError):
        store.put("swarmheap/x", "text")  # type: ignore[arg-type]
    store.close()
    assert store.closed
    calls = (lambda: store.get("swarmheap/a/1"), lambda: store.put("swarmheap/c", b"x"), lambda: store.keys())
    for call in calls:
        with pytest.raises(sh.StoreUnavailable, match="closed"):
            call()  # every store alike: Redis's client reconnected and answered
    store.close()  # twice is harmless


def test_open_store_urls(tmp_path: Any, redis_url: str) -> None:
    with open_store(f"sqlite:///{tmp_path}/s.db") as s:
        assert isinstance(s, SQLiteStore)
        s.put("k", b"v")
        # the store's own url names the same file, spelled once
        assert s.url == f"sqlite:///{tmp_path / 's.db'}"
        with open_store(s.url) as again:
            assert again.url == s.url and again.get("k") == b"v"
    with open_store(f"lmdb:///{tmp_path}/l") as s:
        assert isinstance(s, LMDBStore)
    with open_store(redis_url) as s:
        assert isinstance(s, RedisStore)
    with pytest.raises(ValueError, match="unknown store URL"):
        open_store("ftp://x")
    # what would be read otherwise as something else is refused: a query the
    # file store would not honour, a database name redis-py reads as 0
    with pytest.raises(ValueError, match="take no query"):
        open_store(f"sqlite:///{tmp_path}/ro.db?mode=ro")
    with pytest.raises(ValueError, match="the database in redis://host:port/db is a number"):
        open_store("redis://127.0.0.1:6379/cache")
    assert not (tmp_path / "ro.db").exists()
    with SQLiteStore(str(tmp_path / "p.db")) as s:
        with pytest.raises(TypeError, match="a key prefix is a str"):
            s.keys(None)  # type: ignore[arg-type]


def test_a_missing_extra_is_named(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(ImportError, match=r"swarmheap\[lmdb\]"):
        LMDBStore(tmp_path / "x")


def test_a_module_half_imported_by_another_thread_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """An extra that another thread is importing sits in sys.modules half
    made: handing it out raised AttributeError in a thread that offloaded
    while another did its first (xxhash without xxh64_intdigest). require()
    asks import_module then, which waits for the importing thread."""
    import importlib.machinery
    import types

    half = types.ModuleType("swarmheap_half_made")
    half.__spec__ = importlib.machinery.ModuleSpec("swarmheap_half_made", None)
    half.__spec__._initializing = True  # what the import system marks a module it is running
    whole = types.ModuleType("swarmheap_half_made")
    asked: list[str] = []

    def import_module(name: str) -> types.ModuleType:
        asked.append(name)
        return whole

    monkeypatch.setitem(sys.modules, "swarmheap_half_made", half)
    monkeypatch.setattr(_extras.importlib, "import_module", import_module)
    assert _extras.require("swarmheap_half_made", "compress") is whole and asked == ["swarmheap_half_made"]
    assert _extras.available("swarmheap_half_made") and len(asked) == 2
    half.__spec__._initializing = False  # made: the hot path takes it from sys.modules
    assert _extras.require("swarmheap_half_made", "compress") is half and len(asked) == 2


def test_offload_needs_no_extra(
    heap: sh.Heap, agent: sh.Agent, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite is the embedded default: without zstandard an offload writes the
    state uncompressed rather than fail, and only naming zstd names the extra."""
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setattr(_extras, "_absent", set())
    want = entries_of(agent)
    with pytest.raises(ImportError, match=r"swarmheap\[compress\]"):
        agent.offload(store, codec="zstd")
    assert agent.state == "live" and entries_of(agent) == want
    agent.offload(store)
    (key,) = store.keys("swarmheap/agent/")
    blob = store.get(key)
    assert blob is not None and blob[:6] == b"SHSNAP" and blob[7] == snapshot.CODECS["none"]
    assert agent.state == "offloaded"
    agent.restore()
    assert entries_of(agent) == want
    heap.check()


# ---- offload and restore ----


def test_a_touch_that_meets_a_complete_of_its_offloaded_agent_is_stale(
    heap: sh.Heap, agent: sh.Agent, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A touch restoring an offloaded agent while another thread completes
    it: the restore found the agent gone and said a sweep took it for its
    lease (there was none). It is the StaleBlock of any use after recycle."""
    agent.offload(store)
    other = heap.agent(agent.id)
    claim = heap._owner_set_state

    def completed_first(*args: Any) -> Any:  # the other thread's complete lands just before the claim
        monkeypatch.setattr(heap, "_owner_set_state", claim)
        other.complete()
        return claim(*args)

    monkeypatch.setattr(heap, "_owner_set_state", completed_first)
    with pytest.raises(sh.StaleBlock, match="was recycled"):
        agent.get("prompt")
    assert store.keys("swarmheap/agent/") == []
    heap.check()


def test_a_put_that_lands_during_an_offload_is_not_lost(
    heap: sh.Heap, agent: sh.Agent, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put by another thread (or process) after the offload's snapshot,
    before its memory went: the memory went with the put's entry in it and
    the blob without it, so the put, which had returned, was lost. The core
    now gives the memory back only under the index word the snapshot read:
    the offload snapshots again and the blob has the entry."""
    other = heap.agent(agent.id)
    give_back = heap._owner_offload
    landed = []

    def put_first(*args: Any, **kwargs: Any) -> Any:
        if not landed:  # once: the second snapshot is taken after it
            landed.append(True)
            other.put("late", b"written during the offload")
        return give_back(*args, **kwargs)

    monkeypatch.setattr(heap, "_owner_offload", put_first)
    agent.offload(store)
    assert landed and agent.state == "offloaded"
    assert len(store.keys("swarmheap/agent/")) == 1  # the first try's blob went with its try
    assert bytes(agent.get("late")) == b"written during the offload"
    assert agent.state == "live" and bytes(agent.get("prompt")) == b"plan the trip " * 50
    heap.check()


def test_a_put_that_ran_across_an_offload_starts_again(heap: sh.Heap, agent: sh.Agent, store: Store) -> None:
    """A put whose block was allocated before an offload and whose index
    update came after it: its update built on the sealed word and named a
    block the offload had given back. It starts again now, which restores
    the agent, and the entry is there."""
    core = heap._owner_held_swap
    calls = []

    def offloaded_first(*args: Any) -> Any:
        if not calls:
            calls.append(True)
            heap._owner_held_swap = core  # type: ignore[method-assign]
            agent.offload(store)  # lands between the put's allocation and its index update
        return core(*args)

    heap._owner_held_swap = offloaded_first  # type: ignore[method-assign]
    try:
        agent.put("across", b"x" * 3000)
    finally:
        heap._owner_held_swap = core  # type: ignore[method-assign]
    assert calls and agent.state == "live"
    assert bytes(agent.get("across")) == b"x" * 3000 and bytes(agent.get("tools")) == bytes(range(256)) * 20
    heap.check()


def test_a_block_of_an_offloaded_agent_is_stale(heap: sh.Heap, agent: sh.Agent, store: Store) -> None:
    """An agent's blocks (not its named entries) go back with its pages when
    it is offloaded, and the agent keeps its generation: a Block held across
    the offload passed the generation check and wrote into freed memory (a
    thread race found it as a page quarantined for a write after free)."""
    block = agent.alloc(100)
    block[:5] = b"early"
    agent.offload(store)
    assert block.freed
    with pytest.raises(sh.StaleBlock, match="offloaded"):
        block[:5] = b"later"
    with pytest.raises(sh.StaleBlock, match="offloaded"):
        memoryview(block)
    heap.check()


def test_a_block_held_across_an_offload_and_a_restore_is_stale(
    heap: sh.Heap, agent: sh.Agent, store: Store
) -> None:
    """After the restore the agent is live again under the same generation,
    and the memory the Block named was given back at the offload: the Block
    passed every check and its writes landed in whatever was there now (a
    restored entry, here). A Block that resolve() made of it before the
    offload is stale as well; one allocated after the restore is not. (The
    handles here carry no tag: a tagged one was caught by its tag already.)"""
    for size in (100, 3000, 20000):  # nursery, its own pages, a large run
        block = agent.alloc(size)
        resolved = heap.resolve(sh.Handle(block.offset, size, agent.id, agent.generation))
        assert block.tag == 0 and resolved.tag == 0
        block[:5] = b"early"
        agent.offload(store)
        agent.restore()
        assert agent.state == "live"
        assert block.freed and resolved.freed
        for held in (block, resolved):
            with pytest.raises(sh.StaleBlock, match="offloaded and restored"):
                held[:5] = b"later"
            with pytest.raises(sh.StaleBlock, match="offloaded and restored"):
                memoryview(held)
            with pytest.raises(sh.StaleBlock, match="offloaded and restored"):
                held.free()  # it freed what the place holds now: a restored entry's block, say
        assert bytes(agent.get("tools")) == bytes(range(256)) * 20
        fresh = agent.alloc(size)
        fresh[:5] = b"fresh"
        assert bytes(fresh[:5]) == b"fresh" and not fresh.freed
        fresh.free()
    heap.check()


def test_a_sqlite_store_used_from_threads_closes(tmp_path: Any) -> None:
    """One connection per thread, and close() in whichever thread: it raised
    sqlite3.ProgrammingError for the other threads' connections."""
    store = SQLiteStore(tmp_path / "threads.db")
    threads = [threading.Thread(target=store.put, args=(f"k{i}", b"v")) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.keys("k")) == ["k0", "k1", "k2"]
    store.close()
    assert store.closed


def test_processes_opening_one_new_sqlite_store_at_once_all_open_it(tmp_path: Any) -> None:
    """Turning a new file to WAL raced between processes and SQLite's busy
    timeout did not cover it: about one round in twenty, one of four demo
    workers failed with "database is locked". Forty rounds of six."""
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager, ctx.Pool(6) as pool:
        for round_ in range(40):
            path = str(tmp_path / f"new{round_}.db")
            start = manager.Barrier(6)
            results = pool.starmap(_workers.open_new_store_at_once, [(path, start)] * 6)
            assert results == ["ok"] * 6
            with SQLiteStore(path) as store:
                assert len(store.keys("k")) == 6


def test_a_restore_leaves_the_entry_of_an_offload_that_followed_it(
    heap: sh.Heap, agent: sh.Agent, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes with the offload policy on: one restores an agent, and
    once it is live the other offloads it again (its registry entry and its
    blob written) before the restorer removes the entry it restored from.
    The removal took the new entry, and the agent, offloaded, was
    restorable from nowhere. A restore removes the entry only if it is
    still the one it read; and each offload writes its blob under a key of
    its own, so no clean-up deletes another offload's blob."""
    from swarmheap.offload_entries import entry_name as _entry_name
    from swarmheap.registry import Registry

    first = agent.offload(store)
    set_state = heap._owner_set_state
    another = b"2\n" + store.url.encode() + b"\nanother process's key\n1.0\n\nplanner"

    def then_another_offload_begins(agent_id: int, generation: int, old: str, new: str) -> Any:
        done = set_state(agent_id, generation, old, new)
        if (old, new) == ("restoring", "live"):
            Registry(heap).put(_entry_name(agent_id, generation), another)
        return done

    monkeypatch.setattr(heap, "_owner_set_state", then_another_offload_begins)
    agent.restore()
    monkeypatch.undo()
    assert Registry(heap).get(_entry_name(agent.id, agent.generation)) == another
    Registry(heap).remove(_entry_name(agent.id, agent.generation))
    second = agent.offload(store)
    assert second["key"] != first["key"] and store.keys("swarmheap/agent/") == [second["key"]]
    assert bytes(agent.get("prompt")) == b"plan the trip " * 50
    heap.check()


@pytest.mark.parametrize("then", ["restored", "restored and offloaded again"])
def test_a_touch_that_finds_its_blob_taken_by_another_restore_goes_on(
    named: sh.Heap, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """A touch read the registry entry of its offloaded agent; before it read
    the blob, another process restored the agent (taking the blob) and, in
    the second case, offloaded it again under a new key. The touch raised
    AgentStateError ("snapshot ... deleted") though the agent was live, or
    restorable from its newer blob. It now goes on with the live agent, or
    restores from the newer blob. The other process is a second attach of
    the heap here, with its own locks and caches."""
    with SQLiteStore(tmp_path / "o.db") as store, sh.Heap.attach(named.name) as other:
        agent = named.spawn("planner")
        agent.put("prompt", b"plan " * 100)
        agent.offload(store)
        get = store.get
        raced = []

        def another_process_first(key: str) -> Any:
            if not raced and key.startswith("swarmheap/agent/"):
                raced.append(key)
                theirs = other.agent(agent.id)
                theirs.restore()
                if then != "restored":
                    theirs.put("later", b"written after the restore")
                    theirs.offload(store)
            return get(key)

        monkeypatch.setattr(store, "get", another_process_first)
        assert bytes(agent.get("prompt")) == b"plan " * 100  # the touch restores, or finds it live
        monkeypatch.undo()
        assert raced and agent.state == "live"
        if then != "restored":
            assert agent.read("later") == b"written after the restore"
        assert store.keys("swarmheap/agent/") == []
        agent.complete()
        named.check()


def test_offload_then_touch_restores(heap: sh.Heap, agent: sh.Agent, store: Store) -> None:
    want = entries_of(agent)
    before = in_use(heap)["context"]
    final = agent.offload(store)
    assert agent.state == final["state"] == "offloaded" and final["blob_bytes"] > 0
    assert in_use(heap)["context"] < before
    assert store.keys("swarmheap/agent/") == [final["key"]] and final["store"] == store.url
    heap.check()
    assert sorted(agent.names()) == sorted(want)  # a touch restores it, same id and generation
    assert agent.state == "live"
    assert entries_of(agent) == want
    assert not store.keys("swarmheap/agent/")
    agent.offload(store)
    blk = agent.alloc(100)  # alloc restores it too
    assert agent.state == "live" and len(blk) == 100
    agent.offload(store)
    again = heap.agent(agent.id)
    assert again.kind == "planner"
    again.put("more", b"x")
    assert entries_of(again) == {**want, "more": b"x"}
    heap.check()


@pytest.mark.parametrize("codec", CODECS)
def test_an_offloaded_agent_is_snapshot_from_the_store_and_stays_there(
    heap: sh.Heap, agent: sh.Agent, store: Store, codec: str
) -> None:
    want = entries_of(agent)
    final = agent.offload(store)
    held = in_use(heap)["context"]
    with sh.Heap.create(size="16 MiB") as other:
        copy = other.restore(agent.snapshot(codec=codec))
        assert copy.kind == "planner" and entries_of(copy) == want
        assert copy.lease_deadline is not None and copy.lease_deadline > time.time() + 500
        other.check()
    assert agent.state == "offloaded" and in_use(heap)["context"] == held  # not brought back
    assert store.keys("swarmheap/agent/") == [final["key"]]
    with pytest.raises(ValueError, match="unknown codec"):
        agent.snapshot(codec="zip")
    assert entries_of(agent) == want and agent.state == "live"  # a touch still restores it
    heap.check()


def test_an_offloaded_agent_is_snapshot_when_the_heap_has_no_room_for_it(tmp_path: Any) -> None:
    with sh.Heap.create(size="16 MiB") as heap, SQLiteStore(tmp_path / "s.db") as store:
        big = heap.spawn("big")
        big.put("state", os.urandom(3 << 20))
        big.offload(store)
        filler = fill_context(heap)
        with pytest.raises(sh.PartitionFull):
            big.restore()  # no room to bring it back
        blob = big.snapshot()
        filler.complete()
        assert bytes(heap.restore(blob).get("state")) == bytes(big.get("state"))
        heap.check()


def test_restore_after_the_store_object_was_closed(heap: sh.Heap, agent: sh.Agent, tmp_path: Any) -> None:
    # the heap remembers the store by URL; once that object is closed, the
    # restore opens the URL again instead of failing on the closed one
    want = entries_of(agent)
    with SQLiteStore(tmp_path / "once.db") as store:
        agent.offload(store)
    assert agent.state == "offloaded"
    assert entries_of(agent) == want
    with SQLiteStore(tmp_path / "once.db") as again:
        agent.offload(again)
    agent.restore()
    assert agent.state == "live" and entries_of(agent) == want
    heap.check()


def future(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real = sh.sweep.time.time
    monkeypatch.setattr(sh.sweep.time, "time", lambda: real() + seconds)


def test_an_offloaded_agent_keeps_its_lease_deadline(heap: sh.Heap, agent: sh.Agent, tmp_path: Any) -> None:
    deadline = agent.lease_deadline
    with SQLiteStore(tmp_path / "s.db") as s:
        agent.offload(s)
        assert agent.lease_deadline == deadline and agent.state == "offloaded"  # read without a restore
        agent.restore()
    # the clock ran on in the store: the same deadline, not the seconds left counted again from now
    assert agent.lease_deadline == deadline


def test_a_kind_with_a_newline_is_offloaded_and_restored(heap: sh.Heap, tmp_path: Any) -> None:
    a = heap.spawn("two\nlines", lease=600.0)
    a.put("x", b"x" * 100)
    deadline = a.lease_deadline
    with SQLiteStore(tmp_path / "s.db") as s:
        a.offload(s)
        assert [o["kind"] for o in heap.stats()["offloaded"]] == ["two\nlines"]
        assert a.lease_deadline == deadline
        assert bytes(a.get("x")) == b"x" * 100 and a.kind == "two\nlines" and a.lease_deadline == deadline
    heap.check()


def test_registry_entries_of_both_layouts_read() -> None:
    from swarmheap.offload_entries import entry_bytes as _entry_bytes
    from swarmheap.offload_entries import parse_entry as _parse_entry

    old = _parse_entry(b"sqlite:///tmp/s.db\nswarmheap/agent/t/2/1\nplanner\n1796389300.5")
    assert (old.url, old.key, old.kind, old.written, old.deadline) == (
        "sqlite:///tmp/s.db",
        "swarmheap/agent/t/2/1",
        "planner",
        1796389300.5,
        None,
    )
    new = _parse_entry(_entry_bytes("redis://h:1/0", "k", "a\nb\nc", 12.5, 99.25))
    assert tuple(new)[:5] == ("redis://h:1/0", "k", "a\nb\nc", 12.5, 99.25)
    assert _parse_entry(_entry_bytes("u", "k", "kind", 1.0, None)).deadline is None
    for damaged in (b"just one line", b"2\nu\nk\n1.0\nnot a number\nkind", b"\xff\xfe"):
        with pytest.raises(ValueError):
            _parse_entry(damaged)


def test_renewing_an_offloaded_agent_restores_it_and_the_renewal_sticks(
    heap: sh.Heap, agent: sh.Agent, tmp_path: Any
) -> None:
    want = entries_of(agent)
    with SQLiteStore(tmp_path / "s.db") as s:
        agent.offload(s)
        agent.renew(5000.0)
        assert agent.state == "live" and s.keys("swarmheap/agent/") == []
        deadline = agent.lease_deadline
        assert deadline is not None and deadline > time.time() + 4000  # not the 600 s it was offloaded with
        assert entries_of(agent) == want and agent.lease_deadline == deadline
    heap.check()


def test_an_offloaded_agent_whose_lease_runs_out_is_swept_with_its_blob(
    heap: sh.Heap, agent: sh.Agent, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = heap.spawn("planner", lease=6000.0)
    kept.put("prompt", b"kept")
    before = in_use(heap)
    with SQLiteStore(tmp_path / "s.db") as s:
        agent.offload(s)
        kept.offload(s)
        assert heap.collect(2).agents["lease"] == 0  # not yet
        future(monkeypatch, 1200)  # past agent's 600 s lease, within kept's
        result = heap.collect(2)
        assert result.agents["lease"] == 1
        assert [(r["id"], r["cause"], r["kind"]) for r in result.recycled] == [(agent.id, "lease", "planner")]
        assert agent.state == "gone" and kept.state == "offloaded"
        left = [k.rsplit("/", 3)[1:3] for k in s.keys("swarmheap/agent/")]  # .../id/generation/try
        assert left == [[str(kept.id), str(kept.generation)]]
        assert [o["id"] for o in heap.stats()["offloaded"]] == [kept.id]
        with pytest.raises(sh.StaleBlock):
            agent.get("prompt")
        assert bytes(kept.get("prompt")) == b"kept"
    kept.complete()
    assert in_use(heap)["context"] <= before["context"]
    heap.check()


def test_a_snapshot_whose_lease_ran_out_restores_with_it_run_out(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = heap.spawn("planner", lease=60.0)
    a.put("prompt", b"p")
    real = time.time
    monkeypatch.setattr(agent_snapshot.time, "time", lambda: real() + 120)
    blob = a.snapshot()
    again = heap.restore(blob)
    assert again.lease_deadline is not None and again.lease_deadline <= real() + 120
    monkeypatch.undo()
    future(monkeypatch, 120)
    assert {r["id"] for r in heap.collect(2).recycled} == {a.id, again.id}
    heap.check()


def test_a_pinned_agent_is_not_offloaded(heap: sh.Heap, agent: sh.Agent, tmp_path: Any) -> None:
    view = agent.get("prompt")
    with SQLiteStore(tmp_path / "s.db") as s:
        with pytest.raises(sh.AgentStateError, match="pin"):
            agent.offload(s)
        assert agent.state == "live" and s.keys() == []
    view.release()


def test_offloading_a_recycled_agent_is_stale_as_every_other_call_on_it(
    heap: sh.Heap, agent: sh.Agent, tmp_path: Any
) -> None:
    agent.complete()
    with SQLiteStore(tmp_path / "s.db") as s:
        with pytest.raises(sh.StaleBlock, match="was recycled"):
            agent.offload(s)
        assert s.keys() == []
    heap.check()


def test_an_interrupt_after_the_memory_went_keeps_the_blob(
    heap: sh.Heap, agent: sh.Agent, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = entries_of(agent)
    real = heap._owner_offload

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise KeyboardInterrupt  # as if Ctrl-C landed just after the core gave the memory back

    monkeypatch.setattr(heap, "_owner_offload", interrupted)
    with SQLiteStore(tmp_path / "s.db") as s:
        with pytest.raises(KeyboardInterrupt):
            agent.offload(s)
        monkeypatch.undo()
        assert agent.state == "offloaded" and len(s.keys("swarmheap/agent/")) == 1
        assert entries_of(agent) == want  # restored from the blob the failed call did not delete
    heap.check()


def test_a_sweep_asks_a_store_that_is_down_once(
    heap: sh.Heap, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    agents = [heap.spawn("idle") for _ in range(5)]
    for a in agents:
        a.put("x", b"x" * 100)
    with SQLiteStore(tmp_path / "s.db") as s:
        for a in agents:
            a.offload(s)
        asked = []

        class Down:  # a host that stopped answering: every call fails after its timeout
            url = s.url

            def get(self, key: str) -> bytes | None:
                asked.append(key)
                raise sh.StoreUnavailable(f"{s.url} did not answer")

            delete = keys = get

        real = heap._store_for
        monkeypatch.setattr(heap, "_store_for", lambda url: Down())
        with caplog.at_level("WARNING", logger="swarmheap"):
            result = heap.collect(2)
        assert len(asked) == 1 and "did not answer" in caplog.text
        assert result.agents["moved_away"] == 0 and all(a.state == "offloaded" for a in agents)
        monkeypatch.setattr(heap, "_store_for", real)
        assert [bytes(a.get("x")) for a in agents] == [b"x" * 100] * 5
    heap.check()


def test_completing_an_offloaded_agent_deletes_its_blob(heap: sh.Heap, tmp_path: Any) -> None:
    from swarmheap.registry import Registry

    a = heap.spawn("done")
    a.put("x", b"x" * 100)
    with SQLiteStore(tmp_path / "s.db") as s:
        a.offload(s)
        final = a.complete()
        assert final["state"] == "gone" and a.state == "gone"
        assert s.keys("swarmheap/agent/") == [] and Registry(heap).names("offload/") == []
    heap.check()


def test_a_completed_offloaded_agent_s_blob_goes_at_a_full_sweep_once_the_store_answers(
    heap: sh.Heap, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarmheap.registry import Registry

    a = heap.spawn("done")
    a.put("x", b"x" * 100)
    with SQLiteStore(tmp_path / "s.db") as s:
        a.offload(s)

        def down(url: str) -> Any:
            raise sh.StoreUnavailable(f"{url} did not answer")

        real = heap._store_for
        monkeypatch.setattr(heap, "_store_for", down)
        a.complete()  # the agent goes; its blob cannot yet
        assert a.state == "gone"
        assert len(s.keys("swarmheap/agent/")) == 1 and Registry(heap).names("offload/") != []
        heap.collect(2)
        # the entry stays while its blob cannot be deleted: nothing left that nothing names
        assert len(s.keys("swarmheap/agent/")) == 1 and Registry(heap).names("offload/") != []
        monkeypatch.setattr(heap, "_store_for", real)
        heap.collect(2)
        assert s.keys("swarmheap/agent/") == [] and Registry(heap).names("offload/") == []
    heap.check()


def test_damaged_offload_names_in_the_registry_are_passed_over(heap: sh.Heap, agent: sh.Agent) -> None:
    from swarmheap.registry import Registry

    registry = Registry(heap)
    for name in ("offload/x", "offload/99999999999/1", "offload/1/2/3", "offload/-1/1", "offload/2/0"):
        registry.put(name, b"not an entry")
    heap.collect(2)  # neither ValueError nor OverflowError out of the sweep
    assert heap.stats()["offloaded"] == []
    assert agent.state == "live"
    heap.check()


def test_a_store_that_is_down_keeps_the_agent(heap: sh.Heap, agent: sh.Agent) -> None:
    down = RedisStore("redis://127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(sh.StoreUnavailable):
        agent.offload(down)
    assert agent.state == "live"
    assert bytes(agent.get("empty")) == b""
    heap.check()


@pytest.mark.parametrize(
    ("make", "exc"),
    [
        (lambda tmp: RedisStore(6379), TypeError),  # a port, not a URL
        (lambda tmp: LMDBStore(tmp / ("x" * 300)), sh.StoreUnavailable),  # a name the file system refuses
        (lambda tmp: LMDBStore(tmp / "no-such-dir" / "deeper" / "db"), sh.StoreUnavailable),
        (lambda tmp: SQLiteStore(tmp / "no-such-dir" / "s.db"), sh.StoreUnavailable),
    ],
)
def test_a_store_that_cannot_be_opened_says_why(make: Any, exc: type[Exception], tmp_path: Any) -> None:
    with pytest.raises(exc):
        make(tmp_path)


def test_a_full_store_keeps_the_agent(heap: sh.Heap, tmp_path: Any) -> None:
    a = heap.spawn("big")
    a.put("noise", os.urandom(600_000))  # does not compress
    with LMDBStore(tmp_path / "tiny", map_size=256 * 1024) as tiny:
        with pytest.raises(sh.StoreFull, match="map_size"):
            a.offload(tiny)
    assert a.state == "live" and len(a.get("noise")) == 600_000


def test_restore_on_another_node_through_redis(heap_name: str, redis_url: str) -> None:
    with sh.Heap.create(heap_name, size="64 MiB") as source, RedisStore(redis_url) as store:
        source.set_sweep_thresholds(0, 0, 0)
        a = source.spawn("traveller")
        a.put("state", os.urandom(20_000))
        a.put("note", b"bit-exact")
        want = entries_of(a)
        a.offload(store)
        key = store.keys("swarmheap/agent/")[0]
        with mp.get_context("spawn").Pool(1) as pool:
            got = pool.apply(restore_from_store, (heap_name + "_b", redis_url, key))
        assert got == want
        with pytest.raises(sh.AgentStateError, match="another heap"):
            a.get("note")  # a touch here does not make a second copy of an agent that moved
        assert a.state == "offloaded"
        result = source.collect(2)  # told that the agent lives elsewhere: its slot goes
        assert result.agents["moved_away"] == 1
        assert a.state == "gone"
        assert store.keys("swarmheap/agent/") == []
        source.check()


class _RacingStore(SQLiteStore):
    """An SQLite store whose first delete of a blob lets another heap's
    restore_from of the same key run to its end first: two nodes racing."""

    def __init__(self, path: Any, rival: sh.Heap) -> None:
        super().__init__(path)
        self.rival: sh.Heap | None = rival
        self.rival_got: sh.Agent | None = None

    def delete(self, key: str) -> bool:
        if self.rival is not None and not key.endswith("/moved"):
            rival, self.rival = self.rival, None
            self.rival_got = rival.restore_from(self, key)
        return super().delete(key)


def test_two_heaps_restoring_one_key_at_once_make_one_agent(tmp_path: Any) -> None:
    with (
        sh.Heap.create(size="16 MiB") as source,
        sh.Heap.create(size="16 MiB") as first,
        sh.Heap.create(size="16 MiB") as second,
    ):
        store = _RacingStore(tmp_path / "shared.db", rival=second)
        a = source.spawn("traveller")
        a.put("state", os.urandom(5_000))
        want = entries_of(a)
        a.offload(store)
        key = store.keys("swarmheap/agent/")[0]
        with pytest.raises(sh.AgentStateError, match="restored by another heap"):
            first.restore_from(store, key)
        assert store.rival_got is not None and entries_of(store.rival_got) == want
        assert [x.kind for x in first.agents()] == []  # the loser's copy went
        assert [x.kind for x in second.agents()] == ["traveller"]
        assert store.keys("swarmheap/agent/") == [key + "/moved"]
        assert source.collect(2).agents["moved_away"] == 1
        for heap in (source, first, second):
            heap.check()
        store.close()


class _DeleteFailsStore(SQLiteStore):
    failing = True

    def delete(self, key: str) -> bool:
        if self.failing and not key.endswith("/moved"):
            raise sh.StoreUnavailable("the store went away")
        return super().delete(key)


def test_a_restore_whose_store_fails_at_the_end_leaves_the_blob_to_try_again(
    heap: sh.Heap, tmp_path: Any
) -> None:
    with sh.Heap.create(size="16 MiB") as source:
        store = _DeleteFailsStore(tmp_path / "shared.db")
        a = source.spawn("traveller")
        a.put("state", b"kept" * 1000)
        a.offload(store)
        key = store.keys("swarmheap/agent/")[0]
        with pytest.raises(sh.StoreUnavailable):
            heap.restore_from(store, key)
        assert heap.agents() == []
        assert store.keys("swarmheap/agent/") == [key]  # no mark: the source may still touch it
        store.failing = False
        assert bytes(a.get("state")) == b"kept" * 1000
        source.check()
        store.close()


class _LostAnswerStore(SQLiteStore):
    """Answers the restore's read, then deletes and loses the answer, then
    cannot be read: whether the delete happened cannot be told."""

    reads = 0

    def get(self, key: str) -> bytes | None:
        self.reads += 1
        if self.reads > 1:
            raise sh.StoreUnavailable("the store went away")
        return super().get(key)

    def delete(self, key: str) -> bool:
        super().delete(key)
        raise sh.StoreUnavailable("the connection dropped")


def test_a_restore_that_cannot_tell_whether_it_took_the_blob_keeps_the_agent(
    heap: sh.Heap, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with sh.Heap.create(size="16 MiB") as source:
        store = _LostAnswerStore(tmp_path / "shared.db")
        a = source.spawn("traveller")
        a.put("state", b"only copy")
        a.offload(store)
        key = store.keys("swarmheap/agent/")[0]
        store.reads = 0
        with caplog.at_level("WARNING", logger="swarmheap"):
            b = heap.restore_from(store, key)
        assert bytes(b.get("state")) == b"only copy"  # two copies at worst, never none
        assert "cannot say" in caplog.text
        store.close()


class _HookedDeleteStore(SQLiteStore):
    """An SQLite store whose next delete of a blob (not of a mark) first runs
    ``hook``: another party's step lands between a restore's read and its claim."""

    hook: Any = None

    def delete(self, key: str) -> bool:
        if self.hook is not None and not key.endswith("/moved"):
            hook, self.hook = self.hook, None
            hook()
        return super().delete(key)


def test_a_touch_that_loses_its_blob_to_restore_from_leaves_one_agent(tmp_path: Any) -> None:
    with sh.Heap.create(size="16 MiB") as source, sh.Heap.create(size="16 MiB") as other:
        store = _HookedDeleteStore(tmp_path / "shared.db")
        a = source.spawn("traveller")
        a.put("state", os.urandom(5_000))
        want = entries_of(a)
        a.offload(store)
        key = store.keys("swarmheap/agent/")[0]
        got: list[sh.Agent] = []
        store.hook = lambda: got.append(other.restore_from(store, key))
        with pytest.raises(sh.AgentStateError, match="another heap"):
            a.get("state")  # its read of the blob came first, the other heap's claim before its own
        assert entries_of(got[0]) == want
        assert a.state == "offloaded" and in_use(source)["context"] == 0  # the copy here went back
        assert source.collect(2).agents["moved_away"] == 1
        assert a.state == "gone" and store.keys("swarmheap/agent/") == []
        source.check()
        other.check()
        store.close()


def test_a_restore_from_that_loses_to_a_touch_leaves_no_mark_that_moves_the_agent_later(
    tmp_path: Any,
) -> None:
    with sh.Heap.create(size="16 MiB") as source, sh.Heap.create(size="16 MiB") as other:
        store = _HookedDeleteStore(tmp_path / "shared.db")
        a = source.spawn("traveller")
        a.put("state", b"here" * 1000)
        a.offload(store)
        key = store.keys("swarmheap/agent/")[0]
        store.hook = lambda: a.get("state").release()  # the source's touch claims it first
        with pytest.raises(sh.AgentStateError, match="restored by another heap"):
            other.restore_from(store, key)
        assert other.agents() == [] and a.state == "live"
        marks = [k for k in store.keys("swarmheap/agent/") if k.endswith("/moved")]
        assert marks  # the losing restore's mark
        a.offload(store)  # again, beside the losing restore's mark
        assert source.collect(2).agents["moved_away"] == 0
        # the full sweep took the mark no entry names (it stayed in the store for ever)
        assert [k for k in store.keys("swarmheap/agent/") if k.endswith("/moved")] == []
        assert bytes(a.get("state")) == b"here" * 1000
        source.check()
        store.close()


class _CountingStore(SQLiteStore):
    gets = lists = 0

    def get(self, key: str) -> bytes | None:
        self.gets += 1
        return super().get(key)

    def keys(self, prefix: str = "") -> list[str]:
        self.lists += 1
        return super().keys(prefix)


def test_a_full_sweep_lists_a_store_once_for_its_moved_agents(tmp_path: Any) -> None:
    with sh.Heap.create(size="16 MiB") as source, sh.Heap.create(size="16 MiB") as other:
        store = _CountingStore(tmp_path / "shared.db")
        agents = [source.spawn("idle") for _ in range(12)]
        for i, a in enumerate(agents):
            a.put("i", bytes([i]) * 100)
            a.offload(store)
        travelled = sorted(store.keys("swarmheap/agent/"))[:2]
        for key in travelled:
            other.restore_from(store, key)
        store.gets = store.lists = 0
        result = source.collect(2)
        assert result.agents["moved_away"] == 2 and store.lists == 1 and store.gets == 0
        stayed = [(i, a) for i, a in enumerate(agents) if a.state == "offloaded"]
        assert len(stayed) == 10 and all(bytes(a.get("i")) == bytes([i]) * 100 for i, a in stayed)
        source.collect(0)  # a young sweep asks per agent it examines, and lists nothing
        assert store.lists == 1
        source.check()
        store.close()


def test_a_restorer_whose_agent_is_given_back_after_its_claim_puts_the_blob_back(
    heap: sh.Heap, tmp_path: Any
) -> None:
    store = _HookedDeleteStore(tmp_path / "s.db")
    a = heap.spawn("traveller")
    a.put("state", b"only copy" * 100)
    a.offload(store)
    # another restorer of this heap, misled by a losing restore_from's mark,
    # gives the memory back just as this one takes the blob
    store.hook = lambda: heap._owner_offload(a.id, a.generation, a.kind, only_restoring=True)
    assert bytes(a.get("state")) == b"only copy" * 100  # the blob went back, and the restore ran again
    assert a.state == "live" and store.keys("swarmheap/agent/") == [] and heap.stats()["offloaded"] == []
    heap.check()
    store.close()


class _DiesAfterDeleteStore(SQLiteStore):
    """Deletes, then the process 'dies' (SystemExit, which nothing catches)."""

    dying = True

    def delete(self, key: str) -> bool:
        done = super().delete(key)
        if self.dying and not key.endswith("/moved"):
            self.dying = False
            raise SystemExit("killed between the claim and going live")
        return done


def test_a_restorer_that_dies_after_its_claim_is_finished_by_the_next_touch(
    heap: sh.Heap, tmp_path: Any
) -> None:
    store = _DiesAfterDeleteStore(tmp_path / "s.db")
    a = heap.spawn("traveller")
    a.put("state", b"complete" * 100)
    a.offload(store)
    with pytest.raises(SystemExit):
        a.get("state")
    assert a.state == "restoring" and store.keys("swarmheap/agent/") == []
    assert bytes(a.get("state")) == b"complete" * 100  # every entry went back before the claim
    assert a.state == "live" and heap.stats()["offloaded"] == []
    heap.check()
    store.close()


def fill(heap: sh.Heap, kind: str, each: int, times: int, agents: list[sh.Agent]) -> None:
    """Spawn agents of ``kind`` holding ``each`` bytes until ``times`` what
    `context` holds were put (into ``agents``, so that a caller that expects
    a PartitionFull still has the ones made before it)."""
    capacity = heap.stats()["partitions"]["context"]["capacity"]
    for i in range(times * capacity // each):
        a = heap.spawn(kind)
        agents.append(a)
        a.put("data", bytes([i % 256]) * each)


def test_the_watermark_policy_offloads_idle_agents(tmp_path: Any) -> None:
    with sh.Heap.create(size="16 MiB") as heap, SQLiteStore(tmp_path / "spill.db") as store:
        heap.set_offload_policy(store, "context", high=0.8, low=0.5, min_idle=0.0)
        agents: list[sh.Agent] = []
        fill(heap, "idle", 1_000_000, 3, agents)  # three times what fits
        assert sum(a.state == "offloaded" for a in agents) > 0
        for i, a in enumerate(agents):  # every agent's data intact, offloaded or not
            assert bytes(a.get("data")) == bytes([i % 256]) * 1_000_000
            a.offload(store)
        heap.check()


def test_the_policy_offloads_large_idle_agents_before_small_ones(tmp_path: Any) -> None:
    with sh.Heap.create(size="64 MiB") as heap, SQLiteStore(tmp_path / "spill.db") as store:
        heap.set_offload_policy(store, "context", high=0.8, low=0.5, min_idle=0.0)
        small = [heap.spawn("note") for _ in range(300)]  # the least recently active: a few KB each
        for a in small:
            a.put("note", b"n" * 2000)
        large: list[sh.Agent] = []
        fill(heap, "big", 2_000_000, 2, large)
        # the room came from the large ones: thousands of store writes of a
        # few KB each would have freed what two of them hold
        assert sum(a.state == "offloaded" for a in large) > 0
        assert all(a.state == "live" for a in small)
        heap.check()


def test_the_policy_leaves_agents_active_within_min_idle(tmp_path: Any) -> None:
    with sh.Heap.create(size="16 MiB") as heap, SQLiteStore(tmp_path / "spill.db") as store:
        heap.set_offload_policy(store, "context", high=0.8, low=0.5, min_idle=3600.0)
        agents: list[sh.Agent] = []
        with pytest.raises(sh.PartitionFull):  # nothing idle for an hour: no room made, as without a policy
            fill(heap, "busy", 1_000_000, 3, agents)
        assert all(a.state == "live" for a in agents) and store.keys("swarmheap/agent/") == []
        for a in agents:
            a.complete()
        heap.check()


def _sparse_agent(heap: sh.Heap) -> sh.Agent:
    """An agent holding two pages of `context` with one 15 KB entry in use in
    each (a 16 KiB class: never in the nursery, whose page would hold 3)."""
    a = heap.spawn("sparse")
    for i in range(8):
        a.put(f"e{i}", bytes([i]) * 15000)
    for i in range(8):
        if i % 4:
            a.delete(f"e{i}")
    return a


def test_the_policy_reads_fullness_in_pages_too(tmp_path: Any) -> None:
    # agents whose pages are mostly free blocks: every page of `context` is
    # taken at a quarter of its bytes in use. The policy read bytes in use alone,
    # found the partition under its high mark and offloaded nothing, and the
    # next agent failed with PartitionFull
    with sh.Heap.create(size="64 MiB") as heap, SQLiteStore(tmp_path / "spill.db") as store:
        heap.set_offload_policy(store, "context", high=0.8, low=0.5, min_idle=0.0)
        agents = [_sparse_agent(heap) for _ in range(400)]  # about twice what fits
        assert sum(a.state == "offloaded" for a in agents) > 0
        for a in agents:
            assert bytes(a.get("e0")) == bytes([0]) * 15000 and bytes(a.get("e4")) == bytes([4]) * 15000
            a.complete()
        heap.check()


def test_a_thread_that_fills_the_partition_during_another_thread_s_sweep_is_relieved(tmp_path: Any) -> None:
    # A thread's allocation found the partition full while another thread was
    # inside collect() (there, in an offload hook) and gave up at once with
    # PartitionFull: the room that sweep was making was not waited for, and
    # no sweep of its own was run. LangGraph puts from a helper thread while
    # the graph writes from its own.
    with sh.Heap.create(size="64 MiB") as heap, SQLiteStore(tmp_path / "spill.db") as store:
        idle = [_sparse_agent(heap) for _ in range(180)]
        inside, done = threading.Event(), threading.Event()

        def on_offload(agent_id: int, kind: str, final: dict[str, Any]) -> None:
            if threading.current_thread() is not threading.main_thread() and not inside.is_set():
                inside.set()
                assert done.wait(60), "the main thread never finished its put"

        heap.on("offload", on_offload)
        heap.set_offload_policy(store, "context", high=0.5, low=0.3, min_idle=0.0)
        sweeper = threading.Thread(target=heap.collect, args=(2,))
        sweeper.start()
        try:
            assert inside.wait(60), "the sweep offloaded nothing"
            big = heap.spawn("big")
            big.put("data", bytes(8 << 20))  # more than one offload gave back: room this thread makes
        finally:
            done.set()
            sweeper.join()
        assert bytes(big.get("data")[:16]) == bytes(16)
        big.complete()
        for a in idle:
            assert bytes(a.get("e4")) == bytes([4]) * 15000
            a.complete()
        heap.check()


def test_an_allocation_the_marks_leave_no_room_for_offloads_an_idle_agent(tmp_path: Any) -> None:
    # the partition under the policy's high mark, and an allocation larger
    # than the pages left: the policy had nothing to do by its marks, and
    # the allocation raised PartitionFull with idle agents in memory. It now
    # offloads idle agents, one a try, until the allocation fits
    with sh.Heap.create(size="64 MiB") as heap, SQLiteStore(tmp_path / "spill.db") as store:
        heap.set_offload_policy(store, "context", high=0.99, low=0.98, min_idle=0.0)
        agents = []
        for i in range(13):
            a = heap.spawn("idle")
            a.put("data", bytes([i]) * 2_000_000)
            agents.append(a)
        context = heap.stats()["partitions"]["context"]
        assert context["pages_used"] / context["pages_total"] < 0.99  # under the mark
        big = heap.spawn("big")
        big.put("data", b"B" * 2_000_000)
        assert [a.state for a in agents].count("offloaded") >= 1
        for i, a in enumerate(agents):
            assert bytes(a.get("data")[:4]) == bytes([i]) * 4
            a.complete()
        big.complete()
        heap.check()


class _SignallingLock:
    """An RLock that says when a thread other than its creator asks for it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.asked = threading.Event()
        self.owner = threading.get_ident()

    def __enter__(self) -> None:
        if threading.get_ident() != self.owner:
            self.asked.set()
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_an_agent_another_thread_offloaded_first_is_not_restored_to_be_offloaded(
    heap: sh.Heap, tmp_path: Any
) -> None:
    # two threads offloading one agent: the second checked it was live, then
    # waited for the first; its snapshot then touched the offloaded agent,
    # which restored it (room taken while making room: the policy's
    # PartitionFull under memory pressure), and offloaded it again
    with SQLiteStore(tmp_path / "spill.db") as store:
        a = heap.spawn("shared")
        a.put("data", b"d" * 5000)
        restores: list[int] = []
        heap.on("restore", lambda agent_id, kind, stats: restores.append(agent_id))
        lock = heap._moving_lock = _SignallingLock()
        outcome: list[Any] = []

        def second() -> None:
            try:
                outcome.append(a.offload(store))
            except sh.AgentStateError as exc:
                outcome.append(exc)

        with lock:
            other = threading.Thread(target=second)
            other.start()
            assert lock.asked.wait(60)
            a.offload(store)  # the first, while the other waits for the lock
        other.join()
        assert isinstance(outcome[0], sh.AgentStateError), outcome
        assert restores == [] and a.state == "offloaded"
        assert bytes(a.get("data")) == b"d" * 5000
        a.complete()
        heap.check()


def test_offload_policy_arguments(heap: sh.Heap, tmp_path: Any) -> None:
    with SQLiteStore(tmp_path / "p.db") as s:
        with pytest.raises(ValueError):
            heap.set_offload_policy(s, "nowhere")
        with pytest.raises(ValueError):
            heap.set_offload_policy(s, high=0.5, low=0.9)
        for never in (float("nan"), float("inf"), -1.0):  # NaN made a policy that never offloaded
            with pytest.raises(ValueError, match="min_idle"):
                heap.set_offload_policy(s, min_idle=never)
        with pytest.raises(TypeError, match="open_store"):
            heap.set_offload_policy(str(tmp_path / "p.db"))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="open_store"):
            heap.restore_from("sqlite:///p.db", "key")  # type: ignore[arg-type]
        heap.set_offload_policy(s)
        assert heap.store is s
        heap.set_offload_policy(None)


# ---- file-backed heaps ----


def test_a_file_backed_heap_outlives_its_process(tmp_path: Any) -> None:
    path = str(tmp_path / "heap.bin")
    heap = sh.Heap.create(size="32 MiB", path=path)
    a = heap.spawn("keeper")
    a.put("k", b"persisted")
    heap.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_workers.file_heap_reader, (path, a.id)) == b"persisted"
    with pytest.raises(sh.HeapExists):
        sh.Heap.create(size="32 MiB", path=path)
    # the file is named as given, everywhere it is named
    with pytest.raises(sh.HeapNotFound, match=f"no heap file '{path}.gone'"):
        sh.Heap.attach(path=path + ".gone")
    with sh.Heap.attach(path=path, read_only=True) as reader:
        assert f"file '{path}'" in repr(reader) and "read-only" in repr(reader)
        with pytest.raises(sh.ReadOnlyHeap, match=f"heap file '{path}' is attached read-only"):
            reader.spawn("writer")


def test_a_directory_given_as_a_heap_path_is_named_as_one(tmp_path: Any) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory: a file-backed heap's path names the file"):
        sh.Heap.create(size="16 MiB", path=str(tmp_path))
    with pytest.raises(IsADirectoryError, match="is a directory: path= names a heap's file"):
        sh.Heap.attach(path=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_file_backed_heap_s_unlink_removes_its_file(tmp_path: Any) -> None:
    path = str(tmp_path / "heap.bin")
    with sh.Heap.create(size="16 MiB", path=path) as heap:
        agent = heap.spawn("k")
        agent.put("x", b"kept in the mapping")
        with pytest.raises(ValueError, match=r"os\.remove"):
            sh.unlink(path)  # the module's unlink takes shared-memory names
        heap.unlink()
        assert not os.path.exists(path)
        assert agent.read("x") == b"kept in the mapping"  # the mapping outlives the name, as in /dev/shm
        with pytest.raises(sh.HeapNotFound):
            heap.unlink()
        agent.complete()
        heap.check()
    with pytest.raises(sh.HeapNotFound):
        sh.Heap.attach(path=path)


def test_a_file_backed_heap_keeps_its_detached_agents_after_its_writer_exits(tmp_path: Any) -> None:
    """The writer closes the file and ends. Its agents went with it at the
    next sweep, as any process's; one it detached is the heap's and stays,
    for any later process (or boot) to read."""
    path = str(tmp_path / "heap.bin")
    with mp.get_context("spawn").Pool(1) as pool:
        kept_id, other_id = pool.apply(_workers.file_heap_writer_exits, (path,))
    with sh.Heap.attach(path=path) as heap:
        result = heap.collect(2)
        assert result.agents["dead_process"] == 1
        assert heap.agent(kept_id).read("k") == b"persisted"
        with pytest.raises(sh.AgentStateError):
            heap.agent(other_id)
        heap.check()


def test_a_file_backed_heap_recovers_after_its_writer_was_killed(tmp_path: Any) -> None:
    path = str(tmp_path / "heap.bin")
    sh.Heap.create(size="32 MiB", path=path).close()
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    proc = ctx.Process(target=_workers.file_heap_writer_dies, args=(path, ready))
    proc.start()
    dead_id = ready.get(timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with sh.Heap.attach(path=path) as heap:
        result = heap.collect(2)
        assert result.agents["dead_process"] == 1
        assert heap._owner_generation(dead_id) == 0
        heap.check()
        assert heap.stats()["partitions"]["context"]["in_use"] == 0


def test_a_foreign_heap_file_is_refused(tmp_path: Any) -> None:
    path = str(tmp_path / "heap.bin")
    sh.Heap.create(size="32 MiB", path=path).close()
    os.chmod(path, 0o644)
    with pytest.raises(sh.AttachError, match="0644"):
        sh.Heap.attach(path=path)


# ---- nothing lost when a process dies inside an offload or a restore ----


def test_kills_during_offload_and_restore_lose_no_agent(heap_name: str, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/kills.db"
    ctx = mp.get_context("spawn")
    kills = int(os.environ.get("SWARMHEAP_OFFLOAD_KILLS", "50"))
    rng = random.Random(5)
    with sh.Heap.create(heap_name, size="64 MiB") as heap, open_store(url) as store:
        heap.set_sweep_thresholds(0, 0, 0)
        survivors: dict[int, bytes] = {}
        for k in range(kills):
            ready = ctx.Queue()
            proc = ctx.Process(target=_workers.offload_restore_loop, args=(heap_name, url, k, ready))
            proc.start()
            ids = ready.get(timeout=60)
            time.sleep(rng.random() * 0.05)  # a random point in the loop (not a synchronisation)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            for i, agent_id in enumerate(ids):
                survivors[agent_id] = f"{k}-{i}".encode() * 50
                agent = heap._agent_at(agent_id, heap._owner_generation(agent_id))
                # in memory, or restorable from the store (restoring: a restore was
                # killed half way, and this touch finishes it), never neither
                assert agent.state in ("live", "offloaded", "restoring"), agent.state
                assert bytes(agent.get("who")) == survivors[agent_id]
                agent.complete()
            heap.collect(2)
            heap.check()
        assert store.keys("swarmheap/agent/") == []


def test_concurrent_index_updates_free_each_replaced_block_once() -> None:
    # update_index retries a change after a race; a replaced block must be
    # freed once, for the run that won (not for every run): a second free
    # once handed another writer's block back and lost a registry entry
    import threading

    from swarmheap.registry import Registry

    heap = sh.Heap.create(size="64 MiB")  # room in `system` for six threads' index blocks in flight
    agent = heap.spawn("shared-index")
    registry = Registry(heap)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(150):
                agent.put(f"k{k}", bytes([k, i % 256]) * 50)
                registry.put(f"test/{k}", bytes([k, i % 256]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(6):
        assert bytes(agent.get(f"k{k}")) == bytes([k, 149]) * 50
        assert registry.get(f"test/{k}") == bytes([k, 149])
        registry.remove(f"test/{k}")
    agent.complete()
    heap.check()
    heap.close()


def test_the_policy_logs_and_waits_while_system_has_no_room(
    heap: sh.Heap, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # an offload first writes the registry entry that says where the agent
    # goes, into `system`: with no room there the policy raised PartitionFull
    # out of the sweep; it logs, keeps the agent, and tries again later
    with SQLiteStore(tmp_path / "s.db") as store:
        heap.set_offload_policy(store, min_idle=0.0)
        _offload_waits_for_room(heap, caplog)
        heap.set_offload_policy(None)


def _offload_waits_for_room(heap: sh.Heap, caplog: pytest.LogCaptureFixture) -> None:
    idle = heap.spawn("idle")
    idle.put("v", b"v" * (1 << 20))
    held = fill_system(heap)
    filler = fill_context(heap)
    assert idle.state == "live"
    heap.collect(2)
    assert idle.state == "live" and "retried later" in caplog.text
    heap.check()
    for blk in held:
        blk.free()
    heap.collect(2)
    assert idle.state == "offloaded"
    filler.complete()
    assert idle.read("v") == b"v" * (1 << 20)
    heap.check()


def test_a_new_kind_spawns_while_system_has_no_room_and_is_named_later(named: sh.Heap) -> None:
    # a kind's name goes into the registry at its first spawn (so that any
    # process names an agent without an index): with no room in `system`
    # that spawn raised PartitionFull; the name now waits for a later spawn
    held = fill_system(named)
    first = named.spawn("newcomer")
    assert first.kind == "newcomer"
    for blk in held:
        blk.free()
    second = named.spawn("newcomer")
    with sh.Heap.attach(named.name) as other:  # its own caches: it reads the registry
        kinds = {o["kind"] for o in other.stats()["owners"] if o["id"] in (first.id, second.id)}
    assert kinds == {"newcomer"}
    first.complete()
    second.complete()
    named.check()


def test_a_restore_is_done_though_system_has_no_room_to_drop_its_entry(heap: sh.Heap, tmp_path: Any) -> None:
    # the agent's entries went back (its index fits where its old one was)
    # and its blob was taken; the registry's removal of its offload entry
    # then found no room in `system` and the touch raised PartitionFull
    # with the agent live: the entry now stays for a later sweep
    with SQLiteStore(tmp_path / "s.db") as store:
        _restore_is_done(heap, store)


def _restore_is_done(heap: sh.Heap, store: Store) -> None:
    agent = heap.spawn("k")
    agent.put("x", b"c" * 5000)
    agent.offload(store)
    held = fill_system(heap)
    assert agent.read("x") == b"c" * 5000
    assert agent.state == "live" and heap.stats()["offloaded"] == []
    heap.check()
    for blk in held:
        blk.free()
    agent.offload(store)  # again: its new entry replaces the one left
    assert agent.read("x") == b"c" * 5000
    agent.complete()
    heap.collect(2)
    assert store.keys("swarmheap/agent/") == []
    heap.check()


def test_an_lmdb_put_outlives_its_process_killed(tmp_path: Any) -> None:
    # LMDBStore leaves a put's flush to disk to the OS (sync=False, as the
    # SQLite store's synchronous=NORMAL does): a put that returned is the
    # store's when its process is SIGKILLed before close
    pytest.importorskip("lmdb")
    path = str(tmp_path / "killed.lmdb")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    worker = ctx.Process(target=_workers.lmdb_put_and_wait, args=(path, ready))
    worker.start()
    assert ready.wait(60)
    os.kill(worker.pid or 0, signal.SIGKILL)
    worker.join()
    with LMDBStore(path) as store:
        assert store.get("kept") == b"v" * 16_000
    with LMDBStore(str(tmp_path / "synced.lmdb"), sync=True) as store:
        store.put("k", b"v")
        assert store.get("k") == b"v"
    with pytest.raises(TypeError, match="sync"):
        LMDBStore(str(tmp_path / "bad.lmdb"), sync="yes")  # type: ignore[arg-type]


def test_an_agent_restored_after_its_process_exited_is_the_restorer_s(heap_name: str, tmp_path: Any) -> None:
    """Offloaded by a process that then exited, restored here by a touch: the
    agent is this process's from the restore, and a sweep keeps it. Live
    again under its dead creator's pid, the next sweep reclaimed it."""
    url = f"sqlite:///{tmp_path}/left.db"
    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        with mp.get_context("spawn").Pool(1) as pool:
            agent_id, generation = pool.apply(_workers.spawn_then_leave, (heap_name, "offload", url))
        assert heap.collect(2).agents["dead_process"] == 0  # offloaded: kept, restorable by any process
        agent = heap.agent(agent_id)
        assert agent.generation == generation and agent.read("m") == b"kept"  # the touch restores it
        assert agent.state == "live" and agent.stats()["pid"] == os.getpid()
        assert heap.collect(2).agents["dead_process"] == 0
        assert agent.read("m") == b"kept"
        agent.complete()
        heap.check()


def test_a_restore_finished_for_a_dead_restorer_is_the_finisher_s(heap_name: str, tmp_path: Any) -> None:
    """Offloaded by a process that exited; a second process restores it and
    dies between its claim and going live (RESTORING, the second process's);
    a touch here finishes the restore and takes the agent over, so the
    next sweep keeps it. Finished under the dead restorer's pid, that sweep
    reclaimed it."""
    path = str(tmp_path / "left.db")
    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            agent_id, _ = pool.apply(_workers.spawn_then_leave, (heap_name, "offload", f"sqlite:///{path}"))
        restorer = ctx.Process(
            target=_workers.restore_and_die_after_the_claim, args=(heap_name, path, agent_id)
        )
        restorer.start()
        restorer.join(60)
        assert restorer.exitcode == 0
        agent = heap.agent(agent_id)
        assert agent.state == "restoring" and agent.stats()["pid"] == restorer.pid
        with agent.get("m") as view:  # the touch finishes the restore
            assert bytes(view) == b"kept"
        assert agent.state == "live" and agent.stats()["pid"] == os.getpid()
        assert heap.collect(2).agents["dead_process"] == 0
        assert agent.read("m") == b"kept"
        agent.complete()
        heap.check()


def test_a_process_that_read_an_agent_before_its_offload_reads_it_as_restored(
    named: sh.Heap, tmp_path: Any
) -> None:
    """Another Heap object (another process, as far as its caches go) read
    the agent, which was then offloaded and restored. The restored index
    lands in the block the old one had (the allocator hands it back), and its
    word once came out the same as before the offload: the reader's cache
    took the old entries, at places the restore had given to other data
    (here another agent's block: StaleBlock; in a four-thread run, the
    agent's own other entry: the wrong bytes)."""
    with sh.Heap.attach(named.name) as reader, SQLiteStore(tmp_path / "s.db") as store:
        writer = named.spawn("abab")
        writer.put("k", b"A" * 4000)
        seen = reader.agent(writer.id)
        assert seen.read("k") == b"A" * 4000  # the reader now knows the index under its word
        before = named._owner_word(writer.id, writer.generation)
        writer.offload(store)
        squatter = named.spawn("squatter")
        squat = squatter.alloc(4000)  # where "k" was: the restore puts it elsewhere
        squat[:] = b"S" * 4000
        writer.restore()
        assert named._owner_word(writer.id, writer.generation) != before
        assert seen.read("k") == b"A" * 4000
        seen.put("k2", b"B" * 100)  # an update from the reader builds on the restored index
        assert writer.read("k") == b"A" * 4000 and writer.read("k2") == b"B" * 100
        assert bytes(squat) == b"S" * 4000
        squat.free()
        writer.complete()
        squatter.complete()
    named.check()


def test_a_second_restorer_never_puts_its_blob_over_what_was_written_since(
    heap: sh.Heap, tmp_path: Any
) -> None:
    """Two processes touch an offloaded agent at once. The second finds it
    RESTORING (the first began) and goes on as a restorer too, taking the
    first for dead; the first puts the entries, goes live, and a writer
    replaces an entry; then the second puts its blob's entries. They went
    over the writer's (x read b'old' again: a lost update); now a
    restorer's entries go in only on the sealed word, once."""
    from swarmheap import offload, offload_entries
    from swarmheap._core import SEALED_WORD

    with SQLiteStore(tmp_path / "s.db") as store:
        agent = heap.spawn("k")
        agent.put("x", b"old")
        agent.put("y", b"kept")
        agent.offload(store)
        entry = offload_entries.entry_of(heap, agent.id, agent.generation)
        assert entry is not None
        real_parsed, real_adopt = offload.parsed, heap._owner_adopt_orphan

        @contextlib.contextmanager
        def first_begins(*args: Any) -> Iterator[Any]:
            with real_parsed(*args) as state:
                heap._owner_set_state(
                    agent.id, agent.generation, "offloaded", "restoring"
                )  # the first's claim
                yield state

        def first_finishes_and_a_writer_writes(*args: Any) -> None:
            heap._owner_adopt_orphan = real_adopt  # type: ignore[method-assign]
            heap._restoring.add((agent.id, agent.generation))
            agent._put_named({"x": b"old", "y": b"kept"}, expect_word=SEALED_WORD)
            heap._restoring.discard((agent.id, agent.generation))
            store.delete(entry.key)
            heap._owner_set_state(agent.id, agent.generation, "restoring", "live")
            offload_entries.drop_entry(heap, agent.id, agent.generation, only=entry.raw)
            agent.put("x", b"new")  # live: a writer
            real_adopt(*args)

        offload.parsed = first_begins  # type: ignore[assignment]
        heap._owner_adopt_orphan = first_finishes_and_a_writer_writes  # type: ignore[method-assign]
        try:
            offload._restore_in_place(agent)  # the second restorer
        finally:
            offload.parsed = real_parsed  # type: ignore[assignment]
            heap._owner_adopt_orphan = real_adopt  # type: ignore[method-assign]
        assert agent.state == "live"
        assert agent.read("x") == b"new" and agent.read("y") == b"kept"
        assert offload_entries.entry_of(heap, agent.id, agent.generation) is None
        assert store.keys("swarmheap/agent/") == []
        agent.complete()
        heap.check()


def test_an_offload_does_not_take_the_entry_of_another_under_way(heap: sh.Heap, tmp_path: Any) -> None:
    """Two processes offload one agent at once: each wrote its registry
    entry over the other's, and a restore between the winner's memory
    going and the loser's blob being written found the loser's entry and no
    blob ("its snapshot is not in ... deleted"). The second now finds the
    first's young entry and does not offload (AgentStateError); the agent
    stays live and whole."""
    from swarmheap import offload_entries
    from swarmheap.registry import Registry

    with SQLiteStore(tmp_path / "s.db") as store:
        agent = heap.spawn("k")
        agent.put("x", b"data")
        name = offload_entries.entry_name(agent.id, agent.generation)
        under_way = offload_entries.entry_bytes(store.url, "another/offload", "k", time.time(), None)
        sh_registry = Registry(heap)
        sh_registry.put(name, under_way)  # another process's offload, its entry written
        with pytest.raises(sh.AgentStateError, match="being offloaded or restored by another process"):
            agent.offload(store)
        assert agent.state == "live" and agent.read("x") == b"data"
        assert sh_registry.get(name) == under_way  # the other's entry stands
        assert store.keys("swarmheap/agent/") == []
        old = offload_entries.entry_bytes(store.url, "killed/offload", "k", time.time() - 1000, None)
        sh_registry.put(name, old)  # a killed offload's, older than STALE_AFTER: taken over
        agent.offload(store)
        assert agent.read("x") == b"data"
        agent.complete()
        heap.collect(2)
        heap.check()


def test_a_block_a_put_dropped_is_not_freed_after_an_offload_gave_it_back(
    heap: sh.Heap, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put frees the block it replaced after its index update, with no lock
    between: another process may offload the agent in between (the block
    goes back with its memory) and bring it back, its restore or a put
    naming that block again. The late free freed it under the new index
    (an entry read as StaleBlock from then on: the open race of the
    process test below, about one run in six). It now frees only a block of
    the incarnation it dropped it in."""
    agent = heap.spawn("k")
    for i in range(6):
        agent.put(f"e{i}", bytes([i]) * 100)
    free_entry = sh.Agent._free_entry
    named_again: list[bool] = []

    def offloaded_and_back_first(self: sh.Agent, offset: int, offloads: int) -> None:
        monkeypatch.setattr(sh.Agent, "_free_entry", free_entry)
        with SQLiteStore(tmp_path / "cold.db") as store:
            self.offload(store)  # as another process would, between the update and the free
            for k in range(40):  # brought back, and put to until the dropped block is named again
                if offset in {place for place, _ in self._read_index_word()[1][2].values()}:
                    break
                self.put(f"f{k}", bytes([100 + k]) * 100)
            named_again.append(offset in {place for place, _ in self._read_index_word()[1][2].values()})
            free_entry(self, offset, offloads)

    monkeypatch.setattr(sh.Agent, "_free_entry", offloaded_and_back_first)
    agent.put("e0", b"x" * 100)
    assert named_again == [True]
    for name in agent.names():
        expected = (
            b"x" * 100 if name == "e0" else bytes([int(name[1:]) + (100 if name[0] == "f" else 0)]) * 100
        )
        assert agent.read(name) == expected, name
    heap.check()
    agent.complete()
    heap.check()


def test_a_put_whose_blocks_an_offload_gave_back_does_not_go_in_on_the_restored_index(
    heap: sh.Heap, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put fills its blocks, then swaps its index in. Another process may
    offload the agent in between (the blocks go back with its memory) and
    bring it back: the put's swap from the restored index's word went in,
    and named blocks that were free or another agent's (read as StaleBlock
    for good, or another entry's bytes). Its swap now goes in only while the
    agent is in the offload its blocks were made in; the put starts again."""
    agent = heap.spawn("k")
    other = heap.spawn("k")
    for i in range(4):
        agent.put(f"e{i}", bytes([i]) * 100)
    put_entries = index.put_entries
    armed: list[bool] = []
    offloaded: list[int] = []

    def offloaded_and_back_first(*args: Any, **kwargs: Any) -> Any:
        if armed.pop() if armed else False:
            with SQLiteStore(tmp_path / "cold.db") as store:
                offloaded.append(agent.offload(store)["blocks"])  # as another process would
                agent.names()  # back
            for k in range(4):  # the blocks it gave back handed out again
                other.put(f"o{len(offloaded)}{k}", bytes([200 + k]) * 100)
        return put_entries(*args, **kwargs)

    monkeypatch.setattr(index, "put_entries", offloaded_and_back_first)
    armed.append(True)
    agent.put("new", b"n" * 100)
    armed.append(True)
    agent.put_many({"e1": b"1" * 100, "more": b"m" * 3000})
    monkeypatch.undo()
    assert len(offloaded) == 2
    expected = {"e0": bytes([0]) * 100, "e1": b"1" * 100, "e2": bytes([2]) * 100, "e3": bytes([3]) * 100}
    expected |= {"new": b"n" * 100, "more": b"m" * 3000}
    assert {name: agent.read(name) for name in agent.names()} == expected
    assert {name: other.read(name) for name in other.names()} == {
        f"o{n}{k}": bytes([200 + k]) * 100 for n in (1, 2) for k in range(4)
    }
    heap.check()


def test_processes_sharing_agents_under_pressure_read_back_right(heap_name: str, tmp_path: Any) -> None:
    """Three processes put, delete, read (items()), sweep, offload and
    snapshot the same 40 heap-owned agents in an 8 MiB heap, the offload
    policy taking any agent not in use (min_idle=0): every entry read, in an agent or a copy
    made from its snapshot, is that entry's bytes at some version.
    agent.snapshot() and items() raised KeyError for an entry another
    process deleted as they read it, and get() StaleBlock for an agent
    another process was restoring."""
    from _workers import shared_agents_writer

    ctx = mp.get_context("spawn")
    url = f"sqlite:///{tmp_path / 'cold.db'}"
    with sh.Heap.create(heap_name, size="8 MiB") as heap:
        agents = [heap.spawn("shared") for _ in range(40)]
        for agent in agents:
            agent.detach()
        barrier = ctx.Manager().Barrier(3)
        with ctx.Pool(3) as pool:
            runs = [
                pool.apply_async(
                    shared_agents_writer,
                    (heap_name, who, 50 + who, 1500, [a.id for a in agents], url, barrier),
                )
                for who in range(3)
            ]
            wrong = [line for run in runs for line in run.get(timeout=600)]
        assert wrong == []
        for agent in agents:
            agent.complete()
        heap.collect(2)
        heap.check()


def _offloaded_before_each_read(monkeypatch: pytest.MonkeyPatch, store: Store) -> list[bool]:
    """Agent._read_index_word offloads the agent first, as another process's
    policy with min_idle=0 would the moment a touch brought it back: the
    list says which offloads went (False: refused, pinned or offloaded)."""
    read_index_word = sh.Agent._read_index_word
    offloads: list[bool] = []
    inside: list[bool] = []

    def offloaded_first(self: sh.Agent) -> Any:
        if not inside:  # the offload's own snapshot reads the index too
            inside.append(True)
            try:
                self.offload(store)
                offloads.append(True)
            except sh.AgentStateError:
                offloads.append(False)
            finally:
                inside.clear()
        return read_index_word(self)

    monkeypatch.setattr(sh.Agent, "_read_index_word", offloaded_first)
    return offloads


def test_get_holds_an_agent_that_other_processes_offload_as_soon_as_it_is_back(
    heap: sh.Heap, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an offload policy of min_idle=0 in several processes, an agent a
    touch brought back is offloaded by another process at once, before the
    reader reads its index: get() met the sealed word on each of its hundred
    rounds and raised StaleBlock. After a round lost so, get() pins the agent
    live for the rest (an offload leaves a pinned agent alone)."""
    agent = heap.spawn("k")
    agent.put("e", b"v" * 100)
    with SQLiteStore(tmp_path / "cold.db") as store:
        offloads = _offloaded_before_each_read(monkeypatch, store)
        with agent.get("e") as view:
            assert bytes(view) == b"v" * 100
        monkeypatch.undo()
    assert True in offloads and offloads[-1] is False  # offloaded in the first round, refused under the pin
    assert agent.stats()["pins"] == 0
    heap.check()


def test_copies_of_an_agent_other_processes_offload_as_soon_as_it_is_back_are_whole(
    heap: sh.Heap, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read() and the copy of every entry (copy_thread's) met the sealed
    word of an agent offloaded again right after a touch brought it back,
    whose index names nothing: read() raised KeyError for an entry the
    agent has, and the whole copy, names() and ``in`` came back empty. They
    now bring it back, and hold it after a lost round."""
    agent = heap.spawn("k")
    entries = {f"e{i}": bytes([i]) * 100 for i in range(3)}
    agent.put_many(entries)
    with SQLiteStore(tmp_path / "cold.db") as store:
        offloads = _offloaded_before_each_read(monkeypatch, store)
        assert agent.read("e1") == entries["e1"]
        assert agent._read_all() == entries
        with pytest.raises(KeyError):
            agent.read("missing")
        assert agent.names() == list(entries) and "e2" in agent
        monkeypatch.undo()
    assert True in offloads
    assert agent.stats()["pins"] == 0
    heap.check()


def test_a_snapshot_is_of_one_index_word_while_another_writer_deletes(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry deleted by another writer between the snapshot's reading of
    the names and its read of that entry: the snapshot reads the agent
    again (it raised KeyError), and items() passes over the entry."""
    agent = heap.spawn("k")
    for i in range(4):
        agent.put(f"e{i}", bytes([i]) * 100)
    get = sh.Agent.get
    deleted: list[str] = []

    def deleted_first(self: sh.Agent, name: str) -> Any:
        if not deleted:
            deleted.append(name)
            self.delete(name)  # as another process would, just before this read
        return get(self, name)

    monkeypatch.setattr(sh.Agent, "get", deleted_first)
    assert [name for name, _ in agent.items()] == ["e1", "e2", "e3"]
    deleted.clear()
    agent.put("e0", bytes([0]) * 100)
    copy = heap.restore(agent.snapshot())
    assert len(deleted) == 1
    monkeypatch.undo()
    kept = {f"e{i}": bytes([i]) * 100 for i in range(4) if f"e{i}" != deleted[0]}
    assert {n: copy.read(n) for n in copy.names()} == kept
    copy.complete()
    agent.complete()
    heap.check()


def test_an_offload_killed_before_the_memory_went_does_not_hold_the_next_one_off(
    heap_name: str, tmp_path: Any
) -> None:
    """A process killed between writing an offload's registry entry and blob
    and giving back the memory leaves the agent live beside an entry no
    finished offload wrote. The entry names its writer (pid and start
    time): once that process is gone, the next offload takes the entry's
    place at once, and drops the dead try's blob; it was refused for
    STALE_AFTER (five minutes) as an offload under way."""
    path = str(tmp_path / "killed.db")
    with sh.Heap.create(heap_name, size="64 MiB") as heap, SQLiteStore(path) as store:
        agent = heap.spawn("victim")
        agent.put("m", b"kept" * 300)
        agent.detach()  # the heap's, not this process's: the worker's offload may take it
        worker = mp.get_context("spawn").Process(
            target=_workers.offload_and_die_before_the_memory_goes, args=(heap_name, path, agent.id)
        )
        worker.start()
        worker.join()
        assert worker.exitcode == 0
        assert agent.state == "live"
        assert len(store.keys("swarmheap/agent/")) == 1  # the dead try's blob
        agent.offload(store)
        assert agent.state == "offloaded"
        assert len(store.keys("swarmheap/agent/")) == 1  # this offload's alone
        assert bytes(agent.get("m")) == b"kept" * 300
        agent.complete()
        heap.collect(2)
        assert store.keys("swarmheap/agent/") == []
        heap.check()


def test_a_full_sweep_drops_at_once_what_a_killed_offload_left(heap_name: str, tmp_path: Any) -> None:
    path = str(tmp_path / "swept.db")
    with sh.Heap.create(heap_name, size="64 MiB") as heap, SQLiteStore(path) as store:
        agent = heap.spawn("victim")
        agent.put("m", b"kept" * 300)
        agent.detach()
        worker = mp.get_context("spawn").Process(
            target=_workers.offload_and_die_before_the_memory_goes, args=(heap_name, path, agent.id)
        )
        worker.start()
        worker.join()
        heap._remember_store(store)
        assert len(store.keys("swarmheap/agent/")) == 1
        heap.collect(2)
        assert store.keys("swarmheap/agent/") == []  # the entry's writer is dead: not an offload under way
        assert agent.state == "live" and bytes(agent.get("m")) == b"kept" * 300
        heap.check()


def test_an_offload_entry_names_its_writer_so_a_reused_pid_is_not_taken_for_it() -> None:
    from swarmheap import offload_entries

    entry = offload_entries.parse_entry(
        offload_entries.entry_bytes("sqlite:///x.db", "k", "a\nkind", time.time(), 12.5)
    )
    assert entry.kind == "a\nkind" and entry.deadline == 12.5
    assert entry.writer[0] == os.getpid() and not offload_entries.writer_gone(entry)
    reused = entry._replace(writer=(os.getpid(), entry.writer[1] + 1))  # the pid, another process's start
    assert offload_entries.writer_gone(reused)
    damaged = entry._replace(writer=(1 << 40, 1 << 70))  # no process's: judged by age, as one not said
    assert not offload_entries.writer_gone(damaged)
    older = offload_entries.parse_entry(b"2\nsqlite:///x.db\nk\n1.5\n\nkind")  # before entries named writers
    assert older.writer == (0, 0) and not offload_entries.writer_gone(older)
    with pytest.raises(ValueError):
        offload_entries.parse_entry(b"3\nsqlite:///x.db\nk\n1.5\n\nnot-a-pid\nkind")


def test_an_offload_taking_a_killed_one_s_place_goes_ahead_when_its_store_is_gone(
    heap_name: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The dead try's blob is in a store that cannot be opened any more: its
    delete is logged, and the offload that replaces the entry goes ahead."""
    import shutil

    gone = tmp_path / "gone"
    gone.mkdir()
    with sh.Heap.create(heap_name, size="64 MiB") as heap, SQLiteStore(str(tmp_path / "here.db")) as store:
        agent = heap.spawn("victim")
        agent.put("m", b"kept" * 300)
        agent.detach()
        worker = mp.get_context("spawn").Process(
            target=_workers.offload_and_die_before_the_memory_goes,
            args=(heap_name, str(gone / "killed.db"), agent.id),
        )
        worker.start()
        worker.join()
        assert worker.exitcode == 0 and agent.state == "live"
        shutil.rmtree(gone)  # the killed offload's store: no longer there to open
        with caplog.at_level("WARNING", logger="swarmheap"):
            agent.offload(store)
        assert agent.state == "offloaded"
        assert "could not delete a killed offload's snapshot" in caplog.text
        assert bytes(agent.get("m")) == b"kept" * 300
        agent.complete()
        heap.check()
