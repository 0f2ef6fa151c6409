/* Runtime invariants, in levels (mimalloc's mi_assert_internal and
 * mi_assert_expensive):
 *   SH_DEBUG=0  (release) no check is compiled in;
 *   SH_DEBUG=1  cheap checks: one compare on the path they guard;
 *   SH_DEBUG=2  expensive checks too: walks of a stack or a list.
 * The C tests and the sanitizer builds use level 2; the extension's release
 * build level 0. A failed assertion names its file, line and expression and
 * aborts, so a sanitizer run stops at the first broken invariant. */
#ifndef SH_DEBUG_H
#define SH_DEBUG_H

#ifndef SH_DEBUG
#define SH_DEBUG 0
#endif

#if SH_DEBUG > 0
#include <stdio.h>
#include <stdlib.h>
#define sh_assert_fail_(expr, file, line) \
  (fprintf(stderr, "swarmheap: assertion failed: %s (%s:%d)\n", expr, file, line), abort())
#define sh_assert_internal(x) ((x) ? (void)0 : sh_assert_fail_(#x, __FILE__, __LINE__))
#else
#define sh_assert_internal(x) ((void)0)
#endif

#if SH_DEBUG > 1
#define sh_assert_expensive(x) sh_assert_internal(x)
#else
#define sh_assert_expensive(x) ((void)0)
#endif

#endif
