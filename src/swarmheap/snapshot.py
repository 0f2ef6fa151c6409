"""Snapshots: one self-describing blob of an agent's state, and its parsing.

A blob is a frame and a payload:

    magic "SHSNAP"  format version (1 byte)  codec (1)  checksum kind (1)  flags (1)
    dictionary id (4)  raw size (8)  payload size (8)  checksum of the payload (8)

little-endian, 38 bytes, then the payload: the state, compressed by the codec
(zstd, lz4 or none; zstd with the kind's trained dictionary when it names
one). A large state (CHUNKED_MIN and up, on a machine with two cores or
more) is cut into CHUNK-byte pieces compressed as independent frames on a
few threads, both ways: the codecs release the GIL, so offload and restore
of a big agent use every core. Such a blob is format 2 with the
CHUNKED flag, and its payload starts with a table (count, then each piece's
compressed and raw sizes, u32 each); a format-1 reader refuses it as too
new. The checksum is xxh64 when the `xxhash` package is there (the
`compress` extra), else CRC-32 from zlib; the frame says which, so any
reader checks it. The state is the agent's kind, the seconds left on its lease and
its named entries. Its other live blocks are not in a snapshot: the caller
holds them as Block objects, whose handles could not stay valid elsewhere.

Everything read from a blob is checked before it is used: a damaged or
lying blob raises CorruptSnapshot, and a restore allocates nothing before
the whole blob has been read and checked.
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from swarmheap._extras import available, require
from swarmheap.errors import CorruptSnapshot, SnapshotTooNew

__all__ = [
    "CODECS",
    "FORMAT_VERSION",
    "State",
    "check_codec",
    "decode_state",
    "encode_state",
    "encoded_state",
    "pack",
    "unpack",
    "unpacked",
]

MAGIC = b"SHSNAP"
FORMAT_VERSION = 2  # the newest this reads; a blob that is not chunked is still written as 1
_PLAIN_VERSION = 1
FLAG_CHUNKED = 1
CHUNK = 256 << 10
CHUNKED_MIN = 2 * CHUNK
_CHUNK_COUNT = struct.Struct("<I")
_CHUNK_SIZES = struct.Struct("<II")  # compressed, raw
_VIEW_FROM = 64 << 10
FRAME = struct.Struct("<6sBBBBIQQQ")
CODECS = {"none": 0, "zstd": 1, "lz4": 2}
_CODEC_NAMES = {v: k for k, v in CODECS.items()}
_CHECK_XXH64, _CHECK_CRC32 = 1, 2
DEFAULT_ZSTD_LEVEL = 3
MAX_RAW = 1 << 40  # a lying raw size must not make a reader allocate without bound

_STATE = struct.Struct("<4sHdI")  # magic, kind length, lease seconds left (NaN: none), entry count
_ENTRY = struct.Struct("<HQ")  # name length, data length
_STATE_MAGIC = b"SHST"

State = tuple[str, "float | None", list[tuple[str, memoryview]]]


def _state_parts(kind: str, lease_left: float | None, entries: Sequence[tuple[str, Any]]) -> list[Any]:
    kind_b = kind.encode()
    parts: list[Any] = [
        _STATE.pack(_STATE_MAGIC, len(kind_b), math.nan if lease_left is None else lease_left, len(entries)),
        kind_b,
    ]
    for name, data in entries:
        name_b = name.encode()
        view = memoryview(data).cast("B")
        parts += [_ENTRY.pack(len(name_b), view.nbytes), name_b, view]
    return parts


def encode_state(kind: str, lease_left: float | None, entries: Sequence[tuple[str, Any]]) -> bytes:
    return b"".join(_state_parts(kind, lease_left, entries))


@contextlib.contextmanager
def encoded_state(
    kind: str, lease_left: float | None, entries: Sequence[tuple[str, Any]]
) -> Iterator[memoryview]:
    """encode_state() as a view that lives for the ``with``: a large state is
    written into a kept buffer (see scratch())."""
    parts = _state_parts(kind, lease_left, entries)
    nbytes = sum(len(p) for p in parts)
    if nbytes < SCRATCH_FROM:
        joined = b"".join(parts)
        _release(parts)
        yield memoryview(joined)
        return
    with scratch(nbytes) as out:
        pos = 0
        for part in parts:
            out[pos : pos + len(part)] = part
            pos += len(part)
        _release(parts)
        yield out


def _release(parts: list[Any]) -> None:
    """Let go of the entries' views once they are copied: each pins its agent
    (an open view of an agent's block does), and the caller compresses, and
    maybe offloads that agent, while the state lives."""
    for part in parts:
        if isinstance(part, memoryview):
            part.release()
    parts.clear()


def decode_state(raw: Any) -> State:
    """The kind, lease and entries of a state; the entries are views into ``raw`` (no copies)."""
    view = memoryview(raw).cast("B")
    try:
        magic, kind_len, lease, count = _STATE.unpack_from(view, 0)
        if magic != _STATE_MAGIC:
            raise CorruptSnapshot("the payload is not an agent state")
        pos = _STATE.size
        kind = str(_take(view, pos, kind_len), "utf-8")
        pos += kind_len
        entries = []
        for _ in range(count):
            name_len, size = _ENTRY.unpack_from(view, pos)
            pos += _ENTRY.size
            name = str(_take(view, pos, name_len), "utf-8")
            pos += name_len
            entries.append((name, _take(view, pos, size)))
            pos += size
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptSnapshot(f"the agent state does not parse: {exc}") from None
    if pos != view.nbytes:
        raise CorruptSnapshot(f"the agent state has {view.nbytes - pos} bytes after its last entry")
    return kind, None if math.isnan(lease) else lease, entries


def _take(view: memoryview, pos: int, n: int) -> memoryview:
    if pos + n > view.nbytes:
        raise CorruptSnapshot(f"the agent state is truncated: {n} bytes wanted at {pos} of {view.nbytes}")
    return view[pos : pos + n]


def _checksum(kind: int, payload: Any) -> int:
    if kind == _CHECK_XXH64:
        return int(require("xxhash", "compress").xxh64_intdigest(payload))
    return zlib.crc32(payload)


def _checksum_parts(kind: int, parts: Sequence[Any]) -> int:
    """_checksum() of the parts joined, without joining them."""
    if len(parts) == 1:
        return _checksum(kind, parts[0])  # a small blob's one part: no hash object to make
    if kind == _CHECK_XXH64:
        digest = require("xxhash", "compress").xxh64()
        for part in parts:
            digest.update(part)
        return int(digest.intdigest())
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def _check_kind() -> int:
    return _CHECK_XXH64 if available("xxhash") else _CHECK_CRC32


# A state of SCRATCH_FROM bytes or more passes through a buffer the process
# keeps, not a new bytes object: glibc serves a block that large from fresh
# mmap'd pages and returns them at free, so every new one pays a page fault
# per 4 KiB on first touch. Measured on the 2-core machine of bench/RESULTS.md,
# a new 1 MiB bytes cost 0.6 ms against 0.06 ms to copy into one that is
# already there: more than the codec's own time to decompress it.
SCRATCH_FROM = 128 << 10
SCRATCH_KEEP = 8 << 20  # a larger state gets memory of its own, not kept after
SCRATCH_KEPT = 2  # buffers kept for the process, not per thread: a pool of 32 threads would hold 32
_SCRATCH_STEP = 256 << 10  # sizes round up to this, so that states of about one size share a buffer
_kept: list[bytearray] = []  # free buffers; a list's pop and append are atomic under the GIL


@contextlib.contextmanager
def scratch(nbytes: int) -> Iterator[memoryview]:
    """``nbytes`` of writable memory for the ``with``: a kept buffer if one
    is free and large enough (a nested use, a restore whose put relieves
    pressure by offloading another agent, takes another one), else a new
    one, kept after if there is room among SCRATCH_KEPT."""
    buffer = None
    if nbytes <= SCRATCH_KEEP:
        try:
            buffer = _kept.pop()
        except IndexError:
            pass
        if buffer is not None and len(buffer) < nbytes:
            buffer = None  # too small: the new one below takes its place
    if buffer is None:
        buffer = bytearray(-(-nbytes // _SCRATCH_STEP) * _SCRATCH_STEP)
    view = memoryview(buffer)[:nbytes]
    try:
        yield view
    finally:
        view.release()
        if len(buffer) <= SCRATCH_KEEP and len(_kept) < SCRATCH_KEPT:
            _kept.append(buffer)


_contexts = threading.local()  # a zstd context is not for two threads at once


def zstd_compressor(level: int, dictionary: Any = None) -> Any:
    """This thread's zstd compressor at ``level`` (with a trained
    dictionary): making one, and loading a dictionary into it, costs more
    than compressing a small state, so each thread keeps them."""
    cache = getattr(_contexts, "compressors", None)
    if cache is None:
        cache = _contexts.compressors = {}
    key = (level, dictionary.dict_id() if dictionary is not None else 0)
    c = cache.get(key)
    if c is None:
        if len(cache) > 64:
            cache.clear()
        zstd = require("zstandard", "compress")
        if dictionary is not None:
            # digested once for this level (a CDict): a compressor given the
            # raw dictionary loads it again on every call, a third of the time
            # of compressing a 16 KB state (100 against 67 us here)
            digested = zstd.ZstdCompressionDict(dictionary.as_bytes())
            digested.precompute_compress(level=level)
            c = cache[key] = zstd.ZstdCompressor(level=level, dict_data=digested)
        else:
            c = cache[key] = zstd.ZstdCompressor(level=level)
    return c


def zstd_decompressor(dictionary: Any = None) -> Any:
    """This thread's zstd decompressor (for a trained dictionary)."""
    cache = getattr(_contexts, "decompressors", None)
    if cache is None:
        cache = _contexts.decompressors = {}
    key = dictionary.dict_id() if dictionary is not None else 0
    d = cache.get(key)
    if d is None:
        if len(cache) > 64:
            cache.clear()
        zstd = require("zstandard", "compress")
        d = cache[key] = (
            zstd.ZstdDecompressor(dict_data=dictionary) if dictionary is not None else zstd.ZstdDecompressor()
        )
    return d


