"""The heap registry: named small blobs that every process of the heap finds
(offloaded agents, kind names, channels, usage models, dictionaries,
LangGraph threads).

Each value is a block of the nursery owner (1) in `system`, the heap's own
bookkeeping, shown as overhead in the stats. The names live in two levels:
SHARDS shard blocks, each an index (index.py's format) of the names that
hash to it behind an 8-byte nonce, and the root, owner 1's index, naming
the shards. A write copies one shard with its change into a new block and
swaps the root's entry for that shard (if the root word is still the one
the copy was made under): O(names / SHARDS + SHARDS) where one
flat index cost O(names), so 10 000 offloaded agents cost an offload no
more than 300 did. Blocks are never changed once named; the old shard and
a replaced value are freed after the swap.

A reader checks what it read against the root word it began with: a swap
of any shard changes the word (it carries a sequence number), so a shard or
value block freed and reused under a reader is read again, never trusted.
The nonce lets a process keep a shard's decoded names between reads. Names
written flat into the root by a swarmheap before shards are still found,
and move into their shard with their next write.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from swarmheap import index, index_format
from swarmheap.errors import AgentStateError, HeapCorrupt, StaleBlock

if TYPE_CHECKING:
    from swarmheap.heap import Heap

__all__ = [
    "REGISTRY_GENERATION",
    "REGISTRY_KIND",
    "REGISTRY_OWNER",
    "SHARDS",
    "Registry",
    "RegistryCache",
    "Token",
]

REGISTRY_OWNER = 1  # owners 0 and 1 keep generation 1 for life
REGISTRY_GENERATION = 1
REGISTRY_KIND = "swarmheap.registry"
SHARDS = 32
_SHARD = "shard/"
_SHARD_KIND = "swarmheap.registry.shard"
_NONCE = struct.Struct("<Q")
_TRIES = 1000  # each a few reads: a writer that loses a race to another process tries again

Ref = tuple[int, int]  # a block's offset and size
# what get_ref read, for swap: the entry's place and the bytes there. The
# place alone is no version: a replaced value's block is freed, and the next
# write of the name (in this process, from the thread cache, at once) can
# get the same place and size back, so a swap from a place read before both
# writes succeeded and undid the second one (threads counting in an entry
# lost 62 of 1 200 increments). A swap takes the entry if it still holds
# those bytes: what the caller's new value was made from.
Token = tuple[int, int, bytes]
# per heap: shard name -> (its block's ref, nonce, decoded names, the names'
# encoded body and where each starts in it, None until a change needs it):
# a write copies the body with its change spliced in (index_format.encode_update),
# not every name encoded again (at 6 000 names, 38 of a write's 64 us)
RegistryCache = dict[
    str, tuple[Ref, int, index_format.Entries, "bytes | bytearray", "index_format.Positions | None"]
]


class _Changed(Exception):
    """What was read changed under the reader: read again."""


def _place(token: Token | None) -> Ref | None:
    return None if token is None else (token[0], token[1])


def shard_of(name: str) -> str:
    return f"{_SHARD}{zlib.crc32(name.encode()) % SHARDS:02d}"


class Registry:
    """The registry of ``heap`` (cheap to make: its state is in the arena,
    and the decoded shards in the heap's process-local cache)."""

    def __init__(self, heap: Heap) -> None:
        self.heap = heap
        self._cache: RegistryCache = heap._registry_shards

    # ---- reading ----

    def _root(self) -> tuple[int, index_format.Entries]:
        try:
            word, (_, _, entries) = index.read_index(
                self.heap, REGISTRY_OWNER, REGISTRY_GENERATION, REGISTRY_KIND
            )
        except (StaleBlock, AgentStateError) as exc:  # owner 1 is never recycled:
            # an index that is gone or never reads the same twice is damage
            raise HeapCorrupt(
                f"the heap's registry (the nursery owner's index) is unreadable: {exc}"
            ) from None
        return word, entries

    def _root_word(self) -> int | None:
        return self.heap._owner_word(REGISTRY_OWNER, REGISTRY_GENERATION)

    def _bytes(self, ref: Ref, n: int | None = None) -> bytes:
        # one checked copy in the binding (as resolve checks a handle), not a
        # Handle, a Block and a slice of it: a registry read does two of these
        data: bytes | None = self.heap._owner_read(
            REGISTRY_OWNER, REGISTRY_GENERATION, ref[0], ref[1] if n is None else n
        )
        if data is None:
            raise _Changed
        return data

    def _shard(self, shard: str, ref: Ref) -> index_format.Entries:
        """The names in the shard block at ``ref`` (shared with the cache:
        read them, never change them). Raises _Changed if the block does not
        read as a shard: freed and reused under us."""
        hit = self._cache.get(shard)
        if hit is not None and hit[0] == ref:
            (nonce,) = _NONCE.unpack(self._bytes(ref, _NONCE.size))
            if nonce == hit[1]:
                return hit[2]
        data = self._bytes(ref)
        try:
            (nonce,) = _NONCE.unpack_from(data, 0)
            kind, _, entries = index_format.decode(data[_NONCE.size :])
        except (struct.error, ValueError, UnicodeDecodeError):
            raise _Changed from None
        if kind != _SHARD_KIND:
            raise _Changed
        self._cache[shard] = (ref, nonce, entries, index_format.body_of(data[_NONCE.size :], kind), None)
        return entries

    def _settled(self, attempt: Callable[[], Any], what: str) -> Any:
        for _ in range(_TRIES):
            try:
                return attempt()
            except _Changed:
                continue
        raise HeapCorrupt(f"the heap registry's {what} never reads the same twice: it is damaged")

    def get(self, name: str) -> bytes | None:
        return self.get_ref(name)[1]

    def get_ref(self, name: str) -> tuple[Token | None, bytes | None]:
        """The entry's token (for swap) and bytes; (None, None) if absent."""
        shard = shard_of(name)

        def attempt() -> tuple[Token | None, bytes | None]:
            word, root = self._root()
            sref = root.get(shard)
            ref = self._shard(shard, sref).get(name) if sref is not None else None
            if ref is None:
                ref = root.get(name)  # written flat, before shards
            if ref is None:
                return None, None
            data = self._bytes(ref)
            if self._root_word() != word:
                raise _Changed
            return (ref[0], ref[1], data), data

        result: tuple[Token | None, bytes | None] = self._settled(attempt, f"entry {name!r}")
        return result

    def names(self, prefix: str = "") -> list[str]:
        def attempt() -> list[str]:
            word, root = self._root()
            out = [n for n in root if n.startswith(prefix) and not n.startswith(_SHARD)]
            for shard, sref in root.items():
                if shard.startswith(_SHARD):
                    out += [n for n in self._shard(shard, sref) if n.startswith(prefix)]
            if self._root_word() != word:
                raise _Changed
            return out

        names: list[str] = self._settled(attempt, "names")
        return names

    # ---- writing ----

    def put(self, name: str, data: bytes) -> None:
        self._write(name, data, lambda old: True)

    def swap(self, name: str, expected: Token | None, data: bytes) -> bool:
        """Replace the entry if it still holds what get_ref read (``expected``,
        its token; None: absent); False, nothing changed, if another writer
        replaced it first."""
        if expected is None:
            return self._write(name, data, lambda old: old is None)
        place, seen = expected[:2], expected[2]
        return self._write(name, data, lambda old: old == place and self._bytes(old) == seen)

    def remove(self, name: str) -> None:
        self._change(name, None, lambda old: old is not None)

    def remove_if(self, name: str, data: bytes) -> bool:
        """Remove the entry if it holds ``data`` (what this writer put there);
        False, nothing changed, if another writer's is there now."""
        return self._change(name, None, lambda old: old is not None and self._bytes(old) == data)

    def _write(self, name: str, data: bytes, accept: Callable[[Ref | None], bool]) -> bool:
        """Copy ``data`` into a new block and name it ``name`` if ``accept``
        takes the entry there now; False, with nothing changed, if it refused."""
        blk = self.heap.alloc(max(len(data), 1), "system", owner=REGISTRY_OWNER)
        blk[: len(data)] = data
        try:
            done = self._change(name, (blk.offset, len(data)), accept)
        except BaseException:
            if not self._may_name(lambda: _place(self.get_ref(name)[0]), blk.offset):
                blk.free()
            raise
        if not done:
            blk.free()
        return done

    def _change(self, name: str, new: Ref | None, accept: Callable[[Ref | None], bool]) -> bool:
        """Set ``name`` to ``new`` (None: remove it) in a new copy of its
        shard, and swap the root to that copy if the root word is still the
        one the copy was made under (else read again and make a new copy)."""
        shard = shard_of(name)
        heap = self.heap

        def attempt() -> bool:
            word, root = self._root()
            sref = root.get(shard)
            shared: index_format.Entries = {}
            # an empty shard's body and positions
            encoded: tuple[bytes | bytearray, index_format.Positions | None] | None = (b"", {})
            if sref is not None:
                shared = self._shard(shard, sref)
                hit = self._cache.get(shard)
                if hit is None or hit[0] != sref or hit[2] is not shared:
                    encoded = None  # no encoding of `shared` at hand: encode the shard whole
                else:
                    encoded = hit[3], hit[4]
            entries = dict(shared)
            flat = root.get(name)
            old = entries.get(name, flat)
            if not accept(old):
                # a refusal is final only if what it saw was the registry then:
                # the shard block may have been freed and reused (by another
                # writer's copy) between reading the root and reading it
                if self._root_word() != word:
                    raise _Changed
                return False
            if new is None:
                entries.pop(name, None)
            else:
                entries[name] = new
            nonce = int.from_bytes(os.urandom(8), "little")
            sblk = None
            if entries:
                body, positions = index_format.encode_update(shared, encoded, entries)
                head = index_format.encode_head(_SHARD_KIND, 0.0, len(entries))
                block = b"".join((_NONCE.pack(nonce), head, body))
                sblk = heap.alloc(len(block), "system", owner=REGISTRY_OWNER)
                sblk[: len(block)] = block

            def swap_root(root_entries: index_format.Entries) -> None:
                # the root word, not the shard's ref: a shard block freed and
                # its place taken by a newer copy of the same size would pass
                # a compare of refs and lose that copy's change. The word only
                # grows, so equal now means equal when these entries were read;
                # raising leaves update_index before it swaps anything.
                if self._root_word() != word:
                    raise _Changed
                root_entries.pop(name, None)  # a flat entry moves into its shard
                if sblk is None:
                    root_entries.pop(shard, None)
                else:
                    root_entries[shard] = (sblk.offset, len(block))

            try:
                index.update_index(heap, REGISTRY_OWNER, REGISTRY_GENERATION, REGISTRY_KIND, swap_root)
            except BaseException:  # _Changed included: the copy goes, the next attempt makes another
                if sblk is not None and not self._may_name(lambda: self._root()[1].get(shard), sblk.offset):
                    sblk.free()
                raise
            if sblk is not None:
                self._cache[shard] = ((sblk.offset, len(block)), nonce, entries, body, positions)
            for ref in (sref, old):
                if ref is not None:
                    self._free(ref)
            return True

        done: bool = self._settled(attempt, f"entry {name!r}")
        return done

    def _may_name(self, ref_now: Callable[[], Ref | None], offset: int) -> bool:
        """After a failed change: does the registry name the block at
        ``offset`` now (or can that not be told)? An exception can arrive
        after the root swap went in (a KeyboardInterrupt lands on the next
        bytecode), and freeing a block the registry names hands it out again
        under a second name; one that cannot be told is kept (a leak of a few
        bytes of `system`, not a block with two owners)."""
        try:
            ref = ref_now()
        except Exception:
            return True
        return ref is not None and ref[0] == offset

    def _free(self, ref: Ref) -> None:
        # checked in the binding: a block already gone (a concurrent change) is left alone
        self.heap._free_entry_block(ref[0], REGISTRY_OWNER, REGISTRY_GENERATION, 0)  # never offloaded
