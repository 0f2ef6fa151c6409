/* Every struct that lives in the arena, and the process-local handle.
 * Shared structs hold offsets and page indexes, never pointers. Fields read
 * without the partition lock are atomics; the rest are written only under it
 * (or before the arena's magic is published) and say so. */
#ifndef SH_TYPES_H
#define SH_TYPES_H

#include <pthread.h>
#include <stdint.h>

#include "sh_atomic.h"
#include "swarmheap.h"

#define SH_MAGIC UINT64_C(0x50414548524d5753) /* "SWMRHEAP" little-endian */
#define SH_NIL UINT32_MAX
#define SH_UNIT_SHIFT 4 /* blocks are multiples of 16 bytes */
#define SH_CACHE_LINE 64
#define SH_NSTRIPES 8
#define SH_SMALL_CLASSES 8 /* 16..128 in 16-byte steps */
#define SH_DIRECT_SIZES 64 /* sizes up to 1 KiB find their class in one table load */
#define SH_SWEEP_RINGS 2   /* young and middle-aged owners; the rest are old */

/* ---- Free-stack head word ----------------------------------------------------
 * One 64-bit word: | tag:24 | count:20 | top:20 |
 *   top   = (offset of the top free block within the page / 16) + 1, 0 = empty
 *   count = free blocks on the stack, so "page fully free" costs no extra atomic
 *   tag   = bumped by every successful CAS, against ABA
 * SH_HEAD_RETIRED in `top` marks a page being handed back: nobody pops or
 * pushes it. Pages are at most 8 MiB, so top never reaches 0xFFFFF. */
#define SH_HEAD_TOP_BITS 20
#define SH_HEAD_COUNT_BITS 20
#define SH_HEAD_FIELD_MASK ((UINT64_C(1) << 20) - 1)
#define SH_HEAD_RETIRED 0xFFFFFu
#define sh_head_top(h) ((uint32_t)((h) & SH_HEAD_FIELD_MASK))
#define sh_head_count(h) ((uint32_t)(((h) >> 20) & SH_HEAD_FIELD_MASK))
#define sh_head_tag(h) ((uint32_t)((h) >> 40))
#define sh_head_make(top, count, tag) \
  ((uint64_t)(top) | ((uint64_t)(count) << 20) | ((uint64_t)((tag) & 0xFFFFFFu) << 40))

#define SH_PAGE_CORRUPT 1u /* a bad free link quarantined the page */
#define SH_PAGE_LEASED 2u  /* holds, or held, a block with a lease or a handle tag: frees look in the table */
#define SH_PAGE_DIRTY 4u   /* was ever handed out: a page that never was still holds the zeros it was made with */
/* Nursery blocks (nursery.c): classes from the smallest up to
 * SH_NURSERY_MAX_BLOCK whose page holds at least SH_NURSERY_MIN_PER_PAGE
 * blocks beside its map (a page holding one or two would cost an agent about
 * what a page of its own does); above that, up to SH_NURSERY_LOSSLESS_MAX,
 * the classes whose map fits in the page's slack, so that a nursery page
 * holds as many blocks as a page of the agent's own would (10, 12, 14, 20,
 * 24 and 28 KiB on 64 KiB pages, not 16 or 32: a 16 KiB nursery page holds
 * 3, and an agent with four such blocks filled a page of its own). */
#define SH_NURSERY_MIN_BLOCK 64u
#define SH_NURSERY_MAX_BLOCK 8192u
#define SH_NURSERY_LOSSLESS_MAX 28672u
#define SH_NURSERY_LOSSLESS_MIN_PER_PAGE 2u
#define SH_NURSERY_MIN_PER_PAGE 3u
/* Past its record's first line (SH_NURSERY_LINE), an agent holding this
 * many blocks of one class in the nursery, and at least a page /
 * SH_NURSERY_CLASS_SHARE of bytes, takes its next blocks of that class from a page of its own
 * (nursery.c): its use of the class passed the threshold the issue names (a
 * page it starts a sixteenth full), and its share stays for the classes it
 * uses little. */
#define SH_NURSERY_CLASS_BLOCKS 16u
#define SH_NURSERY_CLASS_SHARE 16u
#define SH_PAGE_NURSERY 8u /* a nursery page: its blocks belong to agents, named in the map at its end (nursery.c) */

typedef enum sh_page_state_e {
  SH_PAGE_FREE = 0,
  SH_PAGE_META = 1,   /* holds the allocator's own metadata (start of system) */
  SH_PAGE_SMALL = 2,  /* blocks of one size class for one owner */
  SH_PAGE_LARGE = 3,  /* first page of a large run */
  SH_PAGE_TAIL = 4,   /* later page of a large run */
} sh_page_state_t;

