/* The full consistency check (sh_check): every page, list, stack, magazine,
 * thread slot, owner, lock and the nursery, against each other, exact at any
 * moment (see docs/design.md, "check() while threads come and go"). */
#include <stdlib.h>
#include <string.h>

#include "sh_magazine.h"

#define SH_CHECK(cond, ...) \
  do {                      \
    if (!(cond)) {          \
      rc = _sh_fail(SH_ECORRUPT, __VA_ARGS__); \
      goto done;            \
    }                       \
  } while (0)

/* Walks one free stack of a page (its shared one, or the one a thread caches);
 * marks each block in `seen` and returns how many it holds via *n. */
static int sh_check_stack(const sh_arena_t *a, uint32_t pi, uint32_t top, uint32_t count, const char *which,
                          uint8_t *seen, uint32_t *n_out) {
  const sh_page_t *pg = &a->pages[pi];
  const sh_class_t *cls = &a->classes[_sh_pg_class(a, pg)];
  uint32_t key = sh_atomic_load_relaxed(&pg->key), n = 0;
  int rc = SH_OK;
  for (; top != 0; n++) {
    uint64_t in_page = (uint64_t)(top - 1) << SH_UNIT_SHIFT;
    SH_CHECK(n < count, "page %u: %s free list longer than its count %u (a cycle, or a block freed twice)", pi,
             which, count);
    SH_CHECK(in_page + cls->size <= (1ull << a->page_shift) && in_page % cls->size == 0,
             "page %u: %s free link %u out of range or misaligned for blocks of %u", pi, which, top, cls->size);
    uint32_t idx = (uint32_t)(in_page / cls->size);
    SH_CHECK(!seen[idx], "page %u: block %u is on the free lists twice", pi, idx);
    seen[idx] = 1;
    const uint32_t *link = (const uint32_t *)(_sh_page_start(a, pi) + in_page);
    SH_CHECK(link[1] == (link[0] ^ key), "page %u: block %u's free link was overwritten (write after free)", pi,
             idx);
    top = link[0];
  }
  SH_CHECK(n == count, "page %u: %s free list holds %u blocks, its count says %u", pi, which, n, count);
  *n_out = n;
done:
  return rc;
}

static int sh_cmp_u64(const void *x, const void *y) {
  uint64_t u = *(const uint64_t *)x, v = *(const uint64_t *)y;
  return (u > v) - (u < v);
}

/* Every magazine entry is the start of a block of its partition and class on
 * a page of the shared default, and still carries the mark (else it was
 * written after its free). Hands back the offsets sorted, for the page walk
 * to find blocks that are also on a free stack or in two magazines. */
static int sh_check_mags(const sh_arena_t *a, uint64_t **out, size_t *n_out) {
  size_t cap = (size_t)a->nslots * SH_NPARTITIONS * a->mag_classes * a->mag_cap, n = 0;
  uint64_t *offs = malloc((cap ? cap : 1) * sizeof *offs);
  int rc = SH_OK;
  if (!offs) return _sh_fail(SH_ENOMEM, "out of process memory for check()");
  for (uint32_t i = 0; i < a->nslots && a->mag_classes; i++) {
    sh_tslot_t *slot = _sh_tc_slot_at(a, i);
    for (int p = 0; p < SH_NPARTITIONS; p++)
      for (uint32_t k = 0; k < a->mag_classes; k++) {
        const sh_mag_t *m = _sh_tc_mag(a, slot, p, (int)k);
        uint32_t count = sh_atomic_load_acquire(&m->count);
        SH_CHECK(count <= a->mag_cap, "thread slot %u: magazine of '%s' class %u holds %u blocks (at most %u)", i,
                 _sh_part_name(p), k, count, a->mag_cap);
        for (uint32_t j = 0; j < count; j++) {
          uint64_t off = (uint64_t)sh_atomic_load_relaxed(&m->unit[j]) << SH_UNIT_SHIFT;
          uint32_t pi = (uint32_t)(off >> a->page_shift);
          const sh_page_t *pg = &a->pages[pi];
          uint64_t in_page = off & ((1ull << a->page_shift) - 1);
          SH_CHECK(off < a->size && pi >= a->part_first[p] && pi < a->part_end[p] &&
                       sh_atomic_load_relaxed(&pg->state) == SH_PAGE_SMALL &&
                       sh_atomic_load_relaxed(&pg->owner) == SH_OWNER_DEFAULT &&
                       sh_atomic_load_relaxed(&pg->sclass) == k && in_page % a->classes[k].size == 0 &&
                       in_page / a->classes[k].size < a->classes[k].capacity,
                   "thread slot %u: magazine of '%s' class %u holds offset %llu, not a block of that class of the "
                   "shared default", i, _sh_part_name(p), k, (unsigned long long)off);
          const uint32_t *link = (const uint32_t *)(a->base + off);
          SH_CHECK(_sh_mag_marked(link, (uint32_t)(off >> SH_UNIT_SHIFT)),
                   "page %u: block at offset %llu in a magazine was written after its free", pi,
                   (unsigned long long)off);
          offs[n++] = off;
        }
      }
  }
  qsort(offs, n, sizeof *offs, sh_cmp_u64);
done:
  if (rc) {
    free(offs);
    return rc;
  }
  *out = offs;
  *n_out = n;
  return SH_OK;
}

