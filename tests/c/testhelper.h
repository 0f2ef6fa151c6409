/* Minimal C test helper (after mimalloc's test/testhelper.h): CHECK records a
 * named expectation, check_summary prints "N passed, N failed" and gives the
 * exit status. */
#ifndef SH_TESTHELPER_H
#define SH_TESTHELPER_H

#include <stdio.h>
#include <stdlib.h>

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

#endif
