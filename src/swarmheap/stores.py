"""Offload stores: where snapshots of idle agents go, and where another
process or machine finds them. One small protocol, three stores:

- ``SQLiteStore(path)``: the stdlib's sqlite3 in WAL mode; the embedded
  default, no extra needed.
- ``LMDBStore(path, map_size=...)``: the ``lmdb`` extra.
- ``RedisStore(url)``: the ``redis`` extra, against a redis-server.

``open_store(url)`` takes ``sqlite:///path.db``, ``lmdb:///path`` and
``redis://host:port/db``. ``put`` is atomic (a reader sees the old blob or
the new one). A store that cannot be reached or written raises
StoreUnavailable, one without room StoreFull; nothing is half-written.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from typing import Any
from urllib.parse import urlparse

from swarmheap._extras import require
from swarmheap.errors import StoreFull, StoreUnavailable

__all__ = ["LMDBStore", "RedisStore", "SQLiteStore", "Store", "check_store", "open_store"]


class Store:
    """The protocol: put (atomic), get, delete, keys(prefix), close; a
    context manager. ``url`` names the store so that other processes of a
    heap can open the same one."""

    url: str

    def put(self, key: str, blob: bytes) -> None:
        """Store ``blob`` under ``key``, replacing what was there, all or
        nothing: a reader sees the old blob or the new one, never a part.
        StoreUnavailable if the store cannot be reached or written,
        StoreFull if it has no room."""
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        """The blob under ``key``, or None."""
        raise NotImplementedError

    def delete(self, key: str) -> bool:
        """True if there was a blob to delete."""
        raise NotImplementedError

    def keys(self, prefix: str = "") -> list[str]:
        """The keys that start with ``prefix`` (all of them for ""), sorted."""
        raise NotImplementedError

    def close(self) -> None:
        """Let the store's connection or environment go; a second close does nothing."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once close() ran: a heap that remembered this store opens its URL again."""
        return bool(getattr(self, "_closed", False))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def check_store(store: object) -> Store:
    """``store`` if it is a Store; TypeError naming the ways to get one if not
    (a URL string among them: it is open_store's argument, not a store)."""
    if not isinstance(store, Store):
        raise TypeError(
            f"store is a Store (SQLiteStore(path), LMDBStore(path), RedisStore(url), or open_store(url)), "
            f"not {type(store).__name__}"
        )
    return store


def _check_key(key: str) -> bytes:
    if not isinstance(key, str) or not key:
        raise TypeError(f"a store key is a non-empty str, not {key!r}")
    return key.encode()


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"a key prefix is a str ('' lists every key), not {type(prefix).__name__}")
    return prefix


def _check_blob(blob: Any) -> bytes:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"a store holds bytes, not {type(blob).__name__}")
    return bytes(blob)


_BUSY_SECONDS = 30.0


