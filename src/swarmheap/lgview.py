"""What a SwarmSaver keeps of threads between calls: bounded caches of the
values it last wrote or read, and a thread's names as its index word last
read them (checkpoint ids per namespace, pending writes per checkpoint)."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["RAW_CACHE", "RAW_CACHE_BYTES", "Recent", "ThreadView"]

RAW_CACHE = 512  # serde bytes of the values this saver last wrote or read
# ... and at most this many bytes of them: a long thread's message list is
# megabytes, and 512 of its versions would hold gigabytes of this process
RAW_CACHE_BYTES = 64 << 20

_K = TypeVar("_K")
_V = TypeVar("_V")


class Recent(OrderedDict[_K, _V]):
    """The values this saver last remembered: at most RAW_CACHE of them and
    RAW_CACHE_BYTES of their serde bytes (``size_of`` a value), the least
    recently remembered out first; the newest always stays."""

    def __init__(self, size_of: Callable[[_V], int]) -> None:
        super().__init__()
        self.size_of = size_of
        self.nbytes = 0

    def remember(self, key: _K, value: _V) -> None:
        size_of = self.size_of
        old = self.pop(key, None)
        self[key] = value
        self.nbytes += size_of(value) - (size_of(old) if old is not None else 0)
        while len(self) > 1 and (len(self) > RAW_CACHE or self.nbytes > RAW_CACHE_BYTES):
            self.nbytes -= size_of(self.popitem(last=False)[1])


class ThreadView:
    """What a thread's entry names say, for the index word they were read
    under: its names, checkpoint ids per namespace (sorted) and pending
    writes per checkpoint. Built in one pass when the word is new; moved to
    the next word in place after this saver's own update of it."""

    def __init__(self, generation: int, word: int, names: Any) -> None:
        self.generation, self.word = generation, word
        # namespace -> keep=N's knowledge of its checkpoints under this word
        # (lgkeep.Kept): changed only by a put with keep=, gone with the view
        self.kept: dict[str, Any] = {}
        self.entries = names  # the index's entries under the word _view last read
        self.names: set[str] = set()
        self.ids: dict[str, list[str]] = {}
        self.writes: dict[tuple[str, str], list[str]] = {}
        for name in list(names):  # the index's entries: a put in another thread may add to them
            self._add(name)
        for ids in self.ids.values():
            ids.sort()

    def _add(self, name: str) -> None:
        if name in self.names:
            return
        self.names.add(name)
        if name[:1] == "b":  # a channel value (blob/...), most of what a put adds: neither list
            return
        if name.startswith("cp/"):
            _, ns, cid = name.split("/", 2)
            if "/" not in cid:
                bisect.insort(self.ids.setdefault(ns, []), cid)
        elif name.startswith("w/"):
            parts = name.split("/", 3)
            if len(parts) == 4:
                self.writes.setdefault((parts[1], parts[2]), []).append(name)

    def advance(self, words: tuple[int, int], added: Any) -> bool:
        """After an update from ``words[0]`` to ``words[1]`` that added ``added``."""
        return self._follow(words, added, self._add)

    def retreat(self, words: tuple[int, int], removed: Any) -> bool:
        """After an update from ``words[0]`` to ``words[1]`` that removed ``removed``."""
        return self._follow(words, removed, self._drop)

    def _follow(self, words: tuple[int, int], names: Any, change: Callable[[str], None]) -> bool:
        """False (nothing changed) if the update was not made on this view's word."""
        if words[0] != self.word:
            return False
        for name in names:
            change(name)
        self.word = words[1]
        return True

    def _drop(self, name: str) -> None:
        if name not in self.names:
            return
        self.names.discard(name)
        if name.startswith("cp/"):
            _, ns, cid = name.split("/", 2)
            ids = self.ids.get(ns)
            if ids is not None and "/" not in cid:
                at = bisect.bisect_left(ids, cid)
                if at < len(ids) and ids[at] == cid:
                    del ids[at]
        elif name.startswith("w/"):
            parts = name.split("/", 3)
            writes = self.writes.get((parts[1], parts[2])) if len(parts) == 4 else None
            if writes is not None:
                writes.remove(name)
                if not writes:
                    del self.writes[(parts[1], parts[2])]
