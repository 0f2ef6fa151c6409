/* Blocks an agent's index dropped while another process viewed its entries.
 *
 * A get() view is a zero-copy window on an entry's block. Within a process
 * the binding keeps the block until its views go; across processes, the
 * process that drops the entry (a put of the same name, a delete) cannot
 * see the other's views, only their count on the agent's pins
 * (sh_owner_views). So it records the block in the block table, marked
 * sh_after_views(its offload count), instead of freeing it; sh_views_reclaim frees it once the
 * agent has no entry views left in any process (called by the release of a
 * view, and by sweeps for viewers that died): a view never shows, or writes
 * into, a block handed to someone else.
 *
 * Between a view and a dropper the order is Dekker's: the viewer pins, then
 * reads the index word; the dropper swaps the word, then counts the views.
 * Both fence between, so either the viewer sees the new word (and lets its
 * view go) or the dropper counts the view (and records the block). */
#include <stdlib.h>

#include "sh_lease.h"

int sh_free_after_views(sh_arena_t *a, uint64_t offset, uint32_t id, uint32_t gen, uint32_t offloads) {
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  sh_block_info_t info;
  int rc = sh_block_info(a, offset, &info);
  if (rc) return rc;
  if (info.owner != id || info.owner_generation != gen || id == SH_OWNER_DEFAULT)
    return _sh_fail(SH_EOWNER, "block at offset %llu is not agent %u's (generation %u)",
                    (unsigned long long)offset, id, gen);
  sh_lease_lock(a);
  /* a quarter of the table at most: a view held while puts go on must not
   * fill it, and refuse every lease and handle tag in the heap */
  uint64_t limit = (a->lease_mask + 1) / 4;
  if (sh_atomic_load_relaxed(&a->hdr->after_views_count) >= limit) {
    sh_lease_unlock(a);
    return _sh_fail(SH_EFULL, "%llu dropped blocks already wait for views to go: this one stays until its "
                    "agent is recycled", (unsigned long long)limit);
  }
  uint64_t i;
  rc = _sh_entry_take_locked(a, &info, &i);
  if (rc == SH_OK) sh_entry_set_deadline(a, &a->leases[i], sh_after_views(offloads));
  sh_lease_unlock(a);
  return rc;
}

typedef struct sh_waiting_s {
  uint64_t key, deadline_ns;
  uint32_t owner, generation;
} sh_waiting_t;

/* Take the entry of `w` out of the table if it is still there as recorded:
 * whoever takes it is the one caller that frees the block. */
static bool sh_take_waiting(sh_arena_t *a, const sh_waiting_t *w) {
  sh_lease_lock(a);
  uint64_t i = sh_lease_find(a, w->key);
  const sh_lease_t *e = &a->leases[i];
  bool taken = e->key == w->key && e->owner == w->owner && e->generation == w->generation &&
               e->deadline_ns == w->deadline_ns;
  if (taken) sh_lease_delete_at(a, i);
  sh_lease_unlock(a);
  return taken;
}

int sh_views_reclaim(sh_arena_t *a, uint64_t *blocks, uint64_t *bytes) {
  *blocks = *bytes = 0;
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  uint64_t count = sh_atomic_load_relaxed(&a->hdr->after_views_count);
  if (count == 0) return SH_OK;
  /* room for the blocks waiting now and a few more recorded before the
   * lock is taken (any beyond wait for the next call), not for the whole
   * table: a view's release comes here whenever anything waits, and a
   * table-sized buffer was a quarter of a megabyte, mapped and unmapped */
  uint64_t cap = a->lease_mask + 1, n = 0, room = count + 64 < cap ? count + 64 : cap;
  sh_waiting_t *waiting = malloc(room * sizeof *waiting);
  if (!waiting) return _sh_fail(SH_ENOMEM, "out of process memory for a sweep of dropped entries");
  /* listed under the table's lock, looked at without it: counting views
   * takes the owner lock, and the two are never held together */
  sh_lease_lock(a);
  for (uint64_t i = 0; i < cap && n < room; i++) {
    const sh_lease_t *e = &a->leases[i];
    if (e->key != 0 && sh_deadline_after_views(e->deadline_ns))
      waiting[n++] = (sh_waiting_t){
          .key = e->key, .deadline_ns = e->deadline_ns, .owner = e->owner, .generation = e->generation};
  }
  sh_lease_unlock(a);
  /* a run of one agent's waiting blocks counts its views once (the owner
   * lock, and a probe of the pin table): a view opened since the count
   * cannot be on a block the agent's index dropped before it */
  uint32_t counted_owner = UINT32_MAX, counted_gen = 0, views = 0;
  bool counted = false;
  for (uint64_t k = 0; k < n; k++) {
    const sh_waiting_t *w = &waiting[k];
    uint64_t offset = w->key - 1;
    sh_block_info_t info;
    bool still = offset < a->size && sh_block_info(a, offset, &info) == SH_OK && info.owner == w->owner &&
                 info.owner_generation == w->generation;
    if (!still) { /* recycled with its agent (or freed): the entry is stale */
      sh_take_waiting(a, w);
      continue;
    }
    if (w->owner != counted_owner || w->generation != counted_gen) {
      counted = sh_owner_views(a, w->owner, w->generation, 0, &views) == SH_OK;
      counted_owner = w->owner;
      counted_gen = w->generation;
    }
    if (!counted || views != 0) continue;
    if (!sh_take_waiting(a, w)) continue; /* another sweep took it */
    /* of the incarnation that dropped it only: an offload since gave it
     * back, and the agent's restore may have it named again */
    if (sh_owner_free(a, offset, w->owner, w->generation, (uint32_t)w->deadline_ns) == SH_OK) {
      ++*blocks;
      *bytes += info.usable_size;
    }
  }
  free(waiting);
  return SH_OK;
}

uint64_t sh_after_views_count(const sh_arena_t *a) { return sh_atomic_load_relaxed(&a->hdr->after_views_count); }
