/* Unit tests of the C core: options, size classes, blocks, partitions,
 * owners, pins, corruption detection, shared mappings, lock repair. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sh_channel.h"
#include "sh_internal.h"
#include "sh_nursery.h"
#include "sh_page.h"
#include "sh_track.h"
#include "swarmheap.h"
#include "testhelper.h"

static void test_options(void) {
  sh_options_t o;
  sh_arena_t *a = NULL;
  sh_options_init(&o);
  o.ratios[0] = 0.5;
  CHECK("ratios must sum to 1", sh_create(&a, SH_BACKING_ANON, NULL, 64 * MiB, &o) == SH_EINVAL);
  CHECK("message names the sum", strstr(sh_last_error(), "sum") != NULL);
  sh_options_init(&o);
  o.ratios[1] = 0;
  o.ratios[0] = 0.7;
  CHECK("each ratio above 0", sh_create(&a, SH_BACKING_ANON, NULL, 64 * MiB, &o) == SH_EINVAL);
  sh_options_init(&o);
  o.page_size = 65536 + 4096;
  CHECK("page size power of two", sh_create(&a, SH_BACKING_ANON, NULL, 64 * MiB, &o) == SH_EINVAL);
  o.page_size = 2048;
  CHECK("page size at least 4 KiB", sh_create(&a, SH_BACKING_ANON, NULL, 64 * MiB, &o) == SH_EINVAL);
  sh_options_init(&o);
  CHECK("arena too small", sh_create(&a, SH_BACKING_ANON, NULL, 100000, &o) == SH_EINVAL);
  CHECK("no handle on failure", a == NULL);
  CHECK("shm needs a name", sh_create(&a, SH_BACKING_SHM, NULL, 64 * MiB, &o) == SH_EINVAL);
  CHECK("shm name without slash", sh_create(&a, SH_BACKING_SHM, "/a/b", 64 * MiB, &o) == SH_EINVAL);
}

static void test_layout(void) {
  sh_arena_t *a = make_anon(64 * MiB, 65536);
  sh_arena_info_t info;
  sh_arena_info(a, &info);
  CHECK("size kept", info.size == 64 * MiB);
  CHECK("metadata at most 1 %", info.metadata_bytes * 100 <= info.size);
  CHECK("system first", info.part_offset[SH_PART_SYSTEM] == 0);
  double share[4] = {0.4, 0.3, 0.2, 0.1};
  for (int p = 0; p < 4; p++) {
    double got = (double)info.part_size[p] / (double)info.size;
    CHECK("partition share within a page", got > share[p] - 0.02 && got < share[p] + 0.02);
    CHECK("whole pages", info.part_size[p] % info.page_size == 0);
  }
  /* size classes: 16-byte steps, then at most 20 % waste, monotone */
  uint32_t prev = 0;
  for (uint32_t c = 0; c < info.nclasses; c++) {
    CHECK("classes increase", info.class_size[c] > prev);
    CHECK("classes are 16-byte multiples", info.class_size[c] % 16 == 0);
    prev = info.class_size[c];
  }
  for (size_t s = 1; s <= info.small_limit; s++) {
    uint64_t g = sh_good_size(a, s);
    if (g < s || (s > 128 && (g - s) * 5 > g)) {
      CHECK("good size fits and wastes at most 20 %", 0);
      break;
    }
  }
  CHECK("classes reach half a page", info.small_limit == info.page_size / 2);
  CHECK("above the limit: whole pages", sh_good_size(a, info.small_limit + 1) == info.page_size);
  CHECK("check clean", sh_check(a) == SH_OK);
  sh_close(a);
}

