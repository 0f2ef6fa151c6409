"""keep=N's trim, advanced put by put. What a thread's checkpoints in one
namespace name (how many of them name each channel version, and the
version each delta record is decoded against) is kept beside the
ThreadView of the index word it describes, so that a put that drops the
oldest checkpoint finds what goes with it without reading the thread
again: O(what it drops), not O(N). The view is current only through this
saver's own updates (any other writer's makes a new word, and a new view
without this); lgwalks.trim's full reading makes it again then. Graphs
with delta channels (whose trims keep ancestors) always take that full
reading."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

from swarmheap.errors import IndexMoved
from swarmheap.lgrecords import DELTA_COUNTERS, ThreadRecords
from swarmheap.lgview import ThreadView

__all__ = ["Kept", "trim_known", "values_named"]


def values_named(ns: str, checkpoint: Any) -> tuple[str, ...]:
    """The entry names of the channel versions a checkpoint names."""
    versions = checkpoint["channel_versions"]
    return tuple(f"blob/{ns}/{channel}/{version}" for channel, version in versions.items())


class Kept:
    """The checkpoints of one namespace under a view's word, and what they name."""

    __slots__ = ("base", "based_on", "ids", "named", "refs", "unnamed")

    def __init__(self) -> None:
        self.ids: list[str] = []  # the namespace's checkpoint ids, sorted (newest last)
        self.named: dict[str, tuple[str, ...]] = {}  # checkpoint id -> the value names it names
        self.refs: dict[str, int] = {}  # value name -> how many of ids name it
        self.base: dict[str, str] = {}  # value name -> the value its delta is decoded against
        self.based_on: dict[str, set[str]] = {}  # the reverse of base
        self.unnamed: set[str] = set()  # values written that no checkpoint names (dropped at the next trim)

    def add(self, cid: str, values: tuple[str, ...]) -> None:
        """Checkpoint ``cid`` naming ``values`` (put again: what it named before is let go)."""
        old = self.named.get(cid)
        if old is None:
            bisect.insort(self.ids, cid)
        self.named[cid] = values
        refs = self.refs
        for name in values:
            refs[name] = refs.get(name, 0) + 1
            self.unnamed.discard(name)
        if old is not None:
            self._release(old)

    def set_base(self, name: str, base: str | None) -> None:
        old = self.base.pop(name, None)
        dependents = self.based_on.get(old) if old is not None else None
        if dependents is not None:
            dependents.discard(name)
        if base is not None:
            self.base[name] = base
            self.based_on.setdefault(base, set()).add(name)

    def written(self, name: str, base: str | None) -> None:
        """Value ``name`` written (a delta on ``base``, or whole)."""
        self.set_base(name, base)
        if name not in self.refs:
            self.unnamed.add(name)

    def _release(self, values: Iterable[str]) -> list[str]:
        gone = []
        refs = self.refs
        for name in values:
            left = refs[name] - 1
            if left:
                refs[name] = left
            else:
                del refs[name]
                gone.append(name)
        return gone

    def drop_oldest(self, keep: int) -> tuple[list[str], list[str]]:
        """Forget all but the newest ``keep`` checkpoints: (their ids, the
        values no kept checkpoint names any more, with those no checkpoint
        ever named)."""
        cut = len(self.ids) - keep
        dropped, self.ids = self.ids[:cut], self.ids[cut:]
        gone: list[str] = []
        for cid in dropped:
            gone += self._release(self.named.pop(cid))
        gone += self.unnamed
        self.unnamed = set()
        for name in gone:
            self.set_base(name, None)
        return dropped, gone

    def rebase_wanted(self, gone: Iterable[str]) -> list[str]:
        """The kept values decoded against one of ``gone``: stored whole
        before it goes, so that keep=N bounds the thread."""
        wanted = []
        for name in gone:
            wanted += [v for v in self.based_on.pop(name, ()) if v in self.refs]
        return wanted


def build(
    rec: ThreadRecords, serde: Any, agent: Any, ns: str, ids: list[str], entries: Any, records: dict[str, Any]
) -> Kept | None:
    """Kept for checkpoints ``ids`` under the index ``entries`` (None if a
    checkpoint has delta counters, is gone, or one of its values is
    decoded against a value none of them names: the full trim's case)."""
    kept = Kept()
    for cid in ids:
        record = rec.checkpoint_record(serde, agent, ns, cid, records)
        if record is None or (record[1] or {}).get(DELTA_COUNTERS):
            return None
        kept.add(cid, values_named(ns, record[0]))
    prefix = f"blob/{ns}/"
    kept.unnamed = {name for name in list(entries) if name.startswith(prefix) and name not in kept.refs}
    for name in kept.refs:
        if name in entries:
            base = rec.base_of(agent, name, entries)
            if base is not None and base not in kept.refs:
                return None
            kept.set_base(name, base)
    return kept


def trim_known(rec: ThreadRecords, agent: Any, ns: str, keep: int, view: ThreadView, kept: Kept) -> bool:
    """Drop what the thread's checkpoints beyond the newest ``keep`` hold,
    as ``kept`` (current under ``view``) knows it: their records and
    pending writes, and the values only they named; a kept delta on one of
    those values is stored whole first. False if the view stopped being
    current on the way (another writer): what is left is the full trim's."""
    dropped, gone = kept.drop_oldest(keep)
    names = view.names
    doomed = [name for name in gone if name in names]
    for cid in dropped:
        record = f"cp/{ns}/{cid}"
        if record in names:
            doomed.append(record)
        doomed += view.writes.get((ns, cid), ())
    rebased: dict[str, bytes] = {}
    for name in kept.rebase_wanted(gone):
        if name in names:
            try:
                rebased[name] = rec.rewhole(agent, name, view.word)
            except IndexMoved:  # another writer's trim stored it whole and dropped its base
                return False
            kept.set_base(name, None)
    if rebased and not view.advance(agent.put_many(rebased), rebased):
        return False
    try:
        words = agent._delete_present(doomed, expect_word=view.word)
    except IndexMoved:  # another writer came in: a checkpoint of its may name what was to go
        return False
    return words is None or view.retreat(words, doomed)
