/* The nursery: an agent's first small blocks come from pages that many agents
 * share, so that a small agent does not hold a page per size class it touches
 * (1 091 small agents filled a 1 GiB heap at 3 % use before it).
 *
 * Nursery pages are SMALL pages of the pseudo-owner SH_OWNER_NURSERY, served
 * by the same thread caches and free stacks as any page. What makes them a
 * nursery is two records that name the agent of each block:
 *  - the page's map: one owner word per block at the page's end (the class's
 *    nursery_capacity leaves room for it), read by a free or a query that has
 *    only the offset;
 *  - the agent's record: SH_NURSERY_SLOTS offsets in a run of `system` made
 *    with the arena (256 bytes per owner slot), read by its recycle, which so
 *    costs O(its pages + its nursery blocks).
 * A block belongs to the agent whose record lists it; taking it out of the
 * record (one CAS) is what a free, another free and a recycle race for.
 *
 * The share is bounded: an agent with SH_NURSERY_SLOTS nursery blocks live
 * gets pages of its own for the next ones (and a block of a class that is
 * not the nursery's, sh_types.h, always does); past its record's first line
 * (SH_NURSERY_LINE blocks), so does a class of which it holds
 * SH_NURSERY_CLASS_BLOCKS blocks and a page / SH_NURSERY_CLASS_SHARE of
 * bytes there. Order of an allocation: pop, list,
 * map; a process killed between pop and list loses one block to the page
 * (as a kill inside any allocation can), never a block that two own. */
#include <string.h>

#include "sh_nursery.h"
#include "sh_page.h"

/* The records' run, made with the arena; a create whose `system` cannot
 * hold it has no nursery (agents then take pages of their own). */
void _sh_nursery_create(sh_arena_t *a) {
  uint64_t need = (uint64_t)a->max_owners * SH_NURSERY_RECORD_BYTES, off;
  if (_sh_run_reserve(a, SH_OWNER_NURSERY, SH_PART_SYSTEM, need, &off) != SH_OK) return;
  sh_atomic_store_release(&a->hdr->nursery_records_off, off);
  _sh_nursery_load(a);
}

/* An attach trusts the records' offset only once it is the nursery's run in
 * `system`, long enough for every owner slot. */
void _sh_nursery_load(sh_arena_t *a) {
  uint64_t off = sh_atomic_load_acquire(&a->hdr->nursery_records_off);
  uint32_t pi = (uint32_t)(off >> a->page_shift);
  a->nursery_records = NULL;
  if (off == 0 || (off & ((1ull << a->page_shift) - 1)) || !_sh_page_in_part(a, pi, SH_PART_SYSTEM)) return;
  const sh_page_t *pg = &a->pages[pi];
  uint64_t run = (uint64_t)sh_atomic_load_relaxed(&pg->capacity) << a->page_shift;
  if (sh_atomic_load_relaxed(&pg->state) != SH_PAGE_LARGE || sh_atomic_load_relaxed(&pg->owner) != SH_OWNER_NURSERY ||
      run < (uint64_t)a->max_owners * SH_NURSERY_RECORD_BYTES || off + run > a->size)
    return;
  a->nursery_records = (_Atomic uint32_t *)(a->base + off);
}

/* The block at `offset` if it is a block of a nursery page: its page, class
 * and index; false for anything else (a damaged record entry). */
static bool sh_nursery_block(const sh_arena_t *a, uint64_t offset, uint32_t *pi, int *c, uint32_t *index) {
  if (offset >= a->size) return false;
  *pi = (uint32_t)(offset >> a->page_shift);
  const sh_page_t *pg = &a->pages[*pi];
  if (sh_atomic_load_acquire(&pg->state) != SH_PAGE_SMALL || !(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_NURSERY) ||
      sh_atomic_load_relaxed(&pg->owner) != SH_OWNER_NURSERY)
    return false;
  *c = _sh_pg_class(a, pg);
  const sh_class_t *cls = &a->classes[*c];
  uint32_t in_page = (uint32_t)(offset & ((1u << a->page_shift) - 1));
  if (in_page * cls->div_magic > cls->div_magic - 1) return false;
  *index = in_page / cls->size;
  return *index < cls->nursery_capacity;
}

/* The blocks of class `c` the record lists. Read only by an agent past its
 * record's first line: a small agent never pays for it, and a busy one once
 * per class, as its next blocks of the class then come from a page of its
 * own. */
