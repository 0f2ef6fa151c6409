/* Owners: the table, recycle in O(pages), pins, states. */
#include <string.h>
#include <unistd.h>

#include "sh_nursery.h"
#include "sh_magazine.h"

static _Atomic uint32_t sh_owner_hint; /* process-local start of the free-slot scan */

int sh_owner_create(sh_arena_t *a, uint32_t kind, uint32_t *id, uint32_t *generation) {
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  uint64_t now = _sh_os_now_ns();
  int32_t pid = _sh_os_pid();
  uint64_t start = _sh_own_start_time(pid);
  _sh_owner_lock(a);
  uint32_t agents = a->max_owners - SH_FIRST_AGENT;
  for (uint32_t k = 0; k < agents; k++) {
    uint32_t i = SH_FIRST_AGENT + (sh_atomic_load_relaxed(&sh_owner_hint) + k) % agents;
    sh_owner_t *o = &a->owners[i];
    if (sh_atomic_load_relaxed(&o->state) != SH_OWNER_FREE) continue;
    uint32_t gen = sh_atomic_load_relaxed(&o->generation) + 1;
    if (gen == 0) gen = 1; /* 0 never names a live owner */
    o->kind = kind;
    o->pid = pid;
    o->pid_start = start;
    o->created_ns = now;
    sh_atomic_store_relaxed(&o->last_active_ns, now);
    sh_atomic_store_relaxed(&o->user_word, 0);
    sh_atomic_store_relaxed(&o->held_seq, 0u);
    sh_atomic_store_relaxed(&o->pins, 0);
    for (int p = 0; p < SH_NPARTITIONS; p++) sh_atomic_store_relaxed(&o->peak_pages[p], 0);
    sh_atomic_store_relaxed(&o->generation, gen);
    sh_atomic_store_release(&o->state, SH_OWNER_LIVE);
    _sh_owner_unlock(a);
    sh_atomic_store_relaxed(&sh_owner_hint, i);
    *id = i;
    *generation = gen;
    return SH_OK;
  }
  _sh_owner_unlock(a);
  return _sh_fail(SH_ETOOMANY, "the owner table is full (%u agents): complete some agents or create the heap with more max_owners",
                  a->max_owners - SH_FIRST_AGENT);
}

/* Caller holds the owner lock. */
static int sh_owner_lookup(const sh_arena_t *a, uint32_t id, uint32_t gen, sh_owner_t **out) {
  if (id >= a->max_owners)
    return _sh_fail(SH_EOWNER, "owner %u is out of range (the table holds %u)", id, a->max_owners);
  sh_owner_t *o = &a->owners[id];
  uint32_t st = sh_atomic_load_relaxed(&o->state), g = sh_atomic_load_relaxed(&o->generation);
  if (st == SH_OWNER_FREE || g != gen)
    return _sh_fail(SH_EOWNER, "owner %u generation %u no longer exists (slot is at generation %u, %s)",
                    id, gen, g, st == SH_OWNER_FREE ? "free" : "reused");
  *out = o;
  return SH_OK;
}

/* The owner-0 block the owner holds (SH_USER_WORD_HELD) counts as its own. */
static void sh_info_add_held(const sh_arena_t *a, uint64_t word, sh_owner_info_t *info) {
  sh_block_info_t held;
  if (!(word & SH_USER_WORD_HELD) || sh_block_info(a, sh_held_offset(word), &held) != SH_OK) return;
  info->bytes[held.partition] += held.usable_size;
  info->class_bytes[held.size_class >= 0 && (uint32_t)held.size_class < a->nclasses ? (uint32_t)held.size_class
                                                                                   : a->nclasses] += held.usable_size;
  info->blocks++;
}

/* Every page of the owner back to its partition, whole lists at a time (no
 * per-page unlinking, one counter update per partition); with `final`, the
 * live bytes are summed on the way, so a complete reads each page once.
 * Owner lock held. */
int _sh_owner_recycle_now(sh_arena_t *a, uint32_t id, sh_owner_info_t *final, uint32_t final_state) {
  sh_owner_t *o = &a->owners[id];
  /* Not live from here, before its nursery record and page counts are read:
   * an allocation of the agent that races this either is seen below or sees
   * this and gives back what it took (_sh_owner_still_usable_locked,
   * _sh_nursery_alloc). */
  uint32_t st = sh_atomic_load_relaxed(&o->state);
  if (st == SH_OWNER_LIVE || st == SH_OWNER_RESTORING) sh_atomic_store_release(&o->state, SH_OWNER_COMPLETED);
  sh_atomic_fence();
  uint32_t kib = sh_atomic_exchange_acq_rel(&o->reserved_kib, 0u); /* its reservation goes with its memory */
  if (kib) sh_atomic_sub_relaxed(&a->hdr->reserved_bytes, (uint64_t)kib << 10);
  if (final) final->reserved_bytes = 0; /* the final figures are the agent's after the call */
  _sh_nursery_release(a, id, final); /* first: its nursery blocks sit on pages that stay */
  for (int part = 0; part < SH_NPARTITIONS; part++) {
    if (sh_atomic_load_relaxed(&o->pages[part]) == 0) continue;
    _sh_part_lock(a, part);
    if (sh_atomic_load_relaxed(&o->pages[part]) == 0) { /* a refill gave its page back while we waited */
      _sh_part_unlock(a, part);
      continue;
    }
    uint64_t pages = 0;
    bool damaged = false;
    _Atomic uint32_t *set = _sh_owner_set(a, id, part);
    damaged = set == NULL; /* pages but no set: found by their descriptors below */
    for (uint32_t c = 0; c <= a->nclasses && !damaged; c++) { /* the classes, then the large runs */
      uint32_t first = sh_atomic_load_relaxed(&set[1 + c]);
      if (first == SH_NIL) continue;
      pages += _sh_list_release_locked(a, part, id, first, final, &damaged);
      sh_atomic_store_release(&set[1 + c], SH_NIL);
    }
    _sh_owner_set_drop(a, id, part);
    sh_atomic_store_relaxed(&o->pages[part], 0);
    if (damaged)
      _sh_owner_pages_scan_release_locked(a, part, id, final); /* its counters come from the rebuild */
    else
      sh_atomic_sub_relaxed(&a->hdr->pages_used[part], pages);
    _sh_part_unlock(a, part);
  }
  /* a block of owner 0 the owner held (the layer above keeps its index there) */
  uint64_t word =
      sh_atomic_exchange_acq_rel(&o->user_word, final_state == SH_OWNER_OFFLOADED ? SH_USER_WORD_SEALED : 0);
  if (word & SH_USER_WORD_HELD) {
    /* the word it gave up, exactly: a restore's first word goes on from it */
    sh_atomic_max32_relaxed(&o->held_seq, (uint32_t)sh_held_seq(word));
    if (final) sh_info_add_held(a, word, final);
    sh_free(a, sh_held_offset(word)); /* a bad word frees nothing: sh_free validates */
  }
  /* room came back: admissions waiting in any process look again */
  sh_atomic_add_relaxed(&a->hdr->room_seq, 1u);
  if (sh_atomic_load_acquire(&a->hdr->room_waiters)) _sh_futex_wake(&a->hdr->room_seq);
  sh_atomic_store_release(&o->state, final_state);
  return SH_OK;
}

