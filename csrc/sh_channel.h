/* A channel's ring as it lies in its block of `comm` (see channel.c): its
 * own header so that the C tests can damage a ring field by field. */
#ifndef SH_CHANNEL_H
#define SH_CHANNEL_H

#include "sh_internal.h"

#define SH_CHAN_MAGIC UINT64_C(0x31304e4148434853) /* "SHCHAN01" */
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
 * sender and a receiver on two cores meet here on every message: what a call
 * only reads (written at creation; `closed` once more, `sleepers` by a wait
 * that sleeps anyway) never moves between their caches; the lock and the ring
 * word it guards share a line, which moves once per call; each side's futex
 * word and counters stay in that side's cache, read by the other only before
 * a sleep or by a stats call. With the ring, the futex words and the counters
 * on one line apart from the lock's, each call took two lines from the other
 * core and wrote the second three more times after giving the lock back. */
typedef struct sh_chan_s {
  uint64_t magic;
  uint32_t capacity, id; /* id: random, never 0, in every handle's top bits */
  uint64_t max_message;
  _Atomic uint32_t closed;
  _Atomic uint32_t sleepers;      /* waiters on either futex word: a wake is a syscall only when there are some */
  sh_lock_t lock;                 /* the next line; its guarded word is the ring (sh_chan_ring) */
  struct {
    _Atomic uint32_t wakes;       /* a futex word: bumped by each of this side's changes (and a close) */
    _Atomic uint64_t messages, bytes; /* counted by this side: sent (received), and their bytes */
  } __attribute__((aligned(SH_CACHE_LINE))) senders, receivers;
  sh_chan_cell_t cells[] __attribute__((aligned(SH_CACHE_LINE)));
} sh_chan_t;

/* The ring word: head:32 | count:32, changed under the lock, one store per change. */
static inline _Atomic uint64_t *sh_chan_ring(sh_chan_t *c) { return &c->lock.guarded; }

#endif