def _while_locked(db: sqlite3.Connection, sql: str) -> None:
    """Run ``sql``, waiting out "database is locked" for up to _BUSY_SECONDS.

    Turning a new file to WAL takes its write lock, and SQLite does not call
    the busy handler for it while another connection is switching the same
    file: four demo workers opening one new store at once lost the race about
    one time in twenty. So the wait the busy handler gives elsewhere is given
    here by hand, backing off from 1 ms to 50 ms."""
    deadline = time.monotonic() + _BUSY_SECONDS
    pause = 0.001
    while True:
        try:
            db.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class SQLiteStore(Store):
    """A table in an SQLite file, in WAL mode: readers in other processes do
    not block the writer. One connection per thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.url = f"sqlite:///{os.path.abspath(self.path)}"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []  # every thread's, so close() closes them all
        self._guard = threading.Lock()
        self._closed = False
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, blob BLOB NOT NULL)")

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable(f"{self.url} is closed")
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                # used by this thread alone, but closed by close() in whichever
                # thread calls it: a store used from several threads raised
                # ProgrammingError at close (the connections of the others)
                db = sqlite3.connect(
                    self.path, timeout=_BUSY_SECONDS, isolation_level=None, check_same_thread=False
                )
                _while_locked(db, "PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                # Debian's SQLite zeroes every freed page (SECURE_DELETE): a
                # restore's delete of a 1 MiB blob then cost as much as its put
                db.execute("PRAGMA secure_delete=FAST")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open {self.url}: {exc}") from exc
            self._local.db = db
            with self._guard:
                self._all.append(db)
        return db

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            with self._db() as db:  # one transaction: committed whole or rolled back
                return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise StoreFull(f"{self.url}: {exc}") from exc
            raise StoreUnavailable(f"{self.url}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"{self.url}: {exc}") from exc

    def _count(self, sql: str, args: tuple[Any, ...]) -> int:
        """Rows changed (RETURNING needs SQLite 3.35; Python 3.9 may bring an older one)."""
        try:
            with self._db() as db:
                return db.execute(sql, args).rowcount
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.url}: {exc}") from exc

    def put(self, key: str, blob: bytes) -> None:
        _check_key(key)
        self._run("INSERT OR REPLACE INTO blobs (key, blob) VALUES (?, ?)", (key, _check_blob(blob)))

    def get(self, key: str) -> bytes | None:
        _check_key(key)
        rows = self._run("SELECT blob FROM blobs WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def delete(self, key: str) -> bool:
        _check_key(key)
        return self._count("DELETE FROM blobs WHERE key = ?", (key,)) > 0

    def keys(self, prefix: str = "") -> list[str]:
        prefix = _check_prefix(prefix)
        # a range, not LIKE: '%' and '_' in a prefix are not wildcards
        rows = self._run(
            "SELECT key FROM blobs WHERE key >= ? AND key < ? ORDER BY key", (prefix, prefix + "\U0010ffff")
        )
        return [r[0] for r in rows]

    def close(self) -> None:
        self._closed = True
        with self._guard:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local.db = None


class LMDBStore(Store):
    """An LMDB environment (the ``lmdb`` extra): memory-mapped, one writer at
    a time, readers never blocked; ``map_size`` bounds it (StoreFull).

    ``sync=False`` (the default) keeps SQLiteStore's promise (WAL,
    synchronous=NORMAL): a put that returned survives its process (a crash,
    SIGKILL), and the last ones may be lost to a power failure or an OS
    crash, never the environment's integrity. ``sync=True`` flushes every
    put to disk: a 16 KB put took 550 us here, against 18 us without."""

    def __init__(self, path: str | os.PathLike[str], map_size: int = 1 << 30, *, sync: bool = False) -> None:
        lmdb = require("lmdb", "lmdb")
        self._lmdb = lmdb
        self.path = os.fspath(path)
        self.url = f"lmdb:///{os.path.abspath(self.path)}"
        self._closed = False
        if not isinstance(sync, bool):
            raise TypeError(f"sync is True or False, not {type(sync).__name__}")
        try:
            self._env = lmdb.open(
                self.path, map_size=map_size, subdir=True, max_dbs=0, lock=True, sync=sync, metasync=sync
            )
        except (lmdb.Error, OSError) as exc:  # a path it cannot make is an OSError
            raise StoreUnavailable(f"cannot open {self.url}: {exc}") from exc

    def _call(self, fn: Any, write: bool) -> Any:
        try:
            with self._env.begin(write=write) as txn:
                return fn(txn)
        except self._lmdb.MapFullError as exc:
            raise StoreFull(f"{self.url}: the map is full ({exc}); open it with a larger map_size") from exc
        except self._lmdb.Error as exc:
            raise StoreUnavailable(f"{self.url}: {exc}") from exc

    def put(self, key: str, blob: bytes) -> None:
        k, v = _check_key(key), _check_blob(blob)
        self._call(lambda txn: txn.put(k, v), True)

    def get(self, key: str) -> bytes | None:
        k = _check_key(key)
        got = self._call(lambda txn: txn.get(k), False)
        return bytes(got) if got is not None else None

    def delete(self, key: str) -> bool:
        k = _check_key(key)
        return bool(self._call(lambda txn: txn.delete(k), True))

    def keys(self, prefix: str = "") -> list[str]:
        p = _check_prefix(prefix).encode()

        def scan(txn: Any) -> list[str]:
            out = []
            cursor = txn.cursor()
            if cursor.set_range(p):
                for k in cursor.iternext(keys=True, values=False):
                    if not bytes(k).startswith(p):
                        break
                    out.append(bytes(k).decode())
            return out

        result: list[str] = self._call(scan, False)
        return result

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(self._lmdb.Error):
                self._env.sync(True)  # what sync=False left to the OS goes to disk now
            self._env.close()


class RedisStore(Store):
    """A Redis database (the ``redis`` extra). SET is atomic; keys(prefix)
    walks SCAN, so it never blocks the server."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0") -> None:
        if not isinstance(url, str):
            raise TypeError(f"RedisStore takes a redis:// URL string, not {type(url).__name__}")
        parsed = urlparse(url)
        # (a unix:// URL's path is its socket's)
        db = parsed.path.strip("/") if parsed.scheme in ("redis", "rediss") else ""
        if db and not db.isdigit():
            # redis-py reads a path that is not a number as database 0: the
            # blobs would land beside whatever database 0 holds
            raise ValueError(f"{url!r}: the database in redis://host:port/db is a number, not {db!r}")
        redis = require("redis", "redis")
        self._redis = redis
        self.url = url
        self._client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)

    def _call(self, fn: Any) -> Any:
        if self.closed:  # the client reconnected on its own after close()
            raise StoreUnavailable(f"{self.url} is closed")
        try:
            return fn(self._client)
        except self._redis.exceptions.ResponseError as exc:
            if "OOM" in str(exc) or "maxmemory" in str(exc):
                raise StoreFull(f"{self.url}: {exc}") from exc
            raise StoreUnavailable(f"{self.url}: {exc}") from exc
        except self._redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"{self.url}: {exc}") from exc

    def put(self, key: str, blob: bytes) -> None:
        k, v = _check_key(key), _check_blob(blob)
        self._call(lambda c: c.set(k, v))

    def get(self, key: str) -> bytes | None:
        k = _check_key(key)
        got = self._call(lambda c: c.get(k))
        return bytes(got) if got is not None else None

    def delete(self, key: str) -> bool:
        k = _check_key(key)
        return bool(self._call(lambda c: c.delete(k)))

    def keys(self, prefix: str = "") -> list[str]:
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in _check_prefix(prefix)) + "*"
        return sorted(k.decode() for k in self._call(lambda c: list(c.scan_iter(match=pattern, count=1000))))

    def close(self) -> None:
        self._closed = True
        self._client.close()


def open_store(url: str) -> Store:
    """A store from its URL: sqlite:///path.db, lmdb:///path, redis://host:port/db."""
    if not isinstance(url, str):
        raise TypeError(f"a store URL is a str, not {type(url).__name__}")
    parsed = urlparse(url)
    if parsed.scheme in ("sqlite", "lmdb") and (parsed.query or parsed.fragment):
        # not options we read: a file named with them, or one opened without them, would surprise
        raise ValueError(f"{url!r}: {parsed.scheme} store URLs take no query or fragment, only a path")
    # sqlite:///abs and sqlite:////abs (the store's own url) name one file
    path = "/" + parsed.path.lstrip("/") if parsed.path else ""
    if parsed.scheme == "sqlite":
        if not parsed.path:
            raise ValueError(f"{url!r} names no file: use sqlite:///path/to/file.db")
        return SQLiteStore(path)
    if parsed.scheme == "lmdb":
        if not parsed.path:
            raise ValueError(f"{url!r} names no directory: use lmdb:///path/to/dir")
        return LMDBStore(path)
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    raise ValueError(
        f"unknown store URL {url!r}: use sqlite:///path.db, lmdb:///path or redis://host:port/db"
    )
