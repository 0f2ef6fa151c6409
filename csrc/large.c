/* Large blocks: runs of whole pages, and the thread cache of runs a thread
 * freed (kept for its next request of that many pages). Called from alloc.c,
 * free.c and nursery.c (its records' run); calls pages.c and the thread
 * caches only. */
#include "sh_page.h"

/* ----- The thread cache of page runs -------------------------------------------
 * A run the thread frees is kept (still LARGE, still its owner's, its claim
 * saying it is cached) for the thread's next request of that many pages: an
 * np.empty/del loop of large arrays then takes no lock. */

bool _sh_tc_take_run(sh_arena_t *a, sh_tslot_t *slot, uint32_t owner, int part, size_t size,
                           uint64_t *offset) {
  uint64_t psize = sh_page_bytes(a);
  uint64_t n = (size + psize - 1) / psize;
  if (n > SH_TC_RUN_MAX_PAGES || sh_atomic_load_acquire(&a->owners[owner].state) != SH_OWNER_LIVE) return false;
  for (int i = 0; i < SH_TC_RUNS; i++) {
    sh_tc_run_t *r = &slot->runs[i];
    uint32_t pi = sh_atomic_load_relaxed(&r->page);
    if (pi == SH_NIL || !_sh_page_in_part(a, pi, part)) continue;
    sh_page_t *pg = &a->pages[pi];
    /* the run's length is the page's word, in the arena: it must end in
     * the partition before a run of it is handed out */
    if (sh_atomic_load_relaxed(&pg->owner) != owner || sh_atomic_load_relaxed(&pg->capacity) != n ||
        pi + n > a->part_end[part])
      continue;
    uint32_t expected = sh_atomic_load_relaxed(&r->claim);
    bool ours = sh_atomic_load_acquire(&pg->state) == SH_PAGE_LARGE &&
                sh_atomic_cas_strong_acq_rel(&pg->claim, &expected, 0u);
    sh_atomic_store_release(&r->page, SH_NIL);
    if (!ours) continue; /* its owner was recycled under us: the run went back */
    sh_atomic_store_relaxed(&pg->large_bytes, (uint64_t)size);
    sh_track_alloc(a, _sh_page_start(a, pi), n * psize);
    sh_count(a, slot, 0, part, (int)a->nclasses);
    *offset = (uint64_t)pi << a->page_shift;
    return true;
  }
  return false;
}

/* Keeps a run the calling thread frees. The run is recorded in the slot
 * before its claim is set, so a thread that dies in between leaves a record
 * that matches nothing rather than a claimed run nobody records. */
bool _sh_tc_keep_run(sh_arena_t *a, sh_tslot_t *slot, uint32_t pi, int part, bool may_lock) {
  sh_page_t *pg = &a->pages[pi];
  uint32_t n = sh_atomic_load_relaxed(&pg->capacity);
  if (n > SH_TC_RUN_MAX_PAGES || (uint64_t)n * 8 > a->part_end[part] - a->part_first[part] ||
      (sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_LEASED) || !_sh_part_may_cache(a, part))
    return false;
  sh_tc_run_t *r = NULL;
  for (int i = 0; i < SH_TC_RUNS && !r; i++)
    if (sh_atomic_load_relaxed(&slot->runs[i].page) == SH_NIL) r = &slot->runs[i];
  if (!r) {
    if (!may_lock) return false;
    uint32_t k = slot->run_next % SH_TC_RUNS; /* arena memory: bounded before it indexes */
    r = &slot->runs[k];
    slot->run_next = (k + 1) % SH_TC_RUNS;
    _sh_tc_run_flush(a, r);
  }
  uint32_t claim = _sh_tc_next_claim(a, slot, SH_TC_RUN_WAY), expected = 0;
  sh_atomic_store_relaxed(&r->claim, claim);
  sh_atomic_store_release(&r->page, pi);
  if (sh_atomic_load_acquire(&pg->state) != SH_PAGE_LARGE || !sh_atomic_cas_strong_acq_rel(&pg->claim, &expected, claim)) {
    sh_atomic_store_release(&r->page, SH_NIL);
    return false; /* already cached, by us or another thread: a double free the locked path reports */
  }
  sh_track_free(a, _sh_page_start(a, pi), (uint64_t)n << a->page_shift);
  sh_count(a, slot, 1, part, (int)a->nclasses);
  return true;
}

/* ----- Large blocks: runs of whole pages ------------------------------------- */

static void sh_run_format_locked(sh_arena_t *a, uint32_t owner, int part, uint32_t pi, uint32_t n, size_t size,
                                 bool *fresh);

