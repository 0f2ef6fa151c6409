/* Stress: threads in several forked processes allocate and free random sizes
 * in every partition, hand blocks to each other through the arena and free
 * each other's, recycle their own owners while the rest keep working, and
 * fill partitions to exhaustion. Every block carries a pattern checked when
 * it is freed. check() must be clean at the end. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "swarmheap.h"
#include "testhelper.h"

/* TSan keeps its happens-before clocks per process: synchronisation through
 * another process's atomics is invisible to it and shows as false races. Under
 * TSan the same workload runs as threads of one process; the other builds
 * fork a second process. */
#if defined(__SANITIZE_THREAD__)
#define NPROCS 1
#define NTHREADS 4
#else
#define NPROCS 2 /* the parent plus one child */
#define NTHREADS 2
#endif
#define ITERS 150000
#define LIVE 256
#define SLOTS 64

static char name[64];
static _Atomic uint64_t *exchange; /* SLOTS handoff slots in the arena */
static _Atomic int failures;

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

/* block = [size:8][offset^seal:8][pattern...]; anyone can verify it */
#define SEAL 0x5EA15EA15EA15EA1ull
static void fill(sh_arena_t *a, uint64_t off, uint64_t size) {
  uint64_t *w = sh_ptr(a, off);
  w[0] = size;
  w[1] = off ^ SEAL;
  uint8_t *p = (uint8_t *)(w + 2);
  for (uint64_t i = 0; i + 16 < size; i++) p[i] = (uint8_t)(off + i * 31);
}
static int verify(sh_arena_t *a, uint64_t off) {
  const uint64_t *w = sh_ptr(a, off);
  uint64_t size = w[0];
  if (w[1] != (off ^ SEAL) || size < 16 || size > (1u << 20)) return 0;
  const uint8_t *p = (const uint8_t *)(w + 2);
  for (uint64_t i = 0; i + 16 < size; i++)
    if (p[i] != (uint8_t)(off + i * 31)) return 0;
  return 1;
}

static void fail(const char *what, uint64_t off) {
  fprintf(stderr, "stress: %s at offset %llu: %s\n", what, (unsigned long long)off, sh_last_error());
  failures++;
}

static void free_checked(sh_arena_t *a, uint64_t off) {
  if (!verify(a, off)) fail("pattern damaged", off);
  if (sh_free(a, off) != SH_OK) fail("free failed", off);
}

typedef struct worker_s {
  sh_arena_t *arena;
  uint64_t seed;
} worker_t;

static void *worker(void *arg) {
  worker_t *w = arg;
  sh_arena_t *a = w->arena;
  uint64_t live[LIVE] = {0}, s = w->seed;
  for (int it = 0; it < ITERS && !failures; it++) {
    uint64_t r = rnd(&s);
    int part = (int)(r % SH_NPARTITIONS);
    uint64_t size = 16 + (r >> 8) % 2048;
    if ((r >> 40) % 97 == 0) size = 70000 + (r >> 20) % 100000; /* a page run now and then */
    int slot = (int)((r >> 24) % LIVE);
    if (live[slot]) {
      free_checked(a, live[slot]);
      live[slot] = 0;
    }
    uint64_t off;
    int rc = sh_alloc(a, 0, (sh_partition_t)part, size, &off);
    if (rc == SH_EFULL) continue;
    if (rc != SH_OK) {
      fail("alloc failed", 0);
      break;
    }
    fill(a, off, size);
    if ((r >> 32) % 4 == 0) {
      /* hand it to whoever comes next, and free what was there */
      uint64_t got = atomic_exchange(&exchange[(r >> 48) % SLOTS], off);
      if (got) free_checked(a, got);
    } else {
      live[slot] = off;
    }
    if (it % 3000 == 1500) {
      /* an owner of our own, filled and recycled while everyone else works */
      uint32_t id, gen;
      if (sh_owner_create(a, 1, &id, &gen) != SH_OK) {
        fail("owner create", 0);
        continue;
      }
      for (int k = 0; k < 2000; k++) {
        uint64_t o;
        if (sh_alloc(a, id, (sh_partition_t)(k % 3), 16 + (uint64_t)k % 512, &o) == SH_OK) fill(a, o, 16);
      }
      if (sh_owner_recycle(a, id, gen) != SH_OK) fail("recycle", 0);
    }
  }
  for (int i = 0; i < LIVE; i++)
    if (live[i]) free_checked(a, live[i]);
  return NULL;
}

