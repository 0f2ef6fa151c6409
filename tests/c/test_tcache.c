/* Thread caches: whatever a thread caches is counted as free, comes back when
 * the thread exits, the handle closes or the process dies, and never lets a
 * recycle, a double free or a full partition go wrong. */
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sh_internal.h"
#include "sh_tcache.h"
#include "sh_track.h"
#include "swarmheap.h"
#include "testhelper.h"

static uint32_t bound_slots(sh_arena_t *a) {
  uint32_t bound, total;
  sh_thread_slots(a, &bound, &total);
  return bound;
}

/* A thread allocates, frees half, and exits holding the rest. */
typedef struct worker_s {
  sh_arena_t *arena;
  uint32_t owner;
  uint64_t kept[64];
  int ok;
} worker_t;

static void *alloc_then_exit(void *arg) {
  worker_t *w = arg;
  uint64_t tmp[64];
  w->ok = 1;
  for (int i = 0; i < 64; i++) {
    w->ok &= sh_alloc(w->arena, w->owner, SH_PART_CONTEXT, 48, &w->kept[i]) == SH_OK;
    w->ok &= sh_alloc(w->arena, w->owner, SH_PART_CONTEXT, 48, &tmp[i]) == SH_OK;
  }
  for (int i = 0; i < 64; i++) w->ok &= sh_free(w->arena, tmp[i]) == SH_OK;
  return NULL;
}

