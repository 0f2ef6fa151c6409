/* Channels: a bounded MPMC queue of message offsets in a block of `comm`.
 *
 * Senders and receivers each have a process-shared robust mutex, and the
 * position each side moves (the tail for senders, the head for receivers)
 * is one word changed by one store under its lock: a process killed while
 * holding either lock leaves a ring the next locker can use as it is
 * (EOWNERDEAD needs no repair). A lock is held for a few loads and stores,
 * never across a wait, and a sender and a receiver do not wait for each
 * other's. Waits sleep on futex words (not private: other processes wake
 * them) after a short spin, because a receiver that is about to be fed
 * should not pay a sleep and a wake-up. We chose a lock over a lock-free ring (Vyukov's
 * per-cell sequence numbers) because a process killed between claiming a
 * cell and publishing it wedges that ring for every other process, and
 * telling a dead claimer from a slow one needs more than a sequence number. */
#include <string.h>

#include "sh_channel.h"
#include "sh_tcache.h"

#define SH_CHAN_SPIN 2000

static uint64_t sh_chan_bytes(uint32_t capacity) {
  return sizeof(sh_chan_t) + (uint64_t)sh_chan_slots(capacity) * sizeof(sh_chan_cell_t);
}

/* Bytes of the live block that starts at `off` (0: no block starts there).
 * A ring's cells are bounded by this, not by the mapping: a damaged capacity
 * that still fit the arena sent a sender's stores into the blocks after the
 * ring. */
static uint64_t sh_chan_block_bytes(const sh_arena_t *a, uint64_t off) {
  sh_block_info_t info;
  return sh_block_info(a, off, &info) == SH_OK ? info.usable_size : 0;
}

/* The channel a handle names, checked against the mapping: a damaged or
 * foreign offset is SH_EBADPTR, never followed, and so is a handle whose id
 * is not the ring's (its channel was unlinked and another took its place).
 * The capacity is read once, checked, and used from *capacity after: a ring
 * header changed under the caller cannot send its cell index out of the
 * block that was checked. */
static int sh_chan_at(const sh_arena_t *a, uint64_t chan, sh_chan_t **out, uint32_t *capacity) {
  uint64_t off = sh_chan_offset(chan);
  if (off == 0 || off % 64 || off >= a->size || a->size - off < sizeof(sh_chan_t))
    return _sh_fail(SH_EBADPTR, "offset %llu is not a channel", (unsigned long long)off);
  sh_chan_t *c = (sh_chan_t *)(a->base + off);
  uint32_t cap = sh_word_load_relaxed(&c->capacity);
  if (c->magic != SH_CHAN_MAGIC || cap == 0 || cap > SH_CHAN_MAX_CAPACITY ||
      sh_chan_block_bytes(a, off) < sh_chan_bytes(cap))
    return _sh_fail(SH_EBADPTR, "offset %llu is not a channel (unlinked, or damaged)", (unsigned long long)off);
  if (c->id != (uint32_t)(chan >> SH_CHAN_ID_SHIFT))
    return _sh_fail(SH_EBADPTR, "the channel at offset %llu was unlinked: the ring there now is another channel's",
                    (unsigned long long)off);
  *out = c;
  *capacity = cap;
  return SH_OK;
}

static void sh_cell_put(sh_chan_cell_t *cell, uint64_t msg, uint64_t size, uint64_t tag) {
  uint64_t low = tag & SH_CHAN_TAG_MASK;
  cell->offset = msg | (tag ? (low & 0xFFFFu) << SH_CHAN_CELL_BITS : 0);
  cell->size = size | (tag ? (low >> 16) << SH_CHAN_CELL_BITS | SH_CHAN_CELL_TAGGED : 0);
}

/* The cell's message; *tagged and *tag say whether it carries a tag, and which. */
static void sh_cell_get(const sh_chan_cell_t *cell, uint64_t *msg, uint64_t *size, bool *tagged, uint64_t *tag) {
  uint64_t off = cell->offset, sz = cell->size;
  *msg = off & SH_CHAN_CELL_LOW;
  *size = sz & SH_CHAN_CELL_LOW;
  *tagged = (sz & SH_CHAN_CELL_TAGGED) != 0;
  *tag = (off >> SH_CHAN_CELL_BITS) | ((sz & ~SH_CHAN_CELL_TAGGED) >> SH_CHAN_CELL_BITS) << 16;
}