static void sh_info_header(const sh_arena_t *a, uint32_t id, sh_owner_info_t *info);

/* The state check and the store of OFFLOADED are under the owner lock, as
 * sh_owner_set_state's are: a restorer finishing (RESTORING to LIVE) and
 * one giving up (sh_owner_unrestore) cannot both win. */
static int _sh_owner_offload(sh_arena_t *a, uint32_t id, uint32_t gen, sh_owner_info_t *final, bool live_too,
                             uint64_t expected_word) {
  if (id < SH_FIRST_AGENT) return _sh_fail(SH_EINVAL, "owner %u (the shared default or the nursery) is never offloaded", id);
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  _sh_owner_lock(a);
  sh_owner_t *o;
  int rc = sh_owner_lookup(a, id, gen, &o);
  uint32_t st = rc == SH_OK ? sh_atomic_load_relaxed(&o->state) : 0;
  if (rc == SH_OK && !live_too && st != SH_OWNER_RESTORING) {
    rc = _sh_fail(SH_ESTATE, "owner %u is not being restored (state %u)", id, st);
  } else if (rc == SH_OK && st != SH_OWNER_LIVE && st != SH_OWNER_RESTORING) {
    rc = _sh_fail(SH_EOWNER, "owner %u is not live (state %u)", id, st);
  } else if (rc == SH_OK && sh_atomic_load_relaxed(&o->pins) > 0) {
    rc = _sh_fail(SH_EPINNED, "owner %u has %u pin(s) (views or arrays open): not offloaded", id,
                  sh_atomic_load_relaxed(&o->pins));
  } else if (rc == SH_OK && live_too && sh_atomic_load_acquire(&o->user_word) != expected_word) {
    /* an update after the snapshot would be lost with the memory; one still
     * in flight finds the word sealed below and its compare-and-set fails */
    rc = _sh_fail(SH_ESTATE, "owner %u changed after its snapshot (an update landed): not offloaded", id);
  } else if (rc == SH_OK) {
    if (final) sh_info_header(a, id, final);
    /* OFFLOADED before the memory goes (its blob is in the store already): a
     * process killed half way leaves an offloaded agent that a restore makes
     * whole, never a live one with holes. The slot keeps its generation. */
    sh_atomic_add_acq_rel(&o->offloads, 1u); /* before its pages can be handed out again */
    sh_atomic_store_release(&o->state, SH_OWNER_OFFLOADED);
    rc = _sh_owner_recycle_now(a, id, final, SH_OWNER_OFFLOADED);
    if (final) final->state = SH_OWNER_OFFLOADED;
  }
  _sh_owner_unlock(a);
  return rc;
}

int sh_owner_offload(sh_arena_t *a, uint32_t id, uint32_t gen, uint64_t expected_word, sh_owner_info_t *final) {
  return _sh_owner_offload(a, id, gen, final, true, expected_word);
}

int sh_owner_unrestore(sh_arena_t *a, uint32_t id, uint32_t gen, sh_owner_info_t *final) {
  return _sh_owner_offload(a, id, gen, final, false, 0);
}

int sh_owner_recycle(sh_arena_t *a, uint32_t id, uint32_t gen) {
  if (id < SH_FIRST_AGENT) return _sh_fail(SH_EINVAL, "owner %u (the shared default or the nursery) is never recycled", id);
  _sh_owner_lock(a);
  sh_owner_t *o;
  int rc = sh_owner_lookup(a, id, gen, &o);
  if (rc == SH_OK && sh_atomic_load_relaxed(&o->pins) > 0) {
    sh_atomic_store_release(&o->state, SH_OWNER_COMPLETED);
    rc = _sh_fail(SH_EPINNED, "owner %u has %u pin(s): recycle deferred until the last is released",
                  id, sh_atomic_load_relaxed(&o->pins));
  } else if (rc == SH_OK) {
    rc = _sh_owner_recycle_now(a, id, NULL, SH_OWNER_FREE);
  }
  _sh_owner_unlock(a);
  return rc;
}

