"""swarmheap: a shared-memory allocator for multi-agent Python runtimes.

One mmap'd arena -- private, or shared by many processes -- split into four
budgets (context, shared, comm, system), served by lock-free slab pages, with
per-agent owner heaps that are recycled in one piece.
"""

from swarmheap._core import PARTITIONS, Block, unlink
from swarmheap.agents import Agent
from swarmheap.errors import (
    AgentStateError,
    AttachError,
    HeapCorrupt,
    HeapExists,
    HeapNotFound,
    InvalidHandle,
    PartitionFull,
    StaleBlock,
    SwarmHeapError,
    TooManyAgents,
)
from swarmheap.handle import Handle
from swarmheap.heap import EVENTS, Heap
from swarmheap.numpy_alloc import ArrayHandle, array_handle, empty, from_handle, numpy_allocator, zeros
from swarmheap.sizes import format_size, parse_size
from swarmheap.sweep import SweepResult

__version__ = "0.1.0"

__all__ = [
    "EVENTS",
    "PARTITIONS",
    "Agent",
    "AgentStateError",
    "ArrayHandle",
    "AttachError",
    "Block",
    "Handle",
    "Heap",
    "HeapCorrupt",
    "HeapExists",
    "HeapNotFound",
    "InvalidHandle",
    "PartitionFull",
    "StaleBlock",
    "SwarmHeapError",
    "SweepResult",
    "TooManyAgents",
    "__version__",
    "array_handle",
    "empty",
    "format_size",
    "from_handle",
    "numpy_allocator",
    "parse_size",
    "unlink",
    "zeros",
]