/* A tagged message whose block is not the one it was sent with: its lease
 * ran out and a sweep freed it (maybe someone has the place since). One
 * still there gives its whole tag (*full, when asked), which its receiver's
 * Block keeps so that a later reclaim by the lease is found on use, not
 * written through. */
static bool sh_cell_gone(sh_arena_t *a, uint64_t msg, bool tagged, uint64_t tag, uint64_t *full) {
  return tagged && !_sh_block_tag_low_is(a, msg, tag, SH_CHAN_TAG_MASK, full);
}

/* A purge's mark on a gone message's cell: offset 0 (no block), its TAGGED
 * bit kept, so that every reader drops it; one store. */
static void sh_cell_mark_gone(sh_chan_cell_t *cell) { cell->offset = 0; }
static bool sh_cell_marked_gone(const sh_chan_cell_t *cell) {
  return (cell->offset & SH_CHAN_CELL_LOW) == 0 && (cell->size & SH_CHAN_CELL_TAGGED);
}

static void sh_chan_lock(sh_lock_t *lock) { (void)_sh_lock_acquire_repair(lock); /* one-store changes: nothing to repair */ }
static void sh_chan_unlock(sh_lock_t *lock) { pthread_mutex_unlock(&lock->mutex); }

/* Positions that count more messages than the ring holds (or fewer than
 * none): a sender would wait for room forever, a receiver take cells never
 * filled. */
static int sh_chan_count_damaged(uint64_t count, uint32_t capacity) {
  return _sh_fail(SH_ECORRUPT, "a channel's ring counts %llu messages in %u cells: it is damaged",
                  (unsigned long long)count, capacity);
}

/* The same, found with a side's lock held: given back first. */
static int sh_chan_damaged(sh_lock_t *held, uint64_t count, uint32_t capacity) {
  sh_chan_unlock(held);
  return sh_chan_count_damaged(count, capacity);
}

/* The messages queued, read without a lock: the head, the tail, the head
 * again, until the head held still across the tail's read (then tail - head
 * is a count the ring had: the tail can pass head + capacity only after
 * the head moved). False if it never held still: receivers are busy. */
static bool sh_chan_count(sh_chan_t *c, uint64_t *count) {
  for (int attempt = 0; attempt < 16; attempt++) {
    uint64_t head = sh_atomic_load_acquire(sh_chan_head(c));
    uint64_t tail = sh_atomic_load_acquire(sh_chan_tail(c));
    if (sh_atomic_load_acquire(sh_chan_head(c)) == head) {
      *count = tail - head;
      return true;
    }
  }
  return false;
}

/* A waiter spins on the futex word it would sleep on (the other side bumps
 * it with each change of the ring) and comes back for the lock only when the
 * word moved from `seen`, or the channel closed. Spinning on the lock made
 * each send contend with the receiver's spin (a contended robust mutex is a
 * futex syscall on both sides); spinning on the other side's position,
 * which shares its lock's line, took that line from the side working under
 * the lock on every read. The futex word's line is written by that side
 * alone, once per change, after it gave the lock back. Returns the spins
 * used. */
static int sh_chan_spin(sh_chan_t *c, int spin, bool want_room, uint32_t seen) {
  _Atomic uint32_t *word = want_room ? &c->receivers.wakes : &c->senders.wakes;
  for (; spin < SH_CHAN_SPIN; spin++) {
    if (sh_atomic_load_acquire(word) != seen || sh_atomic_load_relaxed(&c->closed)) break;
    sh_cpu_relax();
  }
  return spin;
}

/* One turn of a wait that found the ring unable to act (full for a sender,
 * empty for a receiver), `seen` its futex word read before it looked:
 * SH_ETIMEDOUT past the deadline; else a spin on that word first, then
 * SH_ECANCELED if the wait was called off (this process closing the heap, or
 * *cancel set), else a sleep until the word moves (SH_EINTR if a signal
 * cut it short: nothing was sent or received). SH_OK: look again. The
 * word is read before the flags and a caller of sh_chan_call_off sets its
 * flag, then moves the word, then wakes: the waiter sees the flag or finds
 * the word moved. */