static void test_thread_exit_returns_cache(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint32_t before = bound_slots(a);
  worker_t w = {.arena = a, .owner = 0};
  pthread_t t;
  pthread_create(&t, NULL, alloc_then_exit, &w);
  pthread_join(t, NULL);
  CHECK("worker allocated and freed", w.ok);
  CHECK("its slot was given back at exit", bound_slots(a) == before);
  sh_partition_stats_t st = part_stats(a, SH_PART_CONTEXT);
  CHECK("only the kept blocks are in use", st.in_use == 64 * 48);
  CHECK("every operation counted", st.allocs == 128 && st.frees == 64);
  CHECK("check after thread exit", sh_check(a) == SH_OK);
  for (int i = 0; i < 64; i++) sh_free(a, w.kept[i]);
  CHECK("back to empty", part_stats(a, SH_PART_CONTEXT).in_use == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static void test_cached_blocks_count_as_free(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint64_t off[100];
  for (int i = 0; i < 100; i++) sh_alloc(a, 0, SH_PART_SHARED, 100, &off[i]);
  for (int i = 0; i < 60; i++) sh_free(a, off[i]);
  sh_partition_stats_t st = part_stats(a, SH_PART_SHARED);
  CHECK("in use excludes the cached free blocks", st.in_use == 40 * 112);
  CHECK("allocs and frees counted in the slot", st.allocs == 100 && st.frees == 60);
  sh_class_stats_t cs;
  sh_class_stats(a, 6, &cs); /* 112-byte class */
  CHECK("class figures agree", cs.blocks_used == 40 && cs.allocs == 100 && cs.frees == 60);
  CHECK("check walks the cached stack", sh_check(a) == SH_OK);
  CHECK("flush", sh_thread_flush(a) == SH_OK);
  CHECK("flush frees the slot", bound_slots(a) == 0);
  st = part_stats(a, SH_PART_SHARED);
  CHECK("figures survive the flush", st.in_use == 40 * 112 && st.allocs == 100 && st.frees == 60);
  CHECK("check after flush", sh_check(a) == SH_OK);
  for (int i = 60; i < 100; i++) CHECK("free after flush", sh_free(a, off[i]) == SH_OK);
  CHECK("empty", part_stats(a, SH_PART_SHARED).in_use == 0);
  sh_close(a);
}

static void test_double_free_on_cached_page(void) {
  sh_arena_t *a = make_anon(8 * MiB, 65536);
  uint64_t x, y;
  sh_alloc(a, 0, SH_PART_CONTEXT, 64, &x);
  sh_alloc(a, 0, SH_PART_CONTEXT, 64, &y);
  CHECK("first free", sh_free(a, x) == SH_OK);
  CHECK("second free refused", sh_free(a, x) == SH_EDOUBLEFREE);
  CHECK("nolock second free refused", sh_free_nolock(a, x) == SH_EDOUBLEFREE);
  sh_block_info_t info;
  CHECK("a cached free block is not live", sh_block_info(a, x, &info) == SH_EBADPTR);
  CHECK("live block is", sh_block_info(a, y, &info) == SH_OK);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static void test_write_after_free_on_cached_page(void) {
  sh_arena_t *a = make_anon(8 * MiB, 65536);
  uint64_t x, y, z;
  sh_alloc(a, 0, SH_PART_CONTEXT, 32, &x);
  sh_alloc(a, 0, SH_PART_CONTEXT, 32, &y);
  sh_free(a, y);
  sh_free(a, x);
  sh_track_reset(sh_ptr(a, x), 16);
  memset(sh_ptr(a, x), 0x5A, 16);
  CHECK("check sees the damaged cached link", sh_check(a) == SH_ECORRUPT);
  CHECK("pop refuses it", sh_alloc(a, 0, SH_PART_CONTEXT, 32, &z) == SH_ECORRUPT);
  CHECK("other classes still serve", sh_alloc(a, 0, SH_PART_CONTEXT, 64, &z) == SH_OK);
  sh_close(a);
}

/* A class whose live blocks span several pages: the thread caches up to three
 * of them, frees to any go back to it, and they are reused before new pages. */
static void test_ways_span_pages(void) {
  sh_arena_t *a = make_anon(8 * MiB, 4096);
  uint64_t off[12];
  for (int i = 0; i < 12; i++) REQUIRE("alloc", sh_alloc(a, 0, SH_PART_CONTEXT, 1000, &off[i]) == SH_OK);
  sh_partition_stats_t st = part_stats(a, SH_PART_CONTEXT);
  uint64_t pages = st.pages_used;
  CHECK("12 blocks of 1 KiB fill three 4 KiB pages", pages == 3);
  for (int i = 0; i < 12; i++) CHECK("free", sh_free(a, off[i]) == SH_OK);
  st = part_stats(a, SH_PART_CONTEXT);
  CHECK("all free", st.in_use == 0 && st.frees == 12);
  CHECK("check with three cached pages", sh_check(a) == SH_OK);
  for (int i = 0; i < 12; i++) REQUIRE("alloc again", sh_alloc(a, 0, SH_PART_CONTEXT, 1000, &off[i]) == SH_OK);
  CHECK("the cached pages served them", part_stats(a, SH_PART_CONTEXT).pages_used == pages);
  for (int i = 0; i < 12; i++) sh_free(a, off[i]);
  CHECK("double free on a second way refused", sh_free(a, off[0]) == SH_EDOUBLEFREE && sh_free(a, off[11]) == SH_EDOUBLEFREE);
  CHECK("flush", sh_thread_flush(a) == SH_OK && sh_check(a) == SH_OK);
  CHECK("empty", part_stats(a, SH_PART_CONTEXT).in_use == 0);
  sh_close(a);
}

/* Runs a thread keeps for reuse: recycled with their owner, given back at
 * flush, never handed to another owner. */
static void test_kept_runs(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint32_t id, gen, id2, gen2;
  uint64_t run, other, base_pages = part_stats(a, SH_PART_SHARED).pages_used;
  sh_owner_create(a, 0, &id, &gen);
  REQUIRE("run", sh_alloc(a, id, SH_PART_SHARED, 300000, &run) == SH_OK);
  CHECK("free keeps it", sh_free(a, run) == SH_OK);
  CHECK("kept runs are pages, not use", part_stats(a, SH_PART_SHARED).pages_used == base_pages + 5 &&
                                          part_stats(a, SH_PART_SHARED).in_use == 0);
  sh_owner_info_t info;
  CHECK("nor the owner's bytes", sh_owner_info(a, id, &info) == SH_OK && info.bytes[SH_PART_SHARED] == 0 && info.blocks == 0);
  CHECK("recycle takes it with the owner", sh_owner_recycle(a, id, gen) == SH_OK);
  CHECK("pages back", part_stats(a, SH_PART_SHARED).pages_used == base_pages);
  CHECK("check", sh_check(a) == SH_OK);
  sh_owner_create(a, 0, &id2, &gen2);
  CHECK("another owner gets a run of its own", sh_alloc(a, id2, SH_PART_SHARED, 300000, &other) == SH_OK);
  sh_block_info_t bi;
  CHECK("charged to it", sh_block_info(a, other, &bi) == SH_OK && bi.owner == id2);
  sh_free(a, other);
  CHECK("flush gives kept runs back", sh_thread_flush(a) == SH_OK &&
                                          part_stats(a, SH_PART_SHARED).pages_used == base_pages);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* Recycling an owner whose page this thread caches: the cache notices the
 * claim is gone and never hands out a block of the released page. */
static void test_recycle_under_cache(void) {
  sh_arena_t *a = make_anon(8 * MiB, 65536);
  uint32_t id, gen, id2, gen2;
  uint64_t off[10], other;
  sh_owner_create(a, 0, &id, &gen);
  for (int i = 0; i < 10; i++) sh_alloc(a, id, SH_PART_CONTEXT, 80, &off[i]);
  for (int i = 0; i < 5; i++) sh_free(a, off[i]);
  CHECK("recycle with a cached page", sh_owner_recycle(a, id, gen) == SH_OK);
  CHECK("context empty", part_stats(a, SH_PART_CONTEXT).in_use == 0);
  CHECK("check after recycle", sh_check(a) == SH_OK);
  sh_owner_create(a, 0, &id2, &gen2);
  CHECK("new owner allocates", sh_alloc(a, id2, SH_PART_CONTEXT, 80, &other) == SH_OK);
  sh_block_info_t info;
  CHECK("its block is its own", sh_block_info(a, other, &info) == SH_OK && info.owner == id2);
  CHECK("stale owner refused", sh_alloc(a, id, SH_PART_CONTEXT, 80, &other) == SH_EOWNER);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A recycled owner's id comes back with a new generation while this thread's
 * way still names the page the old one cached, and that page went on to
 * another class: the pop reads a stale link there, and the claim throws it
 * away (under ASan, that read must not count as a use of poisoned memory). */
static void test_reused_owner_id_over_a_reused_page(void) {
  sh_arena_t *a = make_anon(8 * MiB, 4096);
  uint32_t id, gen, id2, gen2;
  uint64_t off[40], other[200];
  sh_owner_create(a, 0, &id, &gen);
  for (int i = 0; i < 40; i++) REQUIRE("alloc", sh_alloc(a, id, SH_PART_CONTEXT, 80, &off[i]) == SH_OK);
  for (int i = 0; i < 40; i += 2) sh_free(a, off[i]);
  CHECK("recycle with a cached stack", sh_owner_recycle(a, id, gen) == SH_OK);
  /* the freed pages go to blocks of another size, half of them freed again */
  for (int i = 0; i < 200; i++) REQUIRE("reuse", sh_alloc(a, 0, SH_PART_CONTEXT, 48, &other[i]) == SH_OK);
  for (int i = 0; i < 200; i += 2) sh_free(a, other[i]);
  /* the free-slot scan starts past the last id it gave: go round to ours */
  for (int n = 0; n < 100000 && sh_owner_create(a, 0, &id2, &gen2) == SH_OK && id2 != id; n++) {
  }
  CHECK("the id came back", id2 == id && gen2 != gen);
  uint64_t mine;
  CHECK("the new owner allocates", sh_alloc(a, id2, SH_PART_CONTEXT, 80, &mine) == SH_OK);
  sh_block_info_t info;
  CHECK("a block of its own", sh_block_info(a, mine, &info) == SH_OK && info.owner == id2);
  for (int i = 1; i < 200; i += 2)
    CHECK("the other size's blocks are untouched", sh_block_info(a, other[i], &info) == SH_OK && info.owner == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A way lives in the arena, so damage can give it a top past its page: the
 * pop and the flush must not follow it out of the page (here, out of the
 * mapping). */
static void test_damaged_way_top(void) {
  sh_arena_t *a = make_anon(2 * MiB, 4096);
  uint32_t id, gen;
  uint64_t off[8], more;
  /* what lies past the mapping is made unreadable, so that a read there
   * faults here rather than by luck (left out if the range is taken) */
  sh_arena_info_t info;
  sh_arena_info(a, &info);
  void *guard = mmap((char *)sh_base(a) + info.size, 32 * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                     -1, 0);
  sh_owner_create(a, 0, &id, &gen); /* an agent's blocks go through the ways (the default's, magazines) */
  for (int i = 0; i < 8; i++) REQUIRE("alloc", sh_alloc(a, id, SH_PART_CONTEXT, 80, &off[i]) == SH_OK);
  for (int i = 0; i < 4; i++) sh_free(a, off[i]);
  sh_tslot_t *slot = _sh_tc_slot(a, false);
  REQUIRE("a bound slot", slot != NULL);
  sh_tc_entry_t *e = _sh_tc_entry(a, slot, id, SH_PART_CONTEXT, _sh_size_class(a, 80));
  REQUIRE("the way caches a stack", sh_local_top(sh_atomic_load_relaxed(&e->way[0].local)) != 0);
  sh_atomic_store_relaxed(&e->way[0].local, sh_local_make(SH_HEAD_FIELD_MASK, 3));
  int rc = sh_alloc(a, id, SH_PART_CONTEXT, 80, &more);
  CHECK("the pop refuses it", rc == SH_ECORRUPT);
  CHECK("check reports the page", sh_check(a) == SH_ECORRUPT);
  for (int i = 4; i < 8; i++) sh_free(a, off[i]);
  REQUIRE("alloc", sh_alloc(a, id, SH_PART_CONTEXT, 200, &more) == SH_OK);
  sh_free(a, more);
  e = _sh_tc_entry(a, slot, id, SH_PART_CONTEXT, _sh_size_class(a, 200));
  REQUIRE("another way caches a stack", sh_local_top(sh_atomic_load_relaxed(&e->way[0].local)) != 0);
  sh_atomic_store_relaxed(&e->way[0].local, sh_local_make(SH_HEAD_FIELD_MASK, 3));
  CHECK("the flush refuses it too", sh_thread_flush(a) == SH_OK);
  CHECK("other classes still serve", sh_alloc(a, id, SH_PART_CONTEXT, 500, &more) == SH_OK);
  sh_close(a);
  if (guard != MAP_FAILED) munmap(guard, 32 * MiB);
}

/* A kept run's record and its page's length live in the arena: a record
 * forged to name the partition's last page, with a length of two, must not
 * hand out a run that ends past the partition. */
static void test_forged_kept_run_past_the_partition(void) {
  sh_arena_t *a = make_anon(4 * MiB, 4096);
  uint32_t id, gen;
  uint64_t off;
  sh_owner_create(a, 0, &id, &gen);
  REQUIRE("a page run", sh_alloc(a, id, SH_PART_CONTEXT, 4096, &off) == SH_OK);
  REQUIRE("kept when freed", sh_free(a, off) == SH_OK);
  sh_tslot_t *slot = _sh_tc_slot(a, false);
  REQUIRE("a bound slot", slot != NULL);
  sh_tc_run_t *r = NULL;
  for (int i = 0; i < SH_TC_RUNS; i++)
    if (sh_atomic_load_relaxed(&slot->runs[i].page) != SH_NIL) r = &slot->runs[i];
  REQUIRE("the run is kept", r != NULL);
  uint32_t last = a->part_end[SH_PART_CONTEXT] - 1;
  sh_page_t *pg = &a->pages[last];
  REQUIRE("the partition's last page is free", sh_atomic_load_relaxed(&pg->state) == SH_PAGE_FREE);
  sh_atomic_store_relaxed(&pg->owner, id);
  sh_atomic_store_relaxed(&pg->capacity, 2);
  sh_atomic_store_relaxed(&pg->claim, sh_atomic_load_relaxed(&r->claim));
  sh_atomic_store_relaxed(&pg->state, SH_PAGE_LARGE);
  sh_atomic_store_relaxed(&r->page, last);
  uint64_t two;
  CHECK("two pages", sh_alloc(a, id, SH_PART_CONTEXT, 8192, &two) == SH_OK);
  CHECK("not the forged run", (two >> 12) != last && (two >> 12) + 2 <= a->part_end[SH_PART_CONTEXT]);
  sh_close(a);
}

/* A full partition first takes back this thread's own cached pages. */
static void test_full_partition_takes_own_cache(void) {
  sh_arena_t *a = make_anon(4 * MiB, 4096);
  sh_partition_stats_t st = part_stats(a, SH_PART_COMM);
  uint64_t offs[4096];
  int n = 0;
  for (int size = 16; size <= 1024 && n < 4096; size += 48)
    for (int k = 0; k < 8 && n < 4096; k++) sh_alloc(a, 0, SH_PART_COMM, (size_t)size, &offs[n++]);
  for (int i = 0; i < n; i++) sh_free(a, offs[i]);
  uint64_t big;
  CHECK("a run of the whole partition fits once the cache is flushed",
        sh_alloc(a, 0, SH_PART_COMM, st.capacity, &big) == SH_OK);
  CHECK("check", sh_check(a) == SH_OK);
  sh_free(a, big);
  sh_close(a);
}

#if !defined(__SANITIZE_THREAD__) /* TSan does not follow a child that skips its exit hooks */
/* A process dies with blocks in its cache: another gives them back. */
static void test_dead_process_slots(void) {
  char name[64];
  snprintf(name, sizeof name, "/sh_tcache_%d", (int)getpid());
  sh_unlink(SH_BACKING_SHM, name);
  sh_arena_t *a = NULL;
  REQUIRE("shm create", sh_create(&a, SH_BACKING_SHM, name, 16 * MiB, NULL) == SH_OK);
  sh_unlink(SH_BACKING_SHM, name); /* the mapping outlives the name */
  uint32_t before = bound_slots(a);
  pid_t child = fork();
  if (child == 0) {
    uint64_t off[32];
    int ok = 1;
    for (int i = 0; i < 32; i++) ok &= sh_alloc(a, 0, SH_PART_COMM, 200, &off[i]) == SH_OK;
    for (int i = 0; i < 16; i++) ok &= sh_free(a, off[i]) == SH_OK;
    _exit(ok ? 0 : 1); /* no close: its slot stays bound */
  }
  int status;
  waitpid(child, &status, 0);
  CHECK("child ran", WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK("its slot is still bound", bound_slots(a) == before + 1);
  CHECK("check with a dead process's cache", sh_check(a) == SH_OK);
  sh_partition_stats_t st = part_stats(a, SH_PART_COMM);
  CHECK("its cached blocks count as free", st.in_use == 16 * 224);
  CHECK("its operations are counted", st.allocs == 32 && st.frees == 16);
  uint32_t n = 0;
  CHECK("reclaim", sh_reclaim_dead_threads(a, &n) == SH_OK);
  CHECK("one slot reclaimed", n == 1 && bound_slots(a) == before);
  CHECK("nothing more to reclaim", sh_reclaim_dead_threads(a, &n) == SH_OK && n == 0);
  st = part_stats(a, SH_PART_COMM);
  CHECK("figures unchanged by the reclaim", st.in_use == 16 * 224 && st.allocs == 32 && st.frees == 16);
  CHECK("check after reclaim", sh_check(a) == SH_OK);
  sh_close(a);
}
#endif

/* Magazines: a freed block of the shared default waits in the freeing
 * thread's magazine and is the next one of its class that thread gets. */
static void *free_again(void *arg) {
  worker_t *w = arg;
  w->ok = sh_free(w->arena, w->kept[0]) == SH_EDOUBLEFREE;
  return NULL;
}

static void test_magazines(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint64_t x, y, z;
  REQUIRE("alloc", sh_alloc(a, 0, SH_PART_SHARED, 100, &x) == SH_OK && sh_alloc(a, 0, SH_PART_SHARED, 100, &y) == SH_OK);
  CHECK("free", sh_free(a, x) == SH_OK);
  CHECK("counted as free while in the magazine", in_use(a, SH_PART_SHARED) == 112);
  sh_class_stats_t cs;
  sh_block_info_t bi;
  sh_block_info(a, y, &bi);
  int c = -1;
  for (int k = 0; k < 64 && c < 0; k++)
    if (sh_class_stats(a, k, &cs) == SH_OK && cs.block_size == 112) c = k;
  CHECK("class stats count it as free", c >= 0 && cs.blocks_used == 1 && cs.allocs == 2 && cs.frees == 1);
  CHECK("check with a block in a magazine", sh_check(a) == SH_OK);
  CHECK("a second free is caught", sh_free(a, x) == SH_EDOUBLEFREE);
  worker_t w = {.arena = a, .kept = {x}};
  pthread_t t;
  pthread_create(&t, NULL, free_again, &w);
  pthread_join(t, NULL);
  CHECK("a second free from another thread is caught", w.ok);
  CHECK("the same thread gets it back first", sh_alloc(a, 0, SH_PART_SHARED, 110, &z) == SH_OK && z == x);
  CHECK("in use again", in_use(a, SH_PART_SHARED) == 224);
  sh_free(a, x);
  sh_free(a, y);
  CHECK("empty", in_use(a, SH_PART_SHARED) == 0);
  /* a write after free into a block in the magazine: check reports it, and
   * the next allocation of the class reports it rather than handing it out */
  sh_track_reset(sh_ptr(a, y), 16);
  memset(sh_ptr(a, y), 0x33, 8);
  CHECK("check sees the write", sh_check(a) == SH_ECORRUPT && strstr(sh_last_error(), "written after"));
  CHECK("the pop reports it", sh_alloc(a, 0, SH_PART_SHARED, 100, &z) == SH_ECORRUPT &&
                                  strstr(sh_last_error(), "written after"));
  CHECK("the next one is served", sh_alloc(a, 0, SH_PART_SHARED, 100, &z) == SH_OK && z == x);
  CHECK("free", sh_free(a, z) == SH_OK);
  uint32_t id, gen;
  sh_owner_create(a, 0, &id, &gen);
  uint64_t o1;
  CHECK("an agent's block is not a magazine block", sh_alloc(a, id, SH_PART_SHARED, 100, &o1) == SH_OK && o1 != z);
  CHECK("recycle", sh_owner_recycle(a, id, gen) == SH_OK);
  CHECK("flush gives them back", sh_thread_flush(a) == SH_OK && sh_alloc(a, 0, SH_PART_SHARED, 100, &o1) == SH_OK);
  /* live data that looks like a mark is still just data */
  uint32_t *words = sh_ptr(a, o1);
  words[0] = SH_MAG_MARK;
  CHECK("a live block starting with the mark's first word frees", sh_free(a, o1) == SH_OK);
  CHECK("alloc", sh_alloc(a, 0, SH_PART_SHARED, 100, &o1) == SH_OK);
  words = sh_ptr(a, o1);
  words[0] = SH_MAG_MARK;
  words[1] = ~(uint32_t)(o1 >> 4);
  CHECK("even one holding a whole mark frees (no magazine holds it)", sh_free(a, o1) == SH_OK);
  sh_close(a);

  /* a flush meets a block written after its free: kept out, page quarantined */
  a = make_anon(16 * MiB, 65536);
  sh_alloc(a, 0, SH_PART_COMM, 64, &x);
  sh_alloc(a, 0, SH_PART_COMM, 64, &y);
  sh_free(a, x);
  sh_track_reset(sh_ptr(a, x), 16);
  memset(sh_ptr(a, x), 0x44, 8);
  CHECK("flush with a damaged block", sh_thread_flush(a) == SH_OK);
  CHECK("the damage is reported by check", sh_check(a) == SH_ECORRUPT && strstr(sh_last_error(), "quarantined"));
  CHECK("the damaged block was not handed back", in_use(a, SH_PART_COMM) == 128);
  sh_close(a);

  /* a flush puts each block on its page's stack, counted once (the
   * magazine's count stands), and the emptied page goes back */
  a = make_anon(16 * MiB, 65536);
  uint64_t many[96];
  for (int i = 0; i < 96; i++) sh_alloc(a, 0, SH_PART_COMM, 64, &many[i]);
  uint64_t pages_before = part_stats(a, SH_PART_COMM).pages_used;
  for (int i = 0; i < 96; i++) sh_free(a, many[i]);
  CHECK("some wait in the magazine", sh_magazine_blocks(a) > 0);
  CHECK("flush", sh_thread_flush(a) == SH_OK && sh_magazine_blocks(a) == 0);
  sh_partition_stats_t ps = part_stats(a, SH_PART_COMM);
  CHECK("each free counted once", ps.allocs == 96 && ps.frees == 96 && ps.in_use == 0);
  CHECK("no more pages than before", ps.pages_used <= pages_before);
  CHECK("check after the flush", sh_check(a) == SH_OK);
  CHECK("the blocks serve again", sh_alloc(a, 0, SH_PART_COMM, 64, &x) == SH_OK && sh_free(a, x) == SH_OK);
  sh_close(a);

  /* a flush meets a block whose page stopped being a small page of the
   * default (its descriptor damaged since the free): not pushed, the page
   * quarantined, no write into it */
  a = make_anon(16 * MiB, 65536);
  sh_alloc(a, 0, SH_PART_COMM, 64, &x);
  sh_alloc(a, 0, SH_PART_COMM, 64, &y);
  sh_free(a, x);
  uint32_t pi = (uint32_t)(x >> a->page_shift);
  uint32_t words_before[2];
  memcpy(words_before, sh_ptr(a, x), sizeof words_before);
  sh_atomic_store_relaxed(&a->pages[pi].owner, 1u);
  CHECK("flush past a damaged page", sh_thread_flush(a) == SH_OK && sh_magazine_blocks(a) == 0);
  CHECK("the block not linked", memcmp(words_before, sh_ptr(a, x), sizeof words_before) == 0);
  CHECK("its page quarantined", sh_atomic_load_relaxed(&a->pages[pi].flags) & SH_PAGE_CORRUPT);
  sh_close(a);
}

/* A full partition names what other threads' magazines still hold. */
typedef struct holder_s {
  sh_arena_t *arena;
  pthread_barrier_t *freed, *done;
} holder_t;

static void *free_and_wait(void *arg) {
  holder_t *h = arg;
  uint64_t off[8];
  for (int i = 0; i < 8; i++) sh_alloc(h->arena, 0, SH_PART_COMM, 64, &off[i]);
  for (int i = 0; i < 8; i++) sh_free(h->arena, off[i]);
  pthread_barrier_wait(h->freed);
  pthread_barrier_wait(h->done); /* alive, magazine full, until the main thread has looked */
  return NULL;
}

static void test_full_names_other_magazines(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  pthread_barrier_t freed, done;
  pthread_barrier_init(&freed, NULL, 2);
  pthread_barrier_init(&done, NULL, 2);
  holder_t h = {a, &freed, &done};
  pthread_t t;
  pthread_create(&t, NULL, free_and_wait, &h);
  pthread_barrier_wait(&freed);
  uint64_t big;
  int rc = sh_alloc(a, 0, SH_PART_COMM, part_stats(a, SH_PART_COMM).capacity, &big);
  CHECK("full", rc == SH_EFULL);
  CHECK("the message names the blocks other threads keep", strstr(sh_last_error(), "8 freed block(s) wait in other threads"));
  pthread_barrier_wait(&done);
  pthread_join(t, NULL);
  CHECK("after that thread exits they are free", sh_alloc(a, 0, SH_PART_COMM, part_stats(a, SH_PART_COMM).capacity, &big) == SH_OK);
  sh_free(a, big);
  CHECK("check", sh_check(a) == SH_OK);
  pthread_barrier_destroy(&freed);
  pthread_barrier_destroy(&done);
  sh_close(a);
}

/* Threads that stay alive keep what they cache: in a small partition the
 * last pages stay shared, so another thread still finds room for a block of
 * each of the classes up to 1 KiB while they hold their pages. */
enum { SMALL_CLASSES = 20 };
static void *touch_every_class_and_wait(void *arg) {
  holder_t *h = arg;
  sh_arena_t *a = h->arena;
  for (uint32_t c = 0; c < SMALL_CLASSES; c++) {
    uint64_t off;
    if (sh_alloc(a, 0, SH_PART_COMM, a->classes[c].size, &off) == SH_OK) sh_free(a, off);
  }
  pthread_barrier_wait(h->freed);
  pthread_barrier_wait(h->done);
  return NULL;
}

static void test_live_threads_caches_leave_room(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  enum { HOLDERS = 4 };
  uint32_t pages = part_stats(a, SH_PART_COMM).pages_total;
  CHECK("the holders could cache more pages than the partition has", HOLDERS * SMALL_CLASSES > pages);
  pthread_barrier_t freed, done;
  pthread_barrier_init(&freed, NULL, HOLDERS + 1);
  pthread_barrier_init(&done, NULL, HOLDERS + 1);
  holder_t h = {a, &freed, &done};
  pthread_t t[HOLDERS];
  for (int i = 0; i < HOLDERS; i++) pthread_create(&t[i], NULL, touch_every_class_and_wait, &h);
  pthread_barrier_wait(&freed);
  uint64_t offs[SMALL_CLASSES];
  uint32_t got = 0;
  for (uint32_t c = 0; c < SMALL_CLASSES; c++)
    if (sh_alloc(a, 0, SH_PART_COMM, a->classes[c].size, &offs[got]) == SH_OK) got++;
  CHECK("a block of each class while the holders keep their caches", got == SMALL_CLASSES);
  for (uint32_t i = 0; i < got; i++) sh_free(a, offs[i]);
  CHECK("check with the holders alive", sh_check(a) == SH_OK);
  pthread_barrier_wait(&done);
  for (int i = 0; i < HOLDERS; i++) pthread_join(t[i], NULL);
  CHECK("nothing in use after they exit", part_stats(a, SH_PART_COMM).in_use == 0);
  CHECK("check", sh_check(a) == SH_OK);
  pthread_barrier_destroy(&freed);
  pthread_barrier_destroy(&done);
  sh_close(a);
}

/* More threads than slots: the rest take the uncached path. */
static void *churn(void *arg) {
  worker_t *w = arg;
  w->ok = 1;
  for (int round = 0; round < 200; round++) {
    uint64_t off[16];
    for (int i = 0; i < 16; i++) w->ok &= sh_alloc(w->arena, 0, SH_PART_CONTEXT, 16 + (size_t)i * 24, &off[i]) == SH_OK;
    for (int i = 0; i < 16; i++) w->ok &= sh_free(w->arena, off[i]) == SH_OK;
  }
  return NULL;
}

static void test_more_threads_than_slots(void) {
  sh_options_t o;
  sh_options_init(&o);
  o.max_threads = 2;
  sh_arena_t *a = NULL;
  REQUIRE("create with 2 slots", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, &o) == SH_OK);
  enum { N = 5 };
  worker_t w[N];
  pthread_t t[N];
  for (int i = 0; i < N; i++) {
    w[i] = (worker_t){.arena = a};
    pthread_create(&t[i], NULL, churn, &w[i]);
  }
  int ok = 1;
  for (int i = 0; i < N; i++) {
    pthread_join(t[i], NULL);
    ok &= w[i].ok;
  }
  CHECK("every thread allocated and freed", ok);
  sh_partition_stats_t st = part_stats(a, SH_PART_CONTEXT);
  CHECK("all counted", st.allocs == N * 200 * 16 && st.frees == N * 200 * 16);
  CHECK("empty", st.in_use == 0);
  CHECK("no slot left bound", bound_slots(a) == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_options_init(&o);
  o.max_threads = 5000;
  CHECK("too many slots refused", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, &o) == SH_EINVAL);
  sh_close(a);
}

int main(void) {
  test_thread_exit_returns_cache();
  test_cached_blocks_count_as_free();
  test_double_free_on_cached_page();
  test_write_after_free_on_cached_page();
  test_ways_span_pages();
  test_kept_runs();
  test_recycle_under_cache();
  test_reused_owner_id_over_a_reused_page();
  test_damaged_way_top();
  test_forged_kept_run_past_the_partition();
  test_full_partition_takes_own_cache();
  test_magazines();
  test_full_names_other_magazines();
#if !defined(__SANITIZE_THREAD__)
  test_dead_process_slots();
#endif
  test_live_threads_caches_leave_room();
  test_more_threads_than_slots();
  return check_summary("test_tcache");
}
