/* Pages: the bitmap of pages in use, page life under the partition lock
 * (format, bin lists, release), quarantine of damaged pages, and the repair
 * of a partition after a lock holder died. The floor of the block rooms
 * (see sh_page.h): calls none of them. */
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "sh_page.h"

_Atomic unsigned _sh_next_stripe;
void _sh_count_failure(const sh_arena_t *a, int part) {
  static sh_tls_fast _Thread_local unsigned stripe;
  sh_stripe_hdr_t *h = (sh_stripe_hdr_t *)(a->stripes + (size_t)(stripe++ % SH_NSTRIPES) * a->stripe_size);
  sh_atomic_add_relaxed(&h->failures[part], 1);
}

/* An owner that may take blocks now: in range, and live (or being restored). */
int _sh_owner_usable(const sh_arena_t *a, uint32_t owner) {
  if (sh_unlikely(owner >= a->max_owners))
    return _sh_fail(SH_EOWNER, "owner %u is out of range (the table holds %u)", owner, a->max_owners);
  uint32_t st = sh_atomic_load_acquire(&a->owners[owner].state);
  if (sh_unlikely(owner == SH_OWNER_DEFAULT && st != SH_OWNER_LIVE))
    return _sh_fail(SH_ECORRUPT, "the shared default owner reads as state %u: it is live for the heap's life", st);
  if (st != SH_OWNER_LIVE && st != SH_OWNER_RESTORING) /* a restorer fills a RESTORING owner */
    return _sh_fail(SH_EOWNER, "owner %u is not live (state %u): it was completed, recycled or offloaded",
                    owner, st);
  return SH_OK;
}

/* A refill that just counted a fresh page (or run) to an agent looks again:
 * the agent's recycle may have read its page counts before that one was
 * counted, and then it skipped this partition. The recycle marks the agent
 * not live before it reads the counts, and this reads the state after the
 * count, a full fence each: so either the recycle sees the page (and takes
 * it back under this partition lock, after us) or this sees the recycle and
 * gives the page back here. Partition lock held. */
int _sh_owner_still_usable_locked(sh_arena_t *a, uint32_t owner, int part, uint32_t pi) {
  if (owner < SH_FIRST_AGENT) return SH_OK;
  sh_atomic_fence();
  int rc = _sh_owner_usable(a, owner);
  if (rc) _sh_page_release_locked(a, part, pi);
  return rc;
}

/* A recycled owner's blocks go back without a free each: count them as freed
 * all the same, so that allocs - frees keeps equal to what is in use. */
static void sh_count_released(const sh_arena_t *a, uint32_t pi, int part) {
  const sh_page_t *pg = &a->pages[pi];
  uint32_t state = sh_atomic_load_relaxed(&pg->state), used, cls;
  if (state == SH_PAGE_LARGE) {
    if (sh_atomic_load_relaxed(&pg->claim) != 0) return; /* a cached run: freed already */
    used = 1;
    cls = a->nclasses;
  } else if (state == SH_PAGE_SMALL) {
    cls = sh_atomic_load_relaxed(&pg->sclass);
    if (cls >= a->nclasses) return;
    used = sh_atomic_load_relaxed(&pg->capacity) - _sh_page_free_blocks(a, pi);
  } else {
    return;
  }
  if (used) sh_atomic_add_relaxed(&sh_thread_counters(a)[_sh_counter_index(a, 1, part, (int)cls)], used);
}

/* ----- Bitmap of pages in use --------------------------------------------- */


/* First fit of n free pages in the partition; marks them used. Under lock. */
uint32_t _sh_bitmap_take(sh_arena_t *a, int part, uint32_t n) {
  uint32_t first = a->part_first[part], end = a->part_end[part], run = 0;
  for (uint32_t pi = first; pi < end; pi++) {
    if (pi % 64 == 0 && run == 0 && pi + 64 <= end && sh_atomic_load_relaxed(&a->bitmap[pi / 64]) == UINT64_MAX) {
      pi += 63;
      continue;
    }
    if (sh_bit(a, pi)) {
      run = 0;
      continue;
    }
    if (++run == n) {
      uint32_t start = pi + 1 - n;
      for (uint32_t q = start; q <= pi; q++) sh_bit_set(a, q, true);
      return start;
    }
  }
  return SH_NIL;
}

