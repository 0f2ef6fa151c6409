/* Allocation: the entry points and their paths, fastest first: the thread's
 * magazine (sh_magazine.h), the thread cache's ways of cached pages, the
 * shared stack of the bin's first page, a refill from the partition; a
 * request above the small classes goes to large.c. Calls go down only: to
 * free.c (a block popped from a page that changed hands goes back), large.c,
 * tcache.c, magazine.c, stack.c and pages.c. */
#include <stdio.h>
#include <string.h>

#include "sh_page.h"

enum { SH_REST_MAY_LOCK = 1, SH_REST_DAMAGED = 2 };
/* sh_tc_refill's answer when the partition keeps its last pages shared
 * (_sh_part_may_cache): the request takes the uncached path */
enum { SH_REFILL_UNCACHED = 1 };

/* ----- Small blocks ------------------------------------------------------------ */

static int sh_partition_full(const sh_arena_t *a, int part, size_t size, uint32_t pages_needed) {
  _sh_count_failure(a, part);
  uint64_t used = sh_atomic_load_relaxed(&a->hdr->pages_used[part]) << a->page_shift;
  uint64_t cap = (uint64_t)(a->part_end[part] - a->part_first[part]) << a->page_shift;
  /* the caller's own caches were given back before this; what other threads
   * keep is all that a flush there could still free */
  uint64_t waiting = _sh_mag_held(a, part, -1, NULL);
  char others[160] = "";
  if (waiting)
    snprintf(others, sizeof others,
             "; %llu freed block(s) wait in other threads' caches, which give them back at thread exit "
             "or flush_thread_cache()",
             (unsigned long long)waiting);
  return _sh_fail(SH_EFULL,
                  "partition '%s' is full: a request of %zu bytes needs %u free page(s); "
                  "%llu of %llu bytes are in pages already%s",
                  _sh_part_name(part), size, pages_needed, (unsigned long long)used, (unsigned long long)cap,
                  others);
}

enum { SH_REFILLS_MAX = 1u << 16 };

/* Make the bin's first page one with free blocks: an existing page of the
 * bin, else a fresh page from the partition. A full partition first takes
 * back what the calling thread's caches keep there (as sh_tc_refill). */
static int sh_small_refill(sh_arena_t *a, sh_tslot_t *slot, uint32_t owner, int part, int c, size_t size) {
  int rc = _sh_owner_usable(a, owner);
  if (rc) return rc;
  bool flushed = slot == NULL;
again:
  _sh_part_lock(a, part);
  _Atomic uint32_t *bin = _sh_bin(a, owner, part, c);
  uint32_t steps = 0, limit = a->part_end[part] - a->part_first[part];
  bool repaired = false;
  for (uint32_t pi = bin ? sh_atomic_load_relaxed(bin) : SH_NIL; pi != SH_NIL; pi = a->pages[pi].next) {
    /* A page in the bin that is not the owner's page of this class is a
     * damaged list as much as a link out of the partition: the pop refuses
     * such a page, and a refill that offered it again spun for ever. */
    if (sh_unlikely(!_sh_page_in_part(a, pi, part) || ++steps > limit || !sh_page_matches(&a->pages[pi], owner, c))) {
      if (repaired) { /* the rebuild is made from the descriptors: a second miss is not a race */
        _sh_part_unlock(a, part);
        return _sh_fail(SH_ECORRUPT, "partition '%s': the page list of owner %u, class %d, stays damaged after a rebuild",
                        _sh_part_name(part), owner, c);
      }
      repaired = true;
      _sh_partition_repair_locked(a, part); /* a damaged list: rebuilt, and walked again from the start */
      bin = _sh_bin(a, owner, part, c);
      pi = bin ? sh_atomic_load_relaxed(bin) : SH_NIL;
      steps = 0;
      if (pi == SH_NIL) break;
    }
    uint32_t top = sh_head_top(sh_atomic_load_acquire(&a->pages[pi].head));
    if (top != 0 && top != SH_HEAD_RETIRED && !(sh_atomic_load_relaxed(&a->pages[pi].flags) & SH_PAGE_CORRUPT)) {
      if (a->pages[pi].prev != SH_NIL) {
        _sh_list_unlink(a, part, pi, owner, c);
        _sh_bin_link_front(a, bin, pi);
      }
      _sh_part_unlock(a, part);
      return SH_OK;
    }
  }
  uint32_t pi = _sh_bitmap_take(a, part, 1);
  if (pi == SH_NIL && _sh_reclaim_empty_locked(a, part)) {
    /* the reclaim may have taken this bin's pages too: start over */
    _sh_part_unlock(a, part);
    return SH_OK;
  }
  if (pi == SH_NIL) {
    _sh_part_unlock(a, part);
    if (!flushed) {
      flushed = true;
      _sh_tc_flush_partition(a, slot, part);
      goto again;
    }
    return sh_partition_full(a, part, size, 1);
  }
  _Atomic uint32_t *set = _sh_owner_set_need(a, owner, part);
  if (sh_unlikely(!set)) {
    sh_bit_set(a, pi, false);
    _sh_part_unlock(a, part);
    return _sh_fail(SH_ECORRUPT, "partition '%s': no free bin set for owner %u (the set table is damaged)",
                    _sh_part_name(part), owner);
  }
  _sh_page_format_small(a, &a->pages[pi], pi, owner, c, 0);
  _sh_bin_link_front(a, &set[1 + c], pi);
  _sh_owner_pages_add(a, owner, part, 1);
  rc = _sh_owner_still_usable_locked(a, owner, part, pi);
  _sh_part_unlock(a, part);
  return rc;
}

