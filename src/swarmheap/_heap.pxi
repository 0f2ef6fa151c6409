# _Arena, CoreHeap's base: life, blocks, leases, introspection of one arena
# (the owner protocol and sweep queues are _owners.pxi's CoreHeap).

cdef enum:
    _HELD_PREFIX = 8  # a held block's u32 length and padding, before its data
    _HELD_MAX = (1 << 23) - 1  # an index's bound (8 MiB): a runaway index is a bug
    _ROOM_TRIES = 8  # tries of an agent allocation after the events made room (see _agent_alloc)


class HeapEvents:
    """What a CoreHeap tells the layer above it. The binding calls these and
    nothing else above it; this default does nothing, so a CoreHeap stands
    alone. heap.py installs its own (sweep counting, pressure relief, hooks).

    on_countdown(heap): heap._sweep_countdown agent allocations ran out; set
        it again.
    on_partition_full(heap, partition, nbytes) -> bool: an agent allocation
        of ``nbytes`` found the partition full; True (room was made) asks for
        one more try, up to _ROOM_TRIES of them; False if no room could be made.
    on_recycled(heap, agent_id, generation, final): the last pin of a
        completed agent dropped in this process, and the agent was recycled;
        ``final`` is what it held then (Agent.complete()'s dict, its kind
        "?": the layer names it by ``final["kind_id"]``), or None.
    on_not_live(heap, agent_id, generation) -> bool: an agent allocation
        found its agent not live (offloaded, say); True asks for one more try
        (after restoring it).
    """

    def on_countdown(self, heap):
        heap._sweep_countdown = 1 << 30

    def on_partition_full(self, heap, partition, nbytes):
        return False

    def on_recycled(self, heap, agent_id, generation, final):
        pass

    def on_not_live(self, heap, agent_id, generation):
        return False


_NO_EVENTS = HeapEvents()


cdef str _shm_path(object name):
    return "/dev/shm/" + name


cdef object _foreign_segment(object name):
    """Why the segment of that name is not ours to use, or None if it is."""
    return _foreign_file(_shm_path(name))