static void test_blocks(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint64_t off[64];
  for (int i = 0; i < 64; i++) {
    CHECK("alloc", sh_alloc(a, 0, SH_PART_CONTEXT, (size_t)(i * 37 + 1), &off[i]) == SH_OK);
    CHECK("16-byte aligned", off[i] % 16 == 0);
    memset(sh_ptr(a, off[i]), i, (size_t)(i * 37 + 1));
  }
  sh_block_info_t bi;
  CHECK("block info", sh_block_info(a, off[10], &bi) == SH_OK && bi.usable_size >= 371 &&
                          bi.owner == 0 && bi.partition == SH_PART_CONTEXT);
  CHECK("in use counted", in_use(a, SH_PART_CONTEXT) > 0);
  for (int i = 0; i < 64; i++) {
    const uint8_t *p = sh_ptr(a, off[i]);
    CHECK("data intact", p[0] == (uint8_t)i && p[i * 37] == (uint8_t)i);
    CHECK("free", sh_free(a, off[i]) == SH_OK);
  }
  CHECK("double free detected", sh_free(a, off[5]) == SH_EDOUBLEFREE);
  CHECK("all returned", in_use(a, SH_PART_CONTEXT) == 0);
  uint64_t x;
  CHECK("alloc again", sh_alloc(a, 0, SH_PART_CONTEXT, 100, &x) == SH_OK);
  CHECK("misaligned free", sh_free(a, x + 16) == SH_EBADPTR);
  CHECK("metadata free", sh_free(a, 64) == SH_EBADPTR);
  CHECK("outside free", sh_free(a, 1ull << 40) == SH_EBADPTR);
  CHECK("free page", sh_free(a, 15 * MiB) == SH_EBADPTR);
  CHECK("bad partition", sh_alloc(a, 0, (sh_partition_t)7, 16, &x) == SH_EINVAL);
  CHECK("bad owner", sh_alloc(a, 100000, SH_PART_CONTEXT, 16, &x) == SH_EOWNER);
  CHECK("larger than its partition", sh_alloc(a, 0, SH_PART_COMM, 8 * MiB, &x) == SH_EFULL);
  CHECK("message names the partition", strstr(sh_last_error(), "comm") != NULL);
  uint64_t big;
  CHECK("large alloc", sh_alloc(a, 0, SH_PART_SHARED, 300000, &big) == SH_OK);
  CHECK("page aligned", big % 65536 == 0);
  memset(sh_ptr(a, big), 0xAB, 300000);
  CHECK("large info", sh_block_info(a, big, &bi) == SH_OK && bi.size_class == -1 && bi.usable_size == 5 * 65536);
  CHECK("inside large is not a block", sh_free(a, big + 65536) == SH_EBADPTR);
  CHECK("large free", sh_free(a, big) == SH_OK);
  CHECK("large double free", sh_free(a, big) == SH_EDOUBLEFREE || sh_free(a, big) == SH_EBADPTR);
  uint64_t z;
  CHECK("calloc", sh_calloc(a, 0, SH_PART_CONTEXT, 100, &z) == SH_OK);
  CHECK("calloc zeroed", ((uint8_t *)sh_ptr(a, z))[99] == 0);
  CHECK("check clean", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A full partition refuses, the others still serve, and it empties for reuse by another class. */
static void test_exhaustion(void) {
  sh_arena_t *a = make_anon(8 * MiB, 4096);
  static uint64_t offs[1 << 18];
  for (int part = 0; part < SH_NPARTITIONS; part++) {
    size_t n = 0, sizes[2] = {48, 1000};
    uint64_t baseline = in_use(a, part); /* `system` holds the nursery's records from the start */
    for (int round = 0; round < 2; round++) {
      n = 0;
      int rc;
      while ((rc = sh_alloc(a, 0, (sh_partition_t)part, sizes[round], &offs[n])) == SH_OK) n++;
      CHECK("fills to SH_EFULL", rc == SH_EFULL && n > 0);
      uint64_t other;
      int op = (part + 1) % SH_NPARTITIONS;
      CHECK("other partitions still serve", sh_alloc(a, 0, (sh_partition_t)op, 64, &other) == SH_OK);
      sh_free(a, other);
      sh_partition_stats_t st;
      sh_partition_stats(a, (sh_partition_t)part, &st);
      CHECK("failure counted", st.failures > 0);
      CHECK("full: nearly all pages used", st.pages_used == st.pages_total);
      for (size_t i = 0; i < n; i++) sh_free(a, offs[i]);
      CHECK("empties", in_use(a, part) == baseline);
      CHECK("check after emptying", sh_check(a) == SH_OK);
    }
  }
  sh_close(a);
}

static void test_owners(void) {
  sh_arena_t *a = make_anon(64 * MiB, 65536);
  uint32_t id, gen;
  CHECK("owner create", sh_owner_create(a, 7, &id, &gen) == SH_OK && id != 0 && gen >= 1);
  uint64_t before = in_use(a, SH_PART_CONTEXT), off = 0;
  for (int i = 0; i < 100000; i++)
    if (sh_alloc(a, id, SH_PART_CONTEXT, 16 + (size_t)(i % 8) * 16, &off) != SH_OK) {
      CHECK("100000 owner blocks", 0);
      break;
    }
  uint64_t large;
  CHECK("owner large", sh_alloc(a, id, SH_PART_SHARED, 200000, &large) == SH_OK);
  sh_owner_info_t oi;
  CHECK("owner info", sh_owner_info(a, id, &oi) == SH_OK && oi.blocks == 100001 && oi.kind == 7 &&
                          oi.pages[SH_PART_CONTEXT] > 0 && oi.state == SH_OWNER_LIVE && oi.pid == getpid());
  CHECK("owner process alive", sh_owner_process_alive(a, id) == 1);
  CHECK("wrong generation", sh_owner_recycle(a, id, gen + 1) == SH_EOWNER);
  CHECK("owner 0 never recycled", sh_owner_recycle(a, 0, 1) == SH_EINVAL);
  CHECK("recycle", sh_owner_recycle(a, id, gen) == SH_OK);
  CHECK("in use back", in_use(a, SH_PART_CONTEXT) == before && in_use(a, SH_PART_SHARED) == 0);
  CHECK("recycled owner refuses allocs", sh_alloc(a, id, SH_PART_CONTEXT, 16, &off) == SH_EOWNER);
  CHECK("stale block is not live", sh_free(a, large) == SH_EBADPTR);
  CHECK("recycle twice", sh_owner_recycle(a, id, gen) == SH_EOWNER);
  uint32_t id2, gen2;
  CHECK("slot reuse bumps generation", sh_owner_create(a, 1, &id2, &gen2) == SH_OK && (id2 != id || gen2 != gen));
  /* pins defer the recycle */
  CHECK("alloc pinned owner", sh_alloc(a, id2, SH_PART_CONTEXT, 64, &off) == SH_OK);
  CHECK("pin", sh_owner_pin(a, id2, gen2) == SH_OK);
  CHECK("recycle deferred", sh_owner_recycle(a, id2, gen2) == SH_EPINNED);
  CHECK("state completed", sh_owner_info(a, id2, &oi) == SH_OK && oi.state == SH_OWNER_COMPLETED && oi.blocks == 1);
  CHECK("pinned memory still live", sh_block_info(a, off, &(sh_block_info_t){0}) == SH_OK);
  int recycled = 0;
  CHECK("unpin recycles", sh_owner_unpin(a, id2, gen2, &recycled) == SH_OK && recycled == 1);
  CHECK("slot free after deferred recycle", sh_owner_info(a, id2, &oi) == SH_EOWNER);
  CHECK("unpin a gone owner", sh_owner_unpin(a, id2, gen2, NULL) == SH_EOWNER);
  /* states */
  uint32_t id3, gen3;
  sh_owner_create(a, 2, &id3, &gen3);
  CHECK("set state", sh_owner_set_state(a, id3, gen3, SH_OWNER_LIVE, SH_OWNER_OFFLOADED) == SH_OK);
  CHECK("offloaded refuses allocs", sh_alloc(a, id3, SH_PART_CONTEXT, 16, &off) == SH_EOWNER);
  CHECK("set state compare fails", sh_owner_set_state(a, id3, gen3, SH_OWNER_LIVE, SH_OWNER_DEAD) == SH_ESTATE);
  {
    /* a sweep's verdict stands only for the holder the slot has under the lock */
    uint32_t id4, gen4;
    sh_owner_info_t held;
    CHECK("owner for a verdict", sh_owner_create(a, 3, &id4, &gen4) == SH_OK && sh_owner_info(a, id4, &held) == SH_OK);
    CHECK("verdict on another start time refused",
          sh_owner_set_dead(a, id4, gen4, SH_OWNER_LIVE, held.pid, held.pid_start_time + 1) == SH_ESTATE);
    CHECK("verdict on another pid refused",
          sh_owner_set_dead(a, id4, gen4, SH_OWNER_LIVE, held.pid + 1, held.pid_start_time) == SH_ESTATE);
    CHECK("verdict in another state refused",
          sh_owner_set_dead(a, id4, gen4, SH_OWNER_COMPLETED, held.pid, held.pid_start_time) == SH_ESTATE);
    CHECK("verdict of a wrong generation refused",
          sh_owner_set_dead(a, id4, gen4 + 1, SH_OWNER_LIVE, held.pid, held.pid_start_time) == SH_EOWNER);
    CHECK("still live", sh_owner_info(a, id4, &held) == SH_OK && held.state == SH_OWNER_LIVE);
    CHECK("verdict on its holder", sh_owner_set_dead(a, id4, gen4, SH_OWNER_LIVE, held.pid, held.pid_start_time) == SH_OK &&
                                       sh_owner_info(a, id4, &held) == SH_OK && held.state == SH_OWNER_DEAD);
    CHECK("dead recycled", sh_owner_recycle(a, id4, gen4) == SH_OK);
  }
  CHECK("touch", sh_owner_touch(a, id3, gen3) == SH_OK);
  CHECK("user word", sh_owner_set_user_word(a, id3, gen3, sh_owner_offloads(a, id3), 0, 42) == SH_OK &&
                         sh_owner_set_user_word(a, id3, gen3, sh_owner_offloads(a, id3), 0, 43) == SH_ESTATE);
  uint64_t word = 0;
  CHECK("user word reads back", sh_owner_user_word(a, id3, gen3, &word) == SH_OK && word == 42);
  CHECK("user word of a wrong generation", sh_owner_user_word(a, id3, gen3 + 1, &word) == SH_EOWNER);
  CHECK("recycle offloaded", sh_owner_recycle(a, id3, gen3) == SH_OK);
  CHECK("user word of a recycled owner", sh_owner_user_word(a, id3, gen3, &word) == SH_EOWNER);
  /* a dead process is seen as dead */
  pid_t child = fork();
  if (child == 0) {
    uint32_t cid, cgen;
    _exit(sh_owner_create(a, 3, &cid, &cgen) == SH_OK ? 0 : 1);
  }
  waitpid(child, NULL, 0);
  CHECK("process start time", sh_process_start_time(getpid(), &(uint64_t){0}) == SH_OK);
  CHECK("dead pid has no start time", sh_process_start_time(child, &(uint64_t){0}) != SH_OK);
  CHECK("check clean", sh_check(a) == SH_OK);
  sh_close(a);
  /* a full owner table */
  sh_options_t o;
  sh_options_init(&o);
  o.max_owners = 4;
  REQUIRE("small table", sh_create(&a, SH_BACKING_ANON, NULL, 8 * MiB, &o) == SH_OK);
  int made = 0, rc;
  while ((rc = sh_owner_create(a, 0, &id, &gen)) == SH_OK) made++;
  CHECK("table fills", rc == SH_ETOOMANY && made == 3);
  sh_close(a);
}

static void test_owner_complete(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint32_t id, gen;
  sh_owner_create(a, 7, &id, &gen);
  uint64_t off, big;
  for (int i = 0; i < 1000; i++) sh_alloc(a, id, SH_PART_CONTEXT, 48, &off);
  sh_alloc(a, id, SH_PART_SHARED, 200000, &big);
  sh_free(a, off);
  sh_owner_info_t before, final;
  sh_owner_info(a, id, &before);
  CHECK("complete", sh_owner_complete(a, id, gen, &final) == SH_OK);
  CHECK("final figures as sh_owner_info gave them", final.blocks == 1000 && before.blocks == 1000 &&
                                                      final.bytes[SH_PART_CONTEXT] == 999 * 48 &&
                                                      final.bytes[SH_PART_SHARED] == before.bytes[SH_PART_SHARED] &&
                                                      final.kind == 7 && final.pages[SH_PART_CONTEXT] == before.pages[SH_PART_CONTEXT]);
  CHECK("recycled", sh_owner_generation(a, id) == 0 && in_use(a, SH_PART_CONTEXT) == 0 && in_use(a, SH_PART_SHARED) == 0);
  CHECK("twice refused", sh_owner_complete(a, id, gen, &final) == SH_EOWNER);
  sh_owner_create(a, 0, &id, &gen);
  sh_alloc(a, id, SH_PART_CONTEXT, 48, &off);
  sh_owner_pin(a, id, gen);
  CHECK("pinned complete defers", sh_owner_complete(a, id, gen, &final) == SH_EPINNED);
  CHECK("with its figures", final.blocks == 1 && final.state == SH_OWNER_COMPLETED && in_use(a, SH_PART_CONTEXT) == 48);
  int recycled = 0;
  CHECK("last unpin recycles", sh_owner_unpin(a, id, gen, &recycled) == SH_OK && recycled);
  /* the unpin that recycles reports what the completed owner held */
  sh_owner_create(a, 9, &id, &gen);
  sh_alloc(a, id, SH_PART_CONTEXT, 48, &off);
  sh_alloc(a, id, SH_PART_CONTEXT, 300, &off);
  sh_owner_pin(a, id, gen);
  sh_owner_pin(a, id, gen);
  CHECK("pinned twice, deferred", sh_owner_complete(a, id, gen, &final) == SH_EPINNED);
  memset(&final, 0xAB, sizeof final);
  CHECK("an unpin that does not recycle leaves *final",
        sh_owner_unpin_final(a, id, gen, 0, &recycled, &final) == SH_OK && !recycled && final.blocks == 0xABABABABABABABABull);
  CHECK("the last one fills it", sh_owner_unpin_final(a, id, gen, 0, &recycled, &final) == SH_OK && recycled &&
                                     final.kind == 9 && final.id == id && final.generation == gen && final.blocks == 2 &&
                                     final.bytes[SH_PART_CONTEXT] == 48 + 320 && in_use(a, SH_PART_CONTEXT) == 0);
  CHECK("owner 0 refused", sh_owner_complete(a, 0, 1, &final) == SH_EINVAL);
  /* a block of owner 0 the owner holds through its user word goes with it */
  uint64_t index, sys_before = in_use(a, SH_PART_SYSTEM);
  sh_owner_create(a, 0, &id, &gen);
  sh_alloc(a, 0, SH_PART_SYSTEM, 100, &index);
  CHECK("hold", sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), 0, sh_held_next(0, index)) == SH_OK);
  uint64_t held;
  CHECK("the word names it, first of its sequence", sh_owner_user_word(a, id, gen, &held) == SH_OK &&
                                                      sh_held_offset(held) == index && sh_held_seq(held) == 1 &&
                                                      sh_held_seq(sh_held_next(held, index)) == 2);
  /* a swap away and back to the same block still moves the word (no ABA) */
  CHECK("same block, new word", sh_held_next(held, index) != held);
  CHECK("it counts as the owner's", sh_owner_info(a, id, &before) == SH_OK && before.blocks == 1 &&
                                      before.bytes[SH_PART_SYSTEM] == 112);
  CHECK("complete", sh_owner_complete(a, id, gen, &final) == SH_OK && final.blocks == 1);
  CHECK("the held block went with it", in_use(a, SH_PART_SYSTEM) == sys_before);
  sh_block_info_t gone;
  CHECK("and is free", sh_block_info(a, index, &gone) == SH_EBADPTR);
  /* a restore that lost its blob gives the memory back only while RESTORING:
   * a restorer that finished (LIVE) keeps the agent */
  sh_owner_create(a, 0, &id, &gen);
  sh_alloc(a, id, SH_PART_CONTEXT, 48, &off);
  CHECK("unrestore of a live owner refused", sh_owner_unrestore(a, id, gen, &final) == SH_ESTATE &&
                                               in_use(a, SH_PART_CONTEXT) == 48);
  CHECK("restoring", sh_owner_set_state(a, id, gen, SH_OWNER_LIVE, SH_OWNER_RESTORING) == SH_OK);
  CHECK("unrestore", sh_owner_unrestore(a, id, gen, &final) == SH_OK && final.state == SH_OWNER_OFFLOADED &&
                         sh_owner_state(a, id) == SH_OWNER_OFFLOADED && in_use(a, SH_PART_CONTEXT) == 0 &&
                         sh_owner_generation(a, id) == gen);
  CHECK("twice refused", sh_owner_unrestore(a, id, gen, &final) == SH_ESTATE);
  /* an offload is of the index its snapshot read: an update after it
   * refuses the offload, and the word an offload leaves (sealed) refuses
   * every update that read the word while the owner was live */
  sh_owner_create(a, 0, &id, &gen);
  sh_alloc(a, id, SH_PART_CONTEXT, 48, &off);
  sh_alloc(a, 0, SH_PART_SYSTEM, 100, &index);
  CHECK("an index", sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), 0, sh_held_next(0, index)) == SH_OK);
  CHECK("an offload under the word before it refused", sh_owner_offload(a, id, gen, 0, &final) == SH_ESTATE &&
                                                          sh_owner_state(a, id) == SH_OWNER_LIVE &&
                                                          in_use(a, SH_PART_CONTEXT) == 48);
  CHECK("word", sh_owner_user_word(a, id, gen, &held) == SH_OK && held == sh_held_next(0, index));
  CHECK("offload", sh_owner_offload(a, id, gen, held, &final) == SH_OK && final.blocks == 2 &&
                       in_use(a, SH_PART_CONTEXT) == 0 && in_use(a, SH_PART_SYSTEM) == sys_before);
  uint64_t sealed;
  CHECK("sealed", sh_owner_user_word(a, id, gen, &sealed) == SH_OK && sealed == SH_USER_WORD_SEALED);
  CHECK("an update from before refused", sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), held, 0) == SH_ESTATE &&
                                           sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), 0, 7) == SH_ESTATE);
  CHECK("and from the seal, while offloaded", sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), SH_USER_WORD_SEALED, 7) == SH_ESTATE);
  CHECK("restoring", sh_owner_set_state(a, id, gen, SH_OWNER_OFFLOADED, SH_OWNER_RESTORING) == SH_OK);
  CHECK("live again with no index: 0", sh_owner_set_state(a, id, gen, SH_OWNER_RESTORING, SH_OWNER_LIVE) == SH_OK &&
                                         sh_owner_user_word(a, id, gen, &sealed) == SH_OK && sealed == 0);
  CHECK("offloaded again", sh_owner_offload(a, id, gen, 0, &final) == SH_OK);
  CHECK("restoring again", sh_owner_set_state(a, id, gen, SH_OWNER_OFFLOADED, SH_OWNER_RESTORING) == SH_OK);
  sh_alloc(a, 0, SH_PART_SYSTEM, 100, &index);
  CHECK("the restorer swaps from the seal", sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), SH_USER_WORD_SEALED,
                                                                   sh_held_next(SH_USER_WORD_SEALED, index)) == SH_OK);
  CHECK("live", sh_owner_set_state(a, id, gen, SH_OWNER_RESTORING, SH_OWNER_LIVE) == SH_OK &&
                    sh_owner_user_word(a, id, gen, &sealed) == SH_OK && sh_held_offset(sealed) == index);
  CHECK("complete", sh_owner_complete(a, id, gen, &final) == SH_OK && in_use(a, SH_PART_SYSTEM) == sys_before);
  /* a restore's words go on from the sequence the offload ended: a restored
   * index back at the offset it had before the offload is a new word, not
   * one a reader still holds from before (ABA) */
  sh_owner_create(a, 0, &id, &gen);
  sh_alloc(a, 0, SH_PART_SYSTEM, 100, &index);
  uint64_t first = sh_owner_held_next(a, id, 0, index);
  CHECK("a first index is the first of its sequence", sh_held_seq(first) == 1 &&
                                                        sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), 0, first) == SH_OK);
  uint64_t again = sh_owner_held_next(a, id, first, index);
  CHECK("the next follows it", sh_held_seq(again) == 2 && sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), first, again) == SH_OK);
  CHECK("offload", sh_owner_offload(a, id, gen, again, &final) == SH_OK);
  CHECK("restoring", sh_owner_set_state(a, id, gen, SH_OWNER_OFFLOADED, SH_OWNER_RESTORING) == SH_OK);
  sh_alloc(a, 0, SH_PART_SYSTEM, 100, &off);
  CHECK("the freed index's block comes back", off == index);
  uint64_t restored = sh_owner_held_next(a, id, SH_USER_WORD_SEALED, off);
  CHECK("the restore's word is new", restored != first && restored != again && sh_held_seq(restored) == 3 &&
                                         sh_owner_set_user_word(a, id, gen, sh_owner_offloads(a, id), SH_USER_WORD_SEALED, restored) == SH_OK);
  CHECK("live", sh_owner_set_state(a, id, gen, SH_OWNER_RESTORING, SH_OWNER_LIVE) == SH_OK);
  CHECK("offloaded with it", sh_owner_offload(a, id, gen, restored, &final) == SH_OK);
  CHECK("restoring with no index", sh_owner_set_state(a, id, gen, SH_OWNER_OFFLOADED, SH_OWNER_RESTORING) == SH_OK &&
                                       sh_owner_set_state(a, id, gen, SH_OWNER_RESTORING, SH_OWNER_LIVE) == SH_OK);
  CHECK("a first index after it goes on too", sh_held_seq(sh_owner_held_next(a, id, 0, index)) == 4);
  CHECK("complete", sh_owner_complete(a, id, gen, &final) == SH_OK);
  uint32_t reused_gen;
  CHECK("a new owner starts again", sh_owner_create(a, 0, &id, &reused_gen) == SH_OK &&
                                      sh_held_seq(sh_owner_held_next(a, id, 0, index)) == 1);
  CHECK("complete the new one", sh_owner_complete(a, id, reused_gen, &final) == SH_OK);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static int all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

