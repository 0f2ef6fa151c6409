# Block: a block of arena memory as a Python object.


cdef inline bint _count_out(dict counts, uint64_t offset) noexcept:
    """One buffer fewer on the block at ``offset`` in ``counts``; True once none is left."""
    left = counts.get(offset, 1) - 1
    if left > 0:
        counts[offset] = left
        return False
    counts.pop(offset, None)
    return True


# Why a Block is stale (Block._staleness); _LIVE: it is not
cdef enum:
    _LIVE
    _FREED
    _MOVED
    _RECYCLED
    _OFFLOADED
    _RESTORED_SINCE
    _TAG_GONE


cdef uint32_t _open_buffers(const export_table_t *t, uint64_t offset) noexcept:
    """Buffers open in this process on the block at ``offset`` that still
    point at it: not those of a Block that lost the block (a lease ran
    out, its agent was recycled or offloaded), whose views alias whatever
    is there now and must not keep the block's next tenant from freeing it.
    Once a third Block opened buffers on the offset, all of them count
    until they are all released."""
    cdef const export_slot_t *slot = _exports_at(t, offset)
    if slot == NULL:
        return 0
    if slot.several:
        return slot.count
    cdef uint32_t count = 0
    cdef int k
    for k in range(2):
        if slot.blocks[k] != NULL and (<Block>slot.blocks[k])._staleness() == _LIVE:
            count += slot.counts[k]
    return count