static uint32_t sh_nursery_class_blocks(const sh_arena_t *a, _Atomic uint32_t *record, int c) {
  uint32_t blocks = 0, pi, index;
  int bc;
  for (int k = 0; k < SH_NURSERY_SLOTS; k++)
    blocks += sh_nursery_block(a, (uint64_t)sh_atomic_load_relaxed(&record[k]) << SH_UNIT_SHIFT, &pi, &bc, &index) &&
              bc == c;
  return blocks;
}

int _sh_nursery_alloc(sh_arena_t *a, uint32_t owner, int part, size_t size, bool may_lock, uint64_t *offset) {
  if (part == SH_PART_SYSTEM || size > SH_NURSERY_LOSSLESS_MAX) return SH_NURSERY_PASS;
  int c = _sh_size_class(a, size < SH_NURSERY_MIN_BLOCK ? SH_NURSERY_MIN_BLOCK : size);
  if (c < 0 || a->classes[c].nursery_capacity == 0) return SH_NURSERY_PASS;
  _Atomic uint32_t *record = _sh_nursery_record(a, owner);
  if (!record) return SH_NURSERY_PASS;
  /* The slots are read a line at a time, with no exit on the first empty
   * one inside a line: the reads do not wait on one another, and an agent
   * past its share (the common case of a busy one) tells that in a few
   * cycles rather than a loop of dependent branches (a fifth of an agent's
   * allocation, measured, with a loop over 16). A small agent's blocks are
   * in the first line, so it reads one, as it did when the record was 16
   * slots. */
  int slot = -1;
  for (int line = 0; line < SH_NURSERY_SLOTS && slot < 0; line += SH_NURSERY_LINE) {
    unsigned empty = 0;
#pragma GCC unroll 16
    for (int k = 0; k < SH_NURSERY_LINE; k++) empty |= (unsigned)(sh_atomic_load_relaxed(&record[line + k]) == 0) << k;
    if (empty) slot = line + __builtin_ctz(empty);
  }
  if (slot < 0) return SH_NURSERY_PASS; /* its share is full: pages of its own */
  if (slot >= SH_NURSERY_LINE) {
    /* a page of its own of the class, with room (its list's head): the
     * thread's cache missed it, and it costs nothing more to use */
    _Atomic uint32_t *bin = _sh_bin(a, owner, part, c);
    if (bin && sh_atomic_load_relaxed(bin) != SH_NIL) return SH_NURSERY_PASS;
    uint32_t held = sh_nursery_class_blocks(a, record, c);
    if (held >= SH_NURSERY_CLASS_BLOCKS &&
        (uint64_t)held * a->classes[c].size >= (1u << a->page_shift) / SH_NURSERY_CLASS_SHARE)
      return SH_NURSERY_PASS; /* a class it uses this much pays for a page of its own */
  }
  uint64_t off;
  size_t want = a->classes[c].size;
  int rc = may_lock ? sh_alloc(a, SH_OWNER_NURSERY, (sh_partition_t)part, want, &off)
                    : sh_alloc_nolock(a, SH_OWNER_NURSERY, (sh_partition_t)part, want, &off);
  if (rc != SH_OK) return rc;
  uint32_t pi, index;
  int bc;
  bool listed = false;
  if (sh_nursery_block(a, off, &pi, &bc, &index)) {
    uint32_t unit = (uint32_t)(off >> SH_UNIT_SHIFT);
    for (int k = slot; k < slot + SH_NURSERY_SLOTS && !listed; k++) {
      uint32_t expected = 0;
      listed = sh_atomic_cas_strong_acq_rel(&record[k % SH_NURSERY_SLOTS], &expected, unit);
    }
  }
  if (!listed) { /* other threads of the agent took the last slots */
    _sh_free_block(a, off, true);
    return SH_NURSERY_PASS;
  }
  sh_atomic_store_release(&_sh_nursery_map(a, pi, bc)[index], owner);
  /* the agent's recycle may have read its record before the block was
   * listed: it marks the agent not live first, so one of us sees the other
   * (as _sh_owner_still_usable_locked); whoever clears the map frees it */
  sh_atomic_fence();
  int usable = _sh_owner_usable(a, owner);
  if (sh_unlikely(usable != SH_OK)) {
    uint32_t named = owner, unit = (uint32_t)(off >> SH_UNIT_SHIFT);
    for (int k = 0; k < SH_NURSERY_SLOTS; k++) {
      uint32_t listed_unit = unit;
      if (sh_atomic_cas_strong_acq_rel(&record[k], &listed_unit, 0u)) break;
    }
    if (sh_atomic_cas_strong_acq_rel(&_sh_nursery_map(a, pi, bc)[index], &named, 0u)) _sh_free_block(a, off, true);
    return usable;
  }
  *offset = off;
  return SH_OK;
}

