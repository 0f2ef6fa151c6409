# CoreHeap: _Arena (_heap.pxi) and the owner protocol the agent layer builds
# on, the sweep queues and the thread caches.


cdef enum:
    _RECLAIM_BATCH = 16  # owners a call of sh_pins_reclaim_dead_final reports (on the stack: 16 infos)


cdef class CoreHeap(_Arena):
    """One arena, and every call on it: see _Arena for its life and blocks."""

    # ---- owners (the agent layer builds on these) -------------------------

    def _owner_create(self, uint32_t kind):
        self._check_writable()
        cdef uint32_t oid, gen
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_owner_create(arena, kind, &oid, &gen)
        self.inflight -= 1
        if rc:
            _raise(rc)
        return oid, gen

    def _owner_spawn(self, uint32_t kind, uint64_t reserve=0, bint own_pages=False):
        """An agent's owner in one call: counted toward the young sweep (as an
        agent allocation), created, given a reservation of ``reserve`` bytes
        (no bound: admission under a limit is the layer above's), its small
        blocks on pages of its own if ``own_pages``, and queued as young."""
        self._count_young()
        self._check_writable()
        cdef uint32_t oid, gen
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_owner_create(arena, kind, &oid, &gen)
        self.inflight -= 1
        if rc:
            _raise(rc)
        rc = sh_owner_reserve(arena, oid, gen, reserve, 0) if reserve else SH_OK
        if rc == SH_OK and own_pages:
            rc = sh_owner_nursery_opt_out(arena, oid, gen)
        if rc:
            message_rc = rc
            sh_owner_recycle(arena, oid, gen)
            _raise(message_rc)
        sh_sweep_push(arena, 0, oid, gen)  # a full queue leaves it to the full sweeps
        return oid, gen

    def _owner_read(self, uint32_t oid, uint32_t gen, uint64_t offset, uint64_t size):
        """A copy of ``size`` bytes of the owner's block at ``offset``; None
        if that is not (any more) a block of this owner and generation large
        enough (the caller reads its index again). Checked as resolve()
        checks a handle, so a damaged index never reads outside a block."""
        self._check_open()
        cdef sh_block_info_t info
        if not _owned_block(self, offset, oid, gen, &info) or size > info.usable_size:
            return None
        return (<char *>self.base + offset)[:size]

    def _owner_recycle(self, uint32_t oid, uint32_t gen):
        """True if recycled now, False if deferred by pins."""
        self._check_writable()
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_owner_recycle(arena, oid, gen)
        self.inflight -= 1
        if rc == SH_EPINNED:
            return False
        if rc:
            _raise(rc)
        return True

    cdef int _complete(self, uint32_t oid, uint32_t gen, sh_owner_info_t *oi) except -1:
        self._check_writable()
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_owner_complete(arena, oid, gen, oi)
        self.inflight -= 1
        if rc == SH_EOWNER:
            raise stale_agent(oid, gen)
        if rc != SH_OK and rc != SH_EPINNED:
            _raise(rc)
        return rc == SH_OK

    def _owner_complete(self, uint32_t oid, uint32_t gen, str kind):
        """Recycle (or, if pinned, mark completed) and return (recycled, the
        agent's final dict), read in the same pass over its pages."""
        cdef sh_owner_info_t oi
        cdef bint recycled = self._complete(oid, gen, &oi)
        return recycled, self._final_dict(&oi, kind, recycled)

    def _owner_complete_row(self, uint32_t oid, uint32_t gen, str kind):
        """_owner_complete, and the final figures as one USAGE_ROW of native
        float64 in bytes: what the usage model folds in, without reading
        them back out of the dict; last, the state the agent was in (an
        offloaded one leaves a blob in its store)."""
        cdef sh_owner_info_t oi
        cdef bint recycled = self._complete(oid, gen, &oi)
        cdef double row[9 + SH_MAX_CLASSES + 1]
        cdef int i
        for i in range(4):
            row[i] = oi.bytes[i]
            row[4 + i] = <double>_peak_bytes(&oi, i, 1 << self.page_shift_)
        row[8] = oi.created_ns
        for i in range(SH_MAX_CLASSES + 1):
            row[9 + i] = oi.class_bytes[i]
        cdef str was = _state_name(<unsigned>oi.state) if recycled else "live"
        return recycled, self._final_dict(&oi, kind, recycled), (<char *>row)[:sizeof(row)], was

    def _owner_offload(self, uint32_t oid, uint32_t gen, str kind, bint only_restoring=False,
                       uint64_t expected_word=0):
        """Give back the agent's memory and mark it offloaded (slot and
        generation kept), if its index word is still ``expected_word`` (the
        one its snapshot read); AgentStateError while pinned or not live
        (with ``only_restoring``, unless it is being restored), and
        IndexMoved when the word moved on (nothing changed)."""
        self._check_writable()
        cdef sh_owner_info_t oi
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            if only_restoring:
                rc = sh_owner_unrestore(arena, oid, gen, &oi)
            else:
                rc = sh_owner_offload(arena, oid, gen, expected_word, &oi)
        self.inflight -= 1
        if rc == SH_ESTATE and not only_restoring and sh_owner_generation(arena, oid) == gen \
                and sh_owner_state(arena, oid) == SH_OWNER_LIVE:
            raise IndexMoved(f"agent {oid} changed after its snapshot (a put or a delete landed): not offloaded")
        if rc == SH_EPINNED or rc == SH_EOWNER or rc == SH_ESTATE:
            if sh_owner_generation(arena, oid) != gen:
                raise stale_agent(oid, gen)
            raise AgentStateError(f"agent {oid} is not offloaded: {sh_last_error().decode()}")
        if rc != SH_OK:
            _raise(rc)
        cdef dict info = self._info_dict(&oi, kind)
        info["state"] = "offloaded"  # read on the way out; the dict says where the agent is now
        return info

    def _owner_stats(self, uint32_t oid, uint32_t gen, str kind):
        """Agent.stats() of the owner; StaleBlock if that generation is gone."""
        self._check_open()
        cdef sh_owner_info_t oi
        if sh_owner_info(self.arena, oid, &oi) != SH_OK or oi.generation != gen:
            raise stale_agent(oid, gen)
        return self._info_dict(&oi, kind)

    def _owner_pin(self, uint32_t oid, uint32_t gen, bint view=False):
        """Pin the owner for this process; ``view``: the pin of a view of one
        of its named entries (see sh_owner_view_pin)."""
        self._check_writable()
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_owner_view_pin(arena, oid, gen) if view else sh_owner_pin(arena, oid, gen)
        self.inflight -= 1
        if rc == SH_ESTATE:
            raise AgentSealed(f"agent {oid} was offloaded: its memory went back to the heap")
        if rc:
            _raise(rc)

    def _owner_unpin(self, uint32_t oid, uint32_t gen, bint view=False):
        """None, or the final figures (a dict, as Agent.complete()'s, its kind
        "?") if this unpin recycled a completed owner."""
        self._check_writable()
        cdef int rc, recycled = 0
        cdef sh_owner_info_t final
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_owner_unpin_final(arena, oid, gen, view, &recycled, &final)
        self.inflight -= 1
        if rc:
            _raise(rc)
        return self._final_dict(&final, "?", True) if recycled else None

    def _pins_reclaim_dead(self):
        """Drop the pins of processes that died: (pins dropped, the final
        figures of each completed owner whose last pin went with them and
        that was recycled, as _owner_unpin gives them, kind "?")."""
        self._check_writable()
        cdef uint64_t dropped = 0, step = 0
        cdef uint32_t recycled = _RECLAIM_BATCH
        cdef int rc
        cdef uint32_t i
        cdef sh_owner_info_t finals[_RECLAIM_BATCH]
        cdef sh_arena_t *arena = self.arena
        cdef list gone = []
        while recycled == _RECLAIM_BATCH:  # a full batch: more may wait for the next call
            self.inflight += 1
            with nogil:
                rc = sh_pins_reclaim_dead_final(arena, &step, &recycled, finals, _RECLAIM_BATCH)
            self.inflight -= 1
            if rc:
                _raise(rc)
            dropped += step
            for i in range(recycled):
                gone.append(self._final_dict(&finals[i], "?", True))
        return dropped, gone

    def _notify_recycled(self, uint32_t oid, uint32_t gen, final=None):
        """The binding's own relay (Block and the NumPy handler call it): the
        last pin of a completed owner dropped here and it was recycled.
        ``final``: its figures, as _owner_unpin gives them, or the NumPy
        handler's sh_owner_info_t as bytes (anything else: None)."""
        cdef sh_owner_info_t oi
        if isinstance(final, bytes):
            if len(<bytes>final) == sizeof(sh_owner_info_t):
                memcpy(&oi, <const char *>(<bytes>final), sizeof(sh_owner_info_t))
                final = self._final_dict(&oi, "?", True)
            else:
                final = None
        elif not isinstance(final, dict):
            final = None
        self.events.on_recycled(self, oid, gen, final)

    def _owner_set_state(self, uint32_t oid, uint32_t gen, str expected, str desired):
        self._check_writable()
        cdef int rc
        cdef int e = _STATE_INDEX[expected], d = _STATE_INDEX[desired]
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_owner_set_state(arena, oid, gen, <sh_owner_state_t>e, <sh_owner_state_t>d)
        self.inflight -= 1
        if rc:
            _raise(rc)

    def _owner_set_dead(self, uint32_t oid, uint32_t gen, str expected, int32_t pid, uint64_t start):
        """A sweep's verdict on (pid, start), the holder its brief named:
        AgentStateError unless the agent is still ``expected`` and held by it."""
        self._check_writable()
        cdef int rc
        cdef int e = _STATE_INDEX[expected]
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_owner_set_dead(arena, oid, gen, <sh_owner_state_t>e, pid, start)
        self.inflight -= 1
        if rc:
            _raise(rc)

    def _owner_touch(self, uint32_t oid, uint32_t gen):
        self._check_writable()
        cdef int rc = sh_owner_touch(self.arena, oid, gen)
        if rc:
            _raise(rc)

    # The owner's user word may hold a block of the shared default's `system`
    # (sh_held_word in swarmheap.h: the agent index lives there); these read
    # and swap it in one call each. The block starts with its data's length
    # (a u32, then 4 bytes of padding), since the word holds only the offset.

    def _owner_word(self, uint32_t oid, uint32_t gen):
        """The owner's user word in one load; None if that generation is gone.
        The word's sequence number changes with every swap, so an unchanged
        word means an unchanged held block (readers cache on it)."""
        self._check_open()
        cdef uint64_t word
        if sh_owner_user_word(self.arena, oid, gen, &word) != SH_OK:
            return None
        return word

    def _owner_live_word(self, uint32_t oid, uint32_t gen):
        """The owner's user word if that generation holds the slot and is
        live (not completed, offloaded or restoring); None otherwise. One
        call for what a reader that caches on the word asks first."""
        self._check_open()
        cdef uint64_t word
        if sh_owner_user_word(self.arena, oid, gen, &word) != SH_OK:
            return None
        if sh_owner_state(self.arena, oid) != SH_OWNER_LIVE:
            return None
        # the slot may have gone between the two loads: its word went with it
        if sh_owner_generation(self.arena, oid) != gen:
            return None
        return word

    def _owner_held_read(self, uint32_t oid, uint32_t gen):
        """The block the owner's user word holds, copied out between two reads
        of the word that agree: (word, bytes); (0, b"") if it holds none; None
        if that generation is gone. AgentStateError if the word kept changing."""
        self._check_open()
        cdef uint64_t word, again, off, length
        cdef sh_block_info_t info
        for _ in range(100):
            if sh_owner_user_word(self.arena, oid, gen, &word) != SH_OK:
                return None
            if not word & SH_USER_WORD_HELD:
                return word, b""  # 0 (no index yet) or SEALED (offloaded)
            off = sh_held_offset(word)
            # an index is a block of the shared default (the registry's, of owner 1)
            if (sh_block_info(self.arena, off, &info) != SH_OK or info.owner != (1 if oid == 1 else 0)
                    or info.usable_size < _HELD_PREFIX):
                continue  # swapped and freed under us: read the new word
            length = (<uint32_t *>(self.base + off))[0]
            if length > info.usable_size - _HELD_PREFIX:
                continue
            data = (<char *>self.base + off + _HELD_PREFIX)[:length]
            if sh_owner_user_word(self.arena, oid, gen, &again) != SH_OK:
                return None
            if again == word:
                return word, data
        raise AgentStateError(f"agent {oid}'s index keeps changing under concurrent updates")

    def _owner_held_swap(self, uint32_t oid, uint32_t gen, uint64_t expected, uint32_t offloads, bytes head,
                         const unsigned char[::1] body, bytes tail=b""):
        """Copy ``head`` + ``body`` + ``tail`` into a new block of the shared
        default's ``system`` and compare-and-set the owner's user word from
        ``expected`` to hold it; the block ``expected`` held is then freed.
        False, with nothing changed, if the word had moved on (the word's
        sequence number sees a swap away and back to the same block, so a
        stale ``expected`` fails). Returns the new word, or 0 if the word had
        moved on. The parts come apart so that a caller keeping the body
        (bytes, or a bytearray it grows in place) does not join them again
        on every swap: an index of thousands of entries is hundreds of KiB.
        ``offloads``: the agent's offload count read before ``expected`` and
        before the blocks the index names were made; AgentSealed (nothing
        changed) if the agent was offloaded since, as those blocks went back
        with it (sh_owner_set_user_word)."""
        self._check_writable()
        cdef uint64_t head_length = <uint64_t>len(head)
        cdef uint64_t body_length = <uint64_t>body.shape[0]
        cdef uint64_t tail_length = <uint64_t>len(tail)
        cdef uint64_t length = head_length + body_length + tail_length
        if length > _HELD_MAX:
            raise ValueError(f"an agent's index is at most {_HELD_MAX} bytes, not {length}: "
                             f"use fewer or shorter entry names")
        cdef uint64_t off, usable
        # the nursery owner's index is the heap's registry: its blocks are its
        # own (bookkeeping, not in use); every other index is the shared default's
        cdef uint32_t holder = 1 if oid == 1 else 0
        cdef int rc = _alloc_off(self, holder, 1, SH_PART_SYSTEM, length + _HELD_PREFIX, &off, &usable)
        if rc:
            _raise(rc)
        cdef char *at = <char *>self.base + off
        (<uint32_t *>at)[0] = <uint32_t>length
        (<uint32_t *>at)[1] = 0
        at += _HELD_PREFIX
        memcpy(at, <const char *>head, head_length)
        if body_length:
            memcpy(at + head_length, &body[0], body_length)
        memcpy(at + head_length + body_length, <const char *>tail, tail_length)
        cdef uint64_t word = sh_owner_held_next(self.arena, oid, expected, off)
        rc = sh_owner_set_user_word(self.arena, oid, gen, offloads, expected, word)
        if rc:
            _free_off(self, off)
            if rc == SH_ESTATE and sh_owner_offloads(self.arena, oid) != offloads:
                raise AgentSealed(f"agent {oid} was offloaded while an update of it ran")
            if rc == SH_ESTATE:
                return 0
            _raise(rc)
        if expected & SH_USER_WORD_HELD:
            _free_off(self, sh_held_offset(expected))  # ours now; a bad word frees nothing
        return word

    def _owner_reserve(self, uint32_t oid, uint32_t gen, uint64_t nbytes, uint64_t limit):
        """Reserve ``nbytes`` of context for the agent; False if ``limit`` (0:
        none) would be passed. The reservation goes with the agent's memory."""
        self._check_writable()
        cdef int rc = sh_owner_reserve(self.arena, oid, gen, nbytes, limit)
        if rc == SH_EFULL:
            return False
        if rc == SH_EOWNER:
            raise stale_agent(oid, gen)
        if rc:
            _raise(rc)
        return True

    def _owner_nursery_opt_out(self, uint32_t oid, uint32_t gen):
        """The agent's small blocks come from pages of its own from now on."""
        self._check_writable()
        cdef int rc = sh_owner_nursery_opt_out(self.arena, oid, gen)
        if rc == SH_EOWNER:
            raise stale_agent(oid, gen)
        if rc:
            _raise(rc)

    def _nursery_reclaim(self):
        """Nursery blocks a killed free left named but unlisted, freed; how many."""
        self._check_writable()
        cdef uint64_t n
        cdef sh_arena_t *arena = self.arena
        with nogil:
            n = sh_nursery_reclaim(arena)
        return n

    def _room_seq(self):
        self._check_open()
        return sh_room_seq(self.arena)

    def _room_wait(self, uint32_t seen, int64_t timeout_ns, uint32_t oid=0, uint32_t gen=0):
        """Sleep until any process gives memory back (or the timeout, ns).
        Called off by close() in this process: the waiting agent ``oid``
        (if any) is recycled first, while close() still waits for this
        call, and ValueError says the heap was closed."""
        self._check_writable()
        cdef sh_arena_t *arena = self.arena
        cdef int rc
        self.inflight += 1
        with nogil:
            rc = sh_room_wait(arena, seen, timeout_ns)
            if rc == SH_ECANCELED and oid != 0:
                sh_owner_recycle(arena, oid, gen)
        self.inflight -= 1
        if rc == SH_ECANCELED:
            raise ValueError("the heap was closed while this call waited for room")

    def _reserved(self):
        """Bytes of context reserved by admitted agents."""
        self._check_open()
        return sh_reserved_bytes(self.arena)

    def _owner_state(self, uint32_t oid):
        """The owner slot's state name, read in one load (no page walk)."""
        self._check_open()
        cdef uint32_t st = sh_owner_state(self.arena, oid)  # FREE beyond the table
        return _state_name(st)

    def _owner_offloads(self, uint32_t oid):
        """How many times the slot's agent was offloaded: read before an index
        update, it names the incarnation whose blocks the update may free."""
        self._check_open()
        return sh_owner_offloads(self.arena, oid)

    def _owner_generation(self, uint32_t oid):
        self._check_open()
        return sh_owner_generation(self.arena, oid)

    def _owner_info(self, uint32_t oid):
        """The owner's dict (kind None: the layer above knows names) for a
        used slot, None for a free one."""
        self._check_open()
        cdef sh_owner_info_t oi
        if sh_owner_info(self.arena, oid, &oi) != SH_OK:
            return None
        return self._info_dict(&oi, None)

    def _owner_brief(self, uint32_t oid):
        """(generation, state, pid, pid start time, pins, user_word) of a used
        slot, None for a free one: what a sweep decides on, without
        _owner_info's dict (bytes per partition and class) for every agent
        that survives it."""
        self._check_open()
        cdef sh_owner_info_t oi
        if sh_owner_info(self.arena, oid, &oi) != SH_OK:
            return None
        return oi.generation, _state_name(<unsigned>oi.state), oi.pid, oi.pid_start_time, oi.pins, oi.user_word

    def _offload_candidates(self, int part, int32_t pid, uint64_t active_before_ns):
        """The offload policy's candidates, in one pass in C: (holds less than
        a page of ``part``, last active ns, id, generation) of every live,
        unpinned agent of process ``pid`` that holds some of ``part`` and was
        last active before ``active_before_ns``. _owner_info's dict per agent
        made the policy's scan 43 ms with 20 000 agents."""
        self._check_open()
        if not 0 <= part < 4:
            raise ValueError(f"partition index {part} is not 0 to 3")
        cdef sh_arena_info_t info
        cdef sh_owner_info_t oi
        cdef uint32_t o
        cdef uint64_t page = 1 << self.page_shift_
        sh_arena_info(self.arena, &info)
        out = []
        for o in range(FIRST_AGENT, info.max_owners):
            if sh_owner_state(self.arena, o) != SH_OWNER_LIVE:
                continue
            if sh_owner_info(self.arena, o, &oi) != SH_OK:
                continue
            # this process's agents, and the heap's (detached: no process's)
            if (oi.state != SH_OWNER_LIVE or (oi.pid != pid and oi.pid != 0) or oi.pins or not oi.bytes[part]
                    or oi.last_active_ns > active_before_ns):
                continue
            out.append((oi.bytes[part] < page, oi.last_active_ns, o, oi.generation))
        return out

    def _owner_detach(self, uint32_t oid, uint32_t gen):
        """Give the owner to the heap: no sweep reclaims it for a dead process."""
        self._check_writable()
        cdef int rc = sh_owner_detach(self.arena, oid, gen)
        if rc == SH_EOWNER:
            raise stale_agent(oid, gen)
        if rc:
            _raise(rc)

    def _owner_adopt_orphan(self, uint32_t oid, uint32_t gen):
        """Make the owner this process's if its own process died; True if it did."""
        self._check_writable()
        cdef int adopted = 0
        cdef int rc = sh_owner_adopt_orphan(self.arena, oid, gen, &adopted)
        if rc == SH_EOWNER:
            raise stale_agent(oid, gen)
        if rc:
            _raise(rc)
        return bool(adopted)

    def _max_owners(self):
        self._check_open()
        cdef sh_arena_info_t info
        sh_arena_info(self.arena, &info)
        return info.max_owners

    # ---- sweep queues and thread caches ----------------------------------

    def _sweep_push(self, int ring, uint32_t oid, uint32_t gen):
        """Queue an owner as young (ring 0) or middle-aged (1); False if full."""
        self._check_writable()
        cdef int rc = sh_sweep_push(self.arena, ring, oid, gen)
        if rc == SH_EFULL:
            return False
        if rc:
            _raise(rc)
        return True

    def _sweep_take(self, int ring, size_t limit):
        """Claim up to ``limit`` queued (id, generation) pairs, exclusively;
        those whose slot was recycled since they were queued are dropped."""
        self._check_writable()
        cdef uint64_t[::1] buf = np.empty(max(limit, <size_t>1), dtype=np.uint64)
        cdef size_t taken = 0, i
        cdef int rc = sh_sweep_take(self.arena, ring, &buf[0], limit, &taken)
        if rc:
            _raise(rc)
        return [(<uint32_t>(buf[i] & 0xFFFFFFFF), <uint32_t>(buf[i] >> 32)) for i in range(taken)]

    def _sweep_pending(self, int ring):
        self._check_open()
        return sh_sweep_pending(self.arena, ring)

    def flush_thread_cache(self):
        """Give back the free blocks the calling thread caches in this heap.
        A thread's cache holds at most one page per (agent, partition, size
        class); it is given back on its own when the thread exits or the heap
        is closed, and this thread's cache also when a partition fills."""
        self._check_open()
        if self.read_only:
            return  # a read-only view never allocates, so it caches nothing
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            sh_thread_flush(arena)
        self.inflight -= 1

    def _reclaim_dead_threads(self):
        """Free the channel messages that threads of processes that died held
        mid-send or mid-receive, then give back their thread caches:
        (messages, thread slots)."""
        self._check_writable()
        cdef uint32_t n = 0
        cdef uint64_t messages = 0
        cdef int rc
        cdef sh_arena_t *arena = self.arena
        self.inflight += 1
        with nogil:
            rc = sh_chan_reclaim_dead(arena, &messages)  # first: the slots hold the record
            if rc == SH_OK:
                rc = sh_reclaim_dead_threads(arena, &n)
        self.inflight -= 1
        if rc:
            _raise(rc)
        return messages, n

    def _messages_in_hand(self):
        """Channel messages threads hold mid-send or mid-receive now."""
        self._check_open()
        return sh_chan_in_hand(self.arena)


def process_start_time(int pid):
    """When process ``pid`` started (clock ticks since boot, from /proc), 0
    if no such process runs, None if /proc cannot say: with the pid, what
    names a process across pid reuse, as the owner table records its owners."""
    cdef uint64_t start = 0
    cdef int rc = sh_process_start_time(pid, &start)
    if rc == SH_OK:
        return start
    return 0 if rc == SH_ENOENT else None


def process_alive(int pid, uint64_t start):
    """Is ``pid`` still the process that started at ``start`` (as
    process_start_time read it)? None if /proc cannot say. The rule the
    sweeps of dead owners, pins and thread caches follow."""
    cdef int rc = sh_process_alive(pid, start)
    return None if rc < 0 else bool(rc)