/* The uncached path: pop the shared stack of the bin's first page. Threads
 * without a slot take it, and cached threads when their cache cannot help. */
static int sh_alloc_shared(sh_arena_t *a, sh_tslot_t *slot, uint32_t owner, int part, int c, size_t size,
                           uint64_t *offset, bool may_lock) {
  for (uint32_t refills = 0;; refills++) {
    /* A refill offers a page with free blocks, and a racing thread may empty
     * it before our pop; losing that race this many times in a row is not a
     * race but a page the refill and the pop judge differently (damage the
     * walk does not see): an answer, not a spin. */
    if (sh_unlikely(refills > SH_REFILLS_MAX))
      return _sh_fail(SH_ECORRUPT, "partition '%s': class %d of owner %u offers free blocks that cannot be taken",
                      _sh_part_name(part), c, owner);
    /* read again each round: a refill may have given the owner its set */
    _Atomic uint32_t *bin = _sh_bin(a, owner, part, c);
    uint32_t pi = bin ? sh_atomic_load_acquire(bin) : SH_NIL;
    if (sh_likely(pi != SH_NIL && _sh_page_in_part(a, pi, part))) {
      sh_page_t *pg = &a->pages[pi];
      uint32_t top;
      int r = _sh_page_pop(a, pg, pi, owner, c, &top);
      if (sh_likely(r == SH_POP_OK)) {
        uint64_t off = ((uint64_t)pi << a->page_shift) + ((uint64_t)(top - 1) << SH_UNIT_SHIFT);
        if (sh_likely(sh_page_matches(pg, owner, c))) {
          sh_track_alloc(a, a->base + off, a->classes[c].size);
          sh_count(a, slot, 0, part, c);
          *offset = off;
          return SH_OK;
        }
        /* The page was released and handed to someone else between reading
         * the bin and popping, or the bin is damaged and names another's
         * page: the block goes back to its page, and the refill, under the
         * lock, walks the bin as it is now (rebuilding a damaged one). */
        sh_free(a, off);
      }
      if (r == SH_POP_CORRUPT && !(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_CORRUPT)) {
        if (!may_lock) return SH_EAGAIN;
        return _sh_quarantine(a, pi, part);
      }
    }
    if (!may_lock) return SH_EAGAIN;
    int rc = sh_small_refill(a, slot, owner, part, c, size);
    if (rc) return rc;
  }
}

/* ----- The thread cache's path ------------------------------------------------ */

enum { SH_TC_HIT, SH_TC_MISS };

/* Pops way 0's stack with plain loads and stores. The page's claim is read
 * before and after: a page released under us (its owner recycled) drops the
 * claim first, so a changed claim means the block is not ours to give. */
