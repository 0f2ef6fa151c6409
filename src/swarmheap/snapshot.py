"""Snapshots: one self-describing blob of an agent's state, and its parsing.

A blob is a frame and a payload:

    magic "SHSNAP"  format version (1 byte)  codec (1)  checksum kind (1)  flags (1)
    dictionary id (4)  raw size (8)  payload size (8)  checksum of the payload (8)

little-endian, 38 bytes, then the payload: the state, compressed by the codec
(zstd, lz4 or none; zstd with the kind's trained dictionary when it names
one). The checksum is xxh64 when the `xxhash` package is there (the
`compress` extra), else CRC-32 from zlib; the frame says which, so any reader
checks it. The state is the agent's kind, the seconds left on its lease and
its named entries. Its other live blocks are not in a snapshot: the caller
holds them as Block objects, whose handles could not stay valid elsewhere.

Everything read from a blob is checked before it is used: a damaged or
lying blob raises CorruptSnapshot, and a restore allocates nothing before
the whole blob has been read and checked.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from swarmheap._extras import require
from swarmheap.errors import CorruptSnapshot, SnapshotTooNew

__all__ = ["CODECS", "FORMAT_VERSION", "State", "decode_state", "encode_state", "pack", "unpack"]

MAGIC = b"SHSNAP"
FORMAT_VERSION = 1
FRAME = struct.Struct("<6sBBBBIQQQ")
CODECS = {"none": 0, "zstd": 1, "lz4": 2}
_CODEC_NAMES = {v: k for k, v in CODECS.items()}
_CHECK_XXH64, _CHECK_CRC32 = 1, 2
DEFAULT_ZSTD_LEVEL = 3
MAX_RAW = 1 << 40  # a lying raw size must not make a reader allocate without bound

_STATE = struct.Struct("<4sHdI")  # magic, kind length, lease seconds left (NaN: none), entry count
_ENTRY = struct.Struct("<HQ")  # name length, data length
_STATE_MAGIC = b"SHST"

State = tuple[str, "float | None", list[tuple[str, bytes]]]


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


def decode_state(raw: bytes) -> State:
    try:
        magic, kind_len, lease, count = _STATE.unpack_from(raw, 0)
        if magic != _STATE_MAGIC:
            raise CorruptSnapshot("the payload is not an agent state")
        pos = _STATE.size
        kind = _take(raw, pos, kind_len).decode()
        pos += kind_len
        entries = []
        for _ in range(count):
            name_len, size = _ENTRY.unpack_from(raw, pos)
            pos += _ENTRY.size
            name = _take(raw, pos, name_len).decode()
            pos += name_len
            entries.append((name, _take(raw, pos, size)))
            pos += size
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptSnapshot(f"the agent state does not parse: {exc}") from None
    if pos != len(raw):
        raise CorruptSnapshot(f"the agent state has {len(raw) - pos} bytes after its last entry")
    return kind, None if math.isnan(lease) else lease, entries


def _take(raw: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(raw):
        raise CorruptSnapshot(f"the agent state is truncated: {n} bytes wanted at {pos} of {len(raw)}")
    return raw[pos : pos + n]


def _checksum(kind: int, payload: bytes) -> int:
    if kind == _CHECK_XXH64:
        return int(require("xxhash", "compress").xxh64_intdigest(payload))
    return zlib.crc32(payload)


def _check_kind() -> int:
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return _CHECK_CRC32
    return _CHECK_XXH64


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


def pack(raw: bytes, codec: str = "zstd", level: int | None = None, dictionary: Any = None) -> bytes:
    """Frame `raw` with `codec` (and a zstd dictionary, a ZstdCompressionDict)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
    dict_id = 0
    if codec == "zstd":
        require("zstandard", "compress")  # the extra is named before anything else fails
        lvl = DEFAULT_ZSTD_LEVEL if level is None else level
        if dictionary is not None:
            dict_id = dictionary.dict_id()
        payload = zstd_compressor(lvl, dictionary).compress(raw)
    elif codec == "lz4":
        frame = require("lz4.frame", "compress")
        payload = frame.compress(raw, compression_level=level or 0)
    else:
        if level is not None:
            raise ValueError("codec 'none' takes no level")
        payload = bytes(raw)
    check = _check_kind()
    header = FRAME.pack(
        MAGIC,
        FORMAT_VERSION,
        CODECS[codec],
        check,
        0,
        dict_id,
        len(raw),
        len(payload),
        _checksum(check, payload),
    )
    return bytes(header + payload)


def frame_info(blob: bytes) -> dict[str, Any]:
    """The frame's fields, checked: codec, dictionary id, raw size."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"a snapshot is bytes, not {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < FRAME.size:
        raise CorruptSnapshot(f"a snapshot is at least {FRAME.size} bytes; this one is {len(blob)}")
    magic, version, codec, check, _flags, dict_id, raw_size, payload_size, checksum = FRAME.unpack_from(
        blob, 0
    )
    if magic != MAGIC:
        raise CorruptSnapshot("not a swarmheap snapshot (wrong magic)")
    if version > FORMAT_VERSION:
        raise SnapshotTooNew(
            f"the snapshot is format {version}; this swarmheap reads formats up to {FORMAT_VERSION}: upgrade"
        )
    if version == 0 or codec not in _CODEC_NAMES or check not in (_CHECK_XXH64, _CHECK_CRC32):
        raise CorruptSnapshot(f"the frame names format {version}, codec {codec}, checksum kind {check}")
    if payload_size != len(blob) - FRAME.size:
        raise CorruptSnapshot(
            f"the frame says {payload_size} payload bytes; {len(blob) - FRAME.size} follow it"
        )
    if raw_size > MAX_RAW:
        raise CorruptSnapshot(f"the frame claims {raw_size} raw bytes")
    payload = blob[FRAME.size :]
    if _checksum(check, payload) != checksum:
        raise CorruptSnapshot("the payload's checksum does not match: the blob is damaged")
    return {"codec": _CODEC_NAMES[codec], "dict_id": dict_id, "raw_size": raw_size, "payload": payload}


def unpack(blob: bytes, dictionary_for: Callable[[int], Any] | None = None) -> bytes:
    """The raw payload of a checked blob; `dictionary_for(id)` finds a zstd dictionary."""
    info = frame_info(blob)
    payload, raw_size = info["payload"], info["raw_size"]
    try:
        if info["codec"] == "zstd":
            require("zstandard", "compress")
            if info["dict_id"]:
                dictionary = dictionary_for(info["dict_id"]) if dictionary_for else None
                if dictionary is None:
                    raise CorruptSnapshot(
                        f"the snapshot needs zstd dictionary {info['dict_id']}, found nowhere"
                    )
                d = zstd_decompressor(dictionary)
            else:
                d = zstd_decompressor()
            raw = (
                d.decompressobj().decompress(payload)
                if raw_size == 0
                else d.decompress(payload, max_output_size=raw_size)
            )
        elif info["codec"] == "lz4":
            frame = require("lz4.frame", "compress")
            decomp = frame.LZ4FrameDecompressor()
            raw = decomp.decompress(payload, max_length=raw_size + 1)
        else:
            raw = payload
    except CorruptSnapshot:
        raise
    except ImportError:
        raise
    except Exception as exc:  # each codec has its own error types
        raise CorruptSnapshot(f"the payload does not decompress: {exc}") from None
    if len(raw) != raw_size:
        raise CorruptSnapshot(f"the frame says {raw_size} raw bytes; the payload holds {len(raw)}")
    return bytes(raw)
