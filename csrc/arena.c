/* Arena life: layout, header, create, attach (with validation), close. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sh_nursery.h"
#include "sh_tcache.h"
#include "sh_track.h"

/* ----- Layout ------------------------------------------------------------- */

typedef struct sh_layout_s {
  uint64_t pages_off, bitmap_off, owners_off, bins_off, stripes_off, sweep_off, ring_cap, tslots_off,
      tslot_size, leases_off, lease_cap, pins_off, pin_cap, meta_end, stripe_size;
  uint32_t total_pages, meta_pages, tc_entries;
} sh_layout_t;

static uint64_t sh_align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

static uint64_t sh_stripe_size(uint32_t nclasses) {
  uint64_t counters = 2ull * SH_NPARTITIONS * (nclasses + 1u) * sizeof(uint64_t);
  return sh_align_up(sizeof(sh_stripe_hdr_t) + counters, SH_CACHE_LINE);
}

/* The one place the metadata layout is computed: create writes it, attach
 * recomputes it and compares field by field. */
/* Four entries per class, rounded up to a power of two: owner 0 alone maps
 * every (partition, class) to its own entry, and other owners rarely collide. */
static uint32_t sh_tc_entries_for(uint32_t nclasses) {
  uint32_t n = 1;
  while (n < 4 * nclasses) n *= 2;
  return n;
}

/* Where a slot's magazines start, and how many classes have one. */
static uint64_t sh_mag_off(uint32_t tc_entries, uint32_t nclasses) {
  return sh_align_up(sizeof(sh_tslot_t) + (uint64_t)tc_entries * sizeof(sh_tc_entry_t) +
                         2ull * SH_NPARTITIONS * (nclasses + 1u) * sizeof(uint64_t),
                     SH_CACHE_LINE);
}
static uint32_t sh_mag_classes(uint64_t arena_size, uint32_t nclasses) {
  if (arena_size > SH_MAG_MAX_ARENA) return 0;
  return nclasses < SH_MAG_CLASSES ? nclasses : SH_MAG_CLASSES;
}
static uint32_t sh_mag_shift(uint64_t arena_size) { return arena_size >= SH_MAG_BIG_ARENA ? 7 : 6; }

static void sh_layout_compute(uint64_t arena_size, uint32_t page_shift, uint32_t max_owners,
                              uint32_t nclasses, uint32_t nslots, sh_layout_t *l) {
  l->total_pages = (uint32_t)(arena_size >> page_shift);
  uint64_t off = sh_align_up(sizeof(sh_header_t), SH_CACHE_LINE);
  l->pages_off = off;
  off += (uint64_t)l->total_pages * sizeof(sh_page_t);
  l->bitmap_off = off = sh_align_up(off, SH_CACHE_LINE);
  off += ((uint64_t)l->total_pages + 63) / 64 * 8;
  l->owners_off = off = sh_align_up(off, SH_CACHE_LINE);
  off += (uint64_t)max_owners * sizeof(sh_owner_t);
  l->bins_off = off = sh_align_up(off, SH_CACHE_LINE);
  /* bin sets: one per page (see _sh_owner_set), not per owner */
  off += (uint64_t)l->total_pages * (nclasses + 2u) * sizeof(uint32_t);
  l->stripes_off = off = sh_align_up(off, SH_CACHE_LINE);
  l->stripe_size = sh_stripe_size(nclasses);
  off += SH_NSTRIPES * l->stripe_size;
  l->sweep_off = off = sh_align_up(off, SH_CACHE_LINE);
  l->ring_cap = max_owners;
  off += SH_SWEEP_RINGS * l->ring_cap * sizeof(uint64_t);
  l->tslots_off = off = sh_align_up(off, SH_CACHE_LINE);
  l->tc_entries = sh_tc_entries_for(nclasses);
  l->tslot_size = sh_mag_off(l->tc_entries, nclasses) +
                  ((uint64_t)SH_NPARTITIONS * sh_mag_classes(arena_size, nclasses) << sh_mag_shift(arena_size));
  off += (uint64_t)nslots * l->tslot_size;
  l->leases_off = off = sh_align_up(off, SH_CACHE_LINE);
  /* leases and handle tags: an entry per four owner slots, at least 256, a
   * power of two (a full table first drops its stale entries) */
  l->lease_cap = 256;
  while (l->lease_cap < max_owners / 4) l->lease_cap *= 2;
  off += l->lease_cap * sizeof(sh_lease_t);
  l->pins_off = off = sh_align_up(off, SH_CACHE_LINE);
  /* pins by process: about one entry per two owner slots (the power of two
   * at or under that, so that a count just past a power of two does not
   * double the table), at least 64 */
  l->pin_cap = 64;
  while (l->pin_cap * 2 <= max_owners / 2) l->pin_cap *= 2;
  off += l->pin_cap * sizeof(sh_pin_t);
  l->meta_end = off;
  l->meta_pages = (uint32_t)((off + (1ull << page_shift) - 1) >> page_shift);
}

