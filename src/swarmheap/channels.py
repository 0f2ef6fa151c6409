"""Channels: named, bounded, multi-producer multi-consumer queues of messages
in the `comm` partition, shared by every process of the heap.

A message is a block of the shared default: ``send`` copies bytes into a
new one, ``send_block`` moves a Block without a copy (the sender's Block is
unusable after), and ``recv`` hands the receiver the block itself, zero-copy;
freeing it, or dropping the last reference to it (and to every buffer on
it), gives it back. The queue of offsets is the C core's (channel.c): a few
stores under a robust lock, futex waits any process wakes. A message may
take a lease (``send(..., lease=30.0)``): a sweep frees it if nobody
received and freed it in time, as for any block with a lease, and a
message it frees while queued leaves the channel (receivers never see it;
depth no longer counts it).
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from swarmheap._core import Block, ChannelCore
from swarmheap.errors import ChannelClosed, HeapCorrupt, InvalidHandle, MessageTooLarge, StaleBlock
from swarmheap.handle import Handle
from swarmheap.index_format import utf8_text
from swarmheap.registry import Registry

if TYPE_CHECKING:
    from swarmheap.heap import Heap

__all__ = ["MAX_NAME", "Channel", "ChannelClosed"]

MAX_NAME = 200
_REF = struct.Struct("<QIQ")  # channel handle (ring offset and id), capacity, max message
_PREFIX = "channel/"  # the registry's names of channels


def _key(name: str) -> str:
    return f"{_PREFIX}{name}"


def _decode(name: str, data: bytes) -> tuple[int, int, int]:
    """A channel's registry entry: (handle, capacity, max message)."""
    if len(data) != _REF.size:
        raise HeapCorrupt(f"the heap registry's entry for channel {name!r} is damaged")
    chan, cap, max_message = _REF.unpack(data)
    return chan, cap, max_message


def check_timeout(timeout: object) -> float | None:
    """A blocking call's timeout: finite seconds >= 0, or None (wait for as
    long as it takes); TypeError or ValueError, naming it, otherwise."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout is seconds (an int or float) or None, not {type(timeout).__name__}")
    if not (timeout >= 0) or math.isinf(timeout):
        raise ValueError(f"timeout is finite seconds >= 0 or None (no limit), not {timeout!r}")
    return float(timeout)


# The longest wait the core counts (146 years): a longer timeout is this one.
# 1e100 seconds raised OverflowError on the way into the core's int64.
_LONGEST_WAIT_NS = 1 << 62


def _timeout_ns(timeout: float | None) -> int:
    seconds = check_timeout(timeout)
    return -1 if seconds is None else min(int(seconds * 1e9), _LONGEST_WAIT_NS)


def _deadline(timeout: float | None) -> float | None:
    seconds = check_timeout(timeout)
    return None if seconds is None else time.monotonic() + seconds


def _settle(done: asyncio.Future[Any], outcome: Any, error: BaseException | None) -> None:
    if done.done():
        return  # cancelled meanwhile
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(outcome)


class _Helpers:
    """Threads for asyncio's channel waits: one per wait in progress, kept
    idle for a while after, so a wait costs a queue hand-off, not a thread
    start (93 us here; an async ping-pong's p50 went from 163 to 270 us
    with a thread per wait). No limit: a thousand agents awaiting a
    thousand quiet channels each need a sleeper, and a capped pool would
    leave a channel that has a message waiting behind them."""

    IDLE = 30.0  # seconds an idle helper waits for the next wait before it ends

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # helpers blocked on the queue and not yet promised a job

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that helper's: it takes this job (or one put before it)
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._serve, name="swarmheap-channel-wait", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # unpromised: end (another idle one stays for a promised job)
                        self._idle -= 1
                        return
                continue  # promised a job that is on its way
            job()
            with self._lock:
                self._idle += 1


_helpers = _Helpers()


def _forget_helpers() -> None:
    """In a forked child: the parent's helpers, counted idle, are not there."""
    global _helpers
    _helpers = _Helpers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


