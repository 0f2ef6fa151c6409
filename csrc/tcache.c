/* Thread caches, the slow parts: binding a thread to a slot, giving a slot's
 * cached blocks back (thread exit, close, a dead process), and the lookups
 * that stats and check make into other threads' slots. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sh_magazine.h"
#include "sh_track.h"

sh_tls_fast _Thread_local sh_tc_binding_t _sh_tc_tls[SH_TC_BINDINGS];

/* ---- The process's open handles ----------------------------------------------
 * A thread that exits flushes its slots, but only through handles still open:
 * the registry says which are, and its mutex keeps a close from unmapping an
 * arena under a flush. */

static pthread_mutex_t sh_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static sh_arena_t **sh_registry;
static size_t sh_registry_len, sh_registry_cap;
static _Atomic uint64_t sh_next_instance = 1;
static pthread_once_t sh_tc_once = PTHREAD_ONCE_INIT;
static pthread_key_t sh_tc_exit_key;

static bool sh_registered_locked(const sh_arena_t *a, uint64_t instance) {
  for (size_t i = 0; i < sh_registry_len; i++)
    if (sh_registry[i] == a && sh_registry[i]->instance == instance) return true;
  return false;
}

static void sh_slot_release(sh_arena_t *a, sh_tslot_t *s);

static void sh_tc_thread_exit(void *unused) {
  (void)unused;
  pthread_mutex_lock(&sh_registry_lock);
  for (int i = 0; i < SH_TC_BINDINGS; i++) {
    sh_tc_binding_t *b = &_sh_tc_tls[i];
    if (b->slot && sh_registered_locked(b->arena, b->instance)) sh_slot_release((sh_arena_t *)b->arena, b->slot);
    memset(b, 0, sizeof *b);
  }
  pthread_mutex_unlock(&sh_registry_lock);
}

static void sh_tc_before_fork(void) { pthread_mutex_lock(&sh_registry_lock); }
static void sh_tc_after_fork_parent(void) { pthread_mutex_unlock(&sh_registry_lock); }
/* The child runs only the forking thread, whose bindings name its parent's
 * slots: forget them so the child binds slots of its own. */
static void sh_tc_after_fork_child(void) {
  memset(_sh_tc_tls, 0, sizeof _sh_tc_tls);
  pthread_mutex_unlock(&sh_registry_lock);
}

static void sh_tc_init_once(void) {
  pthread_key_create(&sh_tc_exit_key, sh_tc_thread_exit);
  pthread_atfork(sh_tc_before_fork, sh_tc_after_fork_parent, sh_tc_after_fork_child);
}

void _sh_tc_register(sh_arena_t *a) {
  pthread_once(&sh_tc_once, sh_tc_init_once);
  a->instance = sh_atomic_add_relaxed(&sh_next_instance, 1);
  pthread_mutex_lock(&sh_registry_lock);
  if (sh_registry_len == sh_registry_cap) {
    size_t cap = sh_registry_cap ? sh_registry_cap * 2 : 8;
    sh_arena_t **grown = realloc(sh_registry, cap * sizeof *grown);
    if (!grown) { /* unregistered: its threads' slots are then flushed only at close */
      pthread_mutex_unlock(&sh_registry_lock);
      return;
    }
    sh_registry = grown;
    sh_registry_cap = cap;
  }
  sh_registry[sh_registry_len++] = a;
  pthread_mutex_unlock(&sh_registry_lock);
}

void _sh_tc_close(sh_arena_t *a) {
  pthread_mutex_lock(&sh_registry_lock);
  for (size_t i = 0; i < sh_registry_len; i++)
    if (sh_registry[i] == a) {
      sh_registry[i] = sh_registry[--sh_registry_len];
      break;
    }
  if (!a->read_only) {
    int32_t pid = _sh_os_pid();
    for (uint32_t i = 0; i < a->nslots; i++) {
      sh_tslot_t *s = _sh_tc_slot_at(a, i);
      if (sh_atomic_load_acquire(&s->state) == SH_TSLOT_BOUND && sh_atomic_load_relaxed(&s->pid) == pid &&
          sh_atomic_load_relaxed(&s->binder) == a->instance)
        sh_slot_release(a, s);
    }
  }
  pthread_mutex_unlock(&sh_registry_lock);
  for (int i = 0; i < SH_TC_BINDINGS; i++)
    if (_sh_tc_tls[i].arena == a) memset(&_sh_tc_tls[i], 0, sizeof _sh_tc_tls[i]);
}

