/* A channel's ring as it lies in its block of `comm` (see channel.c): its
 * own header so that the C tests can damage a ring field by field. */
#ifndef SH_CHANNEL_H
#define SH_CHANNEL_H

#include "sh_internal.h"

#define SH_CHAN_MAGIC UINT64_C(0x32304e4148434853) /* "SHCHAN02" */
#define SH_CHAN_MAX_CAPACITY (1u << 20)

/* A queued message: its block's offset and its size, each under 2^48. A
 * message whose block has a lease also carries 31 bits of the block's tag
 * (sh_block_tag), 16 above the offset and 15 above the size, under the
 * TAGGED bit: a lease that runs out frees the block while it is queued, and
 * the tag is how a receiver, or a purge, tells that block from a later one
 * at the same offset. The tag is unique for the arena's life; 31 bits of it
 * repeat only after 2^31 more tags were made while the message waited. */
typedef struct sh_chan_cell_s {
  uint64_t offset, size;
} sh_chan_cell_t;
#define SH_CHAN_CELL_BITS 48
#define SH_CHAN_CELL_LOW ((UINT64_C(1) << SH_CHAN_CELL_BITS) - 1)
#define SH_CHAN_CELL_TAGGED (UINT64_C(1) << 63)
#define SH_CHAN_TAG_MASK ((UINT64_C(1) << 31) - 1)

/* The header is laid out by who writes what, a cache line each, since a
 * sender and a receiver on two cores meet here on every message. The first
 * line is what a call only reads (written at creation; `closed` once more,
 * `sleepers` by a wait that sleeps anyway). Senders and receivers each have
 * a lock of their own, and the position they move sits on its lock's line:
 * the tail (where the next message goes) on the senders', the head (the
 * next message to take) on the receivers'. A sender and a receiver working
 * at once take no line from each other but the cells': each side's futex
 * word, counters and its last look at the other side's position stay on a
 * line of its own, and the other position is read again only when the one
 * it last saw leaves no room (no message). One lock for both sides moved
 * its line between the cores twice a message. */
typedef struct sh_chan_side_s {
  _Atomic uint32_t wakes;       /* a futex word: bumped by each of this side's changes (and a close) */
  _Atomic uint64_t other;       /* the other side's position as this side last read it (under its lock) */
  _Atomic uint64_t messages, bytes; /* counted by this side: sent (received), and their bytes */
} __attribute__((aligned(SH_CACHE_LINE))) sh_chan_side_t;

typedef struct sh_chan_s {
  uint64_t magic;
  uint32_t capacity, id; /* id: random, never 0, in every handle's top bits */
  uint64_t max_message;
  _Atomic uint32_t closed;
  _Atomic uint32_t sleepers;      /* waiters on either futex word: a wake is a syscall only when there are some */
  sh_lock_t send_lock;            /* its guarded word: the tail, a count of the messages ever queued */
  sh_lock_t recv_lock;            /* its guarded word: the head, a count of the messages ever taken */
  sh_chan_side_t senders, receivers;
  sh_chan_cell_t cells[] __attribute__((aligned(SH_CACHE_LINE)));
} sh_chan_t;

/* The ring's cells: the capacity rounded up to a power of two, so that a
 * position's cell is a mask away. The capacity (any count from 1) is the
 * bound on tail - head; the spare cells are never used at once. */
static inline uint32_t sh_chan_slots(uint32_t capacity) {
  return capacity <= 1 ? 1u : 1u << (32 - __builtin_clz(capacity - 1));
}

/* The positions: each changed under its side's lock, one store per change,
 * never back; tail - head is the messages queued, the cell of a position
 * is position mod the slots. */
static inline _Atomic uint64_t *sh_chan_tail(sh_chan_t *c) { return &c->send_lock.guarded; }
static inline _Atomic uint64_t *sh_chan_head(sh_chan_t *c) { return &c->recv_lock.guarded; }

#endif
