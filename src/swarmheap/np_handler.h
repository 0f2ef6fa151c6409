/* NumPy data-memory handler (NEP 49) over a swarmheap arena.
 *
 * A handler is a PyCapsule named "mem_handler" whose PyDataMem_Handler has a
 * context naming an arena, an owner (agent, or 0 for the heap) and a
 * partition. Arrays created while it is NumPy's current handler take their
 * data from that partition, charged to that owner; each such allocation pins
 * the owner, so complete() defers until the arrays are gone.
 *
 * The arena stays mapped while any array's data still lives in it: the heap
 * object holds one reference on a keeper, every live allocation holds one,
 * and the mapping is closed when the last is dropped. A free that arrives
 * after the heap object was closed, or after its agent completed, is safe.
 *
 * All calls expect the GIL held (NumPy calls the allocator with it). The
 * counters are atomics anyway, so a free from a thread without it is safe. */
#ifndef SWARMHEAP_NP_HANDLER_H
#define SWARMHEAP_NP_HANDLER_H

#include <Python.h>
#include <stdint.h>

#include "swarmheap.h"

typedef struct shnp_keeper shnp_keeper;

typedef struct shnp_stats {
  uint64_t allocs, frees, live;
  uint64_t fallbacks;   /* served by the system allocator (opt-in) */
  uint64_t failures;    /* refused: the partition was full and no fallback */
  uint64_t in_place;    /* reallocs that fit the block they had */
} shnp_stats;

/* NumPy's C API for this file; -1 with a Python exception on failure. */
int shnp_import(void);

/* A keeper for an open arena; the caller's reference is the first. */
shnp_keeper *shnp_keeper_new(sh_arena_t *arena);
/* Drop the heap object's reference: closes the arena now if no array data
 * lives in it, else when the last such array is freed. */
void shnp_keeper_close(shnp_keeper *keeper);
/* Allocations still live through handlers of this keeper. */
uint64_t shnp_keeper_live(const shnp_keeper *keeper);

/* A new "mem_handler" capsule; NULL with a Python exception on failure.
 * `heap_ref` (a weak reference to the heap object, or NULL) is told, through
 * its _deferred_recycled(owner, generation), when freeing the last array of
 * a completed agent recycles it, so the recycle hooks fire then. */
PyObject *shnp_handler_new(shnp_keeper *keeper, uint32_t owner, uint32_t generation,
                           sh_partition_t partition, int fallback, PyObject *heap_ref);
/* 1 if `capsule` is one of ours, filling *stats; 0 if not. */
int shnp_handler_stats(PyObject *capsule, shnp_stats *stats);
/* NumPy's current handler for this context: a new reference. */
PyObject *shnp_get_handler(void);
/* Make `capsule` current; returns the previous one (new reference) or NULL. */
PyObject *shnp_set_handler(PyObject *capsule);

#endif
