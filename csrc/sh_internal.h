/* Internal prototypes shared between the core's .c files, grouped by the file
 * that defines them. Nothing here is public API. */
#ifndef SH_INTERNAL_H
#define SH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "sh_debug.h"
#include "sh_types.h"

#if defined(__GNUC__)
#define sh_likely(x) __builtin_expect(!!(x), 1)
#define sh_unlikely(x) __builtin_expect(!!(x), 0)
#else
#define sh_likely(x) (x)
#define sh_unlikely(x) (x)
#endif

#define sh_internal __attribute__((visibility("hidden")))

/* Thread-locals the hot paths read. Built into a shared object (the Python
 * extension is one), a _Thread_local defaults to the general-dynamic model: a
 * call to __tls_get_addr on every alloc and free, measured at about a tenth
 * of the profile. initial-exec makes it one %fs-relative load. The price is a
 * few hundred bytes of the static TLS surplus glibc sets aside for libraries
 * loaded with dlopen, so only these small ones use it. */
#define sh_tls_fast __attribute__((tls_model("initial-exec")))

/* ---- error.c ---- */
sh_internal int _sh_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
sh_internal const char *_sh_part_name(int partition);

/* ---- os.c (the OS boundary) ---- */
sh_internal int _sh_os_create(sh_backing_t backing, const char *name, uint64_t size, int *fd,
                              uint8_t **base);
sh_internal int _sh_os_open(sh_backing_t backing, const char *name, int read_only, int *fd,
                            uint64_t *size);
sh_internal const char *_sh_os_shown(sh_backing_t backing, const char *name);
sh_internal int _sh_os_map(int fd, uint64_t size, int read_only, uint8_t **base);
sh_internal void _sh_os_unmap(uint8_t *base, uint64_t size, int fd);
sh_internal uint64_t _sh_os_now_ns(void);
sh_internal int32_t _sh_os_pid(void); /* getpid(), cached per process */
/* Monotonic deadlines (-1: none) and futex waits on arena words that any
 * process wakes: a wait returns on a wake, a change of the word, or the deadline. */
sh_internal int64_t _sh_deadline_ns(int64_t timeout_ns);
sh_internal bool _sh_past(int64_t deadline_ns);
/* Sleeps while *word == seen, until woken or the deadline (-1: none);
 * true if a signal interrupted the sleep (the caller's caller runs the
 * handlers: a Ctrl-C must not wait for a message that never comes). */
sh_internal bool _sh_futex_wait(_Atomic uint32_t *word, uint32_t seen, int64_t deadline_ns);
sh_internal void _sh_futex_wake(_Atomic uint32_t *word);
sh_internal uint32_t _sh_os_random32(void);

/* ---- sizeclass.c ---- */
sh_internal uint32_t _sh_classes_build(uint32_t page_size, uint32_t *sizes, uint32_t *small_limit);
sh_internal void _sh_classes_load(sh_arena_t *arena);
static inline int _sh_size_class(const sh_arena_t *arena, size_t size) {
  if (sh_likely(size <= SH_DIRECT_SIZES * 16u && size <= arena->small_limit))
    return arena->class_of[(size + 15) >> 4];
  unsigned b = 63u - (unsigned)__builtin_clzll((unsigned long long)(size - 1)); /* 2^b < size */
  int c = SH_SMALL_CLASSES + (int)(b - 7) * 4 + (int)(((size - 1) >> (b - 2)) - 4);
  return c < (int)arena->nclasses ? c : -1;
}

/* ---- lock.c ---- */
sh_internal int _sh_lock_init(sh_lock_t *lock);
/* Locks; true when the previous holder died and what it guards needs repair. */
sh_internal bool _sh_lock_acquire_repair(sh_lock_t *lock);
/* The lock word holds a valid state: the right kind, and no holder or a live one. */
sh_internal bool _sh_lock_word_valid(const sh_lock_t *lock, uint32_t *holder);
sh_internal void _sh_part_lock(sh_arena_t *arena, int partition);
sh_internal void _sh_part_unlock(sh_arena_t *arena, int partition);
sh_internal void _sh_owner_lock(sh_arena_t *arena);
sh_internal bool _sh_owner_trylock(sh_arena_t *arena);
sh_internal void _sh_owner_unlock(sh_arena_t *arena);

