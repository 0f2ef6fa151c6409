# AgentCore: what an agent's hot path needs, in C fields.


cdef class AgentCore:
    """An owner of a CoreHeap: its heap, id, generation and kind name in C
    fields. ``AgentCore(heap, agent_id, generation, kind)`` wraps an owner
    made with ``heap._owner_create``; Agent (agents.py) builds the rest on it
    (and adds no fields: spawn makes one per agent)."""

    def __init__(self, CoreHeap heap, uint32_t agent_id, uint32_t generation, str kind="?"):
        self._heap = heap
        self.id = agent_id
        self.generation = generation
        self.kind = kind

    @cython.binding(False)  # a method descriptor, not a CyFunction: cheaper to call, and this is the hot path
    def alloc(self, size, partition=_CONTEXT):
        """A block of ``size`` bytes charged to this agent (``context`` by
        default). On a full partition the heap's events object may make room
        once (Heap runs a full sweep) before PartitionFull is raised."""
        return (<CoreHeap?>self._heap)._agent_alloc(self.id, self.generation, size, partition)

    def _alloc_copy(self, data):
        """(a context block holding a copy of bytes-like ``data``, its length
        in bytes); BufferError if ``data`` is not C-contiguous."""
        return (<CoreHeap?>self._heap)._agent_alloc_copy(self.id, self.generation, data)