static int sh_chan_await(const sh_arena_t *a, sh_chan_t *c, bool want_room, uint32_t seen,
                         int64_t timeout_ns, int64_t deadline, int *spin, const uint32_t *cancel) {
  if (timeout_ns == 0 || _sh_past(deadline))
    return _sh_fail(SH_ETIMEDOUT, want_room ? "the channel stayed full" : "the channel stayed empty");
  if (*spin < SH_CHAN_SPIN) {
    *spin = sh_chan_spin(c, *spin, want_room, seen);
    return SH_OK;
  }
  if (sh_atomic_load_acquire(&a->waits_called_off))
    return _sh_fail(SH_ECANCELED, "the heap is being closed in this process");
  if (cancel && sh_word_load_acquire(cancel)) return _sh_fail(SH_ECANCELED, "the wait was called off");
  _Atomic uint32_t *word = want_room ? &c->receivers.wakes : &c->senders.wakes;
  sh_atomic_add_seq_cst(&c->sleepers, 1u);
  bool interrupted = _sh_futex_wait(word, seen, deadline);
  sh_atomic_sub_relaxed(&c->sleepers, 1u);
  return interrupted ? _sh_fail(SH_EINTR, "a signal interrupted the wait") : SH_OK;
}

/* The bump releases the change before it (a waiter that reads the moved
 * word and then the ring unlocked, sh_chan_ready, sees the change), and with
 * the waiter's count of sleepers is a Dekker pair: either the waiter's
 * futex wait sees the word moved, or this sees the sleeper and wakes it. */
static void sh_futex_wake(sh_chan_t *c, _Atomic uint32_t *word) {
  sh_atomic_add_seq_cst(word, 1u);
  if (sh_atomic_load_seq_cst(&c->sleepers)) _sh_futex_wake(word);
}

/* Before a wait (a send or receive that found the ring unable to act and
 * gave its lock back, or sh_chan_wait): the futex word the wait would sleep
 * on, read before the ring is looked at, so that a change between the two
 * moves the word and the sleep returns at once; and the ring's count (0 if
 * the positions never held still). True if the ring can act, may have
 * moved, or the channel closed: look again without waiting. The word is the
 * other side's, so it is read only here, not on every call. */
static bool sh_chan_ready(sh_chan_t *c, uint32_t capacity, bool want_room, uint32_t *seen, uint64_t *count) {
  *seen = sh_atomic_load_acquire(want_room ? &c->receivers.wakes : &c->senders.wakes);
  *count = 0;
  if (!sh_chan_count(c, count)) return true;
  return (want_room ? *count < capacity : *count > 0) || sh_atomic_load_acquire(&c->closed);
}

/* Bytes sent and not yet received: the receivers' count is read first, so
 * that the senders' (read after it) counts at least every byte it counts. */
static uint64_t sh_chan_bytes_in_flight(const sh_chan_t *c) {
  uint64_t out = sh_atomic_load_acquire(&c->receivers.bytes);
  return sh_atomic_load_acquire(&c->senders.bytes) - out;
}

int sh_chan_create(sh_arena_t *a, uint32_t capacity, uint64_t max_message, uint64_t *chan) {
  if (capacity == 0 || capacity > SH_CHAN_MAX_CAPACITY)
    return _sh_fail(SH_EINVAL, "a channel's capacity is 1 to %u messages, not %u", SH_CHAN_MAX_CAPACITY, capacity);
  uint64_t off;
  /* at least 4 KiB: blocks from there on are 64-byte aligned, as the lock wants */
  uint64_t bytes = sh_chan_bytes(capacity) < 4096 ? 4096 : sh_chan_bytes(capacity);
  int rc = sh_calloc(a, SH_OWNER_DEFAULT, SH_PART_COMM, bytes, &off);
  if (rc) return rc;
  sh_chan_t *c = (sh_chan_t *)(a->base + off);
  c->capacity = capacity;
  c->max_message = max_message;
  c->id = (_sh_os_random32() & 0xFFFFu) | 1u; /* 16 bits: a stale handle fits a new ring 1 time in 32 768 */
  rc = _sh_lock_init(&c->send_lock);
  if (!rc) rc = _sh_lock_init(&c->recv_lock);
  if (rc) {
    sh_free(a, off);
    return rc;
  }
  sh_word_store_release(&c->magic, SH_CHAN_MAGIC);
  *chan = off | (uint64_t)c->id << SH_CHAN_ID_SHIFT;
  return SH_OK;
}