/* ----- Pins, by process ------------------------------------------------------- */

static inline bool sh_pin_matches(const sh_pin_t *e, uint32_t id, uint32_t gen, int32_t pid, uint64_t start) {
  return e->count > 0 && e->owner == id && e->generation == gen && e->pid == pid && sh_pin_start(e) == start;
}

/* Where the probe for the owner's entries starts. */
static inline uint64_t sh_pin_home(const sh_arena_t *a, uint32_t id) {
  return ((uint64_t)id * UINT64_C(0x9E3779B97F4A7C15)) >> 40 & a->pin_mask;
}

/* The entry of this (owner, process), or where to put it (an empty slot or
 * the first tombstone on the way); NULL if the table is full. Owner lock held. */
static sh_pin_t *sh_pin_slot(sh_arena_t *a, uint32_t id, uint32_t gen, int32_t pid, uint64_t start, bool *found) {
  uint64_t i = sh_pin_home(a, id);
  sh_pin_t *spare = NULL;
  *found = false;
  for (uint64_t steps = 0; steps <= a->pin_mask; steps++, i = (i + 1) & a->pin_mask) {
    sh_pin_t *e = &a->pins[i];
    if (e->pid == 0) return spare ? spare : e;
    if (sh_pin_matches(e, id, gen, pid, start)) {
      *found = true;
      return e;
    }
    if (e->count == 0 && !spare) spare = e;
  }
  return spare;
}

/* Does the probe path of an entry past `i` (up to the next empty slot) run
 * through `i`? An entry at j whose home is h is found by a walk from h to j,
 * so it passes `i` when j lies as far from h as from `i`, or farther. */
static bool sh_pin_on_a_path(const sh_arena_t *a, uint64_t i) {
  uint64_t j = i;
  for (uint64_t steps = 0; steps < a->pin_mask; steps++) {
    j = (j + 1) & a->pin_mask;
    const sh_pin_t *e = &a->pins[j];
    if (e->pid == 0) return false;
    if (e->count != 0 && ((j - sh_pin_home(a, e->owner)) & a->pin_mask) >= ((j - i) & a->pin_mask)) return true;
  }
  return true; /* no empty slot at all: keep it */
}

/* Empties the tombstone at `i` (an entry whose count fell to 0) if no probe
 * path runs through it, then the one before it, and so on. Left in place,
 * tombstones only ever grew in number (a new pin reuses the first one on its
 * path, but its lookup must still walk to an empty slot): after enough agents
 * had come and gone the table held no empty slot, and every pin and unpin
 * walked all of it (a fifth of agent_churn's time, in a 640 MiB heap's 8 192
 * entries). Owner lock held; each store is one word that leaves the table
 * whole, so a process killed between them leaves tombstones, as before. */
static void sh_pin_clear_tombstones(sh_arena_t *a, uint64_t i) {
  for (uint64_t steps = 0; steps <= a->pin_mask; steps++) {
    sh_pin_t *e = &a->pins[i];
    if (e->pid == 0 || e->count != 0 || sh_pin_on_a_path(a, i)) return;
    e->pid = 0;
    i = (i - 1) & a->pin_mask;
  }
}

/* The pins and views of (owner, generation) in every process's entry but
 * the one of (skip_pid, skip_start) (skip_pid 0: none is skipped). Every
 * entry of the owner sits on the probe path from its home to the first
 * empty slot (tombstones are passed, as sh_pin_slot does). Owner lock held. */
static void sh_pin_totals(const sh_arena_t *a, uint32_t id, uint32_t gen, int32_t skip_pid, uint64_t skip_start,
                          uint32_t *pins, uint32_t *views) {
  *pins = *views = 0;
  uint64_t i = sh_pin_home(a, id);
  for (uint64_t steps = 0; steps <= a->pin_mask; steps++, i = (i + 1) & a->pin_mask) {
    const sh_pin_t *e = &a->pins[i];
    if (e->pid == 0) break;
    if (e->count == 0 || e->owner != id || e->generation != gen) continue;
    if (e->pid == skip_pid && sh_pin_start(e) == skip_start) continue;
    *pins = *pins > UINT32_MAX - e->count ? UINT32_MAX : *pins + e->count;
    *views += e->views < e->count ? e->views : e->count; /* a damaged entry counts no more views than pins */
  }
}

static int sh_owner_pin_as(sh_arena_t *a, uint32_t id, uint32_t gen, bool view) {
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only: a pin would write it");
  int32_t pid = _sh_os_pid();
  uint64_t start = _sh_own_start_time(pid);
  _sh_owner_lock(a);
  sh_owner_t *o;
  int rc = sh_owner_lookup(a, id, gen, &o);
  if (rc == SH_OK && sh_atomic_load_relaxed(&o->state) == SH_OWNER_OFFLOADED)
    /* its pages went back with the offload (the generation stays): a pin is
     * taken to write or read them, and the offload checked for pins under
     * this lock, so a pin refused here is the one that raced it */
    rc = _sh_fail(SH_ESTATE, "owner %u is offloaded: its memory went back to the heap", id);
  if (rc == SH_OK) {
    bool found;
    sh_pin_t *e = sh_pin_slot(a, id, gen, pid, start, &found);
    if (!e) {
      rc = _sh_fail(SH_EFULL, "the pin table is full (%llu processes x agents hold views): release views",
                    (unsigned long long)(a->pin_mask + 1));
    } else {
      if (!found)
        *e = (sh_pin_t){.pid = pid, .owner = id, .generation = gen, .start_lo = (uint32_t)start,
                        .start_hi = (uint32_t)(start >> 32)};
      e->count++;
      if (view) e->views++;
      sh_atomic_add_relaxed(&o->pins, 1);
    }
  }
  _sh_owner_unlock(a);
  /* a view reads the agent's index word next: the pin must be seen by a
   * dropper that swapped the word before that read (sh_owner_views) */
  if (view) sh_atomic_fence();
  return rc;
}

