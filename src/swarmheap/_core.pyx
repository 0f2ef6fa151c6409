# cython: language_level=3
"""The binding: Heap and Block over the C core. Thin by design; the agent,
sweep and hook logic lives in the pure-Python layer on top."""

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from swarmheap.includes.core cimport *


cdef extern from "np_handler.h":
    ctypedef struct shnp_keeper:
        pass
    ctypedef struct shnp_stats:
        uint64_t allocs, frees, live, fallbacks, failures, in_place
    int shnp_import() except -1
    shnp_keeper *shnp_keeper_new(sh_arena_t *arena)
    void shnp_keeper_close(shnp_keeper *keeper)
    uint64_t shnp_keeper_live(const shnp_keeper *keeper)
    object shnp_handler_new(shnp_keeper *keeper, uint32_t owner, uint32_t generation,
                            sh_partition_t partition, int fallback, object heap_ref)
    int shnp_handler_stats(object capsule, shnp_stats *stats)
    object shnp_get_handler()
    object shnp_set_handler(object capsule)


shnp_import()

import time
import weakref

import numpy as np

from swarmheap.errors import (
    AgentStateError,
    AttachError,
    HeapCorrupt,
    HeapExists,
    HeapNotFound,
    InvalidHandle,
    PartitionFull,
    StaleBlock,
    SwarmHeapError,
    TooManyAgents,
)
from swarmheap.handle import Handle
from swarmheap.sizes import format_size, parse_size

PARTITIONS = ("context", "shared", "comm", "system")
OWNER_STATES = ("free", "live", "completed", "dead", "offloaded")
cdef dict _PART_INDEX = {name: i for i, name in enumerate(PARTITIONS)}
cdef str _CONTEXT = PARTITIONS[0]
cdef str _SHARED = PARTITIONS[1]
cdef str _COMM = PARTITIONS[2]
cdef str _SYSTEM = PARTITIONS[3]
cdef uint64_t _HELD_OFFSET_MASK = (1 << 40) - 1
cdef uint64_t _HELD_LENGTH_MASK = (1 << 23) - 1
cdef dict _STATE_INDEX = {name: i for i, name in enumerate(OWNER_STATES)}
_ATTACH_CODES = frozenset({SH_ETRUNCATED, SH_EMAGIC, SH_EVERSION, SH_ECHECKSUM, SH_ECORRUPT})


cdef int _part(object partition) except -1:
    # Literal names in the caller's code are interned, so they are these very
    # objects: identity answers without hashing (a dict lookup costs about a
    # sixth of an alloc+free pair from Python)
    if partition is _CONTEXT:
        return 0
    if partition is _SHARED:
        return 1
    if partition is _COMM:
        return 2
    if partition is _SYSTEM:
        return 3
    try:
        return _PART_INDEX[partition]
    except (KeyError, TypeError):
        raise ValueError(f"unknown partition {partition!r}: use one of {', '.join(PARTITIONS)}") from None


# The core's _nolock calls never wait: on SH_EAGAIN (the call needs a lock)
# the locking call runs again with the GIL released.
cdef inline int _alloc_off(sh_arena_t *arena, uint32_t oid, sh_partition_t part, uint64_t nbytes,
                           uint64_t *off) noexcept:
    cdef int rc = sh_alloc_nolock(arena, oid, part, nbytes, off)
    if rc == SH_EAGAIN:
        with nogil:
            rc = sh_alloc(arena, oid, part, nbytes, off)
    return rc


cdef inline int _free_off(sh_arena_t *arena, uint64_t off) noexcept:
    cdef int rc = sh_free_nolock(arena, off)
    if rc == SH_EAGAIN:
        with nogil:
            rc = sh_free(arena, off)
    return rc


cdef int _raise(int rc, bint attaching=False) except -1:
    """Turn a C status into the named exception, with the core's message."""
    message = sh_last_error().decode("utf-8", "replace")
    code = sh_strerror(rc).decode()
    if rc == SH_EFULL:
        raise PartitionFull(message, code)
    if rc == SH_EINVAL:
        raise ValueError(message)
    if rc == SH_ENOMEM:
        raise MemoryError(message)
    if rc == SH_ENOENT:
        raise HeapNotFound(message, code)
    if rc == SH_EEXIST:
        raise HeapExists(message, code)
    if rc in _ATTACH_CODES and attaching:
        raise AttachError(message, code)
    if rc == SH_ECORRUPT:
        raise HeapCorrupt(message, code)
    if rc == SH_EBADPTR:
        raise InvalidHandle(message, code)
    if rc == SH_EDOUBLEFREE or rc == SH_EOWNER:
        raise StaleBlock(message, code)
    if rc == SH_ETOOMANY:
        raise TooManyAgents(message, code)
    if rc == SH_ESTATE or rc == SH_EPINNED:
        raise AgentStateError(message, code)
    if rc == SH_ESYS or rc == SH_ENOSPC:
        raise OSError(message)
    raise SwarmHeapError(message, code)


