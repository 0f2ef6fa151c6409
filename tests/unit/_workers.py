"""Functions run in spawned worker processes (importable by name)."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import random
import threading
import traceback
from typing import Any

import swarmheap as sh
from swarmheap import _core, snapshot


def read_write_free(name: str, handle: sh.Handle, own_handle: sh.Handle) -> bytes:
    with sh.Heap.attach(name) as heap:
        blk = heap.resolve(handle)
        seen = bytes(blk[:16])
        blk[:16] = b"written by child"
        heap.resolve(own_handle).free()  # free the parent's other block
        return seen


def churn(name: str, seed: int, rounds: int) -> int:
    """Two threads allocating, writing, verifying and freeing in every partition."""
    errors: list[BaseException] = []
    heap = sh.Heap.attach(name)

    def work(tseed: int) -> None:
        rng = random.Random(tseed)
        live: list[tuple[sh.Block, bytes]] = []
        try:
            for _ in range(rounds):
                if live and rng.random() < 0.5:
                    blk, pattern = live.pop(rng.randrange(len(live)))
                    assert bytes(blk[: len(pattern)]) == pattern
                    blk.free()
                else:
                    part = rng.choice(sh.PARTITIONS)
                    size = rng.randint(1, 3000)
                    try:
                        blk = heap.alloc(size, part)
                    except sh.PartitionFull:
                        continue
                    pattern = bytes([tseed % 251]) * min(size, 32)
                    blk[: len(pattern)] = pattern
                    live.append((blk, pattern))
            for blk, pattern in live:
                assert bytes(blk[: len(pattern)]) == pattern
                blk.free()
        except BaseException as exc:  # reported to the parent
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed * 10 + i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    heap.close()
    if errors:
        raise errors[0]
    return rounds


def spawn_and_hang(name: str, n_agents: int, hold_lock: bool, ready, stop) -> None:  # type: ignore[no-untyped-def]
    """Spawn agents holding blocks, report them, then wait to be killed."""
    heap = sh.Heap.attach(name)
    ids = []
    for i in range(n_agents):
        agent = heap.spawn("worker")
        for k in range(50):
            agent.alloc(64 + k, ("context", "shared", "comm")[k % 3])[:4] = b"dead"
        agent.put("state", bytes([i]) * 100)
        ids.append(agent.id)
    if hold_lock:
        _core._testing_hold_lock(heap, "context")
    ready.put(ids)
    stop.wait()  # never set: the parent kills us


def spawn_and_exit(name: str, n_agents: int) -> list[int]:
    """Spawn agents and leave without completing them (the process then ends)."""
    heap = sh.Heap.attach(name)
    ids = [heap.spawn("orphan").id for _ in range(n_agents)]
    for agent_id in ids:
        heap.agent(agent_id).alloc(256)
    heap.close()
    return ids


def spawn_then_leave(name: str, how: str, url: str = "") -> tuple[int, int]:
    """Spawn an agent holding entry "m" = b"kept", then, by ``how``: offload
    it to the store at ``url``, detach it, or neither ("keep"); the process
    then ends. Returns its (id, generation)."""
    with sh.Heap.attach(name) as heap:
        agent = heap.spawn("left")
        agent.put("m", b"kept")
        if how == "offload":
            with sh.open_store(url) as store:
                agent.offload(store)
        elif how == "detach":
            agent.detach()
        return agent.id, agent.generation


def restore_and_die_after_the_claim(name: str, path: str, agent_id: int) -> None:
    """Touch an offloaded agent, whose blob is in the SQLite store at
    ``path``, and end this process between the restore's claim (the blob's
    delete) and its going live: the agent is left RESTORING, this
    process's (the one that offloaded it had died)."""
    from swarmheap.stores import SQLiteStore

    class DiesAfterDelete(SQLiteStore):
        def delete(self, key: str) -> bool:
            done = super().delete(key)
            os._exit(0)  # killed there: no cleanup, no close
            return done

    heap = sh.Heap.attach(name)
    heap._remember_store(DiesAfterDelete(path))
    heap.agent(agent_id).read("m")


