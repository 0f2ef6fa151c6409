/* Freeing: the entry points and their paths, fastest first: the thread's
 * magazine (sh_magazine.h), the thread's own stack of a page it caches, a
 * run of blocks of one page pushed with one CAS, the page's shared stack
 * (sh_page.h); whole-page runs go to large.c. Also the double-free test,
 * which query.c shares. Calls go down only: to large.c, tcache.c,
 * magazine.c, stack.c and pages.c. */
#include "sh_lease.h"
#include "sh_page.h"

bool _sh_block_is_free(const sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t top) {
  uint64_t offset = ((uint64_t)pi << a->page_shift) + ((uint64_t)(top - 1) << SH_UNIT_SHIFT);
  if (_sh_mag_marked(_sh_link_at(a, pi, top), (uint32_t)(offset >> SH_UNIT_SHIFT)) &&
      _sh_mag_holds(a, _sh_pg_part(pg), _sh_pg_class(a, pg), offset))
    return true;
  uint64_t head = sh_atomic_load_acquire(&pg->head);
  if (_sh_stack_holds(a, pi, sh_head_top(head), sh_atomic_load_relaxed(&pg->capacity) + 1, top)) return true;
  const sh_tc_way_t *w = _sh_tc_holder(a, pi, NULL);
  uint64_t local = w ? sh_atomic_load_relaxed(&w->local) : 0;
  return local && _sh_stack_holds(a, pi, sh_local_top(local), sh_local_count(local), top);
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
  /* The claim is two CASes and nothing after it takes a lock (a nursery page
   * a lock-free free empties stays the nursery's until pressure reclaims it,
   * as any page does), so the lock-free path claims too: it once returned
   * SH_EAGAIN here, and every agent's free of a nursery block from Python
   * released the GIL to run again with the lock. */
  if (sh_unlikely(sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_NURSERY) && !claimed) {
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
  if (sh_unlikely(!sh_page_push(a, pg, pi, top, may_lock)))
    return _sh_fail(SH_EDOUBLEFREE, "block at offset %llu is already free (its page is all free)",
                    (unsigned long long)offset);
  sh_count(a, slot, 1, part, c);
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
    _sh_page_try_retire(a, pg, pi, part, desired);
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
