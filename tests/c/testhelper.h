/* Minimal C test helper (after mimalloc's test/testhelper.h): CHECK records a
 * named expectation, check_summary prints "N passed, N failed" and gives the
 * exit status; and the arena shorthands several test files share. */
#ifndef SH_TESTHELPER_H
#define SH_TESTHELPER_H

#include <stdio.h>
#include <stdlib.h>

#include "swarmheap.h"

static int th_passed, th_failed;

#define CHECK(name, expr)                                                               \
  do {                                                                                  \
    if (expr) {                                                                         \
      th_passed++;                                                                      \
    } else {                                                                            \
      th_failed++;                                                                      \
      fprintf(stderr, "FAILED %s (%s:%d): %s\n  last error: %s\n", name, __FILE__, __LINE__, \
              #expr, sh_last_error());                                                  \
    }                                                                                   \
  } while (0)

/* Aborts the test program: for a precondition without which the rest is moot. */
#define REQUIRE(name, expr)                                                             \
  do {                                                                                  \
    int th_ok_ = (expr);                                                                \
    CHECK(name, th_ok_);                                                                \
    if (!th_ok_) exit(1);                                                               \
  } while (0)

static inline int check_summary(const char *suite) {
  printf("%s: %d passed, %d failed\n", suite, th_passed, th_failed);
  return th_failed ? 1 : 0;
}

#define MiB (1024u * 1024u)

/* A private arena with default ratios and the given page size. */
/* A named arena (for a test that forks a process to attach it); its name,
 * unique to this process, goes into `name` for the unlink at the end. */
static inline sh_arena_t *make_shm(char name[64], const char *what, size_t size) {
  snprintf(name, 64, "/sh_unit_%s_%d", what, (int)getpid());
  sh_unlink(SH_BACKING_SHM, name);
  sh_arena_t *a = NULL;
  REQUIRE("shm create", sh_create(&a, SH_BACKING_SHM, name, size, NULL) == SH_OK);
  return a;
}

static inline sh_arena_t *make_anon(size_t size, uint32_t page_size) {
  sh_options_t o;
  sh_options_init(&o);
  o.page_size = page_size;
  sh_arena_t *a = NULL;
  REQUIRE("create anon", sh_create(&a, SH_BACKING_ANON, NULL, size, &o) == SH_OK);
  return a;
}

static inline sh_partition_stats_t part_stats(sh_arena_t *a, int part) {
  sh_partition_stats_t st;
  sh_partition_stats(a, (sh_partition_t)part, &st);
  return st;
}

static inline uint64_t in_use(sh_arena_t *a, int part) { return part_stats(a, part).in_use; }

#endif