__attribute__((always_inline)) static inline int sh_tc_pop(sh_arena_t *a, sh_tslot_t *slot, sh_tc_entry_t *e,
                                                           uint32_t key, int c, uint64_t *offset) {
  sh_tc_way_t *w = &e->way[0];
  uint64_t local = sh_atomic_load_relaxed(&w->local);
  uint32_t top = sh_local_top(local);
  /* an empty way has local == 0, so top == 0 covers "no page" too */
  if (sh_unlikely(sh_atomic_load_relaxed(&e->key) != key || top == 0)) return SH_TC_MISS;
  uint32_t pi = sh_atomic_load_relaxed(&w->page);
  if (sh_unlikely(!_sh_page_in_part(a, pi, (int)(key >> 6 & 3)))) return SH_TC_MISS; /* the slow path drops it */
  sh_page_t *pg = &a->pages[pi];
  uint32_t claim = sh_atomic_load_relaxed(&w->claim);
  const sh_class_t *cls = &a->classes[c];
  /* the way lives in the arena: a damaged top would point past the page */
  if (sh_unlikely(top > cls->last_top)) return SH_TC_MISS;
  /* No claim check before reading the link: if the page went back, what we
   * read is checked below and then thrown away, since the claim is checked
   * before anything is handed out. */
  uint32_t *link = _sh_link_at(a, pi, top);
  uint32_t next, check;
  _sh_link_read(link, &next, &check);
  uint32_t count = sh_local_count(local);
  if (sh_unlikely(check != (next ^ sh_atomic_load_relaxed(&pg->key)) || !_sh_top_valid(cls, next) ||
                  (next == 0) != (count == 1)))
    return SH_TC_MISS;
  sh_atomic_store_relaxed(&w->local, sh_local_make(next, count - 1));
  if (sh_unlikely(sh_atomic_load_acquire(&pg->claim) != claim)) return SH_TC_MISS;
  sh_word_store_relaxed(&link[1], ~check);
  uint64_t off = ((uint64_t)pi << a->page_shift) + ((uint64_t)(top - 1) << SH_UNIT_SHIFT);
  sh_track_alloc(a, a->base + off, cls->size);
  _sh_tc_count_entry(a, slot, e, &e->allocs);
  *offset = off;
  return SH_TC_HIT;
}

static void sh_way_clear(sh_tc_way_t *w) {
  sh_atomic_store_relaxed(&w->local, 0);
  sh_atomic_store_release(&w->page, SH_NIL);
}

/* Moves a way to another place in its entry: the way number in its page's
 * claim changes with it. A page released meanwhile (its claim gone) leaves
 * an empty way. Only the slot's thread calls this. */
static void sh_way_move(sh_arena_t *a, const sh_tc_way_t *from, sh_tc_way_t *to, uint32_t to_index) {
  uint32_t pi = sh_atomic_load_relaxed(&from->page), claim = sh_atomic_load_relaxed(&from->claim);
  uint64_t local = sh_atomic_load_relaxed(&from->local);
  uint32_t moved = (claim & ~(3u << SH_CLAIM_SLOT_BITS)) | to_index << SH_CLAIM_SLOT_BITS;
  if (pi == SH_NIL || _sh_page_partition(a, pi) < 0 || !sh_atomic_cas_strong_acq_rel(&a->pages[pi].claim, &claim, moved)) {
    sh_way_clear(to);
    return;
  }
  sh_atomic_store_relaxed(&to->claim, moved);
  sh_atomic_store_relaxed(&to->local, local);
  sh_atomic_store_release(&to->page, pi);
}

static void sh_way_swap(sh_arena_t *a, sh_tc_entry_t *e, uint32_t w) {
  sh_tc_way_t held = {0};
  sh_atomic_store_relaxed(&held.page, sh_atomic_load_relaxed(&e->way[0].page));
  sh_atomic_store_relaxed(&held.claim, sh_atomic_load_relaxed(&e->way[0].claim));
  sh_atomic_store_relaxed(&held.local, sh_atomic_load_relaxed(&e->way[0].local));
  sh_way_move(a, &e->way[w], &e->way[0], 0);
  sh_way_move(a, &held, &e->way[w], w);
}

/* Gives way 0 a page of its own: the bin's unclaimed page with the most free
 * blocks (of the first few), else a fresh page whose blocks all go to the
 * way. What way 0 held moves to an empty way, else to the last, whose page
 * is left to the frees of whoever holds its blocks. A full
 * partition first takes back this thread's other cached pages there, then
 * pages that emptied. */