typedef struct sh_mag_list_s {
  const uint64_t *offs;
  size_t n;
} sh_mag_list_t;

static int sh_check_small_page(const sh_arena_t *a, uint32_t pi, uint8_t *seen, sh_mag_list_t mags) {
  const sh_page_t *pg = &a->pages[pi];
  int rc = SH_OK;
  uint32_t c = sh_atomic_load_relaxed(&pg->sclass);
  SH_CHECK(c < a->nclasses, "page %u: size class %u out of range", pi, c);
  const sh_class_t *cls = &a->classes[c];
  uint32_t cap = sh_atomic_load_relaxed(&pg->capacity);
  uint32_t want = (sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_NURSERY) ? cls->nursery_capacity : cls->capacity;
  SH_CHECK(cap == want, "page %u: capacity %u, class of %u bytes holds %u", pi, cap, cls->size, want);
  SH_CHECK(!(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_CORRUPT), "page %u: quarantined after a write after free", pi);
  uint64_t h = sh_atomic_load_relaxed(&pg->head);
  if (sh_head_top(h) == SH_HEAD_RETIRED) return SH_OK; /* mid-retire by a process that died */
  uint32_t count = sh_head_count(h), n = 0;
  SH_CHECK(count <= cap, "page %u: free count %u above capacity %u", pi, count, cap);
  memset(seen, 0, cap);
  rc = sh_check_stack(a, pi, sh_head_top(h), count, "shared", seen, &n);
  if (rc) return rc;
  uint32_t claim = sh_atomic_load_relaxed(&pg->claim);
  if (claim != 0) {
    SH_CHECK(sh_claim_slot(claim) < a->nslots, "page %u: claimed by thread slot %u of %u", pi,
             sh_claim_slot(claim), a->nslots);
    const sh_tc_way_t *e = _sh_tc_holder(a, pi, NULL);
    SH_CHECK(e != NULL, "page %u: claimed by thread slot %u, which does not cache it", pi, sh_claim_slot(claim));
    uint64_t local = sh_atomic_load_relaxed(&e->local);
    SH_CHECK(count + sh_local_count(local) <= cap, "page %u: %u shared and %u cached free blocks, capacity %u",
             pi, count, sh_local_count(local), cap);
    rc = sh_check_stack(a, pi, sh_local_top(local), sh_local_count(local), "cached", seen, &n);
    if (rc) return rc;
    count += sh_local_count(local);
  }
  uint64_t lo = (uint64_t)pi << a->page_shift;
  size_t first = 0, last = mags.n;
  while (first < last) { /* the first magazine block at or after the page's start */
    size_t mid = first + (last - first) / 2;
    if (mags.offs[mid] < lo) first = mid + 1;
    else last = mid;
  }
  uint32_t held = 0;
  for (size_t i = first; i < mags.n && mags.offs[i] < lo + (1ull << a->page_shift); i++, held++) {
    uint32_t idx = (uint32_t)((mags.offs[i] - lo) / cls->size);
    SH_CHECK(!seen[idx], "page %u: block %u is in a magazine and on a free list or in another magazine", pi, idx);
    seen[idx] = 1;
  }
  SH_CHECK(count + held <= cap, "page %u: %u free blocks on its lists and %u in magazines, capacity %u", pi, count,
           held, cap);
done:
  return rc;
}

