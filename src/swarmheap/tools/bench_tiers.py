"""The offload issue's scenarios: `snapshot_compress`, `offload_restore` and
`pressure`.

The corpus (`chat_state`) is a deterministic set of agent states that look
like an agent's working memory: a chat transcript (JSON messages of user,
assistant and tool turns, words drawn Zipf-like from a fixed 600-word
vocabulary) and tool results (JSON records of names, ids and numbers),
generated with a fixed seed at sizes from 2 KB to 2 MB. States of one kind
share what an agent kind's states share: a system prompt of about 1 KB and
the schema of its five tools (together about 2 KB). Each state is two named
entries of an agent, "messages" and "tools"."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from swarmheap import snapshot
from swarmheap.errors import PartitionFull
from swarmheap.heap import Heap
from swarmheap.stores import LMDBStore, RedisStore, SQLiteStore, Store
from swarmheap.tools.scenarios import median, target

_SYLLABLES = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "be", "do", "an", "el", "or", "us", "in", "qu"]


def _vocabulary(rng: random.Random, n: int = 600) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


_VOCAB = _vocabulary(random.Random(1))
_CORPUS = " ".join((__doc__ or "").split("The corpus", 1)[-1].split())
_WEIGHTS = [1.0 / (i + 1) for i in range(len(_VOCAB))]


def _kind_preamble(kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What every state of one kind shares: its system prompt (about 1 KB)
    and the schema of its tools, fixed per kind name."""
    rng = random.Random(kind)
    prompt = " ".join(rng.choices(_VOCAB, k=160))
    schemas = [
        {
            "name": name,
            "description": " ".join(rng.choices(_VOCAB, k=12)),
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string"} for p in rng.sample(_VOCAB, 3)},
            },
        }
        for name in ("search", "fetch", "lookup", "compute", "summarize")
    ]
    return {"role": "system", "turn": 0, "content": prompt}, schemas


def chat_state(rng: random.Random, size: int, kind: str = "chat") -> dict[str, bytes]:
    """An agent state of about ``size`` bytes: {"messages": JSON, "tools": JSON}."""
    system, schemas = _kind_preamble(kind)
    messages: list[dict[str, Any]] = [system]
    tools: list[dict[str, Any]] = [{"schemas": schemas}]
    total = len(json.dumps(system)) + len(json.dumps(schemas))
    turn = 1
    while total < size:
        words = rng.choices(_VOCAB, _WEIGHTS, k=rng.randint(8, 60))
        role = ("user", "assistant", "tool")[turn % 3]
        messages.append({"role": role, "turn": turn, "content": " ".join(words)})
        total += 40 + sum(len(w) + 1 for w in words)
        if role == "tool":
            record = {
                "call_id": f"call_{rng.randrange(1 << 32):08x}",
                "name": rng.choice(("search", "fetch", "lookup", "compute", "summarize")),
                "status": "ok",
                "scores": [round(rng.random(), 4) for _ in range(rng.randint(2, 8))],
                "ids": [rng.randrange(100_000) for _ in range(rng.randint(1, 5))],
            }
            tools.append(record)
            total += 140
        turn += 1
    return {"messages": json.dumps(messages).encode(), "tools": json.dumps(tools).encode()}


def _raw_size(state: dict[str, bytes]) -> int:
    return sum(len(v) for v in state.values())


def _spawn_with(heap: Heap, kind: str, state: dict[str, bytes]) -> Any:
    agent = heap.spawn(kind, reserve=False)
    for name, data in state.items():
        agent.put(name, data)
    return agent


def _rate(nbytes: int, ns: float) -> float:
    """MiB/s."""
    return nbytes / (1 << 20) / (ns / 1e9)


def _time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return median(times)


