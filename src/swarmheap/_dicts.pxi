# The one shape of an owner's dict (Agent.stats(), complete(), stats()["owners"],
# sweeps): kind is filled in by the layer above (the core keeps only its
# crc32, kind_id); peak is given in bytes (at least what the owner holds) and in pages.

cdef inline uint64_t _peak_bytes(sh_owner_info_t *oi, int part, uint64_t page) noexcept:
    # Peaks count pages (a byte-exact peak would be a shared counter on the
    # hot path). An agent in the nursery holds blocks but no pages of its
    # own: its peak is at least what it holds, never below it.
    cdef uint64_t pages = oi.peak_pages[part] * page
    return pages if pages > oi.bytes[part] else oi.bytes[part]


cdef dict _class_dict(sh_owner_info_t *oi, tuple sizes):
    """Live bytes by block size (0: runs of whole pages), the classes in use only."""
    cdef dict out = {}
    cdef Py_ssize_t c
    for c in range(len(sizes)):
        if oi.class_bytes[c]:
            out[sizes[c]] = oi.class_bytes[c]
    return out


cdef dict _owner_dict(sh_owner_info_t *oi, object kind, uint64_t page, tuple sizes):
    return {
        "id": oi.id, "generation": oi.generation, "kind": kind, "kind_id": oi.kind,
        "state": _state_name(<unsigned>oi.state),
        "pid": oi.pid, "pid_start_time": oi.pid_start_time,
        "created_ns": oi.created_ns, "last_active_ns": oi.last_active_ns, "pins": oi.pins,
        "bytes": {"context": oi.bytes[0], "shared": oi.bytes[1], "comm": oi.bytes[2], "system": oi.bytes[3]},
        "pages": {"context": oi.pages[0], "shared": oi.pages[1], "comm": oi.pages[2], "system": oi.pages[3]},
        "peak": {"context": _peak_bytes(oi, 0, page), "shared": _peak_bytes(oi, 1, page),
                 "comm": _peak_bytes(oi, 2, page), "system": _peak_bytes(oi, 3, page)},
        "peak_pages": {"context": oi.peak_pages[0], "shared": oi.peak_pages[1],
                       "comm": oi.peak_pages[2], "system": oi.peak_pages[3]},
        "blocks": oi.blocks, "user_word": oi.user_word,
        # what spawn reserved from the kind's prediction and its pages have not drawn down yet
        "reserved": {"context": oi.reserved_bytes, "shared": 0, "comm": 0, "system": 0},
        "total_bytes": oi.bytes[0] + oi.bytes[1] + oi.bytes[2] + oi.bytes[3],
        "classes": _class_dict(oi, sizes),
    }


cdef dict _partition_dict(sh_partition_stats_t *ps, uint64_t page):
    # held: bytes of the pages given to owners, less the heap's own
    # bookkeeping (overhead: in `system`, the nursery's records and the
    # registry); in_use of them is what blocks use, and utilization the
    # ratio (1.0 when nothing is held)
    cdef uint64_t held = ps.pages_used * page - ps.overhead
    return {
        "capacity": ps.capacity, "in_use": ps.in_use, "peak": ps.peak,
        "pages_used": ps.pages_used, "pages_total": ps.pages_total,
        "held": held, "utilization": (ps.in_use / held) if held else 1.0,
        "overhead": ps.overhead,
        "allocs": ps.allocs, "frees": ps.frees, "failures": ps.failures,
    }
