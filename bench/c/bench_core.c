/* Microbenchmark of the C core against glibc malloc, jemalloc and mimalloc,
 * all measured in one run, rounds alternating between allocators so machine
 * drift hits each alike. Peers are loaded with dlopen (RTLD_LOCAL) so they
 * live side by side with glibc; a peer that is not installed is skipped with
 * a note. Every result is the median of ROUNDS and is printed as a ratio to
 * mimalloc (and to glibc). --json prints one JSON object for scripts. */
#include <dlfcn.h>
#include <unistd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "swarmheap.h"

#define ROUNDS 7

typedef struct allocator_s {
  const char *name;
  void *(*alloc)(size_t);
  void (*free)(void *);
  int present;
} allocator_t;

static sh_arena_t *arena;
static uint8_t *arena_base;
static void *sh_bench_alloc(size_t n) {
  uint64_t off;
  return sh_alloc(arena, 0, SH_PART_CONTEXT, n, &off) == SH_OK ? arena_base + off : NULL;
}
static void sh_bench_free(void *p) { sh_free(arena, (uint64_t)((uint8_t *)p - arena_base)); }

static allocator_t allocators[] = {
    {"swarmheap", sh_bench_alloc, sh_bench_free, 1},
    {"mimalloc", NULL, NULL, 0},
    {"jemalloc", NULL, NULL, 0},
    {"glibc", malloc, free, 1},
};
#define NALLOC (sizeof allocators / sizeof allocators[0])

static void load_peer(allocator_t *a, const char *lib, const char *alloc_sym, const char *free_sym) {
  void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "note: %s not installed (%s): skipped\n", a->name, dlerror());
    return;
  }
  a->alloc = (void *(*)(size_t))dlsym(h, alloc_sym);
  a->free = (void (*)(void *))dlsym(h, free_sym);
  a->present = a->alloc && a->free;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

/* ---- Workloads: each returns seconds for its fixed amount of work ---- */

#define PAIRS 5000000
static double w_small_pairs(const allocator_t *a) {
  double t = now_s();
  for (int i = 0; i < PAIRS; i++) {
    void *p = a->alloc(64);
    *(volatile char *)p = (char)i;
    a->free(p);
  }
  return now_s() - t;
}

#define LIVE 1024
static double w_random_live(const allocator_t *a) {
  void *live[LIVE];
  uint64_t s = 88172645463325252ull;
  for (int i = 0; i < LIVE; i++) live[i] = a->alloc(16 + rnd(&s) % 1009);
  double t = now_s();
  for (int i = 0; i < PAIRS; i++) {
    uint64_t r = rnd(&s);
    int k = (int)(r % LIVE);
    a->free(live[k]);
    live[k] = a->alloc(16 + (r >> 20) % 1009);
    *(volatile char *)live[k] = 1;
  }
  double el = now_s() - t;
  for (int i = 0; i < LIVE; i++) a->free(live[i]);
  return el;
}

/* Two threads, each allocating and handing its blocks to the other through a
 * ring; each frees what it receives: every free is a cross-thread free. */
#define XFER 1000000
#define RING 4096
typedef struct ring_s {
  _Atomic uint64_t head, tail;
  void *slot[RING];
} ring_t;
typedef struct xarg_s {
  const allocator_t *a;
  ring_t *out, *in;
} xarg_t;

static void *w_cross_thread(void *arg) {
  xarg_t *x = arg;
  uint64_t s = (uint64_t)(uintptr_t)x | 1, sent = 0, got = 0;
  while (sent < XFER || got < XFER) {
    if (sent < XFER) {
      uint64_t h = atomic_load_explicit(&x->out->head, memory_order_relaxed);
      if (h - atomic_load_explicit(&x->out->tail, memory_order_acquire) < RING) {
        void *p = x->a->alloc(16 + rnd(&s) % 500);
        *(volatile char *)p = 1;
        x->out->slot[h % RING] = p;
        atomic_store_explicit(&x->out->head, h + 1, memory_order_release);
        sent++;
      }
    }
    uint64_t tl = atomic_load_explicit(&x->in->tail, memory_order_relaxed);
    if (tl < atomic_load_explicit(&x->in->head, memory_order_acquire)) {
      x->a->free(x->in->slot[tl % RING]);
      atomic_store_explicit(&x->in->tail, tl + 1, memory_order_release);
      got++;
    }
  }
  return NULL;
}

static double w_cross(const allocator_t *a) {
  static ring_t r1, r2;
  memset(&r1, 0, sizeof r1);
  memset(&r2, 0, sizeof r2);
  xarg_t x1 = {a, &r1, &r2}, x2 = {a, &r2, &r1};
  pthread_t t1, t2;
  double t = now_s();
  pthread_create(&t1, NULL, w_cross_thread, &x1);
  pthread_create(&t2, NULL, w_cross_thread, &x2);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  return now_s() - t;
}

