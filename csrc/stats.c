/* Statistics, read without stopping anyone. sh_check is check.c's. */
#include <stdlib.h>
#include <string.h>

#include "sh_magazine.h"

/* Sums the alloc and free counters of one partition (part >= 0) or of one
 * class in every partition (c >= 0) in one pass: the stripes (threads without
 * a slot), every slot that was ever bound (a slot keeps its counts when its
 * thread goes), and the slot's entries (counts not yet folded into it). */
static void sh_sum_counters(const sh_arena_t *a, int part, int c, uint64_t *allocs, uint64_t *frees) {
  *allocs = *frees = 0;
  uint32_t per = a->nclasses + 1;
  for (int p = 0; p < SH_NPARTITIONS; p++) {
    if (part >= 0 && p != part) continue;
    for (uint32_t k = 0; k < per; k++) {
      if (c >= 0 && k != (uint32_t)c) continue;
      size_t ia = _sh_counter_index(a, 0, p, (int)k), ifr = _sh_counter_index(a, 1, p, (int)k);
      for (unsigned s = 0; s < a->nstripes; s++) {
        *allocs += sh_atomic_load_relaxed(&_sh_stripe_counters(a, s)[ia]);
        *frees += sh_atomic_load_relaxed(&_sh_stripe_counters(a, s)[ifr]);
      }
      for (uint32_t i = 0; i < a->nslots; i++) {
        sh_tslot_t *slot = _sh_tc_slot_at(a, i);
        if (sh_atomic_load_relaxed(&slot->binder) == 0) continue; /* never bound: all zero */
        *allocs += sh_atomic_load_relaxed(&_sh_tc_counters(a, slot)[ia]);
        *frees += sh_atomic_load_relaxed(&_sh_tc_counters(a, slot)[ifr]);
      }
    }
  }
  for (uint32_t i = 0; i < a->nslots; i++) {
    sh_tslot_t *slot = _sh_tc_slot_at(a, i);
    if (sh_atomic_load_relaxed(&slot->binder) == 0) continue;
    for (int p = 0; p < SH_NPARTITIONS && a->mag_classes; p++)
      for (uint32_t k = 0; k < a->mag_classes; k++) {
        if ((part >= 0 && p != part) || (c >= 0 && k != (uint32_t)c)) continue;
        *allocs += sh_atomic_load_relaxed(&_sh_tc_mag(a, slot, p, (int)k)->allocs);
        *frees += sh_atomic_load_relaxed(&_sh_tc_mag(a, slot, p, (int)k)->frees);
      }
    const sh_tc_entry_t *entries = _sh_tc_entries(slot);
    for (uint32_t k = 0; k <= a->tc_mask; k++) {
      uint32_t key = sh_atomic_load_relaxed(&entries[k].key);
      if ((part >= 0 && (int)((key >> 6) & 3) != part) || (c >= 0 && (int)(key & 63) != c)) continue;
      *allocs += sh_atomic_load_relaxed(&entries[k].allocs);
      *frees += sh_atomic_load_relaxed(&entries[k].frees);
    }
  }
}

/* Stats count a block in a magazine as free, though its page counts it as
 * handed out: they subtract what the magazines hold (SH_MAG_EXACT). */
static void sh_partition_read(const sh_arena_t *a, int part, sh_partition_stats_t *st);

int sh_partition_stats(const sh_arena_t *a, sh_partition_t partition, sh_partition_stats_t *st) {
  int part = (int)partition;
  if ((unsigned)part >= SH_NPARTITIONS) return _sh_fail(SH_EINVAL, "partition %d does not exist", part);
  SH_MAG_EXACT(a, sh_partition_read(a, part, st));
  return SH_OK;
}

static void sh_partition_read(const sh_arena_t *a, int part, sh_partition_stats_t *st) {
  memset(st, 0, sizeof *st);
  st->pages_total = a->part_end[part] - a->part_first[part];
  st->capacity = st->pages_total << a->page_shift;
  for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) {
    const sh_page_t *pg = &a->pages[pi];
    uint32_t state = sh_atomic_load_acquire(&pg->state);
    if (state == SH_PAGE_FREE) continue;
    st->pages_used++;
    /* the nursery owner's pages in `system` are the heap's own bookkeeping
     * (its records, the layer above's registry): held, not in use */
    if (part == SH_PART_SYSTEM && sh_atomic_load_relaxed(&pg->owner) == SH_OWNER_NURSERY) {
      if (state == SH_PAGE_SMALL) st->overhead += 1ull << a->page_shift;
      if (state == SH_PAGE_LARGE) st->overhead += (uint64_t)sh_atomic_load_relaxed(&pg->capacity) << a->page_shift;
      continue;
    }
    if (state == SH_PAGE_LARGE) {
      if (sh_atomic_load_relaxed(&pg->claim) == 0) /* else a thread keeps it, free, for reuse */
        st->in_use += (uint64_t)sh_atomic_load_relaxed(&pg->capacity) << a->page_shift;
    } else if (state == SH_PAGE_SMALL) {
      uint32_t used = sh_atomic_load_relaxed(&pg->capacity) - _sh_page_free_blocks(a, pi);
      st->in_use += (uint64_t)used * a->classes[_sh_pg_class(a, pg)].size;
    }
  }
  uint64_t held = 0;
  _sh_mag_held(a, part, -1, &held);
  st->in_use = st->in_use > held ? st->in_use - held : 0;
  st->peak = sh_atomic_load_relaxed(&a->hdr->peak_pages[part]) << a->page_shift;
  sh_sum_counters(a, part, -1, &st->allocs, &st->frees);
  for (unsigned s = 0; s < a->nstripes; s++)
    st->failures += sh_atomic_load_relaxed(
        &((const sh_stripe_hdr_t *)(a->stripes + (size_t)s * a->stripe_size))->failures[part]);
}

static void sh_class_read(const sh_arena_t *a, int c, sh_class_stats_t *st);

int sh_class_stats(const sh_arena_t *a, int c, sh_class_stats_t *st) {
  if (c < 0 || c >= (int)a->nclasses)
    return _sh_fail(SH_EINVAL, "size class %d does not exist (0..%u)", c, a->nclasses - 1);
  SH_MAG_EXACT(a, sh_class_read(a, c, st));
  return SH_OK;
}

static void sh_class_read(const sh_arena_t *a, int c, sh_class_stats_t *st) {
  memset(st, 0, sizeof *st);
  st->block_size = a->classes[c].size;
  for (uint32_t pi = 0; pi < a->total_pages; pi++) {
    const sh_page_t *pg = &a->pages[pi];
    if (sh_atomic_load_acquire(&pg->state) != SH_PAGE_SMALL || sh_atomic_load_relaxed(&pg->sclass) != (uint32_t)c)
      continue;
    uint32_t cap = sh_atomic_load_relaxed(&pg->capacity);
    uint32_t free_blocks = _sh_page_free_blocks(a, pi);
    st->pages++;
    st->blocks_used += cap - free_blocks;
    st->blocks_free += free_blocks;
  }
  uint64_t held = _sh_mag_held(a, -1, c, NULL);
  held = held < st->blocks_used ? held : st->blocks_used;
  st->blocks_used -= held;
  st->blocks_free += held;
  sh_sum_counters(a, -1, c, &st->allocs, &st->frees);
}