cdef uint64_t _lease_deadline_ns(object lease) except 0:
    """Seconds from now to an absolute CLOCK_REALTIME deadline in ns."""
    if isinstance(lease, bool) or not isinstance(lease, (int, float)):
        raise TypeError(f"lease must be seconds (an int or float), not {type(lease).__name__}")
    if not (lease > 0 and lease < 1e9):
        raise ValueError(f"lease must be positive seconds below 1e9, not {lease!r}")
    return <uint64_t>((time.time() + lease) * 1e9)


cdef bytes _shm_name(object name):
    if not isinstance(name, str):
        raise TypeError(f"heap name must be a str, not {type(name).__name__}")
    if not name or "/" in name or len(name) > 250 or "\0" in name:
        raise ValueError(f"heap name {name!r} must be 1-250 characters without '/' or NUL")
    return ("/" + name).encode()


cdef uint64_t _size_arg(object size) except? 0xFFFFFFFFFFFFFFFF:
    if type(size) is int and size >= 0:
        return size
    return parse_size(size)


def unlink(name):
    """Remove a named heap from /dev/shm. Processes that have it mapped keep it
    until they close. Raises HeapNotFound if there is no such heap."""
    cdef bytes cname = _shm_name(name)
    cdef int rc = sh_unlink(SH_BACKING_SHM, cname)
    if rc:
        _raise(rc)