/* Every partition fills, by several threads at once, then empties. */
typedef struct filler_s {
  sh_arena_t *arena;
  int part;
  uint64_t size, n, *offs;
} filler_t;

static void *filler(void *arg) {
  filler_t *f = arg;
  while (f->n < 1000000 && sh_alloc(f->arena, 0, (sh_partition_t)f->part, f->size, &f->offs[f->n]) == SH_OK)
    fill(f->arena, f->offs[f->n], f->size), f->n++;
  return NULL;
}

static void exhaust(sh_arena_t *a) {
  static uint64_t offs[2][1000000];
  for (int part = 0; part < SH_NPARTITIONS; part++) {
    filler_t f[2] = {{a, part, 48, 0, offs[0]}, {a, part, 700, 0, offs[1]}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, filler, &f[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    sh_partition_stats_t st;
    sh_partition_stats(a, (sh_partition_t)part, &st);
    if (!(f[0].n < 1000000 && f[1].n < 1000000 && st.pages_used == st.pages_total))
      fprintf(stderr, "part %d: n %llu %llu pages %llu/%llu\n", part, (unsigned long long)f[0].n,
              (unsigned long long)f[1].n, (unsigned long long)st.pages_used, (unsigned long long)st.pages_total);
    CHECK("partition filled to exhaustion", f[0].n < 1000000 && f[1].n < 1000000 && st.pages_used == st.pages_total);
    uint64_t other;
    CHECK("others still serve", sh_alloc(a, 0, (sh_partition_t)((part + 1) % 4), 64, &other) == SH_OK);
    sh_free(a, other);
    for (int i = 0; i < 2; i++)
      for (uint64_t k = 0; k < f[i].n; k++) free_checked(a, f[i].offs[k]);
    sh_partition_stats(a, (sh_partition_t)part, &st);
    CHECK("partition empties", st.in_use == 0);
  }
}

/* Nursery agents recycled while other threads free their blocks: each round
 * a thread spawns agents, hands their small blocks out through `exchange`,
 * and recycles every agent; the other threads free what they pick up. A
 * block goes back once, by the free or by the recycle, never twice. */
#define NURSERY_ROUNDS 300
/* Each owner thread publishes into its own half of the slots, and takes
 * back what is still there before it recycles: a slot never outlives its
 * agent. A freer that took a block before the take-back still races the
 * recycle for it, which is the race under test; but no allocation (and the
 * write that follows it) overlaps a free in flight (`allocating` and
 * `in_flight`, Dekker-style), or that free could land on the block's next
 * tenant: an offset-only free cannot tell it from the recycled one, the
 * caller's bug that made this test flaky under load. */
static _Atomic int in_flight, allocating;
typedef struct {
  sh_arena_t *arena;
  _Atomic int *done;
  uint64_t seed;
  int half; /* an owner's slots: [half * SLOTS / 2, (half + 1) * SLOTS / 2) */
} nursery_worker_t;

static void *nursery_owner(void *arg) {
  nursery_worker_t *w = arg;
  uint64_t s = w->seed;
  int base = w->half * (SLOTS / 2);
  for (int round = 0; round < NURSERY_ROUNDS; round++) {
    uint32_t ids[4], gens[4];
    int slots[4][12];
    uint64_t published[4][12];
    int npub[4] = {0};
    for (int k = 0; k < 4; k++) {
      if (sh_owner_create(w->arena, 1, &ids[k], &gens[k]) != SH_OK) {
        fail("nursery: spawn", 0);
        return NULL;
      }
      for (int b = 0; b < 12; b++) {
        uint64_t off, usable;
        /* a quarter of them in the nursery's classes above 8 KiB, whose map fits in the page's slack */
        size_t size = rnd(&s) % 4 ? 24 + rnd(&s) % 4000 : 8192 + rnd(&s) % 20480;
        for (;;) { /* see above */
          atomic_fetch_add(&allocating, 1);
          if (atomic_load(&in_flight) == 0) break;
          atomic_fetch_sub(&allocating, 1);
          sched_yield();
        }
        int rc = sh_alloc_owner(w->arena, ids[k], gens[k], SH_PART_CONTEXT, size, &off, &usable);
        if (rc == SH_OK) memset(sh_ptr(w->arena, off), 0xA5, size);
        atomic_fetch_sub(&allocating, 1);
        if (rc != SH_OK) {
          fail("nursery: alloc", 0);
          continue;
        }
        if (b % 2 == 0) continue;
        int j = base + (int)(rnd(&s) % (SLOTS / 2));
        uint64_t expected = 0;
        if (rnd(&s) % 2) { /* make room: a block dropped from its slot goes back with its agent */
          for (int q = 0; q < 4; q++)
            for (int i = 0; i < npub[q]; i++) {
              uint64_t was = published[q][i];
              if (slots[q][i] == j && was && atomic_compare_exchange_strong(&exchange[j], &was, 0))
                published[q][i] = 0;
            }
          expected = 0;
        }
        if (atomic_compare_exchange_strong(&exchange[j], &expected, off)) {
          slots[k][npub[k]] = j;
          published[k][npub[k]++] = off;
        }
      }
    }
    for (int k = 0; k < 4; k++) {
      for (int i = 0; i < npub[k]; i++) { /* take back what no freer took */
        uint64_t mine = published[k][i];
        if (mine) atomic_compare_exchange_strong(&exchange[slots[k][i]], &mine, 0);
      }
      sh_owner_recycle(w->arena, ids[k], gens[k]);
    }
  }
  atomic_fetch_add(w->done, 1);
  return NULL;
}

static void *nursery_freer(void *arg) {
  nursery_worker_t *w = arg;
  uint64_t s = w->seed;
  while (atomic_load(w->done) < 2) {
    _Atomic uint64_t *slot = &exchange[rnd(&s) % SLOTS];
    if (atomic_load(slot) == 0) continue;
    atomic_fetch_add(&in_flight, 1); /* see above */
    if (atomic_load(&allocating) != 0) {
      atomic_fetch_sub(&in_flight, 1);
      sched_yield();
      continue;
    }
    uint64_t off = atomic_exchange(slot, 0);
    if (off) {
      int rc = sh_free(w->arena, off); /* or its agent's recycle took it first */
      if (rc != SH_OK && rc != SH_EDOUBLEFREE && rc != SH_EBADPTR) fail("nursery: free", off);
    }
    atomic_fetch_sub(&in_flight, 1);
  }
  return NULL;
}

static void nursery_race(sh_arena_t *a) {
  for (int i = 0; i < SLOTS; i++) atomic_store(&exchange[i], 0);
  _Atomic int done = 0;
  pthread_t t[4];
  nursery_worker_t w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (nursery_worker_t){a, &done, 0xD1B54A32D192ED03ull * (uint64_t)(i + 7), i % 2};
    pthread_create(&t[i], NULL, i < 2 ? nursery_owner : nursery_freer, &w[i]);
  }
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < SLOTS; i++) atomic_store(&exchange[i], 0); /* their agents are recycled: nothing to free */
  CHECK("nursery race: no failures", failures == 0);
  CHECK("nursery race: check clean", sh_check(a) == SH_OK);
  sh_partition_stats_t st;
  sh_partition_stats(a, SH_PART_CONTEXT, &st);
  CHECK("nursery race: every block back", st.in_use == 0);
}