int sh_owner_nursery_opt_out(sh_arena_t *a, uint32_t id, uint32_t gen) {
  if (id < SH_FIRST_AGENT || id >= a->max_owners) return _sh_fail(SH_EINVAL, "owner %u is no agent", id);
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  sh_owner_t *o = &a->owners[id];
  if (sh_atomic_load_acquire(&o->generation) != gen || sh_atomic_load_acquire(&o->state) != SH_OWNER_LIVE)
    return _sh_fail(SH_EOWNER, "agent %u (generation %u) is not live", id, gen);
  _Atomic uint32_t *record = _sh_nursery_record(a, id);
  for (int k = 0; record && k < SH_NURSERY_SLOTS; k++) {
    uint32_t expected = 0;
    sh_atomic_cas_strong_acq_rel(&record[k], &expected, SH_NURSERY_OPTED_OUT); /* a block already there stays */
  }
  return SH_OK;
}

/* A block of class `c` on nursery page `pi`, counted in `info`. */
static void sh_nursery_count(const sh_arena_t *a, uint32_t pi, int c, sh_owner_info_t *info) {
  info->bytes[_sh_pg_part(&a->pages[pi])] += a->classes[c].size;
  info->class_bytes[c] += a->classes[c].size;
  info->blocks++;
}

/* A recycle: every block the record lists goes back, O(SH_NURSERY_SLOTS).
 * Every path that frees a nursery block (a free, an allocation undoing
 * itself, a sweep's orphan, this) first wins the CAS of the block's map word
 * from the owner to 0; the record only says where to look. So the recycle
 * reads each slot and clears it with a plain store, no exchange: an entry a
 * racing free took, or an allocation listed, after the read is decided by
 * the map CAS below or by that allocation's undo (the agent is not live, it
 * sees so). Half the atomic writes of freeing the blocks one by one. */
void _sh_nursery_release(sh_arena_t *a, uint32_t owner, sh_owner_info_t *final) {
  _Atomic uint32_t *record = _sh_nursery_record(a, owner);
  if (!record) return;
  struct {
    uint64_t off;
    _Atomic uint32_t *map_word;
    uint32_t pi;
    int c;
  } blocks[SH_NURSERY_SLOTS];
  int n = 0;
  for (int k = 0; k < SH_NURSERY_SLOTS; k++) {
    uint32_t unit = sh_atomic_load_acquire(&record[k]), index;
    if (unit == 0) continue;
    sh_atomic_store_relaxed(&record[k], 0u); /* the next agent of the slot starts with an empty record */
    uint64_t off = (uint64_t)unit << SH_UNIT_SHIFT;
    if (!sh_nursery_block(a, off, &blocks[n].pi, &blocks[n].c, &index)) continue; /* opted out, or damaged */
    blocks[n].off = off;
    blocks[n].map_word = &_sh_nursery_map(a, blocks[n].pi, blocks[n].c)[index];
    /* the map words and the blocks' links are written below: fetched
     * together here, their misses overlap instead of coming one by one */
    __builtin_prefetch(blocks[n].map_word, 1);
    __builtin_prefetch(a->base + off, 1);
    n++;
  }
  for (int i = 0; i < n; i++) {
    uint32_t named = owner;
    if (!sh_atomic_cas_strong_acq_rel(blocks[i].map_word, &named, 0u)) continue; /* freed by another */
    if (final) sh_nursery_count(a, blocks[i].pi, blocks[i].c, final);
    _sh_free_block(a, blocks[i].off, true);
  }
}

void _sh_nursery_info(const sh_arena_t *a, uint32_t owner, sh_owner_info_t *info) {
  _Atomic uint32_t *record = _sh_nursery_record(a, owner);
  for (int k = 0; record && k < SH_NURSERY_SLOTS; k++) {
    uint64_t off = (uint64_t)sh_atomic_load_acquire(&record[k]) << SH_UNIT_SHIFT;
    uint32_t pi, index;
    int c;
    if (off == 0 || !sh_nursery_block(a, off, &pi, &c, &index)) continue;
    sh_nursery_count(a, pi, c, info);
  }
}

