# Fields of the extension types; the methods live in _core.pyx.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from swarmheap.includes.core cimport sh_arena_t


cdef class CoreHeap:
    cdef sh_arena_t *arena
    cdef uint8_t *base
    cdef uint64_t arena_size
    cdef uint32_t page_shift_
    cdef readonly object name
    cdef readonly bint read_only
    cdef bint created
    cdef Py_ssize_t exports
    cdef void *np_keeper  # set once a NumPy handler exists: it then owns the mapping's lifetime
    # agent allocations left before Heap._note_allocation looks at the sweep
    # thresholds (see heap.py); here so that agent.alloc() decrements a C field
    cdef public Py_ssize_t _sweep_countdown
    cdef object __weakref__

    cdef void _adopt(self, sh_arena_t *arena, object name, bint read_only, bint created)
    cdef int _check_open(self) except -1
    cdef int _owner_arg(self, object owner, uint32_t *oid, uint32_t *gen) except -1
    cdef Block _new_block(self, uint64_t offset, uint64_t length, uint32_t owner, uint32_t generation,
                          uint64_t usable, int part)
    cdef Block _agent_alloc(self, uint32_t oid, uint32_t gen, object size, object partition)


cdef class Block:
    cdef readonly CoreHeap heap
    cdef readonly uint64_t offset
    cdef uint64_t length
    cdef uint64_t usable
    cdef readonly uint32_t owner
    cdef readonly uint32_t generation
    cdef int part
    cdef int exports
    cdef bint freed

    cdef int _check_live(self) except -1
