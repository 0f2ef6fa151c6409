/* Status names and the per-thread error message. */
#include <stdarg.h>
#include <stdio.h>

#include "sh_internal.h"

static _Thread_local char sh_error_message[512];

int _sh_fail(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sh_error_message, sizeof sh_error_message, fmt, ap);
  va_end(ap);
  return status;
}

const char *sh_last_error(void) { return sh_error_message; }

const char *_sh_part_name(int partition) {
  static const char *const names[SH_NPARTITIONS] = {"context", "shared", "comm", "system"};
  return partition >= 0 && partition < SH_NPARTITIONS ? names[partition] : "?";
}

const char *sh_strerror(int status) {
  switch (status) {
    case SH_OK: return "SH_OK";
    case SH_EINVAL: return "SH_EINVAL";
    case SH_EFULL: return "SH_EFULL";
    case SH_ENOMEM: return "SH_ENOMEM";
    case SH_ESYS: return "SH_ESYS";
    case SH_ENOSPC: return "SH_ENOSPC";
    case SH_EEXIST: return "SH_EEXIST";
    case SH_ENOENT: return "SH_ENOENT";
    case SH_ETRUNCATED: return "SH_ETRUNCATED";
    case SH_EMAGIC: return "SH_EMAGIC";
    case SH_EVERSION: return "SH_EVERSION";
    case SH_ECHECKSUM: return "SH_ECHECKSUM";
    case SH_ECORRUPT: return "SH_ECORRUPT";
    case SH_EBADPTR: return "SH_EBADPTR";
    case SH_EDOUBLEFREE: return "SH_EDOUBLEFREE";
    case SH_EOWNER: return "SH_EOWNER";
    case SH_ETOOMANY: return "SH_ETOOMANY";
    case SH_EPINNED: return "SH_EPINNED";
    case SH_ESTATE: return "SH_ESTATE";
    case SH_EAGAIN: return "SH_EAGAIN";
    case SH_ETIMEDOUT: return "SH_ETIMEDOUT";
    case SH_ECLOSED: return "SH_ECLOSED";
    case SH_ECANCELED: return "SH_ECANCELED";
    case SH_EINTR: return "SH_EINTR";
    default: return "SH_E?";
  }
}