/* calloc: fresh runs are zero as made; reused blocks and runs are cleared. */
static void test_calloc(void) {
  sh_arena_t *a = make_anon(32 * MiB, 65536);
  uint64_t run, small, again;
  size_t big = 1u << 20;
  CHECK("fresh run", sh_calloc(a, 0, SH_PART_SHARED, big, &run) == SH_OK && all_zero(sh_ptr(a, run), big));
  memset(sh_ptr(a, run), 0xAB, big);
  sh_free(a, run);
  CHECK("the kept run comes back cleared", sh_calloc(a, 0, SH_PART_SHARED, big, &again) == SH_OK && again == run &&
                                             all_zero(sh_ptr(a, again), big));
  memset(sh_ptr(a, again), 0xCD, big);
  sh_free(a, again);
  sh_thread_flush(a); /* the run goes back to the partition, dirty */
  CHECK("a released run taken again is cleared", sh_calloc(a, 0, SH_PART_SHARED, big, &again) == SH_OK &&
                                                   all_zero(sh_ptr(a, again), big));
  sh_free(a, again);
  CHECK("small", sh_calloc(a, 0, SH_PART_SHARED, 200, &small) == SH_OK && all_zero(sh_ptr(a, small), 200));
  memset(sh_ptr(a, small), 0x11, 200);
  sh_free(a, small);
  CHECK("small reused is cleared", sh_calloc(a, 0, SH_PART_SHARED, 200, &again) == SH_OK && again == small &&
                                     all_zero(sh_ptr(a, again), 200));
  sh_thread_flush(a);
  CHECK("nolock large without a kept run", sh_calloc_nolock(a, 0, SH_PART_SHARED, big, &run) == SH_EAGAIN);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static void test_free_many(void) {
  sh_arena_t *a = make_anon(32 * MiB, 65536);
  enum { N = 5000 };
  static uint64_t off[N];
  uint32_t id, gen;
  sh_owner_create(a, 0, &id, &gen);
  for (int i = 0; i < N; i++) sh_alloc(a, i % 3 ? 0 : id, (sh_partition_t)(i % 2), 16 + (size_t)(i % 7) * 40, &off[i]);
  size_t freed = 0;
  CHECK("free them all", sh_free_many(a, off, N, &freed) == SH_OK && freed == N);
  CHECK("empty", in_use(a, SH_PART_CONTEXT) == 0 && in_use(a, SH_PART_SHARED) == 0);
  sh_partition_stats_t st;
  sh_partition_stats(a, SH_PART_CONTEXT, &st);
  CHECK("every free counted", st.frees == st.allocs);
  CHECK("check", sh_check(a) == SH_OK);
  for (int i = 0; i < 100; i++) sh_alloc(a, 0, SH_PART_COMM, 64, &off[i]);
  off[50] = off[10]; /* the same block twice in one batch */
  CHECK("a repeat inside a batch is a double free", sh_free_many(a, off, 100, &freed) == SH_EDOUBLEFREE && freed == 50);
  CHECK("the rest are untouched", sh_free_many(a, off + 51, 49, &freed) == SH_OK && freed == 49);
  uint64_t bad[2] = {off[0], 12345};
  CHECK("an already freed block stops the batch", sh_free_many(a, bad, 2, &freed) == SH_EDOUBLEFREE && freed == 0);
  CHECK("empty again", in_use(a, SH_PART_COMM) == 64); /* off[50]'s own block was never freed */
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static void test_write_after_free(void) {
  sh_arena_t *a = make_anon(8 * MiB, 65536);
  uint64_t x, y, z;
  sh_alloc(a, 0, SH_PART_CONTEXT, 32, &x);
  sh_alloc(a, 0, SH_PART_CONTEXT, 32, &y);
  sh_free(a, y);
  sh_free(a, x);
  /* The program writes after free. Under ASan the poisoned block would stop
   * it here (that is the point of sh_track.h), so lift the poison first to
   * test the allocator's own detection. */
  sh_track_reset(sh_ptr(a, x), 16);
  memset(sh_ptr(a, x), 0x5A, 16);
  CHECK("write after free detected on pop", sh_alloc(a, 0, SH_PART_CONTEXT, 32, &z) == SH_ECORRUPT);
  CHECK("message says so", strstr(sh_last_error(), "written after") != NULL);
  CHECK("other classes still serve", sh_alloc(a, 0, SH_PART_CONTEXT, 64, &z) == SH_OK);
  CHECK("check reports it", sh_check(a) == SH_ECORRUPT);
  sh_close(a);
}

static void test_shared_mapping(void) {
  char name[64];
  snprintf(name, sizeof name, "/sh_unit_%d", (int)getpid());
  sh_unlink(SH_BACKING_SHM, name);
  sh_arena_t *a = NULL, *b = NULL, *c = NULL;
  REQUIRE("shm create", sh_create(&a, SH_BACKING_SHM, name, 16 * MiB, NULL) == SH_OK);
  CHECK("exists", sh_create(&c, SH_BACKING_SHM, name, 16 * MiB, NULL) == SH_EEXIST);
  REQUIRE("attach", sh_attach(&b, SH_BACKING_SHM, name, 0) == SH_OK);
  CHECK("mapped elsewhere", sh_base(a) != sh_base(b));
  uint64_t off;
  sh_alloc(a, 0, SH_PART_SHARED, 100, &off);
  strcpy(sh_ptr(a, off), "through offsets");
  CHECK("other mapping sees it", strcmp(sh_ptr(b, off), "through offsets") == 0);
  CHECK("free through the other mapping", sh_free(b, off) == SH_OK);
  uint32_t pid_id, pid_gen; /* this process's id is asked (and cached) before the fork */
  REQUIRE("owner before fork", sh_owner_create(a, 1, &pid_id, &pid_gen) == SH_OK);
  sh_owner_recycle(a, pid_id, pid_gen);
  pid_t child = fork();
  if (child == 0) {
    sh_arena_t *ca;
    if (sh_attach(&ca, SH_BACKING_SHM, name, 0) != SH_OK) _exit(2);
    uint64_t o2;
    if (sh_alloc(ca, 0, SH_PART_COMM, 64, &o2) != SH_OK) _exit(3);
    strcpy(sh_ptr(ca, o2), "from child");
    /* the process id is cached: a forked child must record its own */
    uint32_t id, gen;
    sh_owner_info_t oi;
    if (sh_owner_create(ca, 1, &id, &gen) != SH_OK || sh_owner_info(ca, id, &oi) != SH_OK) _exit(5);
    if (oi.pid != getpid()) _exit(6);
    sh_owner_recycle(ca, id, gen);
    sh_close(ca);
    _exit(o2 == 0 ? 4 : 0);
  }
  int status;
  waitpid(child, &status, 0);
  CHECK("child attached, allocated, and its owner has its pid", WIFEXITED(status) && WEXITSTATUS(status) == 0);
  sh_partition_stats_t st;
  sh_partition_stats(b, SH_PART_COMM, &st);
  CHECK("child's block visible in stats", st.in_use == 64 && st.allocs == 1);
  sh_arena_t *ro;
  CHECK("read-only attach", sh_attach(&ro, SH_BACKING_SHM, name, 1) == SH_OK);
  CHECK("read-only owner create refused", sh_owner_create(ro, 0, &(uint32_t){0}, &(uint32_t){0}) == SH_EINVAL);
  CHECK("read-only check", sh_check(ro) == SH_OK);
  sh_close(ro);
  sh_close(b);
  sh_close(a);
  CHECK("unlink", sh_unlink(SH_BACKING_SHM, name) == SH_OK);
  CHECK("gone", sh_attach(&b, SH_BACKING_SHM, name, 0) == SH_ENOENT);
  CHECK("unlink twice", sh_unlink(SH_BACKING_SHM, name) == SH_ENOENT);
}

/* A process dies holding the slow-path lock in the middle of changing a page:
 * the next locker repairs from the descriptors instead of hanging. */
static void test_lock_owner_died(void) {
  char name[64];
  snprintf(name, sizeof name, "/sh_unit_lock_%d", (int)getpid());
  sh_unlink(SH_BACKING_SHM, name);
  sh_arena_t *a = NULL;
  REQUIRE("shm create", sh_create(&a, SH_BACKING_SHM, name, 16 * MiB, NULL) == SH_OK);
  uint64_t keep;
  sh_alloc(a, 0, SH_PART_CONTEXT, 128, &keep);
  pid_t child = fork();
  if (child == 0) {
    sh_arena_t *ca;
    if (sh_attach(&ca, SH_BACKING_SHM, name, 0) != SH_OK) _exit(2);
    _sh_part_lock(ca, SH_PART_CONTEXT);
    /* half a page acquisition: bitmap bit taken, descriptor never written */
    uint32_t pi = ca->part_end[SH_PART_CONTEXT] - 1;
    ca->bitmap[pi / 64] |= 1ull << (pi % 64);
    /* and a claim on the parent's page that no thread slot records */
    uint32_t kept = (uint32_t)(keep >> ca->page_shift);
    sh_atomic_store_relaxed(&ca->pages[kept].claim, (7u << 14) | 2u);
    _exit(0); /* dies holding the lock */
  }
  waitpid(child, NULL, 0);
  sh_thread_flush(a); /* the parent's own claim on that page goes first */
  uint64_t off;
  CHECK("alloc after the holder died", sh_alloc(a, 0, SH_PART_CONTEXT, 20000, &off) == SH_OK);
  CHECK("repair leaves it consistent", sh_check(a) == SH_OK);
  CHECK("older block intact", sh_free(a, keep) == SH_OK && sh_free(a, off) == SH_OK);
  sh_close(a);
  sh_unlink(SH_BACKING_SHM, name);
}

/* A lock word damaged to name a thread that does not exist, with no
 * OWNER_DIED (what a dead robust holder leaves): the next locker takes the
 * lock over and rebuilds what it protects, and the partition works on. */
static void test_lock_word_names_no_thread(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  uint64_t keep, off;
  sh_alloc(a, 0, SH_PART_CONTEXT, 128, &keep);
  sh_thread_flush(a);
  /* above any pid_max: no such thread, and not the waiters or owner-died bits */
  sh_word_store_relaxed((uint32_t *)&a->hdr->part_lock[SH_PART_CONTEXT].mutex.__data.__lock, 0x3ffffff0u);
  CHECK("a large alloc takes the lock over", sh_alloc(a, 0, SH_PART_CONTEXT, 20000, &off) == SH_OK);
  CHECK("and the lock works after", sh_free(a, off) == SH_OK && sh_alloc(a, 0, SH_PART_CONTEXT, 20000, &off) == SH_OK);
  CHECK("consistent", sh_check(a) == SH_OK);
  CHECK("older block intact", sh_free(a, keep) == SH_OK && sh_free(a, off) == SH_OK);
  sh_close(a);
}

/* A process dies holding the partition lock between formatting a fresh page
 * for an agent and counting it (a refill cut short): the agent's recycle sees
 * no pages there and skips the partition, so the repair that the next locker
 * runs meets a page whose owner slot is free. It goes back to the partition,
 * not to the free slot's lists. */
static void test_lock_owner_died_mid_refill(void) {
  char name[64];
  sh_arena_t *a = make_shm(name, "refill", 16 * MiB);
  uint32_t id, gen;
  REQUIRE("agent", sh_owner_create(a, 0, &id, &gen) == SH_OK);
  uint64_t used_before = part_stats(a, SH_PART_CONTEXT).pages_used;
  pid_t child = fork();
  if (child == 0) {
    sh_arena_t *ca;
    if (sh_attach(&ca, SH_BACKING_SHM, name, 0) != SH_OK) _exit(2);
    _sh_part_lock(ca, SH_PART_CONTEXT);
    uint32_t pi = _sh_bitmap_take(ca, SH_PART_CONTEXT, 1);
    if (pi == SH_NIL) _exit(3);
    _sh_page_format_small(ca, &ca->pages[pi], pi, id, 3, 0); /* never linked, never counted */
    _exit(0); /* dies holding the lock */
  }
  int status = 0;
  waitpid(child, &status, 0);
  REQUIRE("the child got as far as the page", WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK("the agent's recycle", sh_owner_recycle(a, id, gen) == SH_OK);
  CHECK("its slot is free", sh_owner_state(a, id) == SH_OWNER_FREE);
  uint64_t off;
  CHECK("alloc after the holder died (repairs)", sh_alloc(a, 0, SH_PART_CONTEXT, 20000, &off) == SH_OK);
  CHECK("the repair gave the page back", sh_check(a) == SH_OK);
  CHECK("free", sh_free(a, off) == SH_OK);
  CHECK("pages as before", part_stats(a, SH_PART_CONTEXT).pages_used <= used_before + 1);
  sh_close(a);
  sh_unlink(SH_BACKING_SHM, name);
}

/* An allocation racing its agent's recycle: it found the agent live, then
 * waited for the partition lock while the recycle ran (the agent had no
 * pages there, so the recycle never took that lock). The page it then takes
 * goes back, and it reports the agent gone, rather than leaving a free slot
 * holding a page. The main thread holds the lock until the allocating thread
 * is queued on it (the futex word's waiters bit), so the order is forced. */
typedef struct racer_s {
  sh_arena_t *arena;
  uint32_t owner, gen;
  size_t size;
  bool nursery; /* through sh_alloc_owner, whose small blocks come from the nursery */
  int rc;
} racer_t;

static void *alloc_for_owner(void *arg) {
  racer_t *r = arg;
  uint64_t off, usable;
  r->rc = r->nursery ? sh_alloc_owner(r->arena, r->owner, r->gen, SH_PART_COMM, r->size, &off, &usable)
                     : sh_alloc(r->arena, r->owner, SH_PART_COMM, r->size, &off);
  return NULL;
}

static bool part_lock_has_waiter(sh_arena_t *a, int part) {
  return (sh_word_load_relaxed((uint32_t *)&a->hdr->part_lock[part].mutex.__data.__lock) & 0x80000000u) != 0;
}

static void test_alloc_racing_its_recycle(void) {
  const size_t sizes[] = {64, 100000, 64}; /* a cached page, a run, a nursery block */
  for (int i = 0; i < 3; i++) {
    sh_arena_t *a = make_anon(16 * MiB, 65536);
    uint32_t id, gen;
    REQUIRE("agent", sh_owner_create(a, 0, &id, &gen) == SH_OK);
    racer_t r = {a, id, gen, sizes[i], i == 2, SH_OK};
    _sh_part_lock(a, SH_PART_COMM);
    pthread_t t;
    pthread_create(&t, NULL, alloc_for_owner, &r);
    while (!part_lock_has_waiter(a, SH_PART_COMM)) sched_yield();
    CHECK("the recycle runs while the allocation waits", sh_owner_recycle(a, id, gen) == SH_OK);
    _sh_part_unlock(a, SH_PART_COMM);
    pthread_join(t, NULL);
    CHECK("the allocation reports the agent gone", r.rc == SH_EOWNER);
    CHECK("the free slot holds no page", sh_atomic_load_relaxed(&a->owners[id].pages[SH_PART_COMM]) == 0);
    CHECK("nothing in use", part_stats(a, SH_PART_COMM).in_use == 0);
    CHECK("no nursery block listed for the free slot", _sh_nursery_record(a, id) == NULL || _sh_nursery_record(a, id)[0] == 0);
    CHECK("check", sh_check(a) == SH_OK);
    sh_close(a);
  }
}

/* sh_alloc_many: n distinct live blocks from the thread's caches and the
 * slow path in turn; on a full partition it stops, says how many it took,
 * and those stay allocated. */
static void test_alloc_many(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  enum { N = 5000 };
  static uint64_t offs[N];
  size_t done = 0;
  CHECK("5000 blocks of 64 B", sh_alloc_many(a, SH_PART_CONTEXT, 64, N, offs, &done) == SH_OK && done == N);
  bool distinct = true;
  for (size_t i = 0; i < N && distinct; i++) {
    sh_block_info_t bi;
    distinct = sh_block_info(a, offs[i], &bi) == SH_OK && bi.owner == 0 && bi.usable_size == 64;
    for (size_t j = i + 1; j < N && j < i + 64; j++) distinct &= offs[i] != offs[j];
  }
  CHECK("each a live 64 B block of the shared default", distinct);
  CHECK("in use", in_use(a, SH_PART_CONTEXT) == N * 64);
  CHECK("free_many gives them back", sh_free_many(a, offs, N, NULL) == SH_OK && in_use(a, SH_PART_CONTEXT) == 0);
  /* comm holds about 800 blocks of 4 KiB: the call stops there */
  CHECK("a full partition stops it", sh_alloc_many(a, SH_PART_COMM, 4000, N, offs, &done) == SH_EFULL);
  CHECK("having taken some, which stay allocated", done > 0 && done < N && in_use(a, SH_PART_COMM) == done * 4096);
  CHECK("and go back", sh_free_many(a, offs, done, NULL) == SH_OK && in_use(a, SH_PART_COMM) == 0);
  CHECK("a large size goes the slow way", sh_alloc_many(a, SH_PART_SHARED, 100000, 3, offs, &done) == SH_OK && done == 3);
  CHECK("freed", sh_free_many(a, offs, 3, NULL) == SH_OK);
  CHECK("bad partition", sh_alloc_many(a, (sh_partition_t)7, 64, 1, offs, &done) == SH_EINVAL && done == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* The lock-free entry points never lock; emptied pages come back under pressure. */
static void test_nolock(void) {
  sh_arena_t *a = make_anon(8 * MiB, 4096);
  uint64_t x, big;
  CHECK("nolock alloc needs a page first", sh_alloc_nolock(a, 0, SH_PART_COMM, 32, &x) == SH_EAGAIN);
  CHECK("slow path", sh_alloc(a, 0, SH_PART_COMM, 32, &x) == SH_OK);
  uint64_t y;
  CHECK("then lock-free", sh_alloc_nolock(a, 0, SH_PART_COMM, 32, &y) == SH_OK);
  CHECK("nolock free", sh_free_nolock(a, x) == SH_OK && sh_free_nolock(a, y) == SH_OK);
  CHECK("large alloc nolock refused", sh_alloc_nolock(a, 0, SH_PART_COMM, 100000, &big) == SH_EAGAIN);
  sh_alloc(a, 0, SH_PART_COMM, 100000, &big);
  uint64_t comm_before = 0;
  {
    sh_partition_stats_t s0;
    sh_partition_stats(a, SH_PART_COMM, &s0);
    comm_before = s0.in_use;
  }
  CHECK("large free nolock: the thread keeps the run", sh_free_nolock(a, big) == SH_OK);
  {
    sh_partition_stats_t s1;
    sh_partition_stats(a, SH_PART_COMM, &s1);
    CHECK("a kept run is not in use", s1.in_use + 25 * 4096 == comm_before);
  }
  CHECK("a kept run cannot be freed again", sh_free(a, big) == SH_EDOUBLEFREE);
  sh_block_info_t binfo;
  CHECK("nor is it live", sh_block_info(a, big, &binfo) == SH_EBADPTR);
  CHECK("check with a kept run", sh_check(a) == SH_OK);
  uint64_t again;
  CHECK("the same size takes it back without a lock", sh_alloc_nolock(a, 0, SH_PART_COMM, 99000, &again) == SH_OK && again == big);
  CHECK("freed for good", sh_free(a, again) == SH_OK && sh_thread_flush(a) == SH_OK);
  static uint64_t offs[1 << 16];
  size_t n = 0;
  while (sh_alloc(a, 0, SH_PART_COMM, 48, &offs[n]) == SH_OK) n++;
  for (size_t i = 0; i < n; i++) sh_free_nolock(a, offs[i]);
  sh_partition_stats_t st;
  sh_partition_stats(a, SH_PART_COMM, &st);
  CHECK("emptied pages stay until needed", st.in_use == 0 && st.pages_used > 1);
  n = 0;
  while (sh_alloc(a, 0, SH_PART_COMM, 1000, &offs[n]) == SH_OK) n++;
  CHECK("another class fills the reclaimed pages", n > 100);
  sh_partition_stats(a, SH_PART_COMM, &st);
  CHECK("all pages used again", st.pages_used == st.pages_total);
  CHECK("check clean", sh_check(a) == SH_OK);
  CHECK("owner generation", sh_owner_generation(a, 0) == 1 && sh_owner_generation(a, 5) == 0);
  sh_close(a);
}

static void test_sweep_queues(void) {
  sh_options_t o;
  sh_options_init(&o);
  o.max_owners = 8;
  sh_arena_t *a;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 8 * MiB, &o) == SH_OK);
  /* a ring holds one entry per slot of the owner table: the 8 asked for and the nursery's */
  uint32_t ids[4], gens[4];
  for (int i = 0; i < 4; i++) REQUIRE("owner", sh_owner_create(a, 1, &ids[i], &gens[i]) == SH_OK);
  for (uint32_t i = 1; i <= 9; i++) CHECK("push", sh_sweep_push(a, 0, ids[i % 4], gens[i % 4]) == SH_OK);
  CHECK("full", sh_sweep_push(a, 0, ids[0], gens[0]) == SH_EFULL);
  CHECK("pending", sh_sweep_pending(a, 0) == 9 && sh_sweep_pending(a, 1) == 0);
  uint64_t e[16];
  size_t n;
  CHECK("take some", sh_sweep_take(a, 0, e, 3, &n) == SH_OK && n == 3 &&
                         e[0] == (((uint64_t)gens[1] << 32) | ids[1]) && e[2] == (((uint64_t)gens[3] << 32) | ids[3]));
  /* ids[2] is recycled: its queued entries are dropped, a new owner in its slot is not */
  CHECK("recycle", sh_owner_recycle(a, ids[2], gens[2]) == SH_OK);
  uint32_t again, again_gen;
  REQUIRE("slot reused", sh_owner_create(a, 1, &again, &again_gen) == SH_OK);
  CHECK("push after take", sh_sweep_push(a, 0, again, again_gen) == SH_OK);
  CHECK("take rest in order, the recycled dropped",
        sh_sweep_take(a, 0, e, 16, &n) == SH_OK && n == 6 && e[0] == (((uint64_t)gens[0] << 32) | ids[0]) &&
            e[2] == (((uint64_t)gens[3] << 32) | ids[3]) && e[5] == (((uint64_t)again_gen << 32) | again));
  CHECK("empty", sh_sweep_take(a, 0, e, 16, &n) == SH_OK && n == 0);
  CHECK("bad ring", sh_sweep_push(a, 2, 1, 1) == SH_EINVAL);
  sh_close(a);
}

/* An agent that opted out of the nursery takes its first small blocks from
 * pages of its own; its recycle clears the opt-out for the slot's next agent. */
static void test_nursery_opt_out(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint32_t packed, pgen, own, ogen;
  sh_owner_create(a, 1, &packed, &pgen);
  sh_owner_create(a, 2, &own, &ogen);
  CHECK("opt out", sh_owner_nursery_opt_out(a, own, ogen) == SH_OK);
  CHECK("a stale generation is refused", sh_owner_nursery_opt_out(a, own, ogen + 1) == SH_EOWNER);
  CHECK("the shared default is no agent", sh_owner_nursery_opt_out(a, 0, 1) == SH_EINVAL);
  uint64_t p_off, o_off;
  sh_block_info_t pi, oi;
  uint64_t usable;
  sh_alloc_owner(a, packed, pgen, SH_PART_CONTEXT, 200, &p_off, &usable);
  sh_alloc_owner(a, own, ogen, SH_PART_CONTEXT, 200, &o_off, &usable);
  sh_owner_info_t pinfo, oinfo;
  sh_owner_info(a, packed, &pinfo);
  sh_owner_info(a, own, &oinfo);
  CHECK("a packed agent's first block shares a nursery page", pinfo.pages[SH_PART_CONTEXT] == 0 &&
                                                                 sh_block_info(a, p_off, &pi) == SH_OK &&
                                                                 pi.owner == packed);
  CHECK("an opted-out agent's is on a page of its own", oinfo.pages[SH_PART_CONTEXT] == 1 &&
                                                            sh_block_info(a, o_off, &oi) == SH_OK && oi.owner == own);
  CHECK("check passes with an opted-out record", sh_check(a) == SH_OK);
  sh_owner_info_t final;
  CHECK("complete", sh_owner_complete(a, own, ogen, &final) == SH_OK && final.blocks == 1);
  uint32_t next, ngen;
  sh_owner_create(a, 2, &next, &ngen);
  uint64_t n_off;
  sh_alloc_owner(a, next, ngen, SH_PART_CONTEXT, 200, &n_off, &usable);
  sh_owner_info_t ninfo;
  sh_owner_info(a, next, &ninfo);
  CHECK("the slot's next agent packs again", next != own || ninfo.pages[SH_PART_CONTEXT] == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A recycle frees only the nursery blocks whose map word it takes from the
 * agent: a block another party took the map word of (a free racing the
 * recycle, an allocation undoing itself, a sweep's orphan) is that party's
 * to free. Whatever the record held, the slot's next agent starts with an
 * empty record. */
/* A block an agent's index dropped (or an update that lost allocated) is
 * freed by its dropper after the update, with no lock held between: an
 * offload in between gives it back with the agent's memory, and the restore
 * may take it again and name it. The dropper's free names the incarnation
 * it dropped the block in, and frees nothing in a later one; nor does the
 * views table's free of a block recorded before the offload. */
static void test_owner_free_is_of_one_incarnation(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint32_t id, gen, other, other_gen;
  sh_owner_create(a, 1, &id, &gen);
  sh_owner_create(a, 1, &other, &other_gen);
  uint64_t dropped, kept, usable, theirs, views_off;
  REQUIRE("alloc", sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 64, &dropped, &usable) == SH_OK &&
                       sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 200, &views_off, &usable) == SH_OK &&
                       sh_alloc_owner(a, other, other_gen, SH_PART_CONTEXT, 64, &theirs, &usable) == SH_OK);
  uint32_t before = sh_owner_offloads(a, id);
  CHECK("another agent's block is not freed as this one's",
        sh_owner_free(a, theirs, id, gen, before) == SH_EOWNER && sh_block_info(a, theirs, &(sh_block_info_t){0}) == SH_OK);
  CHECK("nor under a wrong generation", sh_owner_free(a, dropped, id, gen + 1, before) == SH_EOWNER);
  uint32_t viewer_pid_views = 0;
  CHECK("a view pin", sh_owner_view_pin(a, id, gen) == SH_OK);
  CHECK("recorded for after the views", sh_free_after_views(a, views_off, id, gen, before) == SH_OK);
  CHECK("unpinned", sh_owner_view_unpin(a, id, gen, NULL) == SH_OK &&
                        sh_owner_views(a, id, gen, 0, &viewer_pid_views) == SH_OK && viewer_pid_views == 0);
  sh_owner_info_t final;
  CHECK("offloaded", sh_owner_offload(a, id, gen, 0, &final) == SH_OK && sh_owner_offloads(a, id) == before + 1);
  CHECK("restored", sh_owner_set_state(a, id, gen, SH_OWNER_OFFLOADED, SH_OWNER_RESTORING) == SH_OK &&
                        sh_owner_set_state(a, id, gen, SH_OWNER_RESTORING, SH_OWNER_LIVE) == SH_OK);
  REQUIRE("the restore takes the same blocks again",
          sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 64, &kept, &usable) == SH_OK && kept == dropped &&
              sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 200, &kept, &usable) == SH_OK && kept == views_off);
  uint64_t blocks = 0, bytes = 0;
  CHECK("the dropper's free of the old incarnation frees nothing",
        sh_owner_free(a, dropped, id, gen, before) == SH_EOWNER && sh_block_info(a, dropped, &(sh_block_info_t){0}) == SH_OK);
  CHECK("says why", strstr(sh_last_error(), "offloaded since") != NULL);
  CHECK("nor does the views table's", sh_views_reclaim(a, &blocks, &bytes) == SH_OK && blocks == 0 &&
                                          sh_block_info(a, views_off, &(sh_block_info_t){0}) == SH_OK);
  CHECK("a free of this incarnation frees", sh_owner_free(a, dropped, id, gen, before + 1) == SH_OK &&
                                                sh_block_info(a, dropped, &(sh_block_info_t){0}) == SH_EBADPTR);
  CHECK("once", sh_owner_free(a, dropped, id, gen, before + 1) != SH_OK);
  /* and an index update whose blocks were made before the offload does not
   * go in on the restored index's word: it would name blocks given back */
  uint64_t index, word = 0;
  REQUIRE("an index block", sh_alloc(a, 0, SH_PART_SYSTEM, 100, &index) == SH_OK &&
                                sh_owner_user_word(a, id, gen, &word) == SH_OK);
  uint64_t next = sh_owner_held_next(a, id, word, index);
  CHECK("a swap of the incarnation before refused", sh_owner_set_user_word(a, id, gen, before, word, next) == SH_ESTATE &&
                                                         strstr(sh_last_error(), "offloaded since") != NULL);
  CHECK("of this one taken", sh_owner_set_user_word(a, id, gen, before + 1, word, next) == SH_OK);
  /* a restorer's swap from the seal: of the offload its restore began after only */
  CHECK("offloaded again", sh_owner_offload(a, id, gen, next, &final) == SH_OK &&
                               sh_owner_set_state(a, id, gen, SH_OWNER_OFFLOADED, SH_OWNER_RESTORING) == SH_OK);
  REQUIRE("an index block again", sh_alloc(a, 0, SH_PART_SYSTEM, 100, &index) == SH_OK);
  next = sh_owner_held_next(a, id, SH_USER_WORD_SEALED, index);
  CHECK("a restorer of the offload before refused",
        sh_owner_set_user_word(a, id, gen, before + 1, SH_USER_WORD_SEALED, next) == SH_ESTATE);
  CHECK("this offload's restorer taken", sh_owner_set_user_word(a, id, gen, before + 2, SH_USER_WORD_SEALED, next) == SH_OK &&
                                             sh_owner_set_state(a, id, gen, SH_OWNER_RESTORING, SH_OWNER_LIVE) == SH_OK);
  /* the free that waits for nothing: while the lock is held, nothing done */
  REQUIRE("a block", sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 64, &kept, &usable) == SH_OK);
  _sh_owner_lock(a);
  CHECK("the lock held: SH_EAGAIN", sh_owner_free_nolock(a, kept, id, gen, before + 2) == SH_EAGAIN &&
                                        sh_block_info(a, kept, &(sh_block_info_t){0}) == SH_OK);
  _sh_owner_unlock(a);
  CHECK("free: freed", sh_owner_free_nolock(a, kept, id, gen, before + 2) == SH_OK &&
                           sh_block_info(a, kept, &(sh_block_info_t){0}) == SH_EBADPTR);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static void test_nursery_recycle_takes_the_map(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint32_t id, gen;
  sh_owner_create(a, 1, &id, &gen);
  uint64_t offs[3], usable;
  sh_partition_stats_t st;
  sh_partition_stats(a, SH_PART_CONTEXT, &st);
  uint64_t before = st.in_use;
  for (int i = 0; i < 3; i++) sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 64, &offs[i], &usable);
  uint32_t pi = (uint32_t)(offs[1] >> a->page_shift);
  int c = _sh_pg_class(a, &a->pages[pi]);
  uint32_t index = (uint32_t)((offs[1] & ((1u << a->page_shift) - 1)) / a->classes[c].size);
  _Atomic uint32_t *word = &_sh_nursery_map(a, pi, c)[index];
  uint32_t named = id;
  REQUIRE("the middle block's map word names the agent", atomic_compare_exchange_strong(word, &named, 0u));
  CHECK("recycle", sh_owner_recycle(a, id, gen) == SH_OK);
  CHECK("the block whose map word was taken is left to its taker", _sh_free_block(a, offs[1], true) == SH_OK);
  sh_partition_stats(a, SH_PART_CONTEXT, &st);
  CHECK("every block back once", st.in_use == before);
  _Atomic uint32_t *record = _sh_nursery_record(a, id);
  bool empty = true;
  for (int k = 0; record && k < SH_NURSERY_SLOTS; k++) empty = empty && atomic_load(&record[k]) == 0;
  CHECK("the record is empty for the slot's next agent", empty);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* An agent's allocation takes a block of a page of its own that the thread
 * caches before a nursery slot: past its first 16 nursery blocks, a class
 * of which it holds SH_NURSERY_CLASS_BLOCKS there goes to a page of its own;
 * a freed nursery block's slot goes to the next class the agent has no page
 * of, and a block of a class it has a page of comes from that page. */
static void test_cached_page_before_nursery(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint32_t id, gen;
  sh_owner_create(a, 1, &id, &gen);
  /* 16 blocks of 4 KiB: past both the count and a sixteenth of the page */
  uint64_t offs[SH_NURSERY_CLASS_BLOCKS + 1], usable;
  for (uint32_t i = 0; i <= SH_NURSERY_CLASS_BLOCKS; i++)
    REQUIRE("alloc", sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 4096, &offs[i], &usable) == SH_OK);
  sh_owner_info_t info;
  sh_owner_info(a, id, &info);
  CHECK("16 blocks of the class in the nursery, the 17th on a page of its own", info.pages[SH_PART_CONTEXT] == 1);
  uint32_t own_page = (uint32_t)(offs[SH_NURSERY_CLASS_BLOCKS] >> a->page_shift);
  CHECK("free a nursery block", sh_free(a, offs[0]) == SH_OK);
  uint64_t again;
  REQUIRE("alloc of the class it has a page of", sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 4096, &again, &usable) == SH_OK);
  CHECK("comes from that page", (uint32_t)(again >> a->page_shift) == own_page);
  _Atomic uint32_t *record = _sh_nursery_record(a, id);
  int empty = 0;
  for (int k = 0; record && k < SH_NURSERY_SLOTS; k++) empty += atomic_load(&record[k]) == 0;
  CHECK("the freed slot stays free", empty == SH_NURSERY_SLOTS - (int)SH_NURSERY_CLASS_BLOCKS + 1);
  uint64_t other;
  REQUIRE("alloc of a class it has no page of", sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 512, &other, &usable) == SH_OK);
  sh_owner_info(a, id, &info);
  CHECK("takes the slot, not a page", info.pages[SH_PART_CONTEXT] == 1);
  empty = 0;
  for (int k = 0; record && k < SH_NURSERY_SLOTS; k++) empty += atomic_load(&record[k]) == 0;
  CHECK("the record has one more block", empty == SH_NURSERY_SLOTS - (int)SH_NURSERY_CLASS_BLOCKS);
  CHECK("check", sh_check(a) == SH_OK);
  sh_partition_stats_t st;
  CHECK("recycle", sh_owner_recycle(a, id, gen) == SH_OK);
  CHECK("check after", sh_check(a) == SH_OK);
  sh_partition_stats(a, SH_PART_CONTEXT, &st);
  CHECK("nothing left in use", st.in_use == 0);
  sh_close(a);
}