/* The tables that the page walk does not reach: every owner's state, and
 * every thread slot's state and cached page indexes, bound or not (a sweep
 * follows an unbound slot's too). */
static int sh_check_tables(const sh_arena_t *a) {
  int rc = SH_OK;
  for (uint32_t o = 0; o < a->max_owners; o++) {
    uint32_t st = sh_atomic_load_relaxed(&a->owners[o].state);
    SH_CHECK(st <= SH_OWNER_RESTORING, "owner slot %u: state %u is not a valid state", o, st);
    SH_CHECK(o >= SH_FIRST_AGENT || st == SH_OWNER_LIVE, "owner %u (the shared default or the nursery) is in state %u, not live", o, st);
  }
  for (uint32_t i = 0; i < a->nslots; i++) {
    sh_tslot_t *slot = _sh_tc_slot_at(a, i);
    uint32_t st = sh_atomic_load_relaxed(&slot->state);
    SH_CHECK(st <= SH_TSLOT_FLUSHING, "thread slot %u: state %u is not a valid state", i, st);
    for (int r = 0; r < SH_TC_RUNS; r++) {
      uint32_t pi = sh_atomic_load_relaxed(&slot->runs[r].page);
      SH_CHECK(pi == SH_NIL || (st != SH_TSLOT_FREE && _sh_page_partition(a, pi) >= 0),
               "thread slot %u (%s): cached run page %u is not a page it may hold", i,
               st == SH_TSLOT_FREE ? "free" : "bound", pi);
    }
    sh_tc_entry_t *entries = _sh_tc_entries(slot);
    for (uint32_t e = 0; e <= a->tc_mask; e++)
      for (int w = 0; w < SH_TC_WAYS; w++) {
        uint32_t pi = sh_atomic_load_relaxed(&entries[e].way[w].page);
        SH_CHECK(pi == SH_NIL || (st != SH_TSLOT_FREE && _sh_page_partition(a, pi) >= 0),
                 "thread slot %u (%s): cached page %u is not a page it may hold", i,
                 st == SH_TSLOT_FREE ? "free" : "bound", pi);
      }
  }
done:
  return rc;
}

/* Checked before check() takes the locks: taking a damaged one rebuilds it,
 * which would hide the damage. */
static int sh_check_locks(const sh_arena_t *a) {
  int rc = SH_OK;
  uint32_t holder;
  for (int p = 0; p < SH_NPARTITIONS; p++)
    SH_CHECK(_sh_lock_word_valid(&a->hdr->part_lock[p], &holder),
             "the lock of partition '%s' is damaged (holder %u is no live thread, or its kind is wrong)",
             _sh_part_name(p), holder);
  SH_CHECK(_sh_lock_word_valid(&a->hdr->owner_lock, &holder), "the owner table's lock is damaged (holder %u)", holder);
  SH_CHECK(_sh_lock_word_valid(&a->hdr->lease_lock, &holder), "the lease table's lock is damaged (holder %u)", holder);
done:
  return rc;
}