cdef class CoreHeap:
    """One arena: private (anonymous) or named shared memory. Use
    ``Heap.create`` or ``Heap.attach``; see the package docs."""

    def __cinit__(self):
        self.arena = NULL
        self._sweep_countdown = 1

    def __init__(self):
        raise TypeError("use Heap.create(...) or Heap.attach(name)")

    def __dealloc__(self):
        if self.np_keeper != NULL:
            shnp_keeper_close(<shnp_keeper *>self.np_keeper)  # unmaps once no array lives in it
        elif self.arena != NULL:
            sh_close(self.arena)
        self.np_keeper = NULL
        self.arena = NULL

    @classmethod
    def create(cls, name=None, size="64 MiB", *, ratios=None, page_size=65536, max_owners=0, max_threads=0):
        """Create an arena of ``size`` bytes (an int or "1 GiB"). ``name=None``
        gives a private arena; a name gives shared memory other processes can
        ``attach``. ``ratios`` maps the four partitions (context, shared, comm,
        system) to shares above 0 summing to 1. ``max_threads`` is how many
        threads, across all processes, get a cache in the arena at once (0 picks
        one from the size); later threads take the slower uncached path."""
        cdef sh_options_t opts
        cdef sh_arena_t *arena = NULL
        cdef uint64_t nbytes = parse_size(size)
        cdef bytes cname = None
        cdef const char *cname_p = NULL
        cdef int rc
        sh_options_init(&opts)
        if ratios is not None:
            if not hasattr(ratios, "items"):
                raise TypeError("ratios must be a mapping of partition name to share")
            unknown = set(ratios) - set(PARTITIONS)
            if unknown:
                raise ValueError(f"unknown partition(s) in ratios: {sorted(unknown)}; use {', '.join(PARTITIONS)}")
            missing = set(PARTITIONS) - set(ratios)
            if missing:
                raise ValueError(f"ratios must give all four partitions; missing {sorted(missing)}")
            for key, share in ratios.items():
                if isinstance(share, bool) or not isinstance(share, (int, float)):
                    raise TypeError(f"ratio of {key!r} must be a number, not {type(share).__name__}")
                opts.ratios[_PART_INDEX[key]] = share
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            raise TypeError("page_size must be an int")
        if not 0 < page_size < 2**32:
            raise ValueError(f"page size {page_size} must be a power of two from 4096 to 8 MiB")
        opts.page_size = page_size
        if isinstance(max_owners, bool) or not isinstance(max_owners, int) or not 0 <= max_owners < 2**32:
            raise ValueError("max_owners must be an int >= 0 (0 picks one from the size)")
        opts.max_owners = max_owners
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or not 0 <= max_threads <= 4095:
            raise ValueError("max_threads must be an int from 0 to 4095 (0 picks one from the size)")
        opts.max_threads = max_threads
        if name is not None:
            cname = _shm_name(name)
            cname_p = cname
        with nogil:
            rc = sh_create(&arena, SH_BACKING_SHM if cname_p != NULL else SH_BACKING_ANON, cname_p, nbytes, &opts)
        if rc:
            _raise(rc)
        cdef CoreHeap heap = cls.__new__(cls)
        heap._adopt(arena, name, False, True)
        return heap

    @classmethod
    def attach(cls, name, *, read_only=False):
        """Map a named heap another process created. Every header field is
        validated first: a damaged, truncated or foreign one raises AttachError."""
        cdef bytes cname = _shm_name(name)
        cdef const char *cname_p = cname
        cdef sh_arena_t *arena = NULL
        cdef int ro = 1 if read_only else 0
        cdef int rc
        with nogil:
            rc = sh_attach(&arena, SH_BACKING_SHM, cname_p, ro)
        if rc:
            _raise(rc, True)
        cdef CoreHeap heap = cls.__new__(cls)
        heap._adopt(arena, name, ro, False)
        return heap

    cdef void _adopt(self, sh_arena_t *arena, object name, bint read_only, bint created):
        cdef sh_arena_info_t info
        self.arena = arena
        self.base = <uint8_t *>sh_base(arena)
        sh_arena_info(arena, &info)
        self.arena_size = info.size
        self.page_shift_ = <uint32_t>(info.page_size.bit_length() - 1)
        self.name = name
        self.read_only = read_only
        self.created = created

    cdef int _check_open(self) except -1:
        if self.arena == NULL:
            raise ValueError("the heap is closed")
        return 0

    cdef Block _new_block(self, uint64_t offset, uint64_t length, uint32_t owner, uint32_t generation,
                          uint64_t usable, int part):
        cdef Block blk = Block.__new__(Block)
        blk.heap = self
        blk.offset = offset
        blk.length = length
        blk.owner = owner
        blk.generation = generation
        blk.usable = usable
        blk.part = part
        return blk

    @property
    def closed(self):
        """True once close() ran."""
        return self.arena == NULL

    @property
    def size(self):
        """Arena size in bytes."""
        return self.arena_size

    @property
    def page_size(self):
        """Page size in bytes."""
        self._check_open()
        cdef sh_arena_info_t info
        sh_arena_info(self.arena, &info)
        return info.page_size

    def close(self):
        """Unmap this process's view. Blocks of it become unusable here; other
        processes keep the heap. Refused while buffers are exported."""
        if self.arena == NULL:
            return
        if self.exports:
            raise BufferError(f"cannot close: {self.exports} exported buffer(s) still point into the heap")
        if self.np_keeper != NULL:
            # arrays made by a NumPy handler may still live in the mapping: the
            # keeper unmaps it when the last of them is freed
            shnp_keeper_close(<shnp_keeper *>self.np_keeper)
            self.np_keeper = NULL
        else:
            sh_close(self.arena)
        self.arena = NULL
        self.base = NULL

    def unlink(self):
        """Remove the heap's name; mapped views stay valid until closed."""
        if self.name is None:
            raise ValueError("a private heap has no name to unlink")
        unlink(self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """Close; a heap this handle created by name is unlinked too."""
        self.close()
        if self.created and self.name is not None:
            try:
                unlink(self.name)
            except HeapNotFound:
                pass
        return False

    def __repr__(self):
        if self.arena == NULL:
            return f"<{type(self).__name__} {self.name!r} closed>"
        where = "private" if self.name is None else repr(self.name)
        return f"<{type(self).__name__} {where} {format_size(self.arena_size)}{' read-only' if self.read_only else ''}>"

    # ---- blocks ----------------------------------------------------------

    cdef int _owner_arg(self, object owner, uint32_t *oid, uint32_t *gen) except -1:
        if owner is None:
            oid[0] = 0
            gen[0] = 1
            return 0
        if isinstance(owner, int) and not isinstance(owner, bool):
            if not 0 <= owner < 2**32:
                raise ValueError(f"owner id {owner} is out of range")
            oid[0] = owner
            gen[0] = sh_owner_generation(self.arena, oid[0])
            if gen[0] == 0:
                raise StaleBlock(f"owner {owner} does not exist (its slot is free)", "SH_EOWNER")
            return 0
        oid[0] = owner.id
        gen[0] = owner.generation
        if sh_owner_generation(self.arena, oid[0]) != gen[0]:
            raise StaleBlock(f"agent {oid[0]} (generation {gen[0]}) was recycled", "SH_EOWNER")
        return 0

    def alloc(self, size, partition=_CONTEXT, *, owner=None, lease=None):
        """A Block of ``size`` bytes in ``partition``, charged to ``owner``
        (an Agent, an owner id, or None for the shared default). ``lease``
        (seconds, shared default only) lets a sweep free the block once that
        time has passed without a renew_lease(): for blocks whose holder may
        forget them or die."""
        self._check_open()
        cdef uint64_t nbytes = _size_arg(size)
        cdef int part = _part(partition)
        cdef uint32_t oid, gen
        self._owner_arg(owner, &oid, &gen)
        cdef uint64_t deadline = 0
        if lease is not None:
            deadline = _lease_deadline_ns(lease)
            if oid != 0:
                raise ValueError("only blocks of the shared default (owner=None) take a lease: "
                                 "an agent's blocks go back with the agent, so give the agent the lease")
        cdef uint64_t off
        cdef int rc = _alloc_off(self.arena, oid, <sh_partition_t>part, nbytes, &off)
        if rc:
            _raise(rc)
        if deadline:
            with nogil:
                rc = sh_lease_set(self.arena, off, deadline)
            if rc:
                with nogil:
                    sh_free(self.arena, off)
                _raise(rc)
        # the size class gives the usable size: no need to look the block up
        return self._new_block(off, nbytes, oid, gen, sh_good_size(self.arena, nbytes), part)

    cdef Block _agent_alloc(self, uint32_t oid, uint32_t gen, object size, object partition):
        # AgentCore.alloc: counts the allocation toward the
        # young sweep (as Heap._note_allocation, which it calls when the
        # countdown runs out), allocates for the agent, and on a full
        # partition runs one full sweep (Heap._relieve_pressure) and tries
        # once more.
        if self._sweep_countdown > 1:
            self._sweep_countdown -= 1
        else:
            self._note_allocation()
        self._check_open()
        cdef uint64_t nbytes = _size_arg(size)
        cdef int part = _part(partition)
        cdef uint64_t off
        cdef int rc, attempt
        for attempt in range(2):
            if sh_owner_generation(self.arena, oid) != gen:  # a sweep may have taken it
                raise StaleBlock(f"agent {oid} (generation {gen}) was recycled", "SH_EOWNER")
            rc = _alloc_off(self.arena, oid, <sh_partition_t>part, nbytes, &off)
            if rc == SH_EFULL and attempt == 0:
                self._relieve_pressure()
                continue
            if rc:
                _raise(rc)
            break
        return self._new_block(off, nbytes, oid, gen, sh_good_size(self.arena, nbytes), part)

    def renew_lease(self, block, lease):
        """Move the lease of a block of the shared default (a Block or its
        Handle) to ``lease`` seconds from now; gives a block without one a lease."""
        self._check_open()
        cdef uint64_t off = self._lease_target(block)
        cdef uint64_t deadline = _lease_deadline_ns(lease)
        cdef int rc
        with nogil:
            rc = sh_lease_set(self.arena, off, deadline)
        if rc:
            _raise(rc)

    def lease_deadline(self, block):
        """When the block's lease runs out (seconds since the epoch, as
        time.time()), or None if it has no lease."""
        self._check_open()
        cdef uint64_t off = self._lease_target(block)
        cdef uint64_t deadline = 0
        cdef int rc
        with nogil:
            rc = sh_lease_get(self.arena, off, &deadline)
        if rc == SH_ENOENT:
            return None
        if rc:
            _raise(rc)
        return deadline / 1e9

    def _lease_target(self, block):
        if isinstance(block, Block):
            if (<Block>block).heap is not self:
                raise ValueError("the block belongs to another heap object")
            if (<Block>block).freed:
                raise StaleBlock("the block was freed", "SH_EDOUBLEFREE")
            return (<Block>block).offset
        if isinstance(block, tuple) and len(block) == 4:
            return self.resolve(block).offset
        raise TypeError(f"expected a Block or a Handle, not {type(block).__name__}")

    def _lease_reclaim(self, double now):
        """Free the leased blocks whose time ran out at ``now``: (blocks, bytes)."""
        self._check_open()
        cdef uint64_t blocks = 0, nbytes = 0
        cdef uint64_t now_ns = <uint64_t>(now * 1e9) if now > 0 else 0
        cdef int rc
        with nogil:
            rc = sh_lease_reclaim(self.arena, now_ns, &blocks, &nbytes)
        if rc:
            _raise(rc)
        return blocks, nbytes

    def resolve(self, handle):
        """The Block a Handle names, in this process. InvalidHandle if it names
        no live block; StaleBlock if its agent was recycled since."""
        self._check_open()
        if not isinstance(handle, tuple) or len(handle) != 4:
            raise InvalidHandle("a handle is a Handle(offset, size, owner, generation) from block.handle")
        offset, length, owner, generation = handle
        cdef sh_block_info_t info
        if not (isinstance(offset, int) and 0 <= offset < self.arena_size):
            raise InvalidHandle(f"handle offset {offset!r} is outside this heap ({self.arena_size} bytes)")
        cdef int rc = sh_block_info(self.arena, offset, &info)
        if rc:
            _raise(rc)
        if info.owner != owner or sh_owner_generation(self.arena, info.owner) != generation:
            raise StaleBlock(f"the block at offset {offset} no longer belongs to owner {owner} generation {generation}")
        if not (isinstance(length, int) and 0 <= length <= info.usable_size):
            raise InvalidHandle(f"handle size {length!r} exceeds the block's usable {info.usable_size} bytes")
        return self._new_block(offset, length, owner, generation, info.usable_size, <int>info.partition)

    def alloc_many(self, n, size, partition="context", *, owner=None):
        """``n`` blocks of ``size`` bytes in one call: a numpy uint64 array of
        their offsets (free them with free_many). All or nothing: on failure
        the ones already taken are returned and the error is raised."""
        self._check_open()
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, not {n!r}")
        cdef uint64_t nbytes = _size_arg(size)
        cdef sh_partition_t part = <sh_partition_t>_part(partition)
        cdef uint32_t oid, gen
        self._owner_arg(owner, &oid, &gen)
        out = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] offs = out
        cdef Py_ssize_t i, count = n
        cdef int rc = 0
        cdef sh_arena_t *arena = self.arena
        for i in range(count):
            rc = _alloc_off(arena, oid, part, nbytes, &offs[i])
            if rc:
                message_rc = rc
                for j in range(i):
                    sh_free(arena, offs[j])
                _raise(message_rc)
        return out

    def free_many(self, offsets):
        """Free every offset of an array from alloc_many. Stops at the first
        bad one and raises, saying how many were freed before it."""
        self._check_open()
        cdef uint64_t[::1] offs = np.ascontiguousarray(offsets, dtype=np.uint64)
        cdef size_t i = 0, count = offs.shape[0]
        cdef int rc = SH_OK
        if count == 0:
            return
        # one C call: blocks of one page go back together
        with nogil:
            rc = sh_free_many(self.arena, &offs[0], count, &i)
        if rc:
            message = sh_last_error().decode("utf-8", "replace")
            exc = InvalidHandle if rc == SH_EBADPTR else StaleBlock
            raise exc(f"freed {i} of {count}; offset {offs[i]}: {message}", sh_strerror(rc).decode())

    def _free_each(self, offsets):
        """free_many without the batching: one sh_free per block, as a loop
        over single frees would do it. The one-by-one peer of the recycle
        benchmark; not for use (free_many is faster)."""
        self._check_open()
        cdef uint64_t[::1] offs = np.ascontiguousarray(offsets, dtype=np.uint64)
        cdef Py_ssize_t i
        cdef int rc
        for i in range(offs.shape[0]):
            rc = _free_off(self.arena, offs[i])
            if rc:
                _raise(rc)

    def good_size(self, size):
        """The usable size a request of ``size`` bytes gets."""
        self._check_open()
        return sh_good_size(self.arena, _size_arg(size))

    # ---- introspection ---------------------------------------------------

    def info(self):
        """Immutable facts: size, page size, partitions, size classes."""
        self._check_open()
        cdef sh_arena_info_t info
        sh_arena_info(self.arena, &info)
        return {
            "size": info.size,
            "page_size": info.page_size,
            "format_version": info.format_version,
            "max_owners": info.max_owners,
            "small_limit": info.small_limit,
            "metadata_bytes": info.metadata_bytes,
            "partitions": {
                PARTITIONS[p]: {"offset": info.part_offset[p], "size": info.part_size[p]} for p in range(4)
            },
            "size_classes": [info.class_size[c] for c in range(info.nclasses)],
        }

    def stats(self):
        """A plain dict: per partition, per size class (those with pages) and
        per owner. Read without stopping other processes."""
        self._check_open()
        cdef sh_partition_stats_t ps
        cdef sh_class_stats_t cs
        cdef sh_arena_info_t info
        cdef sh_owner_info_t oi
        cdef int p, c
        cdef uint32_t o
        sh_arena_info(self.arena, &info)
        partitions = {}
        for p in range(4):
            sh_partition_stats(self.arena, <sh_partition_t>p, &ps)
            partitions[PARTITIONS[p]] = {
                "capacity": ps.capacity, "in_use": ps.in_use, "peak": ps.peak,
                "pages_used": ps.pages_used, "pages_total": ps.pages_total,
                "allocs": ps.allocs, "frees": ps.frees, "failures": ps.failures,
            }
        classes = []
        for c in range(<int>info.nclasses):
            sh_class_stats(self.arena, c, &cs)
            if cs.pages or cs.allocs:
                classes.append({
                    "block_size": cs.block_size, "pages": cs.pages, "blocks_used": cs.blocks_used,
                    "blocks_free": cs.blocks_free, "allocs": cs.allocs, "frees": cs.frees,
                })
        owners = []
        for o in range(info.max_owners):
            if sh_owner_generation(self.arena, o) == 0:
                continue
            if sh_owner_info(self.arena, o, &oi) == SH_OK:
                owners.append(_owner_dict(&oi))
        cdef uint32_t bound, total
        sh_thread_slots(self.arena, &bound, &total)
        return {"size": info.size, "page_size": info.page_size, "partitions": partitions,
                "classes": classes, "owners": owners,
                "thread_caches": {"bound": bound, "total": total,
                                  "magazine_blocks": sh_magazine_blocks(self.arena)},
                "leases": sh_lease_count(self.arena)}

    def check(self):
        """Walk every page, list and counter; raise HeapCorrupt naming the first
        inconsistency. Exact when nothing else changes the heap meanwhile."""
        self._check_open()
        cdef int rc
        with nogil:
            rc = sh_check(self.arena)
        if rc:
            if rc == SH_ECORRUPT:
                raise HeapCorrupt(sh_last_error().decode("utf-8", "replace"), "SH_ECORRUPT")
            _raise(rc)

    # ---- owners (the agent layer builds on these) -------------------------

    def _owner_create(self, uint32_t kind):
        self._check_open()
        cdef uint32_t oid, gen
        cdef int rc
        with nogil:
            rc = sh_owner_create(self.arena, kind, &oid, &gen)
        if rc:
            _raise(rc)
        return oid, gen

    def _owner_recycle(self, uint32_t oid, uint32_t gen):
        """True if recycled now, False if deferred by pins."""
        self._check_open()
        cdef int rc
        with nogil:
            rc = sh_owner_recycle(self.arena, oid, gen)
        if rc == SH_EPINNED:
            return False
        if rc:
            _raise(rc)
        return True

    def _owner_complete(self, uint32_t oid, uint32_t gen, str kind):
        """Recycle (or, if pinned, mark completed) and return (recycled, the
        agent's final stats), read in the same pass over its pages."""
        self._check_open()
        cdef sh_owner_info_t oi
        cdef int rc
        with nogil:
            rc = sh_owner_complete(self.arena, oid, gen, &oi)
        if rc != SH_OK and rc != SH_EPINNED:
            _raise(rc)
        return rc == SH_OK, _agent_stats(&oi, kind, 1 << self.page_shift_)

    def _owner_stats(self, uint32_t oid, uint32_t gen, str kind):
        """Agent.stats() of the owner; StaleBlock if that generation is gone."""
        self._check_open()
        cdef sh_owner_info_t oi
        if sh_owner_info(self.arena, oid, &oi) != SH_OK or oi.generation != gen:
            raise StaleBlock(f"agent {oid} (generation {gen}) was recycled", "SH_EOWNER")
        return _agent_stats(&oi, kind, 1 << self.page_shift_)

    def _owner_pin(self, uint32_t oid, uint32_t gen):
        self._check_open()
        cdef int rc
        with nogil:
            rc = sh_owner_pin(self.arena, oid, gen)
        if rc:
            _raise(rc)

    def _owner_unpin(self, uint32_t oid, uint32_t gen):
        """True if this unpin recycled a completed owner."""
        self._check_open()
        cdef int rc, recycled = 0
        with nogil:
            rc = sh_owner_unpin(self.arena, oid, gen, &recycled)
        if rc:
            _raise(rc)
        return bool(recycled)

    def _owner_set_state(self, uint32_t oid, uint32_t gen, str expected, str desired):
        self._check_open()
        cdef int rc
        cdef int e = _STATE_INDEX[expected], d = _STATE_INDEX[desired]
        with nogil:
            rc = sh_owner_set_state(self.arena, oid, gen, <sh_owner_state_t>e, <sh_owner_state_t>d)
        if rc:
            _raise(rc)

    def _owner_touch(self, uint32_t oid, uint32_t gen):
        self._check_open()
        cdef int rc = sh_owner_touch(self.arena, oid, gen)
        if rc:
            _raise(rc)

    def _np_handler(self, owner, partition, bint fallback):
        """A new "mem_handler" capsule serving ``partition`` for ``owner``."""
        self._check_open()
        if self.read_only:
            raise ValueError("the heap is attached read-only: arrays cannot be allocated in it")
        cdef uint32_t oid, gen
        cdef int p = _part(partition)
        self._owner_arg(owner, &oid, &gen)
        if self.np_keeper == NULL:
            self.np_keeper = shnp_keeper_new(self.arena)
            if self.np_keeper == NULL:
                raise MemoryError("no memory for the NumPy handler's bookkeeping")
        # a weak reference: the handler must not keep the heap object alive
        return shnp_handler_new(<shnp_keeper *>self.np_keeper, oid, gen, <sh_partition_t>p, fallback,
                                weakref.ref(self))

    def _handle_at(self, address, length):
        """The Handle of the block starting at ``address`` (a pointer in this process)."""
        self._check_open()
        cdef uint64_t start = <uint64_t>self.base
        if not (isinstance(address, int) and start <= address < start + self.arena_size):
            raise InvalidHandle(f"address {address:#x} is not inside this heap")
        cdef uint64_t offset = address - start
        cdef sh_block_info_t info
        cdef int rc = sh_block_info(self.arena, offset, &info)
        if rc:
            _raise(rc)
        if info.offset != offset:
            raise InvalidHandle(f"address {address:#x} is inside a block, not at its start")
        return Handle(offset, length, info.owner, sh_owner_generation(self.arena, info.owner))

    def _np_live(self):
        """Allocations of this heap's NumPy handlers still live in this process."""
        return 0 if self.np_keeper == NULL else shnp_keeper_live(<shnp_keeper *>self.np_keeper)

    # A held block's word: HELD | length << 40 | offset (swarmheap.h). The
    # agent index lives in such a block; these two read and swap it in one
    # call each, which is most of what spawn() and put() cost otherwise.

    def _owner_held_read(self, uint32_t oid, uint32_t gen):
        """The block the owner's user word holds, copied out between two reads
        of the word that agree: (word, bytes); (0, b"") if it holds none; None
        if that generation is gone. AgentStateError if the word kept changing."""
        self._check_open()
        cdef uint64_t word, again, off, length
        cdef sh_block_info_t info
        for _ in range(100):
            if sh_owner_user_word(self.arena, oid, gen, &word) != SH_OK:
                return None
            if not word & SH_USER_WORD_HELD:
                return 0, b""
            off = word & _HELD_OFFSET_MASK
            length = (word >> 40) & _HELD_LENGTH_MASK
            if (sh_block_info(self.arena, off, &info) != SH_OK or info.owner != 0
                    or length > info.usable_size):
                continue  # swapped and freed under us: read the new word
            data = (<char *>self.base + off)[:length]
            if sh_owner_user_word(self.arena, oid, gen, &again) != SH_OK:
                return None
            if again == word:
                return word, data
        raise AgentStateError(f"agent {oid}'s index keeps changing under concurrent updates")

    def _owner_held_swap(self, uint32_t oid, uint32_t gen, uint64_t expected, bytes data):
        """Copy ``data`` into a new block of the shared default's ``system``
        and compare-and-set the owner's user word from ``expected`` to hold
        it; the block ``expected`` held is then freed. False, with nothing
        changed, if the word had moved on."""
        self._check_open()
        cdef uint64_t length = <uint64_t>len(data)
        if length > _HELD_LENGTH_MASK:
            raise ValueError(f"a held block is at most {_HELD_LENGTH_MASK} bytes, not {length}")
        cdef uint64_t off
        cdef uint64_t nbytes = length if length else 1
        cdef int rc = _alloc_off(self.arena, 0, SH_PART_SYSTEM, nbytes, &off)
        if rc:
            _raise(rc)
        memcpy(self.base + off, <const char *>data, length)
        cdef uint64_t desired = SH_USER_WORD_HELD | (<uint64_t>length << 40) | off
        rc = sh_owner_set_user_word(self.arena, oid, gen, expected, desired)
        if rc:
            sh_free(self.arena, off)
            if rc == SH_ESTATE:
                return False
            _raise(rc)
        if expected & SH_USER_WORD_HELD:
            sh_free(self.arena, expected & _HELD_OFFSET_MASK)  # ours now; a bad word frees nothing
        return True

    def _owner_generation(self, uint32_t oid):
        self._check_open()
        return sh_owner_generation(self.arena, oid)

    def _owner_info(self, uint32_t oid):
        """A dict for a used slot, None for a free one."""
        self._check_open()
        cdef sh_owner_info_t oi
        if sh_owner_info(self.arena, oid, &oi) != SH_OK:
            return None
        return _owner_dict(&oi)

    def _owner_alive(self, uint32_t oid):
        """Is the owner's creating process still running (pid and start time)?"""
        self._check_open()
        cdef int rc = sh_owner_process_alive(self.arena, oid)
        if rc < 0:
            _raise(rc)
        return bool(rc)

    def _max_owners(self):
        self._check_open()
        cdef sh_arena_info_t info
        sh_arena_info(self.arena, &info)
        return info.max_owners

    def _sweep_push(self, int ring, uint32_t oid, uint32_t gen):
        """Queue an owner as young (ring 0) or middle-aged (1); False if full."""
        self._check_open()
        cdef int rc = sh_sweep_push(self.arena, ring, oid, gen)
        if rc == SH_EFULL:
            return False
        if rc:
            _raise(rc)
        return True

    def _sweep_take(self, int ring, size_t limit):
        """Claim up to ``limit`` queued (id, generation) pairs, exclusively."""
        self._check_open()
        cdef uint64_t[::1] buf = np.empty(max(limit, <size_t>1), dtype=np.uint64)
        cdef size_t taken = 0, i
        cdef int rc = sh_sweep_take(self.arena, ring, &buf[0], limit, &taken)
        if rc:
            _raise(rc)
        return [(<uint32_t>(buf[i] & 0xFFFFFFFF), <uint32_t>(buf[i] >> 32)) for i in range(taken)]

    def flush_thread_cache(self):
        """Give back the free blocks the calling thread caches in this heap.
        A thread's cache holds at most one page per (agent, partition, size
        class); it is given back on its own when the thread exits or the heap
        is closed, and this thread's cache also when a partition fills."""
        self._check_open()
        with nogil:
            sh_thread_flush(self.arena)

    def _reclaim_dead_threads(self):
        """Give back the thread caches of processes that died; how many."""
        self._check_open()
        cdef uint32_t n = 0
        cdef int rc
        with nogil:
            rc = sh_reclaim_dead_threads(self.arena, &n)
        if rc:
            _raise(rc)
        return n

    def _sweep_pending(self, int ring):
        self._check_open()
        return sh_sweep_pending(self.arena, ring)

    def _test_hold_lock(self, partition):
        """For crash tests only: take a partition's slow-path lock and keep it."""
        self._check_open()
        cdef int part = _part(partition)
        cdef int rc
        with nogil:
            rc = sh_test_hold_lock(self.arena, <sh_partition_t>part)
        if rc:
            _raise(rc)

    def _deferred_recycled(self, uint32_t oid, uint32_t gen):
        """Called when the last pin of a completed owner dropped in this
        process; the agent layer overrides it to fire its hooks."""