/* An agent's allocations racing its recycle: the recycle reads its nursery
 * record while a thread of the agent lists new blocks in it. Every block the
 * agent got goes back once (by the recycle, or by the allocation that saw
 * the agent not live and undid itself), and an allocation fails only with
 * SH_EOWNER. The blocks are not written: a write after the recycle would be
 * the caller's use-after-free. */
#define UNDO_ROUNDS 400
typedef struct {
  sh_arena_t *arena;
  uint32_t id, gen;
  uint64_t seed;
  _Atomic int allocated;
} undo_worker_t;

static void *undo_allocator(void *arg) {
  undo_worker_t *w = arg;
  for (int b = 0; b < 40; b++) {
    uint64_t off, usable;
    int rc = sh_alloc_owner(w->arena, w->id, w->gen, SH_PART_CONTEXT, 24 + rnd(&w->seed) % 1000, &off, &usable);
    if (rc == SH_EOWNER) break;
    if (rc != SH_OK) fail("recycle under alloc: alloc", 0);
    atomic_fetch_add(&w->allocated, 1);
  }
  atomic_store(&w->allocated, 1000); /* done: the recycle need not wait any longer */
  return NULL;
}

static void nursery_recycle_under_alloc(sh_arena_t *a) {
  uint64_t seed = 0x2545F4914F6CDD1Dull;
  for (int round = 0; round < UNDO_ROUNDS; round++) {
    undo_worker_t w = {a, 0, 0, seed + (uint64_t)round, 0};
    if (sh_owner_create(a, 1, &w.id, &w.gen) != SH_OK) {
      fail("recycle under alloc: spawn", 0);
      return;
    }
    pthread_t t;
    pthread_create(&t, NULL, undo_allocator, &w);
    int after = (int)(rnd(&seed) % 24); /* in the nursery share, and past it */
    while (atomic_load(&w.allocated) < after) sched_yield();
    CHECK("recycle under alloc: recycled", sh_owner_recycle(a, w.id, w.gen) == SH_OK);
    pthread_join(t, NULL);
  }
  CHECK("recycle under alloc: no failures", failures == 0);
  CHECK("recycle under alloc: check clean", sh_check(a) == SH_OK);
  sh_partition_stats_t st;
  sh_partition_stats(a, SH_PART_CONTEXT, &st);
  CHECK("recycle under alloc: every block back", st.in_use == 0);
}

