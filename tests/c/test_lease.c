/* Leases on owner 0's blocks: a sweep frees what ran out, once, and never a
 * block that was freed (and maybe handed out again) in the meantime. */
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "swarmheap.h"
#include "testhelper.h"

static void test_expiry(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  uint64_t small, big, kept, deadline = 0, blocks, bytes;
  sh_alloc(a, 0, SH_PART_SHARED, 100, &small);
  sh_alloc(a, 0, SH_PART_SHARED, 300000, &big);
  sh_alloc(a, 0, SH_PART_SHARED, 100, &kept);
  CHECK("lease small", sh_lease_set(a, small, 1000) == SH_OK);
  CHECK("lease large", sh_lease_set(a, big, 2000) == SH_OK);
  CHECK("lease read back", sh_lease_get(a, small, &deadline) == SH_OK && deadline == 1000);
  CHECK("no lease", sh_lease_get(a, kept, &deadline) == SH_ENOENT);
  CHECK("renew", sh_lease_set(a, small, 1500) == SH_OK && sh_lease_count(a) == 2);
  CHECK("nothing due yet", sh_lease_reclaim(a, 1499, &blocks, &bytes) == SH_OK && blocks == 0);
  CHECK("the small one is due", sh_lease_reclaim(a, 1500, &blocks, &bytes) == SH_OK && blocks == 1 && bytes == 112);
  CHECK("and the large one", sh_lease_reclaim(a, 5000, &blocks, &bytes) == SH_OK && blocks == 1 && bytes >= 300000);
  CHECK("once", sh_lease_reclaim(a, 9000, &blocks, &bytes) == SH_OK && blocks == 0 && sh_lease_count(a) == 0);
  CHECK("only the unleased block is left", in_use(a, SH_PART_SHARED) == 112);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static void test_free_ends_the_lease(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  uint64_t x, again, blocks, bytes;
  sh_alloc(a, 0, SH_PART_CONTEXT, 64, &x);
  sh_lease_set(a, x, 10);
  CHECK("nolock free defers to the locked path", sh_free_nolock(a, x) == SH_EAGAIN);
  CHECK("free", sh_free(a, x) == SH_OK);
  CHECK("its lease went with it", sh_lease_count(a) == 0);
  CHECK("the same block handed out again", sh_alloc(a, 0, SH_PART_CONTEXT, 64, &again) == SH_OK && again == x);
  CHECK("is not freed by an old lease", sh_lease_reclaim(a, 1000, &blocks, &bytes) == SH_OK && blocks == 0);
  CHECK("still live", in_use(a, SH_PART_CONTEXT) == 64);
  sh_lease_set(a, again, 10);
  CHECK("clear", sh_lease_clear(a, again) == SH_OK && sh_lease_count(a) == 0);
  CHECK("a cleared lease frees nothing", sh_lease_reclaim(a, 1000, &blocks, &bytes) == SH_OK && blocks == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

static void test_refusals(void) {
  sh_options_t o;
  sh_options_init(&o);
  o.max_owners = 16;
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, &o) == SH_OK);
  uint32_t id, gen;
  uint64_t off, free_off;
  sh_owner_create(a, 0, &id, &gen);
  sh_alloc(a, id, SH_PART_CONTEXT, 64, &off);
  CHECK("an agent's block takes no lease", sh_lease_set(a, off, 10) == SH_EINVAL);
  sh_alloc(a, 0, SH_PART_CONTEXT, 64, &free_off);
  sh_free(a, free_off);
  CHECK("a free block takes no lease", sh_lease_set(a, free_off, 10) == SH_EBADPTR);
  CHECK("outside the arena", sh_lease_set(a, 1ull << 40, 10) == SH_EBADPTR);
  int rc = SH_OK, n = 0;
  while (rc == SH_OK && n < 1000) {
    sh_alloc(a, 0, SH_PART_COMM, 32, &off);
    rc = sh_lease_set(a, off, 10);
    n++;
  }
  CHECK("the table fills", rc == SH_EFULL && n == 193); /* 3/4 of 256 entries, then one refused */
  CHECK("message names it", strstr(sh_last_error(), "block table is full") != NULL);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* Handle tags: exact across free and reuse, for owner 0 and agents. */
static void test_tags(void) {
  sh_arena_t *a;
  sh_options_t o;
  sh_options_init(&o);
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, &o) == SH_OK);
  uint64_t off, again, tag, tag2, t;
  REQUIRE("alloc", sh_alloc(a, 0, SH_PART_SHARED, 64, &off) == SH_OK);
  CHECK("tag", sh_block_tag(a, off, &tag) == SH_OK && tag != 0);
  CHECK("same tag twice", sh_block_tag(a, off, &t) == SH_OK && t == tag);
  CHECK("live check", sh_block_tag_check(a, off, tag) == SH_OK);
  CHECK("wrong tag", sh_block_tag_check(a, off, tag + 1) == SH_EOWNER);
  CHECK("free", sh_free(a, off) == SH_OK);
  CHECK("freed: stale or not a block", sh_block_tag_check(a, off, tag) != SH_OK);
  REQUIRE("realloc", sh_alloc(a, 0, SH_PART_SHARED, 64, &again) == SH_OK);
  CHECK("same place reused", again == off);
  CHECK("reused: stale", sh_block_tag_check(a, off, tag) == SH_EOWNER);
  CHECK("new tag differs", sh_block_tag(a, again, &tag2) == SH_OK && tag2 != tag);
  CHECK("new tag checks", sh_block_tag_check(a, again, tag2) == SH_OK);
  uint32_t id, gen;
  sh_owner_create(a, 0, &id, &gen);
  uint64_t aoff, atag;
  sh_alloc(a, id, SH_PART_CONTEXT, 200, &aoff);
  CHECK("agent block tag", sh_block_tag(a, aoff, &atag) == SH_OK);
  sh_free(a, aoff);
  uint64_t aoff2;
  sh_alloc(a, id, SH_PART_CONTEXT, 200, &aoff2);
  CHECK("agent reuse is stale", aoff2 != aoff || sh_block_tag_check(a, aoff2, atag) == SH_EOWNER);
  uint64_t usable = 0;
  CHECK("alloc_owner of a live agent", sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 100, &aoff, &usable) == SH_OK &&
                                         usable == 112);
  CHECK("alloc_owner of a wrong generation", sh_alloc_owner(a, id, gen + 1, SH_PART_CONTEXT, 100, &aoff, &usable) ==
                                                 SH_EOWNER);
  sh_owner_recycle(a, id, gen);
  CHECK("recycled: alloc_owner refuses", sh_alloc_owner(a, id, gen, SH_PART_CONTEXT, 100, &aoff, &usable) == SH_EOWNER);
  /* entries of the recycled agent's blocks are stale: a full table drops them */
  uint64_t entries, cap;
  sh_block_table_load(a, &entries, &cap);
  CHECK("load counted", entries == 1 && cap == 256);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* Two processes reclaim the same expired leases at once: each block once. */