typedef double (*workload_fn)(const allocator_t *);
static const struct {
  const char *name;
  workload_fn fn;
  long ops;
} workloads[] = {
    {"small_pairs_64B", w_small_pairs, PAIRS},
    {"random_16B_1KiB_1024_live", w_random_live, PAIRS},
    {"cross_thread_2x", w_cross, 2 * XFER},
};
#define NWORK (sizeof workloads / sizeof workloads[0])

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Owner recycle of 100 000 blocks against freeing the same blocks one by one. */
#define RECYCLE_BLOCKS 100000
static void recycle_vs_free(double *t_recycle, double *t_free) {
  double rec[ROUNDS], fre[ROUNDS];
  static uint64_t offs[RECYCLE_BLOCKS];
  for (int r = 0; r < ROUNDS; r++) {
    uint32_t id, gen;
    sh_owner_create(arena, 0, &id, &gen);
    for (int i = 0; i < RECYCLE_BLOCKS; i++) sh_alloc(arena, id, SH_PART_CONTEXT, 16 + (size_t)(i % 4) * 16, &offs[i]);
    double t = now_s();
    for (int i = 0; i < RECYCLE_BLOCKS; i++) sh_free(arena, offs[i]);
    fre[r] = now_s() - t;
    for (int i = 0; i < RECYCLE_BLOCKS; i++) sh_alloc(arena, id, SH_PART_CONTEXT, 16 + (size_t)(i % 4) * 16, &offs[i]);
    t = now_s();
    sh_owner_recycle(arena, id, gen);
    rec[r] = now_s() - t;
  }
  qsort(rec, ROUNDS, sizeof(double), cmp_double);
  qsort(fre, ROUNDS, sizeof(double), cmp_double);
  *t_recycle = rec[ROUNDS / 2];
  *t_free = fre[ROUNDS / 2];
}

/* An agent of ten small blocks, all in the nursery: its recycle against
 * freeing the ten one by one. Seconds per agent. */
#define NURSERY_AGENTS 2000
static void nursery_recycle_vs_free(double *t_recycle, double *t_free) {
  static const size_t sizes[10] = {24, 64, 200, 512, 1500, 4000, 64, 200, 512, 24};
  static uint32_t ids[NURSERY_AGENTS], gens[NURSERY_AGENTS];
  static uint64_t offs[NURSERY_AGENTS][10];
  double rec[ROUNDS], fre[ROUNDS];
  for (int r = 0; r < ROUNDS; r++) {
    for (int pass = 0; pass < 2; pass++) {
      for (int a = 0; a < NURSERY_AGENTS; a++) {
        sh_owner_create(arena, 0, &ids[a], &gens[a]);
        uint64_t usable;
        for (int b = 0; b < 10; b++) sh_alloc_owner(arena, ids[a], gens[a], SH_PART_CONTEXT, sizes[b], &offs[a][b], &usable);
      }
      double t = now_s();
      if (pass == 0)
        for (int a = 0; a < NURSERY_AGENTS; a++)
          for (int b = 0; b < 10; b++) sh_free(arena, offs[a][b]);
      else
        for (int a = 0; a < NURSERY_AGENTS; a++) sh_owner_recycle(arena, ids[a], gens[a]);
      double per_agent = (now_s() - t) / NURSERY_AGENTS;
      if (pass == 0) {
        fre[r] = per_agent;
        for (int a = 0; a < NURSERY_AGENTS; a++) sh_owner_recycle(arena, ids[a], gens[a]);
      } else {
        rec[r] = per_agent;
      }
    }
  }
  qsort(rec, ROUNDS, sizeof(double), cmp_double);
  qsort(fre, ROUNDS, sizeof(double), cmp_double);
  *t_recycle = rec[ROUNDS / 2];
  *t_free = fre[ROUNDS / 2];
}

/* 100 000 allocations of 64 B for one agent (past its nursery share after
 * 16, then from pages of its own) against the same for the shared default.
 * Nanoseconds per allocation; the blocks go back untimed. */
static void agent_vs_default_alloc(double *t_agent, double *t_default) {
  static uint64_t offs[RECYCLE_BLOCKS];
  double ag[ROUNDS], de[ROUNDS];
  for (int r = 0; r < ROUNDS; r++) {
    uint32_t id, gen;
    uint64_t usable;
    sh_owner_create(arena, 0, &id, &gen);
    double t = now_s();
    for (int i = 0; i < RECYCLE_BLOCKS; i++) sh_alloc_owner(arena, id, gen, SH_PART_CONTEXT, 64, &offs[i], &usable);
    ag[r] = (now_s() - t) / RECYCLE_BLOCKS;
    sh_owner_recycle(arena, id, gen);
    t = now_s();
    for (int i = 0; i < RECYCLE_BLOCKS; i++) sh_alloc(arena, SH_OWNER_DEFAULT, SH_PART_CONTEXT, 64, &offs[i]);
    de[r] = (now_s() - t) / RECYCLE_BLOCKS;
    for (int i = 0; i < RECYCLE_BLOCKS; i++) sh_free(arena, offs[i]);
  }
  qsort(ag, ROUNDS, sizeof(double), cmp_double);
  qsort(de, ROUNDS, sizeof(double), cmp_double);
  *t_agent = ag[ROUNDS / 2];
  *t_default = de[ROUNDS / 2];
}

