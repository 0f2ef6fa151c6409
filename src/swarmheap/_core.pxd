# Fields of the extension types; the methods live in the .pxi files _core.pyx includes.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from swarmheap.includes.swarmheap cimport sh_arena_t, sh_block_info_t, sh_owner_info_t


# Open buffers by block offset (_exports.pxi): a table of the process's
# own, probed linearly; a key is the offset + 1 (0: an empty slot).
cdef struct export_slot_t:
    uint64_t key
    uint32_t count  # the buffers open on the block
    # the Blocks they were opened through and how many each, for the first
    # two Blocks (borrowed: each buffer holds a reference to its Block);
    # `several` once a third opened some, until the block's last buffer goes
    void *blocks[2]
    uint32_t counts[2]
    bint several


cdef struct export_table_t:
    export_slot_t *slots
    uint64_t mask  # capacity - 1 (0: nothing allocated yet)
    uint64_t used


cdef class _Arena:
    cdef sh_arena_t *arena
    cdef uint8_t *base
    cdef uint64_t arena_size
    cdef uint32_t page_shift_
    # block size of each size class, then 0 for runs of whole pages: the
    # keys of an owner's "classes" (its block-size mix)
    cdef readonly tuple _class_sizes
    cdef readonly object name
    cdef readonly object path  # a file-backed heap's file, else None
    cdef readonly bint read_only
    cdef bint created
    cdef Py_ssize_t exports
    cdef void *np_keeper  # set once a NumPy handler exists: it then owns the mapping's lifetime
    # calls of this process that run without the GIL now: close() waits for them
    cdef Py_ssize_t inflight
    # channel handle -> how many of those calls wait on it: close() wakes them
    cdef readonly dict _waiting
    # agent entries' blocks with buffers from get() open in this process
    # (offset -> exports), and those an update dropped meanwhile (offset ->
    # (owner, generation)): freed when the last such buffer goes
    cdef dict entry_views
    cdef dict deferred_frees
    # open buffers by block offset, across every Block object of this
    # process: a free through one Block, or free_many of its offset, must
    # see another's buffers
    cdef export_table_t exported
    # what the layer above is told (HeapEvents): allocation counts, a full
    # partition, a deferred recycle. The binding never calls up by name.
    cdef public object events
    # agent allocations left before events.on_countdown() is called; a C
    # field so that agent.alloc() costs a decrement
    cdef public Py_ssize_t _sweep_countdown
    # a slot for the layer above's per-heap cache (index.py's decoded
    # indexes): an attribute load, where a weak mapping keyed by the heap
    # cost more than the cached read itself
    cdef public object _index_cache
    cdef object __weakref__

    cdef void _adopt(self, sh_arena_t *arena, object name, bint read_only, bint created)
    cdef int _check_open(self) except -1
    cdef int _check_writable(self) except -1
    cdef dict _info_dict(self, sh_owner_info_t *oi, object kind)
    cdef dict _final_dict(self, sh_owner_info_t *oi, str kind, bint recycled)
    cdef int _owner_arg(self, object owner, uint32_t *oid, uint32_t *gen) except -1
    cdef Block _new_block(self, uint64_t offset, uint64_t length, uint32_t owner, uint32_t generation,
                          uint64_t usable, int part, uint64_t tag, uint32_t offloads)
    cdef int _count_young(self) except -1
    cdef Block _agent_alloc(self, uint32_t oid, uint32_t gen, object size, object partition)
    cdef tuple _agent_alloc_copy(self, uint32_t oid, uint32_t gen, object data, str partition=*)


cdef class CoreHeap(_Arena):
    cdef int _complete(self, uint32_t oid, uint32_t gen, sh_owner_info_t *oi) except -1


cdef class Block:
    cdef readonly CoreHeap heap
    cdef readonly uint64_t offset
    cdef uint64_t length
    cdef uint64_t usable
    cdef readonly uint32_t owner
    cdef readonly uint32_t generation
    cdef readonly uint32_t offloads  # its agent's offload count when it was made (sh_owner_offloads)
    cdef readonly uint64_t tag
    cdef int part
    cdef int exports
    cdef bint freed
    cdef bint moved  # sent with send_block: freed here, the message owns it
    cdef void _take_back(self) noexcept
    cdef bint owns  # a received message: dropping the last reference frees it
    cdef bint entry_view  # an agent entry's block as get() hands it out (see _Arena.entry_views)

    cdef int _check_live(self) except -1
    cdef int _stale(self) except -1
    cdef int _staleness(self) noexcept
    cdef void _export_released(self) noexcept


cdef class AgentCore:
    cdef public object _heap
    cdef public uint32_t id
    cdef public uint32_t generation
    cdef public str kind


cdef class ChannelCore:
    cdef readonly CoreHeap heap
    cdef readonly uint64_t chan  # the handle the core takes: ring offset and channel id
    cdef readonly uint64_t max_message

    cdef int _enqueue(self, uint64_t msg, uint64_t size, int64_t timeout_ns) except -1
    cdef int _dequeue(self, int64_t timeout_ns, uint64_t *msg, uint64_t *size, sh_block_info_t *info,
                      uint64_t *tag) except -1


cdef class ChannelWaiter:
    cdef readonly ChannelCore core
    cdef uint32_t cancelled  # set by cancel() (sh_chan_call_off), read by the waiting thread