/* As many owners as the metadata budget (1 % of the arena) holds once the
 * parts that do not grow with owners are laid out, up to one per 16 KiB of
 * arena (an agent smaller than that is rare) and 2^20. Agents of a nursery
 * cost no bin sets, so owners are what the budget buys: a 1 GiB arena gets
 * 32 768 or more. Where the per-page parts alone come near 1 % or pass it
 * (pages of 16 KiB or less, whose bin sets and descriptors are 1.3-4 % of
 * any arena; or a heap under 64 MiB), owners still get a quarter of a
 * percent of the arena past them: the floor of 64 they got before left a
 * 1 GiB heap of 16 KiB pages, or an 8 GiB one, room for 63 agents. At the
 * default page size from 64 MiB up the owners' share of 1 % is above
 * that quarter, so those heaps keep their 1 %. At least 64 owners. */
static uint32_t sh_default_owners(uint64_t arena_size, uint32_t page_shift, uint32_t nclasses, uint32_t nslots) {
  uint64_t budget = arena_size / 100, cap = arena_size >> 14;
  sh_layout_t l;
  sh_layout_compute(arena_size, page_shift, 1, nclasses, nslots, &l);
  if (budget < l.meta_end + arena_size / 400) budget = l.meta_end + arena_size / 400;
  uint32_t lo = 65, hi = (uint32_t)(cap > (1u << 20) ? (1u << 20) : cap < 65 ? 65 : cap);
  while (lo < hi) { /* the largest count that fits: the layout grows with it */
    uint32_t mid = lo + (hi - lo + 1) / 2;
    sh_layout_compute(arena_size, page_shift, mid, nclasses, nslots, &l);
    if (l.meta_end <= budget) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

static uint64_t sh_checksum(const sh_header_t *hdr) {
  const uint8_t *p = (const uint8_t *)hdr + offsetof(sh_header_t, format_version);
  const uint8_t *end = (const uint8_t *)hdr + offsetof(sh_header_t, checksum);
  uint64_t h = UINT64_C(0xcbf29ce484222325); /* FNV-1a */
  for (; p < end; p++) h = (h ^ *p) * UINT64_C(0x100000001b3);
  return h;
}

/* ----- Options ------------------------------------------------------------ */

void sh_options_init(sh_options_t *opts) {
  opts->ratios[SH_PART_CONTEXT] = 0.4;
  opts->ratios[SH_PART_SHARED] = 0.3;
  opts->ratios[SH_PART_COMM] = 0.2;
  opts->ratios[SH_PART_SYSTEM] = 0.1;
  opts->page_size = SH_DEFAULT_PAGE_SIZE;
  opts->max_owners = 0;
  opts->max_threads = 0;
  opts->min_system_pages = 0;
}

static int sh_options_validate(const sh_options_t *o, uint64_t size) {
  double sum = 0;
  for (int p = 0; p < SH_NPARTITIONS; p++) {
    if (!(o->ratios[p] > 0 && o->ratios[p] < 1))
      return _sh_fail(SH_EINVAL, "ratio of partition '%s' is %g: each must be above 0 and below 1",
                      _sh_part_name(p), o->ratios[p]);
    sum += o->ratios[p];
  }
  if (fabs(sum - 1.0) > 1e-6)
    return _sh_fail(SH_EINVAL, "partition ratios sum to %.9g: they must sum to 1", sum);
  uint32_t ps = o->page_size;
  if (ps < SH_MIN_PAGE_SIZE || ps > SH_MAX_PAGE_SIZE || (ps & (ps - 1)))
    return _sh_fail(SH_EINVAL, "page size %u must be a power of two from %u to %u", ps,
                    SH_MIN_PAGE_SIZE, SH_MAX_PAGE_SIZE);
  if (ps % (uint32_t)sysconf(_SC_PAGESIZE))
    return _sh_fail(SH_EINVAL, "page size %u is not a multiple of the OS page size %ld", ps,
                    sysconf(_SC_PAGESIZE));
  if (size / ps < 8)
    return _sh_fail(SH_EINVAL, "arena of %llu bytes is too small: it needs at least 8 pages of %u",
                    (unsigned long long)size, ps);
  if (size / ps >= (1ull << 31))
    return _sh_fail(SH_EINVAL, "arena of %llu bytes has too many pages: use larger pages",
                    (unsigned long long)size);
  if (o->max_owners > (1u << 20))
    return _sh_fail(SH_EINVAL, "max_owners %u is above the limit of %u", o->max_owners, 1u << 20);
  if (o->max_threads > SH_MAX_THREAD_SLOTS)
    return _sh_fail(SH_EINVAL, "max_threads %u is above the limit of %u", o->max_threads, SH_MAX_THREAD_SLOTS);
  return SH_OK;
}

/* ----- Create ------------------------------------------------------------- */

static int sh_handle_load(sh_arena_t *a) {
  sh_header_t *hdr = a->hdr = (sh_header_t *)a->base;
  a->pages = (sh_page_t *)(a->base + hdr->pages_off);
  a->bitmap = (_Atomic uint64_t *)(a->base + hdr->bitmap_off);
  a->owners = (sh_owner_t *)(a->base + hdr->owners_off);
  a->bins = (_Atomic uint32_t *)(a->base + hdr->bins_off);
  a->set_stride = hdr->nclasses + 2u;
  a->stripes = a->base + hdr->stripes_off;
  a->rings = (_Atomic uint64_t *)(a->base + hdr->sweep_off);
  a->ring_cap = hdr->ring_cap;
  a->page_shift = hdr->page_shift;
  a->total_pages = hdr->total_pages;
  a->meta_pages = hdr->meta_pages;
  a->max_owners = hdr->max_owners;
  a->nstripes = hdr->nstripes;
  a->stripe_size = hdr->stripe_size;
  a->tslots = a->base + hdr->tslots_off;
  a->tslot_size = hdr->tslot_size;
  a->nslots = hdr->nslots;
  a->tc_mask = hdr->tc_entries - 1;
  a->mag_off = sh_mag_off(hdr->tc_entries, hdr->nclasses);
  a->mag_classes = sh_mag_classes(hdr->arena_size, hdr->nclasses);
  a->mag_shift = sh_mag_shift(hdr->arena_size);
  a->mag_cap = ((1u << a->mag_shift) - (uint32_t)offsetof(sh_mag_t, unit)) / sizeof(uint32_t);
  a->leases = (sh_lease_t *)(a->base + hdr->leases_off);
  a->lease_mask = hdr->lease_cap - 1;
  a->pins = (sh_pin_t *)(a->base + hdr->pins_off);
  a->pin_mask = hdr->pin_cap - 1;
  for (int p = 0; p < SH_NPARTITIONS; p++) {
    a->part_first[p] = hdr->parts[p].first_usable;
    a->part_end[p] = hdr->parts[p].first_page + hdr->parts[p].npages;
    a->parts[p] = hdr->parts[p];
  }
  const uint64_t regions[SH_NREGIONS + 1] = {0,           hdr->pages_off,  hdr->bitmap_off, hdr->owners_off,
                                             hdr->bins_off, hdr->stripes_off, hdr->sweep_off, hdr->tslots_off,
                                             hdr->leases_off, hdr->pins_off, hdr->meta_end};
  memcpy(a->region_offset, regions, sizeof regions);
  _sh_classes_load(a);
  a->mag_limit = a->mag_classes ? a->classes[a->mag_classes - 1].size : 0;
  _sh_nursery_load(a);
  return SH_OK;
}

static int sh_header_init(sh_arena_t *a, const sh_options_t *o) {
  sh_header_t *hdr = (sh_header_t *)a->base;
  uint32_t shift = (uint32_t)__builtin_ctz(o->page_size);
  uint32_t sizes[SH_MAX_CLASSES], small_limit;
  uint32_t nclasses = _sh_classes_build(o->page_size, sizes, &small_limit);
  uint32_t nslots = o->max_threads;
  if (nslots == 0) { /* one thread cache per 8 MiB of arena, within [4, 64] */
    uint64_t n = a->size >> 23;
    nslots = (uint32_t)(n < 4 ? 4 : n > 64 ? 64 : n);
  }
  /* the table holds the nursery's slot on top of what the caller counts
   * (the shared default and its agents) */
  uint32_t max_owners = o->max_owners ? o->max_owners + 1 : sh_default_owners(a->size, shift, nclasses, nslots);
  sh_layout_t l;
  sh_layout_compute(a->size, shift, max_owners, nclasses, nslots, &l);

  uint32_t part_pages[SH_NPARTITIONS], assigned = 0;
  for (int p = 0; p < SH_PART_SYSTEM; p++) {
    part_pages[p] = (uint32_t)llround(o->ratios[p] * l.total_pages);
    if (part_pages[p] == 0)
      return _sh_fail(SH_EINVAL, "partition '%s' gets no page at ratio %g of %u pages: raise the size or the ratio",
                      _sh_part_name(p), o->ratios[p], l.total_pages);
    assigned += part_pages[p];
  }
  /* the core's own records need one page past the metadata; a layer above
   * that keeps its indexes and registry there asks for what those need */
  uint32_t spare = o->min_system_pages ? o->min_system_pages : 1;
  if ((uint64_t)assigned + l.meta_pages + spare > l.total_pages) {
    /* what would do: the system share of the pages holding both, at this ratio */
    double pages = ceil((l.meta_pages + spare) / o->ratios[SH_PART_SYSTEM]);
    return _sh_fail(SH_EINVAL,
                    "the system partition (%u pages of %u bytes at ratio %g) cannot hold the allocator's metadata "
                    "(%u pages) and %u page(s) more for the heap's own records: raise the size (to about %.0f MiB) "
                    "or the system ratio, lower max_owners or max_threads, or use smaller pages",
                    l.total_pages - (assigned < l.total_pages ? assigned : l.total_pages), o->page_size,
                    o->ratios[SH_PART_SYSTEM], l.meta_pages, spare, ceil(pages * o->page_size / 1048576.0));
  }
  part_pages[SH_PART_SYSTEM] = l.total_pages - assigned;

  hdr->format_version = SH_FORMAT_VERSION;
  hdr->header_size = sizeof(sh_header_t);
  hdr->arena_size = a->size;
  hdr->page_size = o->page_size;
  hdr->page_shift = shift;
  hdr->total_pages = l.total_pages;
  hdr->meta_pages = l.meta_pages;
  hdr->nclasses = nclasses;
  hdr->small_limit = small_limit;
  hdr->max_owners = max_owners;
  hdr->nstripes = SH_NSTRIPES;
  hdr->pages_off = l.pages_off;
  hdr->bitmap_off = l.bitmap_off;
  hdr->owners_off = l.owners_off;
  hdr->bins_off = l.bins_off;
  hdr->stripes_off = l.stripes_off;
  hdr->sweep_off = l.sweep_off;
  hdr->ring_cap = l.ring_cap;
  hdr->tslots_off = l.tslots_off;
  hdr->tslot_size = l.tslot_size;
  hdr->nslots = nslots;
  hdr->tc_entries = l.tc_entries;
  hdr->leases_off = l.leases_off;
  hdr->lease_cap = l.lease_cap;
  hdr->pins_off = l.pins_off;
  hdr->pin_cap = l.pin_cap;
  hdr->meta_end = l.meta_end;
  hdr->stripe_size = l.stripe_size;
  hdr->created_ns = _sh_os_now_ns();
  memcpy(hdr->class_size, sizes, nclasses * sizeof(uint32_t));
  /* system first, so the header and metadata open it; then the others in order */
  static const int order[SH_NPARTITIONS] = {SH_PART_SYSTEM, SH_PART_CONTEXT, SH_PART_SHARED, SH_PART_COMM};
  uint32_t next = 0;
  for (int i = 0; i < SH_NPARTITIONS; i++) {
    sh_part_desc_t *pd = &hdr->parts[order[i]];
    pd->first_page = next;
    pd->npages = part_pages[order[i]];
    pd->first_usable = order[i] == SH_PART_SYSTEM ? l.meta_pages : next;
    pd->offset = (uint64_t)next << shift;
    pd->size = (uint64_t)pd->npages << shift;
    pd->ratio_ppm = (uint32_t)llround(o->ratios[order[i]] * 1e6);
    next += pd->npages;
  }
  hdr->checksum = sh_checksum(hdr);

  for (int p = 0; p < SH_NPARTITIONS; p++) {
    int rc = _sh_lock_init(&hdr->part_lock[p]);
    if (rc) return rc;
  }
  int rc = _sh_lock_init(&hdr->owner_lock);
  if (!rc) rc = _sh_lock_init(&hdr->lease_lock);
  if (rc) return rc;
  sh_atomic_store_relaxed(&hdr->key_seed, _sh_os_random32());

  sh_handle_load(a);
  for (uint32_t pi = 0; pi < l.total_pages; pi++) {
    sh_page_t *pg = &a->pages[pi];
    pg->next = pg->prev = SH_NIL;
    for (int p = 0; p < SH_NPARTITIONS; p++)
      if (pi >= hdr->parts[p].first_page && pi < hdr->parts[p].first_page + hdr->parts[p].npages)
        pg->partition = (uint32_t)p;
    sh_atomic_store_relaxed(&pg->run_head, SH_NIL);
    if (pi < l.meta_pages) {
      sh_atomic_store_relaxed(&pg->state, SH_PAGE_META);
      sh_atomic_or_relaxed(&a->bitmap[pi / 64], 1ull << (pi % 64));
    }
  }
  /* the bin sets and the owners' references to them start zero: the mapping is zeroed */
  for (uint32_t i = 0; i < nslots; i++) {
    for (int r = 0; r < SH_TC_RUNS; r++) sh_atomic_store_relaxed(&_sh_tc_slot_at(a, i)->runs[r].page, SH_NIL);
    sh_tc_entry_t *entries = _sh_tc_entries(_sh_tc_slot_at(a, i));
    for (uint32_t k = 0; k < l.tc_entries; k++)
      for (int w = 0; w < SH_TC_WAYS; w++) sh_atomic_store_relaxed(&entries[k].way[w].page, SH_NIL);
  }
  sh_owner_t *def = &a->owners[SH_OWNER_DEFAULT];
  def->pid = _sh_os_pid();
  sh_process_start_time(def->pid, &def->pid_start);
  def->created_ns = hdr->created_ns;
  sh_atomic_store_relaxed(&def->generation, 1);
  sh_atomic_store_relaxed(&def->state, SH_OWNER_LIVE);
  sh_owner_t *nursery = &a->owners[SH_OWNER_NURSERY]; /* the pages agents share: as long-lived as owner 0 */
  *nursery = *def;
  _sh_nursery_create(a);
  return SH_OK;
}

int sh_create(sh_arena_t **out, sh_backing_t backing, const char *name, size_t size,
              const sh_options_t *opts) {
  sh_options_t defaults;
  if (!opts) {
    sh_options_init(&defaults);
    opts = &defaults;
  }
  if (backing != SH_BACKING_ANON && backing != SH_BACKING_SHM && backing != SH_BACKING_FILE)
    return _sh_fail(SH_EINVAL, "unknown backing %d", (int)backing);
  int rc = sh_options_validate(opts, size);
  if (rc) return rc;
  sh_arena_t *a = calloc(1, sizeof *a);
  if (!a) return _sh_fail(SH_ENOMEM, "out of process memory for an arena handle");
  a->size = (uint64_t)size & ~((uint64_t)opts->page_size - 1);
  a->backing = backing;
  a->fd = -1;
  rc = _sh_os_create(backing, name, a->size, &a->fd, &a->base);
  if (rc) {
    free(a);
    return rc;
  }
  sh_track_reset(a->base, a->size); /* shadow left poisoned by an earlier mapping here */
  rc = sh_header_init(a, opts);
  if (rc) {
    _sh_os_unmap(a->base, a->size, a->fd);
    if (backing != SH_BACKING_ANON) sh_unlink(backing, name);
    free(a);
    return rc;
  }
  /* Published last: an attacher never trusts a half-built header. */
  atomic_store_explicit((_Atomic uint64_t *)&a->hdr->magic, SH_MAGIC, memory_order_release);
  _sh_tc_register(a);
  *out = a;
  return SH_OK;
}

/* ----- Attach ------------------------------------------------------------- */

#define SH_EXPECT(cond, field, ...)                                                           \
  do {                                                                                        \
    if (!(cond)) return _sh_fail(SH_ECORRUPT, "corrupt arena header: field '" field "' " __VA_ARGS__); \
  } while (0)

static int sh_header_validate(const sh_header_t *hdr, uint64_t mapped) {
  uint64_t magic = atomic_load_explicit((_Atomic uint64_t *)&hdr->magic, memory_order_acquire);
  if (magic != SH_MAGIC)
    return _sh_fail(SH_EMAGIC, "not a swarmheap arena (magic %016llx), or one still being created",
                    (unsigned long long)magic);
  if (hdr->format_version != SH_FORMAT_VERSION)
    return _sh_fail(SH_EVERSION,
                    "arena format version %u; this build reads version %u: open it with the swarmheap that "
                    "made it, or create the heap again with this one",
                    hdr->format_version, SH_FORMAT_VERSION);
  if (sh_checksum(hdr) != hdr->checksum)
    return _sh_fail(SH_ECHECKSUM, "arena header checksum mismatch: the header was damaged");
  SH_EXPECT(hdr->header_size == sizeof(sh_header_t), "header_size", "is %u, expected %zu",
            hdr->header_size, sizeof(sh_header_t));
  if (hdr->arena_size > mapped)
    return _sh_fail(SH_ETRUNCATED, "arena is %llu bytes but its header says %llu: truncated",
                    (unsigned long long)mapped, (unsigned long long)hdr->arena_size);
  SH_EXPECT(hdr->arena_size == mapped, "arena_size", "is %llu, the mapping is %llu bytes",
            (unsigned long long)hdr->arena_size, (unsigned long long)mapped);
  uint32_t ps = hdr->page_size;
  SH_EXPECT(ps >= SH_MIN_PAGE_SIZE && ps <= SH_MAX_PAGE_SIZE && !(ps & (ps - 1)), "page_size",
            "is %u", ps);
  SH_EXPECT(hdr->page_shift == (uint32_t)__builtin_ctz(ps), "page_shift", "is %u for pages of %u",
            hdr->page_shift, ps);
  SH_EXPECT(hdr->arena_size % ps == 0, "arena_size", "is not a whole number of pages");
  uint32_t sizes[SH_MAX_CLASSES], small_limit;
  uint32_t nclasses = _sh_classes_build(ps, sizes, &small_limit);
  SH_EXPECT(hdr->nclasses == nclasses, "nclasses", "is %u, expected %u", hdr->nclasses, nclasses);
  SH_EXPECT(hdr->small_limit == small_limit, "small_limit", "is %u, expected %u", hdr->small_limit,
            small_limit);
  SH_EXPECT(memcmp(hdr->class_size, sizes, nclasses * sizeof(uint32_t)) == 0, "class_size",
            "does not match the size-class table for pages of %u", ps);
  SH_EXPECT(hdr->max_owners >= 1 && hdr->max_owners <= (1u << 20), "max_owners", "is %u",
            hdr->max_owners);
  SH_EXPECT(hdr->nstripes == SH_NSTRIPES, "nstripes", "is %u", hdr->nstripes);
  SH_EXPECT(hdr->nslots >= 1 && hdr->nslots <= SH_MAX_THREAD_SLOTS, "nslots", "is %u", hdr->nslots);
  sh_layout_t l;
  sh_layout_compute(hdr->arena_size, hdr->page_shift, hdr->max_owners, nclasses, hdr->nslots, &l);
  SH_EXPECT(hdr->total_pages == l.total_pages, "total_pages", "is %u, expected %u", hdr->total_pages,
            l.total_pages);
  SH_EXPECT(hdr->meta_pages == l.meta_pages, "meta_pages", "is %u, expected %u", hdr->meta_pages,
            l.meta_pages);
  SH_EXPECT(hdr->pages_off == l.pages_off, "pages_off", "is %llu", (unsigned long long)hdr->pages_off);
  SH_EXPECT(hdr->bitmap_off == l.bitmap_off, "bitmap_off", "is %llu", (unsigned long long)hdr->bitmap_off);
  SH_EXPECT(hdr->owners_off == l.owners_off, "owners_off", "is %llu", (unsigned long long)hdr->owners_off);
  SH_EXPECT(hdr->bins_off == l.bins_off, "bins_off", "is %llu", (unsigned long long)hdr->bins_off);
  SH_EXPECT(hdr->stripes_off == l.stripes_off, "stripes_off", "is %llu",
            (unsigned long long)hdr->stripes_off);
  SH_EXPECT(hdr->stripe_size == l.stripe_size, "stripe_size", "is %llu",
            (unsigned long long)hdr->stripe_size);
  SH_EXPECT(hdr->sweep_off == l.sweep_off, "sweep_off", "is %llu", (unsigned long long)hdr->sweep_off);
  SH_EXPECT(hdr->ring_cap == l.ring_cap, "ring_cap", "is %llu", (unsigned long long)hdr->ring_cap);
  SH_EXPECT(hdr->tslots_off == l.tslots_off, "tslots_off", "is %llu", (unsigned long long)hdr->tslots_off);
  SH_EXPECT(hdr->tslot_size == l.tslot_size, "tslot_size", "is %llu", (unsigned long long)hdr->tslot_size);
  SH_EXPECT(hdr->tc_entries == l.tc_entries, "tc_entries", "is %u", hdr->tc_entries);
  SH_EXPECT(hdr->leases_off == l.leases_off, "leases_off", "is %llu", (unsigned long long)hdr->leases_off);
  SH_EXPECT(hdr->lease_cap == l.lease_cap, "lease_cap", "is %llu", (unsigned long long)hdr->lease_cap);
  SH_EXPECT(hdr->pins_off == l.pins_off, "pins_off", "is %llu", (unsigned long long)hdr->pins_off);
  SH_EXPECT(hdr->pin_cap == l.pin_cap, "pin_cap", "is %llu", (unsigned long long)hdr->pin_cap);
  SH_EXPECT(hdr->meta_end == l.meta_end, "meta_end", "is %llu", (unsigned long long)hdr->meta_end);
  static const int order[SH_NPARTITIONS] = {SH_PART_SYSTEM, SH_PART_CONTEXT, SH_PART_SHARED, SH_PART_COMM};
  uint32_t next = 0;
  uint64_t ppm = 0;
  for (int i = 0; i < SH_NPARTITIONS; i++) {
    const sh_part_desc_t *pd = &hdr->parts[order[i]];
    SH_EXPECT(pd->first_page == next, "parts.first_page", "of '%s' is %u, expected %u",
              _sh_part_name(order[i]), pd->first_page, next);
    SH_EXPECT(pd->npages >= 1 && pd->npages <= l.total_pages - next, "parts.npages",
              "of '%s' is %u", _sh_part_name(order[i]), pd->npages);
    uint32_t usable = order[i] == SH_PART_SYSTEM ? l.meta_pages : next;
    SH_EXPECT(pd->first_usable == usable && usable < next + pd->npages, "parts.first_usable",
              "of '%s' is %u", _sh_part_name(order[i]), pd->first_usable);
    SH_EXPECT(pd->offset == (uint64_t)next << hdr->page_shift, "parts.offset", "of '%s'",
              _sh_part_name(order[i]));
    SH_EXPECT(pd->size == (uint64_t)pd->npages << hdr->page_shift, "parts.size", "of '%s'",
              _sh_part_name(order[i]));
    SH_EXPECT(pd->ratio_ppm > 0 && pd->ratio_ppm < 1000000, "parts.ratio_ppm", "of '%s' is %u",
              _sh_part_name(order[i]), pd->ratio_ppm);
    ppm += pd->ratio_ppm;
    next += pd->npages;
  }
  SH_EXPECT(next == l.total_pages, "parts", "cover %u pages of %u", next, l.total_pages);
  SH_EXPECT(ppm >= 999996 && ppm <= 1000004, "parts.ratio_ppm", "sum to %llu ppm",
            (unsigned long long)ppm);
  return SH_OK;
}

int sh_attach(sh_arena_t **out, sh_backing_t backing, const char *name, int read_only) {
  int fd;
  uint64_t size;
  int rc = _sh_os_open(backing, name, read_only, &fd, &size);
  if (rc) return rc;
  if (size < sizeof(sh_header_t)) {
    _sh_os_unmap(NULL, 0, fd);
    return _sh_fail(SH_ETRUNCATED, "'%s' is %llu bytes, shorter than an arena header (%zu)", _sh_os_shown(backing, name),
                    (unsigned long long)size, sizeof(sh_header_t));
  }
  sh_arena_t *a = calloc(1, sizeof *a);
  if (!a) {
    _sh_os_unmap(NULL, 0, fd);
    return _sh_fail(SH_ENOMEM, "out of process memory for an arena handle");
  }
  a->fd = fd;
  a->size = size;
  a->backing = backing;
  a->read_only = read_only;
  rc = _sh_os_map(fd, size, read_only, &a->base);
  if (!rc) sh_track_reset(a->base, size);
  if (!rc) rc = sh_header_validate((const sh_header_t *)a->base, size);
  if (rc) {
    _sh_os_unmap(a->base, size, fd);
    free(a);
    return rc;
  }
  sh_handle_load(a);
  _sh_tc_register(a);
  *out = a;
  return SH_OK;
}

void sh_close(sh_arena_t *arena) {
  if (!arena) return;
  _sh_tc_close(arena);
  sh_track_reset(arena->base, arena->size); /* the next mapping at this address starts clean */
  _sh_os_unmap(arena->base, arena->size, arena->fd);
  free(arena);
}

void *sh_base(const sh_arena_t *arena) { return arena->base; }

void sh_arena_info(const sh_arena_t *arena, sh_arena_info_t *info) {
  /* from the handle's copies, made when the header was validated: the
   * header's words may have been damaged since (a count read from it sized
   * the class copy below, past the end of the caller's struct) */
  memset(info, 0, sizeof *info);
  info->size = arena->size;
  info->page_size = 1u << arena->page_shift;
  info->nclasses = arena->nclasses;
  info->max_owners = arena->max_owners; /* the table: the caller's count and the nursery's slot */
  info->format_version = SH_FORMAT_VERSION; /* attach refuses any other */
  info->small_limit = arena->small_limit;
  info->metadata_bytes = arena->region_offset[SH_NREGIONS];
  if (arena->nursery_records) {
    info->nursery_blocks = SH_NURSERY_SLOTS;
    info->nursery_class_blocks = SH_NURSERY_CLASS_BLOCKS;
    for (uint32_t c = 0; c < arena->nclasses; c++)
      if (arena->classes[c].nursery_capacity) {
        info->nursery_limit = arena->classes[c].size;
        info->nursery_classes |= UINT64_C(1) << c;
      }
  }
  for (int p = 0; p < SH_NPARTITIONS; p++) {
    info->part_offset[p] = arena->parts[p].offset;
    info->part_size[p] = arena->parts[p].size;
  }
  for (uint32_t c = 0; c < arena->nclasses; c++) info->class_size[c] = arena->classes[c].size;
  memcpy(info->region_offset, arena->region_offset, sizeof info->region_offset);
}