/* ---- Claims and flushes ------------------------------------------------------ */

uint32_t _sh_tc_next_claim(const sh_arena_t *a, sh_tslot_t *s, int way) {
  uint32_t seq = ++s->claim_seq & ((1u << (30 - SH_CLAIM_SLOT_BITS)) - 1);
  if (seq == 0) seq = s->claim_seq = 1;
  return seq << (SH_CLAIM_SLOT_BITS + 2) | (uint32_t)way << SH_CLAIM_SLOT_BITS | (_sh_tc_slot_index(a, s) + 1);
}

/* Puts the way's cached blocks back on their page's shared stack and drops
 * the claim. The page may have been released under us (an owner recycle),
 * which the claim word tells; then the blocks went back with the page. Under
 * the partition lock, so that check() never sees a block on both stacks; the
 * caller must not hold it. */
static void sh_way_flush(sh_arena_t *a, _Atomic uint32_t *flush_seq, sh_tc_way_t *e) {
  uint32_t pi = sh_atomic_load_relaxed(&e->page);
  if (pi == SH_NIL) return;
  int part = _sh_page_partition(a, pi);
  if (part < 0) { /* damaged: not a page index, so neither it nor its blocks are followed */
    sh_atomic_store_relaxed(&e->local, 0);
    sh_atomic_store_release(&e->page, SH_NIL);
    return;
  }
  sh_page_t *pg = &a->pages[pi];
  bool holds_blocks = sh_local_top(sh_atomic_load_relaxed(&e->local)) != 0;
  if (holds_blocks) { /* an empty cache only drops its claim */
    _sh_part_lock(a, part);
    /* set, not incremented: a flush that died half way left it odd, and the
     * sweep that flushes again makes it even */
    sh_atomic_exchange_acq_rel(flush_seq, sh_atomic_load_relaxed(flush_seq) | 1u);
  }
  uint32_t claim = sh_atomic_load_relaxed(&e->claim);
  uint64_t local = sh_atomic_load_relaxed(&e->local);
  uint32_t top = sh_local_top(local), count = sh_local_count(local);
  const sh_class_t *cls = &a->classes[_sh_pg_class(a, pg)];
  if (top != 0 && !_sh_top_valid(cls, top)) {
    /* damaged (the way lives in the arena): not a block of the page, so
     * neither followed nor handed to the page */
    if (sh_atomic_load_acquire(&pg->claim) == claim) sh_atomic_or_relaxed(&pg->flags, SH_PAGE_CORRUPT);
    top = 0;
  }
  if (top != 0 && sh_atomic_load_acquire(&pg->claim) == claim) {
    /* The page's own stack is empty (no other thread freed into it since we
     * took it, the common case): our stack becomes the page's as it is, in
     * O(1). A damaged link in it is found where every link is checked, at
     * the pop that reaches it. Else our stack goes on top of the page's,
     * which needs its tail: walked, and checked on the way. */
    uint64_t head = sh_atomic_load_acquire(&pg->head);
    while (sh_head_top(head) == 0 && sh_atomic_load_acquire(&pg->claim) == claim) {
      if (sh_atomic_cas_weak_acq_rel(&pg->head, &head, sh_head_make(top, count, sh_head_tag(head) + 1))) {
        top = 0; /* handed over */
        break;
      }
    }
  }
  if (top != 0 && sh_atomic_load_acquire(&pg->claim) == claim) {
    uint32_t key = sh_atomic_load_relaxed(&pg->key), tail = top;
    bool intact = true;
    for (uint32_t n = 1; n < count && intact; n++) {
      uint32_t *link = _sh_link_at(a, pi, tail);
      uint32_t next = sh_word_load_relaxed(&link[0]);
      intact = next != 0 && sh_word_load_relaxed(&link[1]) == (next ^ key) && _sh_top_valid(cls, next);
      tail = next;
    }
    if (!intact) {
      /* a write after free, or the page changed hands while we walked */
      if (sh_atomic_load_acquire(&pg->claim) == claim) sh_atomic_or_relaxed(&pg->flags, SH_PAGE_CORRUPT);
    } else {
      uint32_t *tail_link = _sh_link_at(a, pi, tail);
      uint64_t head = sh_atomic_load_acquire(&pg->head);
      for (;;) {
        if (sh_atomic_load_acquire(&pg->claim) != claim || sh_head_top(head) == SH_HEAD_RETIRED) break;
        _sh_link_write(tail_link, sh_head_top(head), key);
        uint64_t desired = sh_head_make(top, sh_head_count(head) + count, sh_head_tag(head) + 1);
        if (sh_atomic_cas_weak_acq_rel(&pg->head, &head, desired)) break;
      }
    }
  }
  uint32_t expected = claim;
  sh_atomic_cas_strong_acq_rel(&pg->claim, &expected, 0u);
  sh_atomic_store_relaxed(&e->local, 0);
  sh_atomic_store_release(&e->page, SH_NIL);
  if (holds_blocks) {
    sh_atomic_store_release(flush_seq, sh_atomic_load_relaxed(flush_seq) + 1);
    _sh_part_unlock(a, part);
  }
}

