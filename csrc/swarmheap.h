/* swarmheap: the C core's public API.
 *
 * One mmap'd arena (private, named POSIX shared memory, or a file) split into
 * four partitions -- context, shared, comm, system -- each a run of fixed-size
 * pages. Small blocks come from per-owner, per-size-class pages whose free
 * blocks sit on lock-free Treiber stacks; large blocks are runs of whole pages.
 * All shared metadata is stored as offsets, so processes may map the arena at
 * different addresses.
 *
 * Naming: `sh_` is public, `_sh_` is internal (shared between .c files), a
 * `static` function is file-local. Every function returning `int` returns
 * SH_OK (0) or a negative `sh_status_t`; `sh_last_error()` then gives a
 * message for the calling thread that names the figures involved.
 *
 * Concurrency, per function:
 *   [any]   safe from any number of threads and processes at once.
 *   [one]   the calling thread must be the only user of *that handle*
 *           (other handles to the same arena, in this or another process,
 *           may keep working).
 *   [quiet] exact only while no other thread or process changes the arena;
 *           safe to call at any time, but concurrent changes may be reported
 *           as inconsistencies.
 */
#ifndef SWARMHEAP_H
#define SWARMHEAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SH_VERSION_MAJOR 0
#define SH_VERSION_MINOR 1
/* Bumped whenever the shared layout changes; attach refuses any other. */
#define SH_FORMAT_VERSION 16u

typedef enum sh_status_e {
  SH_OK = 0,
  SH_EINVAL = -1,        /* an argument is out of range (message says which and why) */
  SH_EFULL = -2,         /* the partition has no room for this request */
  SH_ENOMEM = -3,        /* process-local memory (malloc) ran out */
  SH_ESYS = -4,          /* an OS call failed; message carries errno's text */
  SH_ENOSPC = -5,        /* no room to reserve the backing store (e.g. /dev/shm full) */
  SH_EEXIST = -6,        /* a heap of that name already exists */
  SH_ENOENT = -7,        /* no heap of that name */
  SH_ETRUNCATED = -8,    /* the mapping is shorter than its header says, or than a header */
  SH_EMAGIC = -9,        /* not a swarmheap arena (foreign file, or still initialising) */
  SH_EVERSION = -10,     /* a swarmheap arena of another format version */
  SH_ECHECKSUM = -11,    /* the immutable header does not match its checksum */
  SH_ECORRUPT = -12,     /* a header field or offset is out of range; or check() failed */
  SH_EBADPTR = -13,      /* an offset that is not a live block of this arena */
  SH_EDOUBLEFREE = -14,  /* the block is already on its page's free list */
  SH_EOWNER = -15,       /* no live owner with that id and generation */
  SH_ETOOMANY = -16,     /* the owner table is full */
  SH_EPINNED = -17,      /* the owner is pinned; its recycle is deferred */
  SH_ESTATE = -18,       /* the owner is not in a state that allows this */
  SH_EAGAIN = -19,       /* a _nolock call needs the slow path: nothing was done */
  SH_ETIMEDOUT = -20,    /* a channel wait ran out (a timeout of 0: full, or empty) */
  SH_ECLOSED = -21,      /* the channel is closed (a receiver: and drained) */
  SH_ECANCELED = -22,    /* a wait was called off (sh_chan_call_off, or this process closing the heap) */
  SH_EINTR = -23,        /* a signal cut a wait short; nothing was done: handle it, then call again */
} sh_status_t;

typedef enum sh_partition_e {
  SH_PART_CONTEXT = 0,
  SH_PART_SHARED = 1,
  SH_PART_COMM = 2,
  SH_PART_SYSTEM = 3,
  SH_NPARTITIONS = 4
} sh_partition_t;

typedef enum sh_backing_e {
  SH_BACKING_ANON = 0,  /* private anonymous mapping; dies with the process */
  SH_BACKING_SHM = 1,   /* POSIX shared memory object, mode 0600 */
  SH_BACKING_FILE = 2   /* a regular file, mode 0600 */
} sh_backing_t;

typedef enum sh_owner_state_e {
  SH_OWNER_FREE = 0,       /* slot unused */
  SH_OWNER_LIVE = 1,
  SH_OWNER_COMPLETED = 2,  /* complete() called while pinned: recycle deferred */
  SH_OWNER_DEAD = 3,       /* its process died; waiting for a sweep */
  SH_OWNER_OFFLOADED = 4,  /* its state lives in a store; its pages are gone */
  SH_OWNER_RESTORING = 5,  /* being brought back from a store: it may allocate; not yet live */
} sh_owner_state_t;

/* The shared default owner. It always exists and is never recycled. */
#define SH_OWNER_DEFAULT 0u
/* The nursery: owner of the pages whose blocks agents share (see nursery.c).
 * It always exists; agents are owners from SH_FIRST_AGENT on. */
#define SH_OWNER_NURSERY 1u
#define SH_FIRST_AGENT 2u
#define SH_MAX_CLASSES 64
#define SH_MIN_PAGE_SIZE 4096u
#define SH_MAX_PAGE_SIZE (8u << 20)
#define SH_DEFAULT_PAGE_SIZE 65536u

typedef struct sh_arena_s sh_arena_t; /* process-local handle to a mapping */

typedef struct sh_options_s {
  double ratios[SH_NPARTITIONS]; /* each > 0, summing to 1 within 1e-6 */
  uint32_t page_size;            /* power of two in [SH_MIN_PAGE_SIZE, SH_MAX_PAGE_SIZE] */
  uint32_t max_owners;           /* 0: derived from the arena size */
  uint32_t max_threads;          /* thread caches; 0: derived from the arena size */
  uint32_t min_system_pages;     /* free pages `system` must have past the metadata; 0: one */
} sh_options_t;

