# Declarations of the C core's public header (csrc/swarmheap.h).
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t


cdef extern from "swarmheap.h" nogil:
    ctypedef enum sh_status_t:
        SH_OK
        SH_EINVAL
        SH_EFULL
        SH_ENOMEM
        SH_ESYS
        SH_ENOSPC
        SH_EEXIST
        SH_ENOENT
        SH_ETRUNCATED
        SH_EMAGIC
        SH_EVERSION
        SH_ECHECKSUM
        SH_ECORRUPT
        SH_EBADPTR
        SH_EDOUBLEFREE
        SH_EOWNER
        SH_ETOOMANY
        SH_EPINNED
        SH_ESTATE
        SH_EAGAIN
        SH_ETIMEDOUT
        SH_ECLOSED
        SH_ECANCELED
        SH_EINTR

    ctypedef enum sh_partition_t:
        SH_PART_CONTEXT
        SH_PART_SHARED
        SH_PART_COMM
        SH_PART_SYSTEM
        SH_NPARTITIONS

    ctypedef enum sh_backing_t:
        SH_BACKING_ANON
        SH_BACKING_SHM
        SH_BACKING_FILE

    ctypedef enum sh_owner_state_t:
        SH_OWNER_FREE
        SH_OWNER_LIVE
        SH_OWNER_COMPLETED
        SH_OWNER_DEAD
        SH_OWNER_OFFLOADED

    enum: SH_MAX_CLASSES
    uint32_t SH_OWNER_DEFAULT
    uint32_t SH_FIRST_AGENT

    ctypedef struct sh_arena_t:
        pass

    ctypedef struct sh_options_t:
        double ratios[4]
        uint32_t page_size
        uint32_t max_owners
        uint32_t max_threads
        uint32_t min_system_pages

    ctypedef struct sh_partition_stats_t:
        uint64_t capacity, in_use, pages_used, pages_total, peak, allocs, frees, failures, overhead

    ctypedef struct sh_class_stats_t:
        uint32_t block_size, pages
        uint64_t blocks_used, blocks_free, allocs, frees

    ctypedef struct sh_owner_info_t:
        uint32_t id, generation, kind
        sh_owner_state_t state
        int32_t pid
        uint64_t pid_start_time, created_ns, last_active_ns
        uint32_t pins
        uint64_t bytes[4]
        uint64_t pages[4]
        uint64_t peak_pages[4]
        uint64_t blocks, user_word, reserved_bytes
        uint64_t class_bytes[SH_MAX_CLASSES + 1]

    ctypedef struct sh_block_info_t:
        uint64_t offset, usable_size
        uint32_t owner, owner_generation
        sh_partition_t partition
        int size_class

    ctypedef struct sh_arena_info_t:
        uint64_t size
        uint32_t page_size, nclasses, max_owners, format_version
        uint64_t small_limit, metadata_bytes
        uint64_t nursery_limit
        uint64_t nursery_classes
        uint32_t nursery_blocks, nursery_class_blocks
        uint64_t part_offset[4]
        uint64_t part_size[4]
        uint32_t class_size[64]
        uint64_t region_offset[11]

    const char *sh_strerror(int status)
    const char *sh_last_error()
    void sh_options_init(sh_options_t *opts)
    int sh_create(sh_arena_t **out, sh_backing_t backing, const char *name, size_t size, const sh_options_t *opts)
    int sh_attach(sh_arena_t **out, sh_backing_t backing, const char *name, int read_only)
    void sh_close(sh_arena_t *arena)
    int sh_unlink(sh_backing_t backing, const char *name)
    void sh_arena_info(const sh_arena_t *arena, sh_arena_info_t *info)
    void *sh_base(const sh_arena_t *arena)
    int sh_alloc(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset)
    int sh_alloc_nolock(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset)
    int sh_alloc_owner(sh_arena_t *arena, uint32_t owner, uint32_t generation, sh_partition_t partition,
                       size_t size, uint64_t *offset, uint64_t *usable)
    int sh_alloc_owner_nolock(sh_arena_t *arena, uint32_t owner, uint32_t generation, sh_partition_t partition,
                              size_t size, uint64_t *offset, uint64_t *usable)
    int sh_calloc(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset)
    int sh_calloc_nolock(sh_arena_t *arena, uint32_t owner, sh_partition_t partition, size_t size, uint64_t *offset)
    int sh_free(sh_arena_t *arena, uint64_t offset)
    int sh_free_nolock(sh_arena_t *arena, uint64_t offset)
    int sh_block_info(const sh_arena_t *arena, uint64_t offset, sh_block_info_t *info)
    uint64_t sh_good_size(const sh_arena_t *arena, size_t size)
    int sh_owner_create(sh_arena_t *arena, uint32_t kind, uint32_t *id, uint32_t *generation)
    int sh_owner_recycle(sh_arena_t *arena, uint32_t id, uint32_t generation)
    int sh_owner_offload(sh_arena_t *arena, uint32_t id, uint32_t generation, uint64_t expected_word,
                         sh_owner_info_t *final)
    int sh_owner_unrestore(sh_arena_t *arena, uint32_t id, uint32_t generation, sh_owner_info_t *final)
    uint32_t sh_owner_state(const sh_arena_t *arena, uint32_t id)
    int sh_owner_reserve(sh_arena_t *arena, uint32_t id, uint32_t generation, uint64_t nbytes, uint64_t limit)
    uint64_t sh_reserved_bytes(const sh_arena_t *arena)
    uint32_t sh_room_seq(const sh_arena_t *arena)
    uint64_t sh_nursery_reclaim(sh_arena_t *arena)
    int sh_owner_nursery_opt_out(sh_arena_t *arena, uint32_t id, uint32_t generation)
    int sh_room_wait(sh_arena_t *arena, uint32_t seen, int64_t timeout_ns)
    int sh_owner_complete(sh_arena_t *arena, uint32_t id, uint32_t generation, sh_owner_info_t *final)
    int sh_pins_reclaim_dead(sh_arena_t *arena, uint64_t *dropped, uint32_t *recycled)
    int sh_pins_reclaim_dead_final(sh_arena_t *arena, uint64_t *dropped, uint32_t *recycled,
                                   sh_owner_info_t *finals, uint32_t max_finals)
    int sh_owner_pin(sh_arena_t *arena, uint32_t id, uint32_t generation)
    int sh_owner_unpin(sh_arena_t *arena, uint32_t id, uint32_t generation, int *recycled)
    int sh_owner_view_pin(sh_arena_t *arena, uint32_t id, uint32_t generation)
    int sh_owner_view_unpin(sh_arena_t *arena, uint32_t id, uint32_t generation, int *recycled)
    int sh_owner_unpin_final(sh_arena_t *arena, uint32_t id, uint32_t generation, int view, int *recycled,
                             sh_owner_info_t *final)
    int sh_owner_views(sh_arena_t *arena, uint32_t id, uint32_t generation, int others_only, uint32_t *views)
    int sh_owner_set_state(sh_arena_t *arena, uint32_t id, uint32_t generation,
                           sh_owner_state_t expected, sh_owner_state_t desired)
    int sh_owner_set_dead(sh_arena_t *arena, uint32_t id, uint32_t generation, sh_owner_state_t expected,
                          int32_t pid, uint64_t start)
    int sh_owner_touch(sh_arena_t *arena, uint32_t id, uint32_t generation)
    int sh_owner_set_user_word(sh_arena_t *arena, uint32_t id, uint32_t generation, uint32_t offloads,
                               uint64_t expected, uint64_t desired)
    int sh_owner_user_word(const sh_arena_t *arena, uint32_t id, uint32_t generation, uint64_t *word)
    uint64_t SH_USER_WORD_HELD
    uint64_t SH_USER_WORD_SEALED
    uint64_t sh_held_next(uint64_t expected, uint64_t offset)
    uint64_t sh_owner_held_next(const sh_arena_t *arena, uint32_t id, uint64_t expected, uint64_t offset)
    uint64_t sh_held_offset(uint64_t word)
    uint32_t sh_owner_generation(const sh_arena_t *arena, uint32_t id)
    uint32_t sh_owner_offloads(const sh_arena_t *arena, uint32_t id)
    int sh_owner_info(const sh_arena_t *arena, uint32_t id, sh_owner_info_t *info)
    int sh_owner_process_alive(const sh_arena_t *arena, uint32_t id)
    int sh_process_start_time(int pid, uint64_t *start_time)
    int sh_process_alive(int pid, uint64_t start)
    int sh_owner_detach(sh_arena_t *arena, uint32_t id, uint32_t generation)
    int sh_owner_adopt_orphan(sh_arena_t *arena, uint32_t id, uint32_t generation, int *adopted)
    int sh_partition_stats(const sh_arena_t *arena, sh_partition_t partition, sh_partition_stats_t *stats)
    int sh_class_stats(const sh_arena_t *arena, int size_class, sh_class_stats_t *stats)
    int sh_check(sh_arena_t *arena)
    int sh_sweep_push(sh_arena_t *arena, int ring, uint32_t id, uint32_t generation)
    int sh_sweep_take(sh_arena_t *arena, int ring, uint64_t *entries, size_t max, size_t *taken)
    uint64_t sh_sweep_pending(const sh_arena_t *arena, int ring)
    int sh_thread_flush(sh_arena_t *arena)
    int sh_alloc_many(sh_arena_t *arena, sh_partition_t partition, size_t size, size_t n, uint64_t *offsets, size_t *done)
    int sh_free_many(sh_arena_t *arena, const uint64_t *offsets, size_t n, size_t *freed)
    int sh_lease_set(sh_arena_t *arena, uint64_t offset, uint64_t deadline_ns)
    int sh_lease_get(sh_arena_t *arena, uint64_t offset, uint64_t *deadline_ns)
    int sh_lease_clear(sh_arena_t *arena, uint64_t offset)
    int sh_lease_reclaim(sh_arena_t *arena, uint64_t now_ns, uint64_t *blocks, uint64_t *nbytes)
    uint64_t sh_lease_count(const sh_arena_t *arena)
    int sh_free_after_views(sh_arena_t *arena, uint64_t offset, uint32_t id, uint32_t generation, uint32_t offloads)
    int sh_owner_free(sh_arena_t *arena, uint64_t offset, uint32_t id, uint32_t generation, uint32_t offloads)
    int sh_owner_free_nolock(sh_arena_t *arena, uint64_t offset, uint32_t id, uint32_t generation, uint32_t offloads)
    int sh_views_reclaim(sh_arena_t *arena, uint64_t *blocks, uint64_t *nbytes)
    uint64_t sh_after_views_count(const sh_arena_t *arena)
    int sh_block_tag(sh_arena_t *arena, uint64_t offset, uint64_t *tag)
    int sh_block_tag_check(sh_arena_t *arena, uint64_t offset, uint64_t tag)
    void sh_block_table_load(const sh_arena_t *arena, uint64_t *entries, uint64_t *capacity)
    int sh_reclaim_dead_threads(sh_arena_t *arena, uint32_t *reclaimed)
    void sh_thread_slots(const sh_arena_t *arena, uint32_t *bound, uint32_t *total)
    uint64_t sh_magazine_blocks(const sh_arena_t *arena)

    ctypedef struct sh_chan_stats_t:
        uint32_t capacity, depth
        uint64_t max_message, sent, received, bytes_in_flight
        int closed

    int sh_chan_create(sh_arena_t *arena, uint32_t capacity, uint64_t max_message, uint64_t *chan)
    uint64_t sh_chan_offset(uint64_t chan)
    int sh_chan_send(sh_arena_t *arena, uint64_t chan, uint64_t msg, uint64_t size, int64_t timeout_ns)
    int sh_chan_recv(sh_arena_t *arena, uint64_t chan, uint64_t *msg, uint64_t *size, int64_t timeout_ns)
    int sh_chan_close(sh_arena_t *arena, uint64_t chan)
    int sh_chan_wait(sh_arena_t *arena, uint64_t chan, int want_room, int64_t timeout_ns,
                     const uint32_t *cancel)
    void sh_chan_call_off(sh_arena_t *arena, uint64_t chan, uint32_t *cancel)
    void sh_call_off_waits(sh_arena_t *arena)
    int sh_chan_hold(sh_arena_t *arena, uint64_t msg)
    void sh_chan_unhold(sh_arena_t *arena, uint64_t msg)
    int sh_chan_purge(sh_arena_t *arena, uint64_t chan, uint32_t *dropped)
    int sh_chan_recv_held(sh_arena_t *arena, uint64_t chan, uint64_t *msg, uint64_t *size, int64_t timeout_ns,
                          sh_block_info_t *info, uint64_t *tag)
    int sh_chan_reclaim_dead(sh_arena_t *arena, uint64_t *blocks)
    uint32_t sh_chan_in_hand(const sh_arena_t *arena)
    int sh_chan_stats(const sh_arena_t *arena, uint64_t chan, sh_chan_stats_t *st)