void _sh_tc_way_flush(sh_arena_t *a, sh_tc_entry_t *e, int way) { sh_way_flush(a, &e->flush_seq, &e->way[way]); }

void _sh_tc_entry_flush(sh_arena_t *a, sh_tc_entry_t *e) {
  for (int w = 0; w < SH_TC_WAYS; w++) sh_way_flush(a, &e->flush_seq, &e->way[w]);
}

void _sh_tc_fold(const sh_arena_t *a, sh_tslot_t *s, sh_tc_entry_t *e) {
  uint32_t key = sh_atomic_load_relaxed(&e->key);
  int part = (int)((key >> 6) & 3), c = (int)(key & 63);
  uint32_t allocs = sh_atomic_load_relaxed(&e->allocs), frees = sh_atomic_load_relaxed(&e->frees);
  if (allocs == 0 && frees == 0) return;
  _Atomic uint64_t *n = _sh_tc_counters(a, s);
  /* slot counters first: a reader summing both sees a figure too high for a
   * moment rather than one that went backwards */
  sh_atomic_store_relaxed(&n[_sh_counter_index(a, 0, part, c)], sh_atomic_load_relaxed(&n[_sh_counter_index(a, 0, part, c)]) + allocs);
  sh_atomic_store_relaxed(&n[_sh_counter_index(a, 1, part, c)], sh_atomic_load_relaxed(&n[_sh_counter_index(a, 1, part, c)]) + frees);
  sh_atomic_store_relaxed(&e->allocs, 0);
  sh_atomic_store_relaxed(&e->frees, 0);
}

void _sh_tc_run_flush(sh_arena_t *a, sh_tc_run_t *r) {
  uint32_t pi = sh_atomic_load_relaxed(&r->page);
  if (pi == SH_NIL) return;
  int part = _sh_page_partition(a, pi);
  if (part < 0) { /* damaged: not followed */
    sh_atomic_store_release(&r->page, SH_NIL);
    return;
  }
  uint32_t expected = sh_atomic_load_relaxed(&r->claim);
  sh_page_t *pg = &a->pages[pi];
  _sh_part_lock(a, part);
  /* still cached by us (a recycle would have taken the claim with the run) */
  if (sh_atomic_load_relaxed(&pg->state) == SH_PAGE_LARGE &&
      sh_atomic_cas_strong_acq_rel(&pg->claim, &expected, 0u))
    _sh_page_release_locked(a, part, pi);
  _sh_part_unlock(a, part);
  sh_atomic_store_release(&r->page, SH_NIL);
}