/* A page descriptor. Lives in `system`, never next to user data.
 * Invariant (SMALL, quiescent): count(head) == length of the free stack, and
 *   capacity - count(head) == live blocks of the page.
 * Invariant: state != FREE  <=>  the page's bit is set in the partition bitmap. */
typedef struct sh_page_s {
  _Atomic uint64_t head;     /* SMALL: the free stack (see above) */
  _Atomic uint32_t state;    /* sh_page_state_t; written under lock, release */
  _Atomic uint32_t owner;    /* under lock */
  _Atomic uint32_t sclass;   /* SMALL: size class; under lock */
  _Atomic uint32_t key;      /* SMALL: random word that encodes free links */
  _Atomic uint32_t capacity; /* SMALL: blocks; LARGE: pages in the run */
  _Atomic uint32_t run_head; /* TAIL: page index of its LARGE page */
  uint32_t next, prev;       /* bin list (SMALL) or large list (LARGE); under lock */
  uint32_t epoch;            /* bumped at every assignment; under lock */
  _Atomic uint32_t flags;    /* SH_PAGE_*; all but DIRTY cleared when the page is handed out again */
  _Atomic uint64_t large_bytes; /* LARGE: bytes requested */
  uint32_t partition;        /* fixed at creation */
  _Atomic uint32_t claim;    /* SMALL: the thread slot caching it (see sh_tcache.h), 0 = none */
} sh_page_t;
_Static_assert(sizeof(sh_page_t) == SH_CACHE_LINE, "one descriptor per cache line");

typedef struct sh_part_desc_s {
  uint64_t offset, size;     /* bytes from the arena base */
  uint32_t first_page, npages;
  uint32_t first_usable;     /* system: first page after the metadata */
  uint32_t ratio_ppm;        /* share of the arena, parts per million */
} sh_part_desc_t;

/* A process-shared robust mutex on its own cache line, with room on the line
 * for one word it guards (a channel's position): a locker that takes the
 * line for the lock has the word with it, not another line from another core. */
typedef struct sh_lock_s {
  pthread_mutex_t mutex;
  _Atomic uint64_t guarded;
  uint8_t pad_[SH_CACHE_LINE - ((sizeof(pthread_mutex_t) + sizeof(uint64_t)) % SH_CACHE_LINE)];
} __attribute__((aligned(SH_CACHE_LINE))) sh_lock_t;
_Static_assert(sizeof(sh_lock_t) == SH_CACHE_LINE, "one lock per cache line");

/* The owner table entry. `state` and `generation` change under owner_lock;
 * page figures under the partition lock; the rest are atomics. */
typedef struct sh_owner_s {
  _Atomic uint32_t state;      /* sh_owner_state_t */
  _Atomic uint32_t generation; /* bumped when the slot is taken */
  /* Times its memory went to a store (sh_owner_offload): a Block made before
   * an offload is stale after it, even once a restore made the agent live
   * again under the same generation. Beside the two words each use of a
   * Block loads already: on their cache line, not one of its own. */
  _Atomic uint32_t offloads;
  _Atomic uint32_t pins;
  uint32_t kind;
  int32_t pid;
  _Atomic uint32_t reserved_kib; /* its admission reservation in `context` (sh_owner_reserve), in KiB */
  /* The highest sequence number of a held word it gave up for none (an
   * offload sealing it, a recycle): the next word made from no held word (a
   * restore's, sh_owner_held_next) goes on from it, never repeating a word a
   * reader may still hold; a swap from a held word goes on from that word.
   * 0 in arenas from before it was kept: their owners had none. */
  _Atomic uint32_t held_seq;
  uint64_t pid_start;
  uint64_t created_ns;
  _Atomic uint64_t last_active_ns;
  _Atomic uint64_t user_word;
  /* Its bin set in each partition (see _sh_owner_set), + 1; 0: none. Under
   * the partition lock. */
  _Atomic uint32_t binset[SH_NPARTITIONS];
  _Atomic uint32_t pages[SH_NPARTITIONS]; /* a partition has fewer than 2^31 pages */
  _Atomic uint32_t peak_pages[SH_NPARTITIONS];
} sh_owner_t;
_Static_assert(sizeof(sh_owner_t) == 112, "the owner table is the metadata that grows with max_owners");

/* Operation counters, striped so threads rarely share a cache line. Each
 * stripe holds [partition][class] for allocs and frees; class index
 * `nclasses` counts large runs. */
