"""The :class:`Store`: sessions in memory, every change logged before it is applied.

The store composes the layers below it and adds what sessions need: tokens,
validation and thread safety. It is the API and the write path; compaction
(:mod:`walsess.compaction`) and expiry (:mod:`walsess.expiry`) run in objects
it owns and hands what they need. Each change follows one path:

1. validate and encode (bad input raises before any byte is written);
2. under the store lock: check the session is live, ``write(2)`` the record,
   apply it to the table;
3. outside the lock, in ``always`` mode: wait for the group fsync.

So memory never holds a change the log does not, and a process killed at
any instant loses nothing a call acknowledged.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from . import record as rec
from . import tokens
from .codec import JSON, decoder_of_all
from .compaction import Compaction, Compactor
from .durability import make_policy
from .errors import (
    InsecureStore,
    SessionNotFound,
    StorageError,
    StoreClosed,
    StoreForked,
    StoreFull,
    StorePoisoned,
    ValidationError,
    ValueTooLarge,
)
from .expiry import Expiry
from .fileio import FileSystem, must_fsync_dir
from .lockfile import DirectoryLock
from .options import Options
from .options import check_positive as _positive
from .session import MISSING, Session, SessionInfo
from .storedir import Recovery, StoreDirectory
from .table import DEAD, SessionState, SessionTable
from .validate import (
    check_data,
    check_user,
    encode_items,
    encode_meta,
    kept_ref_keys,
    too_large,
    too_many_changes,
    too_many_keys,
)

if TYPE_CHECKING:
    from .protocol import SessionStore

__all__ = ["Compaction", "Store", "open"]

log = logging.getLogger("walsess")

Hook = Callable[[SessionInfo, str], object]

_INF = math.inf
#: Destroy records written per hold of the store lock during gc.
_GC_CHUNK = 1000
#: A running store keeps SIDs; one that opens with SIDs past this renumbers them.
_RENUMBER_ABOVE = 1 << 31

#: Stores open in this process, so that a forked child can disown them.
_OPEN_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


def _disown_after_fork() -> None:
    for store in list(_OPEN_STORES):
        store._disown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_after_fork)

_REASONS = {
    rec.DestroyReason.DESTROYED: "destroyed",
    rec.DestroyReason.EXPIRED: "expired",
    rec.DestroyReason.REVOKED: "revoked",
}


class _Gone(NamedTuple):
    """A removed session's fields as its destroy hooks will see them, still encoded."""

    digest: bytes
    user: str | None
    meta: bytes | None
    created_at: float
    expires_at: float
    last_seen: float
    data: dict[str, bytes]


