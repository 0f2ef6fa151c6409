"""Walks of a thread's checkpoints: which ones keep=N and prune keep (the
newest, and the ancestors their delta channels are rebuilt from), dropping
the rest and the channel versions no kept checkpoint names, and the
history of delta channels (get_delta_channel_history)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from swarmheap import lgkeep
from swarmheap.errors import IndexMoved
from swarmheap.lgrecords import DELTA_COUNTERS, ThreadRecords, delete_if_there
from swarmheap.lgview import ThreadView

__all__ = [
    "DELTA_COUNTERS",
    "delta_history",
    "drop",
    "drop_unnamed",
    "trim",
    "unnamed_values",
    "with_delta_ancestors",
]


def drop(agent: Any, ns: str, cid: str, names: Any = None) -> None:
    for name in [
        n
        for n in (agent.names() if names is None else names)
        if n == f"cp/{ns}/{cid}" or n.startswith(f"w/{ns}/{cid}/")
    ]:
        delete_if_there(agent, name)


# Readings a trim makes before it leaves the thread over keep= to the next
# put's trim: each one ends when another writer changed the thread between
# the reading and the removal it decided.
TRIM_TRIES = 3


def trim(
    rec: ThreadRecords, serde: Any, agent: Any, ns: str, keep: int, view: ThreadView | None = None
) -> None:
    """Drop what the checkpoints of ``ns`` beyond the newest ``keep`` (and
    the ancestors delta channels need) hold, from one reading of the
    thread. With ``view`` (the saver's, current before this), the view
    follows these changes and, if nothing else changed the thread
    meanwhile, is given what keep=N's next puts need (lgkeep.Kept)."""
    for _ in range(TRIM_TRIES):
        try:
            _trim_once(rec, serde, agent, ns, keep, view)
            return
        except IndexMoved:
            continue  # a checkpoint put since the reading may name what it decided to drop


def _trim_once(
    rec: ThreadRecords, serde: Any, agent: Any, ns: str, keep: int, view: ThreadView | None
) -> None:
    # One reading of the names decides, and the removal goes in on the
    # index that reading was of, or not at all (IndexMoved): what another
    # writer of the thread (a thread or process trimming it too) removed
    # meanwhile is passed over, and what a put since then named stays (two
    # puts of one thread trimming at once failed on the records and entries
    # the other had dropped, and the second one's blob pass, reading the
    # names again, deleted a version a checkpoint put since then names).
    word, (_, _, entries) = agent._read_index_word()
    names = list(entries)
    following = (
        view if view is not None and view.generation == agent.generation and view.word == word else None
    )
    if following is not None:
        following.kept.pop(ns, None)
    ids = rec.checkpoint_ids(agent, ns, names)
    records: dict[str, Any] = {}  # each checkpoint's record, decoded once for both passes
    if len(ids) > keep:
        kept = with_delta_ancestors(rec, serde, agent, ns, ids, ids[-keep:], names, records)
        gone = [cid for cid in ids if cid not in kept]
        records_gone = {f"cp/{ns}/{cid}" for cid in gone}
        writes_gone = tuple(f"w/{ns}/{cid}/" for cid in gone)
        doomed = [n for n in names if n in records_gone or (writes_gone and n.startswith(writes_gone))]
        unnamed, word = unnamed_values(rec, serde, agent, ns, names, sorted(kept), word, records, following)
        words = agent._delete_present(doomed + unnamed, expect_word=word)  # one index update for all of it
        if following is not None and words is not None:
            following.retreat(words, doomed + unnamed)
        ids = sorted(kept)
    if following is not None:
        word, (_, _, entries) = agent._read_index_word()
        if following.word == word:  # the view followed every change since the reading: nothing else came
            known = lgkeep.build(rec, serde, agent, ns, ids, entries, records)
            if known is not None:
                following.kept[ns] = known


def with_delta_ancestors(
    rec: ThreadRecords,
    serde: Any,
    agent: Any,
    ns: str,
    ids: Sequence[str],
    kept: Sequence[str],
    names: Any,
    records: dict[str, Any],
) -> set[str]:
    """``kept`` and the ancestors LangGraph reads to rebuild their delta
    channels (DeltaChannel): from each kept checkpoint up its parent
    chain, for each channel its metadata counts updates of since a
    snapshot, to the nearest ancestor that holds the channel's value, as
    get_delta_channel_history walks. Trimmed without them, such a
    channel read back empty or short, and no error said so."""
    present, named = set(ids), set(names)
    keep = set(kept)
    walked: dict[str, set[str]] = {}  # checkpoint -> channels a walk through it looked for already
    for cid in kept:
        record = rec.checkpoint_record(serde, agent, ns, cid, records)
        if record is None:
            continue
        _, metadata, parent = record
        remaining = set((metadata or {}).get(DELTA_COUNTERS) or ())
        while parent and remaining and parent in present:
            if remaining <= walked.get(parent, set()):
                break  # a walk from a newer checkpoint went on from here for these
            walked.setdefault(parent, set()).update(remaining)
            keep.add(parent)
            record = rec.checkpoint_record(serde, agent, ns, parent, records)
            if record is None:
                break
            checkpoint, _, grandparent = record
            for channel, _ in rec.held_values(agent, ns, checkpoint, remaining, named):
                remaining.discard(channel)  # its seed: the walk for it ends here
            parent = grandparent
    return keep


def unnamed_values(
    rec: ThreadRecords,
    serde: Any,
    agent: Any,
    ns: str,
    names: Any,
    kept: Sequence[str],
    word: int,
    records: dict[str, Any] | None = None,
    view: ThreadView | None = None,
) -> tuple[list[str], int]:
    """The channel versions of ``ns`` among ``names`` (read under index
    word ``word``) that no checkpoint in ``kept`` names any more, and the
    word their removal must go in on; a kept delta whose base is one of
    them is stored whole first, so that keep=N bounds the thread (the chain
    does not hold older versions back; ``view`` follows that write).
    IndexMoved if another writer changed the thread before that write."""
    named: set[str] = set()
    records = {} if records is None else records
    for cid in kept:
        record = rec.checkpoint_record(serde, agent, ns, cid, records)
        if record is None:
            continue  # dropped by a writer that saw newer checkpoints: it names what they keep
        checkpoint = record[0]
        named.update(lgkeep.values_named(ns, checkpoint))
    rebased: dict[str, bytes] = {}
    entries = agent._read_index()[2]
    for name in sorted(named):
        base = rec.base_of(agent, name, entries)
        if base is not None and base not in named:
            rebased[name] = rec.rewhole(agent, name, word)

    if rebased:
        words = agent.put_many(rebased)
        if view is not None:
            view.advance(words, rebased)
        if words[0] != word:
            raise IndexMoved(f"agent {agent.id} changed as its trim read it")
        word = words[1]
    return [name for name in names if name.startswith(f"blob/{ns}/") and name not in named], word


def drop_unnamed(rec: ThreadRecords, serde: Any, agent: Any, ns: str) -> None:
    """Drop the channel versions of ``ns`` no checkpoint of it names (after
    checkpoints went), from a reading of the thread that no put came after."""
    for _ in range(TRIM_TRIES):
        word, (_, _, entries) = agent._read_index_word()
        names = list(entries)
        ids = rec.checkpoint_ids(agent, ns, names)
        try:
            unnamed, word = unnamed_values(rec, serde, agent, ns, names, ids, word)
            agent._delete_present(unnamed, expect_word=word)
            return
        except IndexMoved:
            continue


def delta_history(
    rec: ThreadRecords,
    serde: Any,
    agent: Any,
    view: ThreadView,
    ns: str,
    cid: str | None,
    channels: Sequence[str],
) -> dict[str, Any]:
    """For each of ``channels`` (DeltaChannel, beta), the pending writes of
    checkpoint ``cid``'s ancestors back to the nearest one holding the
    channel's value, and that value as its seed: what LangGraph's default
    get_delta_channel_history returns, walking get_tuple. That decoded every
    channel of every ancestor, up to snapshot_frequency of them at each
    step; this decodes each ancestor's record and writes, and a value only
    for a seed."""
    found: dict[str, list[Any]] = {channel: [] for channel in channels}
    seeds: dict[str, Any] = {}
    cursor = None
    if cid is not None and f"cp/{ns}/{cid}" in view.names:
        cursor = rec.get(serde, agent, f"cp/{ns}/{cid}", view.entries)[2]
    remaining = set(channels)
    while cursor and remaining and f"cp/{ns}/{cursor}" in view.names:
        checkpoint, _, parent = rec.get(serde, agent, f"cp/{ns}/{cursor}", view.entries)
        for write in reversed(rec.pending_writes(serde, agent, ns, cursor, view)):
            if write[1] in remaining:
                found[write[1]].append(write)
        for channel, typed in rec.held_values(agent, ns, checkpoint, remaining, view.names):
            seeds[channel] = serde.loads_typed(typed)
            remaining.discard(channel)
        cursor = parent
    history: dict[str, Any] = {}
    for channel in channels:
        history[channel] = {"writes": list(reversed(found[channel]))}
        if channel in seeds:
            history[channel]["seed"] = seeds[channel]
    return history