typedef struct sh_stripe_hdr_s {
  _Atomic uint64_t failures[SH_NPARTITIONS];
} sh_stripe_hdr_t;

/* ---- Thread caches (see sh_tcache.h) ----------------------------------------
 * A thread slot lives in the arena so that a process that dies with blocks in
 * its threads' caches can be swept by the others. Each entry caches one page
 * of one (owner, partition, class) per way: the page's `claim` names the
 * entry's slot, and the page's free blocks that the slot took sit on the way's
 * `local`, a stack only that slot's thread touches, with the same link format
 * as the page's stack.
 * The page's own stack keeps taking frees from every other thread. */
#define SH_CLAIM_SLOT_BITS 12 /* claim word: seq:18 | way:2 | slot + 1:12 */
#define SH_MAX_THREAD_SLOTS ((1u << SH_CLAIM_SLOT_BITS) - 1)
#define sh_claim_slot(w) (((w) & ((1u << SH_CLAIM_SLOT_BITS) - 1)) - 1)
#define sh_claim_way(w) (((w) >> SH_CLAIM_SLOT_BITS) & 3u)
#define sh_local_top(l) ((uint32_t)((l) & SH_HEAD_FIELD_MASK))
#define sh_local_count(l) ((uint32_t)(((l) >> 20) & SH_HEAD_FIELD_MASK))
#define sh_local_make(top, count) ((uint64_t)(top) | ((uint64_t)(count) << 20))

/* One cached page: the claim the entry put on it, and the stack of its free
 * blocks only this slot's thread touches. */
typedef struct sh_tc_way_s {
  _Atomic uint32_t page;  /* SH_NIL when the way holds nothing */
  _Atomic uint32_t claim;
  _Atomic uint64_t local; /* | count:20 | top:20 |, as the page stack's head without a tag */
} sh_tc_way_t;

/* Up to SH_TC_WAYS pages of one (owner, partition, class): allocations pop
 * way 0; a free to any of them is a local push (the page's claim word names
 * the way), so a class whose live blocks span a few pages still frees
 * without an atomic instruction. */
#define SH_TC_WAYS 3
typedef struct sh_tc_entry_s {
  _Atomic uint32_t key;    /* owner << 8 | partition << 6 | class; written by the slot's thread */
  _Atomic uint32_t allocs; /* for `key`, since the slot last folded them (see sh_tcache.h) */
  _Atomic uint32_t frees;
  _Atomic uint32_t flush_seq; /* odd while a way's blocks move to their page: readers retry */
  sh_tc_way_t way[SH_TC_WAYS];
} sh_tc_entry_t;
_Static_assert(sizeof(sh_tc_entry_t) == SH_CACHE_LINE, "an entry is one cache line");

typedef enum sh_tslot_state_e {
  SH_TSLOT_FREE = 0,
  SH_TSLOT_BOUND = 1,     /* a thread of `pid` uses it */
  SH_TSLOT_FLUSHING = 2,  /* being emptied by its process's close or by a sweep */
} sh_tslot_state_t;

/* One thread's cache, followed in the arena by its entries and then its
 * counters: allocs and frees per [partition][class + 1], written only by the
 * slot's thread (plain increments, no shared cache line), summed on read. */
/* A page run the thread freed and keeps for its next request of the same
 * size: the run stays LARGE and its owner's, and its head page's claim says
 * it is cached (free). Way number SH_TC_RUN_WAY in the claim tells it from a
 * cached small page. */
#define SH_TC_RUNS 2
#define SH_TC_RUN_WAY 3
#define SH_TC_RUN_MAX_PAGES 32
typedef struct sh_tc_run_s {
  _Atomic uint32_t page; /* SH_NIL when empty */
  _Atomic uint32_t claim;
} sh_tc_run_t;

typedef struct sh_tslot_s {
  _Atomic uint32_t state;
  _Atomic int32_t pid;
  _Atomic uint64_t pid_start;
  _Atomic uint64_t binder;   /* which handle of that process bound it */
  uint32_t claim_seq;        /* the slot's thread only */
  uint32_t run_next;         /* the run slot to replace next; the slot's thread only */
  sh_tc_run_t runs[SH_TC_RUNS];
  _Atomic uint32_t mag_seq;  /* odd while the magazines are being emptied: readers retry */
  uint32_t pad_;
  /* A channel message this thread holds mid-send (filled, not yet queued,
   * maybe waiting for room) or mid-receive (off the ring, not yet the
   * caller's): the sweep that finds the process dead frees it (channel.c). */
  _Atomic uint64_t in_hand;
} sh_tslot_t;
_Static_assert(sizeof(sh_tslot_t) == SH_CACHE_LINE, "slot header is one cache line");