int sh_owner_pin(sh_arena_t *a, uint32_t id, uint32_t gen) { return sh_owner_pin_as(a, id, gen, false); }
int sh_owner_view_pin(sh_arena_t *a, uint32_t id, uint32_t gen) { return sh_owner_pin_as(a, id, gen, true); }

int sh_owner_unpin_final(sh_arena_t *a, uint32_t id, uint32_t gen, int view, int *recycled, sh_owner_info_t *final) {
  if (recycled) *recycled = 0;
  int32_t pid = _sh_os_pid();
  uint64_t start = _sh_own_start_time(pid);
  _sh_owner_lock(a);
  sh_owner_t *o;
  int rc = sh_owner_lookup(a, id, gen, &o);
  bool found = false;
  sh_pin_t *e = rc == SH_OK ? sh_pin_slot(a, id, gen, pid, start, &found) : NULL;
  if (rc == SH_OK && (!found || sh_atomic_load_relaxed(&o->pins) == 0 || (view && e->views == 0)))
    rc = _sh_fail(SH_ESTATE, "owner %u has no %s of this process to release", id, view ? "view" : "pin");
  if (rc == SH_OK) {
    e->count--;
    if (view) e->views--;
    if (e->count == 0) sh_pin_clear_tombstones(a, (uint64_t)(e - a->pins));
    if (sh_atomic_sub_relaxed(&o->pins, 1) == 1 && sh_atomic_load_relaxed(&o->state) == SH_OWNER_COMPLETED &&
        id != SH_OWNER_DEFAULT) {
      /* the figures the completing process had: this process fires the
       * recycle hooks, and its kind id names the kind */
      if (final) sh_info_header(a, id, final);
      rc = _sh_owner_recycle_now(a, id, final, SH_OWNER_FREE);
      if (recycled) *recycled = 1;
    }
  }
  _sh_owner_unlock(a);
  return rc;
}

int sh_owner_unpin(sh_arena_t *a, uint32_t id, uint32_t gen, int *recycled) {
  return sh_owner_unpin_final(a, id, gen, false, recycled, NULL);
}
int sh_owner_view_unpin(sh_arena_t *a, uint32_t id, uint32_t gen, int *recycled) {
  return sh_owner_unpin_final(a, id, gen, true, recycled, NULL);
}

int sh_owner_views(sh_arena_t *a, uint32_t id, uint32_t gen, int others_only, uint32_t *views) {
  *views = 0;
  if (id >= a->max_owners) return _sh_fail(SH_EOWNER, "owner %u is outside the owner table", id);
  /* the other half of the view pin's fence: the caller's swap of the index
   * word is ordered before the loads below */
  sh_atomic_fence();
  if (sh_atomic_load_relaxed(&a->owners[id].pins) == 0) return SH_OK; /* no pins, so no views: no lock */
  int32_t pid = others_only ? _sh_os_pid() : 0;
  uint64_t start = others_only ? _sh_own_start_time(pid) : 0;
  uint32_t pins;
  _sh_owner_lock(a);
  sh_pin_totals(a, id, gen, pid, start, &pins, views);
  _sh_owner_unlock(a);
  return SH_OK;
}

int sh_pins_reclaim_dead(sh_arena_t *a, uint64_t *dropped, uint32_t *recycled) {
  return sh_pins_reclaim_dead_final(a, dropped, recycled, NULL, 0);
}

/* What one reclaim learnt of the processes holding pins, (pid, start) ->
 * alive. /proc is asked once per process, not once per entry (its entries
 * of many owners lie scattered), and outside the owner lock: 1 000 pins of
 * four live processes held the lock for 4 ms, each entry's own /proc read,
 * and every spawn, pin and recycle of the heap waited on it. */
#define SH_PIN_VERDICTS 128      /* processes judged outside the lock; more are asked under it */
#define SH_PIN_VERDICT_SLOTS 256 /* open addressing, at most half full: 4 KiB on the stack */
typedef struct {
  uint32_t count;
  struct {
    uint64_t start;
    int32_t pid; /* 0: an empty slot */
    int32_t alive; /* -1: not asked yet */
  } of[SH_PIN_VERDICT_SLOTS];
} sh_pin_verdicts_t;

static int32_t *sh_verdict_of(sh_pin_verdicts_t *v, int32_t pid, uint64_t start, bool add) {
  uint32_t i = (uint32_t)(((uint64_t)(uint32_t)pid * UINT64_C(0x9E3779B97F4A7C15) ^ start) >> 56);
  for (;; i = (i + 1) & (SH_PIN_VERDICT_SLOTS - 1)) {
    if (v->of[i].pid == pid && v->of[i].start == start) return &v->of[i].alive;
    if (v->of[i].pid == 0) break;
  }
  if (!add || v->count == SH_PIN_VERDICTS) return NULL;
  v->count++;
  v->of[i].pid = pid;
  v->of[i].start = start;
  v->of[i].alive = -1;
  return &v->of[i].alive;
}

