# ChannelCore: one channel of the comm partition (channel.c), and the
# one-call send and receive the Python Channel builds on.


cdef inline void _waits(CoreHeap heap, uint64_t chan, int change):
    """Count a blocking call on ``chan`` in or out: close() calls off the
    waits of the channels named here, and waits for every call in flight."""
    heap.inflight += change
    cdef Py_ssize_t n = heap._waiting.get(chan, 0) + change
    if n:
        heap._waiting[chan] = n
    else:
        del heap._waiting[chan]


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef bint _again_after_signal(int rc, int64_t *timeout_ns, int64_t deadline) except -1:
    """True if a signal cut the wait short (SH_EINTR: nothing was sent or
    received) and it is to be made again for the time left of *timeout_ns
    (-1: no limit), which this sets. The handlers run here first, so a
    Ctrl-C raises KeyboardInterrupt."""
    if rc != SH_EINTR:
        return False
    PyErr_CheckSignals()
    if timeout_ns[0] >= 0:
        timeout_ns[0] = max(deadline - _now_ns(), 0)
    return True


cdef inline int _called_off(int rc) except -1:
    if rc == SH_ECANCELED:
        raise ChannelClosed("the heap was closed in this process while this call waited on the channel",
                            "SH_ECANCELED")
    return 0


cdef class ChannelCore:
    """The channel ``chan`` names in ``heap`` (a handle from create(): the
    ring's offset and the channel's id). A send or receive is one call: it
    tries while holding the GIL and lets the GIL go only to wait, since
    releasing and taking it back costs more than the operation."""

    def __cinit__(self, CoreHeap heap, uint64_t chan):
        heap._check_open()
        cdef sh_chan_stats_t st
        cdef int rc = sh_chan_stats(heap.arena, chan, &st)
        if rc:
            _raise(rc)
        self.heap = heap
        self.chan = chan
        self.max_message = st.max_message

    @property
    def offset(self):
        """The ring's block (the handle without the channel's id)."""
        return sh_chan_offset(self.chan)

    @staticmethod
    def create(CoreHeap heap, uint32_t capacity, uint64_t max_message):
        heap._check_writable()
        cdef uint64_t chan
        cdef int rc = sh_chan_create(heap.arena, capacity, max_message, &chan)
        if rc:
            _raise(rc)
        return ChannelCore(heap, chan)

    cdef int _enqueue(self, uint64_t msg, uint64_t size, int64_t timeout_ns) except -1:
        """1 once queued, 0 if still full after the timeout."""
        cdef CoreHeap heap = self.heap
        cdef sh_arena_t *arena = heap.arena
        cdef uint64_t chan = self.chan
        cdef int rc = sh_chan_send(arena, chan, msg, size, 0)
        cdef int64_t deadline
        if rc == SH_ETIMEDOUT and timeout_ns != 0:
            deadline = _now_ns() + timeout_ns
            _waits(heap, chan, 1)
            try:
                while True:
                    with nogil:
                        rc = sh_chan_send(arena, chan, msg, size, timeout_ns)
                    if not _again_after_signal(rc, &timeout_ns, deadline):
                        break
            finally:
                _waits(heap, chan, -1)
        if rc == SH_ETIMEDOUT:
            return 0
        if rc:
            _called_off(rc)
            _raise(rc)
        return 1

    def send_block(self, Block block, int64_t timeout_ns, uint64_t size, bint free_unsent=False):
        """Move ``block`` into the ring as a message of ``size`` bytes: True
        once queued (the Block is unusable from then on). False if still
        full after the timeout, and on an exception: the Block is the
        caller's again, or freed if ``free_unsent``. Here, not in Python, so
        that no bytecode (where a KeyboardInterrupt lands) runs between the
        enqueue and knowing whether it happened."""
        self.heap._check_writable()
        if size > block.length:
            raise ValueError(f"a message of {size} bytes does not fit its block of {block.length}")
        block._hand_over()
        try:
            if self._enqueue(block.offset, size, timeout_ns):
                return True
        except BaseException:
            block._take_back()
            if free_unsent:
                block.free()
            raise
        block._take_back()
        if free_unsent:
            block.free()
        return False

    def send_copy(self, data, int64_t timeout_ns):
        """Copy the bytes-like ``data`` into a new comm block and queue it;
        False (nothing kept) if still full after the timeout."""
        cdef CoreHeap heap = self.heap
        heap._check_writable()
        cdef Py_buffer view
        try:
            PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS)
        except (ValueError, BufferError):
            # a strided buffer (a column of an array): its bytes, in order
            PyObject_GetBuffer(memoryview(data).tobytes(), &view, PyBUF_C_CONTIGUOUS)
        except TypeError:
            raise TypeError(f"send() takes bytes-like data (bytes, memoryview, a buffer), "
                            f"not {type(data).__name__}") from None
        cdef uint64_t nbytes = <uint64_t>view.len, off = 0, usable
        cdef int rc
        try:
            if nbytes > self.max_message:
                raise MessageTooLarge(f"a message of {nbytes} bytes is over the channel's max_message "
                                 f"{self.max_message}")
            rc = _alloc_off(heap, SH_OWNER_DEFAULT, 1, SH_PART_COMM, nbytes if nbytes else 1, &off, &usable)
            if rc:
                _raise(rc)
            # in this thread's hands until the ring has it (the send clears it
            # as it queues): a sweep frees it if the process dies meanwhile
            sh_chan_hold(heap.arena, off)
            memcpy(heap.base + off, view.buf, nbytes)
        finally:
            PyBuffer_Release(&view)
        try:
            if self._enqueue(off, nbytes, timeout_ns):
                return True
        except BaseException:
            sh_chan_unhold(heap.arena, off)
            _free_off(heap, off)
            raise
        sh_chan_unhold(heap.arena, off)
        _free_off(heap, off)
        return False

    cdef int _dequeue(self, int64_t timeout_ns, uint64_t *msg, uint64_t *size,
                      sh_block_info_t *info, uint64_t *tag) except -1:
        # info: the message's block, checked by the core, and the message
        # stays recorded as this thread's until the caller owns it
        # (recv_block clears it once its Block exists), and *tag its lease's
        # handle tag (0 without a lease); NULL: none of it
        cdef CoreHeap heap = self.heap
        cdef sh_arena_t *arena = heap.arena
        cdef uint64_t chan = self.chan
        cdef int rc
        if info != NULL:
            rc = sh_chan_recv_held(arena, chan, msg, size, 0, info, tag)
        else:
            rc = sh_chan_recv(arena, chan, msg, size, 0)
        cdef int64_t deadline
        if rc == SH_ETIMEDOUT and timeout_ns != 0:
            deadline = _now_ns() + timeout_ns
            _waits(heap, chan, 1)
            try:
                while True:
                    with nogil:
                        if info != NULL:
                            rc = sh_chan_recv_held(arena, chan, msg, size, timeout_ns, info, tag)
                        else:
                            rc = sh_chan_recv(arena, chan, msg, size, timeout_ns)
                    if not _again_after_signal(rc, &timeout_ns, deadline):
                        break
            finally:
                _waits(heap, chan, -1)
        if rc == SH_ETIMEDOUT:
            return 0
        if rc:
            _called_off(rc)
            _raise(rc)
        return 1

    def recv_block(self, int64_t timeout_ns):
        """The next message as a Block the caller owns, or None if still
        empty after the timeout. A message whose block is not a live block
        of the shared default (a damaged ring) raises HeapCorrupt."""
        cdef CoreHeap heap = self.heap
        heap._check_writable()
        cdef uint64_t msg = 0, size = 0, tag = 0
        cdef sh_block_info_t info
        if not self._dequeue(timeout_ns, &msg, &size, &info, &tag):
            return None
        # a message sent with a lease keeps its tag: once the lease takes the
        # block back (and another allocation may have it), this Block raises
        # on use instead of writing into it
        cdef Block blk = heap._new_block(msg, size, SH_OWNER_DEFAULT,
                                         sh_owner_generation(heap.arena, SH_OWNER_DEFAULT),
                                         info.usable_size, <int>info.partition, tag, 0)
        blk.owns = True  # the receiver's: freed when it frees it or drops it
        sh_chan_unhold(heap.arena, msg)
        return blk

    def recv_raw(self, int64_t timeout_ns):
        """(offset, size) of the next message, or None: for draining."""
        self.heap._check_writable()
        cdef uint64_t msg = 0, size = 0
        if not self._dequeue(timeout_ns, &msg, &size, NULL, NULL):
            return None
        return msg, size

    def waiter(self):
        """A ChannelWaiter on this channel: for one asyncio wait."""
        return ChannelWaiter(self)

    def close(self):
        self.heap._check_writable()
        cdef int rc = sh_chan_close(self.heap.arena, self.chan)
        if rc:
            _raise(rc)

    def purge(self):
        """Drop the queued messages a lease took (their blocks freed by a
        sweep while they waited); how many."""
        self.heap._check_writable()
        cdef uint32_t dropped = 0
        cdef int rc = sh_chan_purge(self.heap.arena, self.chan, &dropped)
        if rc:
            _raise(rc)
        return dropped

    def stats(self):
        self.heap._check_open()
        cdef sh_chan_stats_t st
        cdef int rc = sh_chan_stats(self.heap.arena, self.chan, &st)
        if rc:
            _raise(rc)
        return {"capacity": st.capacity, "depth": st.depth, "max_message": st.max_message, "sent": st.sent,
                "received": st.received, "bytes_in_flight": st.bytes_in_flight, "closed": bool(st.closed)}


