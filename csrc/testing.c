/* Test hooks (see sh_testing.h); empty unless built with -DSH_TESTING. */
#include "sh_internal.h"
#include "sh_testing.h"

#ifdef SH_TESTING
int sh_test_hold_lock(sh_arena_t *a, sh_partition_t partition) {
  if ((unsigned)partition >= SH_NPARTITIONS) return _sh_fail(SH_EINVAL, "partition %d does not exist", (int)partition);
  _sh_part_lock(a, (int)partition);
  return SH_OK;
}
#else
typedef int sh_testing_is_empty_t; /* ISO C wants a translation unit to declare something */
#endif