int sh_chan_send(sh_arena_t *a, uint64_t chan, uint64_t msg, uint64_t size, int64_t timeout_ns) {
  sh_chan_t *c;
  uint32_t capacity;
  int rc = sh_chan_at(a, chan, &c, &capacity);
  if (rc) return rc;
  if (size > c->max_message)
    return _sh_fail(SH_EINVAL, "a message of %llu bytes is over the channel's %llu", (unsigned long long)size,
                    (unsigned long long)c->max_message);
  if (msg > SH_CHAN_CELL_LOW || size > SH_CHAN_CELL_LOW)
    return _sh_fail(SH_EBADPTR, "offset %llu is not a block of this heap", (unsigned long long)msg);
  /* a leased block may be freed while it waits in the ring: its tag goes with it */
  uint64_t tag = _sh_block_lease_tag(a, msg);
  int64_t deadline = _sh_deadline_ns(timeout_ns);
  for (int spin = 0;; spin++) {
    if (sh_atomic_load_acquire(&c->closed)) return _sh_fail(SH_ECLOSED, "the channel is closed");
    sh_chan_lock(&c->send_lock);
    uint64_t tail = sh_atomic_load_relaxed(sh_chan_tail(c));
    uint64_t head = sh_atomic_load_relaxed(&c->senders.other);
    if (tail - head >= capacity) { /* full as last seen, or that look is damaged: look again */
      /* acquire: the receives that moved it had read their cells */
      head = sh_atomic_load_acquire(sh_chan_head(c));
      sh_atomic_store_relaxed(&c->senders.other, head);
    }
    uint64_t count = tail - head;
    if (sh_unlikely(count > capacity)) return sh_chan_damaged(&c->send_lock, count, capacity);
    if (count < capacity && !sh_atomic_load_relaxed(&c->closed)) { /* a close sets it under this lock */
      sh_chan_cell_t *cell = &c->cells[tail & (sh_chan_slots(capacity) - 1)];
      sh_cell_put(cell, msg, size, tag);
      /* out of this thread's hands just before the ring has it: killed
       * between the two, the message is lost (one block), never freed by a
       * sweep while a receiver may take it */
      sh_chan_unhold(a, msg);
      sh_atomic_store_release(sh_chan_tail(c), tail + 1); /* the one store that publishes */
      sh_chan_unlock(&c->send_lock);
      sh_atomic_add_relaxed(&c->senders.messages, 1u);
      sh_atomic_add_relaxed(&c->senders.bytes, size);
      sh_futex_wake(c, &c->senders.wakes);
      return SH_OK;
    }
    sh_chan_unlock(&c->send_lock);
    uint32_t seen;
    uint64_t count_now; /* a damaged count is found under the lock, on the next turn */
    if (sh_chan_ready(c, capacity, true, &seen, &count_now)) continue;
    rc = sh_chan_await(a, c, true, seen, timeout_ns, deadline, &spin, NULL);
    if (rc) return rc;
  }
}

/* ---- Messages in a thread's hands ------------------------------------------------
 * A message between its block's allocation and the ring (a sender filling
 * it, or waiting for room), or between the ring and its receiver's Block, is
 * named by nothing but the thread: its slot records it (in_hand), so that a
 * sweep that finds the process dead frees it. Set before the block leaves
 * the ring or after it is filled; cleared before it enters the ring (under
 * the senders' lock) or once the receiver owns it. */

int sh_chan_hold(sh_arena_t *a, uint64_t msg) {
  sh_tslot_t *s = _sh_tc_slot(a, msg != 0);
  if (s) sh_atomic_store_release(&s->in_hand, msg);
  return SH_OK;
}

void sh_chan_unhold(sh_arena_t *a, uint64_t msg) {
  sh_tslot_t *s = _sh_tc_slot(a, false);
  if (s && sh_atomic_load_relaxed(&s->in_hand) == msg) sh_atomic_store_release(&s->in_hand, 0);
}

