"""swarmheap: a shared-memory allocator for multi-agent Python runtimes.

One mmap'd arena -- private, or shared by many processes -- split into four
budgets (context, shared, comm, system), served by lock-free slab pages, with
per-agent owner heaps that are recycled in one piece.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from swarmheap.errors import (
    AdmissionDenied,
    AdmissionTimeout,
    AgentStateError,
    AttachError,
    ChannelClosed,
    CorruptSnapshot,
    HeapCorrupt,
    HeapExists,
    HeapNotFound,
    InvalidHandle,
    MessageTooLarge,
    PartitionFull,
    ReadOnlyHeap,
    SnapshotTooNew,
    StaleBlock,
    StaleHandle,
    StoreFull,
    StoreUnavailable,
    SwarmHeapError,
    TooManyAgents,
)
from swarmheap.handle import Handle
from swarmheap.sizes import format_size, parse_size

if TYPE_CHECKING:
    from swarmheap._core import PARTITIONS, Block, HeapEvents, unlink
    from swarmheap.agents import Agent
    from swarmheap.channels import Channel
    from swarmheap.heap import EVENTS, Heap
    from swarmheap.numpy_alloc import ArrayHandle, array_handle, empty, from_handle, numpy_allocator, zeros
    from swarmheap.predict import Prediction
    from swarmheap.stores import LMDBStore, RedisStore, SQLiteStore, Store, open_store
    from swarmheap.sweep import SweepResult

# The rest loads on first use (PEP 562), so that importing a lower floor
# (swarmheap._core, the binding) does not import the floors above it.
_LAZY = {
    "PARTITIONS": "swarmheap._core",
    "Block": "swarmheap._core",
    "HeapEvents": "swarmheap._core",
    "unlink": "swarmheap._core",
    "Agent": "swarmheap.agents",
    "Channel": "swarmheap.channels",
    "EVENTS": "swarmheap.heap",
    "Heap": "swarmheap.heap",
    "ArrayHandle": "swarmheap.numpy_alloc",
    "array_handle": "swarmheap.numpy_alloc",
    "empty": "swarmheap.numpy_alloc",
    "from_handle": "swarmheap.numpy_alloc",
    "numpy_allocator": "swarmheap.numpy_alloc",
    "zeros": "swarmheap.numpy_alloc",
    "SweepResult": "swarmheap.sweep",
    "Prediction": "swarmheap.predict",
    "LMDBStore": "swarmheap.stores",
    "RedisStore": "swarmheap.stores",
    "SQLiteStore": "swarmheap.stores",
    "Store": "swarmheap.stores",
    "open_store": "swarmheap.stores",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'swarmheap' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "EVENTS",
    "PARTITIONS",
    "AdmissionDenied",
    "AdmissionTimeout",
    "Agent",
    "AgentStateError",
    "ArrayHandle",
    "AttachError",
    "Block",
    "Channel",
    "ChannelClosed",
    "CorruptSnapshot",
    "Handle",
    "Heap",
    "HeapCorrupt",
    "HeapEvents",
    "HeapExists",
    "HeapNotFound",
    "InvalidHandle",
    "LMDBStore",
    "MessageTooLarge",
    "PartitionFull",
    "Prediction",
    "ReadOnlyHeap",
    "RedisStore",
    "SQLiteStore",
    "SnapshotTooNew",
    "StaleBlock",
    "StaleHandle",
    "Store",
    "StoreFull",
    "StoreUnavailable",
    "SwarmHeapError",
    "SweepResult",
    "TooManyAgents",
    "__version__",
    "array_handle",
    "empty",
    "format_size",
    "from_handle",
    "numpy_allocator",
    "open_store",
    "parse_size",
    "unlink",
    "zeros",
]
