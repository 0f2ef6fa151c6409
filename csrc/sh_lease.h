/* The block table's primitives (see lease.c): open addressing by offset,
 * deletion by backward shift, under the table's robust lock. Inline here so
 * that the free path (free.c) forgets a freed block's entry without calling
 * up into lease.c, which frees expired blocks through the free path. */
#ifndef SH_LEASE_H
#define SH_LEASE_H

#include <stdlib.h>
#include <string.h>

#include "sh_internal.h"

/* The deadline of an agent's block dropped from its index while another
 * process viewed the agent's entries: freed when the views go, not by time.
 * The top half all ones (a time in ns gets there in the year 2554; a lease
 * that far is refused), the agent's offload count at the drop in the low
 * half: the free is of that incarnation's block only (sh_owner_free). */
#define SH_AFTER_VIEWS_MARK UINT64_C(0xFFFFFFFF00000000)
static inline uint64_t sh_after_views(uint32_t offloads) { return SH_AFTER_VIEWS_MARK | offloads; }
static inline bool sh_deadline_after_views(uint64_t deadline_ns) {
  return (deadline_ns & SH_AFTER_VIEWS_MARK) == SH_AFTER_VIEWS_MARK;
}

/* Whether entry `e`'s deadline is a lease's (a time), counted in lease_count. */
static inline bool sh_entry_leased(const sh_lease_t *e) {
  return e->deadline_ns != 0 && !sh_deadline_after_views(e->deadline_ns);
}

/* Count entry `e` in (delta 1) or out of (delta -1) the header's tallies of its kind. */
static inline void sh_entry_tally(sh_arena_t *a, const sh_lease_t *e, int delta) {
  if (sh_entry_leased(e)) sh_atomic_add_relaxed(&a->hdr->lease_count, (uint64_t)(int64_t)delta);
  if (sh_deadline_after_views(e->deadline_ns)) sh_atomic_add_relaxed(&a->hdr->after_views_count, (uint64_t)(int64_t)delta);
}

/* Give entry `e` a new deadline (0, a time, sh_after_views()), moving it between the tallies. */
static inline void sh_entry_set_deadline(sh_arena_t *a, sh_lease_t *e, uint64_t deadline_ns) {
  sh_entry_tally(a, e, -1);
  e->deadline_ns = deadline_ns;
  sh_entry_tally(a, e, 1);
}

/* The entry of the live block `info` names, made if missing (lease.c). Lock held. */
sh_internal int _sh_entry_take_locked(sh_arena_t *a, const sh_block_info_t *info, uint64_t *index);

static inline uint64_t sh_lease_home(const sh_arena_t *a, uint64_t key) {
  return ((key >> SH_UNIT_SHIFT) * UINT64_C(0x9E3779B97F4A7C15)) >> 20 & a->lease_mask;
}

/* Index of the entry for `key`, or of the empty slot where it would go. */
static inline uint64_t sh_lease_find(const sh_arena_t *a, uint64_t key) {
  uint64_t i = sh_lease_home(a, key);
  /* bounded: a damaged table with no empty slot must not hang the caller */
  for (uint64_t steps = 0; steps <= a->lease_mask; steps++) {
    if (a->leases[i].key == 0 || a->leases[i].key == key) return i;
    i = (i + 1) & a->lease_mask;
  }
  return i;
}

static inline void sh_lease_delete_at(sh_arena_t *a, uint64_t i) {
  uint64_t j = i;
  for (uint64_t steps = 0; steps < a->lease_mask; steps++) {
    j = (j + 1) & a->lease_mask;
    if (a->leases[j].key == 0) break;
    uint64_t k = sh_lease_home(a, a->leases[j].key);
    bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j); /* k cyclically in (i, j] */
    if (stays) continue;
    a->leases[i] = a->leases[j];
    i = j;
  }
  sh_entry_tally(a, &a->leases[i], -1);
  memset(&a->leases[i], 0, sizeof a->leases[i]);
  sh_atomic_sub_relaxed(&a->hdr->entry_count, 1);
}

/* A holder that died mid-change may have left a key twice or out of place:
 * rebuild the table from its entries, keeping each key once. */
static inline void sh_lease_repair_locked(sh_arena_t *a) {
  uint64_t cap = a->lease_mask + 1, n = 0;
  sh_lease_t *copy = malloc(cap * sizeof *copy);
  if (!copy) return; /* keep what is there: lookups still terminate */
  for (uint64_t i = 0; i < cap; i++)
    if (a->leases[i].key) copy[n++] = a->leases[i];
  memset(a->leases, 0, cap * sizeof *a->leases);
  sh_atomic_store_relaxed(&a->hdr->lease_count, 0);
  sh_atomic_store_relaxed(&a->hdr->entry_count, 0);
  sh_atomic_store_relaxed(&a->hdr->after_views_count, 0);
  for (uint64_t k = 0; k < n; k++) {
    if (copy[k].key > a->size) continue; /* a damaged key names no block */
    uint64_t i = sh_lease_find(a, copy[k].key);
    if (a->leases[i].key) continue;
    a->leases[i] = copy[k];
    sh_atomic_add_relaxed(&a->hdr->entry_count, 1);
    sh_entry_tally(a, &copy[k], 1);
  }
  free(copy);
}

static inline void sh_lease_lock(sh_arena_t *a) {
  if (_sh_lock_acquire_repair(&a->hdr->lease_lock)) {
    sh_lease_repair_locked(a);
    pthread_mutex_consistent(&a->hdr->lease_lock.mutex);
  }
}
static inline void sh_lease_unlock(sh_arena_t *a) { pthread_mutex_unlock(&a->hdr->lease_lock.mutex); }



/* A freed block's entry goes with it: its lease must not free it again later. */
static inline void _sh_lease_forget(sh_arena_t *a, uint64_t offset) {
  if (a->read_only) return;
  sh_lease_lock(a);
  uint64_t i = sh_lease_find(a, offset + 1);
  if (a->leases[i].key != 0) sh_lease_delete_at(a, i);
  sh_lease_unlock(a);
}

#endif