static int sh_tc_refill(sh_arena_t *a, sh_tslot_t *slot, sh_tc_entry_t *e, uint32_t key, uint32_t owner,
                        int part, int c, size_t size) {
  int rc = _sh_owner_usable(a, owner);
  if (rc) return rc;
  if (!_sh_part_may_cache(a, part)) return SH_REFILL_UNCACHED;
  if (sh_atomic_load_relaxed(&e->key) != key) {
    _sh_tc_entry_flush(a, e); /* another (owner, partition, class) used the entry */
    _sh_tc_fold(a, slot, e);
    sh_atomic_store_relaxed(&e->key, key);
  }
  uint32_t victim = SH_TC_WAYS - 1;
  for (uint32_t w = SH_TC_WAYS - 1; w > 0; w--)
    if (sh_atomic_load_relaxed(&e->way[w].page) == SH_NIL) victim = w;
  _sh_tc_way_flush(a, e, (int)victim);
  sh_way_swap(a, e, victim); /* way 0 is empty now */
  sh_tc_way_t *way = &e->way[0];
  bool flushed = false;
  _sh_part_lock(a, part);
  for (;;) {
    _Atomic uint32_t *bin = _sh_bin(a, owner, part, c);
    uint32_t best = SH_NIL, best_free = 0, looked = 0;
    for (uint32_t pi = bin ? sh_atomic_load_relaxed(bin) : SH_NIL; pi != SH_NIL && looked < 16;
         pi = a->pages[pi].next, looked++) {
      /* a page of another owner or class bound here would hand out blocks
       * of the wrong size (the pop trusts the binding): a damaged list too */
      if (sh_unlikely(!_sh_page_in_part(a, pi, part) || !sh_page_matches(&a->pages[pi], owner, c))) {
        _sh_partition_repair_locked(a, part); /* a damaged list: rebuilt; what was looked at still stands */
        break;
      }
      const sh_page_t *pg = &a->pages[pi];
      uint64_t h = sh_atomic_load_acquire(&pg->head);
      if (sh_atomic_load_relaxed(&pg->claim) != 0 || (sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_CORRUPT) ||
          sh_head_top(h) == 0 || sh_head_top(h) == SH_HEAD_RETIRED || sh_head_count(h) <= best_free)
        continue;
      best = pi;
      best_free = sh_head_count(h);
    }
    uint32_t claim = _sh_tc_next_claim(a, slot, 0);
    uint64_t local = 0;
    if (best == SH_NIL) {
      best = _sh_bitmap_take(a, part, 1);
      if (best == SH_NIL) {
        if (_sh_reclaim_empty_locked(a, part)) continue;
        if (!flushed) {
          flushed = true;
          _sh_part_unlock(a, part);
          _sh_tc_flush_partition(a, slot, part);
          _sh_part_lock(a, part);
          continue;
        }
        _sh_part_unlock(a, part);
        return sh_partition_full(a, part, size, 1);
      }
      bin = _sh_owner_set_need(a, owner, part);
      if (sh_unlikely(!bin)) {
        sh_bit_set(a, best, false);
        _sh_part_unlock(a, part);
        return _sh_fail(SH_ECORRUPT, "partition '%s': no free bin set for owner %u (the set table is damaged)",
                        _sh_part_name(part), owner);
      }
      bin = &bin[1 + c];
      local = sh_local_make(1, owner == SH_OWNER_NURSERY && part != SH_PART_SYSTEM ? a->classes[c].nursery_capacity
                                                                                 : a->classes[c].capacity);
    }
    /* The way first, the page's claim second: a process that dies between
     * them leaves a way that matches nothing, never a claim nobody holds.
     * Claims are set only under the partition lock, so 0 stays 0 until here. */
    sh_atomic_store_relaxed(&way->claim, claim);
    sh_atomic_store_relaxed(&way->local, local);
    sh_atomic_store_release(&way->page, best);
    if (local) {
      _sh_page_format_small(a, &a->pages[best], best, owner, c, claim);
      _sh_bin_link_front(a, bin, best);
      _sh_owner_pages_add(a, owner, part, 1);
      rc = _sh_owner_still_usable_locked(a, owner, part, best);
      if (rc) {
        sh_way_clear(way);
        _sh_part_unlock(a, part);
        return rc;
      }
    } else {
      sh_atomic_store_release(&a->pages[best].claim, claim);
    }
    _sh_part_unlock(a, part);
    return SH_OK;
  }
}