int sh_chan_reclaim_dead(sh_arena_t *a, uint64_t *blocks) {
  *blocks = 0;
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  for (uint32_t i = 0; i < a->nslots; i++) {
    if (sh_atomic_load_acquire(&_sh_tc_slot_at(a, i)->in_hand) == 0 || _sh_tc_claim_dead(a, i) == 0) continue;
    /* exactly once across sweepers (the claim makes it so; the exchange
     * too): whoever takes the word frees it. The slot goes back to its dead
     * binding, which sh_reclaim_dead_threads then releases. */
    uint64_t msg = sh_atomic_exchange_acq_rel(&_sh_tc_slot_at(a, i)->in_hand, 0);
    _sh_tc_unclaim(a, i);
    sh_block_info_t info;
    if (msg == 0 || sh_block_info(a, msg, &info) != SH_OK || info.owner != SH_OWNER_DEFAULT ||
        info.partition != SH_PART_COMM)
      continue; /* not a message block (damaged): not followed */
    if (sh_free(a, msg) == SH_OK) ++*blocks;
  }
  return SH_OK;
}

uint32_t sh_chan_in_hand(const sh_arena_t *a) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < a->nslots; i++) n += sh_atomic_load_acquire(&_sh_tc_slot_at(a, i)->in_hand) != 0;
  return n;
}

static int sh_chan_take(sh_arena_t *a, uint64_t chan, uint64_t *msg, uint64_t *size, int64_t timeout_ns,
                        bool hold, sh_block_info_t *info, uint64_t *tag_out);

int sh_chan_recv(sh_arena_t *a, uint64_t chan, uint64_t *msg, uint64_t *size, int64_t timeout_ns) {
  return sh_chan_take(a, chan, msg, size, timeout_ns, false, NULL, NULL);
}

int sh_chan_recv_held(sh_arena_t *a, uint64_t chan, uint64_t *msg, uint64_t *size, int64_t timeout_ns,
                      sh_block_info_t *info, uint64_t *tag) {
  return sh_chan_take(a, chan, msg, size, timeout_ns, true, info, tag);
}

static int sh_chan_take(sh_arena_t *a, uint64_t chan, uint64_t *msg, uint64_t *size, int64_t timeout_ns,
                        bool hold, sh_block_info_t *info, uint64_t *tag_out) {
  sh_chan_t *c;
  uint32_t capacity;
  int rc = sh_chan_at(a, chan, &c, &capacity);
  if (rc) return rc;
  int64_t deadline = _sh_deadline_ns(timeout_ns);
  for (int spin = 0;; spin++) {
    sh_chan_lock(&c->recv_lock);
    uint64_t head = sh_atomic_load_relaxed(sh_chan_head(c));
    uint64_t tail = sh_atomic_load_relaxed(&c->receivers.other);
    if (tail - head - 1 >= capacity) { /* empty as last seen (or behind a purge, or damaged): look again */
      /* acquire: the sends that moved it had filled their cells */
      tail = sh_atomic_load_acquire(sh_chan_tail(c));
      sh_atomic_store_relaxed(&c->receivers.other, tail);
    }
    uint64_t count = tail - head;
    if (sh_unlikely(count > capacity)) return sh_chan_damaged(&c->recv_lock, count, capacity);
    if (count > 0) {
      bool tagged;
      uint64_t tag;
      sh_cell_get(&c->cells[head & (sh_chan_slots(capacity) - 1)], msg, size, &tagged, &tag);
      sh_atomic_store_release(sh_chan_head(c), head + 1); /* release: a sender reuses the cell only after */
      if (hold) sh_chan_hold(a, *msg); /* killed between the two stores, the message is lost, never doubled */
      sh_chan_unlock(&c->recv_lock);
      sh_atomic_add_relaxed(&c->receivers.bytes, *size);
      sh_futex_wake(c, &c->receivers.wakes);
      uint64_t full = 0; /* stays 0 for a message sent without a lease */
      bool gone = sh_cell_gone(a, *msg, tagged, tag, &full);
      if (!gone && info &&
          (sh_block_info(a, *msg, info) != SH_OK || info->owner != SH_OWNER_DEFAULT || *size > info->usable_size)) {
        /* a leased block that passed its tag check a moment ago was freed
         * since by its lease; any other message that is not a block of the
         * shared default is a damaged ring, not followed */
        gone = tagged;
        if (!gone) {
          if (hold) sh_chan_unhold(a, *msg); /* not a block: nothing for a sweep to free */
          return _sh_fail(SH_ECORRUPT, "a channel message names offset %llu (%llu bytes), which is not a block of "
                          "the shared default", (unsigned long long)*msg, (unsigned long long)*size);
        }
      }
      if (gone) {
        if (hold) sh_chan_unhold(a, *msg);
        continue; /* a lease took it: not a message any more, the next one is */
      }
      sh_atomic_add_relaxed(&c->receivers.messages, 1u);
      if (tag_out) *tag_out = full;
      return SH_OK;
    }
    sh_chan_unlock(&c->recv_lock);
    if (sh_atomic_load_acquire(&c->closed)) {
      /* a send that had the senders' lock before the close may have queued
       * since this looked; none can after (acquire: the close was made
       * under that lock), so a ring empty now stays empty */
      uint64_t head_now = sh_atomic_load_acquire(sh_chan_head(c));
      if (sh_atomic_load_acquire(sh_chan_tail(c)) == head_now)
        return _sh_fail(SH_ECLOSED, "the channel is closed and drained");
      continue;
    }
    uint32_t seen;
    uint64_t count_now; /* a damaged count is found under the lock, on the next turn */
    if (sh_chan_ready(c, capacity, false, &seen, &count_now)) continue;
    rc = sh_chan_await(a, c, false, seen, timeout_ns, deadline, &spin, NULL);
    if (rc) return rc;
  }
}

