/* What the block rooms share: the inline helpers of the hot paths and the
 * internal calls between the rooms. The rooms, top down (calls go down only):
 *   query.c   sh_block_info
 *   alloc.c   the alloc entry points and paths
 *   free.c    the free entry points and paths, the double-free test
 *   large.c   runs of whole pages, and the thread cache of runs
 *   tcache.c  thread slots: binding, flushing, sweeping dead ones
 *   magazine.c  the magazines' flush, damage report and scans
 *   stack.c   a page's shared stack of free blocks: pop, walk, retire
 *   pages.c   the bitmap, page life, quarantine, repair
 * nursery.c sits above free.c (it frees the blocks of recycled agents). */
#ifndef SH_PAGE_H
#define SH_PAGE_H

#include "sh_nursery.h"
#include "sh_magazine.h"
#include "sh_track.h"

/* A link read whose value the caller may throw away (see sh_track.h). */
static SH_UNSANITIZED_READ void _sh_link_read(const uint32_t *link, uint32_t *next, uint32_t *check) {
  *next = sh_word_load_relaxed(&link[0]);
  *check = sh_word_load_relaxed(&link[1]);
}

/* ---- counters, the bitmap, page identity ---- */

sh_internal extern _Atomic unsigned _sh_next_stripe; /* pages.c */

static inline _Atomic uint64_t *sh_thread_counters(const sh_arena_t *a) {
  static sh_tls_fast _Thread_local unsigned stripe = UINT32_MAX;
  if (sh_unlikely(stripe == UINT32_MAX))
    stripe = sh_atomic_add_relaxed(&_sh_next_stripe, 1u) % SH_NSTRIPES;
  return _sh_stripe_counters(a, stripe);
}

/* A thread with a slot counts in it; one without shares the striped counters. */
static inline void sh_count(const sh_arena_t *a, sh_tslot_t *slot, int is_free, int part, int cls) {
  if (sh_likely(slot != NULL)) _sh_tc_count(a, slot, is_free, part, cls);
  else sh_atomic_add_relaxed(&sh_thread_counters(a)[_sh_counter_index(a, is_free, part, cls)], 1);
}

static inline bool sh_bit(const sh_arena_t *a, uint32_t pi) {
  return (sh_atomic_load_relaxed(&a->bitmap[pi / 64]) >> (pi % 64)) & 1;
}
static inline void sh_bit_set(sh_arena_t *a, uint32_t pi, bool on) {
  /* a word may hold the edge pages of two partitions, each under its own
   * lock: only an atomic read-modify-write keeps the other's bits */
  if (on) sh_atomic_or_relaxed(&a->bitmap[pi / 64], 1ull << (pi % 64));
  else sh_atomic_and_relaxed(&a->bitmap[pi / 64], ~(1ull << (pi % 64)));
}


static inline uint64_t sh_page_bytes(const sh_arena_t *a) { return 1ull << a->page_shift; }

enum { SH_POP_OK, SH_POP_EMPTY, SH_POP_CORRUPT };

/* The page no longer is what the caller's bin said: reassigned under us. */
static inline bool sh_page_matches(const sh_page_t *pg, uint32_t owner, int c) {
  return sh_atomic_load_relaxed(&pg->state) == SH_PAGE_SMALL &&
         sh_atomic_load_relaxed(&pg->owner) == owner &&
         sh_atomic_load_relaxed(&pg->sclass) == (uint32_t)c;
}

/* A list link read from the arena: NIL, or a page of the partition. A walk
 * that meets anything else, or takes more steps than the partition has
 * pages, rebuilds the partition's lists from the page descriptors (the
 * truth, see _sh_partition_repair_locked) instead of following it. */
static inline bool sh_link_ok(const sh_arena_t *a, int part, uint32_t pi) {
  return pi == SH_NIL || _sh_page_in_part(a, pi, part);
}

/* ---- pages.c ---- */

