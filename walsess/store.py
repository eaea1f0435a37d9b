"""The :class:`Store`: sessions in memory, every change logged before it is applied.

The store composes the layers below it and adds what sessions need: tokens,
expiry, validation and thread safety. Each change follows one path:

1. validate and encode (bad input raises before any byte is written);
2. under the store lock: check the session is live, ``write(2)`` the record,
   apply it to the table;
3. outside the lock, in ``always`` mode: wait for the group fsync.

So memory never holds a change the log does not, and a process killed at
any instant loses nothing a call acknowledged.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import record as rec
from . import tokens
from .changelog import ChangeLog, Recovery
from .codec import JSON, Codec, resolve_codec
from .durability import make_policy
from .errors import (
    CodecError,
    SessionNotFound,
    StoreClosed,
    StorePoisoned,
    ValidationError,
    ValueTooLarge,
)
from .fileio import OS, FileSystem
from .lockfile import DirectoryLock
from .session import _MISSING, Session
from .table import SessionState, SessionTable

__all__ = ["Store", "open"]

Clock = Callable[[], float]

_INF = math.inf


def open(  # the front door, like io.open and dbm.open
    path: str | os.PathLike[str],
    *,
    durability: str = "interval",
    fsync_interval: float = 1.0,
    default_ttl: float = 1800.0,
    max_lifetime: float | None = None,
    touch_granularity: float = 60.0,
    codec: str | Codec = "json",
    max_value_bytes: int = 1 << 20,
    clock: Clock = time.time,
    fs: FileSystem = OS,
) -> Store:
    """Open (creating if needed) the store in directory *path* and replay its log.

    :param durability: ``"always"``, ``"interval"`` (default) or ``"never"``;
        see :mod:`walsess.durability` and the README for what each guarantees.
    :param fsync_interval: seconds within which ``interval`` mode fsyncs a change.
    :param default_ttl: idle timeout of new sessions, in seconds; reads extend it.
    :param max_lifetime: absolute lifetime of new sessions from creation, or None.
    :param touch_granularity: a read that extends a session's idle deadline writes
        a TOUCH record only once the deadline has moved by
        ``min(touch_granularity, ttl / 10)`` since the last one logged; after a
        restart a session may expire earlier by at most that much, never later.
    :param codec: ``"json"`` (default), ``"pickle"`` (only if you trust every
        writer of the files), or any :class:`~walsess.codec.Codec`.
    :param max_value_bytes: the largest encoded value accepted (and replayed).
    :param clock: seconds since the epoch; inject one in tests instead of sleeping.
    :param fs: the file-system seam (tests inject faults through it).
    :raises LockedError: another opener holds the store.
    :raises CorruptionError: damage that is not a torn tail; names file and offset.

    Opening costs one pass over the log (about 1 s per million records).
    """
    return Store(
        os.fspath(path),
        durability=durability,
        fsync_interval=fsync_interval,
        default_ttl=default_ttl,
        max_lifetime=max_lifetime,
        touch_granularity=touch_granularity,
        codec=codec,
        max_value_bytes=max_value_bytes,
        clock=clock,
        fs=fs,
    )


def _positive(name: str, value: float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValidationError(f"{name} must be a positive finite number of seconds, not {value!r}")


class Store:
    """Web sessions in memory, made durable by an append-only change log.

    Thread-safe: any number of threads may share one store. Use
    :func:`walsess.open` to get one; close it (or use ``with``) to release
    the directory lock and make everything durable.

    Example::

        with walsess.open("var/sessions") as store:
            s = store.create({"user_id": 42}, user="42")
            ...
            s = store.get(token)   # None if unknown or expired
    """

    def __init__(
        self,
        path: str,
        *,
        durability: str,
        fsync_interval: float,
        default_ttl: float,
        max_lifetime: float | None,
        touch_granularity: float,
        codec: str | Codec,
        max_value_bytes: int,
        clock: Clock,
        fs: FileSystem,
    ) -> None:
        _positive("default_ttl", default_ttl)
        _positive("max_lifetime", max_lifetime, allow_none=True)
        _positive("fsync_interval", fsync_interval)
        _positive("touch_granularity", touch_granularity)
        if not 0 < max_value_bytes <= rec.MAX_PAYLOAD_BYTES // 2:
            raise ValidationError(f"max_value_bytes must be in 1..{rec.MAX_PAYLOAD_BYTES // 2}")
        self.path = path
        self.durability = durability
        self.default_ttl = float(default_ttl)
        self.max_lifetime = None if max_lifetime is None else float(max_lifetime)
        self.touch_granularity = float(touch_granularity)
        self.max_value_bytes = max_value_bytes
        self.codec = resolve_codec(codec)
        self._decode = self.codec.decode
        self._encode = self.codec.encode
        self._clock = clock
        self._fs = fs
        self._lock = threading.Lock()
        self._closed = True
        self._poison: BaseException | None = None
        self._fsyncs = 0
        self._table = SessionTable()

        created = _make_dir(path, fs)
        self._dirlock = DirectoryLock(path, fs)
        try:
            self._log, self._recovery = ChangeLog.open(
                path, fs, self._table.apply, self._table.set_key, max_value_bytes
            )
            if created:
                fs.fsync_dir(os.path.dirname(os.path.abspath(path)))
            self._sync = make_policy(durability, self._fsync, self._position, fsync_interval)
        except BaseException:
            self._dirlock.release()
            raise
        self._always = self._sync.waits
        self._closed = False

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop background work, fsync, close the files and release the lock.

        Harmless to call twice. If the final fsync fails the files are still
        closed and the lock released, then :class:`StorePoisoned` is raised.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sync.close()
            if self._poison is None:
                self._fsync()
        finally:
            self._log.close()
            self._dirlock.release()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def recovery(self) -> Recovery:
        """What opening found: records replayed and any torn tail that was cut."""
        return self._recovery

    def sync(self) -> None:
        """fsync the log now, whatever the durability mode."""
        self._check_open()
        self._fsync()

    def _position(self) -> int:
        return self._log.written

    def _fsync(self) -> None:
        if self._poison is not None:
            raise StorePoisoned(
                f"store {self.path} is poisoned by an earlier failure; reopen it"
            ) from self._poison
        try:
            self._log.sync()
        except OSError as exc:
            self._poison = exc
            raise StorePoisoned(
                f"fsync of {self._log.path} failed ({exc.strerror or exc}); the store refuses"
                " further writes and will not retry: reopen it to recover what is on disk"
            ) from exc
        self._fsyncs += 1

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")

    def _check_writable(self) -> None:
        """Under the lock, before any append."""
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")
        if self._poison is not None:
            raise StorePoisoned(
                f"store {self.path} refuses writes after an earlier failure; reopen it"
            ) from self._poison

    def _commit(self, record: bytes) -> int:
        """Append under the lock (caller holds it); returns the log position."""
        try:
            pos = self._log.append(record)
        except StorePoisoned as exc:
            self._poison = exc
            raise
        if not self._sync.dirty:
            self._sync.appended()
        return pos

    # -- validation ---------------------------------------------------------------

    def _encode_value(self, value: Any) -> bytes:
        vb = self._encode(value)
        if len(vb) > self.max_value_bytes:
            raise ValueTooLarge(
                f"encoded value is {len(vb)} bytes; max_value_bytes is {self.max_value_bytes}"
            )
        return vb

    def _encode_items(self, items: Iterable[tuple[Any, Any]]) -> list[tuple[str, bytes, bytes]]:
        out = []
        for key, value in items:
            kb = rec.key_bytes(key)
            out.append((key, kb, self._encode_value(value)))
        return out

    # -- sessions -----------------------------------------------------------------

    def _live_state(self, state: SessionState, digest: bytes) -> SessionState:
        """*state* if it still belongs to *digest* and has not expired, else raise."""
        if state.digest is not digest:
            if self._closed:
                raise StoreClosed(f"store {self.path} is closed")
            raise SessionNotFound(f"session {tokens.ref_of(digest)} no longer exists")
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")
        if not state.live_at(self._clock()):
            raise SessionNotFound(f"session {tokens.ref_of(digest)} has expired")
        return state

    def _find(self, token: object) -> SessionState | None:
        """The live session for *token*, or None. Never raises for odd tokens."""
        self._check_open()
        if type(token) is not str or len(token) > 512:
            return None
        st = self._table.find(tokens.digest(token))
        if st is None or not st.live_at(self._clock()):
            return None
        return st

    def create(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        ttl: float | None = None,
        max_lifetime: float | None = None,
        user: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Session:
        """A new session holding *data*, with a fresh 256-bit token. One record.

        :param ttl: idle timeout in seconds (default: the store's ``default_ttl``).
        :param max_lifetime: absolute lifetime in seconds (default: the store's).
        :param user: the owner (a user id), for listing and revoking a user's sessions.
        :param meta: small JSON metadata fixed at creation (IP, user agent, ...).
        """
        ttl = self.default_ttl if ttl is None else ttl
        _positive("ttl", ttl)
        lifetime = self.max_lifetime if max_lifetime is None else max_lifetime
        _positive("max_lifetime", lifetime, allow_none=True)
        if user is not None:
            if not isinstance(user, str):
                raise ValidationError(f"user must be a str, not {type(user).__name__}")
            if len(user.encode()) > rec.MAX_KEY_BYTES:
                raise ValidationError("user is longer than 65,535 UTF-8 bytes")
        meta_b: bytes | None = None
        if meta is not None:
            if not isinstance(meta, Mapping):
                raise ValidationError("meta must be a mapping")
            try:
                meta_b = JSON.encode(dict(meta))
            except CodecError as exc:
                raise CodecError(f"meta must be JSON: {exc}") from None
            if len(meta_b) > self.max_value_bytes:
                raise ValueTooLarge("meta is larger than max_value_bytes")
        items = self._encode_items((data or {}).items())
        token = tokens.new_token()
        digest = tokens.digest(token)
        with self._lock:
            self._check_writable()
            table = self._table
            while table.ref_taken(digest):  # a 64-bit ref collision: draw again
                token = tokens.new_token()
                digest = tokens.digest(token)
            sid = table.allocate_sid()
            now = self._clock()
            hard = _INF if lifetime is None else now + float(lifetime)
            record = rec.encode_create(
                sid,
                digest,
                now,
                float(ttl),
                now + float(ttl),
                hard,
                user,
                meta_b,
                [(kb, vb) for _, kb, vb in items],
            )
            if len(record) > rec.MAX_PAYLOAD_BYTES:
                raise ValueTooLarge("session data is larger than one record may be (1 GiB)")
            pos = self._commit(record)
            state = table.apply_create(
                rec.Create(
                    sid,
                    digest,
                    now,
                    float(ttl),
                    now + float(ttl),
                    hard,
                    user,
                    meta_b,
                    tuple((k, vb) for k, _, vb in items),
                )
            )
        if self._always:
            self._sync.wait(pos)
        return Session(self, state, token)

    def get(self, token: str) -> Session | None:
        """The session for *token*, or None if unknown or expired.

        Extends the idle deadline to now + ttl (sliding expiry); a TOUCH record
        is written only when that moves the logged deadline by the granularity.
        """
        st = self._find(token)
        if st is None:
            return None
        self._extend(st)
        return Session(self, st, token)

    def _extend(self, st: SessionState) -> None:
        new_idle = self._clock() + st.ttl
        if new_idle <= st.idle_deadline:
            return
        if new_idle - st.logged_deadline < min(self.touch_granularity, st.ttl * 0.1):
            st.idle_deadline = new_idle  # within the documented granularity: memory only
            return
        self._touch(st, st.digest, new_idle, st.ttl)

    def _touch(self, st: SessionState, digest: bytes, idle: float, ttl: float) -> bool:
        record = rec.encode_touch(st.sid, idle, ttl)
        with self._lock:
            self._check_writable()
            if st.digest is not digest:
                return False
            pos = self._commit(record)
            SessionTable.touch(st, idle, ttl)
        if self._always:
            self._sync.wait(pos)
        return True

    def exists(self, token: str) -> bool:
        """True if *token* names a live session. Does not extend its expiry."""
        return self._find(token) is not None

    __contains__ = exists

    def touch(self, token: str, ttl: float | None = None) -> bool:
        """Extend the session's idle deadline to now + *ttl* (default: its own ttl),
        making *ttl* its idle timeout from now on. Always logged. False if not live."""
        if ttl is not None:
            _positive("ttl", ttl)
        st = self._find(token)
        if st is None:
            return False
        new_ttl = st.ttl if ttl is None else float(ttl)
        return self._touch(st, st.digest, self._clock() + new_ttl, new_ttl)

    def destroy(self, token: str) -> bool:
        """Destroy the session; True if it was live. Its token is dead at once."""
        st = self._find(token)
        return st is not None and self._destroy(st, st.digest, rec.DestroyReason.DESTROYED)

    def revoke(self, ref: str) -> bool:
        """Destroy the session named by its public *ref* (as shown in device lists)."""
        self._check_open()
        key = tokens.parse_ref(ref)
        st = None if key is None else self._table.by_ref.get(key)
        if st is None or not st.live_at(self._clock()):
            return False
        return self._destroy(st, st.digest, rec.DestroyReason.REVOKED)

    def _destroy(self, st: SessionState, digest: bytes, reason: int) -> bool:
        record = rec.encode_destroy(st.sid, reason)
        with self._lock:
            self._check_writable()
            if st.digest is not digest:
                return False
            pos = self._commit(record)
            self._table.remove(st)
        if self._always:
            self._sync.wait(pos)
        return True

    def regenerate(self, token: str) -> Session:
        """Give the session a new token (do this at login); the old token is dead.

        The data, owner and expiry carry over. Handles holding the old token
        raise :class:`SessionNotFound` from now on.
        """
        st = self._find(token)
        if st is None:
            raise SessionNotFound("cannot regenerate: no live session has this token")
        old = st.digest
        new_token = tokens.new_token()
        new = tokens.digest(new_token)
        with self._lock:
            self._check_writable()
            if st.digest is not old:
                raise SessionNotFound("cannot regenerate: the session was removed meanwhile")
            while self._table.ref_taken(new):
                new_token = tokens.new_token()
                new = tokens.digest(new_token)
            pos = self._commit(rec.encode_change_id(st.sid, new))
            self._table.change_digest(st, new)
        if self._always:
            self._sync.wait(pos)
        return Session(self, st, new_token)

    # -- changes through a Session ---------------------------------------------------

    def _set(self, handle: Session, key: str, value: Any) -> None:
        # The hottest path in the library: the steps of _commit and
        # _live_state are inlined here, in the same order.
        vb = self._encode(value)
        if len(vb) > self.max_value_bytes:
            raise ValueTooLarge(
                f"encoded value is {len(vb)} bytes; max_value_bytes is {self.max_value_bytes}"
            )
        st = handle._state
        record = rec.encode_set(st.sid, key, vb)  # validates the key
        now = self._clock()
        with self._lock:
            if self._closed or self._poison is not None:
                self._check_writable()
            if st.digest is not handle._digest or not (
                now < st.idle_deadline and now < st.hard_deadline
            ):
                self._live_state(st, handle._digest)
            try:
                pos = self._log.append(record)
            except StorePoisoned as exc:
                self._poison = exc
                raise
            st.data[key] = vb
            if not self._sync.dirty:
                self._sync.appended()
        if self._always:
            self._sync.wait(pos)

    def _modify(
        self,
        handle: Session,
        clear: bool,
        items: Iterable[tuple[Any, Any]],
        must_exist: str | None = None,
    ) -> None:
        changes: list[tuple[str, bytes | None]] = []
        encoded: list[tuple[bytes, bytes | None]] = []
        for key, value in items:
            kb = rec.key_bytes(key)
            vb = None if value is _MISSING else self._encode_value(value)
            changes.append((key, vb))
            encoded.append((kb, vb))
        st = handle._state
        record = rec.encode_modify(st.sid, clear, encoded)
        if len(record) > rec.MAX_PAYLOAD_BYTES:
            raise ValueTooLarge("the change is larger than one record may be (1 GiB)")
        with self._lock:
            self._check_writable()
            self._live_state(st, handle._digest)
            if must_exist is not None and must_exist not in st.data:
                raise KeyError(must_exist)
            pos = self._commit(record)
            SessionTable.modify(st, clear, changes)
        if self._always:
            self._sync.wait(pos)

    # -- whole store ------------------------------------------------------------------

    def __len__(self) -> int:
        """Live (unexpired) sessions. O(n) until an expiry index exists."""
        self._check_open()
        now = self._clock()
        return sum(1 for st in list(self._table.by_sid.values()) if st.live_at(now))

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: sessions, records, log bytes, fsyncs, mode."""
        self._check_open()
        with self._lock:
            stored = len(self._table)
            log_bytes = self._log.size
            appended = self._log.appends
        return {
            "sessions": len(self),
            "stored_sessions": stored,
            "records_replayed": self._recovery.records,
            "records_appended": appended,
            "log_bytes": log_bytes,
            "log_generation": self._log.generation,
            "fsyncs": self._fsyncs,
            "durability": self.durability,
            "codec": self.codec.name,
            "poisoned": self._poison is not None,
        }

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._table)} sessions"
        return f"<walsess.Store {self.path!r} {self.durability} {state}>"


def _make_dir(path: str, fs: FileSystem) -> bool:
    """Create the store directory owner-only; True if it was created now."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise ValidationError(f"{path} exists and is not a directory") from None
        return False
    os.chmod(path, 0o700)  # exactly owner-only, whatever the umask
    return True