int sh_pins_reclaim_dead_final(sh_arena_t *a, uint64_t *dropped, uint32_t *recycled, sh_owner_info_t *finals,
                               uint32_t max_finals) {
  *dropped = 0;
  if (recycled) *recycled = 0;
  uint32_t reported = 0;
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  sh_pin_verdicts_t verdicts;
  memset(&verdicts, 0, sizeof verdicts);
  _sh_owner_lock(a);
  for (uint64_t i = 0; i <= a->pin_mask; i++) {
    const sh_pin_t *e = &a->pins[i];
    if (e->pid != 0 && e->count != 0 && !sh_verdict_of(&verdicts, e->pid, sh_pin_start(e), true)) break;
  }
  _sh_owner_unlock(a);
  /* A process found dead stays dead (its start time tells a reused pid);
   * one found alive and dead by the time the lock is taken again keeps
   * its pins until the next reclaim, as one that died just after would */
  for (uint32_t k = 0; k < SH_PIN_VERDICT_SLOTS; k++)
    if (verdicts.of[k].pid != 0) /* /proc could not say: kept */
      verdicts.of[k].alive = sh_process_alive(verdicts.of[k].pid, verdicts.of[k].start) != 0;
  _sh_owner_lock(a);
  for (uint64_t i = 0; i <= a->pin_mask; i++) {
    sh_pin_t *e = &a->pins[i];
    if (e->pid == 0 || e->count == 0) continue;
    /* a process that pinned since, or past the table's room: asked here */
    int32_t *alive = sh_verdict_of(&verdicts, e->pid, sh_pin_start(e), true);
    int32_t now = alive && *alive >= 0 ? *alive : sh_process_alive(e->pid, sh_pin_start(e)) != 0;
    if (alive) *alive = now;
    if (now) continue;
    *dropped += e->count;
    e->count = e->views = 0; /* a tombstone */
  }
  for (uint64_t i = 0; i <= a->pin_mask; i++) sh_pin_clear_tombstones(a, i); /* those just made, and any left */
  /* Each owner's pin count is then made the sum of its entries' again,
   * rather than lowered by what was dropped: a pin and an unpin write the
   * entry and the owner's count in two stores, so a process killed between
   * them (the lock's EOWNERDEAD repairs nothing) left an owner counting a
   * pin no entry holds, and its agent waited for it for ever (likely what
   * left a killed worker's agent after a sweep, once, in a CI run of the
   * crash matrix). */
  for (uint32_t id = 0; id < a->max_owners; id++) {
    sh_owner_t *o = &a->owners[id];
    if (sh_atomic_load_relaxed(&o->state) == SH_OWNER_FREE) continue;
    uint32_t pins, views;
    sh_pin_totals(a, id, sh_atomic_load_relaxed(&o->generation), 0, 0, &pins, &views);
    if (sh_atomic_load_relaxed(&o->pins) != pins) sh_atomic_store_relaxed(&o->pins, pins);
    /* Under the lock a COMPLETED owner has pins (complete and the last
     * unpin recycle otherwise): one without is what a dead pin left, now
     * or in a call that had no room to report it */
    if (pins != 0 || sh_atomic_load_relaxed(&o->state) != SH_OWNER_COMPLETED || id == SH_OWNER_DEFAULT) continue;
    sh_owner_info_t *final = NULL;
    if (finals) {
      if (reported == max_finals) continue; /* left for the next call, which reports it */
      final = &finals[reported++];
      sh_info_header(a, id, final);
    }
    _sh_owner_recycle_now(a, id, final, SH_OWNER_FREE);
    if (recycled) ++*recycled;
  }
  _sh_owner_unlock(a);
  return SH_OK;
}

/* The process a sweep's verdict is on. */
typedef struct {
  int32_t pid;
  uint64_t start;
} sh_holder_t;

/* A state change under the owner lock; `holder`, if not NULL, is the
 * process the slot must still be held by (a sweep's verdict). */
static int sh_owner_change_state(sh_arena_t *a, uint32_t id, uint32_t gen, sh_owner_state_t expected,
                                 sh_owner_state_t desired, const sh_holder_t *holder) {
  if (id < SH_FIRST_AGENT) return _sh_fail(SH_EINVAL, "owner %u (the shared default or the nursery) is always live", id);
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  _sh_owner_lock(a);
  sh_owner_t *o;
  int rc = sh_owner_lookup(a, id, gen, &o);
  uint32_t st = rc == SH_OK ? sh_atomic_load_relaxed(&o->state) : 0;
  if (rc == SH_OK && st != (uint32_t)expected) {
    rc = _sh_fail(SH_ESTATE, "owner %u is in state %u, not %d", id, st, (int)expected);
  } else if (rc == SH_OK && holder &&
             (holder->pid == 0 || o->pid != holder->pid || o->pid_start != holder->start)) {
    rc = _sh_fail(SH_ESTATE, "owner %u is held by process %d (started at %llu), not %d (started at %llu)", id,
                  o->pid, (unsigned long long)o->pid_start, holder->pid, (unsigned long long)holder->start);
  } else if (rc == SH_OK) {
    if (expected == SH_OWNER_RESTORING && desired == SH_OWNER_LIVE) { /* restored with no index: none yet */
      uint64_t sealed = SH_USER_WORD_SEALED;
      sh_atomic_cas_strong_acq_rel(&o->user_word, &sealed, 0);
    }
    sh_atomic_store_release(&o->state, (uint32_t)desired);
  }
  _sh_owner_unlock(a);
  return rc;
}

int sh_owner_set_state(sh_arena_t *a, uint32_t id, uint32_t gen, sh_owner_state_t expected,
                       sh_owner_state_t desired) {
  if (desired == SH_OWNER_FREE || desired > SH_OWNER_RESTORING)
    return _sh_fail(SH_EINVAL, "state %d cannot be set directly (use recycle to free a slot)", (int)desired);
  return sh_owner_change_state(a, id, gen, expected, desired, NULL);
}