def codec_threads() -> int:
    """Threads a large state's pieces are dealt to: the cores this process may run on, up to 4."""
    try:
        cores = len(os.sched_getaffinity(0))  # a container's or taskset's share, not the host's count
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def _map_parallel(fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
    """[fn(*item) for item in items] on codec_threads() threads, this one
    among them. Each thread takes the next item left, and this thread waits
    for the items to be done, not for its helpers: a helper that the
    scheduler starts late finds nothing left and ends. The helpers are
    started without waiting for them to run (threading.Thread.start waits
    until the new thread says it runs: on a busy machine that wait was most
    of a 1 MiB state's restore), and live for one call: a thread left
    running would make every later fork() of the user's process unsafe (a
    DeprecationWarning from Python 3.12 on)."""
    n = min(codec_threads(), len(items))
    out: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    next_item = itertools.count()  # next() on a count is one call under the GIL: no item is taken twice
    done = threading.Condition(threading.Lock())
    finished = 0  # items done (or given up after an error), under `done`

    def work() -> None:
        nonlocal finished
        for i in iter(next_item.__next__, None):
            if i >= len(items):
                return
            try:
                if not errors:
                    out[i] = fn(*items[i])
            except BaseException as exc:  # re-raised by the caller's thread
                errors.append(exc)
            finally:
                with done:
                    finished += 1
                    if finished == len(items):
                        done.notify_all()

    for _ in range(1, n):
        try:
            _thread.start_new_thread(work, ())
        except RuntimeError:  # no new threads (interpreter shutdown): this thread takes their items
            break
    work()
    with done:
        done.wait_for(lambda: finished == len(items))
    if errors:
        raise errors[0]
    return out


def _chunked(n: int) -> bool:
    return n >= CHUNKED_MIN and codec_threads() > 1


def _compress(codec: str, level: int | None, dictionary: Any, data: Any) -> bytes:
    """One frame of ``data`` ("zstd" or "lz4"): a whole state, or one of its pieces."""
    if codec == "zstd":
        return bytes(
            zstd_compressor(DEFAULT_ZSTD_LEVEL if level is None else level, dictionary).compress(data)
        )
    return bytes(require("lz4.frame", "compress").compress(data, compression_level=level or 0))


# zstd's fast (negative) levels down to ZSTD_minCLevel, and its strongest;
# lz4.frame's fast (0-2) and high-compression (3-16) levels
_LEVELS = {"zstd": (-(1 << 17), 22), "lz4": (0, 16)}


def _check_level(codec: str, level: object) -> None:
    low, high = _LEVELS[codec]
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"level is an int ({codec}: {low} to {high}) or None, not {type(level).__name__}")
    if not low <= level <= high:
        raise ValueError(f"{codec} levels run from {low} to {high}, not {level}")