int main(int argc, char **argv) {
  int json = argc > 1 && strcmp(argv[1], "--json") == 0;
  /* jemalloc uses initial-exec TLS, which a dlopen'd library may only get
   * from the surplus glibc reserves at start: ask for more, once, by
   * re-executing with the tunable set. */
  if (!getenv("SH_BENCH_TLS")) {
    setenv("SH_BENCH_TLS", "1", 1);
    setenv("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=16384", 1);
    execv("/proc/self/exe", argv);
  }
  if (sh_create(&arena, SH_BACKING_ANON, NULL, (size_t)1 << 30, NULL) != SH_OK) {
    fprintf(stderr, "arena: %s\n", sh_last_error());
    return 1;
  }
  arena_base = sh_base(arena);
  load_peer(&allocators[1], "libmimalloc.so.2", "mi_malloc", "mi_free");
  load_peer(&allocators[2], "libjemalloc.so.2", "malloc", "free");

  double med[NWORK][NALLOC];
  for (size_t w = 0; w < NWORK; w++) {
    double samples[NALLOC][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
      for (size_t k = 0; k < NALLOC; k++)
        samples[k][r] = allocators[k].present ? workloads[w].fn(&allocators[k]) : 0;
    for (size_t k = 0; k < NALLOC; k++) {
      qsort(samples[k], ROUNDS, sizeof(double), cmp_double);
      med[w][k] = samples[k][ROUNDS / 2];
    }
  }
  double t_rec, t_free;
  recycle_vs_free(&t_rec, &t_free);
  double t_nrec, t_nfree;
  nursery_recycle_vs_free(&t_nrec, &t_nfree);
  double t_agent, t_default;
  agent_vs_default_alloc(&t_agent, &t_default);
  sh_arena_info_t info;
  sh_arena_info(arena, &info);
  double meta_pct = 100.0 * (double)info.metadata_bytes / (double)info.size;

  if (json) {
    printf("{\"rounds\": %d, \"workloads\": {", ROUNDS);
    for (size_t w = 0; w < NWORK; w++) {
      printf("%s\"%s\": {", w ? ", " : "", workloads[w].name);
      int first = 1;
      for (size_t k = 0; k < NALLOC; k++)
        if (allocators[k].present) {
          printf("%s\"%s\": %.3f", first ? "" : ", ", allocators[k].name, med[w][k] * 1e9 / (double)workloads[w].ops);
          first = 0;
        }
      printf("}");
    }
    printf("}, \"recycle_100k_s\": %.6f, \"free_100k_s\": %.6f, \"metadata_percent\": %.4f, "
           "\"nursery_recycle_10_ns\": %.1f, \"nursery_free_10_ns\": %.1f, \"agent_alloc_64B_ns\": %.2f, "
           "\"default_alloc_64B_ns\": %.2f, \"max_owners\": %u}\n",
           t_rec, t_free, meta_pct, t_nrec * 1e9, t_nfree * 1e9, t_agent * 1e9, t_default * 1e9,
           info.max_owners - 1);
  } else {
    printf("%-28s", "workload (ns/op, median)");
    for (size_t k = 0; k < NALLOC; k++) printf(" %11s", allocators[k].name);
    printf("  %9s %9s\n", "vs mimalloc", "vs glibc");
    for (size_t w = 0; w < NWORK; w++) {
      printf("%-28s", workloads[w].name);
      for (size_t k = 0; k < NALLOC; k++)
        if (allocators[k].present) printf(" %11.2f", med[w][k] * 1e9 / (double)workloads[w].ops);
        else printf(" %11s", "skipped");
      if (allocators[1].present) printf("  %8.2fx", med[w][0] / med[w][1]);
      else printf("  %9s", "-");
      printf(" %8.2fx\n", med[w][0] / med[w][3]);
    }
    printf("\nrecycle of %d blocks: %.1f us; freeing them one by one: %.1f us; recycle is %.0fx faster\n",
           RECYCLE_BLOCKS, t_rec * 1e6, t_free * 1e6, t_free / t_rec);
    printf("a 10-block nursery agent: recycle %.0f ns, its blocks freed one by one %.0f ns\n", t_nrec * 1e9,
           t_nfree * 1e9);
    printf("an agent's allocation of 64 B: %.1f ns; the shared default's: %.1f ns\n", t_agent * 1e9,
           t_default * 1e9);
    printf("metadata: %llu bytes of a %llu-byte arena = %.3f %%\n", (unsigned long long)info.metadata_bytes,
           (unsigned long long)info.size, meta_pct);
  }
  sh_close(arena);
  return 0;
}