@cython.freelist(128)
cdef class Block:
    """A block of arena memory. Supports the buffer protocol (memoryview,
    numpy.frombuffer, slicing), keeps its heap alive, and is exact about
    staleness: once the block was freed (through this object or any other,
    in any process), taken back by its lease, or recycled with its agent, any
    use raises StaleBlock. An exported buffer pins the block's agent, and
    free() refuses while one is alive."""

    def __init__(self):
        raise TypeError("blocks come from heap.alloc(), agent.alloc() or heap.resolve()")

    cdef int _staleness(self) noexcept:
        """Why the block is not this object's any more: one of the _LIVE ...
        _TAG_GONE reasons below (the heap must be open unless freed)."""
        if self.freed:
            return _MOVED if self.moved else _FREED
        if self.owner != 0:
            if sh_owner_generation(self.heap.arena, self.owner) != self.generation:
                return _RECYCLED
            if sh_owner_state(self.heap.arena, self.owner) == SH_OWNER_OFFLOADED:
                return _OFFLOADED
            if sh_owner_offloads(self.heap.arena, self.owner) != self.offloads:
                return _RESTORED_SINCE
        if self.tag and sh_block_tag_check(self.heap.arena, self.offset, self.tag) != SH_OK:
            return _TAG_GONE
        return _LIVE

    cdef int _stale(self) except -1:
        """1 if the block is not this object's any more (no exception)."""
        return self._staleness() != _LIVE

    cdef int _check_live(self) except -1:
        if not self.freed and self.heap.arena == NULL:
            raise ValueError("the block's heap is closed")
        cdef int why = self._staleness()
        if why == _LIVE:
            return 0
        if why == _MOVED:
            raise StaleBlock(f"block at offset {self.offset} was sent with send_block: it belongs to "
                             "the message now, and its receiver's Block is the one to use", "SH_EDOUBLEFREE")
        if why == _FREED:
            raise StaleBlock(f"block at offset {self.offset} was freed", "SH_EDOUBLEFREE")
        if why == _RECYCLED:
            raise StaleBlock(
                f"block at offset {self.offset} belonged to agent {self.owner} generation "
                f"{self.generation}, which was recycled", "SH_EOWNER")
        if why == _OFFLOADED:
            # its pages went back to the heap with the offload (the agent keeps
            # its generation): a write here was a write into freed memory
            raise StaleBlock(
                f"block at offset {self.offset} belonged to agent {self.owner}, which was offloaded: "
                "only its named entries go to the store and come back", "SH_EOWNER")
        if why == _RESTORED_SINCE:
            # the same generation, live again after a restore: the memory at
            # this offset was given back at the offload and may be another
            # entry's now, so a write here would land in it
            raise StaleBlock(
                f"block at offset {self.offset} belonged to agent {self.owner}, which was offloaded and "
                "restored since: only its named entries came back", "SH_EOWNER")
        raise StaleHandle(
            f"block at offset {self.offset} is already free: it was freed through another Block or "
            f"handle, or by a sweep when its lease ran out, and may hold someone else's data now", "SH_EOWNER")

    def _hand_over(self):
        """The block leaves this object without being freed (a channel's
        send_block moves it): this Block is unusable from here on."""
        self._check_live()
        if _open_buffers(&self.heap.exported, self.offset):  # this Block's buffers and any other's
            raise BufferError("cannot hand the block over: buffers (memoryviews, arrays) still point at it")
        self.freed = True
        self.moved = True

    cdef void _take_back(self) noexcept:
        # the hand-over did not happen (the ring stayed full, or the send
        # raised before queueing): the block is this object's again
        self.freed = False
        self.moved = False

    def _adopt_tag(self, uint64_t tag):
        self.tag = tag

    def _as_entry_view(self):
        """This Block is an agent entry's, as get() hands it out: while its
        buffers live, an update that drops the entry leaves the block to
        their release (a put must not free memory under an open view)."""
        self.entry_view = True

    def __getbuffer__(self, Py_buffer *view, int flags):
        self._check_live()
        cdef bint ro = self.heap.read_only
        _exports_add(&self.heap.exported, self.offset, <void *>self)  # first: its MemoryError leaves nothing to undo
        # a read-only view never writes the arena, so it does not pin: its
        # Block still detects a recycle through the generation
        if self.owner != 0 and self.exports == 0 and not ro:
            try:
                self.heap._owner_pin(self.owner, self.generation, self.entry_view)
            except BaseException as exc:
                _exports_drop(&self.heap.exported, self.offset, <void *>self)
                if isinstance(exc, AgentSealed):  # offloaded since the check above
                    self._check_live()
                raise
        PyBuffer_FillInfo(view, self, self.heap.base + self.offset, self.length, 1 if ro else 0, flags)
        self.exports += 1
        self.heap.exports += 1
        if self.entry_view:
            self.heap.entry_views[self.offset] = self.heap.entry_views.get(self.offset, 0) + 1

    def __releasebuffer__(self, Py_buffer *view):
        # The last view may go while an exception is in flight: Python 3.9
        # clears a finished generator's frame as its StopIteration is
        # raised. The unpin calls into Python, which took that exception for
        # its own and stopped half way: the agent stayed pinned for good.
        cdef PyObject *etype
        cdef PyObject *evalue
        cdef PyObject *etb
        PyErr_Fetch(&etype, &evalue, &etb)
        self._export_released()
        PyErr_Restore(etype, evalue, etb)

    cdef void _export_released(self) noexcept:
        cdef uint64_t freed = 0, nbytes = 0
        self.exports -= 1
        self.heap.exports -= 1
        if self.entry_view and _count_out(self.heap.entry_views, self.offset):
            dropped = self.heap.deferred_frees.pop(self.offset, None)
            # before the unpin below: that may recycle a completed agent
            if dropped is not None and not self.heap.read_only:
                _drop_entry_block(self.heap, self.offset, dropped[0], dropped[1], dropped[2])
        _exports_drop(&self.heap.exported, self.offset, <void *>self)
        if self.owner != 0 and self.exports == 0 and self.heap.arena != NULL and not self.heap.read_only:
            try:
                final = self.heap._owner_unpin(self.owner, self.generation, self.entry_view)
                if final is not None:
                    self.heap._notify_recycled(self.owner, self.generation, final)
            except SwarmHeapError:
                # recycled meanwhile (StaleBlock), or a pin table damaged so
                # that it lost ours (check() reports it): a buffer's release
                # cannot raise, and it has nothing left to give back
                pass
            # blocks another process dropped while views were open wait for
            # them: the last view to go frees them now, not at the next sweep
            # (a scan of the block table, made only while some wait)
            if self.entry_view and self.heap.arena != NULL:
                sh_views_reclaim(self.heap.arena, &freed, &nbytes)

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
        any process attached to the heap, until the block is freed."""
        cdef uint64_t tag = 0
        cdef int rc
        if self.tag == 0 and not self.heap.read_only and not self.freed and self.heap.arena != NULL \
                and not self._stale():
            rc = sh_block_tag(self.heap.arena, self.offset, &tag)
            if rc:
                _raise(rc)
            self._adopt_tag(tag)
        return Handle(self.offset, self.length, self.owner, self.generation, self.tag)

    @property
    def freed(self):
        """True once the block is not this object's any more: freed through
        it or another Block, taken back by a lease, recycled with its agent."""
        if self.freed:
            return True
        if self.heap.arena == NULL:
            return False
        return bool(self._stale())

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
        with memoryview(self) as view:  # read-only heaps export read-only views: TypeError
            view[key] = value

    def __dealloc__(self):
        # a message's receiver owns its block: dropping the last reference
        # gives it back (buffers keep the Block alive while they are open;
        # a buffer another Block of the block opened leaves it to that Block)
        if self.owns and not self.freed and self.heap is not None and self.heap.arena != NULL \
                and not self.heap.read_only:
            if not self._stale() and not _open_buffers(&self.heap.exported, self.offset):
                _owner_free(self.heap, self.offset, self.owner, self.generation, self.offloads)
            self.freed = True

    def free(self):
        """Return the block. BufferError (nothing freed) while a memoryview or
        array still points at it, through this Block or another one; StaleBlock
        if it was freed or recycled already."""
        if self.exports:
            raise BufferError(
                f"cannot free: {self.exports} exported buffer(s) (memoryview, numpy array) still point at the block")
        cdef uint32_t others = _open_buffers(&self.heap.exported, self.offset)
        if others:
            raise BufferError(
                f"cannot free: {others} buffer(s) opened through another Block of this block still point at it")
        self._check_live()
        self.heap._check_writable()
        # an agent's block only if its agent was not offloaded since the Block
        # was made: checked with the free, under the lock the offload takes
        cdef int rc = _owner_free(self.heap, self.offset, self.owner, self.generation, self.offloads)
        if rc:
            _raise(rc)
        self.freed = True

    def __enter__(self):
        self._check_live()
        return self

    def __exit__(self, *exc):
        if self.heap.arena != NULL and not self.heap.read_only and not self._stale():
            self.free()
        return False

    def __repr__(self):
        state = "freed " if self.freed else ""
        return (f"<Block {state}{format_size(self.length)} (usable {format_size(self.usable)}) "
                f"{PARTITIONS[self.part]} owner={self.owner} offset={self.offset}>")

    def __reduce__(self):
        raise TypeError("a Block holds a mapping and cannot be pickled: send block.handle instead")