typedef struct sh_partition_stats_s {
  uint64_t capacity;     /* bytes of pages the partition owns (system: after metadata) */
  uint64_t in_use;       /* bytes handed out, at block granularity */
  uint64_t pages_used;   /* pages assigned to an owner */
  uint64_t pages_total;
  uint64_t peak;         /* largest pages_used seen, in bytes */
  uint64_t allocs, frees, failures;
  uint64_t overhead;     /* bytes of pages holding the heap's own bookkeeping (system: the nursery's records, the registry) */
} sh_partition_stats_t;

typedef struct sh_class_stats_s {
  uint32_t block_size;
  uint32_t pages;        /* pages of this class, all partitions and owners */
  uint64_t blocks_used;  /* live blocks */
  uint64_t blocks_free;  /* free blocks on pages of this class */
  uint64_t allocs, frees;
} sh_class_stats_t;

typedef struct sh_owner_info_s {
  uint32_t id, generation, kind;
  sh_owner_state_t state;
  int32_t pid;                 /* creating process */
  uint64_t pid_start_time;     /* its start time, in clock ticks since boot */
  uint64_t created_ns, last_active_ns; /* CLOCK_REALTIME */
  uint32_t pins;
  uint64_t bytes[SH_NPARTITIONS];  /* live block bytes */
  uint64_t pages[SH_NPARTITIONS];
  uint64_t peak_pages[SH_NPARTITIONS];
  uint64_t blocks;             /* live blocks, all partitions */
  uint64_t user_word;          /* free for the layer above (an offset, a flag) */
  uint64_t reserved_bytes;     /* of `context`, from its prediction, not yet drawn down by its pages */
  /* live block bytes by size class, all partitions; [nclasses]: runs of
   * whole pages (the block-size mix the usage model learns) */
  uint64_t class_bytes[SH_MAX_CLASSES + 1];
} sh_owner_info_t;

typedef struct sh_block_info_s {
  uint64_t offset;
  uint64_t usable_size;
  uint32_t owner, owner_generation;
  sh_partition_t partition;
  int size_class;              /* -1 for a large (page run) block */
} sh_block_info_t;

enum { SH_NREGIONS = 10 };
typedef struct sh_arena_info_s {
  uint64_t size;
  uint32_t page_size, nclasses, max_owners, format_version;
  uint64_t small_limit;        /* largest size served from a size class */
  uint64_t metadata_bytes;     /* header, page descriptors, owner table, stats */
  /* An agent's share of the nursery (shared pages): up to nursery_blocks
   * blocks of the classes in nursery_classes (bit c: class c), the largest
   * nursery_limit bytes (0: this arena has no nursery), and of one class up
   * to nursery_class_blocks blocks once they fill a sixteenth of a page
   * (then the class gets pages of its own). */
  uint64_t nursery_limit;
  uint64_t nursery_classes;
  uint32_t nursery_blocks, nursery_class_blocks;
  uint64_t part_offset[SH_NPARTITIONS], part_size[SH_NPARTITIONS];
  uint32_t class_size[SH_MAX_CLASSES];
  /* Where the metadata tables start, in this order, and (last) where they
   * end: header, page descriptors, bitmap, owners, bins, stat stripes, sweep
   * rings, thread slots, block table, pins. For tools that inspect or damage
   * an arena on purpose (the fuzzer). */
  uint64_t region_offset[SH_NREGIONS + 1];
} sh_arena_info_t;

/* ---- Errors ---------------------------------------------------------------- */

/* [any] Static name of a status code ("SH_EFULL"). */
const char *sh_strerror(int status);
/* [any] The calling thread's message for its last failed call. */
const char *sh_last_error(void);

/* ---- Arena life ------------------------------------------------------------ */

/* [any] Defaults: ratios 0.4/0.3/0.2/0.1, 64 KiB pages, derived owner count. */
void sh_options_init(sh_options_t *opts);

/* [any] Create an arena of `size` bytes (rounded down to whole pages).
 * `name` is the shm object name ("/x" or "x") for SH_BACKING_SHM, a path for
 * SH_BACKING_FILE, and ignored for SH_BACKING_ANON. Backing store is reserved
 * up front (posix_fallocate), so a full /dev/shm is SH_ENOSPC here, not SIGBUS
 * later. Errors: SH_EINVAL (size, ratios, page size, max_owners, name),
 * SH_EEXIST, SH_ENOSPC, SH_ESYS, SH_ENOMEM. `opts` may be NULL. */
int sh_create(sh_arena_t **out, sh_backing_t backing, const char *name, size_t size,
              const sh_options_t *opts);

/* [any] Map an existing arena and validate every header field and offset
 * before trusting any of them. Errors: SH_ENOENT, SH_ETRUNCATED, SH_EMAGIC,
 * SH_EVERSION, SH_ECHECKSUM, SH_ECORRUPT, SH_ESYS, SH_ENOMEM, SH_EINVAL.
 * `read_only` maps PROT_READ: only the stats and info calls may be used. */
int sh_attach(sh_arena_t **out, sh_backing_t backing, const char *name, int read_only);

/* [one] Unmap and free the handle. Blocks stay valid for other processes.
 * First returns the blocks that this process's threads cache in the arena
 * through this handle: no other thread may be using the handle. */