/* The channel ring: producers and consumers in threads, every message
 * received exactly once (a bitmap of (producer, sequence)), none lost. */
#define CHAN_PRODUCERS 2
#define CHAN_MESSAGES 20000
typedef struct {
  sh_arena_t *arena;
  uint64_t chan;
  int who;
  _Atomic uint8_t *seen;
  _Atomic uint64_t *received;
} chan_worker_t;

static void *chan_producer(void *arg) {
  chan_worker_t *w = arg;
  for (uint64_t i = 0; i < CHAN_MESSAGES; i++) {
    /* the "message offset" carries (producer, sequence): the ring moves numbers */
    uint64_t msg = ((uint64_t)w->who << 32 | i) + 1;
    if (sh_chan_send(w->arena, w->chan, msg, 8, -1) != SH_OK) fail("chan: send", msg);
  }
  return NULL;
}

static void *chan_consumer(void *arg) {
  chan_worker_t *w = arg;
  uint64_t msg, size;
  while (sh_chan_recv(w->arena, w->chan, &msg, &size, -1) == SH_OK) {
    msg -= 1;
    uint64_t who = msg >> 32, i = msg & 0xffffffffu;
    if (who >= CHAN_PRODUCERS || i >= CHAN_MESSAGES || size != 8 ||
        atomic_exchange(&w->seen[who * CHAN_MESSAGES + i], 1))
      fail("chan: a message twice, or one never sent", msg);
    atomic_fetch_add(w->received, 1);
  }
  return NULL;
}