uint32_t _sh_bitmap_count(const sh_arena_t *a, int part) {
  uint32_t n = 0;
  for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) n += sh_bit(a, pi);
  return n;
}



#if SH_DEBUG > 1
/* Blocks on the stack starting at `t`, at most `limit` (debug checks only). */
static uint32_t sh_stack_length(const sh_arena_t *a, uint32_t pi, uint32_t t, uint32_t limit) {
  uint32_t n = 0;
  for (; t != 0 && t != SH_HEAD_RETIRED && n < limit; n++) t = sh_word_load_relaxed(_sh_link_at(a, pi, t));
  return n;
}
#endif

uint32_t _sh_page_free_blocks(const sh_arena_t *a, uint32_t pi) {
  const sh_page_t *pg = &a->pages[pi];
  uint32_t cap = sh_atomic_load_relaxed(&pg->capacity), n = 0;
  /* The cached stack first, the shared one second, under the entry's flush
   * sequence: a flush moves blocks from the first to the second, and a
   * reader that overlapped one reads again, so a thread whose exit hook is
   * still flushing (Python's join returns before it runs) shows exact
   * figures. A flush that outlasts the wait (its process died in it) leaves
   * the plain order, which may count a block twice but never misses one. */
  for (int attempt = 0; attempt < 4096; attempt++) {
    const sh_tc_entry_t *entry = NULL;
    const sh_tc_way_t *w = sh_atomic_load_acquire(&pg->claim) != 0 ? _sh_tc_holder(a, pi, &entry) : NULL;
    uint32_t seq = entry ? sh_atomic_load_acquire(&entry->flush_seq) : 0;
    bool last = attempt == 4095;
    if ((seq & 1) && !last) {
      if (attempt >= 64) sched_yield();
      continue;
    }
    n = w ? sh_local_count(sh_atomic_load_acquire(&w->local)) : 0;
    uint64_t h = sh_atomic_load_acquire(&pg->head);
    if (sh_head_top(h) == SH_HEAD_RETIRED) return cap;
    n += sh_head_count(h);
    if (!entry || last || sh_atomic_load_acquire(&entry->flush_seq) == seq) break;
  }
  return n < cap ? n : cap;
}

/* ----- Page life (under the partition lock) --------------------------------- */

/* With a claim, the page's blocks go to the claimer's cache (the caller sets
 * its entry's stack to all of them) and the page's own stack starts empty. */
void _sh_page_format_small(sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t owner, int c,
                                 uint32_t claim) {
  const sh_class_t *cls = &a->classes[c];
  uint32_t key = _sh_os_random32() | 1u;
  uint8_t *start = _sh_page_start(a, pi);
  sh_track_reset(start, sh_page_bytes(a));
  uint32_t units = cls->size >> SH_UNIT_SHIFT;
  /* in `system` the nursery owner holds the core's own bookkeeping (the
   * layer above's registry), in plain pages: agents' nursery pages are elsewhere */
  bool nursery = owner == SH_OWNER_NURSERY && _sh_pg_part(pg) != SH_PART_SYSTEM;
  uint32_t cap = nursery ? cls->nursery_capacity : cls->capacity;
  if (nursery) memset((void *)_sh_nursery_map(a, pi, c), 0, cap * sizeof(uint32_t));
  for (uint32_t i = 0; i < cap; i++) {
    uint32_t next = i + 1 < cap ? (i + 1) * units + 1 : 0;
    uint32_t *link = (uint32_t *)(start + (uint64_t)i * cls->size);
    _sh_link_write(link, next, key);
    sh_track_free(a, link, cls->size);
  }
  sh_atomic_store_relaxed(&pg->owner, owner);
  sh_atomic_store_relaxed(&pg->sclass, (uint32_t)c);
  sh_atomic_store_relaxed(&pg->key, key);
  sh_atomic_store_relaxed(&pg->capacity, cap);
  sh_atomic_store_relaxed(&pg->large_bytes, 0);
  pg->epoch++;
  sh_atomic_store_relaxed(&pg->flags, SH_PAGE_DIRTY | (nursery ? SH_PAGE_NURSERY : 0u));
  uint32_t tag = sh_head_tag(sh_atomic_load_relaxed(&pg->head)) + 1;
  sh_atomic_store_release(&pg->claim, claim);
  sh_atomic_store_release(&pg->state, SH_PAGE_SMALL);
  sh_atomic_store_release(&pg->head, claim ? sh_head_make(0, 0, tag) : sh_head_make(1, cap, tag));
  /* nobody else reaches a page being formatted: its invariants hold exactly */
  sh_assert_internal(sh_bit(a, pi));
  sh_assert_expensive(claim || sh_stack_length(a, pi, 1, cap + 1) == cap);
}