void sh_close(sh_arena_t *arena);

/* [any] Remove the name; mappings that exist stay valid until closed. */
int sh_unlink(sh_backing_t backing, const char *name);

/* [any] */
void sh_arena_info(const sh_arena_t *arena, sh_arena_info_t *info);
/* [any] Base address of this process's mapping; offsets are relative to it. */
void *sh_base(const sh_arena_t *arena);

/* ---- Blocks ---------------------------------------------------------------- */

/* [any] Allocate `size` bytes (0 is taken as 1) for `owner` in `partition`.
 * Stores the block's offset in *offset. Blocks are 16-byte aligned; large
 * blocks (above small_limit) are page aligned.
 * Errors: SH_EINVAL (partition), SH_EFULL (partition full, or size larger
 * than the partition), SH_EOWNER (owner not live). */
int sh_alloc(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size,
             uint64_t *offset);

/* [any] sh_alloc's lock-free path only: never takes a lock or blocks, so a
 * binding may call it without giving up its own lock (Python's GIL). Returns
 * SH_EAGAIN, having done nothing, when the request needs a new page or a page
 * run; call sh_alloc then. */
int sh_alloc_nolock(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size,
                    uint64_t *offset);

/* [any] sh_alloc for an owner of a known generation, in one call: SH_EOWNER
 * (nothing allocated) if the owner's slot no longer holds that generation,
 * before or after the allocation, so a block is never charged to a slot's
 * next tenant. *usable gets the block's usable size. The shared default
 * (owner 0) takes any generation. */
int sh_alloc_owner(sh_arena_t *arena, uint32_t owner, uint32_t generation, sh_partition_t partition,
                   size_t size, uint64_t *offset, uint64_t *usable);
/* [any] sh_alloc_owner's lock-free path: SH_EAGAIN, having done nothing, as sh_alloc_nolock. */
int sh_alloc_owner_nolock(sh_arena_t *arena, uint32_t owner, uint32_t generation, sh_partition_t partition,
                          size_t size, uint64_t *offset, uint64_t *usable);

/* [any] As sh_alloc, and the first `size` bytes are zeroed (a run of pages
 * never handed out before is zero already and is not cleared again). */
int sh_calloc(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size,
              uint64_t *offset);
/* [any] sh_calloc's lock-free path: SH_EAGAIN, having done nothing, as sh_alloc_nolock. */
int sh_calloc_nolock(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size,
                     uint64_t *offset);

/* [any] Return a block. Any thread or process may free any owner's block.
 * Errors: SH_EBADPTR (not the start of a live block), SH_EDOUBLEFREE. */
int sh_free(sh_arena_t *arena, uint64_t offset);

/* [any] sh_free without ever taking a lock: SH_EAGAIN, having done nothing,
 * for a large block or one on a page that holds leases (call sh_free then). A small page that empties stays with
 * its owner instead of being retired; a partition under pressure reclaims
 * such pages before it reports SH_EFULL. */
int sh_free_nolock(sh_arena_t *arena, uint64_t offset);

/* [any] n blocks of `size` bytes of the shared default (owner 0) into
 * offsets[0..n), in one call: the thread's magazine and cached pages are
 * popped in a loop, and the slow path runs only when they run dry. Stops at
 * the first failure: its status is returned, *done (if not NULL) says how
 * many were allocated, and those stay allocated (free them with
 * sh_free_many). */
int sh_alloc_many(sh_arena_t *arena, sh_partition_t partition, size_t size, size_t n, uint64_t *offsets,
                  size_t *done);

/* [any] sh_free of offsets[0..n) in order, stopping at the first that fails:
 * its status is returned and *freed (if not NULL) says how many went back.
 * Runs of blocks of one page go back with one atomic operation. */
int sh_free_many(sh_arena_t *arena, const uint64_t *offsets, size_t n, size_t *freed);

/* [any] Pointer for an offset in this process (no validation). */
static inline void *sh_ptr(const sh_arena_t *arena, uint64_t offset) {
  return (char *)sh_base(arena) + offset;
}

/* [any] Who owns a live block, and its usable size. SH_EBADPTR for anything
 * else, a block sitting on its free list included. */
int sh_block_info(const sh_arena_t *arena, uint64_t offset, sh_block_info_t *info);

/* [any] The usable size a request of `size` bytes would get (0 if it can
 * never fit any partition). */
uint64_t sh_good_size(const sh_arena_t *arena, size_t size);

/* ---- Owners ---------------------------------------------------------------- */

/* [any] A new owner in state LIVE, charged to the calling process (pid and
 * start time recorded). Errors: SH_ETOOMANY. */
int sh_owner_create(sh_arena_t *arena, uint32_t kind, uint32_t *id, uint32_t *generation);

/* [any] Return every page of the owner in O(pages) and free its slot. If the
 * owner is pinned, it is marked COMPLETED instead and SH_EPINNED is returned:
 * the pages go back when the last pin drops (sh_owner_unpin) or at a sweep.
 * Blocks of a recycled owner must not be used again; the generation tells.
 * Errors: SH_EOWNER (no such live or completed owner of that generation),
 * SH_EINVAL (owner 0). */
int sh_owner_recycle(sh_arena_t *arena, uint32_t id, uint32_t generation);
/* [any] Gives back every page, nursery block and held block of a LIVE,
 * unpinned owner whose user word is still `expected_word` (what its
 * snapshot was taken under) and marks it OFFLOADED, keeping its slot and
 * generation (its state now lives in a store; sh_owner_set_state makes it
 * LIVE again). Its user word becomes SH_USER_WORD_SEALED. SH_EPINNED while
 * pinned, SH_EOWNER when not live, SH_ESTATE when the word moved on (an
 * update landed after the snapshot: nothing changed; snapshot again);
 * *final as sh_owner_complete's, when not NULL. */