def snapshot_compress(quick: bool) -> dict[str, Any]:
    import lz4.frame
    import zstandard

    rng = random.Random(42)
    sizes = [2_000, 8_000, 64_000, 512_000, 2_000_000]
    per_size = 2 if quick else 4
    states = [chat_state(rng, s) for s in sizes for _ in range(per_size)]
    raw_total = sum(_raw_size(s) for s in states)
    repeats = 3 if quick else 7
    rows: list[list[str]] = []
    data: dict[str, Any] = {"raw_bytes": raw_total, "states": len(states)}
    with Heap.create(size="256 MiB") as heap:
        agents = [_spawn_with(heap, "chat-large", s) for s in states]
        cctx = zstandard.ZstdCompressor(level=3)
        joined = [b"".join(s.values()) for s in states]
        cases: dict[str, Callable[[], list[bytes]]] = {
            "snapshot zstd-3": lambda: [a.snapshot("zstd") for a in agents],
            "snapshot lz4": lambda: [a.snapshot("lz4") for a in agents],
            "snapshot none": lambda: [a.snapshot("none") for a in agents],
            "zstd-3 alone (same bytes)": lambda: [cctx.compress(j) for j in joined],
            "lz4 alone (same bytes)": lambda: [lz4.frame.compress(j) for j in joined],
            "pickle + zstd-3": lambda: [cctx.compress(pickle.dumps(s)) for s in states],
        }
        for label, fn in cases.items():
            out = fn()
            ns = _time(fn, repeats)
            ratio = raw_total / sum(len(b) for b in out)
            data[label] = {"ns": ns, "ratio": ratio, "mib_s": _rate(raw_total, ns)}
            rows.append([label, "2 KB - 2 MB", f"{_rate(raw_total, ns):,.0f} MiB/s", f"{ratio:.2f}"])
        for a in agents:
            a.complete()
        # small states of one kind: the first 64 snapshots train the kind's dictionary
        small = [chat_state(rng, rng.randint(2_000, 8_000)) for _ in range(64 + 100)]
        for s in small[:64]:
            agent = _spawn_with(heap, "chat-small", s)
            agent.snapshot("zstd")
            agent.complete()
        measured = [_spawn_with(heap, "chat-small", s) for s in small[64:]]
        blobs = [a.snapshot("zstd") for a in measured]
        small_raw = sum(_raw_size(s) for s in small[64:])
        with_dict = small_raw / sum(len(b) for b in blobs)
        plain = small_raw / sum(len(cctx.compress(b"".join(s.values()))) for s in small[64:])
        trained = heap._dictionaries.for_kind("chat-small") is not None
        for a in measured:
            a.complete()
    data["small"] = {"with_dictionary": with_dict, "zstd_alone": plain, "trained": trained}
    rows.append(["snapshot zstd-3 + kind dictionary", "2 - 8 KB", "", f"{with_dict:.2f}"])
    rows.append(["zstd-3 alone, no dictionary", "2 - 8 KB", "", f"{plain:.2f}"])
    lz4_share = data["snapshot lz4"]["mib_s"] / data["lz4 alone (same bytes)"]["mib_s"]
    return {
        "name": "snapshot_compress",
        "what": "agent.snapshot() of chat-like states, against the codec alone and pickle + zstandard",
        "columns": ["case", "states", "throughput", "ratio"],
        "rows": rows,
        "notes": [
            f"{len(states)} states, {raw_total / 1e6:.1f} MB of entries in all; throughput is MiB of "
            f"entries per second, median of {repeats}; the corpus: {_CORPUS}",
            "the dictionary rows: 164 states of 2-8 KB of one kind; the first 64 snapshots train the kind's "
            "dictionary, the ratio is over the other 100",
            f"a snapshot of a state of {snapshot.CHUNKED_MIN >> 10} KiB or more compresses its "
            f"{snapshot.CHUNK >> 10} KiB pieces on {snapshot.codec_threads()} threads here; the codec alone "
            "and pickle + zstd-3 run on one",
        ],
        "targets": [
            target("snapshot lz4 >= 0.8x the codec alone", f"{lz4_share:.2f}x", lz4_share >= 0.8),
            target(
                "snapshot zstd ratio >= 3",
                f"{data['snapshot zstd-3']['ratio']:.2f}",
                data["snapshot zstd-3"]["ratio"] >= 3,
            ),
            target(
                "states <= 8 KB: dictionary ratio >= 1.5x zstd without",
                f"{with_dict / plain:.2f}x",
                trained and with_dict / plain >= 1.5,
            ),
        ],
        "data": data,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """SWARMHEAP_REDIS_URL, else a redis-server started on a free loopback port
    (and stopped after), else None."""
    url = os.environ.get("SWARMHEAP_REDIS_URL")
    server = shutil.which("redis-server")
    if url or server is None:
        yield url
        return
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(250):  # a readiness probe
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _PickleSQLite:
    """The peer a user writes by hand: pickle + sqlite3 (WAL) insert/select."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)")

    def put(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, pickle.dumps(value)))

    def get(self, key: str) -> Any:
        return pickle.loads(self.db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()[0])

    def clear(self, n: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM kv")


class _PickleRedis:
    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)

    def put(self, key: str, value: Any) -> None:
        self.client.set(key, pickle.dumps(value))

    def get(self, key: str) -> Any:
        data = self.client.get(key)
        if not isinstance(data, bytes):
            raise KeyError(key)
        return pickle.loads(data)

    def clear(self, n: int) -> None:
        self.client.delete(*[f"pickle/{i}" for i in range(n)])


def _write_read_ns(
    put: Callable[[str, Any], Any], get: Callable[[str], Any], prefix: str, values: list[Any]
) -> tuple[int, int]:
    """ns to put every value under ``prefix`` + its index, then to get them all back."""
    t0 = time.perf_counter_ns()
    for i, value in enumerate(values):
        put(f"{prefix}{i}", value)
    t1 = time.perf_counter_ns()
    for i in range(len(values)):
        get(f"{prefix}{i}")
    return t1 - t0, time.perf_counter_ns() - t1


def _offload_cells(store: Store, states: list[dict[str, bytes]], heap: Heap, rounds: int) -> dict[str, float]:
    """MiB/s of offloading every state's agent to ``store`` and restoring it,
    and of writing and reading the same bytes raw (the store's floor): each
    the median of ``rounds`` rounds, the four measured alternately."""
    nbytes = sum(_raw_size(s) for s in states)
    joined = [b"".join(s.values()) for s in states]
    times: dict[str, list[int]] = {"offload": [], "restore": [], "raw_write": [], "raw_read": []}
    for _ in range(rounds):
        agents = [_spawn_with(heap, "bench-offload", s) for s in states]
        t0 = time.perf_counter_ns()
        for a in agents:
            a.offload(store)
        t1 = time.perf_counter_ns()
        for a in agents:
            a.restore()
        t2 = time.perf_counter_ns()
        for a, s in zip(agents, states):
            with a.get("messages") as view:
                if bytes(view) != s["messages"]:
                    raise AssertionError("a restored agent's entry differs")
            a.complete()
        raw_write, raw_read = _write_read_ns(store.put, store.get, "bench/raw/", joined)
        for i in range(len(joined)):
            store.delete(f"bench/raw/{i}")
        for name, ns in zip(times, (t1 - t0, t2 - t1, raw_write, raw_read)):
            times[name].append(ns)
    return {name: _rate(nbytes, median(ns)) for name, ns in times.items()}


def _pickle_cells(peer: Any, states: list[dict[str, bytes]], rounds: int) -> dict[str, float]:
    nbytes = sum(_raw_size(s) for s in states)
    writes, reads = [], []
    for _ in range(rounds):
        write, read = _write_read_ns(peer.put, peer.get, "pickle/", states)
        writes.append(write)
        reads.append(read)
        peer.clear(len(states))  # each round inserts, as the raw rows and the offloads do
    return {"offload": _rate(nbytes, median(writes)), "restore": _rate(nbytes, median(reads))}


def offload_restore(quick: bool) -> dict[str, Any]:
    rng = random.Random(43)
    shapes = {"1 MiB": (1 << 20, 8 if quick else 32), "16 KB": (16_000, 100 if quick else 400)}
    rounds = 1 if quick else 5
    rows: list[list[str]] = []
    data: dict[str, Any] = {}
    targets = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server() as redis_url,
        Heap.create(size="512 MiB") as heap,
    ):
        stores: dict[str, Callable[[], Store]] = {
            "sqlite": lambda: SQLiteStore(os.path.join(tmp, "offload.db")),
            "lmdb": lambda: LMDBStore(os.path.join(tmp, "offload.lmdb"), map_size=4 << 30),
        }
        peers: dict[str, Callable[[], Any]] = {
            "sqlite": lambda: _PickleSQLite(os.path.join(tmp, "pickle.db"))
        }
        if redis_url:
            stores["redis"] = lambda: RedisStore(redis_url)
            peers["redis"] = lambda: _PickleRedis(redis_url)
        for shape, (size, count) in shapes.items():
            states = [chat_state(rng, size) for _ in range(count)]
            for name, make in stores.items():
                with make() as store:
                    cells = _offload_cells(store, states, heap, rounds)
                peer_cells = _pickle_cells(peers[name](), states, rounds) if name in peers else None
                data[f"{name} {shape}"] = {"swarmheap": cells, "pickle": peer_cells}
                rows.append(
                    [
                        name,
                        shape,
                        f"{cells['offload']:,.0f}",
                        f"{cells['restore']:,.0f}",
                        f"{cells['raw_write']:,.0f}",
                        f"{cells['raw_read']:,.0f}",
                        f"{peer_cells['offload']:,.0f}" if peer_cells else "-",
                        f"{peer_cells['restore']:,.0f}" if peer_cells else "-",
                    ]
                )
                checks = [
                    ("offload >= 1.5x raw write", cells["offload"] / cells["raw_write"], 1.5),
                    ("restore >= 0.5x raw read", cells["restore"] / cells["raw_read"], 0.5),
                ]
                if peer_cells:
                    checks.append(
                        ("offload >= 1.5x pickle peer", cells["offload"] / peer_cells["offload"], 1.5)
                    )
                for text, value, want in checks:
                    targets.append(target(f"{name} {shape}: {text}", f"{value:.2f}x", value >= want))
    if not any(r[0] == "redis" for r in rows):
        rows.append(["redis", "", "no redis-server here (set SWARMHEAP_REDIS_URL)", "", "", "", "", ""])
    return {
        "name": "offload_restore",
        "what": "agent.offload(store) and agent.restore() of chat-like states, MiB/s of entries",
        "columns": [
            "store",
            "state",
            "offload",
            "restore",
            "raw write",
            "raw read",
            "pickle + store write",
            "pickle + store read",
        ],
        "rows": rows,
        "notes": [
            "MiB/s of the states' entry bytes, each the median of 5 rounds; "
            "offload is snapshot (zstd-1, the kind's dictionary once "
            "trained) + store.put + giving the memory back; restore is store.get + checks + new blocks; "
            "raw is store.put/get of the same bytes uncompressed; the pickle peer is pickle.dumps + "
            "sqlite3 INSERT (WAL, a commit per state) or redis SET, and GET + pickle.loads",
        ],
        "targets": targets,
        "data": data,
    }


def _pressure_run(policy: bool, tmp: str, agents: int, state: dict[str, bytes]) -> dict[str, Any]:
    failures = 0
    kept = []
    with Heap.create(size="64 MiB") as heap:
        if policy:
            heap.set_offload_policy(SQLiteStore(os.path.join(tmp, "pressure.db")), min_idle=0.0)
        for _ in range(agents):
            try:
                kept.append(_spawn_with(heap, "idle", state))
            except PartitionFull:
                failures += 1
        intact = 0
        for a in kept:
            try:
                with a.get("messages") as view:
                    intact += bytes(view) == state["messages"]
            except PartitionFull:
                failures += 1
        offloaded = sum(1 for a in kept if a.state == "offloaded")
        heap.check()
    return {"failures": failures, "intact": intact, "agents": agents, "offloaded_at_end": offloaded}


def pressure(quick: bool) -> dict[str, Any]:
    state = chat_state(random.Random(44), 256_000)
    agents = 120 if quick else 200  # about 30-50 MB of idle agents; context is 25.6 MiB
    with tempfile.TemporaryDirectory() as tmp:
        without = _pressure_run(False, tmp, agents, state)
        with_policy = _pressure_run(True, tmp, agents, state)
    rows = [
        [label, str(r["agents"]), str(r["failures"]), str(r["intact"]), str(r["offloaded_at_end"])]
        for label, r in (("without a policy", without), ("with set_offload_policy (SQLite)", with_policy))
    ]
    return {
        "name": "pressure",
        "what": "a swarm of idle agents larger than `context` (64 MiB heap, 256 KB per agent)",
        "columns": ["run", "agents", "PartitionFull", "data intact at the end", "offloaded at the end"],
        "rows": rows,
        "notes": [
            "every agent stays live (never completed); at the end each one's entry is read back and compared"
        ],
        "targets": [
            target(
                "with the policy: no PartitionFull, every agent intact",
                f"{with_policy['failures']} failures, {with_policy['intact']} of {agents} intact",
                with_policy["failures"] == 0 and with_policy["intact"] == agents,
            )
        ],
        "data": {"without": without, "with": with_policy},
    }
