"""A LangGraph checkpointer on swarmheap: ``SwarmSaver(heap, *, store=None,
compress="zstd", keep=None, kind="langgraph")`` (the ``langgraph`` extra).

- Threads are agents (of ``kind``), found by thread id through the heap's
  registry from any process: a deleted or pruned thread's memory comes back
  in one recycle, and ``swarmheap stats`` shows each thread's usage.
- Checkpoints, their pending writes, and channel values live in the arena
  as the agent's named entries. A channel value is stored once per version
  (``blob/NS/CHANNEL/VERSION``), as LangGraph's versioned channels allow, so
  a step that changed one channel writes one value, not the whole state.
  Values are serialised with LangGraph's own ``serde`` and, with
  ``compress="zstd"`` (or "lz4"), compressed in a snapshot frame
  (swarmheap.snapshot): checksummed, so damage is a SwarmSaverError, never
  wrong state.
- ``keep=N`` keeps the last N checkpoints per thread and namespace (and the
  channel versions they still name).
- With a ``store``, the heap's offload policy sends cold threads there under
  memory pressure; touching a thread restores it.
"""

from __future__ import annotations

import builtins
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from swarmheap import snapshot
from swarmheap._extras import require
from swarmheap.errors import CorruptSnapshot, PartitionFull, SwarmHeapError
from swarmheap.heap import Heap
from swarmheap.offload import Registry
from swarmheap.stores import Store

_base = require("langgraph.checkpoint.base", "langgraph")
BaseCheckpointSaver = _base.BaseCheckpointSaver
CheckpointTuple = _base.CheckpointTuple
get_checkpoint_id = _base.get_checkpoint_id
get_checkpoint_metadata = _base.get_checkpoint_metadata
WRITES_IDX_MAP = _base.WRITES_IDX_MAP

__all__ = ["SwarmSaver", "SwarmSaverError"]

_TYPED = struct.Struct("<H")  # length of the serde type name, then the name, then the bytes
_REF = struct.Struct("<II")  # agent id, generation


class SwarmSaverError(SwarmHeapError):
    """A thread's checkpoint data is damaged (or names what is not there)."""