class _Unlinked:
    """What an unlinked Channel's core becomes: every call names the unlink
    (the ring's memory went back to the heap, and may be another block now)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        raise ChannelClosed(
            f"channel {self.name!r} was unlinked: heap.channel({self.name!r}) makes a new one"
        )


class Channel:
    """One named channel of a heap; see the module docstring. Get one with
    ``heap.channel(name, capacity=1024, max_message=None)``."""

    def __init__(self, heap: Heap, name: str, core: ChannelCore, capacity: int) -> None:
        self.heap = heap
        self.name = name
        self.core = core
        self.offset = core.offset
        self.capacity = capacity
        self.max_message = core.max_message

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} capacity={self.capacity}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a Channel cannot be pickled: send its name ({self.name!r}); "
            f"heap.channel(name) in the other process opens it"
        )

    # ---- sending ----

    def send(self, data: Any, timeout: float | None = None, *, lease: float | None = None) -> None:
        """Copy ``data`` (bytes, a memoryview, any buffer) into a `comm` block
        and enqueue it; TimeoutError if the channel stays full past ``timeout``."""
        # a send without a lease is one call into the core (alloc, copy,
        # enqueue): at a million 1 KiB messages a second each Python call is a tenth
        timeout_ns = -1 if timeout is None else _timeout_ns(timeout)
        if lease is None:
            sent = self.core.send_copy(data, timeout_ns)
        else:
            sent = self._send_leased(data, timeout_ns, lease)
        if not sent:
            raise TimeoutError(f"channel {self.name!r} stayed full for {timeout} s")

    def try_send(self, data: Any, *, lease: float | None = None) -> bool:
        """send() without waiting: False if the channel is full."""
        return self.core.send_copy(data, 0) if lease is None else self._send_leased(data, 0, lease)

    def send_block(self, block: Block, timeout: float | None = None) -> None:
        """Move a Block of the shared default into the channel without a
        copy; the Block is unusable after, and the receiver owns the bytes.
        TimeoutError if the channel stays full past ``timeout``: then, as
        on any error, the Block is still yours."""
        if not isinstance(block, Block):
            raise TypeError(f"send_block takes a Block, not {type(block).__name__}")
        if block.heap is not self.heap:
            raise ValueError("the block belongs to another heap object")
        if block.owner != 0:
            if block.freed:
                block[:0]  # its agent was recycled: StaleBlock, from the one place that words it
            raise ValueError(
                "only blocks of the shared default move through a channel (heap.alloc(size, 'comm')): "
                "an agent's block goes when its agent is recycled"
            )
        self._check_size(len(block))
        if not self.core.send_block(block, _timeout_ns(timeout), len(block)):
            raise TimeoutError(f"channel {self.name!r} stayed full for {timeout} s; the block is still yours")

    def _check_size(self, size: int) -> None:
        if size > self.max_message:
            raise MessageTooLarge(
                f"a message of {size} bytes is over channel {self.name!r}'s max_message {self.max_message}"
            )

    def _send_leased(self, data: Any, timeout_ns: int, lease: float) -> bool:
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(
                f"send() takes bytes-like data (bytes, memoryview, a buffer), not {type(data).__name__}"
            ) from None
        self._check_size(view.nbytes)
        blk = self.heap.alloc(max(view.nbytes, 1), "comm", lease=lease)
        blk[: view.nbytes] = view
        return bool(self.core.send_block(blk, timeout_ns, view.nbytes, free_unsent=True))

    # ---- receiving ----

    def recv(self, timeout: float | None = None) -> Block:
        """The next message's block, zero-copy: yours to read and free.
        TimeoutError past ``timeout``; ChannelClosed once closed and drained."""
        got = self.core.recv_block(-1 if timeout is None else _timeout_ns(timeout))
        if got is None:
            raise TimeoutError(f"channel {self.name!r} stayed empty for {timeout} s")
        return got

    def try_recv(self) -> Block | None:
        """recv() without waiting: None if the channel is empty."""
        return self.core.recv_block(0)

    def __iter__(self) -> Iterator[Block]:
        """Receive until the channel is closed and drained."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    # ---- asyncio ----

    def __aiter__(self) -> AsyncIterator[Block]:
        """``async for message in channel``: arecv() until the channel is closed and drained."""
        return self._arecv_all()

    async def _arecv_all(self) -> AsyncIterator[Block]:
        while True:
            try:
                yield await self.arecv()
            except ChannelClosed:
                return

    async def asend(self, data: Any, timeout: float | None = None, *, lease: float | None = None) -> None:
        """send() for asyncio: a full channel is waited on in a helper
        thread, never on the event loop; the message is queued from the loop,
        so a cancelled asend has sent nothing."""
        deadline = _deadline(timeout)
        while not self.try_send(data, lease=lease):
            if not await self._ready(True, deadline):
                raise TimeoutError(f"channel {self.name!r} stayed full for {timeout} s")

    async def arecv(self, timeout: float | None = None) -> Block:
        """recv() for asyncio: an empty channel is waited on in a helper
        thread, and the message taken on the event loop, so a cancelled
        arecv (asyncio.wait_for's timeout, say) leaves it to the next receiver."""
        deadline = _deadline(timeout)
        while (got := self.try_recv()) is None:
            if not await self._ready(False, deadline):
                raise TimeoutError(f"channel {self.name!r} stayed empty for {timeout} s")
        return got

    async def _ready(self, want_room: bool, deadline: float | None) -> bool:
        """Until a send (``want_room``) or a receive could act, or the
        channel closed: True; False past ``deadline``. The wait sleeps on the
        channel's futex in a helper thread (_helpers): the loop's default
        executor has a few threads, and waits parked there would starve each
        other (and hold up asyncio.run's shutdown). A cancellation calls the
        wait off at once and sees it end."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool | None] = loop.create_future()
        waiter = self.core.waiter()
        timeout_ns = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1e9))
        ended = threading.Event()

        def wait() -> None:
            try:
                outcome: Any = waiter.wait(want_room, timeout_ns)
                error = None
            except BaseException as exc:  # handed to the awaiting task
                outcome, error = None, exc
            ended.set()
            try:
                loop.call_soon_threadsafe(_settle, done, outcome, error)
            except RuntimeError:
                pass  # the loop closed: nobody awaits this any more

        _helpers.run(wait)
        try:
            return bool(await done)
        except BaseException:
            waiter.cancel()
            ended.wait(5.0)  # called off, it returns at once: no wait outlives the receive
            raise

    # ---- life ----

    def close(self) -> None:
        """Senders get ChannelClosed at once; receivers drain what is queued first."""
        self.core.close()

    def stats(self) -> dict[str, Any]:
        """Depth, totals sent and received, bytes in flight, closed."""
        return {"name": self.name, **self.core.stats()}

    def unlink(self) -> None:
        """Remove the channel: closed, its queued messages freed, its name
        gone; this Channel raises ChannelClosed after (a second unlink does
        nothing)."""
        if isinstance(self.core, _Unlinked):
            return
        self.close()
        while (got := self.core.recv_raw(0) if self.stats()["depth"] else None) is not None:
            self._free(*got)
        Registry(self.heap).remove(_key(self.name))
        self._free(self.offset, 1)
        self.core = _Unlinked(self.name)  # type: ignore[assignment]

    def _free(self, offset: int, size: int) -> None:
        try:
            self.heap.resolve(Handle(offset, max(size, 1), 0, 1)).free()
        except (InvalidHandle, StaleBlock):
            pass  # a sweep took it (its lease ran out)


def open_channel(heap: Heap, name: str, capacity: int, max_message: int | None) -> Channel:
    utf8_text(name, "a channel name", MAX_NAME)
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity is an int (messages, 1 to 2**20), not {type(capacity).__name__}")
    if capacity < 1 or capacity > 1 << 20:
        raise ValueError(f"capacity is an int from 1 to 2**20, not {capacity!r}")
    comm = heap.info()["partitions"]["comm"]["size"]
    if max_message is None:
        max_message = comm // 4
    if isinstance(max_message, bool) or not isinstance(max_message, int):
        raise TypeError(f"max_message is an int (bytes) or None, not {type(max_message).__name__}")
    if not 0 < max_message <= comm:
        raise ValueError(f"max_message is bytes from 1 to the comm partition's {comm}, not {max_message!r}")
    registry = Registry(heap)
    key = _key(name)
    while True:
        data = registry.get_ref(key)[1]
        if data is not None:
            chan, cap, _ = _decode(name, data)
            return Channel(heap, name, ChannelCore(heap, chan), cap)
        core = ChannelCore.create(heap, capacity, max_message)
        if registry.swap(key, None, _REF.pack(core.chan, capacity, max_message)):
            return Channel(heap, name, core, capacity)
        Channel(heap, name, core, capacity)._free(core.offset, 1)  # another process named it first


def channel_names(heap: Heap) -> list[str]:
    return [n[len(_PREFIX) :] for n in Registry(heap).names(_PREFIX)]


def purge_expired(heap: Heap) -> int:
    """Drop from every channel the queued messages whose lease ran out (a
    sweep freed their blocks while they waited), so that depth and bytes in
    flight say so at once; receivers skip them anyway. How many went. A
    damaged channel is passed over: stats() reports it."""
    registry = Registry(heap)
    dropped = 0
    for name in channel_names(heap):
        data = registry.get(_key(name))
        try:
            if data is not None:
                dropped += ChannelCore(heap, _decode(name, data)[0]).purge()
        except (HeapCorrupt, InvalidHandle):
            continue
    return dropped