void _sh_owner_pages_add(sh_arena_t *a, uint32_t owner, int part, int64_t n) {
  sh_owner_t *o = &a->owners[owner];
  uint32_t now = sh_atomic_load_relaxed(&o->pages[part]) + (uint32_t)n;
  sh_atomic_store_relaxed(&o->pages[part], now);
  if (n > 0) {
    if (part == SH_PART_CONTEXT && owner >= SH_FIRST_AGENT) _sh_owner_reservation_use(a, o, (uint64_t)n << a->page_shift);
    sh_atomic_max32_relaxed(&o->peak_pages[part], now);
    uint64_t used = sh_atomic_add_relaxed(&a->hdr->pages_used[part], (uint64_t)n) + (uint64_t)n;
    sh_atomic_max_relaxed(&a->hdr->peak_pages[part], used);
  } else {
    sh_atomic_sub_relaxed(&a->hdr->pages_used[part], (uint64_t)-n);
    if (now == 0) _sh_owner_set_drop(a, owner, part); /* its last page: the set goes back */
  }
}

_Atomic uint32_t *_sh_owner_set_need(sh_arena_t *a, uint32_t owner, int part) {
  _Atomic uint32_t *set = _sh_owner_set(a, owner, part);
  if (set) return set;
  uint32_t first = a->part_first[part], n = a->part_end[part] - first;
  for (uint32_t k = 0; k < n; k++) {
    uint32_t idx = first + (a->set_hint[part] + k) % n;
    set = _sh_set_at(a, idx);
    if (sh_atomic_load_relaxed(&set[0]) != 0) continue;
    for (uint32_t w = 1; w < a->set_stride; w++) sh_atomic_store_relaxed(&set[w], SH_NIL);
    sh_atomic_store_relaxed(&set[0], owner + 1);
    sh_atomic_store_relaxed(&a->owners[owner].binset[part], idx + 1);
    a->set_hint[part] = (a->set_hint[part] + k + 1) % n;
    return set;
  }
  return NULL; /* more sets in use than pages: only damage does that (repair rebuilds them) */
}

void _sh_owner_set_drop(sh_arena_t *a, uint32_t owner, int part) {
  _Atomic uint32_t *set = _sh_owner_set(a, owner, part);
  if (set) sh_atomic_store_relaxed(&set[0], 0u);
  sh_atomic_store_relaxed(&a->owners[owner].binset[part], 0u);
}

void _sh_bin_link_front(sh_arena_t *a, _Atomic uint32_t *bin, uint32_t pi) {
  sh_page_t *pg = &a->pages[pi];
  uint32_t old = sh_atomic_load_relaxed(bin);
  if (sh_unlikely(old != SH_NIL && _sh_page_partition(a, old) < 0)) old = SH_NIL; /* damaged head: the list restarts */
  pg->prev = SH_NIL;
  pg->next = old;
  if (old != SH_NIL) a->pages[old].prev = pi;
  sh_atomic_store_release(bin, pi);
}


