# Argument parsing, and the one table of partition names.

PARTITIONS = ("context", "shared", "comm", "system")
# The metadata tables in arena order, as sh_arena_info reports them (info()["regions"]).
REGIONS = ("header", "pages", "bitmap", "owners", "bins", "stripes", "sweep", "thread_slots", "block_table", "pins")
OWNER_STATES = ("free", "live", "completed", "dead", "offloaded", "restoring")
# Owner 0 is the shared default, owner 1 the nursery (pages whose small
# blocks agents share); agents are owners from FIRST_AGENT on.
FIRST_AGENT = 2
# an offloaded agent's index word (SH_USER_WORD_SEALED): no index, and no update builds on it
SEALED_WORD = SH_USER_WORD_SEALED
# _owner_complete_row's figures, in order, as native float64: bytes held per
# partition, peak bytes in pages per partition, creation time (ns), then the
# live bytes of each size class (CLASS_SLOTS of them, by class index; the
# heap's last class + 1 is its runs of whole pages, the rest 0)
CLASS_SLOTS = SH_MAX_CLASSES + 1
USAGE_ROW = (
    tuple(f"bytes.{p}" for p in PARTITIONS)
    + tuple(f"peak.{p}" for p in PARTITIONS)
    + ("created_ns",)
    + tuple(f"class.{c}" for c in range(CLASS_SLOTS))
)
cdef dict _PART_INDEX = {name: i for i, name in enumerate(PARTITIONS)}
cdef str _CONTEXT = PARTITIONS[0]
cdef str _SHARED = PARTITIONS[1]
cdef str _COMM = PARTITIONS[2]
cdef str _SYSTEM = PARTITIONS[3]
cdef dict _STATE_INDEX = {name: i for i, name in enumerate(OWNER_STATES)}


cdef inline str _state_name(unsigned state):
    # a state read from the arena may be out of the table's range (damage)
    return OWNER_STATES[state] if state < 6 else "corrupt"


cdef int _part(object partition) except -1:
    # Literal names in the caller's code are interned, so they are these very
    # objects: identity answers without hashing (a dict lookup costs about a
    # sixth of an alloc+free pair from Python)
    if partition is _CONTEXT:
        return 0
    if partition is _SHARED:
        return 1
    if partition is _COMM:
        return 2
    if partition is _SYSTEM:
        return 3
    try:
        return _PART_INDEX[partition]
    except (KeyError, TypeError):
        raise ValueError(f"unknown partition {partition!r}: use one of {', '.join(PARTITIONS)}") from None


cdef uint64_t _size_arg(object size) except? 0xFFFFFFFFFFFFFFFF:
    if type(size) is int and 0 <= size < 0x7FFFFFFFFFFFFFFF:
        return size
    return parse_size(size)


cdef double _seconds_arg(object seconds, str what) except -1.0:
    """Positive, finite seconds below 1e9 (a NaN or an infinity never expires)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be seconds (an int or float), not {type(seconds).__name__}")
    if not (seconds > 0 and seconds < 1e9):  # False for NaN too
        raise ValueError(f"{what} must be positive seconds below 1e9, not {seconds!r}")
    return seconds


cdef uint64_t _lease_deadline_ns(object lease) except 0:
    """Seconds from now to an absolute CLOCK_REALTIME deadline in ns."""
    return <uint64_t>((time.time() + _seconds_arg(lease, "lease")) * 1e9)


cdef bytes _shm_name(object name):
    if not isinstance(name, str):
        raise TypeError(f"heap name must be a str, not {type(name).__name__}")
    if "/" in name:  # a path given where a name goes: say where paths go
        raise ValueError(f"heap name {name!r} has a '/': a name is shared memory's (1-250 characters without "
                         f"'/' or NUL); a file-backed heap takes path=, and its file goes with heap.unlink() "
                         f"or os.remove(path)")
    if not name or len(name) > 250 or "\0" in name:
        raise ValueError(f"heap name {name!r} must be 1-250 characters without '/' or NUL")
    return ("/" + name).encode()


# Free pages `system` needs past the metadata for what this layer keeps
# there: agents' indexes, the registry, channels' and kinds' records, each a
# page per size class. With 5 (a 5 MiB heap) a channel or a kind's model
# found 'system' full; with 3 (4 MiB) the first spawn did, on a partition
# the caller never named. The heap now says so when it is made.
cdef enum:
    SYSTEM_PAGES_NEEDED = 7


# The default page size follows the heap's size: 64 KiB from 40 MiB up, and
# below that the largest power of two (4 KiB at least) that leaves `system`,
# a tenth of the heap, 64 pages. Each size class of each bookkeeping owner
# (indexes, the registry) takes a page there, and an 8 MiB heap of 64 KiB
# pages has 7 to spare: spawning agents of 7 kinds with a few entries each,
# the 5th spawn found `system` full (16 KiB pages: all 162 the owner table
# holds; measured 2026-12-06).
cdef uint32_t _default_page_size(uint64_t nbytes):
    cdef uint32_t page = 65536
    while page > 4096 and <uint64_t>page * 640 > nbytes:
        page >>= 1
    return page


cdef int _options(sh_options_t *opts, object ratios, object page_size, object max_owners,
                  object max_threads) except -1:
    sh_options_init(opts)
    if ratios is not None:
        if not hasattr(ratios, "items"):
            raise TypeError("ratios must be a mapping of partition name to share")
        unknown = set(ratios) - set(PARTITIONS)
        if unknown:
            raise ValueError(f"unknown partition(s) in ratios: {sorted(unknown)}; use {', '.join(PARTITIONS)}")
        missing = set(PARTITIONS) - set(ratios)
        if missing:
            raise ValueError(f"ratios must give all four partitions; missing {sorted(missing)}")
        for key, share in ratios.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)):
                raise TypeError(f"ratio of {key!r} must be a number, not {type(share).__name__}")
            try:
                value = float(share)
            except OverflowError:
                raise ValueError(f"ratio of {key!r} must be above 0 and below 1, not {share!r}") from None
            if not (0 < value < 1):
                raise ValueError(f"ratio of {key!r} must be above 0 and below 1, not {share!r}")
            opts.ratios[_PART_INDEX[key]] = value
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(
            'page_size must be an int or a size such as "16 KiB" (a power of two), or None (one from the size)'
        )
    if not 0 < page_size < 2**32:
        raise ValueError(f"page size {page_size} must be a power of two from 4096 to 8 MiB")
    opts.page_size = page_size
    if isinstance(max_owners, bool) or not isinstance(max_owners, int):
        raise ValueError("max_owners must be an int >= 0 (0 picks one from the size)")
    if not 0 <= max_owners < 2**32:
        raise ValueError("max_owners must be an int >= 0 (0 picks one from the size)")
    opts.max_owners = max_owners
    if isinstance(max_threads, bool) or not isinstance(max_threads, int):
        raise ValueError("max_threads must be an int from 0 to 4095 (0 picks one from the size)")
    if not 0 <= max_threads <= 4095:
        raise ValueError("max_threads must be an int from 0 to 4095 (0 picks one from the size)")
    opts.max_threads = max_threads
    opts.min_system_pages = SYSTEM_PAGES_NEEDED
    return 0


def unlink(name):
    """Remove a named heap from /dev/shm. Processes that have it mapped keep it
    until they close. Raises HeapNotFound if there is no such heap."""
    cdef bytes cname = _shm_name(name)
    cdef int rc = sh_unlink(SH_BACKING_SHM, cname)
    if rc:
        _raise(rc)
