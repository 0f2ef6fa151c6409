/* Process-shared robust mutexes for the slow paths. A process killed while
 * holding one must not wedge the others: the next locker gets EOWNERDEAD,
 * rebuilds what the lock protects from the page descriptors (the source of
 * truth), and marks the mutex consistent. */
#include <errno.h>
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

/* true when the previous holder died and the protected state needs repair */
bool _sh_lock_acquire_repair(sh_lock_t *lock) {
  int err = pthread_mutex_lock(&lock->mutex);
  if (sh_likely(err == 0)) return false;
  if (err == EOWNERDEAD) return true;
  /* ENOTRECOVERABLE or EINVAL: the arena is unusable; continuing would corrupt it. */
  fprintf(stderr, "swarmheap: slow-path lock unusable (error %d); aborting\n", err);
  abort();
}

void _sh_part_lock(sh_arena_t *arena, int partition) {
  sh_lock_t *lock = &arena->hdr->part_lock[partition];
  if (sh_unlikely(_sh_lock_acquire_repair(lock))) {
    _sh_partition_repair_locked(arena, partition);
    pthread_mutex_consistent(&lock->mutex);
  }
}

void _sh_part_unlock(sh_arena_t *arena, int partition) {
  pthread_mutex_unlock(&arena->hdr->part_lock[partition].mutex);
}

void _sh_owner_lock(sh_arena_t *arena) {
  sh_lock_t *lock = &arena->hdr->owner_lock;
  /* Owner slots change state in one release store, the last step of every
   * owner operation, so a dead holder leaves nothing half-written to repair. */
  if (sh_unlikely(_sh_lock_acquire_repair(lock))) pthread_mutex_consistent(&lock->mutex);
}

void _sh_owner_unlock(sh_arena_t *arena) { pthread_mutex_unlock(&arena->hdr->owner_lock.mutex); }