def check_codec(codec: str, level: int | None) -> None:
    """ValueError (or TypeError) unless pack() takes ``codec`` at ``level``."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
    if codec == "none" and level is not None:
        raise ValueError("codec 'none' takes no level")
    if level is not None:
        _check_level(codec, level)


def pack(raw: Any, codec: str = "zstd", level: int | None = None, dictionary: Any = None) -> bytes:
    """Frame `raw` (any buffer) with `codec` (and a zstd dictionary, a ZstdCompressionDict)."""
    if codec == "none" and level is None and type(raw) is bytes:
        # the common frame of a checkpoint record or delta, a few hundred
        # bytes on every put: no views, no part lists, one hash call
        check = _check_kind()
        n = len(raw)
        checksum = _checksum(check, raw)
        # no flags, no dictionary, as the general path below writes a plain frame
        return FRAME.pack(MAGIC, _PLAIN_VERSION, CODECS["none"], check, 0, 0, n, n, checksum) + raw
    check_codec(codec, level)
    dict_id = 0
    if codec == "zstd":
        require("zstandard", "compress")  # the extra is named before anything else fails
        if dictionary is not None:
            dict_id = dictionary.dict_id()
    else:
        dictionary = None  # a dictionary is zstd's alone
        if codec == "lz4":
            require("lz4.frame", "compress")
    view = raw if type(raw) is bytes else memoryview(raw).cast("B")
    nbytes = len(view)
    version, flags = _PLAIN_VERSION, 0
    payload_parts: list[Any]
    if codec == "none":
        payload_parts = [view]
    elif _chunked(nbytes):
        whole = memoryview(view)  # pieces as views: no copies
        pieces = [whole[i : i + CHUNK] for i in range(0, nbytes, CHUNK)]
        frames = _map_parallel(_compress, [(codec, level, dictionary, p) for p in pieces])
        table = [_CHUNK_COUNT.pack(len(frames))]
        table += [_CHUNK_SIZES.pack(len(f), len(p)) for f, p in zip(frames, pieces)]
        payload_parts = table + frames
        version, flags = FORMAT_VERSION, FLAG_CHUNKED
    else:
        payload_parts = [_compress(codec, level, dictionary, view)]
    check = _check_kind()
    checksum = _checksum_parts(check, payload_parts)
    payload_size = sum(len(p) for p in payload_parts)
    header = FRAME.pack(MAGIC, version, CODECS[codec], check, flags, dict_id, nbytes, payload_size, checksum)
    return b"".join([header, *payload_parts])  # one copy of a large payload, not two


def frame_info(blob: Any) -> dict[str, Any]:
    """The frame's fields, checked: codec, dictionary id, raw size, whether
    it is in pieces, and the payload (bytes, or a view of a large blob)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"a snapshot is bytes, not {type(blob).__name__}")
    # a small blob's payload is copied out (cheaper than a view); a large one's is a view
    view = blob if type(blob) is bytes and len(blob) < _VIEW_FROM else memoryview(blob).cast("B")
    size = len(view)
    if size < FRAME.size:
        raise CorruptSnapshot(f"a snapshot is at least {FRAME.size} bytes; this one is {size}")
    magic, version, codec, check, flags, dict_id, raw_size, payload_size, checksum = FRAME.unpack_from(
        view, 0
    )
    if magic != MAGIC:
        raise CorruptSnapshot("not a swarmheap snapshot (wrong magic)")
    if version > FORMAT_VERSION:
        raise SnapshotTooNew(
            f"the snapshot is format {version}; this swarmheap reads formats up to {FORMAT_VERSION}: upgrade"
        )
    if version == 0 or codec not in _CODEC_NAMES or check not in (_CHECK_XXH64, _CHECK_CRC32):
        raise CorruptSnapshot(f"the frame names format {version}, codec {codec}, checksum kind {check}")
    known = FLAG_CHUNKED if version >= 2 and codec != CODECS["none"] else 0
    if flags & ~known:
        raise CorruptSnapshot(f"the frame's flags {flags:#x} are not known to format {version}")
    if payload_size != size - FRAME.size:
        raise CorruptSnapshot(f"the frame says {payload_size} payload bytes; {size - FRAME.size} follow it")
    if raw_size > MAX_RAW:
        raise CorruptSnapshot(f"the frame claims {raw_size} raw bytes")
    payload = view[FRAME.size :]
    if _checksum(check, payload) != checksum:
        raise CorruptSnapshot("the payload's checksum does not match: the blob is damaged")
    return {
        "codec": _CODEC_NAMES[codec],
        "dict_id": dict_id,
        "raw_size": raw_size,
        "chunked": bool(flags & FLAG_CHUNKED),
        "payload": payload,
    }


