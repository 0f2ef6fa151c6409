/* NumPy data-memory handler (NEP 49) over a swarmheap arena; see np_handler.h. */
#define PY_SSIZE_T_CLEAN
#ifndef NPY_NO_DEPRECATED_API
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#endif
#define PY_ARRAY_UNIQUE_SYMBOL swarmheap_np_handler_ARRAY_API
#include "np_handler.h"

#include <numpy/arrayobject.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct shnp_keeper {
  sh_arena_t *arena;
  uint8_t *base;
  uint64_t size;
  _Atomic int64_t refs;    /* the heap object's, each handler's, each live allocation's */
  _Atomic int64_t holders; /* the refs that are not allocations: live = refs - holders, so an
                              allocation costs one atomic here, not two */
  _Atomic int closing;  /* the heap object is closed: no new allocations */
};

typedef struct {
  shnp_keeper *keeper;
  PyObject *heap_ref; /* a weakref to the heap object, or NULL */
  uint32_t owner, generation;
  sh_partition_t partition;
  int fallback;
  /* live = allocs - frees. allocs and frees are bumped with a plain load and
   * store, not a locked add: exact while one thread at a time uses the
   * handler (NumPy's handler is per context, and a new thread starts with the
   * default), approximate if contexts copied to other threads share it. */
  _Atomic uint64_t allocs, frees, fallbacks, failures, in_place;
} shnp_ctx;

static const char CAPSULE_NAME[] = "mem_handler";

int shnp_import(void) {
  import_array1(-1);
  return 0;
}

shnp_keeper *shnp_keeper_new(sh_arena_t *arena) {
  shnp_keeper *k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->arena = arena;
  k->base = sh_base(arena);
  sh_arena_info_t info;
  sh_arena_info(arena, &info);
  k->size = info.size;
  atomic_init(&k->refs, 1);
  atomic_init(&k->holders, 1);
  return k;
}

static void keeper_release(shnp_keeper *k) {
  if (atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) == 1) {
    sh_close(k->arena);
    free(k);
  }
}

void shnp_keeper_close(shnp_keeper *k) {
  atomic_store(&k->closing, 1);
  atomic_fetch_sub(&k->holders, 1);
  keeper_release(k);
}

uint64_t shnp_keeper_live(const shnp_keeper *k) {
  int64_t live = atomic_load(&k->refs) - atomic_load(&k->holders);
  return live > 0 ? (uint64_t)live : 0;
}

static int in_arena(const shnp_keeper *k, const void *ptr) {
  const uint8_t *p = ptr;
  return p >= k->base && p < k->base + k->size;
}

static inline void bump(_Atomic uint64_t *n) {
  atomic_store_explicit(n, atomic_load_explicit(n, memory_order_relaxed) + 1, memory_order_relaxed);
}

#if PY_VERSION_HEX >= 0x030D0000
#define SHNP_FINALIZING() Py_IsFinalizing()
#else
#define SHNP_FINALIZING() _Py_IsFinalizing()
#endif

/* The core recycled the handler's agent as its last array went: let the heap
 * object fire its recycle hooks. Only with the GIL held (NumPy frees array
 * data in the array's deallocator, under the GIL) and not at interpreter
 * exit; the pending exception, if any, is kept. */
static void tell_recycled(shnp_ctx *c, const sh_owner_info_t *final) {
  if (!c->heap_ref || !Py_IsInitialized() || SHNP_FINALIZING() || !PyGILState_Check()) return;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
#if PY_VERSION_HEX >= 0x030D0000
  PyObject *heap = NULL;
  if (PyWeakref_GetRef(c->heap_ref, &heap) < 0) PyErr_Clear();
#else
  PyObject *heap = PyWeakref_GetObject(c->heap_ref);
  Py_XINCREF(heap);
#endif
  if (heap && heap != Py_None) {
    PyObject *r = PyObject_CallMethod(heap, "_notify_recycled", "IIy#", c->owner, c->generation, (const char *)final,
                                      (Py_ssize_t)sizeof *final);
    if (!r) PyErr_WriteUnraisable(heap);
    Py_XDECREF(r);
  }
  Py_XDECREF(heap);
  PyErr_Restore(type, value, tb);
}

/* One path for malloc and calloc: calloc lets the core skip the memset for
 * pages that were never handed out. */
static void *ctx_alloc(shnp_ctx *c, size_t size, int zeroed) {
  shnp_keeper *k = c->keeper;
  if (size == 0) size = 1; /* NumPy asks for 0 bytes for empty arrays; a real block keeps free() uniform */
  if (!atomic_load(&k->closing)) {
    if (c->owner == 0 || sh_owner_pin(k->arena, c->owner, c->generation) == SH_OK) {
      uint64_t offset;
      int rc = zeroed ? sh_calloc_nolock(k->arena, c->owner, c->partition, size, &offset)
                      : sh_alloc_nolock(k->arena, c->owner, c->partition, size, &offset);
      if (rc == SH_EAGAIN)
        rc = zeroed ? sh_calloc(k->arena, c->owner, c->partition, size, &offset)
                    : sh_alloc(k->arena, c->owner, c->partition, size, &offset);
      if (rc == SH_OK) {
        atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
        bump(&c->allocs);
        return k->base + offset;
      }
      if (c->owner) { /* completed while this allocation failed: the recycle is this unpin's */
        int recycled = 0;
        sh_owner_info_t final;
        sh_owner_unpin_final(k->arena, c->owner, c->generation, 0, &recycled, &final);
        if (recycled) tell_recycled(c, &final);
      }
    }
  }
  if (c->fallback) {
    void *p = zeroed ? calloc(1, size) : malloc(size);
    if (p) atomic_fetch_add(&c->fallbacks, 1);
    return p;
  }
  atomic_fetch_add(&c->failures, 1);
  return NULL;
}