/* ---- pages.c ---- */
sh_internal void _sh_page_release_locked(sh_arena_t *arena, int partition, uint32_t pi);
/* Releases a whole page list of one owner (its links are dropped, not
 * unlinked one by one); the caller resets the list head and the counters.
 * Returns the pages freed; adds live bytes to `final` when not NULL. */
sh_internal uint64_t _sh_list_release_locked(sh_arena_t *arena, int partition, uint32_t owner, uint32_t first,
                                             sh_owner_info_t *final, bool *damaged);
/* What a damaged list hid: the owner's pages by their descriptors, then the
 * partition's lists and page counters rebuilt. */
sh_internal void _sh_owner_pages_scan_release_locked(sh_arena_t *arena, int partition, uint32_t owner,
                                                     sh_owner_info_t *final);
sh_internal void _sh_partition_repair_locked(sh_arena_t *arena, int partition);
/* The owner's set in the partition, taken from the pool if it has none
 * (partition lock held); NULL only when the pool is damaged. */
sh_internal _Atomic uint32_t *_sh_owner_set_need(sh_arena_t *arena, uint32_t owner, int partition);
/* Gives the owner's set back (partition lock held; its lists are empty). */
sh_internal void _sh_owner_set_drop(sh_arena_t *arena, uint32_t owner, int partition);
sh_internal uint32_t _sh_bitmap_count(const sh_arena_t *arena, int partition);
/* Free blocks of a SMALL page: its shared stack plus what a thread caches. */
sh_internal uint32_t _sh_page_free_blocks(const sh_arena_t *arena, uint32_t pi);

/* ---- free.c ---- */
/* Frees a block without the nursery's claim (the caller took it out of its
 * agent's record). */
sh_internal int _sh_free_block(sh_arena_t *arena, uint64_t offset, bool may_lock);
/* A block from a page of the owner's that the calling thread caches, if one
 * is ready there (no lock, no refill, no new page); false otherwise. */
sh_internal bool _sh_alloc_cached(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size,
                                  uint64_t *offset);

/* ---- large.c ---- */
/* A run of pages for the core's own use (the nursery's records): taken
 * like a large block, but not counted as an allocation. */
sh_internal int _sh_run_reserve(sh_arena_t *arena, uint32_t owner, int partition, uint64_t bytes, uint64_t *offset);

/* ---- nursery.c ---- */
sh_internal void _sh_nursery_create(sh_arena_t *arena);
sh_internal void _sh_nursery_load(sh_arena_t *arena);
/* A positive "not from the nursery": the caller allocates from the owner's pages. */
#define SH_NURSERY_PASS 1
/* A positive "a sweep frees this block": nothing for the caller to do. */
#define SH_NURSERY_TAKEN 2
/* A full sweep's part: blocks a map names but no record lists (a free or a
 * recycle killed between the two) go back. Returns how many. */
sh_internal uint64_t _sh_nursery_reclaim_orphans(sh_arena_t *arena);
sh_internal int _sh_nursery_alloc(sh_arena_t *arena, uint32_t owner, int partition, size_t size, bool may_lock,
                                  uint64_t *offset);
/* A recycle's part: every block the owner's record lists, freed; live bytes added to `final`. */
sh_internal void _sh_nursery_release(sh_arena_t *arena, uint32_t owner, sh_owner_info_t *final);
sh_internal void _sh_nursery_info(const sh_arena_t *arena, uint32_t owner, sh_owner_info_t *info);
/* The agent a nursery block belongs to, from its page's map. */
sh_internal int _sh_nursery_owner(const sh_arena_t *arena, uint64_t offset, uint32_t *owner);
sh_internal int _sh_nursery_check(const sh_arena_t *arena);

/* ---- lease.c ---- */
/* For a channel message: the tag of the block at `offset` if it has a lease
 * (made now if it has none), else 0: a block without a lease is never freed
 * under the ring, so it needs none. */
sh_internal uint64_t _sh_block_lease_tag(sh_arena_t *arena, uint64_t offset);
/* True if `offset` is a live block whose tag's bits under `mask` are `low`;
 * then *full (if not NULL) is the whole tag. */