static void test_concurrent_reclaim(void) {
  char name[64];
  snprintf(name, sizeof name, "/sh_lease_%d", (int)getpid());
  sh_unlink(SH_BACKING_SHM, name);
  sh_arena_t *a = NULL;
  REQUIRE("shm create", sh_create(&a, SH_BACKING_SHM, name, 32 * MiB, NULL) == SH_OK);
  sh_unlink(SH_BACKING_SHM, name);
  enum { N = 120 };
  for (int i = 0; i < N; i++) {
    uint64_t off;
    sh_alloc(a, 0, SH_PART_SHARED, 40, &off);
    sh_lease_set(a, off, 5);
  }
  int pipefd[2];
  REQUIRE("pipe", pipe(pipefd) == 0);
  pid_t child = fork();
  if (child == 0) {
    uint64_t blocks = 0, bytes;
    char go;
    if (read(pipefd[0], &go, 1) != 1) _exit(255);
    sh_lease_reclaim(a, 100, &blocks, &bytes);
    _exit((int)blocks);
  }
  uint64_t mine = 0, bytes;
  if (write(pipefd[1], "g", 1) != 1) mine = 1000;
  sh_lease_reclaim(a, 100, &mine, &bytes);
  int status;
  waitpid(child, &status, 0);
  CHECK("child reclaimed", WIFEXITED(status));
  CHECK("every block freed exactly once", mine + (uint64_t)WEXITSTATUS(status) == N);
  CHECK("nothing left", in_use(a, SH_PART_SHARED) == 0 && sh_lease_count(a) == 0);
  CHECK("check", sh_check(a) == SH_OK);
  close(pipefd[0]);
  close(pipefd[1]);
  sh_close(a);
}