int sh_owner_offload(sh_arena_t *arena, uint32_t id, uint32_t generation, uint64_t expected_word,
                     sh_owner_info_t *final);
/* [any] sh_owner_offload of a RESTORING owner only (SH_ESTATE in any other
 * state): a restore whose blob another heap took gives the memory back,
 * unless another restorer of this heap finished first (LIVE). */
int sh_owner_unrestore(sh_arena_t *arena, uint32_t id, uint32_t generation, sh_owner_info_t *final);

/* [any] sh_owner_recycle that also fills *final with the owner's figures as
 * they were just before (state, pages, live bytes and blocks), read in the
 * same pass over its pages that returns them. Pinned: *final is filled, the
 * owner is marked COMPLETED and SH_EPINNED returned, as sh_owner_recycle. */
int sh_owner_complete(sh_arena_t *arena, uint32_t id, uint32_t generation, sh_owner_info_t *final);

/* [any] Pins keep memory visible: a pinned owner is never recycled. Unpinning
 * the last pin of a COMPLETED owner recycles it; *recycled says so. Pins
 * belong to the calling process: an unpin releases one of its own pins
 * (SH_ESTATE if it holds none), and sh_pins_reclaim_dead drops the pins of
 * processes that died. SH_EFULL if the pin table is full. */
int sh_owner_pin(sh_arena_t *arena, uint32_t id, uint32_t generation);
int sh_owner_unpin(sh_arena_t *arena, uint32_t id, uint32_t generation, int *recycled);
/* [any] A pin that is a view of one of the agent's named entries: as
 * sh_owner_pin, and counted as a view, so that another process that drops
 * the entry (a put of the name, a delete) leaves its block to
 * sh_views_reclaim instead of freeing it under the view. The pin is
 * ordered before the caller's next read of the agent's index word. */
int sh_owner_view_pin(sh_arena_t *arena, uint32_t id, uint32_t generation);
int sh_owner_view_unpin(sh_arena_t *arena, uint32_t id, uint32_t generation, int *recycled);
/* [any] sh_owner_unpin (sh_owner_view_unpin if `view`) that, when it
 * recycles, fills *final as sh_owner_complete would have (the figures of
 * the completed owner, read in the pass that returns its pages), so that
 * the process whose unpin recycled can report what the owner held. *final
 * is untouched when the unpin does not recycle; NULL: not wanted. */
int sh_owner_unpin_final(sh_arena_t *arena, uint32_t id, uint32_t generation, int view, int *recycled,
                         sh_owner_info_t *final);
/* [any] *views gets the entry views held on the owner: by other processes
 * only if `others_only`, else by every process. Ordered after the caller's
 * last write of the agent's index word (the other half of the view pin's
 * order: a view either sees the new index or is counted here). */
int sh_owner_views(sh_arena_t *arena, uint32_t id, uint32_t generation, int others_only, uint32_t *views);

/* [any] Drop the pins of processes that died (pid and start time, as
 * sh_owner_process_alive): a view a killed process held open must not keep
 * its agent forever. A COMPLETED owner whose last pin goes is recycled.
 * *dropped gets the pins dropped, *recycled (if not NULL) the owners recycled. */
int sh_pins_reclaim_dead(sh_arena_t *arena, uint64_t *dropped, uint32_t *recycled);
/* [any] sh_pins_reclaim_dead that reports each owner it recycles: finals[i]
 * as sh_owner_complete fills it, for at most `max_finals` owners a call.
 * Owners past those stay COMPLETED with no pin, and the next call recycles
 * and reports them: call again while *recycled == max_finals. */
int sh_pins_reclaim_dead_final(sh_arena_t *arena, uint64_t *dropped, uint32_t *recycled, sh_owner_info_t *finals,
                               uint32_t max_finals);

/* [any] State changes for the layer above (DEAD, OFFLOADED, back to LIVE).
 * Compare-and-set: fails with SH_ESTATE unless the state is `expected`. */
int sh_owner_set_state(sh_arena_t *arena, uint32_t id, uint32_t generation,
                       sh_owner_state_t expected, sh_owner_state_t desired);
/* [any] A sweep's verdict: marks the owner DEAD if it is still in state
 * `expected` and still held by process `pid` started at `start` (what the
 * caller found gone, from sh_owner_info), both read under the owner lock.
 * A verdict on a pid and start time read while the slot changed hands (its
 * agent recycled and the slot taken by another process, or re-homed) is
 * refused with SH_ESTATE, so a live process's agents are never marked
 * DEAD for another's death. */
int sh_owner_set_dead(sh_arena_t *arena, uint32_t id, uint32_t generation, sh_owner_state_t expected, int32_t pid,
                      uint64_t start);

/* [any] Stamp last-active time; compare-and-set or read the user word. The
 * read fails with SH_EOWNER if the owner is gone or its slot was reused.
 * A user word with SH_USER_WORD_HELD set names a 16-byte-aligned block of
 * owner 0 (or 1) the owner holds: recycling the owner frees that block too,
 * whichever process or path recycles it. The word carries a sequence number
 * that every swap advances (sh_held_next), so a compare-and-set from a word
 * read before other writers swapped the block away and back to the same
 * offset fails instead of succeeding on stale contents (ABA). 27 bits wrap
 * after 134 M swaps of one owner's word; the block's length is in the block
 * (the layer above's business), not in the word. */
