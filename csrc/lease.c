/* The block table: leases on blocks of the shared default owner (owner 0),
 * and the tags of blocks whose handles were handed out (see swarmheap.h).
 *
 * Leases. An agent's memory
 * goes back with the agent; a block of owner 0 belongs to nobody in
 * particular, so one its holder forgot, or whose holder died, would stay
 * forever. A lease says when it may be taken back: a sweep frees every block
 * whose lease ran out, exactly once across processes.
 *
 * The table is open addressing by offset (linear probing, deletion by
 * backward shift), under its own robust lock. Pages holding a leased block are
 * flagged, so only their frees look in the table: the hot free path pays one
 * bit test. */
#include <stdlib.h>
#include <string.h>

#include "sh_lease.h"

static sh_page_t *sh_lease_page(sh_arena_t *a, uint64_t offset) {
  return &a->pages[offset >> a->page_shift];
}

/* Entries of a recycled agent's blocks outlive it (recycling is O(pages) and
 * does not visit them): they are stale once the slot's generation moved on,
 * and are dropped here when the table fills. Lock held. */
static uint64_t sh_table_sweep_stale_locked(sh_arena_t *a) {
  uint64_t dropped = 0;
  for (uint64_t i = 0; i <= a->lease_mask;) {
    sh_lease_t *e = &a->leases[i];
    sh_block_info_t info;
    bool stale = e->key != 0 && (e->key - 1 >= a->size || sh_block_info(a, e->key - 1, &info) != SH_OK ||
                                 info.owner != e->owner || info.owner_generation != e->generation);
    if (stale) {
      sh_lease_delete_at(a, i); /* another entry may have moved into i: look again */
      dropped++;
    } else {
      i++;
    }
  }
  return dropped;
}

/* The entry of the live block `info` names, made if missing; an entry left
 * by an earlier tenant of the same offset is taken over, blank. Lock held. */
int _sh_entry_take_locked(sh_arena_t *a, const sh_block_info_t *info, uint64_t *index) {
  uint64_t key = info->offset + 1;
  uint64_t i = sh_lease_find(a, key);
  if (a->leases[i].key == key &&
      (a->leases[i].owner != info->owner || a->leases[i].generation != info->owner_generation)) {
    sh_lease_delete_at(a, i);
    i = sh_lease_find(a, key);
  }
  if (a->leases[i].key == 0) {
    uint64_t limit = (a->lease_mask + 1) / 4 * 3;
    if (sh_atomic_load_relaxed(&a->hdr->entry_count) >= limit) {
      sh_table_sweep_stale_locked(a);
      uint64_t count = sh_atomic_load_relaxed(&a->hdr->entry_count);
      if (count >= limit)
        return _sh_fail(SH_EFULL,
                        "the block table is full (%llu leases and handles of live blocks): free blocks "
                        "whose handles were handed out, or create the heap with a larger max_owners",
                        (unsigned long long)count);
      i = sh_lease_find(a, key);
    }
    memset(&a->leases[i], 0, sizeof a->leases[i]);
    a->leases[i].key = key;
    a->leases[i].owner = info->owner;
    a->leases[i].generation = info->owner_generation;
    sh_atomic_add_relaxed(&a->hdr->entry_count, 1);
  }
  /* frees on this page now look in the table */
  sh_atomic_or_release(&sh_lease_page(a, info->offset)->flags, SH_PAGE_LEASED);
  *index = i;
  return SH_OK;
}