/* A nursery block's free on the lock-free path claims it and finishes there
 * (Python's free once released the GIL for every one, to run again with the
 * lock); a second free of it is a double free, and the slot is free again. */
static void test_nursery_free_without_the_lock(void) {
  sh_arena_t *a = make_anon(16 * MiB, 65536);
  uint32_t id, gen;
  sh_owner_create(a, 1, &id, &gen);
  uint64_t off, usable;
  REQUIRE("alloc", sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 200, &off, &usable) == SH_OK);
  sh_block_info_t bi;
  CHECK("a nursery block", sh_block_info(a, off, &bi) == SH_OK && bi.owner == id &&
                               (sh_atomic_load_relaxed(&a->pages[off >> a->page_shift].flags) & SH_PAGE_NURSERY));
  CHECK("freed without the lock", sh_free_nolock(a, off) == SH_OK);
  CHECK("a second free is a double free", sh_free_nolock(a, off) == SH_EDOUBLEFREE);
  _Atomic uint32_t *record = _sh_nursery_record(a, id);
  int empty = 0;
  for (int k = 0; record && k < SH_NURSERY_SLOTS; k++) empty += atomic_load(&record[k]) == 0;
  CHECK("its slot is free", empty == SH_NURSERY_SLOTS);
  sh_owner_info_t info;
  CHECK("the agent holds nothing", sh_owner_info(a, id, &info) == SH_OK && info.blocks == 0);
  CHECK("check", sh_check(a) == SH_OK);
  CHECK("recycle", sh_owner_recycle(a, id, gen) == SH_OK);
  CHECK("check after", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A sender killed while it waits with a filled message in a full channel:
 * its thread slot names the message, and the dead-process sweep frees it
 * (once), leaving the ring as it was. */
static void test_dead_sender_message(void) {
  char name[64];
  snprintf(name, sizeof name, "/sh_unit_chan_%d", (int)getpid());
  sh_unlink(SH_BACKING_SHM, name);
  sh_arena_t *a = NULL;
  REQUIRE("shm create", sh_create(&a, SH_BACKING_SHM, name, 16 * MiB, NULL) == SH_OK);
  uint64_t chan, first;
  REQUIRE("channel", sh_chan_create(a, 1, 1024, &chan) == SH_OK);
  REQUIRE("first", sh_alloc(a, 0, SH_PART_COMM, 64, &first) == SH_OK);
  CHECK("fills the ring", sh_chan_send(a, chan, first, 64, 0) == SH_OK);
  sh_partition_stats_t before;
  sh_partition_stats(a, SH_PART_COMM, &before);
  pid_t child = fork();
  if (child == 0) {
    sh_arena_t *ca;
    uint64_t msg;
    if (sh_attach(&ca, SH_BACKING_SHM, name, 0) != SH_OK) _exit(2);
    if (sh_alloc(ca, 0, SH_PART_COMM, 64, &msg) != SH_OK) _exit(3);
    sh_chan_hold(ca, msg);
    sh_chan_send(ca, chan, msg, 64, -1); /* waits for room until killed */
    _exit(4);
  }
  for (int i = 0; i < 60000 && sh_chan_in_hand(a) == 0; i++) usleep(1000);
  CHECK("the sender holds its message", sh_chan_in_hand(a) == 1);
  kill(child, SIGKILL);
  int status;
  waitpid(child, &status, 0);
  uint32_t slots = 0;
  CHECK("a dead slot naming a message stays for the sweep that frees it",
        sh_reclaim_dead_threads(a, &slots) == SH_OK && slots == 0 && sh_chan_in_hand(a) == 1);
  uint64_t freed = 0;
  CHECK("reclaimed", sh_chan_reclaim_dead(a, &freed) == SH_OK && freed == 1 && sh_chan_in_hand(a) == 0);
  CHECK("once", sh_chan_reclaim_dead(a, &freed) == SH_OK && freed == 0);
  sh_partition_stats_t after;
  sh_partition_stats(a, SH_PART_COMM, &after);
  CHECK("its block went back", after.in_use == before.in_use && after.frees == before.frees + 1);
  uint64_t msg, size;
  CHECK("the ring kept the first", sh_chan_recv(a, chan, &msg, &size, 0) == SH_OK && msg == first);
  CHECK("the dead slot goes", sh_reclaim_dead_threads(a, &slots) == SH_OK && slots == 1);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
  sh_unlink(SH_BACKING_SHM, name);
}

static sh_arena_t *anon_with_channel(uint32_t capacity, uint64_t *chan) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  REQUIRE("channel", sh_chan_create(a, capacity, 1024, chan) == SH_OK);
  return a;
}

