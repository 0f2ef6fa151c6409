"""The trained zstd dictionaries of agent kinds: samples of each kind's
snapshots, a dictionary trained from them, and where every process and node
finds one by id (the heap registry, and the store beside a blob that names
it)."""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from swarmheap._extras import require
from swarmheap.registry import Registry

if TYPE_CHECKING:
    from swarmheap.heap import Heap
    from swarmheap.stores import Store

__all__ = ["DICT_KEY", "Dictionaries"]

DICT_KEY = "__swarmheap__/zdict/"
_DICT_BY_ID = "zdict/id/"  # registry: a dictionary's bytes by its id
_KIND_DICT = "zdict/kind/"  # registry: the id of a kind's dictionary
TRAIN_AFTER = 64  # snapshots of a kind before its dictionary is trained
DICT_SIZE = 16 * 1024
SAMPLE_MAX = 64 * 1024  # larger states gain little from a dictionary and are not kept as samples


# Every heap's tables in this process: a blob snapshotted in one heap and
# restored in another of the same process finds the first one's dictionary
# (that heap's registry is not this one's, and no store may be shared).
_EVERY: weakref.WeakSet[Dictionaries] = weakref.WeakSet()


class Dictionaries:
    """Per heap and process: samples of each kind's states, the dictionaries
    trained from them, and where to find one by id."""

    def __init__(self, heap: Heap, train_after: int = TRAIN_AFTER) -> None:
        _EVERY.add(self)
        self.heap = heap
        self.train_after = train_after
        self.samples: dict[str, list[bytes]] = defaultdict(list)
        self.by_kind: dict[str, Any] = {}  # kind -> ZstdCompressionDict
        self.by_id: dict[int, Any] = {}
        self.published: set[tuple[str, int]] = set()  # (store URL, dictionary id) known to be in that store
        # training and the tables above, between this process's threads: two
        # that trained a kind at once could make two dictionaries under one id
        self.lock = threading.RLock()

    def for_kind(self, kind: str) -> Any:
        """The kind's dictionary: this process's, else one another process
        trained. Two direct registry reads, not a scan of its names: those
        grow with offloaded agents, and a kind that never trains one (of
        large states) paid the scan on every offload."""
        if kind not in self.by_kind:
            named = Registry(self.heap).get(f"{_KIND_DICT}{kind}")
            found = self.lookup(int(named), []) if named and named.isdigit() else None
            if found is not None:
                self.by_kind[kind] = found
        return self.by_kind.get(kind)

    def note(self, kind: str, raw: Any) -> None:
        """A snapshot of ``kind`` was taken: keep a copy as a sample (``raw``
        may be a view that lives for a ``with``); train once there are enough."""
        if kind in self.by_kind or len(raw) > SAMPLE_MAX or not raw:
            return
        sample = bytes(raw)
        with self.lock:
            if kind in self.by_kind:
                return
            samples = self.samples[kind]
            samples.append(sample)
            if len(samples) < self.train_after:
                return
            zstd = require("zstandard", "compress")
            try:
                trained = zstd.train_dictionary(DICT_SIZE, samples)
            except zstd.ZstdError:
                samples.clear()  # too few distinct bytes to train on: sample again
                return
            samples.clear()
            data, dict_id = trained.as_bytes(), trained.dict_id()
            registry = Registry(self.heap)
            # the dictionary before the kind's pointer to it: a reader never
            # follows a pointer to nothing. An id names one dictionary for
            # good: zstd derives it from the dictionary's content, and two
            # trainings (two processes at once) can make the same id with
            # other tables; blobs made with one and read with the other do
            # not decompress. The first one named stands; a later one uses it.
            key = f"{_DICT_BY_ID}{dict_id}"
            if not registry.swap(key, None, data):
                data = registry.get(key) or data
            registry.put(f"{_KIND_DICT}{kind}", str(dict_id).encode())
            self.by_kind[kind] = self._remember(data)

    def _remember(self, data: bytes) -> Any:
        """The dictionary ``data`` is, as this process holds it: the first
        one it met under that id (an id is one dictionary, see note())."""
        zstd = require("zstandard", "compress")
        d = zstd.ZstdCompressionDict(data)
        with self.lock:
            return self.by_id.setdefault(d.dict_id(), d)

    def lookup(self, dict_id: int, stores: list[Store]) -> Any:
        """The dictionary with this id: this process's, the registry's, a
        store's, or one another heap of this process holds."""
        if dict_id in self.by_id:
            return self.by_id[dict_id]
        data = Registry(self.heap).get(f"{_DICT_BY_ID}{dict_id}")
        if data:
            return self._remember(data)
        for store in stores:
            data = store.get(f"{DICT_KEY}{dict_id}")
            if data:
                return self._remember(data)
        for other in list(_EVERY):
            found = other.by_id.get(dict_id) if other is not self else None
            if found is not None:  # the same object: not copied out and parsed again
                with self.lock:
                    return self.by_id.setdefault(dict_id, found)
        return None

    def publish(self, dictionary: Any, store: Store) -> None:
        """Put the dictionary in the store unless it is there; a store is
        asked once per process and dictionary, not on every offload (a read
        of the store cost a small offload a tenth of its time)."""
        known = (store.url, dictionary.dict_id())
        if known in self.published:
            return
        key = f"{DICT_KEY}{known[1]}"
        if store.get(key) is None:
            store.put(key, dictionary.as_bytes())
        self.published.add(known)
