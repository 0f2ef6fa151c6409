"""Every exception swarmheap raises on purpose. All derive from SwarmHeapError;
each also derives from the builtin a caller would naturally catch."""

from __future__ import annotations

__all__ = [
    "AdmissionDenied",
    "AdmissionTimeout",
    "AgentStateError",
    "AttachError",
    "ChannelClosed",
    "CorruptSnapshot",
    "HeapCorrupt",
    "HeapExists",
    "HeapNotFound",
    "InvalidHandle",
    "MessageTooLarge",
    "PartitionFull",
    "ReadOnlyHeap",
    "SnapshotTooNew",
    "StaleBlock",
    "StaleHandle",
    "StoreFull",
    "StoreUnavailable",
    "SwarmHeapError",
    "TooManyAgents",
]


class SwarmHeapError(Exception):
    """Base of every swarmheap error. ``code`` names the C core's status, if any."""

    code: str | None = None

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class PartitionFull(SwarmHeapError, MemoryError):
    """A partition has no room for the request. The message names the partition
    and its used/capacity figures; partitions never borrow from each other."""


class InvalidHandle(SwarmHeapError, ValueError):
    """An offset or handle that is not a live block of this heap."""


class StaleBlock(SwarmHeapError):
    """A block used after it was freed, or after its agent was recycled
    (detected through generations, never by reading someone else's bytes)."""


class HeapCorrupt(SwarmHeapError):
    """check() found an inconsistency, or a free list was damaged by a write
    after free. The message is the C core's description of the first problem."""


class AttachError(SwarmHeapError):
    """A named heap could not be attached: missing, truncated, foreign, of
    another format version, or with a damaged header."""


class HeapNotFound(AttachError, FileNotFoundError):
    """No heap of that name exists."""


class HeapExists(SwarmHeapError, FileExistsError):
    """A heap of that name exists already: attach to it, or unlink it first."""


class TooManyAgents(SwarmHeapError):
    """The owner table is full: complete agents, or create the heap with a
    larger ``max_owners``."""


class AgentStateError(SwarmHeapError):
    """The agent is not in a state that allows the operation."""


class IndexMoved(AgentStateError):
    """A change decided from a reading of an agent's index found the index
    at another word (a put or delete landed meanwhile), and nothing was
    changed: an offload's snapshot (the memory is not given back: it
    snapshots again), a removal a LangGraph trim decided (it reads again).
    Raised to a caller only when it kept changing."""


class AgentSealed(AgentStateError):
    """An update found its agent offloaded after it began: the blocks it
    filled went with the agent's memory, and it starts again (which brings
    the agent back). Internal: callers see the update done."""


class ReadOnlyHeap(SwarmHeapError, PermissionError):
    """A writing call on a heap attached with ``read_only=True``: attach it
    without read_only to allocate, free, spawn, put, complete or sweep."""


class StaleHandle(StaleBlock, InvalidHandle):
    """A handle, or a Block made from one, of a block that was freed (or
    freed and handed out again) since the handle was made: its tag no longer
    matches. Both a StaleBlock and an InvalidHandle."""


class CorruptSnapshot(SwarmHeapError, ValueError):
    """A snapshot blob is damaged: truncated, wrong magic, a checksum or a
    size that does not match, a state that does not parse."""


class SnapshotTooNew(CorruptSnapshot):
    """A snapshot written by a newer format than this swarmheap reads."""


class StoreUnavailable(SwarmHeapError, ConnectionError):
    """The offload store cannot be reached or written (a stopped server, a
    read-only file); nothing was moved."""


class StoreFull(SwarmHeapError):
    """The offload store has no room for the blob (an LMDB map, a Redis
    maxmemory); nothing was moved."""


class AdmissionDenied(SwarmHeapError):
    """An agent's predicted peak does not fit: ``prediction`` says what its
    kind needs, ``free`` the bytes free under the admission limit and
    ``short`` the bytes missing, per partition."""

    def __init__(
        self,
        message: str,
        prediction: object = None,
        short: dict[str, int] | None = None,
        free: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.prediction = prediction
        self.short = short or {}
        self.free = free or {}


class ChannelClosed(SwarmHeapError):
    """The channel is closed: a send fails at once, a receive once the
    messages queued before the close are drained."""


class MessageTooLarge(SwarmHeapError, ValueError):
    """A message over its channel's ``max_message``: send it in pieces, or
    open the channel (a new name) with a larger ``max_message``."""


class AdmissionTimeout(AdmissionDenied, TimeoutError):
    """``spawn(admit="wait", timeout=...)``: no room came back in time."""