def offload_and_die_before_the_memory_goes(name: str, path: str, agent_id: int) -> None:
    """Offload the agent to the SQLite store at ``path`` and end this process
    once its registry entry and blob are written, before the memory is given
    back: what a kill in that window leaves (the agent live, an entry and a
    blob that no finished offload wrote)."""
    from swarmheap.stores import SQLiteStore

    class DiesAfterPut(SQLiteStore):
        def put(self, key: str, blob: bytes) -> None:
            super().put(key, blob)
            os._exit(0)  # killed there: no cleanup, no close

    heap = sh.Heap.attach(name)
    heap.agent(agent_id).offload(DiesAfterPut(path))


def sweep_after_barrier(name: str, barrier) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    heap = sh.Heap.attach(name)
    barrier.wait()
    result = heap.collect(2)
    heap.close()
    return result.agents["dead_process"], result.bytes["dead_process"]


def read_agent_entry(name: str, agent_id: int, entry: str) -> tuple[str, bytes]:
    with sh.Heap.attach(name) as heap:
        agent = heap.agent(agent_id)
        return agent.kind, bytes(agent.get(entry))


def agent_kind_and_owner_kinds(name: str, agent_id: int) -> tuple[str, list[str]]:
    with sh.Heap.attach(name) as heap:
        return heap.agent(agent_id).kind, [o["kind"] for o in heap.stats()["owners"] if o["id"] >= 2]


def cache_then_die(name: str) -> None:
    """Allocate 64 blocks in the shared default heap, free half (they stay in
    this thread's cache), and die without closing anything."""
    heap = sh.Heap.attach(name)
    blocks = [heap.alloc(200, "comm") for _ in range(64)]
    for blk in blocks[:32]:
        blk.free()
    os._exit(0)


def lease_then_die(name: str, n: int) -> None:
    """Take ``n`` leased 512-byte blocks of the shared default and die holding them."""
    heap = sh.Heap.attach(name)
    for _ in range(n):
        heap.alloc(512, "shared", lease=60)
    os._exit(0)


def pin_and_hang(name: str, ready: Any) -> None:
    """Spawn an agent, hold a view of its entry open (a pin), and wait to be killed."""
    heap = sh.Heap.attach(name)
    agent = heap.spawn("pinned")
    agent.put("state", b"x" * 5000)
    agent.alloc(100_000)
    view = agent.get("state")
    ready.put(agent.id)
    threading.Event().wait()  # never set: the parent kills us
    view.release()


def view_entry(name: str, agent_id: int, entry: str, conn: Any) -> None:
    """Hold a get() view of the agent's entry; on "read", send back its bytes,
    write b"Z" into its first byte and let it go; on "hang", wait to be killed."""
    heap = sh.Heap.attach(name)
    view = heap.agent(agent_id).get(entry)
    conn.send("ready")
    if conn.recv() == "hang":
        threading.Event().wait()  # never set: the parent kills us
    conn.send(bytes(view))
    view[:1] = b"Z"
    view.release()
    conn.send("released")
    heap.close()


def peer_serve(name: str, conn: Any) -> None:
    """A second process of the heap: resolves each handle it is sent and
    answers with the block's bytes, or the name of the error."""
    with sh.Heap.attach(name) as heap:
        while True:
            handle = conn.recv()
            if handle is None:
                break
            try:
                blk = heap.resolve(handle)
                conn.send(bytes(blk))
            except sh.StaleBlock:
                conn.send("StaleBlock")  # or its subclass StaleHandle
            except sh.SwarmHeapError as exc:
                conn.send(type(exc).__name__)


def peer_read(conn: Any, handle: sh.Handle) -> Any:
    conn.send(handle)
    return conn.recv()