/* ---- Magazines (Bonwick) ------------------------------------------------------
 * The shared default's small blocks (owner 0, classes up to 1 KiB) freed by a
 * thread wait in an array in its slot, one per (partition, class), for its
 * next allocation of that class. A pop takes the offset from the array, not
 * from a link in the block. The page still counts a magazine's blocks as
 * handed out, so it never retires under them; stats and check count them as
 * free. A block in a magazine carries a mark in its link words (SH_MAG_MARK
 * and its own offset / 16, inverted), so a second free of it is caught (see
 * sh_block_is_free) and a write after its free is reported by the pop. Owner 0 only: it is
 * never recycled, so no other process ever has to take a block back out of a
 * thread's magazine. The arrays hold offsets / 16 in 32 bits: arenas above
 * 64 GiB have no magazines. */
#define SH_MAG_CLASSES 20 /* 16 B .. 1 KiB: the classes the direct table maps */
/* Arenas from SH_MAG_BIG_ARENA on give each magazine two cache lines (28
 * blocks), smaller ones one (12), so that metadata stays near 1 % of a small
 * arena. The array is sized for the larger. */
#define SH_MAG_MAX_CAP 28
#define SH_MAG_BIG_ARENA (UINT64_C(512) << 20)
#define SH_MAG_MARK 0xFFFFFFFEu /* never a valid link (links are at most 2^20) */
#define SH_MAG_MAX_ARENA (UINT64_C(1) << 36)
typedef struct sh_mag_s {
  _Atomic uint32_t count;
  _Atomic uint32_t allocs, frees; /* since the last fold into the slot's counters, as an entry's */
  uint32_t reserved_;
  _Atomic uint32_t unit[SH_MAG_MAX_CAP]; /* the first mag_cap are used */
} sh_mag_t;
_Static_assert(sizeof(sh_mag_t) == 2 * SH_CACHE_LINE, "a large magazine is two cache lines");

/* The arena header at offset 0. The immutable part, from format_version up
 * to checksum, is covered by the checksum; magic is written last, so an
 * arena is never seen half-built. */
typedef struct sh_header_s {
  uint64_t magic;
  uint32_t format_version;
  uint32_t header_size;
  uint64_t arena_size;
  uint32_t page_size, page_shift;
  uint32_t total_pages, meta_pages;
  uint32_t nclasses, small_limit;
  uint32_t max_owners, nstripes;
  uint64_t pages_off, bitmap_off, owners_off, bins_off, stripes_off, meta_end;
  uint64_t stripe_size;
  uint64_t sweep_off;          /* SH_SWEEP_RINGS rings of ring_cap words */
  uint64_t tslots_off, tslot_size;
  uint64_t leases_off, lease_cap;  /* lease table: lease_cap (a power of two) entries */
  uint64_t pins_off, pin_cap;      /* pin table: pin_cap (a power of two) entries */
  uint32_t nslots, tc_entries;  /* thread slots; entries per slot (a power of two) */
  uint64_t ring_cap;
  uint64_t created_ns;
  sh_part_desc_t parts[SH_NPARTITIONS];
  uint32_t class_size[SH_MAX_CLASSES];
  uint64_t checksum;
  /* ---- mutable ---- */
  sh_lock_t part_lock[SH_NPARTITIONS];
  sh_lock_t owner_lock;
  sh_lock_t lease_lock;
  _Atomic uint64_t lease_count;   /* entries with a deadline */
  _Atomic uint64_t entry_count;   /* entries of any kind (the table's load) */
  _Atomic uint64_t after_views_count; /* entries of blocks waiting for their agent's views (sh_after_views) */
  _Atomic uint64_t tag_seq;       /* the last handle tag handed out */
  _Atomic uint64_t peak_pages[SH_NPARTITIONS];
  _Atomic uint64_t pages_used[SH_NPARTITIONS];
  _Atomic uint64_t nursery_records_off; /* the nursery's records run (nursery.c); 0: no nursery */
  _Atomic uint64_t reserved_bytes;      /* admission reservations in `context`: the owners' reserved_kib, summed */
  _Atomic uint32_t room_seq;            /* bumped when an owner's memory goes back: admission waiters wake */
  _Atomic uint32_t room_waiters;
  _Atomic uint32_t key_seed;
  /* sweep rings: entries [head, tail) are queued; see sweep.c */
  _Atomic uint64_t ring_head[SH_SWEEP_RINGS] __attribute__((aligned(SH_CACHE_LINE)));
  _Atomic uint64_t ring_tail[SH_SWEEP_RINGS] __attribute__((aligned(SH_CACHE_LINE)));
} sh_header_t;