void _sh_tc_flush_partition(sh_arena_t *a, sh_tslot_t *s, int part) {
  _sh_tc_mag_flush(a, s, part);
  for (int i = 0; i < SH_TC_RUNS; i++) {
    uint32_t pi = sh_atomic_load_relaxed(&s->runs[i].page);
    if (pi != SH_NIL && _sh_page_in_part(a, pi, part)) _sh_tc_run_flush(a, &s->runs[i]);
  }
  sh_tc_entry_t *entries = _sh_tc_entries(s);
  for (uint32_t i = 0; i <= a->tc_mask; i++)
    for (int w = 0; w < SH_TC_WAYS; w++) {
      uint32_t pi = sh_atomic_load_relaxed(&entries[i].way[w].page);
      if (pi != SH_NIL && _sh_page_in_part(a, pi, part)) _sh_tc_way_flush(a, &entries[i], w);
    }
}

/* Empties a slot and frees it; its counters fold into the shared stripes so
 * the totals survive the slot. The caller owns the slot (its thread, its
 * process's close, or the sweep that moved it to FLUSHING). */
static void sh_slot_release(sh_arena_t *a, sh_tslot_t *s) {
  _sh_tc_mag_flush(a, s, -1); /* first: its blocks may go to the ways flushed next */
  for (int i = 0; i < SH_TC_RUNS; i++) _sh_tc_run_flush(a, &s->runs[i]);
  sh_tc_entry_t *entries = _sh_tc_entries(s);
  for (uint32_t i = 0; i <= a->tc_mask; i++) _sh_tc_entry_flush(a, &entries[i]);
  /* The counters stay in the slot, free or not, and readers sum every slot:
   * moving them elsewhere here would race with a reader (a thread's exit
   * hook runs after Python's join has returned). The slot's next thread
   * counts on from them. */
  for (int i = 0; i < SH_TC_BINDINGS; i++)
    if (_sh_tc_tls[i].slot == s) memset(&_sh_tc_tls[i], 0, sizeof _sh_tc_tls[i]);
  sh_atomic_store_relaxed(&s->pid, 0);
  sh_atomic_store_release(&s->state, SH_TSLOT_FREE);
}

/* ---- Binding ------------------------------------------------------------------- */

static sh_tslot_t *sh_slot_take(sh_arena_t *a, int32_t pid, uint64_t start) {
  for (uint32_t i = 0; i < a->nslots; i++) {
    sh_tslot_t *s = _sh_tc_slot_at(a, i);
    uint32_t st = SH_TSLOT_FREE;
    if (sh_atomic_load_relaxed(&s->state) != SH_TSLOT_FREE ||
        !sh_atomic_cas_strong_acq_rel(&s->state, &st, (uint32_t)SH_TSLOT_FLUSHING))
      continue;
    /* FLUSHING while it is filled in: a sweep only ever takes BOUND slots */
    sh_atomic_store_relaxed(&s->pid, pid);
    sh_atomic_store_relaxed(&s->pid_start, start);
    sh_atomic_store_relaxed(&s->binder, a->instance);
    sh_atomic_store_relaxed(&s->in_hand, 0);
    sh_atomic_store_release(&s->state, SH_TSLOT_BOUND);
    return s;
  }
  return NULL;
}

