/* A truncated, damaged, foreign or wrong-version arena is refused with its own
 * error, never a crash: attach validates before it trusts. */
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sh_types.h"
#include "swarmheap.h"
#include "testhelper.h"

static char path[256], good[256];

static void copy_file(const char *from, const char *to) {
  static char buf[1 << 16];
  int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) break;
  close(in);
  close(out);
}

static void patch(const char *file, off_t at, const void *bytes, size_t n) {
  int fd = open(file, O_WRONLY);
  if (pwrite(fd, bytes, n, at) != (ssize_t)n) CHECK("pwrite", 0);
  close(fd);
}

static sh_header_t read_header(const char *file) {
  sh_header_t h;
  int fd = open(file, O_RDONLY);
  if (read(fd, &h, sizeof h) != (ssize_t)sizeof h) CHECK("read header", 0);
  close(fd);
  return h;
}

static uint64_t fnv(const sh_header_t *hdr) {
  const uint8_t *p = (const uint8_t *)hdr + offsetof(sh_header_t, format_version);
  const uint8_t *end = (const uint8_t *)hdr + offsetof(sh_header_t, checksum);
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  for (; p < end; p++) h = (h ^ *p) * UINT64_C(0x100000001b3);
  return h;
}

static int attach_status(void) {
  sh_arena_t *a = NULL;
  int rc = sh_attach(&a, SH_BACKING_FILE, path, 0);
  if (rc == SH_OK) sh_close(a);
  return rc;
}

/* A field changed and the checksum recomputed, as a buggy writer would: the
 * field checks, not the checksum, must catch it. */
static int attach_with_field(size_t at, const void *value, size_t n) {
  copy_file(good, path);
  sh_header_t h = read_header(path);
  memcpy((uint8_t *)&h + at, value, n);
  h.checksum = fnv(&h);
  patch(path, 0, &h, offsetof(sh_header_t, checksum) + sizeof h.checksum);
  return attach_status();
}