int sh_owner_set_dead(sh_arena_t *a, uint32_t id, uint32_t gen, sh_owner_state_t expected, int32_t pid,
                      uint64_t start) {
  return sh_owner_change_state(a, id, gen, expected, SH_OWNER_DEAD, &(sh_holder_t){pid, start});
}

static int sh_owner_check_gen(const sh_arena_t *a, uint32_t id, uint32_t gen, sh_owner_t **out) {
  if (id >= a->max_owners) return _sh_fail(SH_EOWNER, "owner %u is out of range", id);
  sh_owner_t *o = &a->owners[id];
  if (sh_atomic_load_acquire(&o->state) == SH_OWNER_FREE || sh_atomic_load_relaxed(&o->generation) != gen)
    return _sh_fail(SH_EOWNER, "owner %u generation %u no longer exists", id, gen);
  *out = o;
  return SH_OK;
}

int sh_owner_touch(sh_arena_t *a, uint32_t id, uint32_t gen) {
  sh_owner_t *o;
  int rc = sh_owner_check_gen(a, id, gen, &o);
  if (rc == SH_OK) sh_atomic_store_relaxed(&o->last_active_ns, _sh_os_now_ns());
  return rc;
}

int sh_owner_set_user_word(sh_arena_t *a, uint32_t id, uint32_t gen, uint32_t offloads, uint64_t expected,
                           uint64_t desired) {
  sh_owner_t *o;
  int rc = sh_owner_check_gen(a, id, gen, &o);
  if (rc == SH_OK && expected == SH_USER_WORD_SEALED && sh_atomic_load_acquire(&o->state) != SH_OWNER_RESTORING)
    return _sh_fail(SH_ESTATE, "owner %u is offloaded: its word is sealed until it is restored", id);
  /* After the caller's read of `expected`, before the exchange: a word read
   * after a restore is met here by the restore's count. An offload (and
   * restore) after this load seals the word first, and the exchange fails. */
  if (rc == SH_OK && sh_atomic_load_acquire(&o->offloads) != offloads)
    return _sh_fail(SH_ESTATE, "owner %u was offloaded since the update began (offload %u, not %u)", id,
                    sh_atomic_load_relaxed(&o->offloads), offloads);
  if (rc == SH_OK && !sh_atomic_cas_strong_acq_rel(&o->user_word, &expected, desired))
    rc = _sh_fail(SH_ESTATE, "owner %u's user word changed concurrently", id);
  /* a held word given up for none, as a recycle gives one up: recorded the same way */
  if (rc == SH_OK && (expected & SH_USER_WORD_HELD) && !(desired & SH_USER_WORD_HELD))
    sh_atomic_max32_relaxed(&o->held_seq, (uint32_t)sh_held_seq(expected));
  return rc;
}

uint64_t sh_owner_held_next(const sh_arena_t *a, uint32_t id, uint64_t expected, uint64_t offset) {
  if (expected & SH_USER_WORD_HELD) return sh_held_next(expected, offset);
  uint32_t last = id < a->max_owners ? sh_atomic_load_acquire(&a->owners[id].held_seq) : 0u;
  return sh_held_word(offset, (uint64_t)last + 1);
}

int sh_owner_user_word(const sh_arena_t *a, uint32_t id, uint32_t gen, uint64_t *word) {
  sh_owner_t *o;
  int rc = sh_owner_check_gen(a, id, gen, &o);
  if (rc != SH_OK) return rc;
  *word = sh_atomic_load_acquire(&o->user_word);
  /* the slot may have been recycled and reused between the check and the load */
  return sh_owner_check_gen(a, id, gen, &o);
}

/* Everything but the live bytes, which need the owner's pages. */
static void sh_info_header(const sh_arena_t *a, uint32_t id, sh_owner_info_t *info) {
  const sh_owner_t *o = &a->owners[id];
  memset(info, 0, sizeof *info);
  info->state = (sh_owner_state_t)sh_atomic_load_acquire(&o->state);
  info->id = id;
  info->generation = sh_atomic_load_relaxed(&o->generation);
  info->kind = o->kind;
  info->pid = o->pid;
  info->pid_start_time = o->pid_start;
  info->created_ns = o->created_ns;
  info->last_active_ns = sh_atomic_load_relaxed(&o->last_active_ns);
  info->pins = sh_atomic_load_relaxed(&o->pins);
  info->user_word = sh_atomic_load_relaxed(&o->user_word);
  info->reserved_bytes = (uint64_t)sh_atomic_load_relaxed(&o->reserved_kib) << 10;
  for (int p = 0; p < SH_NPARTITIONS; p++) {
    info->pages[p] = sh_atomic_load_relaxed(&o->pages[p]);
    info->peak_pages[p] = sh_atomic_load_relaxed(&o->peak_pages[p]);
  }
}

/* Live bytes from the owner's own pages (its bin and run lists, walked under
 * the partition lock): no counter on the hot path, and O(its pages). */
static void sh_info_bytes(const sh_arena_t *a, uint32_t id, sh_owner_info_t *info) {
  uint32_t total = a->total_pages;
  for (int part = 0; part < SH_NPARTITIONS; part++) {
    if (info->pages[part] == 0) continue;
    if (!a->read_only) _sh_part_lock((sh_arena_t *)a, part);
    uint32_t steps = 0;
    _Atomic uint32_t *set = _sh_owner_set(a, id, part);
    for (uint32_t c = 0; set && c <= a->nclasses; c++) /* the classes, then the large runs */
      for (uint32_t pi = sh_atomic_load_acquire(&set[1 + c]); pi < total && steps++ < total; pi = a->pages[pi].next)
        _sh_info_add_page(a, pi, part, info);
    if (!a->read_only) _sh_part_unlock((sh_arena_t *)a, part);
  }
}