static void *ctx_malloc(void *raw, size_t size) { return ctx_alloc(raw, size, 0); }

static void ctx_free(void *raw, void *ptr, size_t size) {
  (void)size; /* the block knows its own size */
  shnp_ctx *c = raw;
  shnp_keeper *k = c->keeper;
  if (ptr == NULL) return;
  if (!in_arena(k, ptr)) {
    free(ptr); /* a fallback allocation */
    return;
  }
  uint64_t offset = (uint64_t)((uint8_t *)ptr - k->base);
  int rc = sh_free_nolock(k->arena, offset);
  if (rc == SH_EAGAIN) rc = sh_free(k->arena, offset);
  if (rc == SH_OK) {
    bump(&c->frees);
    if (c->owner) {
      int recycled = 0; /* the last array of a completed agent recycles it here */
      sh_owner_info_t final;
      sh_owner_unpin_final(k->arena, c->owner, c->generation, 0, &recycled, &final);
      if (recycled) tell_recycled(c, &final);
    }
  }
  keeper_release(k); /* may unmap: nothing of k is used after this */
}

static void *ctx_calloc(void *raw, size_t nelem, size_t elsize) {
  if (elsize && nelem > SIZE_MAX / elsize) return NULL;
  return ctx_alloc(raw, nelem * elsize, 1);
}

static void *ctx_realloc(void *raw, void *ptr, size_t new_size) {
  shnp_ctx *c = raw;
  shnp_keeper *k = c->keeper;
  if (ptr == NULL) return ctx_malloc(raw, new_size);
  if (!in_arena(k, ptr)) return realloc(ptr, new_size ? new_size : 1);
  uint64_t offset = (uint64_t)((uint8_t *)ptr - k->base);
  sh_block_info_t info;
  if (sh_block_info(k->arena, offset, &info) != SH_OK) return NULL;
  if (new_size <= info.usable_size && (new_size > info.usable_size / 2 || info.size_class < 0)) {
    /* fits the block it has (and would not waste most of a small one) */
    atomic_fetch_add(&c->in_place, 1);
    return ptr;
  }
  void *fresh = ctx_malloc(raw, new_size);
  if (!fresh) return NULL; /* the old block stays valid, as realloc promises */
  memcpy(fresh, ptr, new_size < info.usable_size ? new_size : info.usable_size);
  ctx_free(raw, ptr, info.usable_size);
  return fresh;
}

static void capsule_destroy(PyObject *capsule) {
  PyDataMem_Handler *h = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
  if (!h) {
    PyErr_Clear();
    return;
  }
  shnp_ctx *c = h->allocator.ctx;
  Py_XDECREF(c->heap_ref);
  atomic_fetch_sub(&c->keeper->holders, 1);
  keeper_release(c->keeper);
  free(c);
  free(h);
}

PyObject *shnp_handler_new(shnp_keeper *k, uint32_t owner, uint32_t generation, sh_partition_t partition,
                           int fallback, PyObject *heap_ref) {
  PyDataMem_Handler *h = calloc(1, sizeof *h);
  shnp_ctx *c = calloc(1, sizeof *c);
  if (!h || !c) {
    free(h);
    free(c);
    return PyErr_NoMemory();
  }
  c->keeper = k;
  c->heap_ref = heap_ref;
  Py_XINCREF(heap_ref);
  c->owner = owner;
  c->generation = generation;
  c->partition = partition;
  c->fallback = fallback;
  snprintf(h->name, sizeof h->name, "swarmheap");
  h->version = 1;
  h->allocator.ctx = c;
  h->allocator.malloc = ctx_malloc;
  h->allocator.calloc = ctx_calloc;
  h->allocator.realloc = ctx_realloc;
  h->allocator.free = ctx_free;
  PyObject *capsule = PyCapsule_New(h, CAPSULE_NAME, capsule_destroy);
  if (!capsule) {
    Py_XDECREF(c->heap_ref);
    free(h);
    free(c);
    return NULL;
  }
  atomic_fetch_add(&k->holders, 1);
  atomic_fetch_add(&k->refs, 1); /* released by the capsule's destructor */
  return capsule;
}

int shnp_handler_stats(PyObject *capsule, shnp_stats *s) {
  if (!PyCapsule_IsValid(capsule, CAPSULE_NAME)) return 0;
  PyDataMem_Handler *h = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
  if (h->allocator.malloc != ctx_malloc) return 0;
  shnp_ctx *c = h->allocator.ctx;
  s->allocs = atomic_load(&c->allocs);
  s->frees = atomic_load(&c->frees);
  s->live = s->allocs >= s->frees ? s->allocs - s->frees : 0;
  s->fallbacks = atomic_load(&c->fallbacks);
  s->failures = atomic_load(&c->failures);
  s->in_place = atomic_load(&c->in_place);
  return 1;
}

PyObject *shnp_get_handler(void) { return PyDataMem_GetHandler(); }

PyObject *shnp_set_handler(PyObject *capsule) { return PyDataMem_SetHandler(capsule); }