int _sh_alloc_large(sh_arena_t *a, uint32_t owner, int part, size_t size, uint64_t *offset, bool *fresh) {
  uint64_t psize = sh_page_bytes(a);
  uint64_t cap = (uint64_t)(a->part_end[part] - a->part_first[part]) << a->page_shift;
  if (size > cap) {
    _sh_count_failure(a, part);
    return _sh_fail(SH_EFULL, "a block of %zu bytes is larger than partition '%s' (%llu bytes)",
                    size, _sh_part_name(part), (unsigned long long)cap);
  }
  int rc = _sh_owner_usable(a, owner);
  if (rc) return rc;
  uint32_t n = _sh_run_pages(a, size);
  _sh_part_lock(a, part);
  uint32_t pi = _sh_bitmap_take(a, part, n);
  if (pi == SH_NIL && _sh_reclaim_empty_locked(a, part)) pi = _sh_bitmap_take(a, part, n);
  sh_tslot_t *slot = _sh_tc_slot(a, false);
  if (pi == SH_NIL) {
    _sh_part_unlock(a, part);
    /* the caller flushes this thread's caches of the partition (their pages
     * may be what stands in the way) and asks again, or says why it failed
     * (alloc.c: it reads the magazines) */
    return SH_LARGE_NO_PAGES;
  }
  sh_run_format_locked(a, owner, part, pi, n, size, fresh);
  rc = _sh_owner_still_usable_locked(a, owner, part, pi);
  _sh_part_unlock(a, part);
  if (rc) return rc;
  sh_track_alloc(a, _sh_page_start(a, pi), (uint64_t)n * psize);
  sh_count(a, slot, 0, part, (int)a->nclasses);
  *offset = (uint64_t)pi << a->page_shift;
  return SH_OK;
}

/* Marks pages [pi, pi + n) one run of the owner and links it; lock held. */
static void sh_run_format_locked(sh_arena_t *a, uint32_t owner, int part, uint32_t pi, uint32_t n, size_t size,
                                 bool *fresh) {
  bool never_used = true;
  for (uint32_t q = pi; q < pi + n; q++) never_used &= !(sh_atomic_load_relaxed(&a->pages[q].flags) & SH_PAGE_DIRTY);
  if (fresh) *fresh = never_used;
  for (uint32_t q = pi + 1; q < pi + n; q++) {
    sh_atomic_store_relaxed(&a->pages[q].owner, owner);
    sh_atomic_store_relaxed(&a->pages[q].run_head, pi);
    sh_atomic_store_relaxed(&a->pages[q].flags, SH_PAGE_DIRTY);
    sh_atomic_store_release(&a->pages[q].state, SH_PAGE_TAIL);
  }
  sh_page_t *pg = &a->pages[pi];
  sh_atomic_store_relaxed(&pg->owner, owner);
  sh_atomic_store_relaxed(&pg->capacity, n);
  sh_atomic_store_relaxed(&pg->large_bytes, (uint64_t)size);
  sh_atomic_store_relaxed(&pg->flags, SH_PAGE_DIRTY);
  pg->epoch++;
  sh_atomic_store_release(&pg->state, SH_PAGE_LARGE);
  _Atomic uint32_t *set = _sh_owner_set_need(a, owner, part);
  if (sh_likely(set && sh_link_ok(a, part, sh_atomic_load_relaxed(&set[1 + a->nclasses])))) {
    _sh_bin_link_front(a, &set[1 + a->nclasses], pi);
    _sh_owner_pages_add(a, owner, part, n);
  } else {
    _sh_partition_repair_locked(a, part); /* damaged sets or head: the rebuild links the new run and counts it */
  }
}

int _sh_run_reserve(sh_arena_t *a, uint32_t owner, int part, uint64_t bytes, uint64_t *offset) {
  uint32_t n = _sh_run_pages(a, (size_t)bytes);
  _sh_part_lock(a, part);
  uint32_t pi = _sh_bitmap_take(a, part, n);
  int rc = SH_EFULL;
  if (pi != SH_NIL) {
    sh_run_format_locked(a, owner, part, pi, n, (size_t)bytes, NULL);
    rc = _sh_owner_still_usable_locked(a, owner, part, pi);
  }
  _sh_part_unlock(a, part);
  if (rc) return rc;
  *offset = (uint64_t)pi << a->page_shift;
  return SH_OK;
}

int _sh_free_large(sh_arena_t *a, uint32_t pi, int part) {
  _sh_part_lock(a, part);
  if (sh_atomic_load_relaxed(&a->pages[pi].state) != SH_PAGE_LARGE || sh_atomic_load_relaxed(&a->pages[pi].claim) != 0) {
    _sh_part_unlock(a, part);
    return _sh_fail(SH_EDOUBLEFREE, "large block at page %u is already free", pi);
  }
  _sh_page_release_locked(a, part, pi);
  _sh_part_unlock(a, part);
  sh_count(a, _sh_tc_slot(a, false), 1, part, (int)a->nclasses);
  return SH_OK;
}