sh_tslot_t *_sh_tc_bind(sh_arena_t *a, bool create) {
  for (int i = 1; i < SH_TC_BINDINGS; i++) {
    sh_tc_binding_t *b = &_sh_tc_tls[i];
    if (b->arena == a && b->instance == a->instance && b->slot) {
      sh_tc_binding_t hit = *b;
      memmove(&_sh_tc_tls[1], &_sh_tc_tls[0], (size_t)i * sizeof hit);
      _sh_tc_tls[0] = hit;
      return hit.slot;
    }
  }
  if (!create || a->read_only || a->nslots == 0) return NULL;
  sh_tc_binding_t *front = &_sh_tc_tls[0];
  if (front->arena == a && front->instance == a->instance && front->slot == NULL && front->retry-- > 0)
    return NULL; /* the table was full a moment ago: do not rescan it on every call */
  int32_t pid = _sh_os_pid();
  uint64_t start = _sh_own_start_time(pid);
  sh_tslot_t *s = sh_slot_take(a, pid, start);
  if (!s) {
    sh_reclaim_dead_threads(a, NULL);
    s = sh_slot_take(a, pid, start);
  }
  pthread_once(&sh_tc_once, sh_tc_init_once);
  pthread_setspecific(sh_tc_exit_key, (void *)1); /* so the exit hook runs */
  /* make room at the front; a binding pushed off the end gives its slot back */
  sh_tc_binding_t *last = &_sh_tc_tls[SH_TC_BINDINGS - 1];
  if (!(front->arena == a && front->instance == a->instance)) {
    if (last->slot) {
      pthread_mutex_lock(&sh_registry_lock);
      if (sh_registered_locked(last->arena, last->instance)) sh_slot_release((sh_arena_t *)last->arena, last->slot);
      pthread_mutex_unlock(&sh_registry_lock);
    }
    memmove(&_sh_tc_tls[1], &_sh_tc_tls[0], (SH_TC_BINDINGS - 1) * sizeof *front);
  }
  front->arena = a;
  front->instance = a->instance;
  front->slot = s;
  front->slot_index = s ? _sh_tc_slot_index(a, s) : 0;
  front->retry = 4096;
  return s;
}

/* ---- Public --------------------------------------------------------------------- */

int sh_thread_flush(sh_arena_t *a) {
  sh_tslot_t *s = _sh_tc_slot(a, false);
  if (s) sh_slot_release(a, s);
  return SH_OK;
}

int32_t _sh_tc_claim_dead(sh_arena_t *a, uint32_t i) {
  sh_tslot_t *s = _sh_tc_slot_at(a, i);
  if (sh_atomic_load_acquire(&s->state) != SH_TSLOT_BOUND) return 0;
  int32_t pid = sh_atomic_load_relaxed(&s->pid);
  uint64_t recorded = sh_atomic_load_relaxed(&s->pid_start);
  if (pid == _sh_os_pid() || sh_process_alive(pid, recorded) != 0) return 0; /* alive, or cannot tell */
  uint32_t st = SH_TSLOT_BOUND;
  if (!sh_atomic_cas_strong_acq_rel(&s->state, &st, (uint32_t)SH_TSLOT_FLUSHING)) return 0;
  /* ours now: a binder writes pid and start before its release store of
   * BOUND, so the pair reads whole after the CAS */
  if (sh_atomic_load_relaxed(&s->pid) != pid || sh_atomic_load_relaxed(&s->pid_start) != recorded) {
    sh_atomic_store_release(&s->state, SH_TSLOT_BOUND);
    return 0;
  }
  return pid;
}

void _sh_tc_unclaim(sh_arena_t *a, uint32_t i) {
  sh_atomic_store_release(&_sh_tc_slot_at(a, i)->state, SH_TSLOT_BOUND);
}

int sh_reclaim_dead_threads(sh_arena_t *a, uint32_t *reclaimed) {
  if (reclaimed) *reclaimed = 0;
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  for (uint32_t i = 0; i < a->nslots; i++) {
    sh_tslot_t *s = _sh_tc_slot_at(a, i);
    /* a slot that still names a message in its thread's hands waits for the
     * sweep, which frees the message first (sh_chan_reclaim_dead): giving
     * the slot back here, when a bind found the table full, would lose it */
    if (sh_atomic_load_acquire(&s->in_hand) != 0 || _sh_tc_claim_dead(a, i) == 0) continue;
    if (sh_atomic_load_acquire(&s->in_hand) != 0) { /* its message was read before the claim: the sweep's */
      _sh_tc_unclaim(a, i);
      continue;
    }
    sh_slot_release(a, s);
    if (reclaimed) ++*reclaimed;
  }
  return SH_OK;
}

void sh_thread_slots(const sh_arena_t *a, uint32_t *bound, uint32_t *total) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < a->nslots; i++)
    n += sh_atomic_load_acquire(&_sh_tc_slot_at(a, i)->state) != SH_TSLOT_FREE;
  *bound = n;
  *total = a->nslots;
}


