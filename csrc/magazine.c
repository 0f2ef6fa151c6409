/* Magazines (see sh_magazine.h): their counters, the report of a damaged one,
 * the flush that gives their blocks back to their pages, and the readers
 * that scan every slot's magazines for stats, check() and the double-free
 * test. Calls go down only: to the page stack (stack.c) and page life
 * (pages.c). */
#include "sh_page.h"

/* The slot counters of the magazine's (partition, class): [0] allocs, [1] frees. */
static void sh_mag_counters(const sh_arena_t *a, sh_tslot_t *s, const sh_mag_t *m, _Atomic uint64_t *out[2]) {
  uint32_t idx = (uint32_t)(m - _sh_tc_mag(a, s, 0, 0));
  int part = (int)(idx / a->mag_classes), c = (int)(idx % a->mag_classes);
  out[0] = &_sh_tc_counters(a, s)[_sh_counter_index(a, 0, part, c)];
  out[1] = &_sh_tc_counters(a, s)[_sh_counter_index(a, 1, part, c)];
}

void _sh_mag_fold(const sh_arena_t *a, sh_tslot_t *s, sh_mag_t *m) {
  _Atomic uint64_t *n[2];
  sh_mag_counters(a, s, m, n);
  /* slot counters first, as _sh_tc_fold */
  sh_atomic_store_relaxed(n[0], sh_atomic_load_relaxed(n[0]) + sh_atomic_load_relaxed(&m->allocs));
  sh_atomic_store_relaxed(n[1], sh_atomic_load_relaxed(n[1]) + sh_atomic_load_relaxed(&m->frees));
  sh_atomic_store_relaxed(&m->allocs, 0);
  sh_atomic_store_relaxed(&m->frees, 0);
}

/* Takes back one free the magazine counted: its block was lost, not freed. */
static void sh_mag_uncount_free(const sh_arena_t *a, sh_tslot_t *s, sh_mag_t *m) {
  uint32_t f = sh_atomic_load_relaxed(&m->frees);
  if (f > 0) {
    sh_atomic_store_relaxed(&m->frees, f - 1);
    return;
  }
  _Atomic uint64_t *n[2]; /* the free was folded into the slot already */
  sh_mag_counters(a, s, m, n);
  sh_atomic_store_relaxed(n[1], sh_atomic_load_relaxed(n[1]) - 1);
}

int _sh_mag_damaged(sh_arena_t *a, sh_tslot_t *slot, int part, int c, bool may_lock) {
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
  sh_mag_uncount_free(a, slot, m); /* it is lost, not freed */
  if (!_sh_page_in_part(a, pi, part))
    return _sh_fail(SH_ECORRUPT, "thread cache: magazine of partition '%s' holds offset %llu, outside its pages; dropped",
                    _sh_part_name(part), (unsigned long long)off);
  _sh_page_quarantine(a, pi);
  return _sh_fail(SH_ECORRUPT,
                  "block at offset %llu (partition '%s', %u bytes) was written after it was freed; "
                  "it is dropped and its page quarantined",
                  (unsigned long long)off, _sh_part_name(part), a->classes[c].size);
}

/* Each block goes straight onto its page's shared stack: a magazine holds only
 * small blocks of the shared default, which no lease names (a lease needs a
 * live block) and no nursery holds, so the free path's other cases cannot
 * apply. The free stays counted where the magazine counted it. */
static void sh_mag_flush_one(sh_arena_t *a, sh_tslot_t *slot, int part, sh_mag_t *m) {
  uint32_t n = sh_atomic_load_relaxed(&m->count);
  if (n > a->mag_cap) { /* damaged: which units are real is unknown, so none is followed */
    sh_atomic_store_relaxed(&m->count, 0);
    return;
  }
  for (; n > 0; n--) {
    uint32_t unit = sh_atomic_load_relaxed(&m->unit[n - 1]);
    uint64_t off = (uint64_t)unit << SH_UNIT_SHIFT;
    uint32_t pi = (uint32_t)(off >> a->page_shift);
    /* out of the magazine before it is on a stack: a reader may count it as
     * used for a moment, never as free twice */
    sh_atomic_store_relaxed(&m->count, n - 1);
    if (!_sh_page_in_part(a, pi, part)) { /* damaged unit: not followed */
      sh_mag_uncount_free(a, slot, m);
      continue;
    }
    sh_page_t *pg = &a->pages[pi];
    const sh_class_t *cls = &a->classes[_sh_pg_class(a, pg)];
    uint32_t top = (uint32_t)((off & (sh_page_bytes(a) - 1)) >> SH_UNIT_SHIFT) + 1;
    /* Not marked: written after its free. Not a block of a small page of the
     * default: the page was damaged since. Either way, nobody to tell now:
     * the block stays out and its page is quarantined, so check() reports it. */
    if (!_sh_mag_marked((uint32_t *)(a->base + off), unit) || !_sh_top_valid(cls, top) ||
        sh_atomic_load_acquire(&pg->state) != SH_PAGE_SMALL ||
        sh_atomic_load_relaxed(&pg->owner) != SH_OWNER_DEFAULT || !sh_page_push(a, pg, pi, top, true)) {
      sh_mag_uncount_free(a, slot, m);
      _sh_page_quarantine(a, pi);
    }
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
