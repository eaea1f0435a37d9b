"""One small adapter per session store, each storing sessions the way its own users do.

Every adapter has the same methods, so every row of ``walsess bench`` runs
exactly the same workload code:

* ``create(data) -> token``: a new session holding *data*, alive for
  :data:`TTL` seconds; the token is what a cookie would carry.
* ``set(token, key, value)``: one key of a live session, written the way the
  store's users write it (for the row stores: read, modify, write the whole
  session in one transaction). It refreshes the session's expiry. Setting a
  key of a session that does not exist (any more) changes nothing: no row
  resurrects a destroyed session.
* ``read(token) -> dict | None``: the whole session, decoded; ``None`` if it
  does not exist or has expired.
* ``destroy(token)``.
* ``populate(datas)``: create many sessions, yielding their tokens; untimed,
  so it may batch (one transaction, one pipeline) but ends with the data as
  durable as the row's name says.
* ``close()``; ``durable``: whether each change is durable (survives a power
  loss) when the call returns; ``processes()``: other processes whose memory
  the store uses (a Redis server).

A row is a :class:`PeerSpec`: a name, an adapter factory and what it needs.
:data:`PEERS` lists them all; :meth:`PeerSpec.missing` says, in one line, why
a row cannot run here and how to install what it needs.

The optional packages are imported with :func:`importlib.import_module`, so
this module imports (and type-checks) without any of them installed.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import walsess
from walsess.tokens import digest as token_digest

__all__ = [
    "PEERS",
    "TTL",
    "Peer",
    "PeerSpec",
    "RedisServer",
    "RedisStorePeer",
    "peer_names",
    "peer_spec",
]

#: Lifetime of every benchmark session, in seconds: nothing expires during a run.
TTL = 7 * 86_400
#: Sessions per transaction or pipeline when populating.
CHUNK = 1000
#: What to install for the optional Python packages.
PIP_HINT = "pip install 'walsess[bench]'"

Data = dict[str, Any]


def new_token() -> str:
    """A session token as the other stores' users make them: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def _import(module: str) -> ModuleType:
    return importlib.import_module(module)


