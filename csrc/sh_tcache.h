/* Thread caches: the lookups the hot paths inline. The slot table's layout is
 * in sh_types.h, the slow paths (binding, flushing, sweeping dead processes)
 * in tcache.c, and their use by alloc.c and free.c. The magazines inside each
 * slot are sh_magazine.h's.
 *
 * Why a cache at all: a CAS on the page's stack head plus an atomic counter
 * add cost about 20 ns per alloc/free pair, more than mimalloc's whole pair.
 * A thread that claims a page pops and pushes its own stack of that page's
 * blocks with plain loads and stores (mimalloc's local free list). Why the
 * slot is in the arena rather than in the thread: a process that dies takes
 * its threads with it, and the blocks they held as free would be lost to every
 * other process; in the arena a sweep finds them and gives them back. */
#ifndef SH_TCACHE_H
#define SH_TCACHE_H

#include <sched.h>

#include "sh_internal.h"

typedef struct sh_tc_binding_s {
  const sh_arena_t *arena; /* compared, never followed: the handle may be closed */
  uint64_t instance;
  sh_tslot_t *slot;        /* NULL: no slot was free; retry after `retry` misses */
  uint32_t slot_index;
  uint32_t retry;
} sh_tc_binding_t;

#define SH_TC_BINDINGS 4
extern _Thread_local sh_tc_binding_t _sh_tc_tls[SH_TC_BINDINGS] sh_internal sh_tls_fast;

/* ---- tcache.c ---- */
sh_internal sh_tslot_t *_sh_tc_bind(sh_arena_t *arena, bool create);
sh_internal void _sh_tc_register(sh_arena_t *arena);
sh_internal void _sh_tc_close(sh_arena_t *arena);
/* Slot i, taken from its dead process for a sweep: the pid it was bound
 * to if the slot was bound and that process is dead (pid and start time),
 * with the slot left FLUSHING (the caller's, to release or to give back
 * with _sh_tc_unclaim); else 0, the slot untouched. The verdict is checked
 * again once the slot is the caller's: fields read while the slot changed
 * hands (reclaimed by another sweeper and bound by a live process between
 * the reads) could name the live process's pid with the dead one's start,
 * and the live thread's cache and message in hand were taken. */
sh_internal int32_t _sh_tc_claim_dead(sh_arena_t *arena, uint32_t i);
/* Gives a claimed slot back to its (dead) binding, for a later sweep. */
sh_internal void _sh_tc_unclaim(sh_arena_t *arena, uint32_t i);
sh_internal void _sh_tc_way_flush(sh_arena_t *arena, sh_tc_entry_t *entry, int way);
sh_internal void _sh_tc_entry_flush(sh_arena_t *arena, sh_tc_entry_t *entry);
/* Gives a cached run back to its partition (takes the partition lock). */
sh_internal void _sh_tc_run_flush(sh_arena_t *arena, sh_tc_run_t *run);
/* Gives back the calling thread's magazines, runs and cached pages of one
 * partition: a full partition's last resort before it says so. */
sh_internal void _sh_tc_flush_partition(sh_arena_t *arena, sh_tslot_t *slot, int partition);
sh_internal uint32_t _sh_tc_next_claim(const sh_arena_t *arena, sh_tslot_t *slot, int way);
/* The way caching page `pi` for its claimer, or NULL; for stats and checks. */
sh_internal const sh_tc_way_t *_sh_tc_holder(const sh_arena_t *arena, uint32_t pi, const sh_tc_entry_t **entry);

static inline sh_tslot_t *_sh_tc_slot_at(const sh_arena_t *a, uint32_t i) {
  return (sh_tslot_t *)(a->tslots + (uint64_t)i * a->tslot_size);
}
static inline sh_tc_entry_t *_sh_tc_entries(sh_tslot_t *s) { return (sh_tc_entry_t *)(s + 1); }
static inline _Atomic uint64_t *_sh_tc_counters(const sh_arena_t *a, sh_tslot_t *s) {
  return (_Atomic uint64_t *)(_sh_tc_entries(s) + a->tc_mask + 1);
}
static inline uint32_t _sh_tc_slot_index(const sh_arena_t *a, const sh_tslot_t *s) {
  return (uint32_t)(((const uint8_t *)s - a->tslots) / a->tslot_size);
}

/* The slot's magazine of (partition, class); only for c < a->mag_classes. */
static inline sh_mag_t *_sh_tc_mag(const sh_arena_t *a, sh_tslot_t *s, int part, int c) {
  return (sh_mag_t *)((uint8_t *)s + a->mag_off + (((uint64_t)part * a->mag_classes + (uint32_t)c) << a->mag_shift));
}

/* The calling thread's slot in this arena; binds one when `create`. */
static inline sh_tslot_t *_sh_tc_slot(sh_arena_t *a, bool create) {
  sh_tc_binding_t *b = &_sh_tc_tls[0];
  if (sh_likely(b->arena == a && b->instance == a->instance && b->slot)) return b->slot;
  return _sh_tc_bind(a, create);
}

static inline uint32_t _sh_tc_key(uint32_t owner, int part, int c) {
  return owner << 8 | (uint32_t)part << 6 | (uint32_t)c;
}

/* Owner 0's classes map one to one; other owners are spread by a multiplier. */
static inline sh_tc_entry_t *_sh_tc_entry(const sh_arena_t *a, sh_tslot_t *s, uint32_t owner, int part,
                                          int c) {
  uint32_t idx = ((uint32_t)part * a->nclasses + (uint32_t)c + owner * 0x9E3779B1u) & a->tc_mask;
  return &_sh_tc_entries(s)[idx];
}

/* Only the slot's thread writes its counters: a plain increment, no lock prefix. */
static inline void _sh_tc_count(const sh_arena_t *a, sh_tslot_t *s, int is_free, int part, int c) {
  _Atomic uint64_t *n = &_sh_tc_counters(a, s)[_sh_counter_index(a, is_free, part, c)];
  sh_atomic_store_relaxed(n, sh_atomic_load_relaxed(n) + 1);
}

/* The hot paths count in the entry, on the cache line they touch anyway; the
 * 32-bit figures move to the slot's counters before they could wrap and
 * whenever the entry changes key. */
sh_internal void _sh_tc_fold(const sh_arena_t *arena, sh_tslot_t *slot, sh_tc_entry_t *entry);
static inline void _sh_tc_count_entry(const sh_arena_t *a, sh_tslot_t *s, sh_tc_entry_t *e,
                                      _Atomic uint32_t *n) {
  uint32_t v = sh_atomic_load_relaxed(n) + 1;
  sh_atomic_store_relaxed(n, v);
  if (sh_unlikely(v >= (1u << 31))) _sh_tc_fold(a, s, e);
}

#endif