cdef class ChannelWaiter:
    """One wait, in a worker thread, for a channel to have a message (or
    room), taking none: an asyncio receiver takes its message on the event
    loop, so a receive cancelled there leaves the message in the channel.
    cancel(), from any thread, ends the wait at once."""

    def __cinit__(self, ChannelCore core):
        self.core = core
        self.cancelled = 0

    def wait(self, bint want_room, int64_t timeout_ns):
        """True once a send (``want_room``) or a receive could act, or the
        channel is closed; False past the timeout; None if cancelled."""
        cdef CoreHeap heap = self.core.heap
        heap._check_writable()
        cdef sh_arena_t *arena = heap.arena
        cdef uint64_t chan = self.core.chan
        cdef int rc
        cdef int64_t deadline = _now_ns() + timeout_ns
        _waits(heap, chan, 1)
        try:
            while True:
                with nogil:
                    rc = sh_chan_wait(arena, chan, want_room, timeout_ns, &self.cancelled)
                if not _again_after_signal(rc, &timeout_ns, deadline):
                    break
        finally:
            _waits(heap, chan, -1)
        if rc == SH_OK:
            return True
        if rc == SH_ETIMEDOUT:
            return False
        if rc == SH_ECANCELED and self.cancelled:
            return None
        _called_off(rc)
        _raise(rc)

    def cancel(self):
        """End the wait (now, or at once when it begins)."""
        cdef CoreHeap heap = self.core.heap
        if heap.arena != NULL:
            sh_chan_call_off(heap.arena, self.core.chan, &self.cancelled)
