/* Blocks: the lock-free small path, magazines, the thread cache's ways, and
 * the alloc and free entry points (sh_page.h says why these stay together).
 * Runs of whole pages are large.c's; page life and repair are pages.c's. */
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "sh_lease.h"
#include "sh_page.h"

/* ----- Counters ------------------------------------------------------------ */



/* Reads a link that a racing thread may be overwriting (see sh_track.h). Kept
 * out of line: no_sanitize also hides atomics from TSan, and the pop's CAS
 * must stay visible to it. */
SH_NO_TSAN __attribute__((noinline)) static void sh_link_read(const uint32_t *link, uint32_t *next,
                                                               uint32_t *check) {
  *next = sh_word_load_relaxed(&link[0]);
  *check = sh_word_load_relaxed(&link[1]);
}

static int sh_page_pop(const sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t owner,
                                  int c, uint32_t *top_out) {
  const sh_class_t *cls = &a->classes[c];
  uint64_t head = sh_atomic_load_acquire(&pg->head);
  for (;;) {
    uint32_t top = sh_head_top(head);
    if (top == 0 || top == SH_HEAD_RETIRED || !_sh_top_valid(cls, top)) {
      if (top == 0 || top == SH_HEAD_RETIRED || !sh_page_matches(pg, owner, c)) return SH_POP_EMPTY;
      return SH_POP_CORRUPT;
    }
    uint32_t *link = _sh_link_at(a, pi, top);
    uint32_t next, check;
    sh_link_read(link, &next, &check);
    uint32_t count = sh_head_count(head);
    if (sh_unlikely(check != (next ^ sh_atomic_load_relaxed(&pg->key)) ||
                    !_sh_top_valid(cls, next) || (next == 0) != (count == 1))) {
      /* A racing pop may have handed this block out and its new owner written
       * over the link; only an unchanged head proves the link itself is bad. */
      uint64_t again = sh_atomic_load_acquire(&pg->head);
      if (again != head) {
        head = again;
        continue;
      }
      return sh_page_matches(pg, owner, c) ? SH_POP_CORRUPT : SH_POP_EMPTY;
    }
    sh_assert_internal(count >= 1);
    uint64_t desired = sh_head_make(next, count - 1, sh_head_tag(head) + 1);
    if (sh_atomic_cas_weak_acq_rel(&pg->head, &head, desired)) {
      /* Break the link pair so the double-free test on sh_free sees a live
       * block, and walks the stack only when the words really look free. */
      sh_word_store_relaxed(&link[1], ~check);
      *top_out = top;
      return SH_POP_OK;
    }
  }
}


/* Whether `top` is on the stack starting at `t` (at most `limit` blocks):
 * confirms a suspected double free. A link out of range ends the walk. */
SH_NO_TSAN static bool sh_stack_holds(const sh_arena_t *a, uint32_t pi, uint32_t t, uint32_t limit, uint32_t top) {
  const sh_class_t *cls = &a->classes[_sh_pg_class(a, &a->pages[pi])];
  for (uint32_t steps = 0; t != 0 && t != SH_HEAD_RETIRED && steps < limit; steps++) {
    if (t == top) return true;
    if (!_sh_top_valid(cls, t)) return false;
    t = sh_word_load_relaxed(_sh_link_at(a, pi, t));
  }
  return false;
}



/* On the page's shared stack, or on the stack of the thread that caches it. */
bool _sh_block_is_free(const sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t top) {
  uint64_t offset = ((uint64_t)pi << a->page_shift) + ((uint64_t)(top - 1) << SH_UNIT_SHIFT);
  if (_sh_mag_marked(_sh_link_at(a, pi, top), (uint32_t)(offset >> SH_UNIT_SHIFT)) &&
      _sh_mag_holds(a, _sh_pg_part(pg), _sh_pg_class(a, pg), offset))
    return true;
  uint64_t head = sh_atomic_load_acquire(&pg->head);
  if (sh_stack_holds(a, pi, sh_head_top(head), sh_atomic_load_relaxed(&pg->capacity) + 1, top)) return true;
  const sh_tc_way_t *w = _sh_tc_holder(a, pi, NULL);
  uint64_t local = w ? sh_atomic_load_relaxed(&w->local) : 0;
  return local && sh_stack_holds(a, pi, sh_local_top(local), sh_local_count(local), top);
}

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


