/* A page's shared stack of free blocks: the lock-free pop, the walk that
 * confirms a suspected double free, and the retire of a page whose blocks are
 * all free. The push is inline in sh_page.h (the free path and a magazine's
 * flush both use it). Calls go down only, to pages.c. */
#include "sh_page.h"

int _sh_page_pop(const sh_arena_t *a, sh_page_t *pg, uint32_t pi, uint32_t owner, int c, uint32_t *top_out) {
  const sh_class_t *cls = &a->classes[c];
  uint64_t head = sh_atomic_load_acquire(&pg->head);
  for (;;) {
    uint32_t top = sh_head_top(head);
    if (top == 0 || top == SH_HEAD_RETIRED || !_sh_top_valid(cls, top)) {
      if (top == 0 || top == SH_HEAD_RETIRED || !sh_page_matches(pg, owner, c)) return SH_POP_EMPTY;
      return SH_POP_CORRUPT;
    }
    uint32_t *link = _sh_link_at(a, pi, top);
    uint32_t next, check;
    _sh_link_read(link, &next, &check);
    uint32_t count = sh_head_count(head);
    if (sh_unlikely(check != (next ^ sh_atomic_load_relaxed(&pg->key)) ||
                    !_sh_top_valid(cls, next) || (next == 0) != (count == 1))) {
      /* A racing pop may have handed this block out and its new owner written
       * over the link; only an unchanged head proves the link itself is bad. */
      uint64_t again = sh_atomic_load_acquire(&pg->head);
      if (again != head) {
        head = again;
        continue;
      }
      return sh_page_matches(pg, owner, c) ? SH_POP_CORRUPT : SH_POP_EMPTY;
    }
    sh_assert_internal(count >= 1);
    uint64_t desired = sh_head_make(next, count - 1, sh_head_tag(head) + 1);
    if (sh_atomic_cas_weak_acq_rel(&pg->head, &head, desired)) {
      /* Break the link pair so the double-free test on sh_free sees a live
       * block, and walks the stack only when the words really look free. */
      sh_word_store_relaxed(&link[1], ~check);
      *top_out = top;
      return SH_POP_OK;
    }
  }
}

SH_NO_TSAN bool _sh_stack_holds(const sh_arena_t *a, uint32_t pi, uint32_t t, uint32_t limit, uint32_t top) {
  const sh_class_t *cls = &a->classes[_sh_pg_class(a, &a->pages[pi])];
  for (uint32_t steps = 0; t != 0 && t != SH_HEAD_RETIRED && steps < limit; steps++) {
    if (t == top) return true;
    if (!_sh_top_valid(cls, t)) return false;
    t = sh_word_load_relaxed(_sh_link_at(a, pi, t));
  }
  return false;
}

/* Keeping the bin's first page warm stops alloc/free pairs at a page boundary
 * from taking the lock each time. */
void _sh_page_try_retire(sh_arena_t *a, sh_page_t *pg, uint32_t pi, int part, uint64_t pushed) {
  _Atomic uint32_t *warm = _sh_bin(a, _sh_pg_owner(a, pg), part, _sh_pg_class(a, pg));
  if (warm && sh_atomic_load_relaxed(warm) == pi) return; /* the bin's first page stays */
  uint64_t expected = pushed;
  uint64_t retired = sh_head_make(SH_HEAD_RETIRED, sh_head_count(pushed), sh_head_tag(pushed) + 1);
  if (!sh_atomic_cas_strong_acq_rel(&pg->head, &expected, retired)) return; /* in use again */
  _sh_part_lock(a, part);
  if (sh_atomic_load_relaxed(&pg->state) == SH_PAGE_SMALL &&
      sh_head_top(sh_atomic_load_relaxed(&pg->head)) == SH_HEAD_RETIRED) {
    _Atomic uint32_t *bin = _sh_bin(a, _sh_pg_owner(a, pg), part, _sh_pg_class(a, pg));
    if (bin && sh_atomic_load_relaxed(bin) == pi)
      sh_atomic_store_release(&pg->head, sh_head_make(sh_head_top(pushed), sh_head_count(pushed),
                                                      sh_head_tag(pushed) + 2));
    else
      _sh_page_release_locked(a, part, pi);
  }
  _sh_part_unlock(a, part);
}