#define SH_USER_WORD_HELD (UINT64_C(1) << 63)
#define SH_HELD_OFFSET_BITS 36 /* offset / 16: arenas up to 1 TiB */
#define SH_HELD_SEQ_MASK ((UINT64_C(1) << 27) - 1)
/* The held word's one codec: every reader and writer goes through these. */
static inline uint64_t sh_held_offset(uint64_t word) {
  return (word & ((UINT64_C(1) << SH_HELD_OFFSET_BITS) - 1)) << 4;
}
static inline uint64_t sh_held_seq(uint64_t word) {
  return (word >> SH_HELD_OFFSET_BITS) & SH_HELD_SEQ_MASK;
}
static inline uint64_t sh_held_word(uint64_t offset, uint64_t seq) {
  return SH_USER_WORD_HELD | ((seq & SH_HELD_SEQ_MASK) << SH_HELD_OFFSET_BITS) | (offset >> 4);
}
/* The word that replaces `expected` by a block at `offset`. */
static inline uint64_t sh_held_next(uint64_t expected, uint64_t offset) {
  return sh_held_word(offset, (expected & SH_USER_WORD_HELD ? sh_held_seq(expected) : 0) + 1);
}
/* The user word of an OFFLOADED owner (and of a RESTORING one until its
 * restorer swaps an index in): no block held, and not 0, so that an update
 * that read the word while the owner was live (0 for no index yet) cannot
 * compare-and-set it, and one that reads it must not build on it: a swap
 * from it succeeds only while the owner is RESTORING. RESTORING to LIVE
 * turns a word still sealed to 0. */
#define SH_USER_WORD_SEALED UINT64_C(1)
int sh_owner_touch(sh_arena_t *arena, uint32_t id, uint32_t generation);
/* The compare-and-set goes in only while the owner's offload count is still
 * `offloads`, read by the caller before it read `expected` and made the
 * blocks the new word's index names: an offload and a restore in between
 * gave those blocks back, and a swap from the restored index's word would
 * name them under it (SH_ESTATE, as for a word that moved on: the caller
 * tells them apart by the count, sh_owner_offloads). A restorer's swap from
 * SH_USER_WORD_SEALED so fails once the agent was restored and offloaded
 * again since its restore began. */
int sh_owner_set_user_word(sh_arena_t *arena, uint32_t id, uint32_t generation, uint32_t offloads,
                           uint64_t expected, uint64_t desired);
int sh_owner_user_word(const sh_arena_t *arena, uint32_t id, uint32_t generation, uint64_t *word);
/* [any] The word that replaces `expected` by a held block at `offset`: as
 * sh_held_next from a held word; from 0 or the seal (a first index, a
 * restore's), the owner's sequence goes on from the highest word it gave
 * up (sealed at an offload, dropped by a recycle or a swap to none). A
 * restore that started the sequence again made, with the index block at the
 * offset it had before the offload, the very word readers still held from
 * before it, and their caches took the old entries for the new (ABA). */
uint64_t sh_owner_held_next(const sh_arena_t *arena, uint32_t id, uint64_t expected, uint64_t offset);

/* [any] The slot's generation while it holds an owner, 0 when it is free:
 * one load, for checking a handle before touching its bytes. */
uint32_t sh_owner_generation(const sh_arena_t *arena, uint32_t id);
/* [any] How many times the slot's owner was offloaded (0 when out of range):
 * read before making a Block of it, compared at each use of the Block. */
uint32_t sh_owner_offloads(const sh_arena_t *arena, uint32_t id);
/* [any] Free agent `id`'s block at `offset` only if the agent is still
 * generation `generation` with `offloads` offloads, and the block is its:
 * atomic with an offload's, an unrestore's or a recycle's giving back of the
 * agent's memory (all under the owner lock). Without it, a block dropped
 * from the agent's index (or allocated for an update that lost) could go
 * back with an offload, be handed to the agent's restore and named again,
 * and then be freed by the dropper under the new index. SH_EOWNER, nothing
 * freed, if the agent or its incarnation moved on; the free's errors else. */
int sh_owner_free(sh_arena_t *arena, uint64_t offset, uint32_t id, uint32_t generation, uint32_t offloads);
/* [any] sh_owner_free that waits for nothing: SH_EAGAIN (nothing done) if the
 * owner lock is held or the free would wait for a lock (as sh_free_nolock);
 * the caller then calls sh_owner_free where it may block. */
int sh_owner_free_nolock(sh_arena_t *arena, uint64_t offset, uint32_t id, uint32_t generation, uint32_t offloads);
/* [any] A LIVE agent's small blocks skip the shared nursery pages and come
 * from pages of its own from its first allocation (a kind predicted to grow
 * past the nursery's share). Until the agent is recycled or offloaded.
 * Errors: SH_EOWNER (not that live agent). */
int sh_owner_nursery_opt_out(sh_arena_t *arena, uint32_t id, uint32_t generation);
/* [any] Reserve `bytes` of `context` for a LIVE agent (admission control):
 * with `limit` nonzero, SH_EFULL unless the partition's bytes in pages, what
 * is reserved and this fit under it. One CAS on a shared counter; the
 * reservation goes back when the agent is recycled or offloaded. */