/* Owner 0's live bytes: its pages' figures less what the magazines hold. */
static void sh_info_default_bytes(const sh_arena_t *a, sh_owner_info_t *info) {
  memset(info->bytes, 0, sizeof info->bytes);
  info->blocks = 0;
  sh_info_bytes(a, SH_OWNER_DEFAULT, info);
  for (int p = 0; p < SH_NPARTITIONS; p++) {
    uint64_t bytes = 0, n = _sh_mag_held(a, p, -1, &bytes);
    info->bytes[p] -= bytes < info->bytes[p] ? bytes : info->bytes[p];
    info->blocks -= n < info->blocks ? n : info->blocks;
  }
}

int sh_owner_info(const sh_arena_t *a, uint32_t id, sh_owner_info_t *info) {
  if (id >= a->max_owners) return _sh_fail(SH_EOWNER, "owner %u is out of range", id);
  sh_info_header(a, id, info);
  if (info->state == SH_OWNER_FREE) return _sh_fail(SH_EOWNER, "owner slot %u is free", id);
  if (id != SH_OWNER_DEFAULT) {
    sh_info_bytes(a, id, info);
    if (id >= SH_FIRST_AGENT) _sh_nursery_info(a, id, info);
  } else {
    /* the shared default's blocks in magazines are free (see stats.c) */
    SH_MAG_EXACT(a, sh_info_default_bytes(a, info));
  }
  sh_info_add_held(a, info->user_word, info);
  return SH_OK;
}

int sh_owner_complete(sh_arena_t *a, uint32_t id, uint32_t gen, sh_owner_info_t *final) {
  if (id < SH_FIRST_AGENT) return _sh_fail(SH_EINVAL, "owner %u (the shared default or the nursery) is never recycled", id);
  _sh_owner_lock(a);
  sh_owner_t *o;
  int rc = sh_owner_lookup(a, id, gen, &o);
  if (rc == SH_OK) {
    sh_info_header(a, id, final);
    if (sh_atomic_load_relaxed(&o->pins) > 0) {
      sh_info_bytes(a, id, final);
      _sh_nursery_info(a, id, final);
      sh_info_add_held(a, final->user_word, final);
      sh_atomic_store_release(&o->state, SH_OWNER_COMPLETED);
      final->state = SH_OWNER_COMPLETED;
      rc = _sh_fail(SH_EPINNED, "owner %u has %u pin(s): recycle deferred until the last is released", id,
                    sh_atomic_load_relaxed(&o->pins));
    } else {
      rc = _sh_owner_recycle_now(a, id, final, SH_OWNER_FREE);
    }
  }
  _sh_owner_unlock(a);
  return rc;
}

int sh_owner_process_alive(const sh_arena_t *a, uint32_t id) {
  if (id >= a->max_owners) return _sh_fail(SH_EOWNER, "owner %u is out of range", id);
  const sh_owner_t *o = &a->owners[id];
  if (o->pid == 0) return 1; /* detached: the heap holds it, no process */
  return sh_process_alive(o->pid, o->pid_start);
}

/* The change is made under the owner lock, so that it does not race another
 * re-homing or the slot's reuse (the generation is checked under the same
 * lock); whether the holder died is asked of /proc before it, not under
 * the lock every owner call takes, and stands only if the holder is still
 * the one asked about. */
static int sh_owner_rehome(sh_arena_t *a, uint32_t id, uint32_t gen, bool detach, int *moved) {
  if (moved) *moved = 0;
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  if (id < SH_FIRST_AGENT) return _sh_fail(SH_EINVAL, "owner %u (the shared default or the nursery) has no process", id);
  if (id >= a->max_owners) return _sh_fail(SH_EOWNER, "owner %u is out of range (the table holds %u)", id, a->max_owners);
  int32_t pid = detach ? 0 : _sh_os_pid();
  uint64_t start = detach ? 0 : _sh_own_start_time(pid);
  /* an adoption takes only an orphan: an agent whose process lives stays
   * that process's, and a detached one stays the heap's. This process's own
   * agent (what a restore meets most) is no orphan, and asking /proc costs
   * more than the rest of an offload of a 16 KB agent (tens of microseconds
   * for /proc/PID/stat) */
  int32_t held_by = a->owners[id].pid;
  uint64_t held_since = a->owners[id].pid_start;
  bool mine = held_by == pid && held_since == start;
  bool orphan = !detach && held_by != 0 && !mine && sh_process_alive(held_by, held_since) == 0;
  _sh_owner_lock(a);
  sh_owner_t *o;
  int rc = sh_owner_lookup(a, id, gen, &o);
  bool change = rc == SH_OK && o->pid != pid &&
                (detach || (orphan && o->pid == held_by && o->pid_start == held_since));
  if (change) {
    o->pid = pid;
    o->pid_start = start;
    if (moved) *moved = 1;
  }
  _sh_owner_unlock(a);
  return rc;
}

int sh_owner_detach(sh_arena_t *a, uint32_t id, uint32_t gen) { return sh_owner_rehome(a, id, gen, true, NULL); }

int sh_owner_adopt_orphan(sh_arena_t *a, uint32_t id, uint32_t gen, int *adopted) {
  return sh_owner_rehome(a, id, gen, false, adopted);
}

