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

import itertools
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from swarmheap._extras import available, require
from swarmheap.errors import CorruptSnapshot, SnapshotTooNew

__all__ = ["CODECS", "FORMAT_VERSION", "State", "decode_state", "encode_state", "pack", "unpack"]

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


def encode_state(kind: str, lease_left: float | None, entries: Sequence[tuple[str, Any]]) -> bytes:
    kind_b = kind.encode()
    parts: list[Any] = [
        _STATE.pack(_STATE_MAGIC, len(kind_b), math.nan if lease_left is None else lease_left, len(entries)),
        kind_b,
    ]
    for name, data in entries:
        name_b = name.encode()
        view = memoryview(data).cast("B")
        parts += [_ENTRY.pack(len(name_b), view.nbytes), name_b, view]
    return b"".join(parts)


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


def _check_kind() -> int:
    return _CHECK_XXH64 if available("xxhash") else _CHECK_CRC32


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
        c = cache[key] = (
            zstd.ZstdCompressor(level=level, dict_data=dictionary)
            if dictionary is not None
            else zstd.ZstdCompressor(level=level)
        )
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


def _map_parallel(fn: Callable[..., bytes], items: Sequence[Any]) -> list[bytes]:
    """[fn(*item) for item in items] on codec_threads() threads, this one
    among them. Each thread takes the next item left, so this thread starts at
    once and does more while a helper is still starting. The helpers live for
    one call: a thread left running would make every later fork() of the
    user's process unsafe (and a DeprecationWarning from Python 3.12 on)."""
    n = min(codec_threads(), len(items))
    out: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    next_item = itertools.count()  # next() on a count is one call under the GIL: no item is taken twice

    def work() -> None:
        try:
            for i in iter(next_item.__next__, None):
                if i >= len(items) or errors:
                    return
                out[i] = fn(*items[i])
        except BaseException as exc:  # re-raised by the caller's thread
            errors.append(exc)

    helpers = []
    for _ in range(1, n):
        t = threading.Thread(target=work, name="swarmheap-codec")
        try:
            t.start()
            helpers.append(t)
        except RuntimeError:  # no new threads (interpreter shutdown): this thread takes their items
            break
    work()
    for t in helpers:
        t.join()
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


def pack(raw: Any, codec: str = "zstd", level: int | None = None, dictionary: Any = None) -> bytes:
    """Frame `raw` (any buffer) with `codec` (and a zstd dictionary, a ZstdCompressionDict)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
    if codec == "none" and level is not None:
        raise ValueError("codec 'none' takes no level")
    if level is not None:
        _check_level(codec, level)
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
    if codec == "none":
        payload = view
    elif _chunked(nbytes):
        whole = memoryview(view)  # pieces as views: no copies
        pieces = [whole[i : i + CHUNK] for i in range(0, nbytes, CHUNK)]
        frames = _map_parallel(_compress, [(codec, level, dictionary, p) for p in pieces])
        table = [_CHUNK_COUNT.pack(len(frames))]
        table += [_CHUNK_SIZES.pack(len(f), len(p)) for f, p in zip(frames, pieces)]
        payload = b"".join(table + frames)
        version, flags = FORMAT_VERSION, FLAG_CHUNKED
    else:
        payload = _compress(codec, level, dictionary, view)
    check = _check_kind()
    checksum = _checksum(check, payload)
    header = FRAME.pack(MAGIC, version, CODECS[codec], check, flags, dict_id, nbytes, len(payload), checksum)
    return b"".join((header, payload))


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


def unpack(blob: Any, dictionary_for: Callable[[int], Any] | None = None) -> bytes:
    """The raw payload of a checked blob; `dictionary_for(id)` finds a zstd dictionary."""
    info = frame_info(blob)
    payload, raw_size, codec = info["payload"], info["raw_size"], info["codec"]
    dictionary = None
    if codec == "zstd" and info["dict_id"]:
        dictionary = dictionary_for(info["dict_id"]) if dictionary_for else None
        if dictionary is None:
            raise CorruptSnapshot(f"the snapshot needs zstd dictionary {info['dict_id']}, found nowhere")
    try:
        if codec == "none":
            raw = bytes(payload)
        elif info["chunked"]:
            pieces = _pieces(memoryview(payload), raw_size)
            parts = _map_parallel(_decompress, [(codec, dictionary, data, size) for data, size in pieces])
            raw = parts[0] if len(parts) == 1 else b"".join(parts)
        else:
            raw = _decompress(codec, dictionary, payload, raw_size)
    except (CorruptSnapshot, ImportError):
        raise
    except Exception as exc:  # each codec has its own error types
        raise CorruptSnapshot(f"the payload does not decompress: {exc}") from None
    if len(raw) != raw_size:
        raise CorruptSnapshot(f"the frame says {raw_size} raw bytes; the payload holds {len(raw)}")
    return raw