cdef class AgentCore:
    """What an agent's hot path needs, in C fields: its heap, owner id and
    generation. Agent (agents.py) builds the rest on it."""

    cdef public object _heap
    cdef public uint32_t id
    cdef public uint32_t generation

    def alloc(self, size, partition=_CONTEXT):
        """A block of ``size`` bytes charged to this agent (``context`` by
        default). A full partition runs one full sweep before PartitionFull
        is raised."""
        return (<CoreHeap?>self._heap)._agent_alloc(self.id, self.generation, size, partition)


cdef dict _agent_stats(sh_owner_info_t *oi, str kind, uint64_t page):
    # built without loops: complete() runs with cold caches, where every
    # object built costs
    return {
        "id": oi.id, "generation": oi.generation, "kind": kind,
        "state": OWNER_STATES[<int>oi.state],
        "bytes": {"context": oi.bytes[0], "shared": oi.bytes[1], "comm": oi.bytes[2], "system": oi.bytes[3]},
        "pages": {"context": oi.pages[0], "shared": oi.pages[1], "comm": oi.pages[2], "system": oi.pages[3]},
        "peak": {"context": oi.peak_pages[0] * page, "shared": oi.peak_pages[1] * page,
                 "comm": oi.peak_pages[2] * page, "system": oi.peak_pages[3] * page},
        "blocks": oi.blocks, "pins": oi.pins,
        "total_bytes": oi.bytes[0] + oi.bytes[1] + oi.bytes[2] + oi.bytes[3],
    }