sh_internal void _sh_bin_link_front(sh_arena_t *a, _Atomic uint32_t *bin, uint32_t pi);
sh_internal uint32_t _sh_bitmap_take(sh_arena_t *a, int part, uint32_t n);
sh_internal void _sh_list_unlink(sh_arena_t *a, int part, uint32_t pi, uint32_t owner, int c);
sh_internal void _sh_owner_pages_add(sh_arena_t *a, uint32_t owner, int part, int64_t n);
sh_internal void _sh_page_format_small(sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t owner, int c, uint32_t claim);
sh_internal void _sh_page_quarantine(sh_arena_t *a, uint32_t pi);
sh_internal int _sh_quarantine(sh_arena_t *a, uint32_t pi, int part);
sh_internal uint32_t _sh_reclaim_empty_locked(sh_arena_t *a, int part);
sh_internal uint32_t _sh_page_free_blocks(const sh_arena_t *a, uint32_t pi);

sh_internal void _sh_count_failure(const sh_arena_t *a, int part);
sh_internal int _sh_owner_usable(const sh_arena_t *a, uint32_t owner);
sh_internal int _sh_owner_still_usable_locked(sh_arena_t *a, uint32_t owner, int part, uint32_t pi);

/* ---- large.c ---- */

#define SH_LARGE_NO_PAGES 1000 /* _sh_alloc_large found no free run: the caller reports the full partition */
static inline uint32_t _sh_run_pages(const sh_arena_t *a, size_t size) {
  return (uint32_t)((size + sh_page_bytes(a) - 1) >> a->page_shift);
}
sh_internal int _sh_alloc_large(sh_arena_t *a, uint32_t owner, int part, size_t size, uint64_t *offset, bool *fresh);
sh_internal int _sh_free_large(sh_arena_t *a, uint32_t pi, int part);
sh_internal bool _sh_tc_take_run(sh_arena_t *a, sh_tslot_t *slot, uint32_t owner, int part, size_t size,
                                 uint64_t *offset);
sh_internal bool _sh_tc_keep_run(sh_arena_t *a, sh_tslot_t *slot, uint32_t pi, int part, bool may_lock);

/* ---- stack.c ---- */

sh_internal int _sh_page_pop(const sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t owner, int c,
                             uint32_t *top_out);
/* Whether `top` is on the stack starting at `t` (at most `limit` blocks):
 * confirms a suspected double free. A link out of range ends the walk. */
sh_internal bool _sh_stack_holds(const sh_arena_t *a, uint32_t pi, uint32_t t, uint32_t limit, uint32_t top);
/* A page whose every block is free (`pushed`, the head that made it so) goes
 * back to its partition, unless it is the bin's first page. */
sh_internal void _sh_page_try_retire(sh_arena_t *a, sh_page_t *pg, uint32_t pi, int part, uint64_t pushed);

/* Pushes one freed block (its `top`) on its page's shared stack. False when
 * the page is all free already or retired: the block was freed twice. A page
 * that fills up retires when the caller may lock and no thread caches it (a
 * cached page is its thread's warm page). The caller counts the free. */
static inline bool sh_page_push(sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t top, bool may_lock) {
  uint32_t *link = _sh_link_at(a, pi, top);
  uint32_t key = sh_atomic_load_relaxed(&pg->key), cap = sh_atomic_load_relaxed(&pg->capacity);
  uint64_t head = sh_atomic_load_relaxed(&pg->head), desired;
  do {
    uint32_t count = sh_head_count(head);
    if (sh_unlikely(sh_head_top(head) == SH_HEAD_RETIRED || count >= cap)) return false;
    _sh_link_write(link, sh_head_top(head), key);
    desired = sh_head_make(top, count + 1, sh_head_tag(head) + 1);
  } while (!sh_atomic_cas_weak_acq_rel(&pg->head, &head, desired));
  sh_track_free(a, link, a->classes[_sh_pg_class(a, pg)].size);
  if (sh_unlikely(sh_head_count(desired) == cap) && may_lock && sh_atomic_load_relaxed(&pg->claim) == 0)
    _sh_page_try_retire(a, pg, pi, _sh_pg_part(pg), desired);
  return true;
}

/* ---- free.c ---- */

/* On the page's shared stack, in a magazine, or on the stack of the thread
 * that caches the page. */
sh_internal bool _sh_block_is_free(const sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t top);

#endif