static void channel_race(sh_arena_t *a) {
  uint64_t chan;
  REQUIRE("channel", sh_chan_create(a, 48, 1024, &chan) == SH_OK); /* 64 cells, 48 at once: the masks and the bound differ */
  static _Atomic uint8_t seen[CHAN_PRODUCERS * CHAN_MESSAGES];
  _Atomic uint64_t received = 0;
  pthread_t t[4];
  chan_worker_t w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (chan_worker_t){a, chan, i % CHAN_PRODUCERS, seen, &received};
    pthread_create(&t[i], NULL, i < CHAN_PRODUCERS ? chan_producer : chan_consumer, &w[i]);
  }
  for (int i = 0; i < CHAN_PRODUCERS; i++) pthread_join(t[i], NULL);
  CHECK("channel: close", sh_chan_close(a, chan) == SH_OK);
  for (int i = CHAN_PRODUCERS; i < 4; i++) pthread_join(t[i], NULL);
  CHECK("channel: every message once", atomic_load(&received) == CHAN_PRODUCERS * CHAN_MESSAGES);
  sh_chan_stats_t st;
  CHECK("channel: stats", sh_chan_stats(a, chan, &st) == SH_OK && st.depth == 0 && st.closed &&
                              st.sent == CHAN_PRODUCERS * CHAN_MESSAGES && st.received == st.sent);
  uint64_t m, sz;
  CHECK("channel: closed and drained", sh_chan_recv(a, chan, &m, &sz, 0) == SH_ECLOSED);
  CHECK("channel: send after close", sh_chan_send(a, chan, 1, 1, 0) == SH_ECLOSED);
  CHECK("channel: freed", sh_free(a, sh_chan_offset(chan)) == SH_OK);
  /* a handle kept past the free does not reach the channel that takes the ring's place */
  uint64_t next;
  REQUIRE("channel: another", sh_chan_create(a, 64, 1024, &next) == SH_OK);
  CHECK("channel: the ring's place is taken again", sh_chan_offset(next) == sh_chan_offset(chan));
  if (next != chan) /* ids collide 1 time in 32 768 */
    CHECK("channel: a stale handle is refused", sh_chan_send(a, chan, 1, 1, 0) == SH_EBADPTR &&
                                                    sh_chan_stats(a, chan, &st) == SH_EBADPTR);
  CHECK("channel: a bare offset is no handle", sh_chan_close(a, sh_chan_offset(next)) == SH_EBADPTR);
  CHECK("channel: the new one works", sh_chan_send(a, next, 1, 1, 0) == SH_OK &&
                                          sh_chan_stats(a, next, &st) == SH_OK && st.depth == 1);
  CHECK("channel: another freed", sh_free(a, sh_chan_offset(next)) == SH_OK);
}

/* A close while producers still send: a send that returned SH_OK is
 * received (the receivers' "closed and drained" waits for it), and none
 * after the close. Each producer stops at its first SH_ECLOSED. */
typedef struct {
  chan_worker_t w;
  _Atomic uint64_t *sent;
} chan_closer_worker_t;

static void *chan_producer_until_closed(void *arg) {
  chan_closer_worker_t *cw = arg;
  for (uint64_t i = 0; i < CHAN_MESSAGES; i++) {
    uint64_t msg = ((uint64_t)cw->w.who << 32 | i) + 1;
    int rc = sh_chan_send(cw->w.arena, cw->w.chan, msg, 8, -1);
    if (rc == SH_ECLOSED) break;
    if (rc != SH_OK) fail("chan: send", msg);
    atomic_fetch_add(cw->sent, 1);
  }
  return NULL;
}

static void channel_close_race(sh_arena_t *a) {
  for (int round = 0; round < 20; round++) {
    uint64_t chan;
    REQUIRE("channel", sh_chan_create(a, 16, 1024, &chan) == SH_OK);
    static _Atomic uint8_t seen[CHAN_PRODUCERS * CHAN_MESSAGES];
    for (size_t i = 0; i < CHAN_PRODUCERS * CHAN_MESSAGES; i++) atomic_store(&seen[i], 0);
    _Atomic uint64_t received = 0, sent = 0;
    pthread_t t[4];
    chan_closer_worker_t w[4];
    for (int i = 0; i < 4; i++) {
      w[i] = (chan_closer_worker_t){{a, chan, i % CHAN_PRODUCERS, seen, &received}, &sent};
      pthread_create(&t[i], NULL, i < CHAN_PRODUCERS ? chan_producer_until_closed : chan_consumer, &w[i]);
    }
    while (atomic_load(&received) < (uint64_t)(round + 1) * 50) sched_yield(); /* a close mid-stream */
    CHECK("channel race: close", sh_chan_close(a, chan) == SH_OK);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    CHECK("channel race: every message a send returned SH_OK for is received",
          atomic_load(&received) == atomic_load(&sent));
    uint64_t m, sz;
    CHECK("channel race: closed and drained", sh_chan_recv(a, chan, &m, &sz, 0) == SH_ECLOSED);
    CHECK("channel race: freed", sh_free(a, sh_chan_offset(chan)) == SH_OK);
  }
}

