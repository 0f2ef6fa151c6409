/* ASan cannot see inside our own arena: to it the whole mapping is one valid
 * region. Poisoning freed blocks and unpoisoning allocated ones lets the
 * sanitizer builds catch a use-after-free inside the arena (mimalloc's track.h).
 * The first 8 bytes of a free block hold its free-list link, so they stay
 * readable by the allocator. Compiles to nothing without ASan.
 * Shadow memory is per process: a block freed here and reallocated by another
 * process would still look poisoned here. So only private (anonymous) arenas
 * are tracked; a shared arena's blocks are never poisoned. */
#ifndef SH_TRACK_H
#define SH_TRACK_H

#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define SH_TRACK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SH_TRACK_ASAN 1
#endif
#endif

#if defined(SH_TRACK_ASAN)
#include <sanitizer/asan_interface.h>
#define sh_track_alloc(a, p, size) \
  do { if ((a)->backing == SH_BACKING_ANON) ASAN_UNPOISON_MEMORY_REGION((p), (size)); } while (0)
#define sh_track_free(a, p, size) \
  do { if ((a)->backing == SH_BACKING_ANON) ASAN_POISON_MEMORY_REGION((char *)(p) + 8, (size) - 8); } while (0)
#define sh_track_reset(p, size) ASAN_UNPOISON_MEMORY_REGION((p), (size))
#else
#define sh_track_alloc(a, p, size) ((void)(a), (void)(p), (void)(size))
#define sh_track_free(a, p, size) ((void)(a), (void)(p), (void)(size))
#define sh_track_reset(p, size) ((void)(p), (void)(size))
#endif

/* The pops read a link whose value they may throw away: the shared pop, of
 * a block a racing thread may have just allocated and started writing (the
 * tag CAS discards the read); a thread cache's pop, before it checks the
 * page's claim, of a page that may have gone back and been handed out again,
 * onto another block's poisoned bytes (the claim check discards it). Neither
 * sanitizer can know the value goes unused, so that read is left to neither
 * (_sh_link_read in sh_page.h). */
#if defined(__SANITIZE_THREAD__)
#define SH_TRACK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SH_TRACK_TSAN 1
#endif
#endif

/* The walk that confirms a suspected double free reads links those pops may
 * be writing: left to ASan, not to TSan. */
#if defined(SH_TRACK_TSAN)
#define SH_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define SH_NO_TSAN
#endif

/* Under a sanitizer the read stays out of line: no_sanitize also hides
 * atomics from TSan, and the pop's CAS must stay visible to it. Plain, it is
 * inline, on the thread cache's fast path. */
#if defined(SH_TRACK_ASAN) || defined(SH_TRACK_TSAN)
#define SH_UNSANITIZED_READ \
  __attribute__((no_sanitize("address", "thread"), noinline, unused))
#else
#define SH_UNSANITIZED_READ inline
#endif

#endif