def _pieces(payload: memoryview, raw_size: int) -> list[tuple[memoryview, int]]:
    """The (frame, raw size) pieces of a chunked payload, every size checked."""
    if payload.nbytes < _CHUNK_COUNT.size:
        raise CorruptSnapshot("the chunked payload has no piece table")
    (count,) = _CHUNK_COUNT.unpack_from(payload, 0)
    pos = _CHUNK_COUNT.size
    end = pos + count * _CHUNK_SIZES.size
    if count == 0 or end > payload.nbytes:
        raise CorruptSnapshot(f"the piece table names {count} pieces; the payload cannot hold them")
    sizes = [_CHUNK_SIZES.unpack_from(payload, pos + i * _CHUNK_SIZES.size) for i in range(count)]
    if sum(c for c, _ in sizes) != payload.nbytes - end or sum(r for _, r in sizes) != raw_size:
        raise CorruptSnapshot("the piece table's sizes do not add up to the frame's")
    if any(r > CHUNK for _, r in sizes):
        raise CorruptSnapshot(f"a piece claims more than {CHUNK} raw bytes")
    out = []
    for compressed, raw in sizes:
        out.append((payload[end : end + compressed], raw))
        end += compressed
    return out


def _decompress(codec: str, dictionary: Any, data: Any, raw_size: int) -> bytes:
    """The ``raw_size`` bytes of one frame ("zstd" or "lz4"), checked: a whole
    state, or one of its pieces."""
    if codec == "zstd":
        d = zstd_decompressor(dictionary)
        out = (
            d.decompressobj().decompress(data)
            if raw_size == 0
            else d.decompress(data, max_output_size=raw_size)
        )
    else:
        out = (
            require("lz4.frame", "compress").LZ4FrameDecompressor().decompress(data, max_length=raw_size + 1)
        )
    if len(out) != raw_size:
        raise CorruptSnapshot(f"the frame says {raw_size} raw bytes; the payload holds {len(out)}")
    return bytes(out)