int sh_owner_reserve(sh_arena_t *arena, uint32_t id, uint32_t generation, uint64_t bytes, uint64_t limit);
/* ---- Channels (channel.c) ---------------------------------------------------
 * A bounded multi-producer, multi-consumer queue of (offset, size) messages in
 * a block of `comm`: the message bytes are blocks of the arena, so a send
 * moves an offset, not the bytes. Senders and receivers each have a
 * process-shared robust mutex, held for a few stores (a holder killed inside
 * leaves the ring consistent: every change is one store of that side's
 * position), so neither side waits for the other's; blocking waits sleep on futexes
 * that any process's send, receive or close wakes. Timeouts in nanoseconds:
 * -1 waits for ever, 0 not at all. */
typedef struct sh_chan_stats_s {
  uint32_t capacity, depth;
  uint64_t max_message, sent, received, bytes_in_flight;
  int closed;
} sh_chan_stats_t;
/* [any] A new channel of `capacity` messages (1 to 2^20)
 * of at most `max_message` bytes; *chan names it for every process: the
 * ring's offset with the channel's id in the top 16 bits, so that a handle
 * kept past an unlink fails (SH_EBADPTR) instead of reaching a new channel
 * whose ring took the same place. sh_chan_offset gives the ring's block. */
int sh_chan_create(sh_arena_t *arena, uint32_t capacity, uint64_t max_message, uint64_t *chan);
#define SH_CHAN_ID_SHIFT 48
static inline uint64_t sh_chan_offset(uint64_t chan) { return chan & ((UINT64_C(1) << SH_CHAN_ID_SHIFT) - 1); }
/* [any] Enqueue a message; SH_ETIMEDOUT if still full after the timeout,
 * SH_ECLOSED once the channel is closed. A message whose block has a lease
 * is sent with the block's tag: if the lease runs out while it is queued, a
 * sweep frees the block and receivers never see the message. */
int sh_chan_send(sh_arena_t *arena, uint64_t chan, uint64_t msg, uint64_t size, int64_t timeout_ns);
/* [any] Dequeue a message; SH_ETIMEDOUT if still empty, SH_ECLOSED once closed and drained. */
int sh_chan_recv(sh_arena_t *arena, uint64_t chan, uint64_t *msg, uint64_t *size, int64_t timeout_ns);
/* [any] Close: senders fail at once, receivers drain what is queued; every waiter wakes. */
int sh_chan_close(sh_arena_t *arena, uint64_t chan);
/* [any] Wait, without taking or giving a message, until a send (want_room)
 * or a receive could act now, or the channel is closed: SH_OK, and the
 * caller tries (another may be first: then it waits again). SH_ETIMEDOUT
 * past the timeout; SH_ECANCELED once *cancel (if not NULL) is set by
 * sh_chan_call_off. An asyncio waiter sleeps here in a worker thread and
 * takes its message on the event loop: a waiter cancelled there has taken
 * nothing, so no message goes to a caller who stopped listening. */
int sh_chan_wait(sh_arena_t *arena, uint64_t chan, int want_room, int64_t timeout_ns, const uint32_t *cancel);
/* [any] Set *cancel (if not NULL) and wake every waiter on the channel, in
 * every process: each looks again, and a wait on `cancel` returns
 * SH_ECANCELED. The others go back to sleep. */
void sh_chan_call_off(sh_arena_t *arena, uint64_t chan, uint32_t *cancel);
/* [process] Call off every wait of this process's view of the heap (sends,
 * receives and waits on channels, room waits): each returns SH_ECANCELED
 * once awake, and from then on at once. Room waiters are woken here;
 * channel waiters by sh_chan_call_off on their channels. For a close()
 * that must not wait for ever on a thread blocked in a receive. */
void sh_call_off_waits(sh_arena_t *arena);
/* [thread] Messages in a thread's hands. sh_chan_hold records `msg` (0:
 * nothing) as the message the calling thread holds mid-send (filled, not yet
 * queued: sh_chan_send clears it under the senders' lock as it queues it) or
 * mid-receive (sh_chan_recv_held records what it takes off the ring; the
 * receiver clears it once the message is its own). sh_chan_unhold clears
 * the record if it is `msg`. [any] sh_chan_reclaim_dead frees the messages
 * held by threads of processes that died (pid and start time), once each;
 * sh_reclaim_dead_threads gives back a dead slot only once it names none.
 * sh_chan_in_hand counts the messages recorded now. */
int sh_chan_hold(sh_arena_t *arena, uint64_t msg);
void sh_chan_unhold(sh_arena_t *arena, uint64_t msg);
/* sh_chan_recv_held also fills *info with the message's block, checked: a
 * message that is not a block of the shared default is SH_ECORRUPT, and a
 * leased one whose lease took it after the tag check is passed over, as
 * before it. *tag (if not NULL) is the handle tag of a message sent with a
 * lease, 0 for one without: a Block that keeps it finds out, through
 * sh_block_tag_check, when the lease takes the block back. */
int sh_chan_recv_held(sh_arena_t *arena, uint64_t chan, uint64_t *msg, uint64_t *size, int64_t timeout_ns,
                      sh_block_info_t *info, uint64_t *tag);
int sh_chan_reclaim_dead(sh_arena_t *arena, uint64_t *blocks);
uint32_t sh_chan_in_hand(const sh_arena_t *arena);
int sh_chan_stats(const sh_arena_t *arena, uint64_t chan, sh_chan_stats_t *st);
/* [any] Drop the queued messages whose lease ran out (their blocks were
 * freed by sh_lease_reclaim while they waited): the ring keeps the others
 * in order. A receiver skips such a message too; this makes depth and
 * bytes in flight (sh_chan_stats) say so at once. *dropped: how many went. */