/* Takes the page's whole shared stack onto the way's own (the frees other
 * threads made since). False when the page has no free block. */
static bool sh_tc_collect(sh_page_t *pg, sh_tc_way_t *w) {
  uint64_t head = sh_atomic_load_acquire(&pg->head);
  while (sh_head_top(head) != 0 && sh_head_top(head) != SH_HEAD_RETIRED) {
    if (sh_atomic_cas_weak_acq_rel(&pg->head, &head, sh_head_make(0, 0, sh_head_tag(head) + 1))) {
      sh_atomic_store_relaxed(&w->local, sh_local_make(sh_head_top(head), sh_head_count(head)));
      return true;
    }
  }
  return false;
}

/* Way 0 could not give a block: find a way with blocks (its own stack, or
 * what others freed to its page), move it to way 0 and pop; refill otherwise. */
static int sh_tc_alloc_slow(sh_arena_t *a, sh_tslot_t *slot, uint32_t owner, int part, int c, size_t size,
                            uint64_t *offset, bool may_lock) {
  uint32_t key = _sh_tc_key(owner, part, c);
  sh_tc_entry_t *e = _sh_tc_entry(a, slot, owner, part, c);
  /* each round ends in a hit, an error, or a step that makes the next one hit */
  for (int round = 0; round < 4; round++) {
    if (sh_atomic_load_relaxed(&e->key) == key) {
      for (uint32_t w = 0; w < SH_TC_WAYS; w++) {
        sh_tc_way_t *way = &e->way[w];
        uint32_t pi = sh_atomic_load_relaxed(&way->page);
        if (pi == SH_NIL) continue;
        if (!_sh_page_in_part(a, pi, part)) {
          sh_way_clear(way); /* damaged: its page index is not one of this partition's, so it is not followed */
          continue;
        }
        sh_page_t *pg = &a->pages[pi];
        if (sh_atomic_load_acquire(&pg->claim) != sh_atomic_load_relaxed(&way->claim)) {
          sh_way_clear(way); /* the page went back to its partition (a recycle): it held nothing */
          continue;
        }
        if (sh_local_top(sh_atomic_load_relaxed(&way->local)) != 0) {
          if (w == 0) {
            /* the pop saw a damaged link on a page still ours */
            if (!may_lock) return SH_EAGAIN;
            sh_atomic_store_relaxed(&way->local, 0);
            _sh_tc_way_flush(a, e, (int)w);
            return _sh_quarantine(a, pi, part);
          }
        } else if (!sh_tc_collect(pg, way)) {
          continue;
        }
        if (w != 0) sh_way_swap(a, e, w);
        if (sh_tc_pop(a, slot, e, key, c, offset) == SH_TC_HIT) return SH_OK;
        goto next_round; /* a damaged link: the next round quarantines the page */
      }
    }
    if (!may_lock) return SH_EAGAIN;
    int rc = sh_tc_refill(a, slot, e, key, owner, part, c, size);
    if (rc == SH_REFILL_UNCACHED) break;
    if (rc) return rc;
    if (sh_tc_pop(a, slot, e, key, c, offset) == SH_TC_HIT) return SH_OK;
  next_round:;
  }
  return sh_alloc_shared(a, slot, owner, part, c, size, offset, may_lock);
}