int sh_lease_set(sh_arena_t *a, uint64_t offset, uint64_t deadline_ns) {
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  sh_block_info_t info;
  int rc = sh_block_info(a, offset, &info);
  if (rc) return rc;
  if (info.owner != SH_OWNER_DEFAULT)
    return _sh_fail(SH_EINVAL, "block at offset %llu belongs to owner %u: only blocks of owner 0 take a lease "
                    "(an agent's blocks go back with the agent)", (unsigned long long)offset, info.owner);
  if (deadline_ns == 0) return _sh_fail(SH_EINVAL, "a lease deadline of 0 is no deadline: use sh_lease_clear");
  if (sh_deadline_after_views(deadline_ns))
    return _sh_fail(SH_EINVAL, "a lease deadline of %llu ns is past the year 2554", (unsigned long long)deadline_ns);
  sh_lease_lock(a);
  uint64_t i;
  rc = _sh_entry_take_locked(a, &info, &i);
  if (rc) {
    sh_lease_unlock(a);
    return rc;
  }
  sh_entry_set_deadline(a, &a->leases[i], deadline_ns);
  sh_atomic_or_release(&sh_lease_page(a, offset)->flags, SH_PAGE_LEASED);
  sh_lease_unlock(a);
  return SH_OK;
}

int sh_lease_get(sh_arena_t *a, uint64_t offset, uint64_t *deadline_ns) {
  if (offset >= a->size) return _sh_fail(SH_EBADPTR, "offset %llu is outside the arena", (unsigned long long)offset);
  if (!(sh_atomic_load_acquire(&sh_lease_page(a, offset)->flags) & SH_PAGE_LEASED))
    return _sh_fail(SH_ENOENT, "block at offset %llu has no lease", (unsigned long long)offset);
  sh_lease_lock(a);
  uint64_t i = sh_lease_find(a, offset + 1);
  int found = a->leases[i].key != 0 && sh_entry_leased(&a->leases[i]);
  if (found) *deadline_ns = a->leases[i].deadline_ns;
  sh_lease_unlock(a);
  return found ? SH_OK : _sh_fail(SH_ENOENT, "block at offset %llu has no lease", (unsigned long long)offset);
}

int sh_lease_clear(sh_arena_t *a, uint64_t offset) {
  if (offset >= a->size) return _sh_fail(SH_EBADPTR, "offset %llu is outside the arena", (unsigned long long)offset);
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  sh_lease_lock(a);
  uint64_t i = sh_lease_find(a, offset + 1);
  if (a->leases[i].key != 0 && sh_entry_leased(&a->leases[i])) {
    if (a->leases[i].tag) { /* the handle's tag outlives the lease */
      sh_entry_set_deadline(a, &a->leases[i], 0);
    } else {
      sh_lease_delete_at(a, i);
    }
  }
  sh_lease_unlock(a);
  return SH_OK;
}

int sh_lease_reclaim(sh_arena_t *a, uint64_t now_ns, uint64_t *blocks, uint64_t *bytes) {
  *blocks = *bytes = 0;
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  uint64_t cap = a->lease_mask + 1, n = 0;
  uint64_t *expired = malloc(cap * sizeof *expired);
  if (!expired) return _sh_fail(SH_ENOMEM, "out of process memory for a lease sweep");
  /* taking the entries out under the lock is what makes each free happen once */
  sh_lease_lock(a);
  for (uint64_t i = 0; i < cap;) {
    if (a->leases[i].key != 0 && sh_entry_leased(&a->leases[i]) && a->leases[i].deadline_ns <= now_ns) {
      expired[n++] = a->leases[i].key - 1;
      sh_lease_delete_at(a, i); /* another entry may have moved into i: look again */
    } else {
      i++;
    }
  }
  sh_lease_unlock(a);
  for (uint64_t k = 0; k < n; k++) {
    sh_block_info_t info;
    if (sh_block_info(a, expired[k], &info) != SH_OK) continue; /* freed without the table noticing */
    if (sh_free(a, expired[k]) == SH_OK) {
      ++*blocks;
      *bytes += info.usable_size;
    }
  }
  free(expired);
  return SH_OK;
}

uint64_t sh_lease_count(const sh_arena_t *a) { return sh_atomic_load_relaxed(&a->hdr->lease_count); }

/* ----- Handle tags ----------------------------------------------------------- */

