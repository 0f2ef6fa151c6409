# Declarations of the NumPy data-memory handler (src/swarmheap/np_handler.h).
from libc.stdint cimport uint32_t, uint64_t

from swarmheap.includes.swarmheap cimport sh_arena_t, sh_partition_t


cdef extern from "np_handler.h":
    ctypedef struct shnp_keeper:
        pass
    ctypedef struct shnp_stats:
        uint64_t allocs, frees, live, fallbacks, failures, in_place
    int shnp_import() except -1
    shnp_keeper *shnp_keeper_new(sh_arena_t *arena)
    void shnp_keeper_close(shnp_keeper *keeper)
    uint64_t shnp_keeper_live(const shnp_keeper *keeper)
    object shnp_handler_new(shnp_keeper *keeper, uint32_t owner, uint32_t generation,
                            sh_partition_t partition, int fallback, object heap_ref)
    int shnp_handler_stats(object capsule, shnp_stats *stats)
    object shnp_get_handler()
    object shnp_set_handler(object capsule)
