/* The OS boundary: mappings, backing store, clocks, process identity. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sh_internal.h"

static int sh_open_backing(sh_backing_t backing, const char *name, int flags) {
  if (backing == SH_BACKING_SHM) return shm_open(name, flags, 0600);
  return open(name, flags | O_CLOEXEC, 0600);
}

/* The name as its user wrote it: a shared heap's without the leading '/' that
 * shm_open wants (the binding adds it), a file's path as given. */
const char *_sh_os_shown(sh_backing_t backing, const char *name) {
  return backing == SH_BACKING_SHM && name && name[0] == '/' ? name + 1 : name;
}

static int sh_check_name(sh_backing_t backing, const char *name) {
  if (backing == SH_BACKING_ANON) return SH_OK;
  if (name == NULL || name[0] == '\0')
    return _sh_fail(SH_EINVAL, "a %s heap needs a name", backing == SH_BACKING_SHM ? "shared" : "file");
  if (backing == SH_BACKING_SHM) {
    const char *rest = _sh_os_shown(backing, name);
    if (*rest == '\0' || strchr(rest, '/') || strlen(rest) > 250)
      return _sh_fail(SH_EINVAL, "shared heap name '%s' must be 1-250 characters without '/'", rest);
  }
  return SH_OK;
}

/* A heap that is not there (open, unlink), named as its user wrote it. */
static int sh_missing(sh_backing_t backing, const char *name) {
  return _sh_fail(SH_ENOENT, backing == SH_BACKING_SHM ? "no heap named '%s'" : "no heap file '%s'",
                  _sh_os_shown(backing, name));
}

int _sh_os_map(int fd, uint64_t size, int read_only, uint8_t **base) {
  int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
  int flags = MAP_NORESERVE | (fd < 0 ? MAP_PRIVATE | MAP_ANONYMOUS : MAP_SHARED);
  void *p = mmap(NULL, (size_t)size, prot, flags, fd, 0);
  if (p == MAP_FAILED)
    return _sh_fail(errno == ENOMEM ? SH_ENOMEM : SH_ESYS,
                    "mmap of %llu bytes failed: %s (more than this process's address space or the kernel's "
                    "overcommit limit allows: give the heap a smaller size)",
                    (unsigned long long)size, strerror(errno));
  *base = p;
  return SH_OK;
}

int _sh_os_create(sh_backing_t backing, const char *name, uint64_t size, int *fd_out,
                  uint8_t **base) {
  int rc = sh_check_name(backing, name);
  if (rc) return rc;
  int fd = -1;
  const char *shown = _sh_os_shown(backing, name);
  if (backing != SH_BACKING_ANON) {
    fd = sh_open_backing(backing, name, O_RDWR | O_CREAT | O_EXCL);
    if (fd < 0) {
      if (errno == EEXIST)
        return _sh_fail(SH_EEXIST, backing == SH_BACKING_SHM ? "a heap named '%s' already exists" : "'%s' exists already",
                        shown);
      return _sh_fail(SH_ESYS, "cannot create '%s': %s", shown, strerror(errno));
    }
    /* Reserve every byte now: on tmpfs an unreserved page faults with SIGBUS
     * when /dev/shm fills, long after creation said yes. */
    int err = posix_fallocate(fd, 0, (off_t)size);
    if (err) {
      close(fd);
      sh_unlink(backing, name);
      if (err == ENOSPC || err == EFBIG)
        return _sh_fail(SH_ENOSPC, "no room to reserve %llu bytes for '%s' (%s)",
                        (unsigned long long)size, shown,
                        backing == SH_BACKING_SHM ? "/dev/shm is too small" : strerror(err));
      return _sh_fail(SH_ESYS, "cannot reserve %llu bytes for '%s': %s",
                      (unsigned long long)size, shown, strerror(err));
    }
  }
  rc = _sh_os_map(fd, size, 0, base);
  if (rc) {
    if (fd >= 0) {
      close(fd);
      sh_unlink(backing, name);
    }
    return rc;
  }
  *fd_out = fd;
  return SH_OK;
}

int _sh_os_open(sh_backing_t backing, const char *name, int read_only, int *fd_out,
                uint64_t *size) {
  if (backing == SH_BACKING_ANON) return _sh_fail(SH_EINVAL, "a private heap cannot be attached");
  int rc = sh_check_name(backing, name);
  if (rc) return rc;
  int fd = sh_open_backing(backing, name, read_only ? O_RDONLY : O_RDWR);
  const char *shown = _sh_os_shown(backing, name);
  if (fd < 0) {
    if (errno == ENOENT) return sh_missing(backing, name);
    return _sh_fail(SH_ESYS, "cannot open '%s': %s", shown, strerror(errno));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return _sh_fail(SH_ESYS, "cannot stat '%s': %s", shown, strerror(e));
  }
  *fd_out = fd;
  *size = (uint64_t)st.st_size;
  return SH_OK;
}

