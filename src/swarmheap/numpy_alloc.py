"""NumPy arrays whose data lives in the arena, through NumPy's data-memory
handler API (NEP 49).

``with swarmheap.numpy_allocator(agent):`` makes every array created in the
block take its data from the arena, charged to that agent (or to owner 0 for a
heap). The handler follows NumPy's rules: it is a context variable, so it is
local to the current thread (and asyncio task), and a new thread starts with
NumPy's default allocator until it enters the block itself.

Each array's data pins its agent: ``complete()`` defers until the last such
array is freed. Freeing an array after its agent completed, or after the heap
object was closed, is safe: the mapping stays until the last array in it is
gone. A full partition raises PartitionFull (a MemoryError) out of the block;
``fallback=True`` serves such requests from the system allocator instead and
counts them in ``stats()["fallbacks"]``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import numpy as np
import numpy.typing as npt

from swarmheap import _core
from swarmheap.errors import InvalidHandle, PartitionFull
from swarmheap.handle import Handle

if TYPE_CHECKING:
    from swarmheap.agents import Agent
    from swarmheap.heap import Heap

__all__ = ["ArrayHandle", "array_handle", "empty", "from_handle", "numpy_allocator", "zeros"]

Target = Union["Heap", "Agent"]


def _heap_and_owner(target: Any) -> tuple[Heap, Any]:
    from swarmheap.agents import Agent
    from swarmheap.heap import Heap

    if isinstance(target, Agent):
        return target.heap, target
    if isinstance(target, Heap):
        return target, None
    raise TypeError(f"numpy_allocator takes a Heap or an Agent, not {type(target).__name__}")


class numpy_allocator(contextlib.ContextDecorator):
    """Context manager and decorator: arrays created inside take their data
    from ``partition`` of the arena, charged to ``target`` (an Agent, or a
    Heap for its shared owner 0). Re-entrant, and safe to share between
    threads: each thread (context) keeps its own stack of previous handlers."""

    def __init__(self, target: Target, partition: str = "context", *, fallback: bool = False) -> None:
        heap, owner = _heap_and_owner(target)
        self._heap = heap
        self._partition = partition
        self._capsule = _core.np_handler(heap, owner, partition, bool(fallback))
        self._local = threading.local()

    def _stack(self) -> list[tuple[Any, int]]:
        stack: list[tuple[Any, int]] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def __enter__(self) -> numpy_allocator:
        failures = self.stats()["failures"]
        self._stack().append((_core._np_set_handler(self._capsule), failures))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        previous, failures = self._stack().pop()
        _core._np_set_handler(previous)
        if (
            isinstance(exc, MemoryError)
            and not isinstance(exc, PartitionFull)
            and self.stats()["failures"] > failures
        ):
            raise PartitionFull(self._full_message(exc), "SH_EFULL") from exc

    def _full_message(self, exc: BaseException) -> str:
        where = f"partition {self._partition!r} is full"
        if not self._heap.closed:
            part = self._heap._partitions()[self._partition]
            where += f" ({part['in_use']} of {part['capacity']} bytes in use)"
        return (
            f"{where}: {exc}. Free arrays, complete agents, or pass fallback=True to use the system allocator"
        )

    def stats(self) -> dict[str, int]:
        """This handler's counters: allocs, frees, live, fallbacks, failures, in-place reallocs."""
        stats = _core._np_handler_stats(self._capsule)
        assert stats is not None
        return stats

    @property
    def handler(self) -> Any:
        """The "mem_handler" capsule NumPy holds while the block is active."""
        return self._capsule


def _construct(
    make: Any, shape: int | Sequence[int], dtype: npt.DTypeLike, agent: Target, partition: str, order: str
) -> np.ndarray[Any, Any]:
    with numpy_allocator(agent, partition):
        return make(shape, dtype, order=order)  # type: ignore[no-any-return]


def empty(
    shape: int | Sequence[int],
    dtype: npt.DTypeLike = float,
    *,
    agent: Target,
    partition: str = "context",
    order: str = "C",
) -> np.ndarray[Any, Any]:
    """``numpy.empty`` with the data in ``partition``, charged to ``agent`` (an Agent or a Heap)."""
    return _construct(np.empty, shape, dtype, agent, partition, order)


def zeros(
    shape: int | Sequence[int],
    dtype: npt.DTypeLike = float,
    *,
    agent: Target,
    partition: str = "context",
    order: str = "C",
) -> np.ndarray[Any, Any]:
    """``numpy.zeros`` with the data in ``partition``, charged to ``agent`` (an Agent or a Heap)."""
    return _construct(np.zeros, shape, dtype, agent, partition, order)


class ArrayHandle(NamedTuple):
    """What another process needs to see an arena array without copying it."""

    block: Handle
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int  # of the first element, from the block's start


def _check_plain_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.hasobject:
        raise TypeError(
            f"dtype {dtype} holds Python object references, which mean nothing in another process: "
            "share arrays of plain data (numbers, bytes, structs of them)"
        )


def array_handle(heap: Heap, array: np.ndarray[Any, Any]) -> ArrayHandle:
    """A picklable handle to ``array``, whose data must live in ``heap``.
    TypeError for dtypes that hold object references: another process would
    read this process's pointers."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array_handle() takes a NumPy array, not {type(array).__name__}")
    _check_plain_dtype(array.dtype)
    owner = array
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    start = owner.__array_interface__["data"][0]
    block = _core.handle_at(heap, start, owner.nbytes)
    offset = array.__array_interface__["data"][0] - start
    if not 0 <= offset <= owner.nbytes:
        raise InvalidHandle("the array's data is not inside the block of the array it views")
    return ArrayHandle(block, array.dtype.str, tuple(array.shape), tuple(array.strides), offset)


def from_handle(heap: Heap, handle: ArrayHandle) -> np.ndarray[Any, Any]:
    """The array a handle names, zero-copy, over the same bytes (pins its agent while alive)."""
    if not isinstance(handle, ArrayHandle):
        raise TypeError(f"from_handle() takes an ArrayHandle (array_handle()'s), not {type(handle).__name__}")
    try:
        dtype = np.dtype(handle.dtype)
    except (TypeError, ValueError):
        raise TypeError(f"the handle's dtype {handle.dtype!r} is not a NumPy dtype") from None
    _check_plain_dtype(dtype)
    block = heap.resolve(handle.block)
    return np.ndarray(
        handle.shape,
        dtype,
        buffer=memoryview(block),
        offset=handle.offset,
        strides=handle.strides,
    )
