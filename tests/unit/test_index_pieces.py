"""An agent's index past PIECE_BYTES goes in pieces (swarmheap.index): an
update writes the pieces it changes and the table, readers in any process
read the same entries, and the pieces go with the agent's memory."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
from typing import Any

import pytest

import swarmheap as sh
from _workers import agent_entries, churn_entries_of, put_entries_of
from swarmheap import index, index_format


def _table(heap: sh.Heap, agent: sh.Agent) -> tuple[int, list[int]]:
    """(the index's format version, the offsets of its pieces) as the arena holds them."""
    _, data = heap._owner_held_read(agent.id, agent.generation)
    version, _, _, _, npieces, pos = index_format.read_head(data)
    piece = index_format.PIECE
    offsets = [piece.unpack_from(data, pos + i * piece.size)[0] for i in range(npieces)]
    return version, offsets


def _forget(heap: sh.Heap, agent: sh.Agent) -> None:
    """Drop this process's cached index of the agent: the next read decodes the arena's."""
    cached = index._per_heap(heap)
    if cached is not None:
        cached.pop(agent.id, None)


def _fill(agent: sh.Agent, count: int, prefix: str = "entry") -> dict[str, bytes]:
    made = {f"{prefix}-{i:05d}": f"value {i}".encode() for i in range(count)}
    for name, data in made.items():
        agent.put(name, data)
    return made


def test_a_large_index_goes_in_pieces_and_reads_back_in_another_process(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        agent = heap.spawn("big")
        made = _fill(agent, 2000)
        version, offsets = _table(heap, agent)
        assert version == index_format.IN_PIECES and len(offsets) > 1
        with mp.get_context("spawn").Pool(1) as pool:
            assert pool.apply(agent_entries, (heap_name, agent.id)) == made
        _forget(heap, agent)
        assert {name: bytes(agent.read(name)) for name in agent.names()} == made
        heap.check()
        agent.complete()


def test_an_append_writes_the_last_piece_and_the_table_not_the_rest(heap: sh.Heap) -> None:
    agent = heap.spawn("big")
    _fill(agent, 1500)
    _, before = _table(heap, agent)
    agent.put("one-more", b"x")
    _, after = _table(heap, agent)
    assert after[:-1] == before[:-1]  # every piece but the last is the block it was
    agent.put_many({f"batch-{i}": b"y" for i in range(3)})
    _, again = _table(heap, agent)
    assert again[:-1] == after[:-1]
    _forget(heap, agent)
    assert bytes(agent.read("one-more")) == b"x" and bytes(agent.read("batch-2")) == b"y"
    agent.complete()


def test_a_replacement_writes_its_piece_and_a_delete_keeps_the_others(heap: sh.Heap) -> None:
    agent = heap.spawn("big")
    made = _fill(agent, 1500)
    _, before = _table(heap, agent)
    agent.put("entry-00000", b"new")  # in the first piece
    _, after = _table(heap, agent)
    assert after[0] != before[0] and after[1:] == before[1:]
    agent.delete("entry-01499")  # in the last
    _, later = _table(heap, agent)
    assert later[:-1] == after[:-1]
    del made["entry-01499"]
    made["entry-00000"] = b"new"
    _forget(heap, agent)
    assert {name: bytes(agent.read(name)) for name in agent.names()} == made
    assert agent.names()[0] == "entry-00000"  # a replacement keeps its place
    agent.complete()


@pytest.mark.parametrize("seed", range(4))
def test_random_changes_keep_an_index_exact_across_pieces_and_back(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # small pieces: many of them, cut again and made whole again as the index grows and shrinks
    monkeypatch.setattr(index, "PIECE_BYTES", 256)
    rng = random.Random(seed)
    agent = heap.spawn("churn")
    model: dict[str, bytes] = {}
    versions = set()
    for step in range(1500):
        roll = rng.random()
        if roll < 0.5 or not model:
            name = f"n{step}-" + "x" * rng.randrange(0, 30)
            model[name] = rng.randbytes(rng.randrange(1, 40))
            agent.put(name, model[name])
        elif roll < 0.65:
            batch = {f"b{step}-{i}": rng.randbytes(8) for i in range(rng.randrange(1, 6))}
            if model and rng.random() < 0.5:
                batch[rng.choice(list(model))] = b"replaced in a batch"
            model.update(batch)
            agent.put_many(batch)
        elif roll < 0.8:
            name = rng.choice(list(model))
            model[name] = rng.randbytes(5)
            agent.put(name, model[name])
        else:
            for name in rng.sample(list(model), min(len(model), rng.randrange(1, 12))):
                agent.delete(name)
                del model[name]
        assert set(agent.names()) == set(model)
        if step % 100 == 99:
            versions.add(_table(heap, agent)[0])
            _forget(heap, agent)
            assert {name: bytes(agent.read(name)) for name in agent.names()} == model
            heap.check()
    assert index_format.IN_PIECES in versions
    agent.complete()


def test_pieces_go_with_the_agent_on_complete_and_on_offload(heap: sh.Heap, tmp_path: Any) -> None:
    def system() -> int:
        return int(heap.stats()["partitions"]["system"]["in_use"])

    agent = heap.spawn("big")
    made = _fill(agent, 1200)  # about 35 KB of index
    assert _table(heap, agent)[0] == index_format.IN_PIECES
    held = system()
    with sh.open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        agent.offload(store)
        assert system() < held - 30_000  # its pieces went with its memory
        agent.restore()
        assert {name: bytes(agent.read(name)) for name in agent.names()} == made
        assert _table(heap, agent)[0] == index_format.IN_PIECES
        agent.complete()
    assert system() < held - 30_000
    heap.check()


def test_threads_append_to_one_agent_in_pieces_while_others_read(heap: sh.Heap) -> None:
    agent = heap.spawn("shared")
    made = _fill(agent, 800)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(who: int) -> None:
        try:
            for i in range(200):
                agent.put(f"t{who}-{i:04d}", f"{who}:{i}".encode())
        except BaseException as exc:  # re-raised by the test
            errors.append(exc)

    def reader() -> None:
        try:
            while not done.is_set():
                names = agent.names()
                assert set(made) <= set(names)
                for name in names[:: max(1, len(names) // 20)]:
                    agent.read(name)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(who,)) for who in range(3)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    watcher.join()
    assert not errors, errors
    expected = dict(made)
    expected.update({f"t{who}-{i:04d}": f"{who}:{i}".encode() for who in range(3) for i in range(200)})
    _forget(heap, agent)
    assert {name: bytes(agent.read(name)) for name in agent.names()} == expected
    agent.complete()


def test_processes_append_to_one_agent_in_pieces(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        agent = heap.spawn("shared")
        made = _fill(agent, 800)
        agent.detach()  # the heap's: the workers write to it
        with mp.get_context("spawn").Pool(2) as pool:
            results = [
                pool.apply_async(put_entries_of, (heap_name, agent.id, f"p{who}-", 300)) for who in range(2)
            ]
            for i in range(300):
                agent.put(f"main-{i:05d}", f"main-{i}".encode())
            assert [r.get() for r in results] == [300, 300]
        expected = dict(made)
        expected.update({f"p{who}-{i:05d}": f"p{who}-{i}".encode() for who in range(2) for i in range(300)})
        expected.update({f"main-{i:05d}": f"main-{i}".encode() for i in range(300)})
        _forget(heap, agent)
        assert {name: bytes(agent.read(name)) for name in agent.names()} == expected
        heap.check()
        agent.complete()


def test_a_long_langgraph_thread_in_pieces_reads_back_in_a_new_saver(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("langgraph.checkpoint.base")
    from langgraph.checkpoint.base import empty_checkpoint

    from swarmheap.langgraph import SwarmSaver

    monkeypatch.setattr(index, "PIECE_BYTES", 1024)
    saver = SwarmSaver(heap)
    config: dict[str, Any] = {"configurable": {"thread_id": "long", "checkpoint_ns": ""}}
    version, messages = None, []
    for step in range(300):
        messages = [*messages, {"role": "user", "content": f"message {step}"}][-10:]
        version = saver.get_next_version(version, None)
        checkpoint = empty_checkpoint()
        checkpoint["id"] = f"{step:08d}"
        checkpoint["channel_values"] = {"messages": messages}
        checkpoint["channel_versions"] = {"messages": version}
        config = saver.put(
            config, checkpoint, {"source": "loop", "step": step, "parents": {}}, {"messages": version}
        )
    thread = {"configurable": {"thread_id": "long"}}
    agent = saver._agent("long", create=False)
    assert _table(heap, agent)[0] == index_format.IN_PIECES
    _forget(heap, agent)
    fresh = SwarmSaver(heap)
    ours = [
        (t.checkpoint["id"], t.checkpoint["channel_values"], t.metadata["step"]) for t in saver.list(thread)
    ]
    theirs = [
        (t.checkpoint["id"], t.checkpoint["channel_values"], t.metadata["step"]) for t in fresh.list(thread)
    ]
    assert len(ours) == 300 and ours == theirs
    assert theirs[0][1]["messages"] == messages
    fresh.delete_thread("long")


def test_processes_replace_and_delete_in_pieces_while_another_appends(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        agent = heap.spawn("shared")
        made = _fill(agent, 800)
        agent.detach()
        with mp.get_context("spawn").Pool(2) as pool:
            results = [
                pool.apply_async(churn_entries_of, (heap_name, agent.id, f"c{who}-", 200)) for who in range(2)
            ]
            for i in range(300):
                agent.put(f"main-{i:05d}", b"m")
            for name in list(made)[:100]:  # this process deletes too
                agent.delete(name)
                del made[name]
            assert [r.get() for r in results] == [200, 200]
        expected = dict(made)
        expected.update(
            {f"c{who}-{i:05d}": f"c{who}-{i}".encode() for who in range(2) for i in range(0, 200, 2)}
        )
        expected.update({f"main-{i:05d}": b"m" for i in range(300)})
        _forget(heap, agent)
        assert {name: bytes(agent.read(name)) for name in agent.names()} == expected
        heap.check()
        agent.complete()