int sh_owner_reserve(sh_arena_t *a, uint32_t id, uint32_t gen, uint64_t bytes, uint64_t limit) {
  if (id < SH_FIRST_AGENT || id >= a->max_owners) return _sh_fail(SH_EINVAL, "owner %u takes no reservation", id);
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  uint64_t kib = (bytes + 1023) >> 10;
  if (kib > UINT32_MAX) return _sh_fail(SH_EINVAL, "a reservation of %llu bytes is too large", (unsigned long long)bytes);
  sh_owner_t *o = &a->owners[id];
  if (sh_atomic_load_acquire(&o->generation) != gen || sh_atomic_load_acquire(&o->state) != SH_OWNER_LIVE)
    return _sh_fail(SH_EOWNER, "agent %u (generation %u) is not live", id, gen);
  uint64_t want = kib << 10;
  uint64_t held = sh_atomic_load_relaxed(&a->hdr->pages_used[SH_PART_CONTEXT]) << a->page_shift;
  uint64_t cur = sh_atomic_load_relaxed(&a->hdr->reserved_bytes);
  do { /* one CAS: two admissions at once cannot both take the last room */
    if (limit && held + cur + want > limit)
      return _sh_fail(SH_EFULL, "'context' has %llu bytes in pages and %llu reserved: %llu more would pass %llu",
                      (unsigned long long)held, (unsigned long long)cur, (unsigned long long)want,
                      (unsigned long long)limit);
  } while (!sh_atomic_cas_weak_acq_rel(&a->hdr->reserved_bytes, &cur, cur + want));
  uint32_t old = sh_atomic_exchange_acq_rel(&o->reserved_kib, (uint32_t)kib);
  if (old) sh_atomic_sub_relaxed(&a->hdr->reserved_bytes, (uint64_t)old << 10);
  return SH_OK;
}

uint32_t sh_room_seq(const sh_arena_t *a) { return sh_atomic_load_acquire(&a->hdr->room_seq); }

int sh_room_wait(sh_arena_t *a, uint32_t seen, int64_t timeout_ns) {
  int64_t deadline = _sh_deadline_ns(timeout_ns);
  sh_atomic_add_relaxed(&a->hdr->room_waiters, 1u);
  if (sh_atomic_load_acquire(&a->hdr->room_seq) == seen && !sh_atomic_load_acquire(&a->waits_called_off))
    _sh_futex_wait(&a->hdr->room_seq, seen, deadline);
  sh_atomic_sub_relaxed(&a->hdr->room_waiters, 1u);
  if (sh_atomic_load_acquire(&a->waits_called_off))
    return _sh_fail(SH_ECANCELED, "the heap is being closed in this process");
  return SH_OK;
}

void sh_call_off_waits(sh_arena_t *a) {
  sh_atomic_store_release(&a->waits_called_off, 1u);
  if (a->read_only) return; /* a read-only view waits on nothing (and may not write the header) */
  /* a spurious move of the room counter: its waiters look again, find the flag */
  sh_atomic_add_acq_rel(&a->hdr->room_seq, 1u);
  _sh_futex_wake(&a->hdr->room_seq);
}

uint64_t sh_reserved_bytes(const sh_arena_t *a) { return sh_atomic_load_relaxed(&a->hdr->reserved_bytes); }

uint32_t sh_owner_state(const sh_arena_t *a, uint32_t id) {
  return id < a->max_owners ? sh_atomic_load_acquire(&a->owners[id].state) : SH_OWNER_FREE;
}

uint32_t sh_owner_offloads(const sh_arena_t *a, uint32_t id) {
  return id < a->max_owners ? sh_atomic_load_acquire(&a->owners[id].offloads) : 0;
}

/* Under the owner lock, which an offload holds from its count's increment to
 * the last page it gives back: the count and the block's owner read here
 * stand until the free is done. The lock is taken for nothing but this, so
 * only frees that may meet an offload come here (an agent's entries and its
 * Blocks), not the allocator's own. */
static int sh_owner_free_locked(sh_arena_t *a, uint64_t offset, uint32_t id, uint32_t gen, uint32_t offloads,
                                bool may_lock) {
  sh_owner_t *o;
  int rc = sh_owner_lookup(a, id, gen, &o);
  if (rc == SH_OK && sh_atomic_load_acquire(&o->offloads) != offloads)
    rc = _sh_fail(SH_EOWNER, "agent %u was offloaded since: its memory went back with it", id);
  sh_block_info_t info;
  if (rc == SH_OK) rc = sh_block_info(a, offset, &info);
  if (rc == SH_OK && info.owner != id)
    rc = _sh_fail(SH_EOWNER, "block at offset %llu belongs to owner %u, not %u", (unsigned long long)offset,
                  info.owner, id);
  if (rc == SH_OK) rc = may_lock ? sh_free(a, offset) : sh_free_nolock(a, offset);
  return rc;
}

int sh_owner_free(sh_arena_t *a, uint64_t offset, uint32_t id, uint32_t gen, uint32_t offloads) {
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  _sh_owner_lock(a);
  int rc = sh_owner_free_locked(a, offset, id, gen, offloads, true);
  _sh_owner_unlock(a);
  return rc;
}

int sh_owner_free_nolock(sh_arena_t *a, uint64_t offset, uint32_t id, uint32_t gen, uint32_t offloads) {
  if (a->read_only) return _sh_fail(SH_EINVAL, "the heap is attached read-only");
  if (!_sh_owner_trylock(a)) return SH_EAGAIN;
  int rc = sh_owner_free_locked(a, offset, id, gen, offloads, false);
  _sh_owner_unlock(a);
  return rc;
}

uint32_t sh_owner_generation(const sh_arena_t *a, uint32_t id) {
  if (id >= a->max_owners) return 0;
  const sh_owner_t *o = &a->owners[id];
  if (sh_atomic_load_acquire(&o->state) == SH_OWNER_FREE) return 0;
  return sh_atomic_load_relaxed(&o->generation);
}