cdef object _foreign_file(str path):
    """Why the file (a /dev/shm segment or a heap file) is not ours to use, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    euid = os.geteuid()
    mode = stat_mode.S_IMODE(st.st_mode)
    if st.st_uid != euid:
        return (f"{path} belongs to uid {st.st_uid} (mode {mode:04o}), not to you (uid {euid}): "
                f"another user controls it")
    if mode & 0o077:
        return (f"{path} has mode {mode:04o}: group or others can read or write it "
                f"(swarmheap makes its heaps 0600)")
    return None


cdef bytes _file_path(object path):
    try:
        p = os.fsencode(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}") from None
    if not p or b"\0" in p:
        raise ValueError(f"{path!r} is not a file path")
    return p


cdef class _Arena:
    """CoreHeap's base: one arena, private (anonymous) or named shared
    memory, or a file. Use ``Heap.create`` or ``Heap.attach``."""

    def __cinit__(self, *args, **kwargs):
        if not isinstance(self, CoreHeap):  # its Blocks are typed to a CoreHeap: never a bare _Arena
            raise TypeError("_Arena is CoreHeap's base: use CoreHeap.create or Heap.create")
        self.arena = NULL
        self._sweep_countdown = 1 << 30
        self.events = _NO_EVENTS
        self._waiting = {}
        self.entry_views = {}
        self.deferred_frees = {}

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__}(...) is not how a heap is made: use "
                        f"{type(self).__name__}.create(name=None, size='64 MiB', ...) for a new one, or "
                        f"{type(self).__name__}.attach(name) for one another process made")

    def __dealloc__(self):
        if self.np_keeper != NULL:
            shnp_keeper_close(<shnp_keeper *>self.np_keeper)  # unmaps once no array lives in it
        elif self.arena != NULL:
            sh_close(self.arena)
        self.np_keeper = NULL
        self.arena = NULL
        _exports_free(&self.exported)

    @classmethod
    def create(cls, name=None, size="64 MiB", *, ratios=None, page_size=None, max_owners=0, max_threads=0,
               path=None):
        """Create an arena of ``size`` bytes (an int or "1 GiB"). ``name=None``
        gives a private arena; a name gives shared memory other processes can
        ``attach``; ``path`` maps a regular file (mode 0600) instead, which may
        be larger than RAM and outlives its processes (close() keeps it).
        ``ratios`` maps the four partitions (context, shared, comm, system) to
        shares above 0 summing to 1. ``page_size`` (an int or "16 KiB", a
        power of two) None picks one from the size: 64 KiB from 40 MiB up,
        smaller below so that ``system`` keeps 64 pages for the heap's
        records. ``max_threads`` is how many threads, across all processes,
        get a cache in the arena at once (0 picks one from the size); later
        threads take the slower uncached path. A heap
        too small to keep its own records in ``system`` raises ValueError
        naming the size that would do."""
        cdef sh_options_t opts
        cdef sh_arena_t *arena = NULL
        cdef uint64_t nbytes = parse_size(size)
        if page_size is None:
            page_size = _default_page_size(nbytes)
        elif isinstance(page_size, str):  # "16 KiB", as size takes it
            page_size = parse_size(page_size)
        cdef bytes cname = None
        cdef const char *cname_p = NULL
        cdef int rc
        cdef sh_backing_t backing = SH_BACKING_ANON
        _options(&opts, ratios, page_size, max_owners, max_threads)
        if path is not None:
            if name is not None:
                raise ValueError("give a name (shared memory) or a path (a file), not both")
            cname = _file_path(path)
            cname_p = cname
            backing = SH_BACKING_FILE
        elif name is not None:
            cname = _shm_name(name)
            cname_p = cname
            backing = SH_BACKING_SHM
        with nogil:
            rc = sh_create(&arena, backing, cname_p, nbytes, &opts)
        if rc == SH_EEXIST and path is not None and os.path.isdir(path):
            raise IsADirectoryError(f"{os.fspath(path)!r} is a directory: a file-backed heap's path names "
                                    f"the file to create, say {os.path.join(os.fspath(path), 'swarm.heap')!r}")
        if rc == SH_EEXIST and path is not None:
            raise HeapExists(f"{os.fspath(path)!r} exists already: attach it with {cls.__name__}.attach(path=...), "
                             f"or remove the file", "SH_EEXIST")
        if rc == SH_EEXIST and name is not None:
            why = _foreign_segment(name)
            if why is not None:
                raise HeapExists(f"a segment named {name!r} exists but is not one of ours: {why}; "
                                 f"pick another name", "SH_EEXIST")
        if rc:
            _raise(rc)
        cdef _Arena heap = cls.__new__(cls)
        heap._adopt(arena, name, False, path is None)
        heap.path = os.path.abspath(os.fspath(path)) if path is not None else None
        return heap

    @classmethod
    def attach(cls, name=None, *, read_only=False, path=None):
        """Map a named heap another process created (or, with ``path``, a
        file-backed one). The segment or file must be yours and private (mode
        0600), and every header field is validated first: a damaged,
        truncated, foreign or exposed one raises AttachError."""
        cdef bytes cname
        cdef const char *cname_p
        cdef sh_arena_t *arena = NULL
        cdef int ro = 1 if read_only else 0
        cdef int rc
        cdef sh_backing_t backing = SH_BACKING_SHM
        if path is not None:
            if name is not None:
                raise ValueError("give a name (shared memory) or a path (a file), not both")
            cname = _file_path(path)
            backing = SH_BACKING_FILE
            shown = os.fspath(path)
            if os.path.isdir(shown):
                raise IsADirectoryError(f"{shown!r} is a directory: path= names a heap's file")
            why = _foreign_file(shown)
        elif name is None:
            raise TypeError("attach() needs the heap's name, or path= for a file-backed heap")
        else:
            cname = _shm_name(name)
            shown = name
            why = _foreign_segment(name)
        cname_p = cname
        if why is not None:
            raise AttachError(f"refusing to attach heap {shown!r}: {why}", "SH_EINVAL")
        with nogil:
            rc = sh_attach(&arena, backing, cname_p, ro)
        if rc:
            _raise(rc, True)
        cdef _Arena heap = cls.__new__(cls)
        heap._adopt(arena, name, ro, False)
        heap.path = os.path.abspath(os.fspath(path)) if path is not None else None
        return heap

    cdef void _adopt(self, sh_arena_t *arena, object name, bint read_only, bint created):
        cdef sh_arena_info_t info
        self.arena = arena
        self.base = <uint8_t *>sh_base(arena)
        sh_arena_info(arena, &info)
        self.arena_size = info.size
        self.page_shift_ = <uint32_t>(info.page_size.bit_length() - 1)
        self._class_sizes = tuple([info.class_size[c] for c in range(info.nclasses)] + [0])
        self.name = name
        self.read_only = read_only
        self.created = created

    cdef int _check_open(self) except -1:
        if self.arena == NULL:
            raise ValueError("the heap is closed")
        return 0

    def _require_open(self):
        """ValueError if the heap is closed (for the layer above, which cannot call _check_open)."""
        self._check_open()

    cdef int _check_writable(self) except -1:
        self._check_open()
        if self.read_only:
            raise ReadOnlyHeap(f"heap {self._where()} is attached read-only: attach it without read_only=True "
                               f"to allocate, free, spawn, put, complete or sweep", "SH_EINVAL")
        return 0

    cdef dict _final_dict(self, sh_owner_info_t *oi, str kind, bint recycled):
        # read before the recycle, so its state is the one the agent had
        # then ("live"); the dict says what it is after the call, as
        # Agent.state would: "gone" once recycled, "completed" while pinned
        cdef dict info = self._info_dict(oi, kind)
        info["state"] = "gone" if recycled else "completed"
        return info

    cdef dict _info_dict(self, sh_owner_info_t *oi, object kind):
        # an owner's figures as a dict, in this heap's page and block sizes
        return _owner_dict(oi, kind, 1 << self.page_shift_, self._class_sizes)

    cdef Block _new_block(self, uint64_t offset, uint64_t length, uint32_t owner, uint32_t generation,
                          uint64_t usable, int part, uint64_t tag, uint32_t offloads):
        # ``offloads``: the agent's count (sh_owner_offloads) as the caller
        # read it before it had the block. Read after, an offload and a
        # restore in between would give the Block the count of memory it
        # never had
        cdef Block blk = Block.__new__(Block)
        blk.heap = <CoreHeap>self  # _Arena is only ever a CoreHeap's base
        blk.offset = offset
        blk.length = length
        blk.owner = owner
        blk.generation = generation
        blk.offloads = offloads
        blk.usable = usable
        blk.part = part
        blk.tag = tag
        blk.entry_view = False
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
        return 1 << self.page_shift_

    def _owner_piece_put(self, uint32_t oid, uint32_t gen, bytes data):
        """A block of the agent's in ``system`` holding ``data``: a piece of
        its index (swarmheap.index). Its recycle frees it with the agent's
        pages, whichever process or path recycles it. Returns its offset."""
        return (<Block>self._agent_alloc_copy(oid, gen, data, _SYSTEM)[0]).offset

    def _free_entry_block(self, uint64_t offset, uint32_t oid, uint32_t gen, uint32_t offloads):
        """Free an agent entry's block that an index update dropped (put,
        delete); while a view from get() in this process is on it, leave it
        to that view's release. ``offloads``: the agent's offload count
        (_owner_offloads) read before the update: a block an offload gave
        back since is not freed again. False if left."""
        self._check_writable()
        if self.entry_views.get(offset):
            self.deferred_frees[offset] = (oid, gen, offloads)
            return False
        return bool(_drop_entry_block(self, offset, oid, gen, offloads))

    @property
    def _calls_in_flight(self):
        """Calls of this process running without the GIL in this heap now (close() waits for them)."""
        return self.inflight

    def close(self):
        """Unmap this process's view. Blocks of it become unusable here; other
        processes keep the heap. Refused while buffers are exported; waits for
        calls other threads of this process are making into it."""
        if self.arena == NULL:
            return
        if self.exports:
            raise BufferError(f"cannot close: {self.exports} exported buffer(s) still point into the heap")
        if self.inflight:
            # a thread blocked in a receive (or waiting for room) would hold
            # this close for ever: its wait is called off, and it raises
            sh_call_off_waits(self.arena)
            for chan in list(self._waiting):
                sh_chan_call_off(self.arena, chan, NULL)
        while self.inflight:
            time.sleep(0.0002)  # gives the GIL to the threads whose calls are finishing
        if self.arena == NULL:  # another thread closed it meanwhile
            return
        cdef sh_arena_t *arena = self.arena
        self.arena = NULL
        self.base = NULL
        if self.np_keeper != NULL:
            # arrays made by a NumPy handler may still live in the mapping: the
            # keeper unmaps it when the last of them is freed
            shnp_keeper_close(<shnp_keeper *>self.np_keeper)
            self.np_keeper = NULL
        else:
            sh_close(arena)

    def unlink(self):
        """Remove the heap's name (or a file-backed heap's file: what it
        held goes with it); mapped views stay valid until closed."""
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                raise HeapNotFound(f"no heap file {self.path!r} (removed already?)", "SH_ENOENT") from None
            return
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

    def _where(self):
        """How the heap is named: its shared name, its file, or private."""
        if self.name is not None:
            return repr(self.name)
        return f"file {self.path!r}" if self.path is not None else "private"

    def __repr__(self):
        if self.arena == NULL:
            return f"<{type(self).__name__} {self._where()} closed>"
        return (f"<{type(self).__name__} {self._where()} {format_size(self.arena_size)}"
                f"{' read-only' if self.read_only else ''}>")

    # ---- blocks ----------------------------------------------------------

    cdef int _owner_arg(self, object owner, uint32_t *oid, uint32_t *gen) except -1:
        if owner is None:
            oid[0] = 0
            gen[0] = 1
            return 0
        if isinstance(owner, AgentCore):
            oid[0] = (<AgentCore>owner).id
            gen[0] = (<AgentCore>owner).generation
            if (<AgentCore>owner)._heap is not self:
                raise ValueError(f"agent {oid[0]} belongs to another heap object")
            if sh_owner_generation(self.arena, oid[0]) != gen[0]:
                raise stale_agent(oid[0], gen[0])
            return 0
        if isinstance(owner, int) and not isinstance(owner, bool):
            if not 0 <= owner < 2**32:
                raise ValueError(f"owner id {owner} is out of range")
            oid[0] = owner
            gen[0] = sh_owner_generation(self.arena, oid[0])
            if gen[0] == 0:
                raise StaleBlock(f"owner {owner} does not exist (its slot is free)", "SH_EOWNER")
            return 0
        raise TypeError(f"owner must be an Agent, an agent id (int) or None, not {type(owner).__name__}")

    def alloc(self, size, partition=_CONTEXT, *, owner=None, lease=None):
        """A Block of ``size`` bytes in ``partition``, charged to ``owner``
        (an Agent, an owner id, or None for the shared default). ``lease``
        (seconds, shared default only) lets a sweep free the block once that
        time has passed without a renew_lease(): for blocks whose holder may
        forget them or die."""
        self._check_writable()
        cdef uint64_t nbytes = _size_arg(size)
        cdef int part = _part(partition)
        cdef uint32_t oid, gen
        self._owner_arg(owner, &oid, &gen)
        cdef uint64_t deadline = 0, tag = 0
        if lease is not None:
            deadline = _lease_deadline_ns(lease)
            if oid != 0:
                raise ValueError("only blocks of the shared default (owner=None) take a lease: "
                                 "an agent's blocks go back with the agent, so give the agent the lease")
        cdef uint64_t off, usable
        cdef uint32_t offloads = sh_owner_offloads(self.arena, oid) if oid else 0  # before: see _new_block
        cdef int rc = _alloc_off(self, oid, gen, <sh_partition_t>part, nbytes, &off, &usable)
        if rc:
            _raise(rc)
        if deadline:
            # a leased block is tagged too: once a sweep takes it back, its
            # Block (and any handle) is stale, not a window into the next tenant
            rc = sh_lease_set(self.arena, off, deadline)
            if rc == SH_OK:
                rc = sh_block_tag(self.arena, off, &tag)
            if rc:
                message_rc = rc
                _free_off(self, off)
                _raise(message_rc)
        return self._new_block(off, nbytes, oid, gen, usable, part, tag, offloads)

    cdef int _count_young(self) except -1:
        # one agent allocation or spawn toward the young sweep: a decrement,
        # and the events object hears when the countdown runs out
        if self._sweep_countdown > 1:
            self._sweep_countdown -= 1
        else:
            self.events.on_countdown(self)
        return 0

    cdef Block _agent_alloc(self, uint32_t oid, uint32_t gen, object size, object partition):
        # AgentCore.alloc: counts the allocation toward the young sweep (the
        # events object hears when the countdown runs out), allocates for the
        # agent in one C call that checks its generation, and on a full
        # partition lets the events object make room once.
        self._count_young()
        self._check_writable()
        cdef uint64_t nbytes = _size_arg(size)
        cdef int part = _part(partition)
        cdef uint64_t off, usable
        cdef int rc, reliefs = 0, restored = 0
        cdef uint32_t offloads  # read before each try (see _new_block)
        while True:
            offloads = sh_owner_offloads(self.arena, oid)
            rc = _alloc_off(self, oid, gen, <sh_partition_t>part, nbytes, &off, &usable)
            # again while the events made room (a sweep reclaimed, the offload
            # policy moved an agent out) and the room was not yet enough: the
            # pages an offload gives back need not make the run this needs
            if rc == SH_EFULL and reliefs < _ROOM_TRIES and \
                    self.events.on_partition_full(self, PARTITIONS[part], nbytes):
                reliefs += 1
                continue
            if rc == SH_EOWNER:
                if not restored and sh_owner_generation(self.arena, oid) == gen and \
                        self.events.on_not_live(self, oid, gen):
                    restored = 1
                    continue
                raise stale_agent(oid, gen)
            if rc:
                _raise(rc)
            break
        return self._new_block(off, nbytes, oid, gen, usable, part, 0, offloads)

    cdef tuple _agent_alloc_copy(self, uint32_t oid, uint32_t gen, object data, str partition=_CONTEXT):
        # Agent.put's block: allocated and filled in one call. The agent is
        # pinned around the copy, as a memoryview would pin it, so a recycle
        # from another thread or process waits for the copy rather than
        # letting it write into pages given back; no view object is made.
        # BufferError: not C-contiguous (the caller copies it first).
        self._check_writable()
        cdef Py_buffer buf
        try:
            PyObject_GetBuffer(data, &buf, PyBUF_C_CONTIGUOUS)
        except ValueError:  # NumPy's word for a strided array
            raise BufferError("not C-contiguous") from None
        cdef Block blk
        cdef int rc, recycled = 0
        cdef sh_owner_info_t final
        cdef uint64_t nbytes = <uint64_t>buf.len
        try:
            if nbytes:
                # the pin before the allocation: pinned, the agent is not
                # offloaded (nor recycled) under the copy. Pinned after it, an
                # offload (and a restore) could land between the two, and the
                # copy went into pages given back (a write after free)
                rc = sh_owner_pin(self.arena, oid, gen)
                if rc == SH_ESTATE:  # offloaded: the caller brings it back and puts again
                    raise AgentSealed(f"agent {oid} is offloaded")
                if rc == SH_EOWNER:
                    raise stale_agent(oid, gen)
                if rc:
                    _raise(rc)
            try:
                blk = self._agent_alloc(oid, gen, nbytes if nbytes else 1, partition)
                if nbytes:
                    memcpy(self.base + blk.offset, buf.buf, nbytes)
            finally:
                if nbytes:
                    rc = sh_owner_unpin_final(self.arena, oid, gen, 0, &recycled, &final)
                    if recycled:  # completed meanwhile: the block went with it
                        self.events.on_recycled(self, oid, gen, self._final_dict(&final, "?", True))
                    if rc:
                        _raise(rc)
        finally:
            PyBuffer_Release(&buf)
        return blk, nbytes

    def renew_lease(self, block, lease):
        """Move the lease of a block of the shared default (a Block or its
        Handle) to ``lease`` seconds from now; gives a block without one a lease."""
        self._check_writable()
        cdef uint64_t off = self._lease_target(block)
        cdef uint64_t deadline = _lease_deadline_ns(lease)
        cdef int rc
        cdef uint64_t tag = 0
        rc = sh_lease_set(self.arena, off, deadline)
        if rc == SH_OK and isinstance(block, Block) and (<Block>block).tag == 0:
            rc = sh_block_tag(self.arena, off, &tag)
            if rc == SH_OK:
                (<Block>block)._adopt_tag(tag)
        if rc:
            _raise(rc)

    def lease_deadline(self, block):
        """When the block's lease runs out (seconds since the epoch, as
        time.time()), or None if it has no lease."""
        self._check_open()
        cdef uint64_t off = self._lease_target(block)
        cdef uint64_t deadline = 0
        cdef int rc = sh_lease_get(self.arena, off, &deadline) if not self.read_only else SH_ENOENT
        if rc == SH_ENOENT:
            return None
        if rc:
            _raise(rc)
        return deadline / 1e9

    def _lease_target(self, block):
        if isinstance(block, Block):
            if (<Block>block).heap is not self:
                raise ValueError("the block belongs to another heap object")
            (<Block>block)._check_live()
            return (<Block>block).offset
        if isinstance(block, tuple) and len(block) in (4, 5):
            return self.resolve(block).offset
        raise TypeError(f"expected a Block or a Handle, not {type(block).__name__}")

    def _lease_reclaim(self, double now):
        """Free the leased blocks whose time ran out at ``now``: (blocks, bytes)."""
        self._check_writable()
        cdef uint64_t blocks = 0, nbytes = 0
        cdef uint64_t now_ns = <uint64_t>(now * 1e9) if now > 0 else 0
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_lease_reclaim(arena, now_ns, &blocks, &nbytes)
        self.inflight -= 1
        if rc:
            _raise(rc)
        return blocks, nbytes

    def _views_reclaim(self):
        """Free the entry blocks dropped while another process viewed their
        agent, whose agent has no views left now: (blocks, bytes)."""
        self._check_writable()
        cdef uint64_t blocks = 0, nbytes = 0
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_views_reclaim(arena, &blocks, &nbytes)
        self.inflight -= 1
        if rc:
            _raise(rc)
        return blocks, nbytes

    @property
    def _after_views(self):
        """Entry blocks waiting for their agent's views to go (see _views_reclaim)."""
        self._check_open()
        return sh_after_views_count(self.arena)

    def resolve(self, handle):
        """The Block a Handle names, in this process. StaleBlock if the block
        was freed (or freed and reused) since the handle was made, or its agent
        was recycled; InvalidHandle if it never named a block."""
        self._check_open()
        if not isinstance(handle, tuple) or len(handle) not in (4, 5):
            raise InvalidHandle("a handle is a Handle(offset, size, owner, generation, tag) from block.handle")
        offset, length, owner, generation = handle[0], handle[1], handle[2], handle[3]
        tag = handle[4] if len(handle) == 5 else 0
        for what, value in (("offset", offset), ("size", length), ("owner", owner),
                            ("generation", generation), ("tag", tag)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**64:
                raise InvalidHandle(f"handle {what} {value!r} is not an int in range")
        cdef sh_block_info_t info
        cdef uint32_t offloads = sh_owner_offloads(self.arena, owner) if owner < 2**32 else 0
        if offset >= self.arena_size:
            raise InvalidHandle(f"handle offset {offset!r} is outside this heap ({self.arena_size} bytes)")
        cdef int rc = sh_block_info(self.arena, offset, &info)
        if rc:
            if tag and rc == SH_EBADPTR:
                raise StaleHandle(f"the block at offset {offset} was freed since this handle was made "
                                  f"(it is a free block now)", "SH_EOWNER")
            _raise(rc)
        if info.owner != owner or sh_owner_generation(self.arena, info.owner) != generation:
            raise StaleBlock(f"the block at offset {offset} no longer belongs to owner {owner} generation {generation}",
                             "SH_EOWNER")
        if tag:
            rc = sh_block_tag_check(self.arena, offset, tag)
            if rc == SH_EOWNER or rc == SH_EBADPTR:
                raise StaleHandle(f"the block at offset {offset} was freed, or freed and reused, since this "
                                  f"handle was made", "SH_EOWNER")
            if rc:
                _raise(rc)
        if not length <= info.usable_size:
            raise InvalidHandle(f"handle size {length!r} exceeds the block's usable {info.usable_size} bytes")
        return self._new_block(offset, length, owner, generation, info.usable_size, <int>info.partition, tag,
                               offloads)  # the count as read before the checks

    def alloc_many(self, n, size, partition="context", *, owner=None):
        """``n`` blocks of ``size`` bytes in one call: a numpy uint64 array of
        their offsets (free them with free_many). All or nothing: on failure
        the ones already taken are returned and the error is raised."""
        self._check_writable()
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if not 0 <= n < 2**40:
            raise ValueError(f"n must be an int from 0 to 2**40, not {n!r}")
        cdef uint64_t nbytes = _size_arg(size)
        cdef sh_partition_t part = <sh_partition_t>_part(partition)
        cdef uint32_t oid, gen
        self._owner_arg(owner, &oid, &gen)
        out = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] offs = out
        cdef Py_ssize_t i, j, count = n
        cdef uint64_t usable
        cdef int rc = 0
        cdef size_t done = 0
        cdef sh_arena_t *arena = self.arena
        if oid == 0 and count:
            # the shared default: one C call pops the thread's caches in a loop
            self.inflight += 1
            with nogil:
                rc = sh_alloc_many(arena, part, nbytes, <size_t>count, &offs[0], &done)
            self.inflight -= 1
            if rc:
                message_rc = rc
                if done:
                    sh_free_many(arena, &offs[0], done, NULL)
                _raise(message_rc)
            return out
        for i in range(count):
            rc = _alloc_off(self, oid, gen, part, nbytes, &offs[i], &usable)
            if rc:
                message_rc = rc
                for j in range(i):
                    _free_off(self, offs[j])
                _raise(message_rc)
        return out

    def free_many(self, offsets):
        """Free every offset of an array from alloc_many. Stops at the first
        bad one and raises, saying how many were freed before it. An offset
        with buffers open on it (a Block's memoryview or array in this
        process) raises BufferError before anything is freed. Free Blocks
        with Block.free(): a Block whose block went back by its offset knows
        so (StaleBlock) only if a handle was made of it."""
        self._check_writable()
        arr = np.asarray(offsets)
        if arr.size and arr.dtype.kind not in "ui":
            raise TypeError(f"offsets must be ints (an array from alloc_many), not {arr.dtype}")
        if arr.size and arr.dtype.kind == "i" and (arr < 0).any():
            raise ValueError("offsets must not be negative: pass the array alloc_many returned")
        cdef uint64_t[::1] offs = np.ascontiguousarray(arr.ravel(), dtype=np.uint64)
        cdef size_t i = 0, count = offs.shape[0]
        cdef int rc = SH_OK
        cdef sh_arena_t *arena = self.arena
        if count == 0:
            return
        cdef uint32_t open_buffers
        if self.exports:
            # a Block's offset whose buffers are open here: refused before
            # anything goes back, as that Block's free() would be
            for i in range(count):
                open_buffers = _open_buffers(&self.exported, offs[i])
                if open_buffers:
                    raise BufferError(
                        f"cannot free offset {offs[i]} (item {i}): {open_buffers} buffer(s) (memoryview, "
                        "numpy array) opened through a Block still point at it; nothing was freed")
            i = 0
        # one C call: blocks of one page go back together
        self.inflight += 1
        with nogil:
            rc = sh_free_many(arena, &offs[0], count, &i)
        self.inflight -= 1
        if rc:
            message = sh_last_error().decode("utf-8", "replace")
            exc = InvalidHandle if rc == SH_EBADPTR else StaleBlock
            raise exc(f"freed {i} of {count}; offset {offs[i]}: {message}", sh_strerror(rc).decode())

    def good_size(self, size):
        """The usable size a request of ``size`` bytes gets; 0 if no request
        of that size can ever fit this heap."""
        self._check_open()
        if isinstance(size, int) and not isinstance(size, bool) and size >= 2**63:
            return 0
        return sh_good_size(self.arena, _size_arg(size))

    # ---- introspection ---------------------------------------------------

    def info(self):
        """Immutable facts: size, page size, partitions, size classes."""
        self._check_open()
        cdef sh_arena_info_t info
        cdef uint64_t entries, capacity
        sh_arena_info(self.arena, &info)
        sh_block_table_load(self.arena, &entries, &capacity)
        return {
            "size": info.size,
            "page_size": info.page_size,
            "format_version": info.format_version,
            # the caller's count (the shared default and the agents); the core's
            # table also holds the nursery's slot
            "max_owners": info.max_owners - 1,
            "small_limit": info.small_limit,
            # an agent's share of the shared nursery pages: nursery_blocks
            # blocks of the classes in nursery_classes, the largest
            # nursery_limit bytes (0: no nursery)
            "nursery_limit": info.nursery_limit,
            "nursery_classes": [
                info.class_size[c] for c in range(info.nclasses) if info.nursery_classes >> c & 1
            ],
            "nursery_blocks": info.nursery_blocks,
            "nursery_class_blocks": info.nursery_class_blocks,
            "metadata_bytes": info.metadata_bytes,
            "block_table": capacity,
            "partitions": {
                PARTITIONS[p]: {"offset": info.part_offset[p], "size": info.part_size[p]} for p in range(4)
            },
            "size_classes": [info.class_size[c] for c in range(info.nclasses)],
            "regions": {
                REGIONS[r]: (info.region_offset[r], info.region_offset[r + 1]) for r in range(len(REGIONS))
            },
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
        cdef uint64_t page = 1 << self.page_shift_
        sh_arena_info(self.arena, &info)
        partitions = {}
        for p in range(4):
            sh_partition_stats(self.arena, <sh_partition_t>p, &ps)
            partitions[PARTITIONS[p]] = _partition_dict(&ps, page)
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
                owners.append(self._info_dict(&oi, None))
        cdef uint32_t bound, total
        cdef uint64_t entries, capacity
        sh_thread_slots(self.arena, &bound, &total)
        sh_block_table_load(self.arena, &entries, &capacity)
        return {"size": info.size, "page_size": info.page_size, "partitions": partitions,
                "classes": classes, "owners": owners,
                "thread_caches": {"bound": bound, "total": total,
                                  "magazine_blocks": sh_magazine_blocks(self.arena)},
                "leases": sh_lease_count(self.arena),
                "block_table": {"entries": entries, "capacity": capacity,
                                "after_views": sh_after_views_count(self.arena)}}

    def _partitions(self):
        """stats()'s partitions alone: O(1), where stats() builds a dict per agent."""
        self._check_open()
        cdef sh_partition_stats_t ps
        cdef uint64_t page = 1 << self.page_shift_
        cdef int p
        partitions = {}
        for p in range(4):
            sh_partition_stats(self.arena, <sh_partition_t>p, &ps)
            partitions[PARTITIONS[p]] = _partition_dict(&ps, page)
        return partitions

    def _usage(self):
        """(_partitions(), the number of owner slots in use beyond the two
        the heap keeps): what a monitor samples many times a second."""
        self._check_open()
        cdef sh_arena_info_t info
        cdef uint32_t o, live = 0
        sh_arena_info(self.arena, &info)
        for o in range(FIRST_AGENT, info.max_owners):
            live += sh_owner_generation(self.arena, o) != 0
        return self._partitions(), live

    def check(self):
        """Walk every page, list, table and counter; raise HeapCorrupt naming
        the first inconsistency."""
        self._check_open()
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_check(arena)
        self.inflight -= 1
        if rc:
            if rc == SH_ECORRUPT:
                raise HeapCorrupt(sh_last_error().decode("utf-8", "replace"), "SH_ECORRUPT")
            _raise(rc)


def _testing_hold_lock(CoreHeap heap, partition):
    """Crash tests only (a SWARMHEAP_TESTING=1 build): take a partition's
    slow-path lock and keep it, so that the process can be killed holding it."""
    heap._check_writable()
    if not SH_TESTING_BUILD:
        raise RuntimeError("this build has no test hooks: build with SWARMHEAP_TESTING=1")
    cdef int part = _part(partition)
    cdef int rc
    with nogil:
        rc = sh_test_hold_lock(heap.arena, <sh_partition_t>part)
    if rc:
        _raise(rc)


TESTING_BUILD = bool(SH_TESTING_BUILD)
