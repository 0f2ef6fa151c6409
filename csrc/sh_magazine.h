/* Magazines (the layout is in sh_types.h): each thread slot's arrays of
 * freed blocks of the shared default owner, one per (partition, class). The
 * pop and the push are the fastest paths of alloc.c and free.c, so they are
 * inline here; magazine.c holds the flush, the damage report and the readers
 * that scan every slot's magazines. */
#ifndef SH_MAGAZINE_H
#define SH_MAGAZINE_H

#include "sh_tcache.h"
#include "sh_track.h"

/* A magazine's 32-bit counts move to the slot's before they could wrap, as
 * an entry's do. */
sh_internal void _sh_mag_fold(const sh_arena_t *arena, sh_tslot_t *slot, sh_mag_t *mag);
static inline void _sh_mag_count(const sh_arena_t *a, sh_tslot_t *s, sh_mag_t *m, _Atomic uint32_t *n) {
  uint32_t v = sh_atomic_load_relaxed(n) + 1;
  sh_atomic_store_relaxed(n, v);
  if (sh_unlikely(v >= (1u << 31))) _sh_mag_fold(a, s, m);
}

/* Gives the slot's magazine blocks of one partition (part >= 0) or of all back
 * to their pages. The caller owns the slot; takes partition locks. */
sh_internal void _sh_tc_mag_flush(sh_arena_t *arena, sh_tslot_t *slot, int part);
/* Blocks of (part, c) waiting in every slot's magazine; part or c < 0: all.
 * *bytes (if given) adds their size. */
sh_internal uint64_t _sh_mag_held(const sh_arena_t *arena, int part, int c, uint64_t *bytes);
/* Whether any slot's magazine holds the block at `offset`. */
sh_internal bool _sh_mag_holds(const sh_arena_t *arena, int part, int c, uint64_t offset);
/* Sum of every slot's mag_seq; sets *busy when a flush is under way. A reader
 * that wants exact figures reads it before and after. */
sh_internal uint64_t _sh_mag_seq(const sh_arena_t *arena, bool *busy);
/* Runs `body` (a read of page figures minus what magazines hold) until no
 * magazine flush overlapped it: a flush moves blocks from a magazine to their
 * pages, and a read across one could count them twice or not at all. Bounded,
 * as the pages' own flush wait, so figures read right after a thread exits
 * are exact. */
#define SH_MAG_EXACT(arena, body)                                        \
  for (int attempt_ = 0; attempt_ < 4096; attempt_++) {                 \
    bool busy_, again_;                                                  \
    uint64_t seq_ = _sh_mag_seq((arena), &busy_);                        \
    if (busy_ && attempt_ < 4095) {                                      \
      if (attempt_ >= 64) sched_yield();                                 \
      continue;                                                          \
    }                                                                    \
    body;                                                                \
    if (attempt_ == 4095 || _sh_mag_seq((arena), &again_) == seq_) break; \
  }

/* The magazine's next block lost its mark (written after its free): it
 * leaves the magazine, its page is quarantined, and the error says so. */
sh_internal int _sh_mag_damaged(sh_arena_t *arena, sh_tslot_t *slot, int part, int c, bool may_lock);

/* A block from the thread's magazine: the offset comes from the array, not
 * from a link in the block, so the block's mark is only checked (a branch
 * nothing else waits on) and then cleared. */
enum { SH_MAG_HIT, SH_MAG_EMPTY, SH_MAG_DAMAGED };
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

#endif