static int sh_check_once(sh_arena_t *a) {
  int rc = SH_OK;
  /* sized from what this process validated at attach, not from the header
   * as it reads now: a header damaged since would size them too small */
  uint8_t *seen = malloc(((size_t)1 << a->page_shift) / 16 + 1);
  uint64_t *owner_pages = calloc((size_t)a->max_owners, sizeof(uint64_t));
  uint32_t *in_list = calloc(a->total_pages, sizeof(uint32_t));
  if (!seen || !owner_pages || !in_list) {
    free(seen), free(owner_pages), free(in_list);
    return _sh_fail(SH_ENOMEM, "out of process memory for check()");
  }
  rc = sh_check_locks(a);
  if (rc) {
    free(seen), free(owner_pages), free(in_list);
    return rc;
  }
  if (!a->read_only) _sh_owner_lock(a);
  int locked = 0;
  for (; !a->read_only && locked < SH_NPARTITIONS; locked++) _sh_part_lock(a, locked);
  uint64_t *mag_offs = NULL;
  sh_mag_list_t mags = {NULL, 0};
  rc = sh_check_mags(a, &mag_offs, &mags.n);
  if (rc) goto done;
  mags.offs = mag_offs;
  rc = sh_check_tables(a);
  if (rc) goto done;
  rc = _sh_nursery_check(a);
  if (rc) goto done;

  for (uint32_t pi = 0; pi < a->meta_pages; pi++)
    SH_CHECK(sh_atomic_load_relaxed(&a->pages[pi].state) == SH_PAGE_META, "page %u: metadata page not marked", pi);
  for (int part = 0; part < SH_NPARTITIONS; part++) {
    memset(owner_pages, 0, (size_t)a->max_owners * sizeof(uint64_t));
    uint64_t used = 0;
    /* every list is well formed and its pages belong to it */
    /* every set in use belongs to the owner that names it, and no owner holds two */
    for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) {
      uint32_t named = sh_atomic_load_relaxed(&_sh_set_at(a, pi)[0]);
      if (named == 0) continue;
      SH_CHECK(named - 1 < a->max_owners && sh_atomic_load_relaxed(&a->owners[named - 1].binset[part]) == pi + 1,
               "partition '%s': bin set %u names owner %u, which does not name it back", _sh_part_name(part), pi,
               named - 1);
    }
    for (uint32_t o = 0; o < a->max_owners; o++) {
      uint32_t ost = sh_atomic_load_relaxed(&a->owners[o].state);
      uint32_t ref = sh_atomic_load_relaxed(&a->owners[o].binset[part]);
      _Atomic uint32_t *set = _sh_owner_set(a, o, part);
      SH_CHECK(ref == 0 || set != NULL, "owner %u, '%s': bin set reference %u is not a set of its own", o,
               _sh_part_name(part), ref);
      SH_CHECK(set == NULL || sh_atomic_load_relaxed(&a->owners[o].pages[part]) > 0,
               "owner %u, '%s': holds a bin set but no pages", o, _sh_part_name(part));
      for (uint32_t c = 0; set && c <= a->nclasses; c++) {
        uint32_t prev = SH_NIL, steps = 0;
        uint32_t pi = sh_atomic_load_relaxed(&set[1 + c]);
        if (pi != SH_NIL) SH_CHECK(ost != SH_OWNER_FREE, "owner slot %u is free but still holds pages in '%s'", o, _sh_part_name(part));
        for (; pi != SH_NIL; prev = pi, pi = a->pages[pi].next) {
          SH_CHECK(pi >= a->part_first[part] && pi < a->part_end[part], "owner %u, '%s': list link %u outside the partition", o, _sh_part_name(part), pi);
          SH_CHECK(++steps <= a->part_end[part], "owner %u, '%s': page list has a cycle", o, _sh_part_name(part));
          const sh_page_t *pg = &a->pages[pi];
          SH_CHECK(pg->prev == prev, "page %u: back link %u, expected %u", pi, pg->prev, prev);
          SH_CHECK(!in_list[pi], "page %u: on two page lists", pi);
          in_list[pi] = 1;
          SH_CHECK(sh_atomic_load_relaxed(&pg->owner) == o, "page %u: on owner %u's list but owned by %u", pi, o, sh_atomic_load_relaxed(&pg->owner));
          uint32_t st = sh_atomic_load_relaxed(&pg->state);
          if (c < a->nclasses) {
            SH_CHECK(st == SH_PAGE_SMALL && sh_atomic_load_relaxed(&pg->sclass) == c, "page %u: on the list of class %u but is state %u class %u", pi, c, st, sh_atomic_load_relaxed(&pg->sclass));
            owner_pages[o] += 1;
          } else {
            SH_CHECK(st == SH_PAGE_LARGE, "page %u: on a large list but is state %u", pi, st);
            owner_pages[o] += sh_atomic_load_relaxed(&pg->capacity);
          }
        }
      }
    }
    /* every page: state agrees with bitmap, lists and runs */
    for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) {
      const sh_page_t *pg = &a->pages[pi];
      uint32_t st = sh_atomic_load_relaxed(&pg->state);
      SH_CHECK((((sh_atomic_load_relaxed(&a->bitmap[pi / 64]) >> (pi % 64)) & 1) != 0) == (st != SH_PAGE_FREE), "page %u: bitmap disagrees with state %u", pi, st);
      SH_CHECK(pg->partition == (uint32_t)part, "page %u: partition field %u, expected %d", pi, pg->partition, part);
      if (st != SH_PAGE_FREE) used++;
      if (st == SH_PAGE_SMALL) {
        SH_CHECK(in_list[pi], "page %u: small page on no owner's list (lost)", pi);
        rc = sh_check_small_page(a, pi, seen, mags);
        if (rc) goto done;
      } else if (st == SH_PAGE_LARGE) {
        uint32_t n = sh_atomic_load_relaxed(&pg->capacity);
        SH_CHECK(in_list[pi], "page %u: large run on no owner's list (lost)", pi);
        SH_CHECK(n >= 1 && pi + n <= a->part_end[part], "page %u: large run of %u pages overruns the partition", pi, n);
        uint32_t claim = sh_atomic_load_relaxed(&pg->claim);
        if (claim != 0) {
          uint32_t slot = sh_claim_slot(claim);
          bool kept = false;
          for (int r = 0; slot < a->nslots && r < SH_TC_RUNS; r++)
            kept |= sh_atomic_load_relaxed(&_sh_tc_slot_at(a, slot)->runs[r].page) == pi &&
                    sh_atomic_load_relaxed(&_sh_tc_slot_at(a, slot)->runs[r].claim) == claim;
          SH_CHECK(kept, "page %u: run marked as kept by thread slot %u, which does not keep it", pi, slot);
        }
        for (uint32_t q = pi + 1; q < pi + n; q++)
          SH_CHECK(sh_atomic_load_relaxed(&a->pages[q].state) == SH_PAGE_TAIL && sh_atomic_load_relaxed(&a->pages[q].run_head) == pi, "page %u: not a tail of the run at %u", q, pi);
      } else if (st == SH_PAGE_TAIL) {
        uint32_t h = sh_atomic_load_relaxed(&pg->run_head);
        SH_CHECK(h < pi && sh_atomic_load_relaxed(&a->pages[h].state) == SH_PAGE_LARGE, "page %u: tail without its run head", pi);
      } else {
        SH_CHECK(st == SH_PAGE_FREE, "page %u: unknown state %u", pi, st);
      }
    }
    SH_CHECK(used == sh_atomic_load_relaxed(&a->hdr->pages_used[part]),
             "partition '%s': %llu pages in use, its counter says %llu", _sh_part_name(part),
             (unsigned long long)used, (unsigned long long)sh_atomic_load_relaxed(&a->hdr->pages_used[part]));
    for (uint32_t o = 0; o < a->max_owners; o++)
      SH_CHECK(owner_pages[o] == sh_atomic_load_relaxed(&a->owners[o].pages[part]),
               "owner %u, '%s': holds %llu pages, its counter says %llu", o, _sh_part_name(part),
               (unsigned long long)owner_pages[o], (unsigned long long)sh_atomic_load_relaxed(&a->owners[o].pages[part]));
  }
done:
  while (locked > 0) _sh_part_unlock(a, --locked);
  if (!a->read_only) _sh_owner_unlock(a);
  free(seen), free(owner_pages), free(in_list), free(mag_offs);
  return rc;
}

/* A thread's exit flush moves blocks from its magazines to their pages
 * without the partition locks, and may still run after Python's join()
 * returned: a walk that overlapped one saw a block in both places. Such a
 * walk is done again (SH_MAG_EXACT), so check() is exact at any moment and
 * never reports a flush in progress as damage. */
int sh_check(sh_arena_t *a) {
  int rc = SH_OK;
  /* Lock-free pops and pushes of running threads also move blocks while the
   * walk reads: damage is there on every walk, a race on one. A finding is
   * reported once it repeats on walks far enough apart. */
  for (int attempt = 0; attempt < 32; attempt++) {
    SH_MAG_EXACT(a, rc = sh_check_once(a));
    if (rc != SH_ECORRUPT) return rc;
    for (int k = 0; k <= attempt; k++) sched_yield();
  }
  return rc;
}