/* Unlinks a page from its owner's list of class `c` (nclasses: large runs). */
void _sh_list_unlink(sh_arena_t *a, int part, uint32_t pi, uint32_t owner, int c) {
  sh_page_t *pg = &a->pages[pi];
  _Atomic uint32_t *head = _sh_bin(a, owner, part, c);
  if (sh_unlikely(!head || !sh_link_ok(a, part, pg->prev) || !sh_link_ok(a, part, pg->next))) {
    _sh_partition_repair_locked(a, part);
    uint32_t state = sh_atomic_load_relaxed(&pg->state);
    head = _sh_bin(a, owner, part, c);
    if ((state != SH_PAGE_SMALL && state != SH_PAGE_LARGE) || !head) return; /* the repair found it on no list */
  }
  if (pg->prev != SH_NIL) a->pages[pg->prev].next = pg->next;
  else sh_atomic_store_release(head, pg->next);
  if (pg->next != SH_NIL) a->pages[pg->next].prev = pg->prev;
  pg->next = pg->prev = SH_NIL;
}

/* Hands a page (or a run) back to the partition, leaving its list links and
 * the page counters to the caller; returns how many pages it freed. With
 * `defer_bit` the caller clears the page's own bit in the bitmap (before it
 * unlocks). */
static uint32_t sh_page_drop_bits_locked(sh_arena_t *a, uint32_t pi, bool defer_bit);
static uint32_t sh_page_drop_locked(sh_arena_t *a, uint32_t pi) { return sh_page_drop_bits_locked(a, pi, false); }

static uint32_t sh_page_drop_bits_locked(sh_arena_t *a, uint32_t pi, bool defer_bit) {
  sh_page_t *pg = &a->pages[pi];
  uint32_t state = sh_atomic_load_relaxed(&pg->state), n = 1;
  if (state == SH_PAGE_LARGE) {
    /* The run's length is a word of the arena: its tails are the pages that
     * say so, and no further (a damaged length walked past the page table) */
    uint32_t len = sh_atomic_load_relaxed(&pg->capacity), room = _sh_run_room(a, pi);
    uint32_t reach = len < room ? len : room, end = pi + (reach ? reach : 1);
    for (uint32_t q = pi + 1; q < end; q++, n++) {
      if (sh_atomic_load_relaxed(&a->pages[q].state) != SH_PAGE_TAIL ||
          sh_atomic_load_relaxed(&a->pages[q].run_head) != pi)
        break;
      sh_atomic_store_relaxed(&a->pages[q].state, SH_PAGE_FREE);
      sh_atomic_store_relaxed(&a->pages[q].run_head, SH_NIL);
      sh_bit_set(a, q, false);
    }
  } else if (state != SH_PAGE_SMALL) {
    return 0;
  }
  /* the claim goes first: a thread caching the page checks it around every
   * use, so it never acts on the page once the head below changes */
  sh_atomic_store_release(&pg->claim, 0u);
  uint32_t tag = sh_head_tag(sh_atomic_load_relaxed(&pg->head)) + 1;
  sh_atomic_store_release(&pg->head, sh_head_make(0, 0, tag));
  sh_atomic_store_release(&pg->state, SH_PAGE_FREE);
  if (!defer_bit) sh_bit_set(a, pi, false);
  return n;
}

void _sh_page_release_locked(sh_arena_t *a, int part, uint32_t pi) {
  sh_page_t *pg = &a->pages[pi];
  uint32_t state = sh_atomic_load_relaxed(&pg->state);
  uint32_t owner = _sh_pg_owner(a, pg);
  if (state == SH_PAGE_SMALL)
    _sh_list_unlink(a, part, pi, owner, _sh_pg_class(a, pg));
  else if (state == SH_PAGE_LARGE)
    _sh_list_unlink(a, part, pi, owner, (int)a->nclasses);
  else
    return;
  _sh_owner_pages_add(a, owner, part, -(int64_t)sh_page_drop_locked(a, pi));
}

