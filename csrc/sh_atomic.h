/* The only place that spells atomics. Every name carries its memory order so
 * the reader sees the ordering at the call site (the mimalloc convention).
 * Only 64-bit-and-narrower atomics are used: they are lock-free on every
 * target we build for, and lock-free is what makes them work across
 * processes (a fallback lock would live in one process's memory). */
#ifndef SH_ATOMIC_H
#define SH_ATOMIC_H

#include <stdatomic.h>
#include <stdint.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must always be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must always be lock-free");

#define sh_atomic_load_relaxed(p)   atomic_load_explicit((p), memory_order_relaxed)
#define sh_atomic_load_acquire(p)   atomic_load_explicit((p), memory_order_acquire)
#define sh_atomic_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define sh_atomic_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define sh_atomic_add_relaxed(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define sh_atomic_sub_relaxed(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_relaxed)
#define sh_atomic_add_acq_rel(p, v) atomic_fetch_add_explicit((p), (v), memory_order_acq_rel)
#define sh_atomic_sub_acq_rel(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_acq_rel)
#define sh_atomic_cas_weak_acq_rel(p, exp, des) \
  atomic_compare_exchange_weak_explicit((p), (exp), (des), memory_order_acq_rel, memory_order_acquire)
#define sh_atomic_cas_strong_acq_rel(p, exp, des) \
  atomic_compare_exchange_strong_explicit((p), (exp), (des), memory_order_acq_rel, memory_order_acquire)
#define sh_atomic_exchange_acq_rel(p, v) atomic_exchange_explicit((p), (v), memory_order_acq_rel)
#define sh_atomic_or_relaxed(p, v)  atomic_fetch_or_explicit((p), (v), memory_order_relaxed)
#define sh_atomic_and_relaxed(p, v) atomic_fetch_and_explicit((p), (v), memory_order_relaxed)
#define sh_atomic_or_release(p, v)  atomic_fetch_or_explicit((p), (v), memory_order_release)
/* A store then a load of another word, seen in that order by a thread that
 * does the mirror image (Dekker): one of the two sees the other's store. */
#define sh_atomic_fence()           atomic_thread_fence(memory_order_seq_cst)
/* The same, for an add and a load that take part in one: every seq_cst
 * operation is in one total order, without a fence's cost on x86 (where the
 * add is a locked instruction and the load a plain one either way). */
#define sh_atomic_add_seq_cst(p, v) atomic_fetch_add_explicit((p), (v), memory_order_seq_cst)
#define sh_atomic_load_seq_cst(p)   atomic_load_explicit((p), memory_order_seq_cst)

/* One turn of a spin on a word another core will change: tells the CPU so
 * (it stops speculating loads of the word, and yields to a hyperthread) */
static inline void sh_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Plain words of user memory (free links in free blocks) that other threads
 * may read or write at the same moment: GCC's __atomic builtins, because the
 * words are not declared _Atomic. */
#define sh_word_load_relaxed(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define sh_word_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
/* A caller's flag (a Python object's field: not declared _Atomic) */
#define sh_word_load_acquire(p)     __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define sh_word_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* Running the max of a counter without a lock. */
static inline void sh_atomic_max_relaxed(_Atomic uint64_t *p, uint64_t v) {
  uint64_t cur = sh_atomic_load_relaxed(p);
  while (cur < v && !atomic_compare_exchange_weak_explicit(p, &cur, v, memory_order_relaxed,
                                                           memory_order_relaxed)) {
  }
}
static inline void sh_atomic_max32_relaxed(_Atomic uint32_t *p, uint32_t v) {
  uint32_t cur = sh_atomic_load_relaxed(p);
  while (cur < v && !atomic_compare_exchange_weak_explicit(p, &cur, v, memory_order_relaxed,
                                                           memory_order_relaxed)) {
  }
}

#endif