cdef dict _owner_dict(sh_owner_info_t *oi):
    return {
        "id": oi.id, "generation": oi.generation, "kind": oi.kind,
        "state": OWNER_STATES[<int>oi.state], "pid": oi.pid, "pid_start_time": oi.pid_start_time,
        "created_ns": oi.created_ns, "last_active_ns": oi.last_active_ns, "pins": oi.pins,
        "bytes": {PARTITIONS[p]: oi.bytes[p] for p in range(4)},
        "pages": {PARTITIONS[p]: oi.pages[p] for p in range(4)},
        "peak_pages": {PARTITIONS[p]: oi.peak_pages[p] for p in range(4)},
        "blocks": oi.blocks, "user_word": oi.user_word,
    }


@cython.freelist(128)
cdef class Block:
    """A block of arena memory. Supports the buffer protocol (memoryview,
    numpy.frombuffer, slicing), keeps its heap alive, and detects use after
    free or after its agent was recycled. An exported buffer pins the block's
    agent, and free() refuses while one is alive."""

    def __init__(self):
        raise TypeError("blocks come from heap.alloc(), agent.alloc() or heap.resolve()")

    cdef int _check_live(self) except -1:
        if self.freed:
            raise StaleBlock(f"block at offset {self.offset} was freed", "SH_EDOUBLEFREE")
        if self.heap.arena == NULL:
            raise ValueError("the block's heap is closed")
        if self.owner != 0 and sh_owner_generation(self.heap.arena, self.owner) != self.generation:
            raise StaleBlock(
                f"block at offset {self.offset} belonged to agent {self.owner} generation "
                f"{self.generation}, which was recycled", "SH_EOWNER")
        return 0

    def __getbuffer__(self, Py_buffer *view, int flags):
        self._check_live()
        if self.owner != 0 and self.exports == 0:
            self.heap._owner_pin(self.owner, self.generation)
        PyBuffer_FillInfo(view, self, self.heap.base + self.offset, self.length,
                          1 if self.heap.read_only else 0, flags)
        self.exports += 1
        self.heap.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.exports -= 1
        self.heap.exports -= 1
        if self.owner != 0 and self.exports == 0 and self.heap.arena != NULL:
            try:
                if self.heap._owner_unpin(self.owner, self.generation):
                    self.heap._deferred_recycled(self.owner, self.generation)
            except StaleBlock:
                pass

    def __len__(self):
        return self.length

    @property
    def size(self):
        """Usable bytes: the size class (or whole pages) the request got."""
        return self.usable

    @property
    def partition(self):
        """The partition's name."""
        return PARTITIONS[self.part]

    @property
    def handle(self):
        """A picklable Handle that heap.resolve() turns back into this block in
        any process attached to the heap."""
        return Handle(self.offset, self.length, self.owner, self.generation)

    @property
    def freed(self):
        """True once freed through this object."""
        return self.freed

    @property
    def exported(self):
        """How many buffers (memoryviews, arrays) are open on the block."""
        return self.exports

    def __getitem__(self, key):
        self._check_live()
        with memoryview(self) as view:
            item = view[key]
            return item if isinstance(item, int) else bytes(item)

    def __setitem__(self, key, value):
        self._check_live()
        with memoryview(self) as view:
            view[key] = value

    def free(self):
        """Return the block. BufferError (nothing freed) while a memoryview or
        array still points at it; StaleBlock if it was freed or recycled."""
        if self.exports:
            raise BufferError(
                f"cannot free: {self.exports} exported buffer(s) (memoryview, numpy array) still point at the block")
        self._check_live()
        cdef int rc = _free_off(self.heap.arena, self.offset)
        if rc:
            _raise(rc)
        self.freed = True

    def __enter__(self):
        self._check_live()
        return self

    def __exit__(self, *exc):
        if not self.freed and self.heap.arena != NULL:
            if self.owner == 0 or sh_owner_generation(self.heap.arena, self.owner) == self.generation:
                self.free()
        return False

    def __repr__(self):
        state = "freed " if self.freed else ""
        return (f"<Block {state}{format_size(self.length)} (usable {format_size(self.usable)}) "
                f"{PARTITIONS[self.part]} owner={self.owner} offset={self.offset}>")

    def __reduce__(self):
        raise TypeError("a Block holds a mapping and cannot be pickled: send block.handle instead")


def _np_get_handler():
    """NumPy's current data-memory handler capsule, for this context."""
    return shnp_get_handler()


def _np_set_handler(capsule):
    """Make ``capsule`` NumPy's handler for this context; returns the previous one."""
    return shnp_set_handler(capsule)


def _np_handler_stats(capsule):
    """Counters of one of our handlers, or None for someone else's."""
    cdef shnp_stats s
    if not shnp_handler_stats(capsule, &s):
        return None
    return {"allocs": s.allocs, "frees": s.frees, "live": s.live,
            "fallbacks": s.fallbacks, "failures": s.failures, "in_place_reallocs": s.in_place}