int _sh_nursery_owner(const sh_arena_t *a, uint64_t offset, uint32_t *owner) {
  uint32_t pi, index;
  int c;
  if (!sh_nursery_block(a, offset, &pi, &c, &index))
    return _sh_fail(SH_EBADPTR, "offset %llu is not the start of a nursery block", (unsigned long long)offset);
  uint32_t o = sh_atomic_load_acquire(&_sh_nursery_map(a, pi, c)[index]);
  if (o < SH_FIRST_AGENT || o >= a->max_owners)
    return _sh_fail(SH_EBADPTR, "offset %llu is not a live block", (unsigned long long)offset);
  *owner = o;
  return SH_OK;
}

static bool sh_record_lists(const sh_arena_t *a, uint32_t owner, uint32_t unit) {
  _Atomic uint32_t *record = _sh_nursery_record(a, owner);
  for (int k = 0; record && k < SH_NURSERY_SLOTS; k++)
    if (sh_atomic_load_acquire(&record[k]) == unit) return true;
  return false;
}

uint64_t _sh_nursery_reclaim_orphans(sh_arena_t *a) {
  uint64_t reclaimed = 0;
  for (int part = 0; part < SH_NPARTITIONS; part++)
    for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) {
      const sh_page_t *pg = &a->pages[pi];
      if (sh_atomic_load_acquire(&pg->state) != SH_PAGE_SMALL || !(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_NURSERY))
        continue;
      int c = _sh_pg_class(a, pg);
      uint32_t n = a->classes[c].nursery_capacity;
      _Atomic uint32_t *map = _sh_nursery_map(a, pi, c);
      for (uint32_t i = 0; i < n; i++) {
        uint32_t o = sh_atomic_load_acquire(&map[i]);
        if (o < SH_FIRST_AGENT || o >= a->max_owners) continue;
        uint64_t off = ((uint64_t)pi << a->page_shift) + (uint64_t)i * a->classes[c].size;
        uint32_t unit = (uint32_t)(off >> SH_UNIT_SHIFT);
        if (sh_record_lists(a, o, unit)) continue;
        /* Named but not listed: a free (or recycle) died between its two
         * steps, or is between them now; the CAS makes one of us free it.
         * Decided again under the owner lock, which the frees of agents'
         * blocks (sh_owner_free) and recycles and offloads hold from their
         * claim to their free: one seen half way is done by then, and the
         * block may be free, or another allocation's (of the same agent,
         * listed), whose map word the CAS would take for the orphan's. */
        _sh_owner_lock(a);
        uint32_t named = sh_atomic_load_acquire(&map[i]);
        bool orphan = named == o && !sh_record_lists(a, o, unit) && sh_atomic_cas_strong_acq_rel(&map[i], &named, 0u);
        _sh_owner_unlock(a);
        if (orphan && _sh_free_block(a, off, true) == SH_OK) reclaimed++;
      }
    }
  return reclaimed;
}

int _sh_nursery_check(const sh_arena_t *a) {
  /* every record entry is a nursery block whose map names the record's owner
   * (or no one yet: an allocation lists before it maps) */
  uint64_t mapped = 0;
  for (uint32_t o = SH_FIRST_AGENT; o < a->max_owners; o++) {
    _Atomic uint32_t *record = _sh_nursery_record(a, o);
    for (int k = 0; record && k < SH_NURSERY_SLOTS; k++) {
      uint32_t unit = sh_atomic_load_acquire(&record[k]);
      uint32_t pi, index;
      int c;
      if (unit == 0 || unit == SH_NURSERY_OPTED_OUT) continue;
      if (!sh_nursery_block(a, (uint64_t)unit << SH_UNIT_SHIFT, &pi, &c, &index))
        return _sh_fail(SH_ECORRUPT, "owner %u: nursery record lists offset %llu, not a nursery block", o,
                        (unsigned long long)unit << SH_UNIT_SHIFT);
      uint32_t named = sh_atomic_load_acquire(&_sh_nursery_map(a, pi, c)[index]);
      if (named != o && named != 0)
        return _sh_fail(SH_ECORRUPT, "nursery block at offset %llu is listed by owner %u but mapped to %u",
                        (unsigned long long)unit << SH_UNIT_SHIFT, o, named);
      mapped += named == o;
    }
  }
  /* every owner word of a map is an agent, and the agent lists the block */
  uint64_t named_total = 0;
  for (int part = 0; part < SH_NPARTITIONS; part++)
    for (uint32_t pi = a->part_first[part]; pi < a->part_end[part]; pi++) {
      const sh_page_t *pg = &a->pages[pi];
      if (sh_atomic_load_relaxed(&pg->state) != SH_PAGE_SMALL || !(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_NURSERY))
        continue;
      int c = _sh_pg_class(a, pg);
      uint32_t n = a->classes[c].nursery_capacity;
      if (sh_atomic_load_relaxed(&pg->owner) != SH_OWNER_NURSERY || n == 0 || sh_atomic_load_relaxed(&pg->capacity) != n)
        return _sh_fail(SH_ECORRUPT, "page %u: marked nursery but owner %u, capacity %u (class of %u bytes)", pi,
                        sh_atomic_load_relaxed(&pg->owner), sh_atomic_load_relaxed(&pg->capacity), a->classes[c].size);
      _Atomic uint32_t *map = _sh_nursery_map(a, pi, c);
      for (uint32_t i = 0; i < n; i++) {
        uint32_t o = sh_atomic_load_acquire(&map[i]);
        if (o == 0) continue;
        if (o < SH_FIRST_AGENT || o >= a->max_owners)
          return _sh_fail(SH_ECORRUPT, "page %u: nursery block %u mapped to owner %u, not an agent", pi, i, o);
        named_total++;
      }
    }
  /* a map word naming an agent whose record does not list the block is a
   * free killed half way (or under way): a full sweep frees it, so it is
   * not damage; more listed-and-mapped blocks than map words is */
  if (mapped > named_total)
    return _sh_fail(SH_ECORRUPT, "the agents' records list %llu mapped nursery blocks, the maps name %llu",
                    (unsigned long long)mapped, (unsigned long long)named_total);
  return SH_OK;
}