/* Make the bin's first page one with free blocks: an existing page of the
 * bin, else a fresh page from the partition. */
static int sh_small_refill(sh_arena_t *a, uint32_t owner, int part, int c, size_t size) {
  int rc = _sh_owner_usable(a, owner);
  if (rc) return rc;
  _sh_part_lock(a, part);
  _Atomic uint32_t *bin = _sh_bin(a, owner, part, c);
  uint32_t steps = 0, limit = a->part_end[part] - a->part_first[part];
  for (uint32_t pi = bin ? sh_atomic_load_relaxed(bin) : SH_NIL; pi != SH_NIL; pi = a->pages[pi].next) {
    if (sh_unlikely(!_sh_page_in_part(a, pi, part) || ++steps > limit)) {
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
  _sh_part_unlock(a, part);
  return SH_OK;
}



/* The uncached path: pop the shared stack of the bin's first page. Threads
 * without a slot take it, and cached threads when their cache cannot help. */
static int sh_alloc_shared(sh_arena_t *a, sh_tslot_t *slot, uint32_t owner, int part, int c, size_t size,
                           uint64_t *offset, bool may_lock) {
  for (;;) {
    /* read again each round: a refill may have given the owner its set */
    _Atomic uint32_t *bin = _sh_bin(a, owner, part, c);
    uint32_t pi = bin ? sh_atomic_load_acquire(bin) : SH_NIL;
    if (sh_likely(pi != SH_NIL && _sh_page_in_part(a, pi, part))) {
      sh_page_t *pg = &a->pages[pi];
      uint32_t top;
      int r = sh_page_pop(a, pg, pi, owner, c, &top);
      if (sh_likely(r == SH_POP_OK)) {
        uint64_t off = ((uint64_t)pi << a->page_shift) + ((uint64_t)(top - 1) << SH_UNIT_SHIFT);
        if (sh_unlikely(!sh_page_matches(pg, owner, c))) {
          /* The page was released and handed to someone else between reading
           * the bin and popping: give the block back to its new page. */
          sh_free(a, off);
          continue;
        }
        sh_track_alloc(a, a->base + off, a->classes[c].size);
        sh_count(a, slot, 0, part, c);
        *offset = off;
        return SH_OK;
      }
      if (r == SH_POP_CORRUPT && !(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_CORRUPT)) {
        if (!may_lock) return SH_EAGAIN;
        return _sh_quarantine(a, pi, part);
      }
    }
    if (!may_lock) return SH_EAGAIN;
    int rc = sh_small_refill(a, owner, part, c, size);
    if (rc) return rc;
  }
}

/* ----- Magazines (see sh_types.h) -------------------------------------------- */

/* A block from the thread's magazine: the offset comes from the array, not
 * from a link in the block, so the block's mark is only checked (a branch
 * nothing else waits on) and then cleared. */
enum { SH_MAG_HIT, SH_MAG_EMPTY, SH_MAG_DAMAGED };
enum { SH_REST_MAY_LOCK = 1, SH_REST_DAMAGED = 2 };
__attribute__((always_inline)) static inline int sh_mag_pop(sh_arena_t *a, sh_tslot_t *slot, int part, int c,
                                                            uint64_t *offset) {
  sh_mag_t *m = _sh_tc_mag(a, slot, part, c);
  uint32_t n = sh_atomic_load_relaxed(&m->count);
  /* one compare covers an empty magazine and a count damaged past its size */
  if (sh_unlikely(n - 1 >= a->mag_cap)) return n == 0 ? SH_MAG_EMPTY : SH_MAG_DAMAGED;
  uint32_t unit = sh_atomic_load_relaxed(&m->unit[n - 1]);
  uint64_t off = (uint64_t)unit << SH_UNIT_SHIFT;
  uint32_t *link = (uint32_t *)(a->base + off);
  /* the offset is arena memory: inside this partition's pages, and the mark
   * still whole (else the block was written after its free); the slow path
   * reports either */
  if (sh_unlikely(!_sh_page_in_part(a, (uint32_t)(off >> a->page_shift), part) || !_sh_mag_marked(link, unit)))
    return SH_MAG_DAMAGED;
  sh_atomic_store_relaxed(&m->count, n - 1);
  sh_track_alloc(a, link, a->classes[c].size);
  sh_word_store_relaxed(&link[0], 0); /* no longer marked free */
  *offset = off;
  _sh_mag_count(a, slot, m, &m->allocs); /* last: nothing is live across its rare call */
  return SH_MAG_HIT;
}

/* A freed block of owner 0 into the thread's magazine of its class. False
 * leaves it to the other paths: another owner, a lease, a full magazine, or
 * link words that look free already (the slow path tells a double free). */
__attribute__((always_inline)) static inline bool sh_mag_push(sh_arena_t *a, sh_tslot_t *slot, const sh_page_t *pg,
                                                              uint64_t offset) {
  if (sh_atomic_load_relaxed(&pg->owner) != SH_OWNER_DEFAULT ||
      sh_atomic_load_relaxed(&pg->state) != SH_PAGE_SMALL ||
      (sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_LEASED))
    return false;
  uint32_t c = sh_atomic_load_relaxed(&pg->sclass);
  if (c >= a->mag_classes) return false;
  const sh_class_t *cls = &a->classes[c];
  uint32_t in_page = (uint32_t)offset & ((1u << a->page_shift) - 1);
  if (sh_unlikely(in_page * cls->div_magic > cls->div_magic - 1 || (in_page >> SH_UNIT_SHIFT) >= cls->last_top))
    return false;
  sh_mag_t *m = _sh_tc_mag(a, slot, _sh_pg_part(pg), (int)c);
  uint32_t n = sh_atomic_load_relaxed(&m->count);
  uint32_t *link = (uint32_t *)(a->base + offset);
  uint32_t key = sh_atomic_load_relaxed(&pg->key);
  uint32_t unit = (uint32_t)(offset >> SH_UNIT_SHIFT);
  if (n >= a->mag_cap || _sh_link_looks_free(link, key, unit)) return false;
  _sh_mag_mark(link, unit);
  sh_track_free(a, link, cls->size);
  sh_atomic_store_relaxed(&m->unit[n], unit);
  sh_atomic_store_relaxed(&m->count, n + 1);
  _sh_mag_count(a, slot, m, &m->frees);
  return true;
}

static int sh_free_impl(sh_arena_t *a, uint64_t offset, bool may_lock, bool claimed);

/* The magazine's next block lost its mark: written after its free. It leaves
 * the magazine, its page is quarantined, and the caller hears of it. */
static int sh_mag_damaged(sh_arena_t *a, sh_tslot_t *slot, int part, int c, bool may_lock) {
  sh_mag_t *m = _sh_tc_mag(a, slot, part, c);
  uint32_t n = sh_atomic_load_relaxed(&m->count);
  if (!may_lock) return SH_EAGAIN;
  if (n - 1 >= a->mag_cap) {
    sh_atomic_store_relaxed(&m->count, 0); /* what it held is lost: the count cannot say which */
    return _sh_fail(SH_ECORRUPT, "thread cache: magazine of partition '%s' class %u counts %u blocks (at most %u); emptied",
                    _sh_part_name(part), (unsigned)c, n, a->mag_cap);
  }
  uint64_t off = (uint64_t)sh_atomic_load_relaxed(&m->unit[n - 1]) << SH_UNIT_SHIFT;
  uint32_t pi = (uint32_t)(off >> a->page_shift);
  sh_atomic_store_relaxed(&m->count, n - 1);
  _sh_mag_uncount_free(a, slot, m); /* it is lost, not freed */
  if (!_sh_page_in_part(a, pi, part))
    return _sh_fail(SH_ECORRUPT, "thread cache: magazine of partition '%s' holds offset %llu, outside its pages; dropped",
                    _sh_part_name(part), (unsigned long long)off);
  _sh_page_quarantine(a, pi);
  return _sh_fail(SH_ECORRUPT,
                  "block at offset %llu (partition '%s', %u bytes) was written after it was freed; "
                  "it is dropped and its page quarantined",
                  (unsigned long long)off, _sh_part_name(part), a->classes[c].size);
}

static void sh_mag_flush_one(sh_arena_t *a, sh_tslot_t *slot, int part, sh_mag_t *m) {
  uint32_t n = sh_atomic_load_relaxed(&m->count);
  if (n > a->mag_cap) { /* damaged: which units are real is unknown, so none is followed */
    sh_atomic_store_relaxed(&m->count, 0);
    return;
  }
  for (; n > 0; n--) {
    uint32_t unit = sh_atomic_load_relaxed(&m->unit[n - 1]);
    uint64_t off = (uint64_t)unit << SH_UNIT_SHIFT;
    uint32_t *link = (uint32_t *)(a->base + off);
    /* out of the magazine before it is on a stack: a reader may count it as
     * used for a moment, never as free twice */
    sh_atomic_store_relaxed(&m->count, n - 1);
    /* counted once: the magazine counted this free, and the page path below
     * counts it again, so the magazine's count of it is taken back */
    _sh_mag_uncount_free(a, slot, m);
    if (!_sh_page_in_part(a, (uint32_t)(off >> a->page_shift), part)) continue; /* damaged unit: not followed */
    if (!_sh_mag_marked(link, unit)) {
      /* written after its free, and nobody to tell now: the block stays out
       * and its page is quarantined, so check() reports it */
      _sh_page_quarantine(a, (uint32_t)(off >> a->page_shift));
      continue;
    }
    sh_word_store_relaxed(&link[0], 0); /* unmarked: the free below takes it */
    (void)sh_free_impl(a, off, true, false);
  }
}

void _sh_tc_mag_flush(sh_arena_t *a, sh_tslot_t *slot, int part) {
  if (a->mag_classes == 0) return;
  sh_atomic_store_release(&slot->mag_seq, sh_atomic_load_relaxed(&slot->mag_seq) | 1u);
  for (int p = 0; p < SH_NPARTITIONS; p++) {
    if (part >= 0 && p != part) continue;
    for (uint32_t c = 0; c < a->mag_classes; c++) sh_mag_flush_one(a, slot, p, _sh_tc_mag(a, slot, p, (int)c));
  }
  sh_atomic_store_release(&slot->mag_seq, sh_atomic_load_relaxed(&slot->mag_seq) + 1);
}

uint64_t _sh_mag_held(const sh_arena_t *a, int part, int c, uint64_t *bytes) {
  uint64_t n = 0;
  for (uint32_t i = 0; i < a->nslots && a->mag_classes; i++) {
    sh_tslot_t *slot = _sh_tc_slot_at(a, i);
    if (sh_atomic_load_relaxed(&slot->binder) == 0) continue; /* never bound: empty */
    for (int p = 0; p < SH_NPARTITIONS; p++) {
      if (part >= 0 && p != part) continue;
      for (uint32_t k = 0; k < a->mag_classes; k++) {
        if (c >= 0 && k != (uint32_t)c) continue;
        uint32_t held = sh_atomic_load_acquire(&_sh_tc_mag(a, slot, p, (int)k)->count);
        n += held;
        if (bytes) *bytes += (uint64_t)held * a->classes[k].size;
      }
    }
  }
  return n;
}

uint64_t sh_magazine_blocks(const sh_arena_t *a) { return _sh_mag_held(a, -1, -1, NULL); }

bool _sh_mag_holds(const sh_arena_t *a, int part, int c, uint64_t offset) {
  if ((uint32_t)c >= a->mag_classes) return false;
  uint32_t unit = (uint32_t)(offset >> SH_UNIT_SHIFT);
  for (uint32_t i = 0; i < a->nslots; i++) {
    sh_tslot_t *slot = _sh_tc_slot_at(a, i);
    if (sh_atomic_load_relaxed(&slot->binder) == 0) continue;
    sh_mag_t *m = _sh_tc_mag(a, slot, part, c);
    uint32_t n = sh_atomic_load_acquire(&m->count);
    for (uint32_t k = 0; k < n && k < a->mag_cap; k++)
      if (sh_atomic_load_relaxed(&m->unit[k]) == unit) return true;
  }
  return false;
}

uint64_t _sh_mag_seq(const sh_arena_t *a, bool *busy) {
  uint64_t sum = 0;
  *busy = false;
  for (uint32_t i = 0; i < a->nslots && a->mag_classes; i++) {
    uint32_t seq = sh_atomic_load_acquire(&_sh_tc_slot_at(a, i)->mag_seq);
    *busy |= (seq & 1) != 0;
    sum += seq;
  }
  return sum;
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
  /* No claim check before reading the link: if the page went back, what we
   * read is checked below and then thrown away, since the claim is checked
   * before anything is handed out. */
  const sh_class_t *cls = &a->classes[c];
  uint32_t *link = _sh_link_at(a, pi, top);
  uint32_t next = sh_word_load_relaxed(&link[0]);
  uint32_t check = sh_word_load_relaxed(&link[1]);
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

/* Gives back the calling thread's magazines, runs and cached pages of one
 * partition: a full partition's last resort before it says so. Here, not in
 * tcache.c: the magazines' blocks go back through the free path. */
void _sh_tc_flush_partition(sh_arena_t *a, sh_tslot_t *s, int part) {
  _sh_tc_mag_flush(a, s, part);
  for (int i = 0; i < SH_TC_RUNS; i++) {
    uint32_t pi = sh_atomic_load_relaxed(&s->runs[i].page);
    if (pi != SH_NIL && _sh_page_in_part(a, pi, part)) _sh_tc_run_flush(a, &s->runs[i]);
  }
  sh_tc_entry_t *entries = _sh_tc_entries(s);
  for (uint32_t i = 0; i <= a->tc_mask; i++)
    for (int w = 0; w < SH_TC_WAYS; w++) {
      uint32_t pi = sh_atomic_load_relaxed(&entries[i].way[w].page);
      if (pi != SH_NIL && _sh_page_in_part(a, pi, part)) _sh_tc_way_flush(a, &entries[i], w);
    }
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
      if (sh_unlikely(!_sh_page_in_part(a, pi, part))) {
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
    if (got == SH_MAG_DAMAGED) return sh_mag_damaged(a, slot, part, c, may_lock);
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

/* A page whose every block is free goes back to its partition, unless it is
 * the bin's first page: keeping one warm page per bin stops alloc/free pairs
 * at a page boundary from taking the lock each time. */
static void sh_page_try_retire(sh_arena_t *a, sh_page_t *pg, uint32_t pi, int part, uint64_t pushed);


static void sh_page_try_retire(sh_arena_t *a, sh_page_t *pg, uint32_t pi, int part, uint64_t pushed) {
  _Atomic uint32_t *warm = _sh_bin(a, _sh_pg_owner(a, pg), part, _sh_pg_class(a, pg));
  if (warm && sh_atomic_load_relaxed(warm) == pi) return; /* the bin's first page stays */
  uint64_t expected = pushed;
  uint64_t retired = sh_head_make(SH_HEAD_RETIRED, sh_head_count(pushed), sh_head_tag(pushed) + 1);
  if (!sh_atomic_cas_strong_acq_rel(&pg->head, &expected, retired)) return; /* in use again */
  _sh_part_lock(a, part);
  if (sh_atomic_load_relaxed(&pg->state) == SH_PAGE_SMALL &&
      sh_head_top(sh_atomic_load_relaxed(&pg->head)) == SH_HEAD_RETIRED) {
    _Atomic uint32_t *bin = _sh_bin(a, _sh_pg_owner(a, pg), part, _sh_pg_class(a, pg));
    if (bin && sh_atomic_load_relaxed(bin) == pi)
      sh_atomic_store_release(&pg->head, sh_head_make(sh_head_top(pushed), sh_head_count(pushed),
                                                      sh_head_tag(pushed) + 2));
    else
      _sh_page_release_locked(a, part, pi);
  }
  _sh_part_unlock(a, part);
}

/* The way of the calling thread's slot that caches page `pi` under `claim`,
 * or NULL: the claim names the slot and the way. */
static inline sh_tc_way_t *sh_my_way(const sh_arena_t *a, sh_tslot_t *slot, const sh_page_t *pg, uint32_t pi,
                                     uint32_t claim, int c, sh_tc_entry_t **entry) {
  uint32_t w = sh_claim_way(claim);
  if (sh_unlikely(w >= SH_TC_WAYS)) return NULL;
  sh_tc_entry_t *e = _sh_tc_entry(a, slot, sh_atomic_load_relaxed(&pg->owner), _sh_pg_part(pg), c);
  sh_tc_way_t *way = &e->way[w];
  if (sh_unlikely(sh_atomic_load_relaxed(&way->page) != pi || sh_atomic_load_relaxed(&way->claim) != claim))
    return NULL;
  *entry = e;
  return way;
}

/* Pushes a freed block on the thread's own stack of its page: plain stores. */
static inline void sh_way_push(sh_arena_t *a, sh_tslot_t *slot, sh_tc_entry_t *e, sh_tc_way_t *way,
                               uint32_t *link, uint32_t top, uint32_t key, uint64_t local, uint32_t size) {
  _sh_link_write(link, sh_local_top(local), key);
  sh_atomic_store_relaxed(&way->local, sh_local_make(top, sh_local_count(local) + 1));
  sh_track_free(a, link, size);
  _sh_tc_count_entry(a, slot, e, &e->frees);
}


/* `claimed`: a nursery block already taken out of its agent's record (a
 * recycle, or an allocation that undoes itself). */
__attribute__((noinline)) static int sh_free_impl(sh_arena_t *a, uint64_t offset, bool may_lock, bool claimed) {
  if (sh_unlikely(offset >= a->size))
    return _sh_fail(SH_EBADPTR, "offset %llu is outside the arena (%llu bytes)",
                    (unsigned long long)offset, (unsigned long long)a->size);
  uint32_t pi = (uint32_t)(offset >> a->page_shift);
  sh_page_t *pg = &a->pages[pi];
  uint32_t state = sh_atomic_load_acquire(&pg->state);
  int part = _sh_pg_part(pg);
  if (sh_unlikely(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_LEASED) &&
      (state == SH_PAGE_SMALL || state == SH_PAGE_LARGE)) {
    if (!may_lock) return SH_EAGAIN;
    _sh_lease_forget(a, offset); /* a freed block's lease must not free it again later */
  }
  if (sh_unlikely(state != SH_PAGE_SMALL)) {
    if (state == SH_PAGE_LARGE && (offset & (sh_page_bytes(a) - 1)) == 0) {
      sh_tslot_t *slot = _sh_tc_slot(a, may_lock);
      if (slot && sh_atomic_load_relaxed(&pg->claim) == 0 && _sh_tc_keep_run(a, slot, pi, part, may_lock))
        return SH_OK;
      return may_lock ? _sh_free_large(a, pi, part) : SH_EAGAIN;
    }
    return _sh_fail(SH_EBADPTR, "offset %llu is not a live block (page %u is %s)",
                    (unsigned long long)offset, pi,
                    state == SH_PAGE_FREE ? "free" : state == SH_PAGE_META ? "metadata" : "inside a large block");
  }
  int c = _sh_pg_class(a, pg);
  const sh_class_t *cls = &a->classes[c];
  uint32_t in_page = (uint32_t)(offset & (sh_page_bytes(a) - 1));
  if (sh_unlikely(in_page * cls->div_magic > cls->div_magic - 1 || in_page + cls->size > sh_page_bytes(a)))
    return _sh_fail(SH_EBADPTR, "offset %llu is not the start of a block (blocks of %u bytes)",
                    (unsigned long long)offset, cls->size);
  uint32_t top = (in_page >> SH_UNIT_SHIFT) + 1;
  if (sh_unlikely(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_NURSERY) && !claimed) {
    if (!may_lock) return SH_EAGAIN; /* the retry with the lock claims it, once */
    if (sh_unlikely(in_page / cls->size >= cls->nursery_capacity))
      return _sh_fail(SH_EBADPTR, "offset %llu is not a block of its nursery page", (unsigned long long)offset);
    int rc = _sh_nursery_claim(a, pi, c, in_page / cls->size, offset);
    if (rc == SH_NURSERY_TAKEN) return SH_OK; /* freed by the sweep that found it orphaned */
    if (rc) return rc;
  }
  uint32_t *link = _sh_link_at(a, pi, top);
  uint32_t key = sh_atomic_load_relaxed(&pg->key);
  uint32_t cap = sh_atomic_load_relaxed(&pg->capacity);
  sh_tslot_t *slot = _sh_tc_slot(a, false);
  uint32_t claim = sh_atomic_load_acquire(&pg->claim);
  if (claim != 0 && slot != NULL && sh_claim_slot(claim) == _sh_tc_tls[0].slot_index) {
    /* our own cached page: push on our stack, no atomic read-modify-write */
    sh_tc_entry_t *e;
    sh_tc_way_t *way = sh_my_way(a, slot, pg, pi, claim, c, &e);
    if (way) {
      if (sh_unlikely(_sh_link_looks_free(link, key, (uint32_t)(offset >> SH_UNIT_SHIFT))) &&
          _sh_block_is_free(a, pg, pi, top))
        return _sh_fail(SH_EDOUBLEFREE, "block at offset %llu is already free", (unsigned long long)offset);
      uint64_t local = sh_atomic_load_relaxed(&way->local);
      if (sh_unlikely(sh_local_count(local) >= cap))
        return _sh_fail(SH_EDOUBLEFREE, "block at offset %llu is already free (its page is all free)",
                        (unsigned long long)offset);
      sh_way_push(a, slot, e, way, link, top, key, local, cls->size);
      return SH_OK;
    }
  }
  if (sh_unlikely(_sh_link_looks_free(link, key, (uint32_t)(offset >> SH_UNIT_SHIFT))) &&
      _sh_block_is_free(a, pg, pi, top))
    return _sh_fail(SH_EDOUBLEFREE, "block at offset %llu is already free", (unsigned long long)offset);
  uint64_t head = sh_atomic_load_relaxed(&pg->head), desired;
  do {
    uint32_t count = sh_head_count(head);
    if (sh_unlikely(sh_head_top(head) == SH_HEAD_RETIRED || count >= cap))
      return _sh_fail(SH_EDOUBLEFREE, "block at offset %llu is already free (its page is all free)",
                      (unsigned long long)offset);
    _sh_link_write(link, sh_head_top(head), key);
    desired = sh_head_make(top, count + 1, sh_head_tag(head) + 1);
  } while (!sh_atomic_cas_weak_acq_rel(&pg->head, &head, desired));
  sh_track_free(a, link, cls->size);
  sh_count(a, slot, 1, part, c);
  /* a page a thread caches is its warm page: it stays */
  if (sh_unlikely(sh_head_count(desired) == cap) && may_lock && sh_atomic_load_relaxed(&pg->claim) == 0)
    sh_page_try_retire(a, pg, pi, part, desired);
  return SH_OK;
}

/* The hot path of a free: a block of a page the calling thread caches goes on
 * the thread's own stack. A block whose link words look free (a possible
 * double free) and every other case go to sh_free_impl. */
__attribute__((always_inline)) static inline bool sh_free_fast(sh_arena_t *a, uint64_t offset) {
  const sh_tc_binding_t *b = &_sh_tc_tls[0];
  if (sh_unlikely(offset >= a->size || b->arena != a || b->instance != a->instance || b->slot == NULL))
    return false;
  uint32_t pi = (uint32_t)(offset >> a->page_shift);
  sh_page_t *pg = &a->pages[pi];
  uint32_t claim = sh_atomic_load_acquire(&pg->claim);
  /* Only SMALL pages carry a claim of ways 0-2 (a kept run's is way 3, and a
   * release drops the claim before the state), so the claim check below
   * stands for a state check. */
  if (sh_claim_slot(claim) != b->slot_index || (sh_atomic_load_relaxed(&pg->flags) & (SH_PAGE_LEASED | SH_PAGE_NURSERY)))
    return false;
  int c = _sh_pg_class(a, pg);
  const sh_class_t *cls = &a->classes[c];
  uint32_t in_page = (uint32_t)offset & ((1u << a->page_shift) - 1);
  if (sh_unlikely(in_page * cls->div_magic > cls->div_magic - 1)) return false;
  sh_tc_entry_t *e;
  sh_tc_way_t *way = sh_my_way(a, b->slot, pg, pi, claim, c, &e);
  if (!way) return false;
  uint32_t top = (in_page >> SH_UNIT_SHIFT) + 1, key = sh_atomic_load_relaxed(&pg->key);
  uint32_t *link = _sh_link_at(a, pi, top);
  uint64_t local = sh_atomic_load_relaxed(&way->local);
  if (sh_unlikely(_sh_link_looks_free(link, key, (uint32_t)(offset >> SH_UNIT_SHIFT)) ||
                  sh_local_count(local) >= cls->capacity))
    return false;
  sh_way_push(a, b->slot, e, way, link, top, key, local, cls->size);
  return true;
}

/* A run of blocks of one page that the calling thread does not cache goes
 * back with one CAS: the blocks are chained first, then the chain is pushed
 * whole. Returns how many went back; 0 leaves the first block to the general
 * path (another page kind, a lease, a block that may already be free). */
static size_t sh_free_run(sh_arena_t *a, sh_tslot_t *slot, const uint64_t *offs, size_t m) {
  uint64_t off0 = offs[0];
  if (off0 >= a->size) return 0;
  uint32_t pi = (uint32_t)(off0 >> a->page_shift);
  sh_page_t *pg = &a->pages[pi];
  if (sh_atomic_load_acquire(&pg->state) != SH_PAGE_SMALL ||
      (sh_atomic_load_relaxed(&pg->flags) & (SH_PAGE_LEASED | SH_PAGE_NURSERY)))
    return 0;
  int c = _sh_pg_class(a, pg), part = _sh_pg_part(pg);
  const sh_class_t *cls = &a->classes[c];
  uint32_t key = sh_atomic_load_relaxed(&pg->key), cap = sh_atomic_load_relaxed(&pg->capacity);
  uint64_t seen[64] = {0}; /* block tops mod 4096: a repeat ends the run (it may be a double free) */
  uint32_t chain_top = 0, *tail_link = NULL;
  size_t k = 0;
  for (; k < m && k < 1024; k++) {
    uint64_t off = offs[k];
    if (off >= a->size || (uint32_t)(off >> a->page_shift) != pi) break;
    uint32_t in_page = (uint32_t)off & ((1u << a->page_shift) - 1);
    if (in_page * cls->div_magic > cls->div_magic - 1 || in_page + cls->size > (1u << a->page_shift)) break;
    uint32_t top = (in_page >> SH_UNIT_SHIFT) + 1, bit = (top - 1) & 4095;
    uint32_t *link = _sh_link_at(a, pi, top);
    if ((seen[bit / 64] >> (bit % 64)) & 1) break;
    if (_sh_link_looks_free(link, key, (uint32_t)(off >> SH_UNIT_SHIFT))) break;
    seen[bit / 64] |= 1ull << (bit % 64);
    _sh_link_write(link, chain_top, key);
    if (!tail_link) tail_link = link;
    chain_top = top;
  }
  if (k == 0) return 0;
  for (size_t j = 0; j < k; j++) sh_track_free(a, a->base + offs[j], cls->size); /* before others can pop them */
  uint64_t head = sh_atomic_load_relaxed(&pg->head), desired;
  do {
    if (sh_head_top(head) == SH_HEAD_RETIRED || sh_head_count(head) + k > cap) return 0;
    _sh_link_write(tail_link, sh_head_top(head), key);
    desired = sh_head_make(chain_top, sh_head_count(head) + (uint32_t)k, sh_head_tag(head) + 1);
  } while (!sh_atomic_cas_weak_acq_rel(&pg->head, &head, desired));
  for (size_t j = 0; j < k; j++) sh_count(a, slot, 1, part, c);
  if (sh_head_count(desired) == cap && sh_atomic_load_relaxed(&pg->claim) == 0)
    sh_page_try_retire(a, pg, pi, part, desired);
  return k;
}

/* The fastest free: into the thread's magazine (see sh_alloc_mag). */
__attribute__((always_inline)) static inline bool sh_free_mag(sh_arena_t *a, uint64_t offset) {
  const sh_tc_binding_t *b = &_sh_tc_tls[0];
  if (sh_unlikely(offset >= a->size || b->instance != a->instance || b->slot == NULL)) return false;
  return sh_mag_push(a, b->slot, &a->pages[offset >> a->page_shift], offset);
}

int sh_free_many(sh_arena_t *a, const uint64_t *offsets, size_t n, size_t *freed) {
  sh_tslot_t *slot = _sh_tc_slot(a, false);
  size_t i = 0;
  int rc = SH_OK;
  while (i < n) {
    if (sh_free_mag(a, offsets[i]) || sh_free_fast(a, offsets[i])) {
      i++;
      continue;
    }
    size_t run = sh_free_run(a, slot, offsets + i, n - i);
    if (run) {
      i += run;
      continue;
    }
    rc = sh_free_impl(a, offsets[i], true, false);
    if (rc) break;
    i++;
  }
  if (freed) *freed = i;
  return rc;
}

__attribute__((noinline)) static int sh_free_rest(sh_arena_t *a, uint64_t offset, bool may_lock) {
  if (sh_free_fast(a, offset)) return SH_OK;
  return sh_free_impl(a, offset, may_lock, false);
}

int _sh_free_block(sh_arena_t *a, uint64_t offset, bool may_lock) { return sh_free_impl(a, offset, may_lock, true); }

int sh_free(sh_arena_t *a, uint64_t offset) {
  if (sh_likely(sh_free_mag(a, offset))) return SH_OK;
  return sh_free_rest(a, offset, true);
}
int sh_free_nolock(sh_arena_t *a, uint64_t offset) {
  if (sh_likely(sh_free_mag(a, offset))) return SH_OK;
  return sh_free_rest(a, offset, false);
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