/* Positions counting more messages than the ring has cells: a sender
 * without a timeout waited for room forever, a receiver took cells never
 * filled. Both are SH_ECORRUPT now; a damaged capacity is no channel. */
static void test_damaged_channel(void) {
  uint64_t chan, msg, size;
  sh_arena_t *a = anon_with_channel(4, &chan);
  sh_chan_t *c = (sh_chan_t *)(a->base + sh_chan_offset(chan));
  CHECK("send", sh_chan_send(a, chan, 64, 8, 0) == SH_OK);
  uint64_t tail = sh_atomic_load_relaxed(sh_chan_tail(c));
  sh_atomic_store_release(sh_chan_tail(c), tail + 6); /* 7 queued in 4 cells */
  CHECK("a send to an over-counted ring is damage, not a wait", sh_chan_send(a, chan, 128, 8, -1) == SH_ECORRUPT);
  CHECK("the message says so", strstr(sh_last_error(), "damaged") != NULL);
  CHECK("a receive too", sh_chan_recv(a, chan, &msg, &size, -1) == SH_ECORRUPT);
  sh_atomic_store_release(sh_chan_tail(c), tail);
  CHECK("the lock was given back", sh_chan_recv(a, chan, &msg, &size, 0) == SH_OK && msg == 64 && size == 8);
  c->capacity = 1000; /* inside the arena, past the ring's block: a send would write into the blocks after it */
  CHECK("a capacity past the ring's block: not a channel", sh_chan_send(a, chan, 64, 8, 0) == SH_EBADPTR);
  c->capacity = 1u << 30;
  CHECK("a capacity past the block: not a channel", sh_chan_recv(a, chan, &msg, &size, 0) == SH_EBADPTR);
  c->capacity = 4;
  CHECK("restored", sh_chan_close(a, chan) == SH_OK);
  CHECK("freed", sh_free(a, sh_chan_offset(chan)) == SH_OK);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A capacity that is not a power of two bounds the ring exactly: its
 * cells are the next power of two, the spare ones never filled at once,
 * and positions wrap around them in order. */
static void test_channel_exact_capacity(void) {
  uint64_t chan, msg, size;
  sh_arena_t *a = anon_with_channel(3, &chan);
  uint64_t next = 1;
  for (int round = 0; round < 5; round++) { /* 15 messages through 4 cells: every cell, several times */
    for (int i = 0; i < 3; i++) CHECK("room for 3", sh_chan_send(a, chan, 64 * (next + i), 8, 0) == SH_OK);
    CHECK("no room for a 4th", sh_chan_send(a, chan, 64, 8, 0) == SH_ETIMEDOUT);
    sh_chan_stats_t st;
    CHECK("stats: 3 of 3", sh_chan_stats(a, chan, &st) == SH_OK && st.capacity == 3 && st.depth == 3);
    for (int i = 0; i < 3; i++)
      CHECK("in order", sh_chan_recv(a, chan, &msg, &size, 0) == SH_OK && msg == 64 * (next + i) && size == 8);
    CHECK("then empty", sh_chan_recv(a, chan, &msg, &size, 0) == SH_ETIMEDOUT);
    next += 3;
  }
  CHECK("0 is no capacity", sh_chan_create(a, 0, 1024, &msg) == SH_EINVAL);
  CHECK("nor past 2^20", sh_chan_create(a, SH_CHAN_MAX_CAPACITY + 1, 1024, &msg) == SH_EINVAL);
  CHECK("freed", sh_free(a, sh_chan_offset(chan)) == SH_OK);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A wait that takes nothing (an asyncio receiver's), called off by its
 * caller or by the process closing the heap; a thread blocked in a receive
 * is called off too, so that a close need not wait for ever. */
typedef struct {
  sh_arena_t *a;
  uint64_t chan;
  uint32_t cancel;
  int rc, recv_rc;
} chan_waiter_t;

static void *chan_wait_thread(void *arg) {
  chan_waiter_t *w = arg;
  w->rc = sh_chan_wait(w->a, w->chan, 0, -1, &w->cancel);
  return NULL;
}

static void *chan_recv_thread(void *arg) {
  chan_waiter_t *w = arg;
  uint64_t msg, size;
  w->recv_rc = sh_chan_recv(w->a, w->chan, &msg, &size, -1);
  return NULL;
}

static void test_channel_wait_called_off(void) {
  uint64_t chan, msg, size;
  sh_arena_t *a = anon_with_channel(2, &chan);
  uint32_t never = 0;
  CHECK("empty: no receive could act", sh_chan_wait(a, chan, 0, 0, &never) == SH_ETIMEDOUT);
  CHECK("but a send could", sh_chan_wait(a, chan, 1, 0, NULL) == SH_OK);
  CHECK("send", sh_chan_send(a, chan, 64, 8, 0) == SH_OK);
  CHECK("a message: a receive could act", sh_chan_wait(a, chan, 0, -1, &never) == SH_OK);
  CHECK("and the wait took nothing", sh_chan_recv(a, chan, &msg, &size, 0) == SH_OK && msg == 64);
  chan_waiter_t w = {a, chan, 0, 1, 1};
  pthread_t t;
  pthread_create(&t, NULL, chan_wait_thread, &w);
  sh_chan_call_off(a, chan, &w.cancel); /* before or during its wait: it ends either way */
  pthread_join(t, NULL);
  CHECK("a called-off wait ends", w.rc == SH_ECANCELED && w.cancel == 1);
  CHECK("a wait on a flag already set ends at once", sh_chan_wait(a, chan, 0, -1, &w.cancel) == SH_ECANCELED);
  CHECK("another waiter's flag is not ours", sh_chan_wait(a, chan, 0, 0, &never) == SH_ETIMEDOUT);
  chan_waiter_t r = {a, chan, 0, 1, 1};
  pthread_create(&t, NULL, chan_recv_thread, &r);
  sh_call_off_waits(a);
  sh_chan_call_off(a, chan, NULL);
  pthread_join(t, NULL);
  CHECK("a blocked receive ends when the process closes the heap", r.recv_rc == SH_ECANCELED);
  CHECK("so does a room wait", sh_room_wait(a, sh_room_seq(a), -1) == SH_ECANCELED);
  CHECK("a message still goes through", sh_chan_send(a, chan, 64, 8, 0) == SH_OK &&
                                            sh_chan_recv(a, chan, &msg, &size, -1) == SH_OK && msg == 64);
  CHECK("closed", sh_chan_close(a, chan) == SH_OK);
  CHECK("freed", sh_free(a, sh_chan_offset(chan)) == SH_OK);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* The header's sizes are validated at attach; damage to them afterwards must
 * not size check()'s tables or bound a walk of the page table. */
static void test_header_sizes_damaged_after_attach(void) {
  sh_arena_t *a = make_anon(4 * MiB, 4096);
  uint32_t id, gen;
  uint64_t off;
  sh_owner_create(a, 0, &id, &gen);
  REQUIRE("alloc", sh_alloc(a, id, SH_PART_CONTEXT, 100, &off) == SH_OK);
  uint32_t total = a->hdr->total_pages, meta = a->hdr->meta_pages;
  sh_class_stats_t st;
  int c = _sh_size_class(a, 100);
  a->hdr->total_pages = 1;
  a->hdr->meta_pages = UINT32_MAX;
  CHECK("check keeps to the bounds it validated", sh_check(a) == SH_OK);
  a->hdr->total_pages = UINT32_MAX;
  CHECK("class stats walk the page table as validated", sh_class_stats(a, c, &st) == SH_OK && st.pages >= 1);
  sh_owner_info_t info;
  CHECK("owner info too", sh_owner_info(a, id, &info) == SH_OK && info.bytes[SH_PART_CONTEXT] >= 100);
  a->hdr->total_pages = total;
  a->hdr->meta_pages = meta;
  /* info reads the handle's validated copies: a class count damaged since
   * sized a copy into the caller's struct (a stack overflow in Python's
   * heap.info()), and damaged partition bounds misreported where they are */
  sh_arena_info_t before, after;
  sh_arena_info(a, &before);
  uint32_t nclasses = a->hdr->nclasses;
  sh_part_desc_t shared = a->hdr->parts[SH_PART_SHARED];
  uint64_t meta_end = a->hdr->meta_end;
  a->hdr->nclasses = 0x500000;
  a->hdr->parts[SH_PART_SHARED].offset = 0;
  a->hdr->parts[SH_PART_SHARED].size = UINT64_MAX;
  a->hdr->meta_end = 1;
  sh_arena_info(a, &after);
  CHECK("info keeps to what attach validated", memcmp(&before, &after, sizeof before) == 0);
  a->hdr->nclasses = nclasses;
  a->hdr->parts[SH_PART_SHARED] = shared;
  a->hdr->meta_end = meta_end;
  CHECK("check after", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A bin whose first page is another class's (a damaged list the walk must
 * see): the refill offered that page again and again, and the pop refused it
 * each time, so an allocation spun for ever. Now the lists are rebuilt. The
 * allocations run on a thread without a cache slot (the only one is taken),
 * which is the path that pops the bin's page directly. */
static sh_arena_t *bin_arena;
static int bin_results[3];

static void *alloc_through_a_damaged_bin(void *unused) {
  (void)unused;
  sh_arena_t *a = bin_arena;
  uint32_t id, gen;
  uint64_t small, large, again;
  sh_owner_create(a, 0, &id, &gen);
  sh_owner_nursery_opt_out(a, id, gen);
  if (sh_alloc(a, id, SH_PART_CONTEXT, 64, &small) != SH_OK || sh_alloc(a, id, SH_PART_CONTEXT, 512, &large) != SH_OK)
    return NULL;
  int c = _sh_size_class(a, 64);
  sh_atomic_store_relaxed(_sh_bin(a, id, SH_PART_CONTEXT, c), (uint32_t)(large >> a->page_shift));
  int rc = sh_alloc(a, id, SH_PART_CONTEXT, 64, &again);
  if (rc != SH_OK) fprintf(stderr, "alloc: %d %s\n", rc, sh_last_error());
  bin_results[0] = rc == SH_OK;
  bin_results[1] = bin_results[0] && _sh_pg_class(a, &a->pages[again >> a->page_shift]) == c;
  bin_results[2] = 1;
  return NULL;
}

static void test_bin_names_a_page_of_another_class(void) {
  sh_options_t o;
  sh_options_init(&o);
  o.page_size = 4096;
  o.max_threads = 1;
  REQUIRE("create", sh_create(&bin_arena, SH_BACKING_ANON, NULL, 4 * MiB, &o) == SH_OK);
  uint64_t mine;
  REQUIRE("this thread takes the only slot", sh_alloc(bin_arena, 0, SH_PART_CONTEXT, 64, &mine) == SH_OK);
  pthread_t t;
  pthread_create(&t, NULL, alloc_through_a_damaged_bin, NULL);
  pthread_join(t, NULL);
  CHECK("the other thread got this far", bin_results[2]);
  CHECK("the allocation answers after a rebuild", bin_results[0]);
  CHECK("from a page of its class", bin_results[1]);
  CHECK("check after", sh_check(bin_arena) == SH_OK);
  sh_close(bin_arena);
}

/* The cached path's refill binds a page of the bin to the thread's way, and
 * the pop trusts that binding: a bin naming another class's page handed out
 * that page's blocks as blocks of this class. */
static void test_cached_refill_skips_a_page_of_another_class(void) {
  sh_arena_t *a = make_anon(4 * MiB, 4096);
  uint32_t id, gen;
  uint64_t large, got;
  sh_owner_create(a, 0, &id, &gen);
  REQUIRE("no nursery", sh_owner_nursery_opt_out(a, id, gen) == SH_OK);
  REQUIRE("alloc 512", sh_alloc(a, id, SH_PART_CONTEXT, 512, &large) == SH_OK);
  int c = _sh_size_class(a, 64);
  sh_atomic_store_relaxed(_sh_bin(a, id, SH_PART_CONTEXT, c), (uint32_t)(large >> a->page_shift));
  CHECK("the allocation answers", sh_alloc(a, id, SH_PART_CONTEXT, 64, &got) == SH_OK);
  CHECK("with a block of its own class", _sh_pg_class(a, &a->pages[got >> a->page_shift]) == c);
  CHECK("check after", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A large run's length is a word of the arena: damaged, its free walked
 * the page table past its end, and a Block made from it ran past the map. */
static void test_large_run_length_damaged(void) {
  sh_arena_t *a = make_anon(4 * MiB, 4096);
  uint64_t run, next;
  REQUIRE("a run", sh_alloc(a, 0, SH_PART_SHARED, 3 * 4096, &run) == SH_OK);
  REQUIRE("the run after it", sh_alloc(a, 0, SH_PART_SHARED, 3 * 4096, &next) == SH_OK);
  sh_atomic_store_relaxed(&a->pages[run >> a->page_shift].capacity, 0x7FFFFFFFu);
  sh_block_info_t bi;
  CHECK("its info is corruption, not a length", sh_block_info(a, run, &bi) == SH_ECORRUPT);
  sh_free(a, run); /* any answer; no write past the run's own pages */
  CHECK("the next run is untouched", sh_block_info(a, next, &bi) == SH_OK && bi.usable_size == 3 * 4096);
  CHECK("and frees", sh_free(a, next) == SH_OK);
  sh_close(a);
}

/* An unpin killed between its two stores (the entry's count, then the
 * owner's) left the owner counting a pin no entry holds: the next reclaim
 * recounts from the entries, and the deferred agent goes. */
static void test_pin_count_recounted(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  uint32_t id, gen, keep_id, keep_gen;
  uint64_t off;
  sh_owner_info_t final, info;
  sh_owner_create(a, 0, &id, &gen);
  sh_alloc(a, id, SH_PART_CONTEXT, 48, &off);
  CHECK("pin", sh_owner_pin(a, id, gen) == SH_OK);
  sh_owner_create(a, 0, &keep_id, &keep_gen);
  CHECK("pin another", sh_owner_pin(a, keep_id, keep_gen) == SH_OK);
  CHECK("pinned complete defers", sh_owner_complete(a, id, gen, &final) == SH_EPINNED);
  for (uint64_t i = 0; i <= a->pin_mask; i++) /* the unpin's first store, not its second */
    if (a->pins[i].count && a->pins[i].owner == id) a->pins[i].count = 0;
  uint64_t dropped;
  uint32_t recycled = 0;
  CHECK("a reclaim recounts", sh_pins_reclaim_dead(a, &dropped, &recycled) == SH_OK && dropped == 0 && recycled == 1);
  CHECK("the agent went", sh_owner_generation(a, id) == 0 && in_use(a, SH_PART_CONTEXT) == 0);
  CHECK("a pin an entry holds stays", sh_owner_info(a, keep_id, &info) == SH_OK && info.pins == 1);
  int r = 0;
  CHECK("and is released", sh_owner_unpin(a, keep_id, keep_gen, &r) == SH_OK);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* Pin entries whose count fell to 0 stayed as tombstones for good: after
 * enough agents had come and gone the table had no empty slot left, and
 * every pin walked all of it. An unpin, and a reclaim of a dead process's
 * pins, now empty the tombstones an empty slot follows. */
static size_t pin_slots_used(const sh_arena_t *a) {
  size_t used = 0;
  for (uint64_t i = 0; i <= a->pin_mask; i++) used += a->pins[i].pid != 0;
  return used;
}

static void test_pin_tombstones_cleared(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  uint32_t keep_id, keep_gen, id, gen;
  sh_owner_info_t final;
  sh_owner_create(a, 0, &keep_id, &keep_gen);
  CHECK("a pin held throughout", sh_owner_pin(a, keep_id, keep_gen) == SH_OK);
  int r = 0, ok = 1;
  for (uint64_t n = 0; n < 4 * (a->pin_mask + 1); n++) {
    ok &= sh_owner_create(a, 0, &id, &gen) == SH_OK && sh_owner_pin(a, id, gen) == SH_OK &&
          sh_owner_pin(a, id, gen) == SH_OK && sh_owner_unpin(a, id, gen, &r) == SH_OK &&
          sh_owner_unpin(a, id, gen, &r) == SH_OK && sh_owner_complete(a, id, gen, &final) == SH_OK;
  }
  CHECK("agents came and went", ok);
  CHECK("only the held pin's entry is left", pin_slots_used(a) == 1);
  CHECK("and it is found", sh_owner_unpin(a, keep_id, keep_gen, &r) == SH_OK && pin_slots_used(a) == 0);

  /* a dead process's pin: the reclaim makes it a tombstone, then empties it */
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, NULL, 0);
  CHECK("pin", sh_owner_pin(a, keep_id, keep_gen) == SH_OK && pin_slots_used(a) == 1);
  for (uint64_t i = 0; i <= a->pin_mask; i++)
    if (a->pins[i].pid != 0) a->pins[i].pid = child;
  uint64_t dropped = 0;
  CHECK("reclaimed", sh_pins_reclaim_dead(a, &dropped, NULL) == SH_OK && dropped == 1);
  CHECK("and its entry emptied", pin_slots_used(a) == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* One reclaim asks /proc once per process, and more processes than it keeps
 * verdicts for (128) are still judged, one by one: the pins of 150 dead
 * processes go, each beside a live pin of this process's that stays. */
static void test_dead_pins_of_many_processes(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 256 * MiB, NULL) == SH_OK);
  enum { DEAD = 150 };
  REQUIRE("room for every pin", a->pin_mask + 1 > 2 * DEAD);
  uint32_t ids[2 * DEAD], gens[2 * DEAD];
  int ok = 1;
  for (int i = 0; i < 2 * DEAD; i++)
    ok &= sh_owner_create(a, 0, &ids[i], &gens[i]) == SH_OK && sh_owner_pin(a, ids[i], gens[i]) == SH_OK;
  CHECK("pinned", ok);
  for (int i = 0; i < DEAD; i++) { /* the first half's pins are each a dead child's */
    pid_t child = fork();
    if (child == 0) _exit(0);
    waitpid(child, NULL, 0);
    for (uint64_t j = 0; j <= a->pin_mask; j++)
      if (a->pins[j].count != 0 && a->pins[j].owner == ids[i]) a->pins[j].pid = child;
  }
  uint64_t dropped = 0;
  CHECK("every dead pin dropped", sh_pins_reclaim_dead(a, &dropped, NULL) == SH_OK && dropped == DEAD);
  ok = 1;
  for (int i = 0; i < 2 * DEAD; i++) ok &= a->owners[ids[i]].pins == (i < DEAD ? 0u : 1u);
  CHECK("and only those", ok && pin_slots_used(a) == DEAD);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* An owner is its creating process's until detached (the heap's) or adopted
 * (an orphan taken by the caller, as a restore does). */
static void test_owner_detach_and_adopt(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  uint32_t id, gen, other, other_gen;
  sh_owner_create(a, 0, &id, &gen);
  sh_owner_create(a, 0, &other, &other_gen);
  int adopted = 1;
  CHECK("a live process's agent is not an orphan",
        sh_owner_adopt_orphan(a, id, gen, &adopted) == SH_OK && !adopted && a->owners[id].pid == getpid());
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, NULL, 0);
  a->owners[id].pid = child; /* as if the child had spawned it */
  CHECK("a dead process's agent is dead", sh_owner_process_alive(a, id) == 0);
  CHECK("and adopted", sh_owner_adopt_orphan(a, id, gen, &adopted) == SH_OK && adopted &&
                           a->owners[id].pid == getpid() && sh_owner_process_alive(a, id) == 1);
  CHECK("detached", sh_owner_detach(a, other, other_gen) == SH_OK && a->owners[other].pid == 0 &&
                        sh_owner_process_alive(a, other) == 1);
  CHECK("a detached one is nobody's orphan",
        sh_owner_adopt_orphan(a, other, other_gen, &adopted) == SH_OK && !adopted && a->owners[other].pid == 0);
  CHECK("owners 0 and 1 have no process to change",
        sh_owner_detach(a, 0, 1) == SH_EINVAL && sh_owner_detach(a, SH_OWNER_NURSERY, 1) == SH_EINVAL);
  CHECK("a gone generation", sh_owner_detach(a, other, other_gen + 1) == SH_EOWNER &&
                                 sh_owner_adopt_orphan(a, id, gen + 1, &adopted) == SH_EOWNER);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static void note_finals(const sh_owner_info_t *finals, uint32_t n, uint32_t *kinds_seen, uint32_t *blocks) {
  for (uint32_t i = 0; i < n; i++) {
    *kinds_seen |= 1u << (finals[i].kind - 40);
    *blocks += (uint32_t)finals[i].blocks;
  }
}

/* Completed agents that only a dead process's pins kept are recycled by the
 * reclaim and reported, at most max_finals a call; the rest wait, completed
 * and unpinned, for the next call. */
static void test_dead_pins_report_what_they_recycle(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, NULL, 0);
  uint32_t ids[5], gens[5];
  uint64_t off;
  sh_owner_info_t final;
  int ok = 1;
  for (int i = 0; i < 5; i++) {
    ok &= sh_owner_create(a, 40u + (uint32_t)i, &ids[i], &gens[i]) == SH_OK;
    for (int j = 0; j <= i; j++) ok &= sh_alloc(a, ids[i], SH_PART_CONTEXT, 100, &off) == SH_OK;
    ok &= sh_owner_pin(a, ids[i], gens[i]) == SH_OK && sh_owner_complete(a, ids[i], gens[i], &final) == SH_EPINNED;
  }
  CHECK("five completed agents, pinned", ok);
  for (uint64_t i = 0; i <= a->pin_mask; i++) /* the pins are the dead child's */
    if (a->pins[i].pid != 0) a->pins[i].pid = child;
  sh_owner_info_t finals[2];
  uint64_t dropped = 0, more = 0;
  uint32_t recycled = 0, seen = 0, blocks = 0;
  CHECK("a first call drops every pin and reports two",
        sh_pins_reclaim_dead_final(a, &dropped, &recycled, finals, 2) == SH_OK && dropped == 5 && recycled == 2);
  note_finals(finals, recycled, &seen, &blocks);
  CHECK("the rest wait, unpinned", sh_owner_generation(a, ids[4]) == gens[4] && in_use(a, SH_PART_CONTEXT) > 0);
  CHECK("the next reports two more", sh_pins_reclaim_dead_final(a, &more, &recycled, finals, 2) == SH_OK &&
                                         more == 0 && recycled == 2);
  note_finals(finals, recycled, &seen, &blocks);
  CHECK("and the last the fifth", sh_pins_reclaim_dead_final(a, &more, &recycled, finals, 2) == SH_OK &&
                                      recycled == 1);
  note_finals(finals, recycled, &seen, &blocks);
  CHECK("each once, with its figures", seen == 0x1f && blocks == 1 + 2 + 3 + 4 + 5);
  CHECK("none left", sh_pins_reclaim_dead_final(a, &more, &recycled, finals, 2) == SH_OK && recycled == 0 &&
                         in_use(a, SH_PART_CONTEXT) == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

int main(void) {
  test_pin_tombstones_cleared();
  test_dead_pins_report_what_they_recycle();
  test_dead_pins_of_many_processes();
  test_owner_detach_and_adopt();
  test_pin_count_recounted();
  test_large_run_length_damaged();
  test_cached_refill_skips_a_page_of_another_class();
  test_bin_names_a_page_of_another_class();
  test_header_sizes_damaged_after_attach();
  test_damaged_channel();
  test_channel_exact_capacity();
  test_channel_wait_called_off();
  test_nursery_opt_out();
  test_nursery_recycle_takes_the_map();
  test_owner_free_is_of_one_incarnation();
  test_cached_page_before_nursery();
  test_nursery_free_without_the_lock();
  test_sweep_queues();
  test_nolock();
  test_options();
  test_layout();
  test_blocks();
  test_exhaustion();
  test_owners();
  test_owner_complete();
  test_free_many();
  test_calloc();
  test_write_after_free();
  test_shared_mapping();
  test_lock_owner_died();
  test_lock_word_names_no_thread();
  test_lock_owner_died_mid_refill();
  test_alloc_racing_its_recycle();
  test_alloc_many();
  test_dead_sender_message();
  return check_summary("test_unit");
}