int main(void) {
  snprintf(good, sizeof good, "/tmp/sh_header_good_%d", (int)getpid());
  snprintf(path, sizeof path, "/tmp/sh_header_test_%d", (int)getpid());
  unlink(good);
  sh_arena_t *a;
  REQUIRE("create file arena", sh_create(&a, SH_BACKING_FILE, good, 4u << 20, NULL) == SH_OK);
  uint64_t off;
  sh_alloc(a, 0, SH_PART_CONTEXT, 64, &off);
  sh_close(a);

  copy_file(good, path);
  CHECK("intact attaches", attach_status() == SH_OK);

  CHECK("empty file: truncated", truncate(path, 0) == 0 && attach_status() == SH_ETRUNCATED);
  copy_file(good, path);
  CHECK("shorter than a header", truncate(path, 100) == 0 && attach_status() == SH_ETRUNCATED);
  copy_file(good, path);
  CHECK("half the arena", truncate(path, 2u << 20) == 0 && attach_status() == SH_ETRUNCATED);
  CHECK("message says truncated", strstr(sh_last_error(), "truncated") != NULL);

  copy_file(good, path);
  uint64_t bad_magic = 0x1122334455667788ull;
  patch(path, 0, &bad_magic, 8);
  CHECK("wrong magic", attach_status() == SH_EMAGIC);

  copy_file(good, path);
  uint32_t v = SH_FORMAT_VERSION + 1;
  patch(path, offsetof(sh_header_t, format_version), &v, 4);
  CHECK("wrong version", attach_status() == SH_EVERSION);
  char ours[32], theirs[32];
  snprintf(ours, sizeof ours, "version %u", SH_FORMAT_VERSION);
  snprintf(theirs, sizeof theirs, "version %u", SH_FORMAT_VERSION + 1);
  CHECK("message names both versions", strstr(sh_last_error(), ours) && strstr(sh_last_error(), theirs));

  int fd = open(path, O_WRONLY | O_TRUNC);
  static uint8_t noise[1 << 16];
  for (size_t i = 0; i < sizeof noise; i++) noise[i] = (uint8_t)(i * 7919u >> 3);
  if (write(fd, noise, sizeof noise) != (ssize_t)sizeof noise) CHECK("write noise", 0);
  close(fd);
  CHECK("foreign file", attach_status() == SH_EMAGIC);

  /* one flipped byte anywhere in the immutable header */
  int flips = 0, caught = 0;
  for (size_t at = offsetof(sh_header_t, arena_size); at < offsetof(sh_header_t, checksum) + 8; at++) {
    copy_file(good, path);
    sh_header_t h = read_header(path);
    uint8_t byte = ((uint8_t *)&h)[at] ^ 0x40;
    patch(path, (off_t)at, &byte, 1);
    flips++;
    caught += attach_status() == SH_ECHECKSUM;
  }
  CHECK("every flipped byte caught by the checksum", caught == flips);
  copy_file(good, path);
  uint8_t hb = 0x40 ^ 0x01;
  patch(path, offsetof(sh_header_t, header_size), &hb, 1);
  CHECK("flipped header_size", attach_status() == SH_ECHECKSUM);

  /* each field validated on its own */
  uint32_t u32;
  uint64_t u64;
  u64 = 8u << 20;
  CHECK("arena_size beyond the file", attach_with_field(offsetof(sh_header_t, arena_size), &u64, 8) == SH_ETRUNCATED);
  u64 = 2u << 20;
  CHECK("arena_size short of the file", attach_with_field(offsetof(sh_header_t, arena_size), &u64, 8) == SH_ECORRUPT);
  u32 = 65536 + 16;
  CHECK("page_size", attach_with_field(offsetof(sh_header_t, page_size), &u32, 4) == SH_ECORRUPT);
  CHECK("message names the field", strstr(sh_last_error(), "page_size") != NULL);
  u32 = 3;
  CHECK("page_shift", attach_with_field(offsetof(sh_header_t, page_shift), &u32, 4) == SH_ECORRUPT);
  u32 = 999;
  CHECK("total_pages", attach_with_field(offsetof(sh_header_t, total_pages), &u32, 4) == SH_ECORRUPT);
  CHECK("meta_pages", attach_with_field(offsetof(sh_header_t, meta_pages), &u32, 4) == SH_ECORRUPT);
  CHECK("nclasses", attach_with_field(offsetof(sh_header_t, nclasses), &u32, 4) == SH_ECORRUPT);
  CHECK("small_limit", attach_with_field(offsetof(sh_header_t, small_limit), &u32, 4) == SH_ECORRUPT);
  u32 = 0;
  CHECK("max_owners", attach_with_field(offsetof(sh_header_t, max_owners), &u32, 4) == SH_ECORRUPT);
  CHECK("nstripes", attach_with_field(offsetof(sh_header_t, nstripes), &u32, 4) == SH_ECORRUPT);
  u64 = 1ull << 40;
  CHECK("pages_off", attach_with_field(offsetof(sh_header_t, pages_off), &u64, 8) == SH_ECORRUPT);
  CHECK("bitmap_off", attach_with_field(offsetof(sh_header_t, bitmap_off), &u64, 8) == SH_ECORRUPT);
  CHECK("owners_off", attach_with_field(offsetof(sh_header_t, owners_off), &u64, 8) == SH_ECORRUPT);
  CHECK("bins_off", attach_with_field(offsetof(sh_header_t, bins_off), &u64, 8) == SH_ECORRUPT);
  CHECK("stripes_off", attach_with_field(offsetof(sh_header_t, stripes_off), &u64, 8) == SH_ECORRUPT);
  CHECK("meta_end", attach_with_field(offsetof(sh_header_t, meta_end), &u64, 8) == SH_ECORRUPT);
  u32 = 17;
  CHECK("class_size", attach_with_field(offsetof(sh_header_t, class_size) + 12, &u32, 4) == SH_ECORRUPT);
  u32 = 5;
  CHECK("parts.first_page", attach_with_field(offsetof(sh_header_t, parts[SH_PART_SHARED].first_page), &u32, 4) == SH_ECORRUPT);
  u32 = 100000;
  CHECK("parts.npages", attach_with_field(offsetof(sh_header_t, parts[SH_PART_COMM].npages), &u32, 4) == SH_ECORRUPT);
  u32 = 0;
  CHECK("parts.first_usable", attach_with_field(offsetof(sh_header_t, parts[SH_PART_SYSTEM].first_usable), &u32, 4) == SH_ECORRUPT);
  u64 = 12345;
  CHECK("parts.offset", attach_with_field(offsetof(sh_header_t, parts[SH_PART_CONTEXT].offset), &u64, 8) == SH_ECORRUPT);
  CHECK("parts.size", attach_with_field(offsetof(sh_header_t, parts[SH_PART_CONTEXT].size), &u64, 8) == SH_ECORRUPT);
  u32 = 0;
  CHECK("parts.ratio_ppm", attach_with_field(offsetof(sh_header_t, parts[SH_PART_COMM].ratio_ppm), &u32, 4) == SH_ECORRUPT);
  u32 = 123;
  CHECK("header_size", attach_with_field(offsetof(sh_header_t, header_size), &u32, 4) == SH_ECORRUPT);

  copy_file(good, path);
  REQUIRE("attach after all that", sh_attach(&a, SH_BACKING_FILE, path, 0) == SH_OK);
  CHECK("the copy is consistent", sh_check(a) == SH_OK);
  CHECK("its block is there", sh_free(a, off) == SH_OK);
  sh_close(a);
  sh_unlink(SH_BACKING_FILE, path);
  sh_unlink(SH_BACKING_FILE, good);
  CHECK("missing file", attach_status() == SH_ENOENT);
  return check_summary("test_header");
}