/* A lease on a block of the shared default owner: open addressing by offset. */
typedef struct sh_lease_s {
  uint64_t key;         /* block offset + 1; 0 = empty; under lease_lock */
  uint64_t deadline_ns; /* CLOCK_REALTIME; 0: no lease, only a handle tag; sh_after_views(): see sh_free_after_views */
  uint64_t tag;         /* 0: no handle handed out; else unique for the arena's life */
  uint32_t owner, generation; /* the block's owner when the entry was made: a mismatch marks it stale */
} sh_lease_t;

/* A pin held by one process on one owner: pins belong to a process, so a
 * sweep can drop those of a process that died (pid and start time). Open
 * addressing by owner id; under owner_lock. count 0 with a nonzero owner
 * field is a tombstone, reused by the next insert. */
typedef struct sh_pin_s {
  int32_t pid;          /* 0: empty */
  uint32_t owner, generation;
  uint32_t count;
  /* how many of `count` are views of the agent's named entries (get()):
   * a block such a view is on is not freed under it by another process's
   * put or delete (sh_owner_views, sh_free_after_views) */
  uint32_t views;
  /* the process's start time in two halves: 28 bytes, not 32, for a table
   * that grows with max_owners inside the 1 % metadata budget */
  uint32_t start_lo, start_hi;
} sh_pin_t;
_Static_assert(sizeof(sh_pin_t) == 28, "a pin entry is seven words");

static inline uint64_t sh_pin_start(const sh_pin_t *e) { return (uint64_t)e->start_hi << 32 | e->start_lo; }

typedef struct sh_class_s {
  uint32_t size;
  uint32_t capacity;   /* blocks per page */
  uint64_t div_magic;  /* Lemire's M: x % size == 0  <=>  x * M <= M - 1 */
  uint32_t last_top;   /* the stack `top` of the page's last block */
  uint32_t nursery_capacity; /* blocks of a nursery page of this class (its map takes the rest); 0: no nursery */
} sh_class_t;

/* The process-local handle. Pointers here are this process's view. */
struct sh_arena_s {
  uint8_t *base;
  uint64_t size;
  int fd;
  int read_only;
  sh_backing_t backing;
  sh_header_t *hdr;
  sh_page_t *pages;
  _Atomic uint64_t *bitmap; /* atomics: a word can hold pages of two partitions, under two locks */
  sh_owner_t *owners;
  _Atomic uint32_t *bins; /* bin sets: set_stride words per page of the arena (see _sh_owner_set) */
  uint32_t set_stride;
  _Atomic uint32_t *nursery_records; /* SH_NURSERY_SLOTS words per owner slot (nursery.c); NULL: no nursery */
  uint32_t set_hint[SH_NPARTITIONS]; /* where this process looks for a free set next (a hint, under the lock) */
  uint8_t *stripes;
  _Atomic uint64_t *rings;
  uint64_t ring_cap;
  uint32_t page_shift, nclasses, max_owners, nstripes;
  uint32_t total_pages, meta_pages; /* as validated at attach: the header's copy may be damaged since */
  uint64_t stripe_size;
  uint32_t small_limit;
  uint8_t *tslots;
  uint64_t tslot_size;
  uint32_t nslots, tc_mask;
  uint64_t mag_off;     /* from a slot's start to its magazines */
  uint32_t mag_classes; /* classes with a magazine; 0: none */
  uint32_t mag_limit;   /* the largest size one of them serves */
  uint32_t mag_cap, mag_shift; /* blocks a magazine holds; log2 of its bytes */
  sh_lease_t *leases;
  sh_pin_t *pins;
  uint64_t pin_mask;
  uint64_t lease_mask;
  uint64_t instance; /* process-unique: tells a closed handle's thread caches from a new one's */
  _Atomic uint32_t waits_called_off; /* sh_call_off_waits: this view is closing */
  uint32_t part_first[SH_NPARTITIONS], part_end[SH_NPARTITIONS];
  /* The header's layout as validated when the handle was made (its format
   * version is SH_FORMAT_VERSION, or attach refused it): what
   * sh_arena_info reports, never the header's words again (a process that
   * damages them later must not make another overflow a copy by them). */
  sh_part_desc_t parts[SH_NPARTITIONS];
  uint64_t region_offset[SH_NREGIONS + 1];
  sh_class_t classes[SH_MAX_CLASSES];
  uint8_t class_of[SH_DIRECT_SIZES + 1]; /* class of sizes up to SH_DIRECT_SIZES * 16, by (size + 15) / 16 */
};

#endif