int main(void) {
  snprintf(name, sizeof name, "/sh_stress_%d", (int)getpid());
  sh_unlink(SH_BACKING_SHM, name);
  sh_options_t o;
  sh_options_init(&o);
  o.page_size = 16384;
  sh_arena_t *a;
  REQUIRE("create", sh_create(&a, SH_BACKING_SHM, name, 48u << 20, &o) == SH_OK);
  uint64_t ex;
  REQUIRE("exchange slots", sh_calloc(a, 0, SH_PART_SYSTEM, SLOTS * sizeof(uint64_t), &ex) == SH_OK);
  exchange = sh_ptr(a, ex);

  pid_t kids[NPROCS];
  for (int p = 1; p < NPROCS; p++) {
    kids[p - 1] = fork();
    if (kids[p - 1] == 0) {
      /* a child maps the arena at its own address; the inherited mapping is dropped */
      uint64_t *inherited = (uint64_t *)exchange;
      sh_arena_t *ca;
      if (sh_attach(&ca, SH_BACKING_SHM, name, 0) != SH_OK) _exit(3);
      exchange = sh_ptr(ca, (uint64_t)((char *)inherited - (char *)sh_base(a)));
      sh_close(a);
      pthread_t t[NTHREADS];
      worker_t w[NTHREADS];
      for (int i = 0; i < NTHREADS; i++) {
        w[i].arena = ca;
        w[i].seed = 0x9E3779B97F4A7C15ull * (uint64_t)(p * NTHREADS + i + 1);
        pthread_create(&t[i], NULL, worker, &w[i]);
      }
      for (int i = 0; i < NTHREADS; i++) pthread_join(t[i], NULL);
      sh_close(ca);
      _exit(failures ? 1 : 0);
    }
  }
  pthread_t t[NTHREADS];
  worker_t w[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    w[i].arena = a;
    w[i].seed = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
    pthread_create(&t[i], NULL, worker, &w[i]);
  }
  for (int i = 0; i < NTHREADS; i++) pthread_join(t[i], NULL);
  for (int p = 1; p < NPROCS; p++) {
    int status;
    waitpid(kids[p - 1], &status, 0);
    CHECK("child process clean", WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  for (int i = 0; i < SLOTS; i++) {
    uint64_t got = atomic_exchange(&exchange[i], 0);
    if (got) free_checked(a, got);
  }
  CHECK("no pattern or free failures", failures == 0);
  CHECK("check clean after the mixed run", sh_check(a) == SH_OK);
  for (int part = 0; part < SH_NPARTITIONS; part++) {
    sh_partition_stats_t st;
    sh_partition_stats(a, (sh_partition_t)part, &st);
    uint64_t expect = part == SH_PART_SYSTEM ? sh_good_size(a, SLOTS * sizeof(uint64_t)) : 0;
    CHECK("every block returned", st.in_use == expect);
  }
  nursery_race(a);
  nursery_recycle_under_alloc(a);
  channel_race(a);
  channel_close_race(a);
  CHECK("exchange block freed", sh_free(a, ex) == SH_OK);
  exhaust(a);
  CHECK("no failures while exhausting", failures == 0);
  CHECK("check clean at the end", sh_check(a) == SH_OK);
  sh_close(a);
  sh_unlink(SH_BACKING_SHM, name);
  return check_summary("test_stress");
}