/* A leased message whose lease runs out while it is queued: the sweep frees
 * its block, and neither a receiver nor a purge hands out that place again,
 * even once another block took it. Messages around it arrive, in order. */
static void test_leased_messages(void) {
  sh_arena_t *a = NULL;
  REQUIRE("create", sh_create(&a, SH_BACKING_ANON, NULL, 16 * MiB, NULL) == SH_OK);
  uint64_t chan, plain, leased[3], reused, msg, size, blocks, bytes;
  uint32_t dropped;
  sh_chan_stats_t st;
  REQUIRE("channel", sh_chan_create(a, 8, 4096, &chan) == SH_OK);
  for (int i = 0; i < 3; i++) {
    sh_alloc(a, 0, SH_PART_COMM, 100, &leased[i]);
    sh_lease_set(a, leased[i], 1000);
  }
  sh_alloc(a, 0, SH_PART_COMM, 100, &plain);
  CHECK("a leased message first", sh_chan_send(a, chan, leased[0], 100, 0) == SH_OK);
  CHECK("then a plain one", sh_chan_send(a, chan, plain, 90, 0) == SH_OK);
  CHECK("then two leased", sh_chan_send(a, chan, leased[1], 80, 0) == SH_OK &&
                               sh_chan_send(a, chan, leased[2], 70, 0) == SH_OK);
  CHECK("the leases run out", sh_lease_reclaim(a, 2000, &blocks, &bytes) == SH_OK && blocks == 3);
  CHECK("a block takes the first one's place", sh_alloc(a, 0, SH_PART_COMM, 100, &reused) == SH_OK);
  sh_block_tag(a, reused, &(uint64_t){0}); /* with a tag of its own: still not the message's */
  sh_lease_set(a, reused, 5000);
  CHECK("the purge drops all three", sh_chan_purge(a, chan, &dropped) == SH_OK && dropped == 3);
  CHECK("the depth counts the plain one alone", sh_chan_stats(a, chan, &st) == SH_OK && st.depth == 1 &&
                                                   st.bytes_in_flight == 90);
  CHECK("a second purge finds none", sh_chan_purge(a, chan, &dropped) == SH_OK && dropped == 0);
  sh_block_info_t info;
  CHECK("the plain one arrives, its block checked",
        sh_chan_recv_held(a, chan, &msg, &size, 0, &info, NULL) == SH_OK && msg == plain && size == 90 &&
            info.owner == 0 && info.usable_size >= 90 && info.partition == SH_PART_COMM);
  sh_chan_unhold(a, msg);
  CHECK("and nothing after it", sh_chan_recv(a, chan, &msg, &size, 0) == SH_ETIMEDOUT);
  CHECK("emptied", sh_chan_stats(a, chan, &st) == SH_OK && st.depth == 0 && st.bytes_in_flight == 0 &&
                       st.received == 1 && st.sent == 4);
  /* without a purge, a receiver alone passes over a gone message */
  uint64_t again;
  sh_alloc(a, 0, SH_PART_COMM, 100, &again);
  sh_lease_set(a, again, 1000);
  CHECK("sent", sh_chan_send(a, chan, again, 100, 0) == SH_OK && sh_chan_send(a, chan, plain, 90, 0) == SH_OK);
  CHECK("reclaimed", sh_lease_reclaim(a, 2000, &blocks, &bytes) == SH_OK && blocks == 1);
  CHECK("the receiver gets the plain one", sh_chan_recv(a, chan, &msg, &size, 0) == SH_OK && msg == plain);
  /* a lease still running: the message arrives */
  sh_alloc(a, 0, SH_PART_COMM, 100, &again);
  sh_lease_set(a, again, 9000);
  CHECK("sent with a lease", sh_chan_send(a, chan, again, 100, 0) == SH_OK);
  CHECK("nothing due", sh_lease_reclaim(a, 2000, &blocks, &bytes) == SH_OK && blocks == 0);
  CHECK("kept by a purge", sh_chan_purge(a, chan, &dropped) == SH_OK && dropped == 0);
  CHECK("arrives", sh_chan_recv(a, chan, &msg, &size, 0) == SH_OK && msg == again && size == 100);
  /* a message that is not a block (a damaged ring) is damage, not followed */
  CHECK("a number, not a block", sh_chan_send(a, chan, 64, 8, 0) == SH_OK);
  CHECK("is SH_ECORRUPT to a checked receive", sh_chan_recv_held(a, chan, &msg, &size, 0, &info, NULL) == SH_ECORRUPT);
  CHECK("and is in nobody's hands", sh_chan_in_hand(a) == 0);
  sh_free(a, again);
  sh_free(a, plain);
  sh_free(a, reused);
  CHECK("freed", sh_free(a, sh_chan_offset(chan)) == SH_OK && in_use(a, SH_PART_COMM) == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
}

/* A block an agent's index dropped while another process viewed the agent's
 * entries waits in the table until the views go, then a sweep frees it once;
 * one of a recycled agent is never freed by it. */
static void test_after_views(void) {
  sh_arena_t *a;
  sh_unlink(SH_BACKING_SHM, "/sh_test_after_views"); /* a run killed before its end */
  REQUIRE("create", sh_create(&a, SH_BACKING_SHM, "/sh_test_after_views", 16 * MiB, NULL) == SH_OK);
  uint32_t id, gen, views = 9;
  uint64_t kept, other, blocks, bytes;
  sh_owner_create(a, 0, &id, &gen);
  sh_alloc(a, id, SH_PART_CONTEXT, 100, &kept);
  sh_alloc(a, id, SH_PART_CONTEXT, 100, &other);
  CHECK("no views", sh_owner_views(a, id, gen, 0, &views) == SH_OK && views == 0);
  CHECK("a plain pin is no view", sh_owner_pin(a, id, gen) == SH_OK &&
                                      sh_owner_views(a, id, gen, 0, &views) == SH_OK && views == 0);
  CHECK("a view pin is", sh_owner_view_pin(a, id, gen) == SH_OK &&
                             sh_owner_views(a, id, gen, 0, &views) == SH_OK && views == 1);
  CHECK("of this process, not of others", sh_owner_views(a, id, gen, 1, &views) == SH_OK && views == 0);
  int ready[2], done[2];
  REQUIRE("pipes", pipe(ready) == 0 && pipe(done) == 0);
  pid_t child = fork();
  if (child == 0) {
    sh_arena_t *c;
    char byte = 0;
    int ok = sh_attach(&c, SH_BACKING_SHM, "/sh_test_after_views", 0) == SH_OK && sh_owner_view_pin(c, id, gen) == SH_OK;
    if (write(ready[1], &byte, 1) != 1 || read(done[0], &byte, 1) != 1) _exit(3);
    ok = ok && sh_owner_view_unpin(c, id, gen, NULL) == SH_OK;
    sh_close(c);
    _exit(ok ? 0 : 1);
  }
  char byte = 0;
  REQUIRE("the child holds a view", read(ready[0], &byte, 1) == 1);
  CHECK("another process's view counts", sh_owner_views(a, id, gen, 1, &views) == SH_OK && views == 1);
  CHECK("recorded", sh_free_after_views(a, kept, id, gen, 0) == SH_OK && sh_after_views_count(a) == 1);
  CHECK("twice is once", sh_free_after_views(a, kept, id, gen, 0) == SH_OK && sh_after_views_count(a) == 1);
  CHECK("not a lease", sh_lease_count(a) == 0 && sh_lease_get(a, kept, &bytes) == SH_ENOENT);
  CHECK("another agent's block is refused", sh_free_after_views(a, kept, id, gen + 1, 0) == SH_EOWNER);
  CHECK("views left: kept", sh_views_reclaim(a, &blocks, &bytes) == SH_OK && blocks == 0 &&
                                in_use(a, SH_PART_CONTEXT) == 224);
  CHECK("an expired-lease sweep leaves it", sh_lease_reclaim(a, UINT64_MAX - 1, &blocks, &bytes) == SH_OK &&
                                                blocks == 0);
  REQUIRE("the child lets go", write(done[1], &byte, 1) == 1);
  int status = 0;
  waitpid(child, &status, 0);
  CHECK("the child's calls", WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK("this process's own view still holds it", sh_views_reclaim(a, &blocks, &bytes) == SH_OK && blocks == 0);
  CHECK("a view unpin needs a view", sh_owner_view_unpin(a, id, gen, NULL) == SH_OK &&
                                         sh_owner_view_unpin(a, id, gen, NULL) == SH_ESTATE);
  CHECK("no views: freed", sh_views_reclaim(a, &blocks, &bytes) == SH_OK && blocks == 1 && bytes == 112 &&
                               in_use(a, SH_PART_CONTEXT) == 112 && sh_after_views_count(a) == 0);
  CHECK("once", sh_views_reclaim(a, &blocks, &bytes) == SH_OK && blocks == 0);
  CHECK("the plain pin", sh_owner_unpin(a, id, gen, NULL) == SH_OK);
  /* recorded, then the agent recycled and its place reused: never freed by the entry */
  CHECK("view again", sh_owner_view_pin(a, id, gen) == SH_OK);
  CHECK("recorded again", sh_free_after_views(a, other, id, gen, 0) == SH_OK);
  int recycled = 0;
  sh_owner_recycle(a, id, gen); /* pinned: completed, recycled at the unpin */
  CHECK("the last unpin recycles", sh_owner_view_unpin(a, id, gen, &recycled) == SH_OK && recycled == 1);
  uint32_t id2, gen2;
  uint64_t reused;
  sh_owner_create(a, 0, &id2, &gen2);
  sh_alloc(a, id2, SH_PART_CONTEXT, 100, &reused);
  CHECK("a stale entry is dropped, nothing freed", sh_views_reclaim(a, &blocks, &bytes) == SH_OK && blocks == 0 &&
                                                       sh_after_views_count(a) == 0 && in_use(a, SH_PART_CONTEXT) == 112);
  /* at most a quarter of the table waits: leases and handle tags keep their room */
  uint64_t entries, cap, off, tag;
  sh_block_table_load(a, &entries, &cap);
  int rc = SH_OK, n = 0;
  while (rc == SH_OK && n < 1000) {
    REQUIRE("alloc", sh_alloc(a, id2, SH_PART_CONTEXT, 100, &off) == SH_OK);
    rc = sh_free_after_views(a, off, id2, gen2, 0);
    n++;
  }
  CHECK("a quarter of the table, then refused", rc == SH_EFULL && (uint64_t)n == cap / 4 + 1 &&
                                                    sh_after_views_count(a) == cap / 4);
  CHECK("says why", strstr(sh_last_error(), "wait for views") != NULL);
  sh_alloc(a, 0, SH_PART_SHARED, 64, &off);
  CHECK("a handle tag still fits", sh_block_tag(a, off, &tag) == SH_OK);
  CHECK("no views: every waiting block freed", sh_views_reclaim(a, &blocks, &bytes) == SH_OK &&
                                                   blocks == cap / 4 && sh_after_views_count(a) == 0);
  CHECK("check", sh_check(a) == SH_OK);
  sh_close(a);
  sh_unlink(SH_BACKING_SHM, "/sh_test_after_views");
}

int main(void) {
  test_expiry();
  test_leased_messages();
  test_free_ends_the_lease();
  test_refusals();
  test_tags();
  test_after_views();
#if !defined(__SANITIZE_THREAD__)
  test_concurrent_reclaim();
#endif
  return check_summary("test_lease");
}