int sh_chan_close(sh_arena_t *a, uint64_t chan) {
  sh_chan_t *c;
  uint32_t capacity;
  int rc = sh_chan_at(a, chan, &c, &capacity);
  if (rc) return rc;
  /* under the senders' lock: a send either queued before it or finds it set */
  sh_chan_lock(&c->send_lock);
  sh_atomic_store_release(&c->closed, 1u);
  sh_chan_unlock(&c->send_lock);
  sh_atomic_add_relaxed(&c->sleepers, 1u); /* so that both wakes are syscalls */
  sh_futex_wake(c, &c->senders.wakes);
  sh_futex_wake(c, &c->receivers.wakes);
  sh_atomic_sub_relaxed(&c->sleepers, 1u);
  return SH_OK;
}

int sh_chan_wait(sh_arena_t *a, uint64_t chan, int want_room, int64_t timeout_ns, const uint32_t *cancel) {
  sh_chan_t *c;
  uint32_t capacity;
  int rc = sh_chan_at(a, chan, &c, &capacity);
  if (rc) return rc;
  int64_t deadline = _sh_deadline_ns(timeout_ns);
  for (int spin = 0;; spin++) {
    uint32_t seen;
    uint64_t count;
    bool ready = sh_chan_ready(c, capacity, want_room != 0, &seen, &count);
    if (sh_unlikely(count > capacity)) return sh_chan_count_damaged(count, capacity);
    if (ready) return SH_OK;
    rc = sh_chan_await(a, c, want_room != 0, seen, timeout_ns, deadline, &spin, cancel);
    if (rc) return rc;
  }
}

void sh_chan_call_off(sh_arena_t *a, uint64_t chan, uint32_t *cancel) {
  if (cancel) sh_word_store_release(cancel, 1u);
  sh_chan_t *c;
  uint32_t capacity;
  if (a->read_only || sh_chan_at(a, chan, &c, &capacity) != SH_OK) return; /* no channel there: no waiter on it */
  /* release: a waiter that reads the moved word sees the flag set before it */
  sh_atomic_add_acq_rel(&c->senders.wakes, 1u);
  sh_atomic_add_acq_rel(&c->receivers.wakes, 1u);
  _sh_futex_wake(&c->senders.wakes);
  _sh_futex_wake(&c->receivers.wakes);
}