class Peer:
    """The interface every adapter implements (see the module docstring)."""

    durable: bool = False

    def create(self, data: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def set(self, token: str, key: str, value: Any) -> None:
        raise NotImplementedError

    def read(self, token: str) -> Data | None:
        raise NotImplementedError

    def destroy(self, token: str) -> None:
        raise NotImplementedError

    def populate(self, datas: Iterable[Mapping[str, Any]]) -> Iterator[str]:
        """Create a session for each of *datas*, yielding the tokens (lazily)."""
        create = self.create
        for data in datas:
            yield create(data)

    def processes(self) -> list[int]:
        """Process ids, other than this one, whose memory holds the sessions."""
        return []

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(datas: Iterable[Mapping[str, Any]], size: int = CHUNK) -> Iterator[list[Data]]:
    chunk: list[Data] = []
    for d in datas:
        chunk.append(dict(d))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- walsess ------------------------------------------------------------------------------


class WalsessPeer(Peer):
    """walsess, as a web request uses it: ``store.get(token)``, then read or set keys.

    ``store.get`` extends the session's idle deadline in memory (logging a
    TOUCH only when it has moved far), as in every real request.
    """

    def __init__(self, path: str, durability: str = "interval") -> None:
        self.path = path
        self.durability = durability
        self.durable = durability == "always"
        self.store = walsess.open(path, durability=durability, default_ttl=TTL)

    def create(self, data: Mapping[str, Any]) -> str:
        return self.store.create(data).id

    def set(self, token: str, key: str, value: Any) -> None:
        s = self.store.get(token)
        if s is not None:
            s[key] = value

    def read(self, token: str) -> Data | None:
        s = self.store.get(token)
        return None if s is None else s.to_dict()

    def destroy(self, token: str) -> None:
        self.store.destroy(token)

    def populate(self, datas: Iterable[Mapping[str, Any]]) -> Iterator[str]:
        """Create the sessions, then compact: the stores the workloads use (the
        open workload above all) are compacted, as a store that has run a while is."""
        if self.durability != "always":
            yield from super().populate(datas)
            self.store.compact()
            return
        # One fsync per create would make populating slow and time nothing:
        # write with durability "never" (which syncs on close), then reopen.
        self.store.close()
        with walsess.open(self.path, durability="never", default_ttl=TTL) as fast:
            create = fast.create
            for data in datas:
                yield create(data).id
            fast.compact()
        self.store = walsess.open(self.path, durability=self.durability, default_ttl=TTL)

    def close(self) -> None:
        self.store.close()


# -- the floors ---------------------------------------------------------------------------

#: Characters of a token that name it in the lines of :class:`FloorDictWrite` after
#: its create line (16 base64 characters: 96 bits).
REF_CHARS = 16


def floor_create_line(token: str, values: Mapping[str, str]) -> bytes:
    """The line :class:`FloorDictWrite` appends for a create: the token, keys and JSON values."""
    parts = ["C", token]
    for k, v in values.items():
        parts += (k, v)
    return ("\t".join(parts) + "\n").encode()


def floor_set_line(token: str, key: str, js: str) -> bytes:
    """The line for a set: about the size of the walsess record for the same change."""
    return f"S\t{token[:REF_CHARS]}\t{key}\t{js}\n".encode()


def floor_destroy_line(token: str) -> bytes:
    return f"D\t{token[:REF_CHARS]}\n".encode()


class FloorDict(Peer):
    """The no-I/O floor: ``dict`` token -> ``dict`` key -> ``json.dumps(value)``.

    No persistence, no expiry: what any in-memory session store must at least do.
    """

    def __init__(self, path: str | None = None) -> None:
        self.table: dict[str, dict[str, str]] = {}

    def create(self, data: Mapping[str, Any]) -> str:
        t = new_token()
        dumps = json.dumps
        self.table[t] = {k: dumps(v) for k, v in data.items()}
        return t

    def set(self, token: str, key: str, value: Any) -> None:
        d = self.table.get(token)
        if d is not None:
            d[key] = json.dumps(value)

    def read(self, token: str) -> Data | None:
        d = self.table.get(token)
        if d is None:
            return None
        loads = json.loads
        return {k: loads(v) for k, v in d.items()}

    def destroy(self, token: str) -> None:
        self.table.pop(token, None)

    def close(self) -> None:
        self.table.clear()


class FloorDictWrite(FloorDict):
    """:class:`FloorDict` plus one ``os.write`` per change to an ``O_APPEND`` file.

    A create appends a line with the token and every key and JSON value; a set
    ``S ref key json``, a destroy ``D ref`` (ref: the token's first 16
    characters). No fsync: it survives a killed process, not a power loss.
    Opening replays the file (the floor for walsess's log replay).
    """

    FILE = "floor.log"

    def __init__(self, path: str) -> None:
        super().__init__()
        os.makedirs(path, exist_ok=True)
        self.path = os.path.join(path, self.FILE)
        self._replay()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _replay(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        table = self.table
        by_ref: dict[str, str] = {}
        for line in raw.decode().splitlines():
            op, ref, *rest = line.split("\t")
            if op == "C":
                table[ref] = dict(zip(rest[0::2], rest[1::2], strict=True))
                by_ref[ref[:REF_CHARS]] = ref
            elif op == "S":
                table[by_ref[ref]][rest[0]] = rest[1]
            else:
                del table[by_ref.pop(ref)]

    def create(self, data: Mapping[str, Any]) -> str:
        t = new_token()
        dumps = json.dumps
        values = {k: dumps(v) for k, v in data.items()}
        os.write(self.fd, floor_create_line(t, values))
        self.table[t] = values
        return t

    def set(self, token: str, key: str, value: Any) -> None:
        d = self.table.get(token)
        if d is not None:
            js = json.dumps(value)
            os.write(self.fd, floor_set_line(token, key, js))
            d[key] = js

    def destroy(self, token: str) -> None:
        if self.table.pop(token, None) is not None:
            os.write(self.fd, floor_destroy_line(token))

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FloorJson(Peer):
    """The open floor: every session in one JSON object of objects (token -> {key:
    value}), read with one ``f.read()`` and parsed with one ``json.loads`` at open.

    The least a restart of a store whose sessions are held as Python objects
    can cost: one C-level parse of the whole state, with no framing, checksums,
    expiry or indexes. Kept in memory between open and close and written whole
    on close (only if changed), so only the open workload runs on this row.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     floor = FloorJson(d)
    ...     token = floor.create({"cart": [1, 2], "theme": "dark"})
    ...     floor.close()
    ...     FloorJson(d).read(token)
    {'cart': [1, 2], 'theme': 'dark'}
    """

    FILE = "sessions.json"

    def __init__(self, path: str) -> None:
        self.path = os.path.join(path, self.FILE)
        self.changed = False
        self.table: dict[str, Data] = {}
        try:
            with open(self.path, "rb") as f:
                self.table = json.loads(f.read())
        except FileNotFoundError:
            pass

    def create(self, data: Mapping[str, Any]) -> str:
        t = new_token()
        self.table[t] = dict(data)
        self.changed = True
        return t

    def set(self, token: str, key: str, value: Any) -> None:
        d = self.table.get(token)
        if d is not None:
            d[key] = value
            self.changed = True

    def read(self, token: str) -> Data | None:
        d = self.table.get(token)
        return None if d is None else dict(d)

    def destroy(self, token: str) -> None:
        if self.table.pop(token, None) is not None:
            self.changed = True

    def close(self) -> None:
        if self.changed:
            with open(self.path, "w") as f:
                f.write(json.dumps(self.table))
            self.changed = False
        self.table = {}


# -- sqlite3 ------------------------------------------------------------------------------


class SqlitePeer(Peer):
    """sqlite3 as Django's database session backend uses it.

    A table ``sessions (token TEXT PRIMARY KEY, data BLOB, expiry REAL)`` with
    an index on expiry; data is the session's JSON. A set reads, modifies and
    writes the blob in one ``BEGIN IMMEDIATE`` transaction and moves the
    expiry. WAL journal; ``synchronous=NORMAL`` (a commit is not fsynced: a
    power loss can take the last ones) or ``FULL`` (each commit fsyncs the
    WAL: durable). One connection per thread.
    """

    FILE = "sessions.sqlite3"

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, self.FILE)
        self.synchronous = synchronous
        self.durable = synchronous == "FULL"
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        c = self._conn()
        c.execute(
            "CREATE TABLE IF NOT EXISTS sessions"
            " (token TEXT PRIMARY KEY, data BLOB NOT NULL, expiry REAL NOT NULL)"
        )
        c.execute("CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expiry)")

    def _conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(
                self.file, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    def create(self, data: Mapping[str, Any]) -> str:
        t = new_token()
        self._conn().execute(
            "INSERT INTO sessions (token, data, expiry) VALUES (?, ?, ?)",
            (t, json.dumps(data).encode(), time.time() + TTL),
        )
        return t

    def set(self, token: str, key: str, value: Any) -> None:
        c = self._conn()
        now = time.time()
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute(
                "SELECT data FROM sessions WHERE token = ? AND expiry > ?", (token, now)
            ).fetchone()
            if row is not None:
                d = json.loads(row[0])
                d[key] = value
                c.execute(
                    "UPDATE sessions SET data = ?, expiry = ? WHERE token = ?",
                    (json.dumps(d).encode(), now + TTL, token),
                )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def read(self, token: str) -> Data | None:
        row = (
            self._conn()
            .execute(
                "SELECT data FROM sessions WHERE token = ? AND expiry > ?", (token, time.time())
            )
            .fetchone()
        )
        if row is None:
            return None
        d: Data = json.loads(row[0])
        return d

    def destroy(self, token: str) -> None:
        self._conn().execute("DELETE FROM sessions WHERE token = ?", (token,))

    def populate(self, datas: Iterable[Mapping[str, Any]]) -> Iterator[str]:
        c = self._conn()
        for chunk in _chunks(datas):
            expiry = time.time() + TTL
            rows = [(new_token(), json.dumps(d).encode(), expiry) for d in chunk]
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT INTO sessions (token, data, expiry) VALUES (?, ?, ?)", rows)
            c.execute("COMMIT")
            for r in rows:
                yield r[0]

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        self._local = threading.local()


# -- diskcache ----------------------------------------------------------------------------


class DiskcachePeer(Peer):
    """``diskcache.Cache`` with its defaults (SQLite in WAL mode, synchronous=NORMAL).

    A session is one entry holding the dict (pickled by diskcache) with
    ``expire=TTL``; a set reads, modifies and writes it in ``cache.transact()``.
    """

    def __init__(self, path: str) -> None:
        self.cache = _import("diskcache").Cache(path)

    def create(self, data: Mapping[str, Any]) -> str:
        t = new_token()
        self.cache.set(t, dict(data), expire=TTL)
        return t

    def set(self, token: str, key: str, value: Any) -> None:
        cache = self.cache
        with cache.transact():
            d = cache.get(token)
            if d is not None:
                d[key] = value
                cache.set(token, d, expire=TTL)

    def read(self, token: str) -> Data | None:
        d: Data | None = self.cache.get(token)
        return d

    def destroy(self, token: str) -> None:
        self.cache.delete(token)

    def populate(self, datas: Iterable[Mapping[str, Any]]) -> Iterator[str]:
        cache = self.cache
        for chunk in _chunks(datas):
            tokens = [new_token() for _ in chunk]
            with cache.transact():
                for t, d in zip(tokens, chunk, strict=True):
                    cache.set(t, d, expire=TTL)
            yield from tokens

    def close(self) -> None:
        self.cache.close()


# -- lmdb ---------------------------------------------------------------------------------


class LmdbPeer(Peer):
    """LMDB through the ``lmdb`` package: token -> JSON ``[expiry, data]``.

    A set reads, modifies and writes the value in one write transaction.
    ``sync=True`` (LMDB's default): each commit is fsynced, durable;
    ``sync=False``: commits reach the OS, not the disk.
    """

    MAP_SIZE = 1 << 34  # address space, not disk: the file grows as needed

    def __init__(self, path: str, sync: bool = True) -> None:
        self.durable = sync
        self.env = _import("lmdb").open(path, map_size=self.MAP_SIZE, sync=sync, metasync=sync)

    def create(self, data: Mapping[str, Any]) -> str:
        t = new_token()
        value = json.dumps([time.time() + TTL, data]).encode()
        with self.env.begin(write=True) as txn:
            txn.put(t.encode(), value)
        return t

    def set(self, token: str, key: str, value: Any) -> None:
        k = token.encode()
        now = time.time()
        with self.env.begin(write=True) as txn:
            raw = txn.get(k)
            if raw is None:
                return
            expiry, d = json.loads(raw)
            if expiry <= now:
                return
            d[key] = value
            txn.put(k, json.dumps([now + TTL, d]).encode())

    def read(self, token: str) -> Data | None:
        with self.env.begin() as txn:
            raw = txn.get(token.encode())
        if raw is None:
            return None
        expiry, d = json.loads(raw)
        if expiry <= time.time():
            return None
        data: Data = d
        return data

    def destroy(self, token: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(token.encode())

    def populate(self, datas: Iterable[Mapping[str, Any]]) -> Iterator[str]:
        for chunk in _chunks(datas):
            expiry = time.time() + TTL
            tokens = [new_token() for _ in chunk]
            with self.env.begin(write=True) as txn:
                for t, d in zip(tokens, chunk, strict=True):
                    txn.put(t.encode(), json.dumps([expiry, d]).encode())
            yield from tokens

    def close(self) -> None:
        self.env.close()


# -- cachelib -----------------------------------------------------------------------------


class CachelibPeer(Peer):
    """cachelib's ``FileSystemCache``: Flask-Session's filesystem backend.

    One file per session (the pickled dict, written to a temporary file and
    renamed over the old one), ``timeout=TTL``. ``threshold=0``: no eviction
    (Flask-Session's default of 500 would drop live sessions).
    """

    def __init__(self, path: str) -> None:
        self.cache = _import("cachelib").FileSystemCache(
            path, threshold=0, default_timeout=TTL, mode=0o600
        )

    def create(self, data: Mapping[str, Any]) -> str:
        t = new_token()
        self.cache.set(t, dict(data), timeout=TTL)
        return t

    def set(self, token: str, key: str, value: Any) -> None:
        cache = self.cache
        d = cache.get(token)
        if d is not None:
            d[key] = value
            cache.set(token, d, timeout=TTL)

    def read(self, token: str) -> Data | None:
        d: Data | None = self.cache.get(token)
        return d

    def destroy(self, token: str) -> None:
        self.cache.delete(token)

    def close(self) -> None:
        pass  # nothing is held open between calls


# -- Redis --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _prctl() -> Callable[..., int] | None:
    """Linux's ``prctl(2)``, looked up once in the parent (not between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None).prctl
        return fn
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGTERM the server if the benchmark dies (even by SIGKILL) without stopping it."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class RedisServer:
    """A ``redis-server`` of our own: 127.0.0.1, a free port, data in *directory*.

    ``appendonly yes`` with the given ``appendfsync`` (``everysec``: the AOF is
    fsynced once a second; ``always``: before each reply), no RDB snapshots.
    Started by the constructor, which returns once the server answers PING
    (so on an existing directory, once it has loaded its AOF); stopped by
    :meth:`stop` (SIGTERM: the server flushes and fsyncs its AOF and exits).
    """

    PROGRAM = "redis-server"
    LOG = "redis.log"

    def __init__(self, directory: str, appendfsync: str = "everysec", timeout: float = 600) -> None:
        if appendfsync not in ("everysec", "always", "no"):
            raise ValueError(f"appendfsync must be everysec, always or no, not {appendfsync!r}")
        self.directory = os.path.abspath(directory)
        self.appendfsync = appendfsync
        os.makedirs(self.directory, exist_ok=True)
        program = shutil.which(self.PROGRAM)
        if program is None:
            raise FileNotFoundError(f"{self.PROGRAM} not found")
        for attempt in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    program,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--protected-mode",
                    "yes",
                    "--dir",
                    self.directory,
                    "--logfile",
                    os.path.join(self.directory, self.LOG),
                    "--daemonize",
                    "no",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    appendfsync,
                    "--save",
                    "",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
            _LIVE.add(self)
            try:
                self._wait_ready(timeout)
                return
            except OSError:
                self.stop()
                if attempt == 4 or "in use" not in self.log_tail():
                    raise

    def _wait_ready(self, timeout: float) -> None:
        """Poll with a raw PING (no client retry policy in the way) until +PONG."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise OSError(
                    f"{self.PROGRAM} exited with status {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.PROGRAM} not ready after {timeout:g}s")
            time.sleep(0.001)

    def log_tail(self, lines: int = 3) -> str:
        try:
            with open(os.path.join(self.directory, self.LOG), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _LIVE.discard(self)


#: Servers started and not yet stopped; stopped at exit whatever happens.
_LIVE: set[RedisServer] = set()


def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


atexit.register(_stop_all)

#: Sets a key of an existing session and refreshes its expiry, atomically;
#: a missing (destroyed, expired) session is not recreated.
_REDIS_SET = """
if redis.call('EXPIRE', KEYS[1], ARGV[3]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class RedisPeer(Peer):
    """A Redis server (started here, see :class:`RedisServer`) through redis-py.

    A session is a hash ``s:TOKEN`` of key -> JSON value with ``EXPIRE TTL``:
    a create is ``HSET`` + ``EXPIRE`` in ``MULTI``/``EXEC``; a set is one
    script that refreshes the expiry and sets the field only if the session
    exists; a read is ``HGETALL``. ``appendfsync always`` is durable;
    ``everysec`` can lose about a second on a power loss.
    """

    def __init__(self, path: str, appendfsync: str = "everysec") -> None:
        self.durable = appendfsync == "always"
        self.server = RedisServer(path, appendfsync)
        try:
            self.client = _import("redis").Redis(host="127.0.0.1", port=self.server.port)
            self._set_sha = self.client.script_load(_REDIS_SET)
        except BaseException:
            self.server.stop()
            raise

    def create(self, data: Mapping[str, Any]) -> str:
        t = new_token()
        k = "s:" + t
        dumps = json.dumps
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(k, mapping={f: dumps(v) for f, v in data.items()})
        pipe.expire(k, TTL)
        pipe.execute()
        return t

    def set(self, token: str, key: str, value: Any) -> None:
        self.client.evalsha(self._set_sha, 1, "s:" + token, key, json.dumps(value), TTL)

    def read(self, token: str) -> Data | None:
        h = self.client.hgetall("s:" + token)
        if not h:
            return None
        loads = json.loads
        return {f.decode(): loads(v) for f, v in h.items()}

    def destroy(self, token: str) -> None:
        self.client.delete("s:" + token)

    def populate(self, datas: Iterable[Mapping[str, Any]]) -> Iterator[str]:
        dumps = json.dumps
        for chunk in _chunks(datas):
            tokens = [new_token() for _ in chunk]
            pipe = self.client.pipeline(transaction=False)
            for t, d in zip(tokens, chunk, strict=True):
                pipe.hset("s:" + t, mapping={f: dumps(v) for f, v in d.items()})
                pipe.expire("s:" + t, TTL)
            pipe.execute()
            yield from tokens

    def processes(self) -> list[int]:
        return [self.server.proc.pid]

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.server.stop()


class RedisStorePeer(Peer):
    """:class:`walsess.RedisStore` on a redis-server of its own, configured as the
    ``redis-everysec`` row's (AOF ``appendfsync everysec``), used as a web request
    uses it.

    A read is ``store.get(token)`` (one script: check, maybe extend, return the
    session whole) and then the handle's ``encoded()``, which gives the bytes
    that lookup brought back, decoded: the request seam's load, one round trip,
    as the raw peer's ``HGETALL``. (``to_dict()`` would read the session again.)
    A set is ``session[key] = value`` on the handle of the token, as the
    request that loaded the session holds it: one script that checks the
    session is live and sets the field, as the raw peer's; the handle is made
    from the token (:class:`walsess.RedisSession`), not looked up again, since
    the raw peer's set does not read either. A set on a session that is gone
    raises :class:`walsess.SessionNotFound`, which is the "changes nothing" of
    the other rows.
    """

    def __init__(self, path: str) -> None:
        self.server = RedisServer(path, "everysec")
        try:
            self.store = walsess.RedisStore.from_url(
                f"redis://127.0.0.1:{self.server.port}/0", default_ttl=TTL
            )
        except BaseException:
            self.server.stop()
            raise
        self._decode_all = self.store.decode_all

    def create(self, data: Mapping[str, Any]) -> str:
        return self.store.create(data).id

    def set(self, token: str, key: str, value: Any) -> None:
        session = walsess.RedisSession(self.store, token, token_digest(token))
        try:  # noqa: SIM105  # a timed path: no context manager object per call
            session[key] = value
        except walsess.SessionNotFound:
            pass

    def read(self, token: str) -> Data | None:
        s = self.store.get(token)
        return None if s is None else self._decode_all(s.encoded())

    def destroy(self, token: str) -> None:
        self.store.destroy(token)

    def processes(self) -> list[int]:
        return [self.server.proc.pid]

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.server.stop()


# -- the rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerSpec:
    """One row of the benchmark: a named, configured store.

    *factory* opens (or creates) the store in a directory. *modules* and
    *programs* are what it needs; *install* says how to get them.
    *persistent*: it keeps sessions across a reopen (every row but the dict
    floor), so it has an open time and a disk size. *install* says how to get
    the *programs* (the *modules* come with ``walsess[bench]``).
    """

    name: str
    description: str
    factory: Callable[[str], Peer]
    durable: bool
    persistent: bool = True
    modules: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    install: str = ""
    #: The only workloads this row runs (None: every one that applies to it).
    workloads: tuple[str, ...] | None = None

    def missing(self) -> str | None:
        """Why this row cannot run here, with how to install what it needs; None if it can."""
        for m in self.modules:
            if importlib.util.find_spec(m) is None:
                return f"Python package {m} not installed ({PIP_HINT})"
        for p in self.programs:
            if shutil.which(p) is None:
                return f"{p} not found on PATH ({self.install})"
        return None

    def open(self, path: str) -> Peer:
        os.makedirs(path, exist_ok=True)
        return self.factory(path)


def _walsess(durability: str) -> Callable[[str], Peer]:
    return lambda path: WalsessPeer(path, durability)


def _sqlite(synchronous: str) -> Callable[[str], Peer]:
    return lambda path: SqlitePeer(path, synchronous)


def _lmdb(sync: bool) -> Callable[[str], Peer]:
    return lambda path: LmdbPeer(path, sync)


def _redis(appendfsync: str) -> Callable[[str], Peer]:
    return lambda path: RedisPeer(path, appendfsync)


_REDIS_INSTALL = "apt-get install redis-server"

#: The RedisStore row, and the raw redis-py row it is judged against (issue 12's target).
REDIS_STORE = "walsess-redis"
REDIS_RAW = "redis-everysec"

#: Every row, in table order.
PEERS: tuple[PeerSpec, ...] = (
    PeerSpec("floor-dict", "dict of dicts, json.dumps; no I/O", FloorDict, False, False),
    PeerSpec("floor-dict-write", "the same + one os.write per change", FloorDictWrite, False),
    PeerSpec(
        "floor-json",
        "one JSON object of objects, json.loads at open",
        FloorJson,
        False,
        workloads=("open",),
    ),
    PeerSpec("walsess-interval", "walsess, durability='interval'", _walsess("interval"), False),
    PeerSpec("walsess-always", "walsess, durability='always'", _walsess("always"), True),
    PeerSpec("sqlite-normal", "sqlite3, WAL, synchronous=NORMAL", _sqlite("NORMAL"), False),
    PeerSpec("sqlite-full", "sqlite3, WAL, synchronous=FULL", _sqlite("FULL"), True),
    PeerSpec(
        "diskcache",
        "diskcache.Cache (SQLite, WAL, NORMAL)",
        DiskcachePeer,
        False,
        modules=("diskcache",),
    ),
    PeerSpec("lmdb-sync", "lmdb, sync=True", _lmdb(True), True, modules=("lmdb",)),
    PeerSpec("lmdb-nosync", "lmdb, sync=False", _lmdb(False), False, modules=("lmdb",)),
    PeerSpec(
        "cachelib-fs",
        "cachelib FileSystemCache (Flask-Session)",
        CachelibPeer,
        False,
        modules=("cachelib",),
    ),
    PeerSpec(
        "redis-everysec",
        "redis-server, AOF appendfsync everysec",
        _redis("everysec"),
        False,
        modules=("redis",),
        programs=(RedisServer.PROGRAM,),
        install=_REDIS_INSTALL,
    ),
    PeerSpec(
        "redis-always",
        "redis-server, AOF appendfsync always",
        _redis("always"),
        True,
        modules=("redis",),
        programs=(RedisServer.PROGRAM,),
        install=_REDIS_INSTALL,
    ),
    # What moving to walsess.RedisStore costs per request, beside the raw peer on the
    # same server settings. Per-request workloads only: its open, memory and disk are
    # those of the Redis server, which the raw rows measure already.
    PeerSpec(
        REDIS_STORE,
        "walsess.RedisStore, redis-server AOF everysec",
        RedisStorePeer,
        False,
        modules=("redis",),
        programs=(RedisServer.PROGRAM,),
        install=_REDIS_INSTALL,
        workloads=("create", "set", "read", "mixed"),
    ),
)

#: The row every ratio is stated against, and the durable one for durable workloads.
BASELINE = "sqlite-normal"
DURABLE_BASELINE = "sqlite-full"
FLOORS = ("floor-dict", "floor-dict-write")


def peer_names() -> list[str]:
    return [p.name for p in PEERS]


def peer_spec(name: str) -> PeerSpec:
    for p in PEERS:
        if p.name == name:
            return p
    raise KeyError(f"no peer {name!r}; one of {', '.join(peer_names())}")