uint64_t _sh_list_release_locked(sh_arena_t *a, int part, uint32_t owner, uint32_t first, sh_owner_info_t *final,
                                 bool *damaged) {
  uint64_t pages = 0, mask = 0;
  uint32_t word = UINT32_MAX, steps = 0, limit = a->part_end[part] - a->part_first[part];
  for (uint32_t pi = first, next; pi != SH_NIL; pi = next) {
    if (sh_unlikely(!_sh_page_in_part(a, pi, part) || ++steps > limit ||
                    sh_atomic_load_relaxed(&a->pages[pi].owner) != owner)) {
      *damaged = true; /* not followed: the caller finds the owner's other pages by their descriptors */
      break;
    }
    /* An owner's pages mostly came from one first-fit scan, so its list,
     * newest first, runs down through consecutive descriptors: fetching the
     * next few ahead turns a chain of cache misses into one. */
    for (uint32_t k = 1; k <= 8 && pi >= k; k++) __builtin_prefetch(&a->pages[pi - k], 1);
    next = a->pages[pi].next;
    if (final) _sh_info_add_page(a, pi, part, final);
    sh_count_released(a, pi, part);
    a->pages[pi].next = a->pages[pi].prev = SH_NIL;
    uint32_t freed = sh_page_drop_bits_locked(a, pi, true);
    pages += freed;
    if (!freed) continue;
    /* the same consecutive pages share bitmap words: one atomic per word */
    if (pi / 64 != word) {
      if (mask) sh_atomic_and_relaxed(&a->bitmap[word], ~mask);
      word = pi / 64;
      mask = 0;
    }
    mask |= 1ull << (pi % 64);
  }
  if (mask) sh_atomic_and_relaxed(&a->bitmap[word], ~mask);
  return pages;
}

/* After a damaged list: the owner's pages that the walk did not reach are
 * found by their descriptors and released, and the partition's lists and
 * counters are rebuilt, so nothing of the owner is left behind. */
void _sh_owner_pages_scan_release_locked(sh_arena_t *a, int part, uint32_t owner, sh_owner_info_t *final) {
  for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) {
    uint32_t state = sh_atomic_load_relaxed(&a->pages[pi].state);
    if ((state != SH_PAGE_SMALL && state != SH_PAGE_LARGE) || sh_atomic_load_relaxed(&a->pages[pi].owner) != owner)
      continue;
    if (final) _sh_info_add_page(a, pi, part, final);
    sh_count_released(a, pi, part);
    (void)sh_page_drop_bits_locked(a, pi, false);
  }
  _sh_partition_repair_locked(a, part);
}

/* Flags a page whose memory was written after a free: check() reports it and
 * its blocks are not trusted again. Takes the page's partition lock. */
void _sh_page_quarantine(sh_arena_t *a, uint32_t pi) {
  int part = _sh_pg_part(&a->pages[pi]);
  _sh_part_lock(a, part);
  sh_atomic_or_relaxed(&a->pages[pi].flags, SH_PAGE_CORRUPT);
  _sh_part_unlock(a, part);
}

int _sh_quarantine(sh_arena_t *a, uint32_t pi, int part) {
  _sh_page_quarantine(a, pi);
  sh_page_t *pg = &a->pages[pi];
  return _sh_fail(SH_ECORRUPT,
                  "free list of page %u (partition '%s', blocks of %u bytes) holds a damaged link: "
                  "a block was written after it was freed; the page is quarantined",
                  pi, _sh_part_name(part), a->classes[_sh_pg_class(a, pg)].size);
}


/* A full partition first takes back pages that emptied without being retired
 * (sh_free_nolock leaves them), whichever owner and class they served. */