sh_internal bool _sh_block_tag_low_is(sh_arena_t *arena, uint64_t offset, uint64_t low, uint64_t mask, uint64_t *full);

/* ---- owner.c ---- */
sh_internal uint64_t _sh_own_start_time(int32_t pid);
sh_internal void _sh_info_add_page(const sh_arena_t *arena, uint32_t pi, int partition, sh_owner_info_t *info);
/* final_state: FREE for a recycle, OFFLOADED for an offload (the slot stays). */
sh_internal int _sh_owner_recycle_now(sh_arena_t *arena, uint32_t id, sh_owner_info_t *final, uint32_t final_state);
sh_internal void _sh_owner_reservation_use(sh_arena_t *arena, sh_owner_t *o, uint64_t bytes);

/* ---- shared helpers ---- */
/* ---- Bin sets ----------------------------------------------------------------
 * An owner's page lists in a partition: one head per size class and one for
 * its large runs, in a set of set_stride words whose first names the owner
 * (+ 1; 0: free). A set is taken when the owner gets its first page in the
 * partition and given back when its last page goes, so the sets in use
 * never outnumber the partition's pages: the pool has one set per page of
 * the partition, in the partition's own page range, under its lock. So the
 * table follows use, not max_owners x partitions x classes. */
static inline _Atomic uint32_t *_sh_set_at(const sh_arena_t *arena, uint32_t index) {
  return arena->bins + (size_t)index * arena->set_stride;
}
/* The owner's set in the partition, or NULL; both words are arena memory and
 * checked (the index against the partition, the set against the owner). */
static inline _Atomic uint32_t *_sh_owner_set(const sh_arena_t *arena, uint32_t owner, int partition) {
  uint32_t s = sh_atomic_load_relaxed(&arena->owners[owner].binset[partition]);
  if (s == 0 || s - 1 - arena->part_first[partition] >= arena->part_end[partition] - arena->part_first[partition])
    return NULL;
  _Atomic uint32_t *set = _sh_set_at(arena, s - 1);
  return sh_atomic_load_relaxed(&set[0]) == owner + 1 ? set : NULL;
}
/* The list head of one class (size_class < nclasses) or of the large runs
 * (size_class == nclasses); NULL when the owner has no set there. */
static inline _Atomic uint32_t *_sh_bin(const sh_arena_t *arena, uint32_t owner, int partition, int size_class) {
  _Atomic uint32_t *set = _sh_owner_set(arena, owner, partition);
  return set ? &set[1 + size_class] : NULL;
}
static inline uint8_t *_sh_page_start(const sh_arena_t *arena, uint32_t pi) {
  return arena->base + ((uint64_t)pi << arena->page_shift);
}
/* A page descriptor is arena memory: its partition and class are bounded by
 * values this process holds before they index a table, so damage gives a
 * wrong answer that a later check reports, never an access outside a table.
 * One AND, or one compare, on the fast paths. */
_Static_assert((SH_NPARTITIONS & (SH_NPARTITIONS - 1)) == 0, "partitions are a power of two");
static inline int _sh_pg_part(const sh_page_t *pg) { return (int)(pg->partition & (SH_NPARTITIONS - 1)); }
static inline int _sh_pg_class(const sh_arena_t *arena, const sh_page_t *pg) {
  uint32_t c = sh_atomic_load_relaxed(&pg->sclass);
  return c < arena->nclasses ? (int)c : 0;
}
/* A page index read from the arena (a cache's way, a magazine's block)
 * against the partition's bounds held in the process. */
/* Owner ids index the owner table and the bins: one out of range (damage)
 * reads as the default owner, which check() then reports. */
static inline uint32_t _sh_pg_owner(const sh_arena_t *arena, const sh_page_t *pg) {
  uint32_t o = sh_atomic_load_relaxed(&pg->owner);
  return o < arena->max_owners ? o : 0;
}
static inline bool _sh_page_in_part(const sh_arena_t *arena, uint32_t pi, int part) {
  return pi - arena->part_first[part] < arena->part_end[part] - arena->part_first[part];
}
/* Whether a thread may keep a page or a run of the partition for itself (a
 * way's claim, a kept run). Claims are taken back only by their thread, so a
 * partition near full stops granting them: a reserve of its pages (half a
 * small partition, two per size class in a large one) stays shared, and a
 * thread of a small heap cannot find it full while other threads' caches
 * hold what it needs. The counter is the arena's: a damaged one only
 * changes whether a thread caches. */
