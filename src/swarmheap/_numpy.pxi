# Glue for the NEP 49 data-memory handler (np_handler.c) and array handles.


def np_handler(CoreHeap heap, owner, partition, bint fallback):
    """A new "mem_handler" capsule serving ``partition`` of ``heap`` for ``owner``."""
    heap._check_writable()
    cdef uint32_t oid, gen
    cdef int p = _part(partition)
    heap._owner_arg(owner, &oid, &gen)
    if heap.np_keeper == NULL:
        heap.np_keeper = shnp_keeper_new(heap.arena)
        if heap.np_keeper == NULL:
            raise MemoryError("no memory for the NumPy handler's bookkeeping")
    # a weak reference: the handler must not keep the heap object alive
    return shnp_handler_new(<shnp_keeper *>heap.np_keeper, oid, gen, <sh_partition_t>p, fallback,
                            weakref.ref(heap))


def np_live(CoreHeap heap):
    """Allocations of this heap's NumPy handlers still live in this process."""
    return 0 if heap.np_keeper == NULL else shnp_keeper_live(<shnp_keeper *>heap.np_keeper)


def handle_at(CoreHeap heap, address, length):
    """The Handle of the block starting at ``address`` (a pointer in this process)."""
    heap._check_open()
    cdef uint64_t start = <uint64_t>heap.base
    if not (isinstance(address, int) and start <= address < start + heap.arena_size):
        raise InvalidHandle(f"address {address:#x} is not inside this heap")
    cdef uint64_t offset = address - start
    cdef sh_block_info_t info
    cdef uint64_t tag = 0
    cdef int rc = sh_block_info(heap.arena, offset, &info)
    if rc:
        _raise(rc)
    if info.offset != offset:
        raise InvalidHandle(f"address {address:#x} is inside a block, not at its start")
    if not heap.read_only:
        rc = sh_block_tag(heap.arena, offset, &tag)
        if rc:
            _raise(rc)
    return Handle(offset, length, info.owner, sh_owner_generation(heap.arena, info.owner), tag)


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