uint32_t _sh_reclaim_empty_locked(sh_arena_t *a, int part) {
  uint32_t reclaimed = 0;
  for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) {
    sh_page_t *pg = &a->pages[pi];
    if (sh_atomic_load_relaxed(&pg->state) != SH_PAGE_SMALL || (sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_CORRUPT)) continue;
    uint64_t h = sh_atomic_load_acquire(&pg->head);
    if (sh_head_top(h) == SH_HEAD_RETIRED || sh_head_count(h) != sh_atomic_load_relaxed(&pg->capacity)) continue;
    uint64_t retired = sh_head_make(SH_HEAD_RETIRED, sh_head_count(h), sh_head_tag(h) + 1);
    if (!sh_atomic_cas_strong_acq_rel(&pg->head, &h, retired)) continue; /* in use again */
    _sh_page_release_locked(a, part, pi);
    reclaimed++;
  }
  return reclaimed;
}


/* ----- Repair after a lock holder died ------------------------------------------
 * Page descriptors' state, owner and class are the truth; the bitmap, the bin
 * lists, the large lists and the page counters are rebuilt from them. */

void _sh_partition_repair_locked(sh_arena_t *a, int part) {
  for (uint32_t o = 0; o < a->max_owners; o++) {
    sh_atomic_store_relaxed(&a->owners[o].binset[part], 0u);
    sh_atomic_store_relaxed(&a->owners[o].pages[part], 0);
  }
  for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) sh_atomic_store_relaxed(&_sh_set_at(a, pi)[0], 0u);
  uint64_t used = 0;
  for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) {
    sh_page_t *pg = &a->pages[pi];
    uint32_t state = sh_atomic_load_relaxed(&pg->state);
    uint32_t owner = sh_atomic_load_relaxed(&pg->owner);
    if (state == SH_PAGE_TAIL) {
      uint32_t h = sh_atomic_load_relaxed(&pg->run_head);
      bool ok = h != SH_NIL && h < pi && sh_atomic_load_relaxed(&a->pages[h].state) == SH_PAGE_LARGE &&
                h + sh_atomic_load_relaxed(&a->pages[h].capacity) > pi;
      if (!ok) sh_atomic_store_relaxed(&pg->state, state = SH_PAGE_FREE);
    }
    if ((state == SH_PAGE_SMALL || state == SH_PAGE_LARGE) && owner >= a->max_owners)
      sh_atomic_store_relaxed(&pg->state, state = SH_PAGE_FREE);
    /* An agent that holds no pages any more (its slot free, or offloaded)
     * cannot own one: the holder that died formatted it for the agent but
     * never counted it, so the agent's recycle skipped this partition.
     * Relinked, the page would be held by a free slot; it goes back, its
     * claim first (a dead thread's way must not flush into it). */
    if ((state == SH_PAGE_SMALL || state == SH_PAGE_LARGE) && owner >= SH_FIRST_AGENT) {
      uint32_t held_by = sh_atomic_load_relaxed(&a->owners[owner].state);
      if (held_by == SH_OWNER_FREE || held_by == SH_OWNER_OFFLOADED) {
        sh_atomic_store_release(&pg->claim, 0u);
        sh_atomic_store_relaxed(&pg->state, state = SH_PAGE_FREE);
      }
    }
    sh_bit_set(a, pi, state != SH_PAGE_FREE);
    if (state == SH_PAGE_FREE) {
      pg->next = pg->prev = SH_NIL;
      continue;
    }
    used++;
    /* a claim its slot does not record (left by a holder that died) is dropped */
    if (state == SH_PAGE_SMALL && sh_atomic_load_relaxed(&pg->claim) != 0 && !_sh_tc_holder(a, pi, NULL))
      sh_atomic_store_release(&pg->claim, 0u);
    /* owners with pages here are at most the pages here: a set is always free */
    _Atomic uint32_t *set = (state == SH_PAGE_SMALL || state == SH_PAGE_LARGE) ? _sh_owner_set_need(a, owner, part) : NULL;
    if (state == SH_PAGE_SMALL && set) {
      _sh_bin_link_front(a, &set[1 + _sh_pg_class(a, pg)], pi);
      sh_atomic_add_relaxed(&a->owners[owner].pages[part], 1);
    } else if (state == SH_PAGE_LARGE && set) {
      _sh_bin_link_front(a, &set[1 + a->nclasses], pi);
      sh_atomic_add_relaxed(&a->owners[owner].pages[part], sh_atomic_load_relaxed(&pg->capacity));
    }
  }
  sh_atomic_store_relaxed(&a->hdr->pages_used[part], used);
}