int sh_chan_purge(sh_arena_t *arena, uint64_t chan, uint32_t *dropped);
/* [any] Drain a closed (or abandoned) channel's messages: each offset to
 * `each` (the caller frees them), then the ring is empty. Returns how many. */
int sh_chan_drain(sh_arena_t *arena, uint64_t chan, void (*each)(uint64_t msg, uint64_t size, void *ctx), void *ctx);

/* [any] A counter the core bumps whenever an owner's memory goes back (a
 * recycle or an offload, in any process); sh_room_wait sleeps until it moves
 * from `seen` or the timeout (ns, -1: none) passes. Admission's "wait". */
uint32_t sh_room_seq(const sh_arena_t *arena);
int sh_room_wait(sh_arena_t *arena, uint32_t seen, int64_t timeout_ns); /* SH_ECANCELED: called off */
/* [any] Frees the nursery blocks a process killed half way through a free
 * or a recycle left named in their page's map but in no agent's record (a
 * sweep of generation 1 or 2 calls this). Returns how many. */
uint64_t sh_nursery_reclaim(sh_arena_t *arena);
/* [any] Bytes of `context` reserved by admitted agents. */
uint64_t sh_reserved_bytes(const sh_arena_t *arena);
/* [any] The slot's sh_owner_state_t, one load (SH_OWNER_FREE when out of range). */
uint32_t sh_owner_state(const sh_arena_t *arena, uint32_t id);

/* [any] Snapshot of one owner slot; SH_EOWNER if the slot is unused. Bytes
 * and blocks are summed from the owner's pages when read. */
int sh_owner_info(const sh_arena_t *arena, uint32_t id, sh_owner_info_t *info);

/* [any] Is the process that created the owner still the one running under
 * that pid? Uses the start time, so a reused pid is not mistaken for it.
 * Returns 1 alive, 0 dead, negative on error. */
int sh_owner_process_alive(const sh_arena_t *arena, uint32_t id);
/* [any] An owner belongs to the process that created it, and a sweep
 * reclaims it when that process dies. sh_owner_detach gives it to the heap
 * instead (its pid becomes 0; sh_owner_process_alive says 1): only its
 * recycle or its lease ends it. sh_owner_adopt_orphan gives it to the
 * calling process if the one it belongs to has died (*adopted says so): a
 * restore of an agent whose process is gone makes it the restorer's, so
 * that the next sweep does not reclaim what was just brought back. A
 * detached owner stays detached. SH_EOWNER if that generation is gone,
 * SH_EINVAL for owners 0 and 1 or a read-only heap. */
int sh_owner_detach(sh_arena_t *arena, uint32_t id, uint32_t generation);
int sh_owner_adopt_orphan(sh_arena_t *arena, uint32_t id, uint32_t generation, int *adopted);

/* [any] Start time of a process in clock ticks since boot (/proc/PID/stat). */
int sh_process_start_time(int pid, uint64_t *start_time);
/* [any] Is `pid` still the process that started at `start` (a reused pid
 * is not)? 1 alive, 0 dead, negative if /proc could not say. */
int sh_process_alive(int pid, uint64_t start);

/* ---- Leases on blocks of owner 0 -------------------------------------------
 * A block of the shared default owner can carry a lease: a deadline after
 * which sh_lease_reclaim frees it, so a block whose holder forgot it or died
 * does not stay forever. Freeing the block ends its lease. A holder must
 * renew (sh_lease_set again) before the deadline: once it passes, the block
 * may be freed under it. The table (shared with handle tags, below) holds
 * an entry per owner slot, at least 256 (three quarters usable); entries of
 * recycled agents' blocks are dropped when it fills. */

/* [any] Set or move the block's deadline (CLOCK_REALTIME nanoseconds).
 * Errors: SH_EBADPTR (not a live block), SH_EINVAL (not owner 0's, or the
 * heap is read-only), SH_EFULL (the table is full). */
int sh_lease_set(sh_arena_t *arena, uint64_t offset, uint64_t deadline_ns);
/* [any] The block's deadline; SH_ENOENT if it has no lease. */
int sh_lease_get(sh_arena_t *arena, uint64_t offset, uint64_t *deadline_ns);
/* [any] Drop the block's lease (if any) without freeing it. */
int sh_lease_clear(sh_arena_t *arena, uint64_t offset);
/* [any] Free every leased block whose deadline is at or before now_ns; each
 * is freed by exactly one caller across processes. */
int sh_lease_reclaim(sh_arena_t *arena, uint64_t now_ns, uint64_t *blocks, uint64_t *bytes);
/* [any] Leases held now. */
uint64_t sh_lease_count(const sh_arena_t *arena);
/* [any] A block of agent `id` (generation `generation`) its index no longer
 * names while another process holds a view of the agent's entries: recorded
 * in the block table, and freed by sh_views_reclaim once the agent has no
 * entry views left (or with the agent, at its recycle). SH_EFULL when a
 * quarter of the table already waits, or the table is full: the block then
 * stays until the agent's recycle, and leases and handle tags keep their room.
 * `offloads`: the agent's offload count read before the index update that
 * dropped the block (the block is freed only while that count holds, as
 * sh_owner_free). */
int sh_free_after_views(sh_arena_t *arena, uint64_t offset, uint32_t id, uint32_t generation, uint32_t offloads);
/* [any] Free the blocks sh_free_after_views recorded whose agent has no
 * entry views left in any process; each is freed by exactly one caller.
 * Entries of an agent recycled since are dropped without a free. */