def crash_loop(name: str, mode: str, seed: int, conn: Any) -> None:
    """Runs one kind of tight loop until told to stop (or killed), verifying
    every byte it wrote; all its memory is an agent's, so a sweep can account
    for every byte. Sends "ready" once in the loop, then "ok" or the error."""
    faulthandler.enable()  # a crash prints where it was, in the test's captured stderr
    rng = random.Random(seed)
    try:
        heap = sh.Heap.attach(name)
    except BaseException as exc:  # reported, so a failed start is not a bare EOF
        conn.send(f"attach failed: {type(exc).__name__}: {exc}")
        return
    signalled = False
    try:
        agent = heap.spawn(f"crash-{mode}")
        held: list[tuple[sh.Block, bytes]] = []
        rounds = 0
        while not conn.poll():
            rounds += 1
            pattern = rng.randbytes(rng.choice((8, 64, 300, 2000, 9000)))
            if mode == "alloc":
                if held and rng.random() < 0.5:
                    blk, want = held.pop(rng.randrange(len(held)))
                    assert bytes(blk[: len(want)]) == want, "an agent block changed"
                    blk.free()
                else:
                    blk = agent.alloc(len(pattern))
                    blk[: len(pattern)] = pattern
                    held.append((blk, pattern))
            elif mode == "spawn":
                other = heap.spawn("crash-child")
                other.put("x", pattern)
                assert bytes(other.get("x")) == pattern, "an entry changed"
                other.complete()
            elif mode == "putget":
                key = f"k{rng.randrange(4)}"
                agent.put(key, pattern)
                assert bytes(agent.get(key)) == pattern, "an entry changed"
            elif mode == "pin":
                agent.put("p", pattern)
                view = agent.get("p")
                assert bytes(view) == pattern, "a pinned entry changed"
                view.release()
            if not signalled and rounds >= 20:
                conn.send("ready")
                signalled = True
        for blk, want in held:
            assert bytes(blk[: len(want)]) == want, "an agent block changed"
        agent.complete()
        conn.send("ok")
    except BaseException as exc:  # reported to the parent, which fails the test
        conn.send(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        heap.close()


SMALL_SHAPE = (24, 64, 200, 512, 1500, 4000)


def small_swarm(name: str, count: int, seed: int) -> tuple[int, int]:
    """Spawns `count` agents of the dense-agents issue's small shape (ten
    blocks and a 2 000-byte prompt each), verifies every byte, completes
    them. Returns (agents, blocks)."""
    rng = random.Random(seed)
    blocks = 0
    with sh.Heap.attach(name) as heap:
        agents = []
        for i in range(count):
            agent = heap.spawn("small")
            mine = []
            for k in range(10):
                blk = agent.alloc(rng.choice(SMALL_SHAPE))
                blk[:4] = (i * 16 + k).to_bytes(4, "little")
                mine.append(blk)
            agent.put("prompt", bytes([i % 251]) * 2000)
            agents.append((agent, mine))
            blocks += 11
        for i, (agent, mine) in enumerate(agents):
            for k, blk in enumerate(mine):
                assert bytes(blk[:4]) == (i * 16 + k).to_bytes(4, "little"), "a nursery block changed"
            assert bytes(agent.get("prompt")) == bytes([i % 251]) * 2000, "a prompt changed"
        for agent, _ in agents:
            agent.complete()
    return len(agents), blocks


def small_swarm_and_die(name: str, count: int, ready: Any) -> None:
    with sh.Heap.attach(name) as heap:
        ids = []
        for _ in range(count):
            agent = heap.spawn("doomed")
            for size in SMALL_SHAPE:
                agent.alloc(size)[:1] = b"d"
            agent.put("prompt", b"p" * 2000)
            ids.append(agent.id)
        ready.put(ids)
        threading.Event().wait()  # until killed


def restore_snapshot(name: str, blob: bytes) -> dict[str, bytes]:
    """Another process of the heap restores a blob and reads its entries."""
    with sh.Heap.attach(name) as heap:
        agent = heap.restore(blob)
        out = {n: bytes(agent.get(n)) for n in agent.names()}
        out["__kind__"] = agent.kind.encode()
        agent.complete()
        return out


def snapshot_dict_id(name: str, kind: str, data: bytes) -> int:
    """Another process of the heap snapshots an agent of ``kind``: the id of
    the dictionary its blob names (0: none)."""
    with sh.Heap.attach(name) as heap:
        agent = heap.spawn(kind)
        agent.put("turn", data)
        blob = agent.snapshot()
        agent.complete()
        return int(snapshot.frame_info(blob)["dict_id"])


def restore_from_store(name: str, url: str, key: str) -> dict[str, bytes]:
    """Another heap (another 'node') restores an agent from a shared store."""
    from swarmheap.stores import open_store

    with sh.Heap.create(name, size="64 MiB") as heap, open_store(url) as store:
        agent = heap.restore_from(store, key)
        out = {n: bytes(agent.get(n)) for n in agent.names()}
        agent.complete()
        return out


def file_heap_reader(path: str, agent_id: int) -> bytes:
    with sh.Heap.attach(path=path) as heap:
        return bytes(heap.agent(agent_id).get("k"))


def file_heap_writer_exits(path: str) -> tuple[int, int]:
    """Make a file-backed heap with two agents, one of them detached, close
    it and end: (the detached one's id, the other's)."""
    with sh.Heap.create(size="32 MiB", path=path) as heap:
        kept, other = heap.spawn("kept"), heap.spawn("process's")
        kept.put("k", b"persisted")
        other.put("k", b"with its process")
        kept.detach()
        return kept.id, other.id


def file_heap_writer_dies(path: str, ready: Any) -> None:
    heap = sh.Heap.attach(path=path)
    agent = heap.spawn("writer")
    agent.put("k", b"w" * 5000)
    agent.alloc(20000)
    ready.put(agent.id)
    threading.Event().wait()  # until killed


def offload_restore_loop(name: str, url: str, seed: int, ready: Any) -> None:
    """Offloads and restores agents in a tight loop until killed; each
    agent's entry names the agent, so any survivor can be verified."""
    from swarmheap.stores import open_store

    rng = random.Random(seed)
    with sh.Heap.attach(name) as heap, open_store(url) as store:
        agents = []
        for i in range(4):
            agent = heap.spawn("looper")
            agent.put("who", f"{seed}-{i}".encode() * 50)
            agents.append(agent)
        ready.put([a.id for a in agents])
        while True:
            agent = rng.choice(agents)
            if agent.state == "live":
                agent.offload(store)
            else:
                agent.restore()


def learn_kind(name: str, kind: str, count: int, size: int) -> None:
    """Agents of one kind, each using `size` bytes of context, completed here."""
    with sh.Heap.attach(name) as heap:
        for _ in range(count):
            agent = heap.spawn(kind, reserve=False)
            agent.alloc(size)
            agent.complete()
        heap.collect(0)  # folds this process's samples into the shared model


def learn_kind_unclosed(name: str, kind: str, count: int) -> None:
    """learn_kind's agents, by a worker that never closes its heap (fewer
    than a batch of samples: only the process's exit folds them in)."""
    heap = sh.Heap.attach(name)
    for _ in range(count):
        agent = heap.spawn(kind, reserve=False)
        agent.alloc(1000)
        agent.complete()


def learn_kind_and_drop(name: str, kind: str, count: int) -> int:
    """learn_kind_unclosed, then the heap dropped and collected while the
    worker lives on: the samples the model holds then, read from a new attach."""
    import gc

    learn_kind_unclosed(name, kind, count)
    gc.collect()
    with sh.Heap.attach(name) as heap:
        return heap.predict(kind).samples


def model_samples(name: str, kind: str) -> int:
    """The samples of a kind's model as a process with none of its own reads it."""
    with sh.Heap.attach(name) as heap:
        return heap.predict(kind).samples


def set_half_life(name: str, half_life: float) -> None:
    with sh.Heap.attach(name) as heap:
        heap.set_prediction(half_life=half_life)


def chan_producer(name: str, chan: str, who: int, count: int) -> int:
    """Sends `count` messages, each naming its sender and number and carrying
    a checksum of its body; returns how many it sent."""
    import hashlib

    with sh.Heap.attach(name) as heap:
        ch = heap.channel(chan)
        for i in range(count):
            body = random.Random(who * 100_000 + i).randbytes(1 + (i % 7) * 300)
            ch.send(struct_pack(who, i) + hashlib.blake2b(body, digest_size=8).digest() + body)
        return count


def struct_pack(who: int, i: int) -> bytes:
    return who.to_bytes(4, "little") + i.to_bytes(4, "little")


def chan_consumer(name: str, chan: str, out: Any) -> None:
    """Receives until the channel closes; reports (sender, number) of every
    message whose checksum verified, and any that did not."""
    import hashlib

    seen = []
    with sh.Heap.attach(name) as heap:
        ch = heap.channel(chan)
        for blk in ch:
            data = bytes(blk)
            blk.free()
            who, i = int.from_bytes(data[:4], "little"), int.from_bytes(data[4:8], "little")
            ok = hashlib.blake2b(data[16:], digest_size=8).digest() == data[8:16]
            seen.append((who, i, ok))
    out.put(seen)


def chan_loop_until_killed(name: str, chan: str, role: str, ready: Any) -> None:
    try:
        heap = sh.Heap.attach(name)
        ch = heap.channel(chan)
    except BaseException as exc:  # reported, so a failed start is not a silent timeout
        ready.put(f"start failed: {type(exc).__name__}: {exc}")
        return
    with heap:
        ready.put(os.getpid())
        i = 0
        while True:
            if role == "send":
                ch.send(b"m" * 64, lease=60.0)
            else:
                blk = ch.recv()
                blk.free()
            i += 1


def chan_send_blocked(name: str, chan: str, ready: Any) -> None:
    """Send one message, without a lease, into a full channel: it waits, the
    filled block in this process's hands, until the process is killed."""
    heap = sh.Heap.attach(name)
    ch = heap.channel(chan)
    ready.put(os.getpid())
    ch.send(b"w" * 64)


def langgraph_resume(name: str, thread_id: str) -> dict[str, Any]:
    """Another process resumes a LangGraph thread by id from the shared heap."""
    from lg_graph import build

    from swarmheap.langgraph import SwarmSaver

    with sh.Heap.attach(name) as heap:
        app = build().compile(checkpointer=SwarmSaver(heap))
        cfg = {"configurable": {"thread_id": thread_id}}
        return dict(app.invoke({"log": ["resumed"], "n": 100}, cfg))


def wait_admission(name: str, kind: str, ready: Any, result: Any) -> None:
    """Spawns with admit="wait" in another process; reports how it ended."""
    with sh.Heap.attach(name) as heap:
        ready.put("about to wait")
        try:
            agent = heap.spawn(kind, admit="wait", timeout=120)
        except sh.AdmissionTimeout:
            result.put("timed out")
            return
        agent.complete()
        result.put("admitted")


def spawn_by_default(name: str, kind: str) -> str:
    """How a spawn with the heap's default admission ends in another process."""
    with sh.Heap.attach(name) as heap:
        try:
            heap.spawn(kind).complete()
        except sh.AdmissionDenied:
            return "denied"
        return "admitted"


def registry_names(name: str, prefix: str) -> list[str]:
    from swarmheap.registry import Registry

    with sh.Heap.attach(name) as heap:
        return Registry(heap).names(prefix)


def open_new_store_at_once(path: str, barrier: Any) -> str:
    """Open the SQLite store at ``path`` when every worker is ready, put one key."""
    from swarmheap.stores import SQLiteStore

    barrier.wait()
    with SQLiteStore(path) as store:
        store.put(f"k{os.getpid()}", b"v")
    return "ok"


def view_each(name: str, conn: Any) -> None:
    """For each agent id sent: hold a get() view of its entry "m", say "ready",
    let it go on the next message (None ends), and say "released" with what
    this process's recycle hooks heard meanwhile: (agent id, kind, the
    stats' state and context bytes) for each."""
    with sh.Heap.attach(name) as heap:
        heard: list[tuple[int, str, str, int]] = []

        def hear(agent_id: int, kind: str, stats: dict[str, Any]) -> None:
            heard.append((agent_id, kind, stats["state"], stats["bytes"]["context"]))

        heap.on("recycle", hear)
        while (agent_id := conn.recv()) is not None:
            view = heap.agent(agent_id).get("m")
            conn.send("ready")
            conn.recv()
            view.release()
            conn.send(("released", heard[:]))
            heard.clear()


def lmdb_put_and_wait(path: str, ready: Any) -> None:
    """Put one 16 KB value into an LMDB store (sync=False, the default), say
    so, and wait to be killed, the store never closed."""
    from swarmheap.stores import LMDBStore

    store = LMDBStore(path)
    store.put("kept", b"v" * 16_000)
    ready.set()
    threading.Event().wait(60)


def agent_entries(name: str, agent_id: int) -> dict[str, bytes]:
    """Every entry of the agent, read by a process that never cached its index."""
    with sh.Heap.attach(name) as heap:
        agent = heap.agent(agent_id)
        return {entry: bytes(agent.read(entry)) for entry in agent.names()}


def put_entries_of(name: str, agent_id: int, prefix: str, count: int) -> int:
    """Put ``count`` entries named ``prefix``N into the agent; returns how many went in."""
    with sh.Heap.attach(name) as heap:
        agent = heap.agent(agent_id)
        for i in range(count):
            agent.put(f"{prefix}{i:05d}", f"{prefix}{i}".encode())
        return count


def churn_entries_of(name: str, agent_id: int, prefix: str, count: int) -> int:
    """Put ``count`` entries named ``prefix``N, replace each, then delete the odd ones."""
    with sh.Heap.attach(name) as heap:
        agent = heap.agent(agent_id)
        for i in range(count):
            agent.put(f"{prefix}{i:05d}", b"first")
        for i in range(count):
            agent.put(f"{prefix}{i:05d}", f"{prefix}{i}".encode())
        for i in range(1, count, 2):
            agent.delete(f"{prefix}{i:05d}")
        return count


def _forked_checkpoint(
    rng: random.Random,
    i: int,
    who: int,
    thread: dict[str, Any],
    parent: tuple[str, dict[str, str]] | None,
    value_of: Any,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Writer ``who``'s i-th checkpoint of ``thread``, from ``parent`` (id and
    channel versions; None: the first), one or two of channels a, b, c
    changed (all three in a first), each value ``value_of(channel,
    version)``: (its config, the checkpoint, its new versions)."""
    from langgraph.checkpoint.base import empty_checkpoint

    versions = dict(parent[1]) if parent is not None else {}
    changed = rng.sample(["a", "b", "c"], rng.randint(1, 2)) if versions else ["a", "b", "c"]
    for channel in changed:
        versions[channel] = f"{i:06d}.{who}{channel}"
    cp = empty_checkpoint()
    cp["id"] = f"{i:06d}-{who}"
    cp["channel_versions"] = versions
    cp["channel_values"] = {c: value_of(c, v) for c, v in versions.items()}
    conf = dict(thread["configurable"])
    if parent is not None:
        conf["checkpoint_id"] = parent[0]
    return conf, cp, {c: versions[c] for c in changed}


def langgraph_forking_writer(name: str, who: int, seed: int, ops: int, keep: int, barrier: Any) -> list[str]:
    """One of several processes putting to one thread with keep=: steps on
    the thread's newest checkpoint, and forks from one of its own older
    ones (which carry that checkpoint's versions of the channels they do
    not change), with pending writes, and now and then a copy of the
    thread and a delete of one of its runs. Every value names
    its channel and version, so a read can tell a checkpoint that reads
    back wrong; returns what read wrong."""

    from swarmheap.langgraph import SwarmSaver

    rng = random.Random(seed)
    wrong: list[str] = []
    thread = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    with sh.Heap.attach(name) as heap:
        saver = SwarmSaver(heap, keep=keep)
        mine: list[tuple[str, dict[str, str]]] = []
        barrier.wait()
        for i in range(ops):
            parent: tuple[str, dict[str, str]] | None = None
            if mine and rng.random() < 0.5:
                parent = rng.choice(mine[-8:])  # a fork: it may be trimmed by now
            else:
                newest = saver.get_tuple(thread)
                if newest is not None:
                    parent = (newest.checkpoint["id"], dict(newest.checkpoint["channel_versions"]))
            conf, cp, new = _forked_checkpoint(rng, i, who, thread, parent, lambda c, v: f"{c}@{v}")
            versions = cp["channel_versions"]
            run = f"r{who}-{i // 10}"
            at = saver.put({"configurable": conf}, cp, {"source": "fork", "step": i, "run_id": run}, new)
            mine.append((cp["id"], versions))
            if rng.random() < 0.3:  # pending writes on it, read back with it unless a trim took it
                writes = [("a", f"w{i}"), ("b", f"x{i}")]
                saver.put_writes(at, writes, f"task-{i}")
                got = saver.get_tuple(at)
                if got is not None and [w[1:] for w in got.pending_writes] != writes:
                    wrong.append(f"{cp['id']}: pending writes {got.pending_writes} for {writes}")
            if i >= 20 and rng.random() < 0.05:  # a run of this writer's deleted
                gone = f"r{who}-{rng.randrange(i // 10)}"
                saver.delete_for_runs([gone])
                left = [t.checkpoint["id"] for t in saver.list(thread) if t.metadata.get("run_id") == gone]
                if left:
                    wrong.append(f"run {gone} deleted, its checkpoints {left} left")
            copied = f"copy-{who}-{i}" if rng.random() < 0.1 else None
            if copied is not None:  # a copy of the thread as other writers trim it
                saver.copy_thread("t", copied)
            for read in ("t", copied) if copied is not None else ("t",):
                for got in saver.list({"configurable": {"thread_id": read, "checkpoint_ns": ""}}):
                    want = {c: f"{c}@{v}" for c, v in got.checkpoint["channel_versions"].items()}
                    if got.checkpoint["channel_values"] != want:
                        wrong.append(
                            f"{read} {got.checkpoint['id']}: {got.checkpoint['channel_values']} for {want}"
                        )
            if copied is not None:
                saver.delete_thread(copied)
    return wrong


def _pressure_value(channel: str, version: str) -> str:
    """A value that names its channel and version, 16 KB that compress
    about 2x: a thread's checkpoints outgrow a small `context` quickly."""
    return f"{channel}@{version}" + random.Random(f"{channel}{version}").randbytes(8000).hex()


def langgraph_pressure_writer(
    name: str, who: int, seed: int, ops: int, threads: int, url: str, barrier: Any
) -> list[str]:
    """One of several processes stepping and forking many LangGraph threads
    with keep=3 in a heap they outgrow, cold threads going to the store
    (any not in use: min_idle=0) and coming back on their next touch, in
    whichever process touches them; returns what read back wrong."""

    from swarmheap.langgraph import SwarmSaver

    rng = random.Random(seed)
    wrong: list[str] = []

    def check(where: str, got: Any) -> None:
        want = {c: _pressure_value(c, v) for c, v in got.checkpoint["channel_versions"].items()}
        if got.checkpoint["channel_values"] != want:
            have = sorted(got.checkpoint["channel_values"])
            wrong.append(
                f"{where} {got.checkpoint['id']}: channels {have} for {got.checkpoint['channel_versions']}"
            )

    with sh.Heap.attach(name) as heap, sh.open_store(url) as store:
        saver = SwarmSaver(heap, keep=3, store=store)
        heap.set_offload_policy(store, min_idle=0)
        mine: dict[str, list[tuple[str, dict[str, str]]]] = {}
        barrier.wait()
        for i in range(ops):
            tid = f"t{rng.randrange(threads)}"
            thread = {"configurable": {"thread_id": tid, "checkpoint_ns": ""}}
            newest = saver.get_tuple(thread)
            if newest is not None:
                check(f"{tid} newest", newest)
            parent = None
            if tid in mine and rng.random() < 0.3:
                parent = rng.choice(mine[tid][-6:])  # a fork: it may be trimmed by now
            elif newest is not None:
                parent = (newest.checkpoint["id"], dict(newest.checkpoint["channel_versions"]))
            conf, cp, new = _forked_checkpoint(rng, i, who, thread, parent, _pressure_value)
            saver.put({"configurable": conf}, cp, {"source": "fork", "step": i}, new)
            mine.setdefault(tid, []).append((cp["id"], cp["channel_versions"]))
            if rng.random() < 0.2:
                for got in saver.list(thread):
                    check(f"{tid} listed", got)
    return wrong


def _named_value(name: str, version: str, big: bool) -> bytes:
    """An entry's bytes that name the entry and their version: a read can
    tell another entry's bytes, or a torn copy, from the right ones."""
    body = random.Random(f"{name}{version}").randbytes(3000 if big else 40).hex()
    return f"{name}:{version}:".encode() + body.encode()


def shared_agents_writer(
    name: str, who: int, seed: int, ops: int, ids: list[int], url: str, barrier: Any
) -> list[str]:
    """One of several processes putting, deleting, reading, sweeping,
    offloading and snapshotting the same heap-owned agents, in a heap they
    outgrow (the offload policy takes any idle agent); returns what read
    back wrong."""
    rng = random.Random(seed)
    wrong: list[str] = []

    def check(where: str, entry: str, data: bytes) -> None:
        version = data.split(b":")[1].decode() if data.startswith(f"{entry}:".encode()) else ""
        if not version or data != _named_value(entry, version, len(data) > 200):
            wrong.append(f"{where} {entry}: {data[:24]!r}")

    with sh.Heap.attach(name) as heap, sh.open_store(url) as store:
        heap.set_offload_policy(store, min_idle=0)
        agents = [heap.agent(i) for i in ids]
        barrier.wait()
        for i in range(ops):
            agent = rng.choice(agents)
            entry, roll = f"e{rng.randrange(20)}", rng.random()
            try:
                if roll < 0.45:
                    agent.put(entry, _named_value(entry, f"{who}.{i}", rng.random() < 0.3))
                elif roll < 0.6:
                    with contextlib.suppress(KeyError):
                        agent.delete(entry)
                elif roll < 0.85:
                    for listed, view in agent.items():
                        with view:
                            check(f"agent {agent.id}", listed, bytes(view))
                elif roll < 0.88:
                    heap.collect(2 if rng.random() < 0.3 else 0)  # sweeps, which offload under the policy too
                elif roll < 0.93:
                    with contextlib.suppress(sh.AgentStateError):  # pinned, or another's offload under way
                        agent.offload(store)
                else:
                    copy = heap.restore(agent.snapshot())
                    for listed in copy.names():
                        check(f"a snapshot of {agent.id}", listed, copy.read(listed))
                    copy.complete()
            except sh.PartitionFull:
                pass  # every agent in use at that moment: nothing to offload
    return wrong
