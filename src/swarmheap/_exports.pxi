# The process's open buffers by block offset (_Arena.exported): a free
# through one Block, or free_many of its offset, must see the buffers that
# another Block of the same block opened. Kept in C, as every buffer a Block
# exports passes through it: a dict of Python ints cost 190 ns an export
# (memoryview(block) 82 -> 270 ns), this a few.
from cpython.mem cimport PyMem_Calloc, PyMem_Free

cdef enum:
    _EXPORTS_FIRST = 16  # slots of a table's first allocation
    _EXPORTS_KEPT = 1024  # a table this large is freed when its last buffer goes


cdef inline uint64_t _exports_home(const export_table_t *t, uint64_t key) noexcept:
    return ((key >> 4) * <uint64_t>0x9E3779B97F4A7C15ULL >> 32) & t.mask


cdef inline uint64_t _exports_slot(const export_table_t *t, uint64_t key) noexcept:
    """Where ``key`` is, or the empty slot that ends its probe."""
    cdef uint64_t i = _exports_home(t, key)
    while t.keys[i] != 0 and t.keys[i] != key:
        i = (i + 1) & t.mask
    return i


cdef int _exports_grow(export_table_t *t) except -1:
    cdef uint64_t capacity = (t.mask + 1) * 2 if t.keys != NULL else _EXPORTS_FIRST
    cdef uint64_t *keys = <uint64_t *>PyMem_Calloc(capacity, sizeof(uint64_t))
    cdef uint32_t *counts = <uint32_t *>PyMem_Calloc(capacity, sizeof(uint32_t))
    if keys == NULL or counts == NULL:
        PyMem_Free(keys)
        PyMem_Free(counts)
        raise MemoryError("no memory for the table of open buffers")
    cdef export_table_t old = t[0]
    t.keys, t.counts, t.mask = keys, counts, capacity - 1
    cdef uint64_t i, j
    if old.keys != NULL:
        for i in range(old.mask + 1):
            if old.keys[i] != 0:
                j = _exports_slot(t, old.keys[i])
                t.keys[j], t.counts[j] = old.keys[i], old.counts[i]
    PyMem_Free(old.keys)
    PyMem_Free(old.counts)
    return 0


cdef inline int _exports_add(export_table_t *t, uint64_t offset) except -1:
    """One buffer more on the block at ``offset``."""
    if t.keys == NULL or (t.used + 1) * 2 > t.mask + 1:
        _exports_grow(t)
    cdef uint64_t i = _exports_slot(t, offset + 1)
    if t.keys[i] == 0:
        t.keys[i] = offset + 1
        t.used += 1
    t.counts[i] += 1
    return 0


cdef inline uint32_t _exports_count(const export_table_t *t, uint64_t offset) noexcept:
    """Buffers open on the block at ``offset``."""
    if t.used == 0:
        return 0
    return t.counts[_exports_slot(t, offset + 1)]


cdef void _exports_free(export_table_t *t) noexcept:
    PyMem_Free(t.keys)
    PyMem_Free(t.counts)
    t.keys, t.counts, t.mask, t.used = NULL, NULL, 0, 0


cdef void _exports_drop(export_table_t *t, uint64_t offset) noexcept:
    """One buffer fewer on the block at ``offset``; its slot empties at the
    last, and the entries after it move back so that no probe breaks."""
    if t.used == 0:
        return
    cdef uint64_t i = _exports_slot(t, offset + 1), j, home
    if t.keys[i] == 0:
        return
    t.counts[i] -= 1
    if t.counts[i] != 0:
        return
    t.used -= 1
    if t.used == 0 and t.mask >= _EXPORTS_KEPT:
        _exports_free(t)  # a burst of buffers is over: its table does not stay
        return
    j = i
    while True:
        j = (j + 1) & t.mask
        if t.keys[j] == 0:
            break
        home = _exports_home(t, t.keys[j])
        if ((j - home) & t.mask) >= ((j - i) & t.mask):  # its probe passes i: it moves there
            t.keys[i], t.counts[i] = t.keys[j], t.counts[j]
            i = j
    t.keys[i] = 0
    t.counts[i] = 0