uint64_t sh_nursery_reclaim(sh_arena_t *a) { return a->read_only ? 0 : _sh_nursery_reclaim_orphans(a); }

/* ---- An agent's allocation: a cached page of its own, the nursery, its pages ----
 * Here, above the page allocator it calls, not in alloc.c: the nursery draws
 * its blocks from alloc.c and free.c, so they must not call into the nursery. */

/* The generation is read before and after: a recycle between the two (and a
 * new tenant of the slot) would otherwise receive the block. */
static inline int sh_alloc_owner_impl(sh_arena_t *a, uint32_t owner, uint32_t gen, sh_partition_t partition,
                                      size_t size, uint64_t *offset, uint64_t *usable, bool may_lock) {
  int rc = SH_NURSERY_PASS;
  bool nursery = false; /* its class is at least SH_NURSERY_MIN_BLOCK */
  if (owner != SH_OWNER_DEFAULT) {
    if (sh_unlikely(owner >= a->max_owners || sh_atomic_load_acquire(&a->owners[owner].generation) != gen))
      return _sh_fail(SH_EOWNER, "agent %u (generation %u) was recycled", owner, gen);
    /* A page of its own that this thread caches serves first: the agent has
     * paid for it, and the nursery is for the classes it has no page of.
     * An agent past its share of the nursery (most allocations of a busy
     * one) so skips the look at its record: 16 words read on every call. */
    if (_sh_alloc_cached(a, owner, partition, size, offset)) {
      rc = SH_OK;
    } else if (owner >= SH_FIRST_AGENT && (unsigned)partition < SH_NPARTITIONS && _sh_owner_usable(a, owner) == SH_OK) {
      rc = _sh_nursery_alloc(a, owner, (int)partition, size, may_lock, offset);
      nursery = rc == SH_OK;
    }
  }
  if (rc == SH_NURSERY_PASS)
    rc = may_lock ? sh_alloc(a, owner, partition, size, offset) : sh_alloc_nolock(a, owner, partition, size, offset);
  if (sh_unlikely(rc != SH_OK)) return rc;
  if (owner != SH_OWNER_DEFAULT && sh_unlikely(sh_atomic_load_acquire(&a->owners[owner].generation) != gen)) {
    sh_free(a, *offset);
    return _sh_fail(SH_EOWNER, "agent %u (generation %u) was recycled", owner, gen);
  }
  *usable = sh_good_size(a, nursery && size < SH_NURSERY_MIN_BLOCK ? SH_NURSERY_MIN_BLOCK : size);
  return SH_OK;
}

int sh_alloc_owner(sh_arena_t *a, uint32_t owner, uint32_t gen, sh_partition_t partition, size_t size,
                   uint64_t *offset, uint64_t *usable) {
  return sh_alloc_owner_impl(a, owner, gen, partition, size, offset, usable, true);
}

int sh_alloc_owner_nolock(sh_arena_t *a, uint32_t owner, uint32_t gen, sh_partition_t partition, size_t size,
                          uint64_t *offset, uint64_t *usable) {
  return sh_alloc_owner_impl(a, owner, gen, partition, size, offset, usable, false);
}
