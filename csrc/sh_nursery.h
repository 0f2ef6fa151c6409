/* The nursery (see nursery.c): what the free and query paths need inline, so
 * that free.c and query.c read the nursery's words without calling into it. */
#ifndef SH_NURSERY_H
#define SH_NURSERY_H

#include "sh_internal.h"

/* An agent's record: the offsets / 16 of its nursery blocks, 0 in an empty
 * slot. The records of all owner slots are one run of the nursery's pages
 * in `system`, made with the arena (its offset is in the header), so a
 * record never moves or goes while an allocation may still write to it. */
#define SH_NURSERY_SLOTS 64
#define SH_NURSERY_RECORD_BYTES (SH_NURSERY_SLOTS * 4u)
/* Slots in a cache line: an allocation reads the record a line at a time,
 * and a small agent's blocks are all in the first. */
#define SH_NURSERY_LINE 16
_Static_assert(SH_NURSERY_SLOTS % SH_NURSERY_LINE == 0, "an allocation reads the record a line at a time");
/* A slot taken by no block: an agent that opted out has all of them (offset 16
 * is in the arena header, never a block, so every walk skips it). */
#define SH_NURSERY_OPTED_OUT 1u

/* The owner words at the end of a nursery page of class `c`: one per block. */
static inline _Atomic uint32_t *_sh_nursery_map(const sh_arena_t *arena, uint32_t pi, int c) {
  uint32_t page = 1u << arena->page_shift;
  return (_Atomic uint32_t *)(_sh_page_start(arena, pi) + page - arena->classes[c].nursery_capacity * 4u);
}

/* The owner's record, or NULL when the arena has no nursery. */
static inline _Atomic uint32_t *_sh_nursery_record(const sh_arena_t *arena, uint32_t owner) {
  return arena->nursery_records ? arena->nursery_records + (size_t)owner * SH_NURSERY_SLOTS : NULL;
}

/* Takes the block out of its agent's record before the block is freed: the
 * one CAS that decides between this free, another, and the agent's recycle;
 * then a CAS on the map word, which a sweep reclaiming the orphan of a killed
 * free may have taken first. SH_OK: the caller frees the block;
 * SH_NURSERY_TAKEN: a sweep frees it. The block index is the caller's. */
static inline int _sh_nursery_claim(sh_arena_t *arena, uint32_t pi, int c, uint32_t index, uint64_t offset) {
  _Atomic uint32_t *map = _sh_nursery_map(arena, pi, c);
  uint32_t owner = sh_atomic_load_acquire(&map[index]);
  _Atomic uint32_t *record = owner >= SH_FIRST_AGENT && owner < arena->max_owners ? _sh_nursery_record(arena, owner) : NULL;
  uint32_t unit = (uint32_t)(offset >> SH_UNIT_SHIFT);
  for (int k = 0; record && k < SH_NURSERY_SLOTS; k++) {
    uint32_t expected = unit;
    if (sh_atomic_load_relaxed(&record[k]) == unit && sh_atomic_cas_strong_acq_rel(&record[k], &expected, 0u)) {
      uint32_t named = owner;
      return sh_atomic_cas_strong_acq_rel(&map[index], &named, 0u) ? SH_OK : SH_NURSERY_TAKEN;
    }
  }
  return _sh_fail(SH_EDOUBLEFREE, "block at offset %llu is already free (freed, or recycled with its agent)",
                  (unsigned long long)offset);
}

#endif