int sh_views_reclaim(sh_arena_t *arena, uint64_t *blocks, uint64_t *bytes);
/* [any] Blocks waiting in the table for their agent's views to go. */
uint64_t sh_after_views_count(const sh_arena_t *arena);

/* ---- Handle tags ------------------------------------------------------------
 * A handle that crosses processes must never resolve to a block that was
 * freed, or freed and handed out again, since it was made. The first
 * sh_block_tag of a live block records a tag for it, unique for the arena's
 * life (a 64-bit counter: it does not wrap), in the same table as leases;
 * later calls return the same tag until the block is freed, and the free
 * drops it. Only pages that have had a tag pay for this: their frees take
 * the locking path, as leased pages' do. Blocks of an agent lose their tags
 * with the agent (its generation tells). */

/* [any] The block's tag, made on first use. Errors: SH_EBADPTR (not a live
 * block), SH_EFULL (the table is full), SH_EINVAL (read-only heap). */
int sh_block_tag(sh_arena_t *arena, uint64_t offset, uint64_t *tag);
/* [any] SH_OK if `offset` is a live block whose tag is `tag`; SH_EOWNER if
 * it was freed, or freed and reused, since the tag was made; SH_EBADPTR if
 * it is no live block. */
int sh_block_tag_check(sh_arena_t *arena, uint64_t offset, uint64_t tag);
/* [any] Entries the table holds now (leases and tags), and its capacity. */
void sh_block_table_load(const sh_arena_t *arena, uint64_t *entries, uint64_t *capacity);

/* ---- Thread caches ----------------------------------------------------------
 * Each thread that allocates gets a slot in the arena (up to max_threads;
 * later threads take the uncached path, which is correct and slower). A slot
 * caches one page per (owner, partition, class) it uses: that thread allocates
 * from, and frees to, the page without an atomic instruction, while other
 * threads' frees to it still land on the page's lock-free stack. A cached
 * page's free blocks count as free in every statistic, and a full partition
 * takes back the calling thread's cached pages before it reports SH_EFULL.
 * Another thread's cached pages (at most one per owner, partition and class)
 * come back when that thread exits, its process closes the handle, or, if the
 * process died, at sh_reclaim_dead_threads.
 *
 * A slot also keeps magazines: small blocks of owner 0 (16 B to 1 KiB) that
 * its thread freed wait there, 12 per (partition, class) in arenas under
 * 512 MiB and 28 from there, for that thread's next allocation of the class.
 * They count as free in every statistic and check(); a second free of one is
 * still SH_EDOUBLEFREE, and a write into one after its free is reported by
 * check() and by the allocation that would hand it out (SH_ECORRUPT). Their
 * pages cannot go back to the partition while they wait: they come back as
 * the cached pages do (thread exit, close, full partition, dead process,
 * sh_thread_flush). Arenas above 64 GiB have none. */

/* [any] Return the calling thread's cached blocks in this arena to their
 * pages and give up its slot; the next allocation binds a slot again. */
int sh_thread_flush(sh_arena_t *arena);

/* [any] Give back the slots, and the cached blocks, of processes that died
 * (pid and start time, as sh_owner_process_alive). *reclaimed, if not NULL,
 * gets the number of slots. Each slot is taken back by exactly one caller. */
int sh_reclaim_dead_threads(sh_arena_t *arena, uint32_t *reclaimed);

/* [any] Slots bound to a thread now, and the table's size. */
void sh_thread_slots(const sh_arena_t *arena, uint32_t *bound, uint32_t *total);
/* [any] Blocks waiting in every slot's magazines now. */
uint64_t sh_magazine_blocks(const sh_arena_t *arena);

/* ---- Sweep generations ------------------------------------------------------
 * Two shared queues of owners, young (0) and middle-aged (1); an owner in
 * neither is old. The layer above decides what a sweep reclaims; these only
 * make a young sweep cost O(young owners), not O(all owners). Entries are
 * hints: whoever acts on one re-checks the owner's id and generation. An
 * entry that is lost (a full queue, a producer that died mid-push) leaves its
 * owner old, where a full sweep still finds it. */

/* [any] Queue (id, generation) on queue `ring` (0 or 1). SH_EFULL if full. */
int sh_sweep_push(sh_arena_t *arena, int ring, uint32_t id, uint32_t generation);

/* [any] Claim up to `max` queued entries, oldest first; each entry is
 * returned to exactly one caller, across threads and processes. Entries are
 * (generation << 32 | id); one whose owner slot no longer has that
 * generation (recycled since) is dropped, not returned. */
int sh_sweep_take(sh_arena_t *arena, int ring, uint64_t *entries, size_t max, size_t *taken);

/* [any] How many entries are queued on `ring`. */
uint64_t sh_sweep_pending(const sh_arena_t *arena, int ring);

/* ---- Stats and check ------------------------------------------------------- */

/* [any] Read without stopping anyone: counters are summed from per-page and
 * striped counters, so concurrent changes give a slightly stale figure. */
int sh_partition_stats(const sh_arena_t *arena, sh_partition_t partition,
                       sh_partition_stats_t *stats);
int sh_class_stats(const sh_arena_t *arena, int size_class, sh_class_stats_t *stats);

/* [quiet] Walk every page, free list, bin list, run and counter. SH_OK, or
 * SH_ECORRUPT with the first inconsistency in sh_last_error(). Takes the
 * slow-path locks while it walks. */
int sh_check(sh_arena_t *arena);

#ifdef __cplusplus
}
#endif
#endif
