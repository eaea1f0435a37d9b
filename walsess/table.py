"""The in-memory session table: what the log says, indexed for lookups.

Pure data structure: no I/O, no clock, no locking (the store holds its lock
around every change). Sessions are found by SID (how records address them),
by ref key (the first 8 bytes of the token digest, so a token lookup and a
ref lookup are one dict probe each), by user, and by expiry time. Values stay
encoded as bytes.

Every record type is applied idempotently: replaying a record whose effect
is already present changes nothing, which is what lets a snapshot be written
while writers go on (see docs/FORMAT.md, "Compaction").

Example::

    >>> t = SessionTable()
    >>> st = t.apply_create(Create(1, bytes(32), 0.0, 60.0, 60.0, float("inf"), None, None, ()))
    >>> t.find(bytes(32)) is st, [s.sid for s in t.expiring(60.0)]
    (True, [1])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sortedcontainers import SortedList

from .errors import StoreFull
from .record import MAX_SID, ChangeId, Create, Destroy, End, Modify, Record, Touch
from .tokens import ref_key

__all__ = ["DEAD", "SessionState", "SessionTable"]

#: The digest a destroyed session's state is given, so stale handles see it is gone.
DEAD = b""

_SID_BITS = 32
_SID_MASK = (1 << _SID_BITS) - 1


def _expiry_key(deadline: float, sid: int) -> int:
    """Index key: the deadline in whole milliseconds (rounded down), then the SID."""
    ms = math.floor(deadline * 1000) if deadline < 1e15 else 1 << 60
    return (ms << _SID_BITS) | sid


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
        "indexed",
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
        #: This session's key in the expiry index (-1: not indexed).
        self.indexed = -1

    @property
    def expires_at(self) -> float:
        """When the session stops being readable, unless read (idle) before then."""
        return min(self.idle_deadline, self.hard_deadline)

    def live_at(self, now: float) -> bool:
        """True if the session exists and has not expired at *now*."""
        return self.digest is not DEAD and now < self.idle_deadline and now < self.hard_deadline


class SessionTable:
    """Sessions by SID, by ref key, by user and by expiry, with SID allocation.

    Costs: lookups are one dict probe; a create, destroy or touch also costs
    O(log n) in the expiry index (a sortedcontainers ``SortedList`` of ints);
    :meth:`expiring` costs O(log n + k) for k sessions due.

    During replay (:meth:`begin_bulk` .. :meth:`end_bulk`) the expiry and
    user indexes are not maintained record by record but built once at the
    end, which is what keeps opening a large store linear.
    """

    def __init__(self) -> None:
        self.by_sid: dict[int, SessionState] = {}
        self.by_ref: dict[bytes, SessionState] = {}
        self.by_user: dict[str, set[SessionState]] = {}
        self.expiry: SortedList = SortedList()
        self.next_sid = 1
        self._bulk = False
        self._apply: dict[type, Callable[[Any], Any]] = {
            Modify: self._apply_modify,
            Touch: self._apply_touch,
            Create: self.apply_create,
            Destroy: self._apply_destroy,
            ChangeId: self._apply_change_id,
            End: lambda r: None,
        }

    def __len__(self) -> int:
        return len(self.by_sid)

    def __iter__(self) -> Iterator[SessionState]:
        return iter(list(self.by_sid.values()))

    # -- bulk loading -----------------------------------------------------------

    def begin_bulk(self) -> None:
        """Stop maintaining the expiry and user indexes until :meth:`end_bulk`."""
        self._bulk = True

    def end_bulk(self) -> None:
        """Build the expiry and user indexes from scratch: O(n log n) in C."""
        self._bulk = False
        keys = []
        by_user: dict[str, set[SessionState]] = {}
        for st in self.by_sid.values():
            st.indexed = _expiry_key(min(st.idle_deadline, st.hard_deadline), st.sid)
            keys.append(st.indexed)
            if st.user is not None:
                by_user.setdefault(st.user, set()).add(st)
        self.expiry = SortedList(keys)
        self.by_user = by_user

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

    def of_user(self, user: str) -> list[SessionState]:
        """The stored sessions of *user* (expired ones included), oldest first."""
        return sorted(self.by_user.get(user, ()), key=lambda st: (st.created_at, st.sid))

    def expiring(self, now: float) -> list[SessionState]:
        """Sessions whose indexed deadline is at or before *now*: the candidates
        for expiry. Reads may have extended some of them in memory since."""
        bound = _expiry_key(now, _SID_MASK)
        by_sid = self.by_sid
        out = []
        for key in self.expiry.irange(maximum=bound):
            st = by_sid.get(key & _SID_MASK)
            if st is not None and st.indexed == key:
                out.append(st)
        return out

    def count_expiring(self, now: float) -> int:
        """How many index entries are due at *now* (O(log n))."""
        return int(self.expiry.bisect_right(_expiry_key(now, _SID_MASK)))

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
        return self.insert(
            SessionState(
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
        )

    def insert(self, st: SessionState) -> SessionState:
        """Add a new session (replacing any with its SID, as replaying a CREATE does)."""
        sid = st.sid
        old = self.by_sid.get(sid)
        if old is not None:
            self.remove(old)
        self.by_sid[sid] = st
        self.by_ref[ref_key(st.digest)] = st
        if sid >= self.next_sid:
            self.next_sid = sid + 1 if sid < MAX_SID else 1
        if not self._bulk:
            self.reindex(st, min(st.idle_deadline, st.hard_deadline))
            if st.user is not None:
                self.by_user.setdefault(st.user, set()).add(st)
        return st

    def reindex(self, st: SessionState, deadline: float) -> None:
        """File *st* in the expiry index under *deadline* (a lower bound of its expiry)."""
        key = _expiry_key(deadline, st.sid)
        if key == st.indexed:
            return
        if st.indexed >= 0:
            self.expiry.discard(st.indexed)
        self.expiry.add(key)
        st.indexed = key

    def remove(self, st: SessionState) -> None:
        """Forget a session; stale handles to it see :data:`DEAD`."""
        if self.by_sid.get(st.sid) is st:
            del self.by_sid[st.sid]
        key = ref_key(st.digest)
        if self.by_ref.get(key) is st:
            del self.by_ref[key]
        if st.indexed >= 0 and not self._bulk:
            self.expiry.discard(st.indexed)
        st.indexed = -1
        if st.user is not None:
            owned = self.by_user.get(st.user)
            if owned is not None:
                owned.discard(st)
                if not owned:
                    del self.by_user[st.user]
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

    def touch(self, st: SessionState, idle_deadline: float, ttl: float) -> None:
        st.idle_deadline = st.logged_deadline = idle_deadline
        st.ttl = ttl
        if not self._bulk:
            self.reindex(st, min(idle_deadline, st.hard_deadline))

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

    # -- invariants --------------------------------------------------------------

    def _check(self) -> None:
        """Assert every invariant between the indexes (for tests, as sortedcontainers does)."""
        assert not self._bulk
        assert len(self.by_ref) == len(self.by_sid) == len(self.expiry)
        for sid, st in self.by_sid.items():
            assert st.sid == sid and st.digest is not DEAD
            assert self.by_ref[ref_key(st.digest)] is st
            assert st.indexed == _expiry_key(min(st.idle_deadline, st.hard_deadline), sid) or (
                st.indexed in self.expiry and (st.indexed & _SID_MASK) == sid
            )
            assert st.indexed in self.expiry
            if st.user is not None:
                assert st in self.by_user[st.user]
        assert sum(len(v) for v in self.by_user.values()) == sum(
            1 for st in self.by_sid.values() if st.user is not None
        )
