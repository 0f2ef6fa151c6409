# Declarations of csrc/sh_testing.h: hooks that exist only in a SWARMHEAP_TESTING build.
from swarmheap.includes.swarmheap cimport sh_arena_t, sh_partition_t


cdef extern from *:
    """
    #include "sh_testing.h"
    #ifdef SH_TESTING
    #define SH_TESTING_BUILD 1
    #else
    #define SH_TESTING_BUILD 0
    static int sh_test_hold_lock(sh_arena_t *a, sh_partition_t p) { (void)a; (void)p; return SH_EINVAL; }
    #endif
    """
    const int SH_TESTING_BUILD
    int sh_test_hold_lock(sh_arena_t *arena, sh_partition_t partition) nogil
