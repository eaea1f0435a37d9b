"""The in-memory session table: what the log says, indexed for lookups.

Pure data structure: no I/O, no clock, no locking (the store holds its lock
around every change). Sessions are found by SID (how records address them)
and by ref key (the first 8 bytes of the token digest, so a token lookup and
a ref lookup are one dict probe each). Values stay encoded as bytes.

Every record type is applied idempotently: replaying a record whose effect
is already present changes nothing, which is what lets a later snapshot be
written while writers go on.

Example::

    >>> t = SessionTable()
    >>> st = t.apply_create(Create(1, bytes(32), 0.0, 60.0, 60.0, float("inf"), None, None, ()))
    >>> t.find(bytes(32)) is st
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import StoreFull
from .record import MAX_SID, ChangeId, Create, Destroy, Modify, Record, Touch
from .tokens import ref_key

__all__ = ["DEAD", "SessionState", "SessionTable"]

#: The digest a destroyed session's state is given, so stale handles see it is gone.
DEAD = b""


class SessionState:
    """One session as the log defines it. ``idle_deadline`` may run ahead of
    ``logged_deadline`` by less than the touch granularity (reads extend it
    in memory and log it only now and then)."""

    __slots__ = (
        "created_at",
        "data",
        "digest",
        "hard_deadline",
        "idle_deadline",
        "logged_deadline",
        "meta",
        "sid",
        "ttl",
        "user",
    )

    def __init__(
        self,
        sid: int,
        digest: bytes,
        created_at: float,
        ttl: float,
        idle_deadline: float,
        hard_deadline: float,
        user: str | None,
        meta: bytes | None,
        data: dict[str, bytes],
    ) -> None:
        self.sid = sid
        self.digest = digest
        self.created_at = created_at
        self.ttl = ttl
        self.idle_deadline = idle_deadline
        self.logged_deadline = idle_deadline
        self.hard_deadline = hard_deadline
        self.user = user
        self.meta = meta
        self.data = data

    @property
    def expires_at(self) -> float:
        """When the session stops being readable, unless read (idle) before then."""
        return min(self.idle_deadline, self.hard_deadline)

    def live_at(self, now: float) -> bool:
        """True if the session exists and has not expired at *now*."""
        return self.digest is not DEAD and now < self.idle_deadline and now < self.hard_deadline


class SessionTable:
    """Sessions by SID and by ref key, with SID allocation.

    All operations are O(1) dict work except :meth:`allocate_sid` after the
    32-bit counter wraps, which skips SIDs still in use.
    """

    def __init__(self) -> None:
        self.by_sid: dict[int, SessionState] = {}
        self.by_ref: dict[bytes, SessionState] = {}
        self.next_sid = 1
        self._apply: dict[type, Callable[[Any], Any]] = {
            Modify: self._apply_modify,
            Touch: self._apply_touch,
            Create: self.apply_create,
            Destroy: self._apply_destroy,
            ChangeId: self._apply_change_id,
        }

    def __len__(self) -> int:
        return len(self.by_sid)

    def __iter__(self) -> Iterator[SessionState]:
        return iter(list(self.by_sid.values()))

    # -- lookups --------------------------------------------------------------

    def find(self, digest: bytes) -> SessionState | None:
        """The session whose token has *digest*, or None.

        A plain comparison is safe here: timing can at most reveal a prefix of
        a digest, and a digest of a 256-bit token cannot be inverted.
        """
        st = self.by_ref.get(digest[:8])
        if st is not None and st.digest == digest:
            return st
        return None

    def ref_taken(self, digest: bytes) -> bool:
        """True if a session already uses the ref key of *digest*."""
        return ref_key(digest) in self.by_ref

    def allocate_sid(self) -> int:
        """A SID no live session uses. After 2**32 - 1 it wraps, skipping live SIDs;
        :class:`StoreFull` only if every SID is live."""
        if len(self.by_sid) >= MAX_SID:
            raise StoreFull("every 32-bit session number is in use")
        sid = self.next_sid
        by_sid = self.by_sid
        while sid in by_sid or sid == 0:
            sid = sid + 1 if sid < MAX_SID else 1
        self.next_sid = sid + 1 if sid < MAX_SID else 1
        return sid

    # -- changes (each mirrors one record type) -------------------------------

    def apply(self, record: Record) -> None:
        """Apply any decoded record; records for unknown SIDs are ignored (idempotent replay)."""
        self._apply[type(record)](record)

    def set_key(self, sid: int, key: str, value: bytes) -> None:
        """Replay's fast path: one key set by a MODIFY record."""
        st = self.by_sid.get(sid)
        if st is not None:
            st.data[key] = value

    def apply_create(self, r: Create) -> SessionState:
        old = self.by_sid.get(r.sid)
        if old is not None:
            self.remove(old)
        st = SessionState(
            r.sid,
            r.digest,
            r.created_at,
            r.ttl,
            r.idle_deadline,
            r.hard_deadline,
            r.user,
            r.meta,
            dict(r.items),
        )
        self.by_sid[r.sid] = st
        self.by_ref[ref_key(r.digest)] = st
        if r.sid >= self.next_sid:
            self.next_sid = r.sid + 1 if r.sid < MAX_SID else 1
        return st

    def remove(self, st: SessionState) -> None:
        """Forget a session; stale handles to it see :data:`DEAD`."""
        if self.by_sid.get(st.sid) is st:
            del self.by_sid[st.sid]
        key = ref_key(st.digest)
        if self.by_ref.get(key) is st:
            del self.by_ref[key]
        st.digest = DEAD

    def change_digest(self, st: SessionState, digest: bytes) -> None:
        key = ref_key(st.digest)
        if self.by_ref.get(key) is st:
            del self.by_ref[key]
        st.digest = digest
        self.by_ref[ref_key(digest)] = st

    @staticmethod
    def modify(st: SessionState, clear: bool, changes: Iterable[tuple[str, bytes | None]]) -> None:
        data = st.data
        if clear:
            data.clear()
        for key, value in changes:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    @staticmethod
    def touch(st: SessionState, idle_deadline: float, ttl: float) -> None:
        st.idle_deadline = st.logged_deadline = idle_deadline
        st.ttl = ttl

    def _apply_destroy(self, r: Destroy) -> None:
        st = self.by_sid.get(r.sid)
        if st is not None:
            self.remove(st)

    def _apply_change_id(self, r: ChangeId) -> None:
        st = self.by_sid.get(r.sid)
        if st is not None:
            self.change_digest(st, r.digest)

    def _apply_modify(self, r: Modify) -> None:
        st = self.by_sid.get(r.sid)
        if st is not None:
            self.modify(st, r.clear, r.changes)

    def _apply_touch(self, r: Touch) -> None:
        st = self.by_sid.get(r.sid)
        if st is not None:
            self.touch(st, r.idle_deadline, r.ttl)
