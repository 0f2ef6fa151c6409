/* A channel's ring as it lies in its block of `comm` (see channel.c): its
 * own header so that the C tests can damage a ring field by field. */
#ifndef SH_CHANNEL_H
#define SH_CHANNEL_H

#include "sh_internal.h"

#define SH_CHAN_MAGIC UINT64_C(0x31304e4148434853) /* "SHCHAN01" */
#define SH_CHAN_MAX_CAPACITY (1u << 20)

typedef struct sh_chan_cell_s {
  uint64_t offset, size;
} sh_chan_cell_t;

typedef struct sh_chan_s {
  uint64_t magic;
  uint32_t capacity, id; /* id: random, never 0, in every handle's top bits */
  uint64_t max_message;
  sh_lock_t lock;
  _Atomic uint64_t ring;          /* head:32 | count:32, under the lock, one store per change */
  _Atomic uint32_t closed;
  _Atomic uint32_t not_empty;     /* futex words: bumped by a send (a close) ... */
  _Atomic uint32_t not_full;      /* ... and by a receive (a close) */
  _Atomic uint32_t sleepers;      /* waiters on either word: a wake is a syscall only when there are some */
  _Atomic uint64_t sent, received, bytes;
  sh_chan_cell_t cells[];
} sh_chan_t;

#endif
