"""Agents: owner heaps with named entries, recycled in one piece."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from swarmheap import agent_snapshot, index, index_format, offload, offload_entries, offload_sweep, snapshot
from swarmheap._core import SEALED_WORD, AgentCore, stale_agent
from swarmheap.errors import AgentSealed, AgentStateError, HeapCorrupt, InvalidHandle, StaleBlock
from swarmheap.handle import Handle

if TYPE_CHECKING:
    from swarmheap.heap import Heap
    from swarmheap.stores import Store

__all__ = ["Agent"]


# An update that finds its agent offloaded under it starts again (which
# restores it); an agent offloaded again each time is reported after these.
_SEALED_TRIES = 5
_READ_ROUNDS = 100  # a read's tries while other processes change or offload the agent
_OFFLOADED_AGAIN = "offloaded again each time it came back"  # what a read's round lost to
_T = TypeVar("_T")


def _kept_offloaded(agent_id: int) -> AgentStateError:
    return AgentStateError(f"agent {agent_id} kept being offloaded while it was updated: try again")


class Agent(AgentCore):
    """An owner heap: its own pages per size class, its own accounting, its
    named entries. Get one from ``heap.spawn(kind)`` or, in any process of the
    heap, ``heap.agent(agent_id)``. ``with heap.spawn(...) as agent:``
    completes it on exit."""

    # _heap, id, generation and kind are AgentCore's C fields, as is alloc();
    # AgentCore(heap, agent_id, generation, kind) makes one
    __slots__ = ()
    _heap: Heap

    # ---- identity and state ----

    @property
    def heap(self) -> Heap:
        """The heap the agent lives in."""
        return self._heap

    @property
    def state(self) -> str:
        """live, completed (recycle deferred by pins), dead, offloaded, or gone."""
        info = self._heap._owner_info(self.id)
        if info is None or info["generation"] != self.generation:
            return "gone"
        return str(info["state"])

    @property
    def lease_deadline(self) -> float | None:
        """Epoch seconds after which a sweep reclaims the agent, or None.
        An offloaded agent's is read where its offload wrote it (its lease
        runs on in the store), without restoring it."""
        lease = self._read_index()[1]
        if not lease and self.state in ("offloaded", "restoring"):
            return offload_entries.lease_deadline(self._heap, self.id, self.generation)
        return lease or None

    def __repr__(self) -> str:
        # never raises: a repr in a traceback or a debugger outlives the heap
        state = "(heap closed)" if self._heap.closed else self.state
        return f"<Agent {self.id} kind={self.kind!r} generation={self.generation} {state}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            f"an Agent cannot be pickled: send its id ({self.id}) and its heap's name; "
            f"heap.agent(id) in the other process gives it back"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Agent) and (self.id, self.generation) == (other.id, other.generation)

    def __hash__(self) -> int:
        return hash((self.id, self.generation))

    # ---- memory ----

    def touch(self) -> None:
        """Mark the agent active now (idle time drives offloading)."""
        self._heap._owner_touch(self.id, self.generation)

    def renew(self, lease: float) -> None:
        """Move the lease deadline to ``lease`` seconds from now (an
        offloaded agent is restored first: the deadline lives in its index)."""
        seconds = check_lease(lease)
        self._ensure_live()
        self._update_index(lambda entries: None, lease_deadline=time.time() + seconds)

    # ---- named entries ----

    def put(self, name: str, data: Any) -> None:
        """Copy bytes-like ``data`` into the agent's pages under ``name``,
        replacing what was there."""
        index_format.check_name(name)
        try:
            # alloc brings an offloaded agent back (the heap's events)
            blk, nbytes = self._alloc_copy(data)
        except (TypeError, BufferError, AgentSealed):
            # strided, or not a buffer: put_many copies it, or names the type;
            # offloaded (the pin before the copy refused): put_many brings it back
            self.put_many({name: data})
            return
        try:
            self._commit([blk], [(name, blk.offset, nbytes)])
        except AgentSealed:  # offloaded meanwhile: the block went with the memory; put_many starts again
            self.put_many({name: data})

    def put_many(self, items: Mapping[str, Any]) -> tuple[int, int]:
        """put() of several entries in one update of the index: all of them
        or (on an error) none. Returns the index words before and after it
        (see index.update_index)."""
        return self._put_named(items)[0]

    def _put_named(
        self,
        items: Mapping[str, Any],
        requires: Collection[str] = (),
        *,
        expect_word: int | None = None,
        lease_deadline: float | None = None,
        offloads: int | None = None,
    ) -> tuple[tuple[int, int], list[tuple[str, int, int]]]:
        """put_many(), also returning each entry as named: (name, offset,
        size); only onto an index holding every name of ``requires`` (else
        index.MissingEntries, nothing put); ``expect_word`` and
        ``lease_deadline`` as index.put_entries takes them. ``offloads``: a
        restorer's offload count from before its restore began; the entries
        go in only while it holds (else AgentSealed, at once)."""
        if type(items) is not dict and not isinstance(items, Mapping):
            raise TypeError(f"put_many() takes a mapping of names to bytes, not {type(items).__name__}")
        for name in items:
            index_format.check_name(name)
        try:
            return self._put_named_once(
                items, requires, expect_word=expect_word, lease_deadline=lease_deadline, offloads=offloads
            )
        except AgentSealed:  # offloaded meanwhile (as in put()): again, once the agent is back
            if offloads is not None:
                raise  # the restore it was for is over: its restorer decides
        for _ in range(_SEALED_TRIES):
            # one another thread or process is restoring takes allocations:
            # this put's go in once its restore is done
            self._ensure_live()
            try:
                return self._put_named_once(
                    items, requires, expect_word=expect_word, lease_deadline=lease_deadline
                )
            except AgentSealed:
                continue
        raise _kept_offloaded(self.id)

    def _put_named_once(
        self,
        items: Mapping[str, Any],
        requires: Collection[str] = (),
        *,
        expect_word: int | None = None,
        lease_deadline: float | None = None,
        offloads: int | None = None,
    ) -> tuple[tuple[int, int], list[tuple[str, int, int]]]:
        blocks: list[Any] = []
        new: list[tuple[str, int, int]] = []
        try:
            for name, data in items.items():
                try:
                    blk, nbytes = self._alloc_copy(data)
                except BufferError:  # strided: copied to bytes first
                    blk, nbytes = self._alloc_copy(memoryview(data).tobytes())
                except TypeError:
                    raise TypeError(f"put() takes bytes-like data, not {type(data).__name__}") from None
                blocks.append(blk)
                new.append((name, blk.offset, nbytes))
        except AgentSealed:  # offloaded meanwhile: these blocks went with its pages
            self._give_back(blocks)
            raise
        except BaseException:
            for blk in blocks:
                blk.free()
            raise
        return self._commit(
            blocks, new, requires, expect_word=expect_word, lease_deadline=lease_deadline, offloads=offloads
        ), new

    def _commit(
        self,
        blocks: list[Any],
        new: list[tuple[str, int, int]],
        requires: Collection[str] = (),
        *,
        expect_word: int | None = None,
        lease_deadline: float | None = None,
        offloads: int | None = None,
    ) -> tuple[int, int]:
        """Name the filled ``blocks`` in the index (as ``new``), freeing the
        entries they replace; on an error the blocks go back. They go in
        only while the agent's offload count is the one they were made under
        (or ``offloads``, a restorer's): an offload since gave them back with
        the agent's memory, and the index its restore made must not name
        them (AgentSealed: the caller makes them again)."""
        if offloads is None and not blocks:
            offloads = self._heap._owner_offloads(self.id)
        elif offloads is None:
            offloads = blocks[0].offloads
            if len(blocks) > 1 and any(
                blk.offloads != offloads for blk in blocks
            ):  # offloaded as they were made
                self._free_unnamed(blocks)
                raise AgentSealed(f"agent {self.id} was offloaded while a put of it ran")
        try:
            try:
                replaced, words = index.put_entries(
                    self._heap,
                    self.id,
                    self.generation,
                    self.kind,
                    new,
                    requires=requires,
                    expect_word=expect_word,
                    lease_deadline=lease_deadline,
                    offloads=offloads,
                )
            except AgentSealed:
                if not self._restoring_here() or self._heap._owner_offloads(self.id) != offloads:
                    raise
                # this thread restores the agent: its entries go in on the sealed word
                replaced, words = index.put_entries(
                    self._heap,
                    self.id,
                    self.generation,
                    self.kind,
                    new,
                    sealed_ok=True,
                    requires=requires,
                    expect_word=expect_word,
                    lease_deadline=lease_deadline,
                    offloads=offloads,
                )
        except AgentSealed:
            # offloaded since they were made (they went with its memory), or
            # sealed with them made while another process restores it (they
            # are its blocks, which no index names): freed if still its own
            self._give_back(blocks)
            raise
        except BaseException:
            self._free_unnamed(blocks)
            raise
        for offset, _ in replaced:
            self._free_entry(offset, offloads)
        return words

    def get(self, name: str) -> memoryview:
        """A zero-copy view of entry ``name``. While it is alive the agent is
        pinned: complete() defers its recycle until the view is released."""
        self._ensure_live()
        got = self._rounds(lambda: self._view_round(name))
        if isinstance(got, str):
            raise self._kept_changing(f"entry {name!r} keeps changing", got)
        return got

    def _rounds(self, attempt: Callable[[], _T | str]) -> _T | str:
        """``attempt()`` until it answers (anything but a str, which says
        what got in its way): once as it is, then, lost to another writer or
        offloader, with the agent held in memory (a pin), so that offloads by
        the policies of other processes (with min_idle=0, the moment a touch
        brought it back) cannot take it again between the touch and the read.
        A read-only attach cannot pin (a pin is a write), and only retries.
        What got in the way of the last round if every one was lost."""
        got = attempt()
        if not isinstance(got, str):
            return got
        hold = contextlib.nullcontext() if self._heap.read_only else self._kept_in_memory()
        with hold:
            for _ in range(_READ_ROUNDS - 1):
                got = attempt()
                if not isinstance(got, str):
                    return got
        return got

    def _kept_changing(self, what: str, why: str) -> StaleBlock:
        """What a read raises when every round of it was lost (``why``):
        ``what`` says what keeps changing ("entry 'x' keeps changing")."""
        return StaleBlock(f"agent {self.id}'s {what} under concurrent updates ({why})")

    def _unsealed_index(self) -> tuple[int, index_format.Entries] | None:
        """The index word and entries, if the word is a live one; None once
        an agent offloaded since it was brought back is brought back again
        (the sealed word's index names nothing: its entries are in the store)."""
        word, (_, _, entries) = self._read_index_word()
        if word != SEALED_WORD:
            return word, entries
        self._ensure_live()
        return None

    def _view_round(self, name: str) -> memoryview | str:
        """One try of get(): the view, or what got in its way."""
        read = self._unsealed_index()
        if read is None:
            return _OFFLOADED_AGAIN
        word, entries = read
        if name not in entries:
            raise KeyError(f"agent {self.id} has no entry {name!r}")
        offset, size = entries[name]
        try:
            blk = self._heap.resolve(Handle(offset, size, self.id, self.generation))
        except (InvalidHandle, StaleBlock):
            # replaced or deleted and its block freed between the reads, or
            # the agent offloaded, by another process (read the index again);
            # restoring in another process (its blocks are not yet the live
            # agent's); or the agent recycled (StaleBlock from here on)
            if self._gone_for_good():
                raise stale_agent(self.id, self.generation) from None
            self._ensure_live()
            return "its block freed under each read"
        blk._as_entry_view()
        try:
            view = memoryview(blk)
        except (AgentSealed, StaleBlock):  # offloaded since the index was read: back, and again
            self._ensure_live()
            return "offloaded as each view was made"
        # the entry must still be this block: a put() may have replaced it
        # (and the agent reused the place) while we resolved. The word alone
        # says so (it moves with every change), not the index read again
        if self._heap._owner_word(self.id, self.generation) == word:
            return view
        view.release()
        return "the index changed as each view was made"

    @contextlib.contextmanager
    def _kept_in_memory(self) -> Iterator[None]:
        """The agent live, and pinned by this process while the block runs:
        an offload (this or another process's) leaves a pinned agent alone,
        and complete() waits for the pin. StaleBlock if it was completed."""
        heap = self._heap
        for _ in range(_SEALED_TRIES):
            self._ensure_live()
            try:
                heap._owner_pin(self.id, self.generation)
            except AgentSealed:
                continue  # offloaded again before the pin: back, and again
            state = heap._owner_state(self.id)
            if state == "live":
                break
            self._unpin()
            if state != "restoring":  # completed or swept as it was brought back
                raise stale_agent(self.id, self.generation)
        else:
            raise _kept_offloaded(self.id)
        try:
            yield
        finally:
            self._unpin()

    def _unpin(self) -> None:
        """Let go of a pin of _kept_in_memory; the recycle of a completed
        agent waiting for it happens here, its hooks fired."""
        heap = self._heap
        final = heap._owner_unpin(self.id, self.generation)
        if final is not None:
            heap._notify_recycled(self.id, self.generation, final)

    def _gone_for_good(self) -> bool:
        """Recycled, dead, or completed while pinned (its recycle deferred),
        rather than between states: an offload in another process marks the
        agent completed while it gives its pages back (unpinned: an offload
        refuses a pinned agent), and offloaded once they are back."""
        info = self._heap._owner_info(self.id)
        if info is None or info["generation"] != self.generation:
            return True
        return info["state"] == "dead" or (info["state"] == "completed" and bool(info["pins"]))

    def read(self, name: str) -> bytes:
        """A copy of entry ``name``'s bytes: no view, so nothing pins the
        agent (get() is the zero-copy read; after a round lost to another
        process's change or offload, read() too holds the agent, as get())."""
        got = self._rounds(lambda: self._read_round(name))
        if isinstance(got, str):
            raise self._kept_changing(f"entry {name!r} keeps changing", got)
        return got

    def _read_round(self, name: str) -> bytes | str:
        """One try of read(): the bytes, or what got in its way (the index
        changed around the copy, or the agent was offloaded: brought back)."""
        heap = self._heap
        # not the sealed word's index, which names no entry: read as "no
        # such entry" once the agent was offloaded again right after a touch
        read = self._unsealed_index()
        if read is None:
            return _OFFLOADED_AGAIN
        word, entries = read
        place = entries.get(name)
        data = heap._owner_read(self.id, self.generation, *place) if place is not None else None
        # the copy stands if the index did not change around it: an
        # entry's block is freed only after the update that drops it
        now = heap._owner_word(self.id, self.generation)
        if now is None:
            raise stale_agent(self.id, self.generation)
        if now == word and data is not None:
            return data
        if now == word and place is None:
            raise KeyError(f"agent {self.id} has no entry {name!r}")
        return "the index changed as each copy was made"

    def _read_all(self) -> dict[str, bytes]:
        """A copy of every entry's bytes, all as of one index word (read(),
        for the whole agent): a copy of a thread another writer changes."""
        self._ensure_live()
        got = self._rounds(self._read_all_round)
        if isinstance(got, str):
            raise self._kept_changing("entries keep changing", got)
        return got

    def _read_all_round(self) -> dict[str, bytes] | str:
        heap = self._heap
        read = self._unsealed_index()
        if read is None:
            return _OFFLOADED_AGAIN
        word, entries = read
        copies: dict[str, bytes] = {}
        for name, place in list(entries.items()):
            data = heap._owner_read(self.id, self.generation, *place)
            if data is None:
                break
            copies[name] = data
        now = heap._owner_word(self.id, self.generation)
        if now is None:
            raise stale_agent(self.id, self.generation)
        if now == word and len(copies) == len(entries):
            return copies  # as in read(): no entry's block was freed while it was copied
        return "the index changed as each copy was made"

    def delete(self, name: str) -> None:
        """Remove entry ``name`` and free its bytes."""
        self._remove((name,), missing_ok=False)

    def _delete_present(self, names: Iterable[str], expect_word: int | None = None) -> tuple[int, int] | None:
        """Remove those of ``names`` the agent has, in one index update, and
        free their bytes (what another writer removed first is passed over).
        Returns the index words before and after (None: no names given).
        With ``expect_word``, only from the index at that word (else
        index.IndexMoved): names chosen from a reading of it."""
        return self._remove(set(names), missing_ok=True, expect_word=expect_word)

    def _remove(
        self, names: Collection[str], missing_ok: bool, expect_word: int | None = None
    ) -> tuple[int, int] | None:
        """Remove ``names`` in one index update and free their bytes;
        KeyError for a name the agent lacks, unless ``missing_ok``. Returns
        the index words before and after (None: no names given)."""
        if not names:
            return None
        self._ensure_live()
        offloads = self._heap._owner_offloads(self.id)  # before the index is read: see _free_entry
        try:  # an index in pieces writes the pieces holding them and its table
            done = index.remove_in_pieces(
                self._heap, self.id, self.generation, names, missing_ok, expect_word=expect_word
            )
        except AgentSealed:  # offloaded meanwhile: the full path below brings it back
            done = None
        if done is not None:
            for offset, _ in done[0]:
                self._free_entry(offset, offloads)
            return done[1]
        removed: list[tuple[int, int]] = []

        def change(entries: index_format.Entries) -> None:
            removed.clear()  # update_index runs this again after a race: only the last run's counts
            for name in names:
                place = entries.pop(name, None)
                if place is not None:
                    removed.append(place)
                elif not missing_ok:
                    raise KeyError(f"agent {self.id} has no entry {name!r}")

        words = self._update_index(change, expect_word=expect_word)
        for offset, _ in removed:
            self._free_entry(offset, offloads)
        return words

    def names(self) -> list[str]:
        """Names of the agent's entries."""
        return list(self._live_entries())

    def __contains__(self, name: object) -> bool:
        """``name in agent``: whether the agent has an entry of that name (a
        touch, as names(): an offloaded agent comes back)."""
        if not isinstance(name, str):
            return False
        return name in self._live_entries()

    def _live_entries(self) -> index_format.Entries:
        """The entries of the agent's index read from a live word: an
        offloaded agent is brought back first, and one offloaded again at once
        (the sealed word's index names nothing: it read as no entries) is held
        live by a pin for the next read, as get() does."""
        self._ensure_live()
        got = self._rounds(self._live_entries_round)
        if isinstance(got, str):
            raise _kept_offloaded(self.id)
        return got

    def _live_entries_round(self) -> index_format.Entries | str:
        read = self._unsealed_index()
        return _OFFLOADED_AGAIN if read is None else read[1]

    def items(self) -> Iterator[tuple[str, memoryview]]:
        """(name, view) pairs; each view pins the agent while alive. An entry
        another thread or process deletes after the names were read is
        passed over (it raised KeyError)."""
        for name in self.names():
            try:
                view = self.get(name)
            except KeyError:
                continue
            yield name, view

    @staticmethod
    def _give_back(blocks: list[Any]) -> None:
        """Free blocks an update did not name, each only if it is still the
        agent's in the offload it was made in (Block.free() checks that with
        the free): an offload since took it back with the agent's memory."""
        for blk in blocks:
            with contextlib.suppress(StaleBlock):
                blk.free()

    def _free_unnamed(self, blocks: list[Any]) -> None:
        """After a failed index update, free the new blocks the index does not
        name. An exception can arrive after the swap went in (a
        KeyboardInterrupt lands on the next bytecode, and Python runs after
        the swap): freeing a named block let the next allocation hand it out
        again under a second name. If the index cannot be read (the agent is
        gone), nothing is freed: its recycle takes its blocks."""
        try:
            named = {offset for offset, _ in list(self._read_index()[2].values())}
        except Exception:
            return
        for blk in blocks:
            if blk.offset not in named:
                try:
                    blk.free()
                except StaleBlock:
                    pass  # named for a moment, then replaced and freed by another update: not ours to free

    def _free_entry(self, offset: int, offloads: int) -> None:
        """Free a block an index update dropped. ``offloads`` is the agent's
        offload count read before that update read the index: an offload
        since gave the block back, and the agent's restore may have named it
        again, so the binding frees it only while the count holds (checked
        with the free, under the lock an offload takes). A block gone with
        the agent's recycle is left alone too; one with a get() view open in
        this process is freed when the view goes."""
        self._heap._free_entry_block(offset, self.id, self.generation, offloads)

    # ---- the index (swarmheap.index is its format) ----

    def _read_index_word(self) -> tuple[int, index_format.Index]:
        return index.read_index(self._heap, self.id, self.generation, self.kind)

    def _read_index(self) -> index_format.Index:
        return self._read_index_word()[1]

    def _update_index(
        self,
        change: Any,
        lease_deadline: float | None = None,
        expect_word: int | None = None,
        offloads: int | None = None,
    ) -> tuple[int, int]:
        """index.update_index of the agent, again once it is back if it was
        offloaded meanwhile; a restorer's (``offloads`` given) once only."""
        args = (self._heap, self.id, self.generation, self.kind, change, lease_deadline)
        for _ in range(_SEALED_TRIES):
            try:
                return index.update_index(*args, expect_word=expect_word, offloads=offloads)
            except AgentSealed:
                if self._restoring_here():  # this thread restores it: the update goes in on the sealed word
                    return index.update_index(
                        *args, sealed_ok=True, expect_word=expect_word, offloads=offloads
                    )
                if offloads is not None:
                    raise
                self._ensure_live()  # offloaded meanwhile: back, and again
        raise _kept_offloaded(self.id)

    def _restoring_here(self) -> bool:
        """Whether this thread is restoring the agent (its puts build on the sealed word)."""
        return (self.id, self.generation) in self._heap._restoring

    # ---- life ----

    def stats(self) -> dict[str, Any]:
        """Bytes, pages and peak per partition, block count, pins, state."""
        return self._heap._owner_stats(self.id, self.generation, self.kind)

    # ---- snapshots and the offload tier (swarmheap.offload) ----

    def snapshot(self, codec: str = "zstd", level: int | None = None, *, dictionary: bool = True) -> bytes:
        """One self-describing blob of the agent's kind, lease and named
        entries (its other blocks are not in it): ``heap.restore(blob)`` makes
        the agent again in any heap. Codecs: "zstd" (level 3 by default, and
        the kind's trained dictionary once there is one), "lz4", "none". A
        blob made with a dictionary names it, and a restore finds it in this
        heap, in a store the heap writes to, or in another heap this process
        has open; ``dictionary=False`` makes a blob that needs none (for a
        heap of another process or machine that shares no store with this
        one). An offloaded agent's snapshot is made from its blob in the
        store: it stays offloaded. A live agent's is of its entries as they
        stood at one moment, whatever other threads and processes put and
        delete meanwhile (IndexMoved if they never let it be)."""
        snapshot.check_codec(codec, level)
        if not isinstance(dictionary, bool):
            raise TypeError(f"dictionary is True or False, not {type(dictionary).__name__}")
        stored = agent_snapshot.snapshot_stored(self, codec, level, dictionary)
        if stored is not None:
            return stored
        self._ensure_live()
        return agent_snapshot.snapshot_of(self, codec, level, use_dictionary=dictionary)[0]

    def offload(
        self, store: Store | None = None, *, codec: str | None = None, level: int | None = None
    ) -> dict[str, Any]:
        """Write the agent's snapshot to ``store`` (the heap's default store if
        None), then give back its memory. Its id and generation stay valid,
        and touching it (get, put, alloc, names) restores it. A pinned agent
        is not offloaded (AgentStateError says why); a store that is down
        raises StoreUnavailable and the agent stays in memory. The snapshot
        is zstd at level 1 by default (offload is on the way of a spawn or an
        allocation waiting for room: level 3 compresses 2 % smaller and about
        1.4x slower), with the kind's dictionary once trained; without the
        `compress` extra (zstandard) the default is "none", so that an
        offload to SQLite needs no extra. Returns the agent's final info,
        with ``store`` (its URL) and ``key``: what ``heap.restore_from``
        takes in another heap."""
        heap = self._heap
        final = offload.offload(self, store if store is not None else heap.store, codec, level)
        hooks = heap._hooks
        if hooks.table["offload"]:
            hooks.fire("offload", self.id, self.kind, final)
        return final

    def restore(self) -> None:
        """Bring an offloaded agent back from its store (a no-op if it is live)."""
        if (
            self.state in ("offloaded", "restoring")
            and (self.id, self.generation) not in self._heap._restoring
        ):
            restored = offload.restore_in_place(self)
            hooks = self._heap._hooks
            if restored and hooks.table["restore"]:
                hooks.fire("restore", self.id, self.kind, self.stats())

    def _ensure_live(self) -> None:
        # alloc() comes here through the heap's events (on_not_live), from C
        heap = self._heap
        state = heap._owner_state(self.id)
        if state in ("offloaded", "restoring") and (self.id, self.generation) not in heap._restoring:
            self.restore()
        elif state == "corrupt":
            # a state word no agent can be in: taken for live, an offloaded
            # agent read as one with no entries (KeyError), its data silently gone
            raise HeapCorrupt(
                f"agent {self.id}'s slot in the owner table holds no valid state: the table is damaged"
            )

    def detach(self) -> None:
        """Give the agent to the heap rather than to the process that spawned
        it: a sweep no longer reclaims it when that process exits or dies
        (its ``stats()["pid"]`` becomes 0). complete(), or its lease running
        out, still ends it; any process of the heap may use or complete it,
        as any agent. SwarmSaver's threads are detached."""
        self._heap._owner_detach(self.id, self.generation)

    def complete(self) -> dict[str, Any]:
        """Return all of the agent's memory in O(pages) and fire the complete
        and recycle hooks. If a view or array still pins it, the recycle waits
        for the last pin (or the next sweep). Returns the final stats, read in
        the same pass over the agent's pages that gives them back; their
        state is the agent's after the call ("gone", or "completed" while
        pinned)."""
        heap = self._heap
        recycled, final, row, was = heap._owner_complete_row(self.id, self.generation, self.kind)
        heap._predictor.note(self.kind, final, row)  # its reservation, if any, went with its memory (C)
        if was in ("offloaded", "restoring"):
            offload_sweep.forget_completed(heap, self.id, self.generation)
        hooks = heap._hooks
        if hooks.table["complete"]:
            hooks.fire("complete", self.id, self.kind, final)
        if not recycled:
            hooks.defer(self.id, self.generation, self.kind, final)
        elif hooks.table["recycle"]:
            hooks.fire("recycle", self.id, self.kind, final)
        return final

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._heap._owner_generation(self.id) == self.generation and self.state == "live":
            self.complete()


def check_lease(lease: object) -> float:
    """Positive, finite seconds below 1e9 (NaN and infinity never expire)."""
    if isinstance(lease, bool) or not isinstance(lease, (int, float)):
        raise TypeError(f"lease must be seconds (an int or float), not {type(lease).__name__}")
    if not (math.isfinite(lease) and 0 < lease < 1e9):
        raise ValueError(f"lease must be positive, finite seconds below 1e9, not {lease!r}")
    return float(lease)