__attribute__((noinline)) static int sh_alloc_impl(sh_arena_t *a, uint32_t owner, sh_partition_t partition, size_t size,
                                uint64_t *offset, bool may_lock, bool *fresh) {
  int part = (int)partition;
  if (sh_unlikely((unsigned)part >= SH_NPARTITIONS))
    return _sh_fail(SH_EINVAL, "partition %d does not exist (0..3)", part);
  if (sh_unlikely(owner >= a->max_owners))
    return _sh_fail(SH_EOWNER, "owner %u is out of range (the table holds %u)", owner, a->max_owners);
  int c = _sh_size_class(a, size);
  if (c < 0) {
    sh_tslot_t *slot = _sh_tc_slot(a, may_lock);
    if (slot && _sh_tc_take_run(a, slot, owner, part, size, offset)) return SH_OK;
    if (!may_lock) return SH_EAGAIN;
    int rc = _sh_alloc_large(a, owner, part, size, offset, fresh);
    if (rc == SH_LARGE_NO_PAGES && slot) {
      _sh_tc_flush_partition(a, slot, part);
      rc = _sh_alloc_large(a, owner, part, size, offset, fresh);
    }
    if (rc == SH_LARGE_NO_PAGES) return sh_partition_full(a, part, size, _sh_run_pages(a, size));
    return rc;
  }
  sh_tslot_t *slot = _sh_tc_slot(a, true);
  /* again here: the fast path reads only the front binding, and a damaged
   * block is reported from here */
  if (owner == SH_OWNER_DEFAULT && (uint32_t)c < a->mag_classes && slot != NULL) {
    int got = sh_mag_pop(a, slot, part, c, offset);
    if (got == SH_MAG_HIT) return SH_OK;
    if (got == SH_MAG_DAMAGED) return _sh_mag_damaged(a, slot, part, c, may_lock);
  }
  if (sh_likely(slot != NULL)) {
    sh_tc_entry_t *e = _sh_tc_entry(a, slot, owner, part, c);
    if (sh_likely(sh_tc_pop(a, slot, e, _sh_tc_key(owner, part, c), c, offset) == SH_TC_HIT)) return SH_OK;
    return sh_tc_alloc_slow(a, slot, owner, part, c, size, offset, may_lock);
  }
  return sh_alloc_shared(a, NULL, owner, part, c, size, offset, may_lock);
}

/* The second fastest path: a small block from the calling thread's cached
 * page. Anything else (no slot yet, an empty cache, a large block, bad
 * arguments) goes to sh_alloc_impl, which checks everything again. */
__attribute__((always_inline)) static inline bool sh_alloc_fast(sh_arena_t *a, uint32_t owner,
                                                                sh_partition_t partition, size_t size,
                                                                uint64_t *offset) {
  if (sh_unlikely((unsigned)partition >= SH_NPARTITIONS || owner >= a->max_owners || size > a->small_limit))
    return false;
  const sh_tc_binding_t *b = &_sh_tc_tls[0];
  if (sh_unlikely(b->arena != a || b->instance != a->instance || b->slot == NULL)) return false;
  int c = _sh_size_class(a, size);
  sh_tc_entry_t *e = _sh_tc_entry(a, b->slot, owner, (int)partition, c);
  return sh_tc_pop(a, b->slot, e, _sh_tc_key(owner, (int)partition, c), c, offset) == SH_TC_HIT;
}

bool _sh_alloc_cached(sh_arena_t *a, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset) {
  return sh_alloc_fast(a, owner, partition, size, offset);
}

/* The fastest path: a block of the shared default from the thread's magazine.
 * Its checks are the ones that choose the magazine; the rest of the work is
 * out of line (sh_alloc_rest), so this path saves no registers. */
__attribute__((always_inline)) static inline int sh_alloc_mag(sh_arena_t *a, uint32_t owner, sh_partition_t partition,
                                                              size_t size, uint64_t *offset) {
  if (owner != SH_OWNER_DEFAULT || (unsigned)partition >= SH_NPARTITIONS || size > a->mag_limit)
    return SH_MAG_EMPTY;
  /* the instance alone names the handle: every handle of the process draws a new one */
  const sh_tc_binding_t *b = &_sh_tc_tls[0];
  if (sh_unlikely(b->instance != a->instance || b->slot == NULL)) return SH_MAG_EMPTY;
  return sh_mag_pop(a, b->slot, (int)partition, a->class_of[(size + 15) >> 4], offset);
}

/* Six arguments, so that the fast paths reach it with a jump. */
__attribute__((noinline)) static int sh_alloc_rest(sh_arena_t *a, uint32_t owner, sh_partition_t partition,
                                                   size_t size, uint64_t *offset, int flags) {
  /* a damaged magazine block is reported by sh_alloc_impl, not skipped */
  if (!(flags & SH_REST_DAMAGED) && sh_alloc_fast(a, owner, partition, size, offset)) return SH_OK;
  return sh_alloc_impl(a, owner, partition, size, offset, flags & SH_REST_MAY_LOCK, NULL);
}

