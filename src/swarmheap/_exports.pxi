# The process's open buffers by block offset (_Arena.exported): a free
# through one Block, or free_many of its offset, must see the buffers that
# another Block of the same block opened. Kept in C, as every buffer a Block
# exports passes through it: a dict of Python ints cost 190 ns an export
# (memoryview(block) 82 -> 270 ns), this a few. Each offset also keeps which
# Blocks opened its buffers (the first two): buffers of a Block that lost
# its block (a lease ran out, its agent was recycled or offloaded) must not
# keep the block's next tenant from freeing it (_open_buffers).
from cpython.mem cimport PyMem_Calloc, PyMem_Free

cdef enum:
    _EXPORTS_FIRST = 16  # slots of a table's first allocation
    _EXPORTS_KEPT = 1024  # a table this large is freed when its last buffer goes


cdef inline uint64_t _exports_home(const export_table_t *t, uint64_t key) noexcept:
    return ((key >> 4) * <uint64_t>0x9E3779B97F4A7C15ULL >> 32) & t.mask


cdef inline uint64_t _exports_slot(const export_table_t *t, uint64_t key) noexcept:
    """Where ``key`` is, or the empty slot that ends its probe."""
    cdef uint64_t i = _exports_home(t, key)
    while t.slots[i].key != 0 and t.slots[i].key != key:
        i = (i + 1) & t.mask
    return i


cdef int _exports_grow(export_table_t *t) except -1:
    cdef uint64_t capacity = (t.mask + 1) * 2 if t.slots != NULL else _EXPORTS_FIRST
    cdef export_slot_t *slots = <export_slot_t *>PyMem_Calloc(capacity, sizeof(export_slot_t))
    if slots == NULL:
        raise MemoryError("no memory for the table of open buffers")
    cdef export_table_t old = t[0]
    t.slots, t.mask = slots, capacity - 1
    cdef uint64_t i
    if old.slots != NULL:
        for i in range(old.mask + 1):
            if old.slots[i].key != 0:
                t.slots[_exports_slot(t, old.slots[i].key)] = old.slots[i]
    PyMem_Free(old.slots)
    return 0


cdef inline int _exports_add(export_table_t *t, uint64_t offset, void *block) except -1:
    """One buffer more on the block at ``offset``, opened through ``block``."""
    if t.slots == NULL or (t.used + 1) * 2 > t.mask + 1:
        _exports_grow(t)
    cdef export_slot_t *slot = &t.slots[_exports_slot(t, offset + 1)]
    if slot.key == 0:
        slot.key = offset + 1
        t.used += 1
    slot.count += 1
    cdef int k
    for k in range(2):
        if slot.blocks[k] == block:
            slot.counts[k] += 1
            return 0
    for k in range(2):
        if slot.blocks[k] == NULL:
            slot.blocks[k] = block
            slot.counts[k] = 1
            return 0
    slot.several = True
    return 0


cdef inline const export_slot_t *_exports_at(const export_table_t *t, uint64_t offset) noexcept:
    """The slot of the block at ``offset``, NULL if no buffer is open on it."""
    if t.used == 0:
        return NULL
    cdef const export_slot_t *slot = &t.slots[_exports_slot(t, offset + 1)]
    return slot if slot.key != 0 else NULL


cdef void _exports_free(export_table_t *t) noexcept:
    PyMem_Free(t.slots)
    t.slots, t.mask, t.used = NULL, 0, 0


cdef void _exports_drop(export_table_t *t, uint64_t offset, void *block) noexcept:
    """One buffer fewer on the block at ``offset``, opened through ``block``;
    its slot empties at the last, and the entries after it move back so that
    no probe breaks."""
    if t.used == 0:
        return
    cdef uint64_t i = _exports_slot(t, offset + 1), j, home
    cdef export_slot_t *slot = &t.slots[i]
    if slot.key == 0:
        return
    cdef int k
    for k in range(2):
        if slot.blocks[k] == block:
            slot.counts[k] -= 1
            if slot.counts[k] == 0:
                slot.blocks[k] = NULL
            break
    slot.count -= 1
    if slot.count != 0:
        return
    t.used -= 1
    if t.used == 0 and t.mask >= _EXPORTS_KEPT:
        _exports_free(t)  # a burst of buffers is over: its table does not stay
        return
    j = i
    while True:
        j = (j + 1) & t.mask
        if t.slots[j].key == 0:
            break
        home = _exports_home(t, t.slots[j].key)
        if ((j - home) & t.mask) >= ((j - i) & t.mask):  # its probe passes i: it moves there
            t.slots[i] = t.slots[j]
            i = j
    memset(&t.slots[i], 0, sizeof(export_slot_t))