def _decompress_into(codec: str, dictionary: Any, data: Any, out: memoryview) -> None:
    """_decompress() into ``out``, which it must fill exactly. zstd writes
    there itself; lz4.frame has no such call, so its frame is copied in."""
    if codec != "zstd":
        out[:] = _decompress(codec, dictionary, data, out.nbytes)
        return
    reader = zstd_decompressor(dictionary).stream_reader(data, read_size=max(len(data), 1))
    pos, end = 0, out.nbytes
    while pos < end:
        got = reader.readinto(out[pos:end])
        if not got:
            raise CorruptSnapshot(f"the frame says {end} raw bytes; the payload holds {pos}")
        pos += got
    if reader.read(1):
        raise CorruptSnapshot(f"the frame says {end} raw bytes; the payload holds more")


def _needed_dictionary(info: dict[str, Any], dictionary_for: Callable[[int], Any] | None) -> Any:
    if info["codec"] != "zstd" or not info["dict_id"]:
        return None
    dictionary = dictionary_for(info["dict_id"]) if dictionary_for else None
    if dictionary is None:
        raise CorruptSnapshot(
            f"the snapshot was compressed with zstd dictionary {info['dict_id']} (trained on its kind's "
            "snapshots in the heap that took it), which neither this heap nor a store it has opened holds: "
            "restore it where that heap's dictionaries are (a heap it shares a store with: an offload "
            "writes the dictionary beside the blob), or take snapshots for other heaps with "
            "agent.snapshot(dictionary=False)"
        )
    return dictionary


