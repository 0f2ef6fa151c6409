/* What an offset of the arena is: sh_block_info, for the binding and check(). */
#include "sh_page.h"

int sh_block_info(const sh_arena_t *a, uint64_t offset, sh_block_info_t *info) {
  if (offset >= a->size)
    return _sh_fail(SH_EBADPTR, "offset %llu is outside the arena", (unsigned long long)offset);
  uint32_t pi = (uint32_t)(offset >> a->page_shift);
  const sh_page_t *pg = &a->pages[pi];
  uint32_t state = sh_atomic_load_acquire(&pg->state);
  info->offset = offset;
  info->partition = (sh_partition_t)pg->partition;
  info->owner = sh_atomic_load_relaxed(&pg->owner);
  if (sh_unlikely(info->owner >= a->max_owners || info->partition >= SH_NPARTITIONS))
    return _sh_fail(SH_ECORRUPT, "page %u names owner %u and partition %u, beyond the tables", pi, info->owner,
                    (unsigned)info->partition);
  if (state == SH_PAGE_SMALL && (sh_atomic_load_relaxed(&pg->flags) & SH_PAGE_NURSERY)) {
    int rc = _sh_nursery_owner(a, offset, &info->owner);
    if (rc) return rc;
  }
  info->owner_generation = sh_atomic_load_relaxed(&a->owners[info->owner].generation);
  if (state == SH_PAGE_SMALL) {
    int c = _sh_pg_class(a, pg);
    if (sh_unlikely((uint32_t)c >= a->nclasses))
      return _sh_fail(SH_ECORRUPT, "page %u names size class %d of %u", pi, c, a->nclasses);
    uint32_t in_page = (uint32_t)(offset & (sh_page_bytes(a) - 1));
    if (in_page * a->classes[c].div_magic > a->classes[c].div_magic - 1)
      return _sh_fail(SH_EBADPTR, "offset %llu is not the start of a block", (unsigned long long)offset);
    uint32_t top = (in_page >> SH_UNIT_SHIFT) + 1;
    const uint32_t *link = _sh_link_at(a, pi, top);
    if (_sh_link_looks_free(link, sh_atomic_load_relaxed(&pg->key), (uint32_t)(offset >> SH_UNIT_SHIFT)) &&
        _sh_block_is_free(a, (sh_page_t *)pg, pi, top))
      return _sh_fail(SH_EBADPTR, "offset %llu is a free block", (unsigned long long)offset);
    info->size_class = c;
    info->usable_size = a->classes[c].size;
    return SH_OK;
  }
  if (state == SH_PAGE_LARGE && (offset & (sh_page_bytes(a) - 1)) == 0) {
    if (sh_atomic_load_relaxed(&pg->claim) != 0)
      return _sh_fail(SH_EBADPTR, "offset %llu is a free block (a thread keeps the run for reuse)",
                      (unsigned long long)offset);
    /* a run's length is a word of the arena: a Block made from it must end
     * inside the run's partition, not past the mapping */
    uint32_t n = sh_atomic_load_relaxed(&pg->capacity);
    if (sh_unlikely(n == 0 || n > _sh_run_room(a, pi)))
      return _sh_fail(SH_ECORRUPT, "page %u: its run of %u pages does not fit in its partition", pi, n);
    info->size_class = -1;
    info->usable_size = (uint64_t)n << a->page_shift;
    return SH_OK;
  }
  return _sh_fail(SH_EBADPTR, "offset %llu is not a live block", (unsigned long long)offset);
}

