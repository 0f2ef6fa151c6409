# An offset's allocation and free as the binding makes them: the core's
# _nolock call first, the locking one with the GIL let go only when it must
# wait; an agent's blocks freed only within the offload they were made in;
# an entry's block kept for another process's views. Included by _core.pyx
# before _heap.pxi, whose _Arena (declared in _core.pxd) they take.


# The core's _nolock calls never wait: on SH_EAGAIN (the call needs a lock)
# the locking call runs again with the GIL released, counted in flight so
# that close() waits for it.
cdef inline int _alloc_off(_Arena h, uint32_t oid, uint32_t gen, sh_partition_t part, uint64_t nbytes,
                           uint64_t *off, uint64_t *usable) noexcept:
    cdef sh_arena_t *arena = h.arena
    cdef int rc = sh_alloc_owner_nolock(arena, oid, gen, part, nbytes, off, usable)
    if rc == SH_EAGAIN:
        h.inflight += 1
        with nogil:
            rc = sh_alloc_owner(arena, oid, gen, part, nbytes, off, usable)
        h.inflight -= 1
    return rc


cdef inline int _free_off(_Arena h, uint64_t off) noexcept:
    cdef sh_arena_t *arena = h.arena
    cdef int rc = sh_free_nolock(arena, off)
    if rc == SH_EAGAIN:
        h.inflight += 1
        with nogil:
            rc = sh_free(arena, off)
        h.inflight -= 1
    return rc


cdef bint _owned_block(_Arena h, uint64_t off, uint32_t oid, uint32_t gen, sh_block_info_t *info) noexcept:
    """Whether ``off`` is (still) a block of owner ``oid`` in generation
    ``gen`` (*info describes it): checked against the mapping as resolve()
    checks a handle, so a damaged offset is never followed."""
    return (h.arena != NULL and off < h.arena_size and sh_block_info(h.arena, off, info) == SH_OK
            and info.owner == oid and sh_owner_generation(h.arena, oid) == gen)


cdef int _owner_free(_Arena h, uint64_t off, uint32_t oid, uint32_t gen, uint32_t offloads) noexcept:
    """Free the agent's block at ``off`` if it is still the agent's in the
    incarnation of ``offloads`` offloads (sh_owner_free: an offload since gave
    it back, and the restore may have named it again). The owner lock is
    waited for with the GIL let go (an offload holds it for milliseconds).
    SH_OK if freed."""
    cdef int rc
    if h.arena == NULL:
        return SH_EINVAL
    if oid < SH_FIRST_AGENT:  # the shared default and the registry are never offloaded
        return _free_off(h, off)
    rc = sh_owner_free_nolock(h.arena, off, oid, gen, offloads)
    if rc == SH_EAGAIN:
        h.inflight += 1
        with nogil:
            rc = sh_owner_free(h.arena, off, oid, gen, offloads)
        h.inflight -= 1
    return rc


cdef int _drop_entry_block(_Arena h, uint64_t off, uint32_t oid, uint32_t gen, uint32_t offloads) noexcept:
    """Free a block the agent's index dropped, unless another process holds
    a view of the agent's entries: then it waits in the block table for the
    views to go (sh_free_after_views; the last view's release, or a sweep
    after a viewer's death, frees it). ``offloads``: the agent's offload
    count read before the update that dropped it. 1 if freed now."""
    cdef uint32_t views = 0
    if h.arena == NULL:
        return 0
    if sh_owner_views(h.arena, oid, gen, 1, &views) == SH_OK and views:
        # a full table leaves the block to the agent's recycle: kept, never freed under a view
        sh_free_after_views(h.arena, off, oid, gen, offloads)
        return 0
    return _owner_free(h, off, oid, gen, offloads) == SH_OK


def _free_each(CoreHeap heap, offsets):
    """free_many without the batching: one free per block, as a loop over
    single frees does it. The one-by-one peer of the recycle benchmark."""
    heap._check_writable()
    cdef uint64_t[::1] offs = np.ascontiguousarray(offsets, dtype=np.uint64)
    cdef Py_ssize_t i
    cdef int rc
    for i in range(offs.shape[0]):
        rc = _free_off(heap, offs[i])
        if rc:
            _raise(rc)
