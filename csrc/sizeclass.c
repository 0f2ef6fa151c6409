/* Size classes: 16-byte steps to 128 B, then 4 classes per doubling (the
 * jemalloc/snmalloc/mimalloc spacing, worst internal waste about 20 %) up to
 * half a page; larger requests take runs of whole pages. */
#include "sh_internal.h"

uint32_t _sh_classes_build(uint32_t page_size, uint32_t *sizes, uint32_t *small_limit) {
  uint32_t limit = page_size / 2, n = 0;
  for (uint32_t s = 16; s <= 128; s += 16) sizes[n++] = s;
  for (uint32_t base = 128; base < limit && n < SH_MAX_CLASSES; base *= 2)
    for (uint32_t i = 1; i <= 4 && n < SH_MAX_CLASSES; i++) sizes[n++] = base + i * (base / 4);
  *small_limit = sizes[n - 1];
  return n;
}

void _sh_classes_load(sh_arena_t *arena) {
  const sh_header_t *hdr = arena->hdr;
  arena->nclasses = hdr->nclasses;
  arena->small_limit = hdr->small_limit;
  for (uint32_t c = 0; c < hdr->nclasses; c++) {
    sh_class_t *cls = &arena->classes[c];
    cls->size = hdr->class_size[c];
    cls->capacity = hdr->page_size / cls->size;
    cls->div_magic = UINT64_MAX / cls->size + 1;
    cls->last_top = ((cls->capacity - 1) * cls->size >> SH_UNIT_SHIFT) + 1;
    /* a nursery page ends in a map of one owner word per block */
    uint32_t beside_map = hdr->page_size / (cls->size + (uint32_t)sizeof(uint32_t));
    bool nursery = cls->size >= SH_NURSERY_MIN_BLOCK &&
                   ((cls->size <= SH_NURSERY_MAX_BLOCK && beside_map >= SH_NURSERY_MIN_PER_PAGE) ||
                    (cls->size <= SH_NURSERY_LOSSLESS_MAX && beside_map == cls->capacity &&
                     beside_map >= SH_NURSERY_LOSSLESS_MIN_PER_PAGE));
    cls->nursery_capacity = nursery ? beside_map : 0;
  }
  /* the formula below has a branch random sizes mispredict; a table has none */
  for (uint32_t i = 0; i <= SH_DIRECT_SIZES; i++) {
    uint32_t c = 0;
    while (c + 1 < hdr->nclasses && arena->classes[c].size < i * 16u) c++;
    arena->class_of[i] = (uint8_t)c;
  }
}