void _sh_os_unmap(uint8_t *base, uint64_t size, int fd) {
  if (base) munmap(base, (size_t)size);
  if (fd >= 0) close(fd);
}

int sh_unlink(sh_backing_t backing, const char *name) {
  int rc = sh_check_name(backing, name);
  if (rc) return rc;
  if (backing == SH_BACKING_ANON) return SH_OK;
  int r = backing == SH_BACKING_SHM ? shm_unlink(name) : unlink(name);
  if (r != 0) {
    if (errno == ENOENT) return sh_missing(backing, name);
    return _sh_fail(SH_ESYS, "cannot unlink '%s': %s", _sh_os_shown(backing, name), strerror(errno));
  }
  return SH_OK;
}

uint64_t _sh_os_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* getpid() is a system call (about 140 ns here), and pins, owner creation
 * and thread-cache binding ask it on every call: it is asked once per
 * process, and forgotten in a fork's child. */
static _Atomic int32_t sh_self_pid;
static pthread_once_t sh_pid_once = PTHREAD_ONCE_INIT;
static void sh_pid_forget(void) { sh_atomic_store_relaxed(&sh_self_pid, 0); }
static void sh_pid_watch_forks(void) { pthread_atfork(NULL, NULL, sh_pid_forget); }

int32_t _sh_os_pid(void) {
  int32_t pid = sh_atomic_load_relaxed(&sh_self_pid);
  if (sh_likely(pid != 0)) return pid;
  pthread_once(&sh_pid_once, sh_pid_watch_forks);
  pid = (int32_t)getpid();
  sh_atomic_store_relaxed(&sh_self_pid, pid);
  return pid;
}

/* Page keys only need to differ, not to be secret: a per-thread splitmix64,
 * seeded once from the kernel, saves a system call per page formatted. */
uint32_t _sh_os_random32(void) {
  static _Thread_local uint64_t state;
  if (state == 0 && getrandom(&state, sizeof state, GRND_NONBLOCK) != (ssize_t)sizeof state)
    state = _sh_os_now_ns();
  uint64_t z = (state += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return (uint32_t)((z ^ (z >> 31)) >> 32);
}

int sh_process_start_time(int pid, uint64_t *start_time) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? SH_ENOENT : _sh_fail(SH_ESYS, "%s: %s", path, strerror(errno));
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return SH_ENOENT;
  buf[n] = '\0';
  /* The command name may hold spaces and parens: fields resume after the last ')'. */
  char *p = strrchr(buf, ')');
  if (!p) return _sh_fail(SH_ESYS, "%s: unexpected format", path);
  p += 2; /* now at field 3, the state */
  if (*p == 'Z' || *p == 'X') return SH_ENOENT; /* a zombie has finished running */
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  if (!p) return _sh_fail(SH_ESYS, "%s: unexpected format", path);
  *start_time = strtoull(p, NULL, 10);
  return SH_OK;
}

int sh_process_alive(int pid, uint64_t start) {
  /* this process, as its owners and pins name it: no /proc read (its start
   * time is cached) */
  if (pid == _sh_os_pid() && start != 0 && start == _sh_own_start_time(pid)) return 1;
  uint64_t now_start;
  int rc = sh_process_start_time(pid, &now_start);
  if (rc == SH_ENOENT) return 0;
  if (rc) return rc;
  return now_start == start;
}

/* ---- Futexes: waits other processes wake (not FUTEX_PRIVATE) ---------------- */

/* A deadline: -1 for none; 0, long past, for a timeout of 0 (a try: no
 * clock read, as a receive tries once before every wait) */
int64_t _sh_deadline_ns(int64_t timeout_ns) {
  if (timeout_ns <= 0) return timeout_ns < 0 ? -1 : 0;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec + timeout_ns;
}

bool _sh_past(int64_t deadline_ns) {
  if (deadline_ns < 0) return false;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec >= deadline_ns;
}

bool _sh_futex_wait(_Atomic uint32_t *word, uint32_t seen, int64_t deadline_ns) {
  struct timespec ts, *tsp = NULL;
  if (deadline_ns >= 0) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t left = deadline_ns - ((int64_t)now.tv_sec * 1000000000 + now.tv_nsec);
    if (left <= 0) return false;
    ts.tv_sec = left / 1000000000;
    ts.tv_nsec = left % 1000000000;
    tsp = &ts;
  }
  return syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, tsp, NULL, 0) == -1 && errno == EINTR;
}

void _sh_futex_wake(_Atomic uint32_t *word) { syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0); }

/* Reading /proc costs more than the rest of creating an owner: remember this
 * process's start time, per thread so no lock is needed, keyed by pid so a
 * forked child reads its own. */
uint64_t _sh_own_start_time(int32_t pid) {
  static _Thread_local int32_t cached_pid;
  static _Thread_local uint64_t cached_start;
  if (cached_pid != pid) {
    uint64_t start = 0;
    if (sh_process_start_time(pid, &start) != SH_OK) return 0;
    cached_start = start;
    cached_pid = pid;
  }
  return cached_start;
}