def open(  # the front door, like io.open and dbm.open
    path: str | os.PathLike[str], options: Options | None = None, **settings: Any
) -> Store:
    """Open (creating if needed) the store in directory *path* and replay its log.

    The store's settings are *options* (the defaults if None) with any keyword
    *settings* in their place: ``open(path, durability="always")`` and
    ``open(path, Options(durability="always"))`` open the same store. Each
    setting and its default is documented on :class:`~walsess.Options`.

    :raises ValidationError: a bad setting, or a keyword that names none;
        raised before any file is touched.
    :raises LockedError: another opener holds the store.
    :raises CorruptionError: damage that is not a torn tail; names file and offset.

    Opening costs one pass over the log (about 1 s per million records).
    """
    return Store(os.fspath(path), Options.of(options, **settings))


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

    def __init__(self, path: str, options: Options) -> None:
        """Open the store in *path* with *options*; :func:`walsess.open` is the way in."""
        # Bound to the directory now: a later chdir() (daemons chdir("/")) must
        # not send compaction's files somewhere else, without the lock.
        path = os.path.abspath(path)
        # Every setting was checked when *options* was built, before any file
        # is touched (no recovery, no directory created, for an open that is refused).
        self.options = options
        # Read again where the directory is opened and the fsync policy made.
        durability, fsync_interval = options.durability, options.fsync_interval
        max_value_bytes = options.max_value_bytes
        # The settings the data path reads, as plain attributes (one lookup each).
        self.compact_ratio = options.compact_ratio
        self.compact_min_bytes = options.compact_min_bytes
        self.cleanup_interval = options.cleanup_interval
        self.max_sessions = options.max_sessions
        self.path = path
        self.durability = options.durability
        self.default_ttl = options.default_ttl
        self.max_lifetime = options.max_lifetime
        self.touch_granularity = options.touch_granularity
        self.max_value_bytes = options.max_value_bytes
        self.codec = options.resolved_codec
        #: Decode one stored value, and a whole key -> bytes dict (the codec's
        #: functions, as attributes: a Session's read calls them directly).
        self.decode = self.codec.decode
        self.decode_all = decoder_of_all(self.codec)
        self._encode = self.codec.encode
        #: The clock given to open (an attribute: a Session's read calls it directly).
        self.clock = options.clock
        self._fs = fs = options.fs
        self._lock = threading.Lock()
        #: True once closed (or, in a forked child, disowned). Set only by the store.
        self.closed = True
        self._pid = os.getpid()
        self._poison: BaseException | None = None
        self._fsyncs = 0
        self._hooks: list[Hook] = []

        try:
            created = _make_dir(path, fs)
            self._dirlock = DirectoryLock(path, fs)
        except OSError as exc:
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        self._files = StoreDirectory(path, fs)
        try:
            self._table, self._log, self._recovery = self._files.recover(max_value_bytes)
        except OSError as exc:
            self._dirlock.release()
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        except BaseException:
            self._dirlock.release()
            raise
        try:
            if created:
                must_fsync_dir(fs, os.path.dirname(os.path.abspath(path)))
            self._sync = make_policy(durability, self._fsync, self._position, fsync_interval)
            self._always = self._sync.waits
            self.closed = False
            snapshot_bytes = snapshot_sessions = 0
            if self._recovery.snapshot is not None:
                snapshot_bytes = os.stat(self._recovery.snapshot).st_size
                snapshot_sessions = self._recovery.snapshot_sessions
            self._compaction = Compactor(
                path=path,
                fs=fs,
                files=self._files,
                table=self._table,
                log=self._log,
                lock=self._lock,
                clock=self.clock,
                check_open=self._check_open,
                check_writable=self._check_writable,
                fsync=self._fsync,
                poisoned=self._poisoned,
                ratio=self.compact_ratio,
                min_bytes=self.compact_min_bytes,
                snapshot_bytes=snapshot_bytes,
                snapshot_sessions=snapshot_sessions,
            )
            if self._table.by_sid and max(self._table.by_sid) > _RENUMBER_ABOVE:
                self._compaction.renumber()
            self._compaction.set_threshold()
        except BaseException as exc:
            self.closed = True
            if hasattr(self, "_sync"):
                self._sync.close()
            self._log.close()
            self._dirlock.release()
            if isinstance(exc, OSError):
                raise StorageError(f"cannot open store {path}: {exc}") from exc
            raise
        self._expiry = Expiry(
            path=path,
            table=self._table,
            lock=self._lock,
            clock=self.clock,
            check_open=self._check_open,
            destroy=lambda expired: self._destroy_many(expired, rec.DestroyReason.EXPIRED),
            after_gc=self._compaction.live_changed,
            interval=self.cleanup_interval,
        )
        _OPEN_STORES.add(self)
        self._expiry.start()

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
            if self.closed:
                return
            self.closed = True
        _OPEN_STORES.discard(self)
        self.stop_cleanup()
        self._compaction.wait()  # it sees the store closed and stops at its next chunk
        try:
            self._sync.close()
            if self._poison is None:
                self._fsync()
        finally:
            self._log.close()
            self._dirlock.release()

    def _disown(self) -> None:
        """In a forked child: refuse every call from now on and let go of the
        inherited descriptors, without writing, syncing or unlocking anything.

        Closing the child's copies leaves the parent's flock held (it belongs to
        the open file description, which the parent still has open), and lets
        the child open the store itself once the parent has closed it. The
        store's locks are replaced because a parent thread may have held them
        at the fork, and no thread of the parent exists here to release them.
        """
        self.closed = True
        self._lock = threading.Lock()
        self._compaction.disown(self._lock)
        self._expiry.disown(self._lock)
        self._log.forget()
        self._dirlock.release()

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a walsess.Store cannot be pickled or sent to another process; open {self.path}"
            " in the process that uses it"
        )

    def _closed_error(self) -> StoreClosed:
        """The error for a call on a store this process cannot use: closed, or forked."""
        if self._pid != os.getpid():
            return StoreForked(
                f"store {self.path} was opened in process {self._pid} and cannot be used in"
                f" process {os.getpid()}, a fork of it: sharing its log would lose sessions."
                " Open the store after forking (gunicorn without --preload, or in a"
                " post-fork hook), or use a store shared between processes"
            )
        return StoreClosed(f"store {self.path} is closed")

    def ping(self) -> None:
        """Raise :class:`StoreClosed` (:class:`StoreForked` in a forked child) if this
        store cannot be used here; costs nothing otherwise. The integrations call it
        at start-up (a :class:`walsess.RedisStore`'s asks its server)."""
        self._check_open()

    def now(self) -> float:
        """The store's clock (seconds since the epoch; the ``clock`` given to open)."""
        return self.clock()

    @property
    def recovery(self) -> Recovery:
        """What opening found: the snapshot loaded, records replayed, any torn tail cut."""
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

    def _poisoned(self, exc: StorePoisoned) -> None:
        """Record the first failure that poisons the store (a compaction's, say)."""
        self._poison = self._poison or exc

    def _check_open(self) -> None:
        if self.closed:
            raise self._closed_error()

    def _check_writable(self) -> None:
        """Under the lock, before any append."""
        if self.closed:
            raise self._closed_error()
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
        if self._log.size > self._compaction.threshold:
            self._compaction.start()
        return pos

    # -- validation ---------------------------------------------------------------

    def _too_large(self, vb: bytes) -> ValueTooLarge:
        return too_large(vb, self.max_value_bytes)

    def _encode_value(self, value: Any) -> bytes:
        vb = self._encode(value)
        if len(vb) > self.max_value_bytes:
            raise self._too_large(vb)
        return vb

    def _encode_items(
        self, items: Iterable[tuple[Any, Any]]
    ) -> tuple[dict[str, bytes], list[bytes], list[bytes]]:
        """Validated *items*: (key -> encoded value, the UTF-8 keys, the encoded values)."""
        data = encode_items(self._encode, items, self.max_value_bytes)
        return data, rec.keys_bytes(data), list(data.values())

    # -- sessions -----------------------------------------------------------------

    def live_state(self, state: SessionState, digest: bytes) -> SessionState:
        """*state* if it still belongs to *digest* and has not expired, else raise
        :class:`SessionNotFound` (or the closed store's error). For :class:`Session`."""
        if state.digest is not digest:
            if self.closed:
                raise self._closed_error()
            raise SessionNotFound(f"session {tokens.ref_of(digest)} no longer exists")
        if self.closed:
            raise self._closed_error()
        if not state.live_at(self.clock()):
            raise SessionNotFound(f"session {tokens.ref_of(digest)} has expired")
        return state

    def _lookup(self, token: object) -> tuple[SessionState, bytes] | None:
        """The live session for *token* and the digest it was found by, or None.
        Never raises for odd tokens. The digest lets a caller that takes the lock
        later check the session still belongs to *token* (not regenerated since)."""
        if self.closed:
            raise self._closed_error()
        if type(token) is not str or len(token) > 512:
            return None
        digest = tokens.digest(token)
        st = self._table.find(digest)
        if st is None or not st.live_at(self.clock()):
            return None
        return st, digest

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
        if ttl is None:
            ttl = self.default_ttl
        else:
            _positive("ttl", ttl)
            ttl = float(ttl)
        if max_lifetime is None:
            lifetime = self.max_lifetime
        else:
            _positive("max_lifetime", max_lifetime)
            lifetime = float(max_lifetime)
        check_user(user)
        meta_b = encode_meta(meta, self.max_value_bytes)
        check_data(data)
        values, kbs, vbs = self._encode_items(data.items() if data else ())
        token = tokens.new_token()
        digest = tokens.digest(token)
        if self.max_sessions is not None and len(self._table) >= self.max_sessions:
            self.gc()
        with self._lock:
            self._check_writable()
            table = self._table
            if self.max_sessions is not None and len(table) >= self.max_sessions:
                raise StoreFull(
                    f"the store holds max_sessions={self.max_sessions} live sessions;"
                    " live sessions are never evicted"
                )
            while table.ref_taken(digest):  # a 64-bit ref collision: draw again
                token = tokens.new_token()
                digest = tokens.digest(token)
            sid = table.allocate_sid()
            now = self.clock()
            idle = now + ttl
            hard = _INF if lifetime is None else now + lifetime
            record = rec.encode_create(sid, digest, now, ttl, idle, hard, user, meta_b, kbs, vbs)
            if len(record) > rec.MAX_PAYLOAD_BYTES:
                raise ValueTooLarge("session data is larger than one record may be (1 GiB)")
            pos = self._commit(record)
            state = table.insert(
                SessionState(
                    sid,
                    digest,
                    now,
                    ttl,
                    idle,
                    hard,
                    user,
                    meta_b,
                    values,
                )
            )
        if self._always:
            self._sync.wait(pos)
        return Session(self, state, token)

    def get(self, token: str, *, wait: bool = True) -> Session | None:
        """The session for *token*, or None if unknown or expired.

        Extends the idle deadline to now + ttl (sliding expiry); a TOUCH record
        is written only when that moves the logged deadline by the granularity.
        Cost: a SHA-256 of the token and two dict probes; no I/O unless a TOUCH.

        :param wait: in ``"always"`` mode, wait for the fsync of a TOUCH this
            read logs. ``wait=False`` returns at once; call :meth:`wait_synced`
            before telling the client anything (an event loop does that wait in
            a thread). Other modes never wait.
        """
        # The hottest read path: _lookup's steps are inlined here. The expiry
        # extension is computed and applied under the lock, so that a
        # concurrent touch(ttl=) is never undone by a read that saw the old ttl.
        if self.closed:
            raise self._closed_error()
        if type(token) is not str or len(token) > 512:
            return None
        digest = tokens.digest(token)
        st = self._table.find(digest)
        if st is None:
            return None
        now = self.clock()
        pos = 0
        with self._lock:
            current = st.digest  # handles compare this object by identity
            if current != digest or not (now < st.idle_deadline and now < st.hard_deadline):
                return None  # destroyed, regenerated or expired
            new_idle = now + st.ttl
            if new_idle > st.idle_deadline:
                if new_idle - st.logged_deadline < min(self.touch_granularity, st.ttl * 0.1):
                    st.idle_deadline = new_idle  # within the documented granularity: memory only
                else:
                    self._check_writable()
                    pos = self._commit(rec.encode_touch(st.sid, new_idle, st.ttl))
                    self._table.touch(st, new_idle, st.ttl)
        if pos and wait and self._always:
            self._sync.wait(pos)
        return Session(self, st, token, current)

    def wait_synced(self) -> None:
        """In ``"always"`` mode, block until every record written so far is durable,
        sharing one fsync with concurrent commits (none if it already is). Other
        modes return at once. Pairs with ``get(token, wait=False)``."""
        if self._always:
            self._check_open()
            self._sync.wait(self._log.written)

    def exists(self, token: str) -> bool:
        """True if *token* names a live session. Does not extend its expiry."""
        return self._lookup(token) is not None

    __contains__ = exists

    def touch(self, token: str, ttl: float | None = None) -> bool:
        """Extend the session's idle deadline to now + *ttl* (default: its own ttl),
        making *ttl* its idle timeout from now on. Always logged. False if not live."""
        if ttl is not None:
            _positive("ttl", ttl)
        found = self._lookup(token)
        if found is None:
            return False
        st, digest = found
        with self._lock:
            self._check_writable()
            if st.digest != digest:
                return False
            new_ttl = st.ttl if ttl is None else float(ttl)
            idle = self.clock() + new_ttl
            pos = self._commit(rec.encode_touch(st.sid, idle, new_ttl))
            self._table.touch(st, idle, new_ttl)
        if self._always:
            self._sync.wait(pos)
        return True

    def destroy(self, token: str) -> bool:
        """Destroy the session; True if it was live. Its token is dead at once."""
        found = self._lookup(token)
        return found is not None and self._destroy(*found, rec.DestroyReason.DESTROYED)

    def revoke(self, ref: str) -> bool:
        """Destroy the session named by its public *ref* (as shown in device lists)."""
        self._check_open()
        key = tokens.parse_ref(ref)
        st = None if key is None else self._table.find_ref(key)
        if st is None or not st.live_at(self.clock()):
            return False
        return self._destroy(st, st.digest, rec.DestroyReason.REVOKED)

    def _destroy(self, st: SessionState, digest: bytes, reason: int) -> bool:
        record = rec.encode_destroy(st.sid, reason)
        with self._lock:
            self._check_writable()
            if st.digest != digest:  # regenerated or destroyed meanwhile
                return False
            pos = self._commit(record)
            gone = self._gone(st)
            self._table.remove(st)
        if self._always:
            self._sync.wait(pos)
        if gone is not None:
            self._notify([gone], _REASONS[rec.DestroyReason(reason)])
        return True

    def regenerate(self, token: str, *, user: Any = MISSING) -> Session:
        """Give the session a new token (do this at login); the old token is dead.

        The data, metadata and expiry carry over. Handles holding the old token
        raise :class:`SessionNotFound` from now on; destroy hooks see the old
        session as "regenerated".

        :param user: make *user* (a str, or None for nobody) the session's owner,
            as a login does. The session is then written anew under a new session
            number with that owner (a CREATE and a DESTROY in one append), so that
            it is listed and revoked with *user*'s other sessions. By default the
            owner is kept and one CHANGE_ID record is written.
        """
        if user is not MISSING:
            check_user(user)
        found = self._lookup(token)
        if found is None:
            raise SessionNotFound("cannot regenerate: no live session has this token")
        st, old = found
        new_token = tokens.new_token()
        new = tokens.digest(new_token)
        with self._lock:
            self._check_writable()
            if st.digest != old:
                raise SessionNotFound("cannot regenerate: the session was removed meanwhile")
            while self._table.ref_taken(new):
                new_token = tokens.new_token()
                new = tokens.digest(new_token)
            if user is MISSING or user == st.user:
                pos = self._commit(rec.encode_change_id(st.sid, new))
                gone = self._gone(st)
                self._table.change_digest(st, new)
                now_state = st
            else:
                data = st.data.copy()
                sid = self._table.allocate_sid()
                now_state = SessionState(
                    sid, new, st.created_at, st.ttl, st.idle_deadline, st.hard_deadline,
                    user, st.meta, data,
                )  # fmt: skip
                pos = self._commit(
                    _create_record(now_state)
                    + rec.encode_destroy(st.sid, rec.DestroyReason.DESTROYED)
                )
                gone = self._gone(st)
                self._table.remove(st)
                self._table.insert(now_state)
        if self._always:
            self._sync.wait(pos)
        if gone is not None:
            self._notify([gone], "regenerated")
        return Session(self, now_state, new_token)

    # -- changes through a Session (the SessionBackend interface) ---------------------

    def set_key(self, st: SessionState, digest: bytes, key: str, value: Any) -> None:
        """Set *key* to *value* in the session *st* found by *digest*: one SET record.

        For :class:`Session` (``session[key] = value``), which holds *st* and *digest*.
        """
        # The hottest path in the library: the steps of _commit and
        # live_state are inlined here, in the same order.
        vb = self._encode(value)
        if len(vb) > self.max_value_bytes:
            raise self._too_large(vb)
        record = rec.encode_set(st.sid, key, vb)  # validates the key
        now = self.clock()
        with self._lock:
            if self.closed or self._poison is not None:
                self._check_writable()
            if st.digest is not digest or not (now < st.idle_deadline and now < st.hard_deadline):
                self.live_state(st, digest)
            data = st.data  # decoded here if still packed: before anything is written
            if len(data) >= rec.MAX_KEYS and key not in data:
                raise too_many_keys(len(data) + 1)
            try:
                pos = self._log.append(record)
            except StorePoisoned as exc:
                self._poison = exc
                raise
            data[key] = vb
            if not self._sync.dirty:
                self._sync.appended()
            if self._log.size > self._compaction.threshold:
                self._compaction.start()
        if self._always:
            self._sync.wait(pos)

    def modify(
        self,
        st: SessionState,
        digest: bytes,
        clear: bool,
        items: Iterable[tuple[Any, Any]],
        must_exist: str | None = None,
    ) -> None:
        """One MODIFY record: clear the session first if *clear*, then set each key
        to its value, or delete it if the value is :data:`~walsess.session.MISSING`.
        :class:`KeyError` if *must_exist* is given and is not a key. For :class:`Session`.
        """
        self.modify_encoded(
            st,
            digest,
            clear,
            [
                (key, None if value is MISSING else self._encode_value(value))
                for key, value in items
            ],
            must_exist,
        )

    def modify_encoded(
        self,
        st: SessionState,
        digest: bytes,
        clear: bool,
        changes: list[tuple[str, bytes | None]],
        must_exist: str | None = None,
    ) -> None:
        """One MODIFY record: set each key to its encoded value, or delete it (None).
        For :class:`Session`; the values must come from the store codec's ``encode``."""
        limit = self.max_value_bytes
        encoded: list[tuple[bytes, bytes | None]] = []
        for key, vb in changes:
            if vb is not None:
                if type(vb) is not bytes:
                    raise ValidationError(f"encoded value of {key!r} must be bytes")
                if len(vb) > limit:
                    raise self._too_large(vb)
            encoded.append((rec.key_bytes(key), vb))
        if len(encoded) > rec.MAX_KEYS:  # the reader refuses a longer change list
            raise too_many_changes(len(encoded))
        record = rec.encode_modify(st.sid, clear, encoded)
        if len(record) > rec.MAX_PAYLOAD_BYTES:
            raise ValueTooLarge("the change is larger than one record may be (1 GiB)")
        with self._lock:
            self._check_writable()
            self.live_state(st, digest)
            if must_exist is not None and must_exist not in st.data:
                raise KeyError(must_exist)
            data = st.data
            if len(data) + len(changes) > rec.MAX_KEYS:  # only then count exactly
                keys = set() if clear else set(data)
                for key, vb in changes:
                    if vb is None:
                        keys.discard(key)
                    else:
                        keys.add(key)
                if len(keys) > rec.MAX_KEYS:
                    raise too_many_keys(len(keys))
            pos = self._commit(record)
            SessionTable.modify(st, clear, changes)
        if self._always:
            self._sync.wait(pos)

    # -- whole store ------------------------------------------------------------------

    # -- whole store: listing --------------------------------------------------------

    def __len__(self) -> int:
        """Live (unexpired) sessions. O(log n + k) for k sessions due for gc."""
        self._check_open()
        now = self.clock()
        with self._lock:
            return len(self._table) - self._expiry.expired_now(now)

    def _info(self, st: SessionState) -> SessionInfo:
        return SessionInfo(
            ref=tokens.ref_of(st.digest),
            user=st.user,
            meta=None if st.meta is None else JSON.decode(st.meta),
            created_at=st.created_at,
            expires_at=st.expires_at,
            last_seen=st.idle_deadline - st.ttl,
        )

    def _gone(self, st: SessionState) -> _Gone | None:
        """Under the lock, before *st* is removed: what its destroy hooks will see,
        as raw fields (copies that cannot fail). Decoding waits for :meth:`_notify`,
        after the change is logged and applied, where a failure only gets logged."""
        if not self._hooks:
            return None
        return _Gone(
            st.digest, st.user, st.meta, st.created_at, st.expires_at,
            st.idle_deadline - st.ttl, st.data.copy(),
        )  # fmt: skip

    def sessions(self) -> Iterator[SessionInfo]:
        """Every live session as a read-only :class:`SessionInfo` (never the token).

        The list is taken at one moment under the lock: O(n).
        """
        self._check_open()
        now = self.clock()
        with self._lock:
            infos = [self._info(st) for st in self._table.views() if st.live_at(now)]
        return iter(infos)

    def sessions_of(self, user: str) -> list[SessionInfo]:
        """The live sessions of *user*, oldest first, as infos: an "active devices" list."""
        check_user(user, allow_none=False)
        self._check_open()
        now = self.clock()
        with self._lock:
            return [self._info(st) for st in self._table.of_user(user) if st.live_at(now)]

    def destroy_user(self, user: str, keep: Iterable[str] = ()) -> int:
        """Destroy every live session of *user* except those in *keep* (tokens or refs):
        "log out my other devices". Returns how many were destroyed; hooks see "revoked"."""
        check_user(user, allow_none=False)
        self._check_open()
        kept = kept_ref_keys(keep)
        now = self.clock()
        with self._lock:
            doomed = [
                st
                for st in self._table.of_user(user)
                if st.live_at(now) and tokens.ref_key(st.digest) not in kept
            ]
        return self._destroy_many(doomed, rec.DestroyReason.REVOKED)

    def _destroy_many(self, doomed: list[SessionState], reason: int) -> int:
        """Destroy sessions in batches, one append per batch, hooks after each batch."""
        done = 0
        for i in range(0, len(doomed), _GC_CHUNK):
            gone: list[_Gone] = []
            with self._lock:
                self._check_writable()
                batch = [st for st in doomed[i : i + _GC_CHUNK] if st.digest is not DEAD]
                if not batch:
                    continue
                pos = self._commit(b"".join(rec.encode_destroy(st.sid, reason) for st in batch))
                for st in batch:
                    g = self._gone(st)
                    if g is not None:
                        gone.append(g)
                    self._table.remove(st)
            done += len(batch)
            if self._always:
                self._sync.wait(pos)
            if gone:
                self._notify(gone, _REASONS[rec.DestroyReason(reason)])
        return done

    # -- expiry ------------------------------------------------------------------------

    def gc(self) -> int:
        """Remove expired sessions, logging a DESTROY (reason expired) for each.

        Returns how many were removed. Costs O(log n + k) for the k sessions
        whose logged deadline has passed, not O(n): expiry is indexed.
        Sessions a read has extended in memory are re-filed, not removed.
        """
        return self._expiry.gc()

    @property
    def last_gc(self) -> dict[str, float] | None:
        """The last gc round: {"at": clock time, "seconds": duration, "removed": count}."""
        return self._expiry.last_gc

    def stop_cleanup(self) -> None:
        """Stop the background cleanup thread now (close() does this too)."""
        self._expiry.stop()

    # -- hooks -------------------------------------------------------------------------

    def on_destroy(self, fn: Hook) -> Callable[[], None]:
        """Call ``fn(info, reason)`` after each session is gone; returns an unsubscribe function.

        *reason* is "destroyed", "expired", "regenerated" (for the old token) or
        "revoked". *info* is a :class:`SessionInfo` with the session's ref,
        user, meta and last data, never its token. Hooks run in the thread that
        removed the session (the cleanup thread for expiry) after the store's
        lock is released; an exception in one is logged and changes nothing.
        """
        with self._lock:
            self._hooks = [*self._hooks, fn]

        def unsubscribe() -> None:
            with self._lock:
                self._hooks = [h for h in self._hooks if h is not fn]

        return unsubscribe

    def _notify(self, gone: list[_Gone], reason: str) -> None:
        """Run the destroy hooks, outside the lock, after the change is applied."""
        hooks = self._hooks
        for g in gone:
            try:
                info = SessionInfo(
                    ref=tokens.ref_of(g.digest),
                    user=g.user,
                    meta=None if g.meta is None else JSON.decode(g.meta),
                    created_at=g.created_at,
                    expires_at=g.expires_at,
                    last_seen=g.last_seen,
                    data=self.decode_all(g.data),
                )
            except Exception:  # RecursionError, a class a deploy removed, ...
                log.exception(
                    "walsess: on_destroy hooks skipped for session %s: its data could not"
                    " be decoded (the session is gone all the same)",
                    tokens.ref_of(g.digest),
                )
                continue
            for hook in hooks:
                try:
                    hook(info, reason)
                except Exception:
                    log.exception("walsess: on_destroy hook %r raised", hook)

    # -- compaction ----------------------------------------------------------------------

    def compact(self) -> Compaction:
        """Write the live sessions as a snapshot and start a new log generation.

        Writers are not stopped: the log is rotated first, then the table is
        written out in chunks of 250 sessions, each under one short hold of
        the lock, while writers append to the new log. Replaying that log over
        the snapshot gives the right state because every record is idempotent
        (docs/FORMAT.md, "Compaction"). The snapshot is installed with
        write, fsync, rename, directory fsync; older files are deleted only
        after that. Costs O(n) time and one pass of writes.
        """
        return self._compaction.compact()

    @property
    def compacting(self) -> bool:
        """True while a compaction (background or :meth:`compact`) is running."""
        return self._compaction.compacting

    def wait_compaction(self, timeout: float | None = None) -> bool:
        """Wait for the background compaction, if one is running; False if
        *timeout* seconds passed first. A :meth:`compact` call in another
        thread is not waited for (its caller has the result)."""
        return self._compaction.wait(timeout)

    def snapshot_size(self) -> int:
        """The exact size in bytes of the snapshot a compaction would write now.

        O(n) encoding work under the lock, taken once: for tests and capacity
        planning (what ``compact_ratio`` multiplies), not for a request path.
        """
        return self._compaction.snapshot_size()

    @property
    def last_compaction(self) -> Compaction | None:
        """What the last compaction since open did, or None."""
        return self._compaction.last

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: sessions, bytes on disk and in memory, compaction, gc."""
        self._check_open()
        snapshot_bytes, log_bytes = self._files.sizes()
        now = self.clock()
        with self._lock:
            stored = len(self._table)
            expired = self._expiry.expired_now(now)
            appended = self._log.appends
            sample = self._table.views()[:256]
        compaction = self._compaction
        live = compaction.live_bytes()
        return {
            "sessions": stored - expired,
            "stored_sessions": stored,
            "expired_pending_gc": expired,
            "snapshot_bytes": snapshot_bytes,
            "log_bytes": log_bytes,
            "live_bytes_estimate": int(live),
            "disk_to_live_ratio": (snapshot_bytes + log_bytes) / max(live, 1.0),
            "memory_bytes_estimate": int(_memory_per_session(sample) * stored),
            "records_replayed": self._recovery.records,
            "sessions_loaded": self._recovery.sessions,
            "open_seconds": self._recovery.seconds,
            "records_appended": appended,
            "log_generation": self._log.generation,
            "last_compaction": self.last_compaction,
            "compaction_failures": compaction.failures,
            "last_compaction_error": compaction.error,
            "next_compaction_at_log_bytes": (
                None if compaction.threshold == _INF else compaction.threshold
            ),
            "last_gc": self.last_gc,
            "fsyncs": self._fsyncs,
            "durability": self.durability,
            "codec": self.codec.name,
            "poisoned": self._poison is not None,
        }

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._table)} sessions"
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
        _check_private(path)
        return False
    os.chmod(path, 0o700)  # exactly owner-only, whatever the umask
    return True


def _check_private(path: str) -> None:
    """Refuse a store directory, or a file in it, that another user could write:
    such a user could plant a log creating sessions whose tokens they know."""
    me = os.geteuid()
    for name in ["", *sorted(os.listdir(path))]:
        target = os.path.join(path, name) if name else path
        info = os.lstat(target)
        if info.st_uid != me:
            raise InsecureStore(
                f"{target} belongs to user {info.st_uid}, not to this process's user {me}:"
                f" run `chown {me} {target}` if it is yours, or open the store as its owner"
            )
        if info.st_mode & 0o022:
            mode = "700" if name == "" else "600"
            raise InsecureStore(
                f"{target} can be written by other users (mode {info.st_mode & 0o777:o}):"
                f" run `chmod {mode} {target}`"
            )


def _create_record(st: SessionState) -> bytes:
    """The CREATE record that recreates *st* exactly."""
    data = st.data.copy()  # one consistent copy, even if a writer changes it meanwhile
    return rec.encode_create(st.sid, st.digest, st.created_at, st.ttl, st.idle_deadline,
                             st.hard_deadline, st.user, st.meta, rec.keys_bytes(data),
                             list(data.values()))  # fmt: skip


def _memory_per_session(sample: list[SessionState]) -> float:
    """Average bytes one session holds in memory, from a sample (an estimate)."""
    import sys

    if not sample:
        return 0.0
    size = sys.getsizeof
    total = 0
    for st in sample:
        total += size(st) + size(st.digest) + st.data_size() + 4 * 24 + 2 * 100  # floats, indexes
        if st.meta is not None:
            total += size(st.meta)
    return total / len(sample)


if TYPE_CHECKING:

    def _meets_the_protocol(store: Store) -> SessionStore:
        """mypy checks here that a Store is what the integrations take."""
        return store