class SwarmSaver(BaseCheckpointSaver):  # type: ignore[misc,valid-type]
    def __init__(
        self,
        heap: Heap,
        *,
        store: Store | None = None,
        compress: str | None = "zstd",
        keep: int | None = None,
        kind: str = "langgraph",
        serde: Any = None,
    ) -> None:
        super().__init__(serde=serde)
        if compress not in (None, "none", *snapshot.CODECS):
            raise ValueError(f"compress is one of {', '.join(snapshot.CODECS)} or None, not {compress!r}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep is a count of checkpoints >= 1, or None, not {keep!r}")
        self.heap = heap
        self.codec = compress or "none"
        self.keep = keep
        self.kind = kind
        self.store = store
        if store is not None:
            heap.set_offload_policy(store)

    # ---- threads are agents ----

    def _agent(self, thread_id: str, create: bool) -> Any:
        key = f"lgthread/{thread_id}"
        registry = Registry(self.heap)
        while True:
            ref, data = registry.get_ref(key)
            if data is not None:
                agent_id, generation = _REF.unpack(data)
                if self.heap._owner_generation(agent_id) == generation:
                    return self.heap._agent_at(agent_id, generation)
                if not create:
                    return None
                registry.swap(key, ref, b"")  # the agent is gone (swept): start the thread again
                continue
            if not create:
                return None
            agent = self.heap.spawn(self.kind, reserve=False)
            if registry.swap(key, ref, _REF.pack(agent.id, agent.generation)):
                return agent
            agent.complete()  # another process made this thread first

    def _pack(self, typed: tuple[str, bytes]) -> bytes:
        name = typed[0].encode()
        raw = _TYPED.pack(len(name)) + name + bytes(typed[1])
        return snapshot.pack(raw, self.codec)

    def _unpack(self, blob: bytes) -> tuple[str, bytes]:
        try:
            raw = snapshot.unpack(blob)
            (n,) = _TYPED.unpack_from(raw, 0)
            return raw[2 : 2 + n].decode(), raw[2 + n :]
        except (CorruptSnapshot, struct.error, UnicodeDecodeError) as exc:
            raise SwarmSaverError(f"a checkpoint record is damaged: {exc}") from None

    def _get(self, agent: Any, name: str) -> Any:
        try:
            with agent.get(name) as view:
                return self.serde.loads_typed(self._unpack(bytes(view)))
        except KeyError:
            raise SwarmSaverError(f"thread data names {name!r}, which is not there") from None

    # ---- the BaseCheckpointSaver protocol ----

    def put(
        self, config: dict[str, Any], checkpoint: dict[str, Any], metadata: Any, new_versions: Any
    ) -> Any:
        try:
            return self._put(config, checkpoint, metadata, new_versions)
        except PartitionFull as exc:
            raise PartitionFull(
                f"{exc}; SwarmSaver: keep=N bounds each thread to its last N checkpoints, and store=... "
                "(an SQLiteStore, say) lets cold threads leave the arena",
                exc.code,
            ) from exc

    def _put(
        self, config: dict[str, Any], checkpoint: dict[str, Any], metadata: Any, new_versions: Any
    ) -> Any:
        c = checkpoint.copy()
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        agent = self._agent(thread_id, create=True)
        values: dict[str, Any] = c.pop("channel_values")
        for channel, version in new_versions.items():
            typed = self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")
            agent.put(f"blob/{ns}/{channel}/{version}", self._pack(typed))
        record = (c, get_checkpoint_metadata(config, metadata), conf.get("checkpoint_id"))
        agent.put(f"cp/{ns}/{checkpoint['id']}", self._pack(self.serde.dumps_typed(record)))
        if self.keep is not None:
            self._trim(agent, ns, self.keep)
        return {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}
        }

    def put_writes(
        self, config: dict[str, Any], writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        conf = config["configurable"]
        agent = self._agent(conf["thread_id"], create=True)
        ns, cid = conf.get("checkpoint_ns", ""), conf["checkpoint_id"]
        names = set(agent.names())
        for idx, (channel, value) in enumerate(writes):
            slot = WRITES_IDX_MAP.get(channel, idx)
            name = f"w/{ns}/{cid}/{task_id}/{slot}"
            if slot >= 0 and name in names:
                continue  # a special write already stored: kept, as LangGraph's savers do
            agent.put(name, self._pack(self.serde.dumps_typed((task_id, channel, value, task_path, idx))))

    def get_tuple(self, config: dict[str, Any]) -> Any:
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        agent = self._agent(thread_id, create=False)
        if agent is None:
            return None
        ids = self._checkpoint_ids(agent, ns)
        cid = get_checkpoint_id(config) or (ids[-1] if ids else None)
        if cid is None or cid not in ids:
            return None
        return self._tuple(agent, thread_id, ns, cid)

    def list(
        self,
        config: dict[str, Any] | None,
        *,
        filter: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[Any]:
        if config is None:
            threads = [n.split("/", 1)[1] for n in Registry(self.heap).names("lgthread/")]
        else:
            threads = [config["configurable"]["thread_id"]]
        ns_wanted = config["configurable"].get("checkpoint_ns") if config else None
        want_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        count = 0
        for thread_id in threads:
            agent = self._agent(thread_id, create=False)
            if agent is None:
                continue
            for ns in sorted({n.split("/")[1] for n in agent.names() if n.startswith("cp/")}):
                if ns_wanted is not None and ns != ns_wanted:
                    continue
                for cid in reversed(self._checkpoint_ids(agent, ns)):
                    if (want_id and cid != want_id) or (before_id and cid >= before_id):
                        continue
                    tup = self._tuple(agent, thread_id, ns, cid)
                    if filter and not all(tup.metadata.get(k) == v for k, v in filter.items()):
                        continue
                    if limit is not None and count >= limit:
                        return
                    count += 1
                    yield tup

    def delete_thread(self, thread_id: str) -> None:
        agent = self._agent(thread_id, create=False)
        Registry(self.heap).remove(f"lgthread/{thread_id}")
        if agent is not None and agent.state in ("live", "offloaded", "restoring"):
            agent.restore()
            agent.complete()  # the thread's memory, back in one recycle

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        runs = set(run_ids)
        for thread_id in [n.split("/", 1)[1] for n in Registry(self.heap).names("lgthread/")]:
            agent = self._agent(thread_id, create=False)
            if agent is None:
                continue
            for name in [n for n in agent.names() if n.startswith("cp/")]:
                _, ns, cid = name.split("/", 2)
                if self._get(agent, name)[1].get("run_id") in runs:
                    self._drop(agent, ns, cid)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        source = self._agent(source_thread_id, create=False)
        if source is None:
            return
        target = self._agent(target_thread_id, create=True)
        for name in source.names():
            with source.get(name) as view:
                target.put(name, bytes(view))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"strategy is 'keep_latest' or 'delete', not {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            agent = self._agent(thread_id, create=False)
            if agent is not None:
                for ns in {n.split("/")[1] for n in agent.names() if n.startswith("cp/")}:
                    self._trim(agent, ns, 1)

    # ---- async: the arena answers without I/O, so these run inline ----

    async def aget_tuple(self, config: dict[str, Any]) -> Any:
        return self.get_tuple(config)

    async def alist(self, config: dict[str, Any] | None, **kwargs: Any) -> AsyncIterator[Any]:
        for item in self.list(config, **kwargs):
            yield item

    async def aput(self, config: dict[str, Any], checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: dict[str, Any], writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.delete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.copy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.prune(thread_ids, strategy=strategy)

    # ---- helpers ----

    def _checkpoint_ids(self, agent: Any, ns: str) -> builtins.list[str]:
        prefix = f"cp/{ns}/"
        return sorted(
            n[len(prefix) :] for n in agent.names() if n.startswith(prefix) and "/" not in n[len(prefix) :]
        )

    def _tuple(self, agent: Any, thread_id: str, ns: str, cid: str) -> Any:
        checkpoint, metadata, parent = self._get(agent, f"cp/{ns}/{cid}")
        values = {}
        for channel, version in checkpoint["channel_versions"].items():
            name = f"blob/{ns}/{channel}/{version}"
            try:
                with agent.get(name) as view:
                    typed = self._unpack(bytes(view))
            except KeyError:
                continue  # a channel with no value at that version
            if typed[0] != "empty":
                values[channel] = self.serde.loads_typed(typed)
        writes = []
        prefix = f"w/{ns}/{cid}/"
        for name in agent.names():
            if name.startswith(prefix):
                task_id, channel, value, _path, idx = self._get(agent, name)
                writes.append((task_id, idx, channel, value))
        writes.sort(key=lambda w: (w[0], w[1]))
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}
        parent_config = (
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
            if parent
            else None
        )
        return CheckpointTuple(
            config=config,
            checkpoint={**checkpoint, "channel_values": values},
            metadata=metadata,
            parent_config=parent_config,
            pending_writes=[(t, c, v) for t, _, c, v in writes],
        )

    def _drop(self, agent: Any, ns: str, cid: str) -> None:
        for name in [n for n in agent.names() if n == f"cp/{ns}/{cid}" or n.startswith(f"w/{ns}/{cid}/")]:
            agent.delete(name)

    def _trim(self, agent: Any, ns: str, keep: int) -> None:
        ids = self._checkpoint_ids(agent, ns)
        for cid in ids[:-keep]:
            self._drop(agent, ns, cid)
        # channel versions no kept checkpoint names any more
        named: set[str] = set()
        for cid in ids[-keep:]:
            checkpoint = self._get(agent, f"cp/{ns}/{cid}")[0]
            named.update(f"blob/{ns}/{ch}/{v}" for ch, v in checkpoint["channel_versions"].items())
        for name in agent.names():
            if name.startswith(f"blob/{ns}/") and name not in named:
                agent.delete(name)
