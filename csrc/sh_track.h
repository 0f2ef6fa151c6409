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

/* A thread cache's pop reads the link of its top block before it checks the
 * page's claim: if the page went back to its partition meanwhile (its owner
 * recycled) and was handed out again, that read lands on poisoned memory of
 * another block, and the claim check throws it away. To ASan it is a use of
 * poisoned memory, so that one read is left uninstrumented. */
#if defined(SH_TRACK_ASAN)
#define SH_NO_ASAN __attribute__((no_sanitize("address")))
#else
#define SH_NO_ASAN
#endif

/* The lock-free pop reads the link of a block that a racing thread may have
 * just allocated and started writing; the tag CAS discards that read. TSan
 * cannot know the value is never used, so the read is left uninstrumented. */
#if defined(__SANITIZE_THREAD__)
#define SH_NO_TSAN __attribute__((no_sanitize("thread")))
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SH_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define SH_NO_TSAN
#endif
#else
#define SH_NO_TSAN
#endif

#endif