#define sh_rest_flags(may_lock, mag) ((may_lock) | ((mag) == SH_MAG_DAMAGED ? SH_REST_DAMAGED : 0))

int sh_alloc(sh_arena_t *a, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset) {
  int mag = sh_alloc_mag(a, owner, partition, size, offset);
  if (sh_likely(mag == SH_MAG_HIT)) return SH_OK;
  return sh_alloc_rest(a, owner, partition, size, offset, sh_rest_flags(SH_REST_MAY_LOCK, mag));
}

int sh_alloc_nolock(sh_arena_t *a, uint32_t owner, sh_partition_t partition, size_t size,
                    uint64_t *offset) {
  int mag = sh_alloc_mag(a, owner, partition, size, offset);
  if (sh_likely(mag == SH_MAG_HIT)) return SH_OK;
  return sh_alloc_rest(a, owner, partition, size, offset, sh_rest_flags(0, mag));
}

int sh_alloc_many(sh_arena_t *a, sh_partition_t partition, size_t size, size_t n, uint64_t *offsets,
                  size_t *done) {
  size_t i = 0;
  int rc = SH_OK;
  int part = (int)partition, c = _sh_size_class(a, size);
  if ((unsigned)part < SH_NPARTITIONS && c >= 0) {
    sh_tslot_t *slot = _sh_tc_slot(a, true);
    sh_tc_entry_t *e = slot ? _sh_tc_entry(a, slot, SH_OWNER_DEFAULT, part, c) : NULL;
    uint32_t key = _sh_tc_key(SH_OWNER_DEFAULT, part, c);
    bool mag = slot && size <= a->mag_limit && (uint32_t)c < a->mag_classes;
    while (i < n) {
      /* the loops stop at the first miss; a damaged magazine block or link
       * is left to sh_alloc below, which reports it */
      while (mag && i < n && sh_mag_pop(a, slot, part, c, &offsets[i]) == SH_MAG_HIT) i++;
      while (e && i < n && sh_tc_pop(a, slot, e, key, c, &offsets[i]) == SH_TC_HIT) i++;
      if (i == n) break;
      rc = sh_alloc(a, SH_OWNER_DEFAULT, partition, size, &offsets[i]); /* refills what the loops pop */
      if (rc) break;
      i++;
    }
  } else {
    for (; i < n && (rc = sh_alloc(a, SH_OWNER_DEFAULT, partition, size, &offsets[i])) == SH_OK; i++) {
    }
  }
  if (done) *done = i;
  return rc;
}

/* Zeroed blocks. A run of pages that were never handed out still holds the
 * zeros the arena was made with (anonymous memory, or a reserved shm object
 * or file), so it is not cleared again: a first np.zeros of a large array
 * then costs page faults, not a memset. */
static int sh_calloc_impl(sh_arena_t *a, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset,
                          bool may_lock) {
  bool fresh = false;
  int mag = sh_alloc_mag(a, owner, partition, size, offset), rc = SH_OK;
  if (mag != SH_MAG_HIT && (mag == SH_MAG_DAMAGED || !sh_alloc_fast(a, owner, partition, size, offset)))
    rc = sh_alloc_impl(a, owner, partition, size, offset, may_lock, &fresh);
  if (rc == SH_OK && !fresh) memset(a->base + *offset, 0, size ? size : 1);
  return rc;
}

int sh_calloc(sh_arena_t *a, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset) {
  return sh_calloc_impl(a, owner, partition, size, offset, true);
}

int sh_calloc_nolock(sh_arena_t *a, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset) {
  return sh_calloc_impl(a, owner, partition, size, offset, false);
}
/* The size a request of `size` bytes gets: its class, or whole pages. */
uint64_t sh_good_size(const sh_arena_t *a, size_t size) {
  int c = _sh_size_class(a, size);
  if (c >= 0) return a->classes[c].size;
  uint64_t psize = sh_page_bytes(a), largest = 0;
  for (int part = 0; part < SH_NPARTITIONS; part++) {
    uint64_t cap = (uint64_t)(a->part_end[part] - a->part_first[part]) << a->page_shift;
    if (cap > largest) largest = cap;
  }
  if (size > largest) return 0; /* no partition could ever hold it */
  return (size + psize - 1) / psize * psize;
}