/* ---- Partition locks, and owners' page accounting ----------------------------
 * Here, not in lock.c and owner.c: a partition's lock repairs its pages when
 * its holder died, and page life charges owners; the calls go down only. */

void _sh_part_lock(sh_arena_t *arena, int partition) {
  sh_lock_t *lock = &arena->hdr->part_lock[partition];
  if (sh_unlikely(_sh_lock_acquire_repair(lock))) {
    _sh_partition_repair_locked(arena, partition);
    pthread_mutex_consistent(&lock->mutex);
  }
}

void _sh_part_unlock(sh_arena_t *arena, int partition) {
  pthread_mutex_unlock(&arena->hdr->part_lock[partition].mutex);
}

/* Adds one page's live blocks to `info` (under the partition lock). */
void _sh_info_add_page(const sh_arena_t *a, uint32_t pi, int part, sh_owner_info_t *info) {
  const sh_page_t *pg = &a->pages[pi];
  if (sh_atomic_load_relaxed(&pg->state) == SH_PAGE_LARGE) {
    if (sh_atomic_load_relaxed(&pg->claim) != 0) return; /* free: a thread keeps it for reuse */
    uint64_t run = (uint64_t)sh_atomic_load_relaxed(&pg->capacity) << a->page_shift;
    info->bytes[part] += run;
    info->class_bytes[a->nclasses] += run;
    info->blocks++;
    return;
  }
  uint32_t used = sh_atomic_load_relaxed(&pg->capacity) - _sh_page_free_blocks(a, pi);
  int c = _sh_pg_class(a, pg);
  uint64_t bytes = (uint64_t)used * a->classes[c].size;
  info->bytes[part] += bytes;
  info->class_bytes[c] += bytes;
  info->blocks += used;
}

/* The agent took `bytes` of pages in `context`: that much of its reservation
 * is now in pages, and counting it twice (pages and reservation) would turn
 * away admissions that fit. What is left of it still returns at recycle. */
void _sh_owner_reservation_use(sh_arena_t *a, sh_owner_t *o, uint64_t bytes) {
  uint32_t kib = sh_atomic_load_relaxed(&o->reserved_kib);
  if (kib == 0) return;
  uint64_t want = bytes >> 10;
  uint32_t take;
  do {
    take = want < kib ? (uint32_t)want : kib;
    if (take == 0) return;
  } while (!sh_atomic_cas_weak_acq_rel(&o->reserved_kib, &kib, kib - take));
  sh_atomic_sub_relaxed(&a->hdr->reserved_bytes, (uint64_t)take << 10);
}

const sh_tc_way_t *_sh_tc_holder(const sh_arena_t *a, uint32_t pi, const sh_tc_entry_t **entry) {
  const sh_page_t *pg = &a->pages[pi];
  uint32_t claim = sh_atomic_load_acquire(&pg->claim);
  if (claim == 0 || sh_claim_slot(claim) >= a->nslots) return NULL;
  /* an entry only ever caches pages of its own key: one place to look */
  uint32_t c = (uint32_t)_sh_pg_class(a, pg);
  const sh_tc_entry_t *e = _sh_tc_entry(a, _sh_tc_slot_at(a, sh_claim_slot(claim)), sh_atomic_load_relaxed(&pg->owner),
                                        _sh_pg_part(pg), (int)c);
  uint32_t w = sh_claim_way(claim);
  if (w < SH_TC_WAYS && sh_atomic_load_relaxed(&e->way[w].page) == pi && sh_atomic_load_relaxed(&e->way[w].claim) == claim) {
    if (entry) *entry = e;
    return &e->way[w];
  }
  return NULL;
}