/* The entry's tag, made on first use. Lock held. */
static uint64_t sh_entry_tag_locked(sh_arena_t *a, sh_lease_t *e) {
  if (e->tag == 0) e->tag = sh_atomic_add_relaxed(&a->hdr->tag_seq, 1) + 1;
  return e->tag;
}

int sh_block_tag(sh_arena_t *a, uint64_t offset, uint64_t *tag) {
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only: a handle cannot be registered");
  sh_block_info_t info;
  int rc = sh_block_info(a, offset, &info);
  if (rc) return rc;
  sh_lease_lock(a);
  uint64_t i;
  rc = _sh_entry_take_locked(a, &info, &i);
  if (rc == SH_OK) *tag = sh_entry_tag_locked(a, &a->leases[i]);
  sh_lease_unlock(a);
  return rc;
}

/* The entry is the live block's own, not one an earlier tenant of the
 * place left (recycled agents' entries outlive them). */
static bool sh_entry_is(const sh_lease_t *e, uint64_t offset, const sh_block_info_t *info) {
  return e->key == offset + 1 && e->owner == info->owner && e->generation == info->owner_generation;
}

/* Whether the live block at `offset` (described by `info`) has its own
 * entry, and the entry's tag (0: a lease without one). A read-only mapping
 * cannot write the mutex: it reads without the lock. */
static bool sh_live_tag(sh_arena_t *a, uint64_t offset, const sh_block_info_t *info, uint64_t *tag) {
  if (!a->read_only) sh_lease_lock(a);
  const sh_lease_t *e = &a->leases[sh_lease_find(a, offset + 1)];
  bool found = sh_entry_is(e, offset, info);
  *tag = found ? e->tag : 0;
  if (!a->read_only) sh_lease_unlock(a);
  return found;
}

int sh_block_tag_check(sh_arena_t *a, uint64_t offset, uint64_t tag) {
  sh_block_info_t info;
  int rc = sh_block_info(a, offset, &info);
  if (rc) return rc;
  if (!(sh_atomic_load_acquire(&sh_lease_page(a, offset)->flags) & SH_PAGE_LEASED))
    return _sh_fail(SH_EOWNER, "the block at offset %llu was freed since this handle was made",
                    (unsigned long long)offset);
  uint64_t found;
  if (!sh_live_tag(a, offset, &info, &found) || found != tag)
    return _sh_fail(SH_EOWNER, "the block at offset %llu was freed, or freed and reused, since this handle was made",
                    (unsigned long long)offset);
  return SH_OK;
}

uint64_t _sh_block_lease_tag(sh_arena_t *a, uint64_t offset) {
  if (offset >= a->size || !(sh_atomic_load_acquire(&sh_lease_page(a, offset)->flags) & SH_PAGE_LEASED)) return 0;
  sh_block_info_t info;
  if (a->read_only || sh_block_info(a, offset, &info) != SH_OK) return 0;
  uint64_t tag = 0;
  sh_lease_lock(a);
  sh_lease_t *e = &a->leases[sh_lease_find(a, offset + 1)];
  if (sh_entry_is(e, offset, &info) && sh_entry_leased(e)) tag = sh_entry_tag_locked(a, e);
  sh_lease_unlock(a);
  return tag;
}

bool _sh_block_tag_low_is(sh_arena_t *a, uint64_t offset, uint64_t low, uint64_t mask, uint64_t *full) {
  sh_block_info_t info;
  uint64_t tag;
  bool is = offset < a->size && sh_block_info(a, offset, &info) == SH_OK &&
            (sh_atomic_load_acquire(&sh_lease_page(a, offset)->flags) & SH_PAGE_LEASED) &&
            sh_live_tag(a, offset, &info, &tag) && tag != 0 && (tag & mask) == low;
  if (is && full) *full = tag;
  return is;
}

void sh_block_table_load(const sh_arena_t *a, uint64_t *entries, uint64_t *capacity) {
  *entries = sh_atomic_load_relaxed(&a->hdr->entry_count);
  *capacity = a->lease_mask + 1;
}