static inline bool _sh_part_may_cache(const sh_arena_t *arena, int part) {
  uint32_t total = arena->part_end[part] - arena->part_first[part];
  uint32_t reserve = total / 2 < 2 * arena->nclasses ? total / 2 : 2 * arena->nclasses;
  return sh_atomic_load_relaxed(&arena->hdr->pages_used[part]) + reserve < total;
}
static inline int _sh_page_partition(const sh_arena_t *arena, uint32_t pi) {
  for (int p = 0; p < SH_NPARTITIONS; p++)
    if (pi >= arena->part_first[p] && pi < arena->part_end[p]) return p;
  return -1;
}
/* Pages from pi to the end of its partition (0: pi is in none): as far as a
 * run starting there may reach, whatever length its descriptor claims. */
static inline uint32_t _sh_run_room(const sh_arena_t *arena, uint32_t pi) {
  int part = _sh_page_partition(arena, pi);
  return part < 0 ? 0 : arena->part_end[part] - pi;
}
/* ---- Free-stack links ---------------------------------------------------------
 * A free block's first two words: the next top (see sh_types.h) and that value
 * xor the page's key. A write after free almost surely breaks the pair. */
static inline uint32_t *_sh_link_at(const sh_arena_t *arena, uint32_t pi, uint32_t top) {
  return (uint32_t *)(_sh_page_start(arena, pi) + ((uint64_t)(top - 1) << SH_UNIT_SHIFT));
}
/* A link stays inside the page and on a block boundary of its class. */
static inline bool _sh_top_valid(const sh_class_t *cls, uint32_t top) {
  if (top == 0) return true;
  uint32_t in_page = (top - 1) << SH_UNIT_SHIFT;
  return top <= cls->last_top && in_page * cls->div_magic <= cls->div_magic - 1;
}
/* A magazine's mark: the second word is the block's own unit (offset / 16)
 * inverted, so the pop checks it without the page's descriptor. */
static inline void _sh_mag_mark(uint32_t *link, uint32_t unit) {
  sh_word_store_relaxed(&link[0], SH_MAG_MARK);
  sh_word_store_relaxed(&link[1], ~unit);
}
static inline bool _sh_mag_marked(const uint32_t *link, uint32_t unit) {
  return sh_word_load_relaxed(&link[0]) == SH_MAG_MARK &&
         sh_word_load_relaxed(&link[1]) == ~unit;
}
/* A block (at `unit`) whose link words read as free: on a stack (check word =
 * next ^ the page's key) or in a magazine (its mark). Both tests take two
 * words, so live data matches by chance about once in 2^32 frees; a match
 * only asks for a look (sh_block_is_free). */
static inline bool _sh_link_looks_free(const uint32_t *link, uint32_t key, uint32_t unit) {
  uint32_t next = sh_word_load_relaxed(&link[0]), check = sh_word_load_relaxed(&link[1]);
  return check == (next ^ key) || (next == SH_MAG_MARK && check == ~unit);
}
static inline void _sh_link_write(uint32_t *link, uint32_t next, uint32_t key) {
  sh_word_store_relaxed(&link[0], next);
  sh_word_store_relaxed(&link[1], next ^ key);
}

static inline _Atomic uint64_t *_sh_stripe_counters(const sh_arena_t *arena, unsigned stripe) {
  return (_Atomic uint64_t *)(arena->stripes + (size_t)stripe * arena->stripe_size +
                              sizeof(sh_stripe_hdr_t));
}
/* allocs then frees: [2][partition][nclasses + 1] */
static inline size_t _sh_counter_index(const sh_arena_t *arena, int is_free, int partition,
                                       int size_class) {
  size_t per = (size_t)arena->nclasses + 1;
  return ((size_t)is_free * SH_NPARTITIONS + (size_t)partition) * per + (size_t)size_class;
}

#endif
