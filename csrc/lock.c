/* Process-shared robust mutexes for the slow paths. A process killed while
 * holding one must not wedge the others: the next locker gets EOWNERDEAD,
 * rebuilds what the lock protects from the page descriptors (the source of
 * truth), and marks the mutex consistent. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>

#include "sh_internal.h"

int _sh_lock_init(sh_lock_t *lock) {
  pthread_mutexattr_t attr;
  if (pthread_mutexattr_init(&attr)) return _sh_fail(SH_ESYS, "pthread_mutexattr_init failed");
  int err = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  if (!err) err = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  if (!err) err = pthread_mutex_init(&lock->mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  return err ? _sh_fail(SH_ESYS, "cannot initialise a process-shared robust mutex (%d)", err) : SH_OK;
}

/* The lock word is arena memory, so damage must not hang a process or
 * crash it: waits are bounded, and a lock that is held by no live thread, or
 * whose word is not a valid state, is taken over and rebuilt. The holder's
 * TID is in the low 30 bits of glibc's robust lock word (the futex ABI). */
#define SH_LOCK_WAIT_SECONDS 1
#define SH_FUTEX_TID_MASK 0x3fffffffu
/* Turns of a spin on a busy lock before the checked wait: a channel's lock
 * is held for tens of nanoseconds, and the wait is a kill() to see that the
 * holder lives and a futex sleep (syscalls that perf put at a tenth of a
 * two-process send/receive loop). A few microseconds at most. */
#define SH_LOCK_SPIN 256

static int sh_reference_kind(void) {
  static _Atomic int kind = -1;
  int k = sh_atomic_load_relaxed(&kind);
  if (k < 0) {
    sh_lock_t probe;
    if (_sh_lock_init(&probe) != SH_OK) return -1;
    k = probe.mutex.__data.__kind;
    pthread_mutex_destroy(&probe.mutex);
    sh_atomic_store_relaxed(&kind, k);
  }
  return k;
}

static bool sh_thread_alive(uint32_t tid) {
  return tid != 0 && (kill((pid_t)tid, 0) == 0 || errno != ESRCH);
}

/* The TID the lock word names (0: none), read without the lock. */
static uint32_t sh_lock_holder(const sh_lock_t *lock) {
  return sh_word_load_relaxed((const uint32_t *)&lock->mutex.__data.__lock) & SH_FUTEX_TID_MASK;
}

/* A holder found gone is damage only if the word still reads as it did
 * before the check: one that gave the lock back and then exited (or whose
 * process did) changed the word in between, and one that died holding it
 * had the kernel mark the word OWNER_DIED before its TID was gone (a trylock
 * reports that). Without the second read, a locker that read a holder's TID
 * just before it unlocked and exited took the lock over and made it again,
 * under whoever held it next (found by TSan in a channel stress test whose
 * receivers exit as the channel closes). */
bool _sh_lock_word_valid(const sh_lock_t *lock, uint32_t *holder) {
  const uint32_t *word = (const uint32_t *)&lock->mutex.__data.__lock;
  uint32_t seen = sh_word_load_acquire(word);
  *holder = seen & SH_FUTEX_TID_MASK;
  if (lock->mutex.__data.__kind != sh_reference_kind()) return false;
  if (*holder == 0 || sh_thread_alive(*holder)) return true;
  return sh_word_load_acquire(word) != seen;
}

/* true when the previous holder died and the protected state needs repair */
bool _sh_lock_acquire_repair(sh_lock_t *lock) {
  /* a damaged kind sends glibc down its priority-protect path, which asserts
   * and aborts the process: the kind is checked before glibc reads it */
  int err = lock->mutex.__data.__kind == sh_reference_kind() ? pthread_mutex_trylock(&lock->mutex) : EINVAL;
  for (int spin = 0; err == EBUSY && spin < SH_LOCK_SPIN; spin++) {
    sh_cpu_relax();
    if (sh_lock_holder(lock) == 0) err = pthread_mutex_trylock(&lock->mutex);
  }
  uint32_t last_holder = UINT32_MAX;
  /* A holder that died with the lock leaves the kernel's OWNER_DIED in the
   * word (trylock says EOWNERDEAD), so a busy word naming no live thread is
   * damage: taken over now, not after a wait of SH_LOCK_WAIT_SECONDS (each
   * damaged lock word a fuzz input made cost a second) */
  uint32_t busy_holder;
  if (err == EBUSY && !_sh_lock_word_valid(lock, &busy_holder)) err = EINVAL;
  while (err == EBUSY || err == ETIMEDOUT) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += SH_LOCK_WAIT_SECONDS;
    err = pthread_mutex_timedlock(&lock->mutex, &deadline);
    if (err != ETIMEDOUT) break;
    /* The slow paths hold a lock for milliseconds. A word that names the
     * same holder across two whole waits is damage that happens to name a
     * live thread (any process's): taken over, as a dead holder's would be.
     * A holder stopped in a debugger for that long loses it too. */
    uint32_t holder;
    if (!_sh_lock_word_valid(lock, &holder) || holder == last_holder) err = EINVAL;
    last_holder = holder;
  }
  if (sh_likely(err == 0)) return false;
  if (err == EOWNERDEAD) return true;
  /* ENOTRECOVERABLE, EINVAL, or a word no live thread holds: the lock is
   * made again and taken, and the caller rebuilds what it protects from the
   * page descriptors, as after a holder's death. */
  memset(&lock->mutex, 0, sizeof lock->mutex);
  if (_sh_lock_init(lock) != SH_OK || pthread_mutex_lock(&lock->mutex) != 0) {
    fprintf(stderr, "swarmheap: a slow-path lock was damaged and cannot be made again; aborting\n");
    abort();
  }
  return true;
}

void _sh_owner_lock(sh_arena_t *arena) {
  sh_lock_t *lock = &arena->hdr->owner_lock;
  /* Owner slots change state in one release store, the last step of every
   * owner operation, so a dead holder leaves nothing half-written to repair. */
  if (sh_unlikely(_sh_lock_acquire_repair(lock))) pthread_mutex_consistent(&lock->mutex);
}

/* The owner lock if it is free now; false if busy (or its word looks
 * damaged: the waiting path, _sh_owner_lock, checks and repairs). */
bool _sh_owner_trylock(sh_arena_t *arena) {
  sh_lock_t *lock = &arena->hdr->owner_lock;
  if (lock->mutex.__data.__kind != sh_reference_kind()) return false;
  int err = pthread_mutex_trylock(&lock->mutex);
  if (sh_unlikely(err == EOWNERDEAD)) pthread_mutex_consistent(&lock->mutex);
  return err == 0 || err == EOWNERDEAD;
}

void _sh_owner_unlock(sh_arena_t *arena) { pthread_mutex_unlock(&arena->hdr->owner_lock.mutex); }