@contextlib.contextmanager
def _codec_errors() -> Iterator[None]:
    try:
        yield
    except (CorruptSnapshot, ImportError):
        raise
    except Exception as exc:  # each codec has its own error types
        raise CorruptSnapshot(f"the payload does not decompress: {exc}") from None


@contextlib.contextmanager
def unpacked(blob: Any, dictionary_for: Callable[[int], Any] | None = None) -> Iterator[memoryview]:
    """unpack() as a view that lives for the ``with``: a large state is
    decompressed straight into a kept buffer (see scratch()),
    a chunked one piece by piece on codec_threads() threads."""
    info = frame_info(blob)
    payload, raw_size, codec = info["payload"], info["raw_size"], info["codec"]
    dictionary = _needed_dictionary(info, dictionary_for)
    if codec == "none":
        view = memoryview(payload).cast("B")
        if view.nbytes != raw_size:
            raise CorruptSnapshot(f"the frame says {raw_size} raw bytes; the payload holds {view.nbytes}")
        yield view
        return
    if raw_size < SCRATCH_FROM and not info["chunked"]:
        with _codec_errors():
            raw = _decompress(codec, dictionary, payload, raw_size)
        yield memoryview(raw)
        return
    with scratch(raw_size) as out:
        with _codec_errors():
            if info["chunked"]:
                jobs, pos = [], 0
                for data, size in _pieces(memoryview(payload), raw_size):
                    jobs.append((codec, dictionary, data, out[pos : pos + size]))
                    pos += size
                _map_parallel(_decompress_into, jobs)
            else:
                _decompress_into(codec, dictionary, payload, out)
        yield out


def unpack(blob: Any, dictionary_for: Callable[[int], Any] | None = None) -> bytes:
    """The raw payload of a checked blob; `dictionary_for(id)` finds a zstd dictionary."""
    with unpacked(blob, dictionary_for) as raw:
        whole = raw.obj
        return whole if type(whole) is bytes and len(whole) == raw.nbytes else bytes(raw)