int sh_chan_stats(const sh_arena_t *a, uint64_t chan, sh_chan_stats_t *st) {
  sh_chan_t *c;
  uint32_t capacity;
  int rc = sh_chan_at(a, chan, &c, &capacity);
  if (rc) return rc;
  memset(st, 0, sizeof *st);
  st->capacity = capacity;
  st->max_message = c->max_message;
  st->sent = sh_atomic_load_relaxed(&c->senders.messages);
  st->received = sh_atomic_load_relaxed(&c->receivers.messages);
  st->closed = (int)sh_atomic_load_relaxed(&c->closed);
  if (a->read_only) { /* no lock to take: the counters as they are */
    uint64_t count = capacity;
    (void)sh_chan_count(c, &count);
    st->depth = count > capacity ? capacity : (uint32_t)count;
    st->bytes_in_flight = sh_chan_bytes_in_flight(c);
    return SH_OK;
  }
  /* the messages a purge marked gone behind a live one are not in flight;
   * with the receivers' lock, the cells from head to tail stay as they are */
  sh_chan_lock(&c->recv_lock);
  uint64_t head = sh_atomic_load_relaxed(sh_chan_head(c));
  uint64_t count = sh_atomic_load_acquire(sh_chan_tail(c)) - head;
  uint32_t gone = 0;
  uint64_t gone_bytes = 0;
  for (uint64_t i = 0; count <= capacity && i < count; i++) {
    const sh_chan_cell_t *cell = &c->cells[(head + i) & (sh_chan_slots(capacity) - 1)];
    if (sh_cell_marked_gone(cell)) {
      gone++;
      gone_bytes += cell->size & SH_CHAN_CELL_LOW;
    }
  }
  st->bytes_in_flight = sh_chan_bytes_in_flight(c) - gone_bytes;
  sh_chan_unlock(&c->recv_lock);
  st->depth = count > capacity ? capacity : (uint32_t)(count - gone);
  return SH_OK;
}

int sh_chan_purge(sh_arena_t *a, uint64_t chan, uint32_t *dropped) {
  sh_chan_t *c;
  uint32_t capacity;
  *dropped = 0;
  int rc = sh_chan_at(a, chan, &c, &capacity);
  if (rc) return rc;
  sh_chan_lock(&c->recv_lock);
  uint64_t head = sh_atomic_load_relaxed(sh_chan_head(c));
  uint64_t count = sh_atomic_load_acquire(sh_chan_tail(c)) - head;
  uint32_t leading = 0;
  if (sh_unlikely(count > capacity)) return sh_chan_damaged(&c->recv_lock, count, capacity);
  uint64_t leading_bytes = 0;
  /* Each change is one store, as everywhere in the ring, so a purger killed
   * half way leaves a ring the next locker uses as it is: a gone message's
   * cell is marked (sh_cell_mark_gone), and the head moves past those at the
   * front in one store.
   * Gone messages behind a live one stay in the ring until a receiver
   * passes them; sh_chan_stats does not count them. */
  for (uint64_t i = 0; i < count; i++) {
    sh_chan_cell_t *cell = &c->cells[(head + i) & (sh_chan_slots(capacity) - 1)];
    uint64_t msg, size, tag;
    bool tagged;
    sh_cell_get(cell, &msg, &size, &tagged, &tag);
    bool gone = sh_cell_gone(a, msg, tagged, tag, NULL);
    if (gone && !sh_cell_marked_gone(cell)) {
      sh_cell_mark_gone(cell);
      ++*dropped;
    }
    if (gone && leading == i) {
      leading++;
      leading_bytes += size;
    }
  }
  if (leading) sh_atomic_store_release(sh_chan_head(c), head + leading);
  sh_chan_unlock(&c->recv_lock);
  if (leading) {
    sh_atomic_add_relaxed(&c->receivers.bytes, leading_bytes); /* out of the ring, as if received */
    sh_futex_wake(c, &c->receivers.wakes);
  }
  return SH_OK;
}

int sh_chan_drain(sh_arena_t *a, uint64_t chan, void (*each)(uint64_t, uint64_t, void *), void *ctx) {
  sh_chan_t *c;
  uint32_t capacity;
  int rc = sh_chan_at(a, chan, &c, &capacity);
  if (rc) return rc;
  int n = 0;
  uint64_t msg, size;
  while (sh_chan_recv(a, chan, &msg, &size, 0) == SH_OK) {
    each(msg, size, ctx);
    n++;
  }
  return n;
}
