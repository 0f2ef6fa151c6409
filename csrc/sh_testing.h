/* Hooks for tests only, compiled in with -DSH_TESTING (the C tests, and the
 * extension when built with SWARMHEAP_TESTING=1). Never part of the API. */
#ifndef SH_TESTING_H
#define SH_TESTING_H

#include "swarmheap.h"

#ifdef SH_TESTING
/* Take the partition's slow-path lock and never release it, so that a test
 * can kill the process while it holds the lock. */
int sh_test_hold_lock(sh_arena_t *arena, sh_partition_t partition);
#endif

#endif
