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
import operator
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress, islice, repeat
from typing import Any, NamedTuple, Union

from sortedcontainers import SortedList

from .errors import CorruptionError, FileError, StoreFull
from .record import (
    MAX_PAYLOAD_BYTES,
    MAX_SID,
    Block,
    ChangeId,
    Create,
    Destroy,
    End,
    Modify,
    Record,
    Touch,
    decode_item_block,
    item_block,
    keys_bytes,
)
from .tokens import REF_BYTES, ref_key

__all__ = ["DEAD", "SessionState", "SessionTable"]

#: The digest a destroyed session's state is given, so stale handles see it is gone.
DEAD = b""

_SID_BITS = 32
_SID_MASK = (1 << _SID_BITS) - 1


_NEVER = 1e15  # seconds: deadlines at or past it (and NaN) are filed together, as "never"


def _expiry_key(deadline: float, sid: int) -> int:
    """Index key: the deadline in whole milliseconds (rounded down), then the SID.

    Deadlines are clamped to 0 .. ``_NEVER`` first (``min`` with ``_NEVER``
    first also maps NaN to "never"), so that whatever a file holds, the key
    is a non-negative int and never collides with "not indexed" (-1).
    """
    return (math.floor(max(0.0, min(_NEVER, deadline)) * 1000.0) << _SID_BITS) | sid


def _expiry_keys(
    sids: Sequence[int], idle: Sequence[float], hard: Sequence[float]
) -> Iterator[int]:
    """:func:`_expiry_key` of whole columns, in C: no Python frame per session."""
    # Usually every session expires idle before its hard deadline (often inf):
    # then the idle column is the deadlines. (NaN compares false either way.)
    latest = max(idle) if idle else 0.0
    soonest: Sequence[float] = idle
    if not (idle and min(hard) >= latest):
        soonest = list(map(min, idle, hard))
        latest = max(soonest) if soonest else 0.0
    total = sum(soonest)  # NaN if any is NaN (or both infinities are there)
    if not (total == total and latest < _NEVER and min(soonest, default=0.0) >= 0.0):
        soonest = list(map(max, repeat(0.0), map(min, repeat(_NEVER), soonest)))
    ms = map(math.floor, map((1000.0).__mul__, soonest))
    return map(int.__or__, map(int.__lshift__, ms, repeat(_SID_BITS)), sids)


class SessionState:
    """One session as the log defines it. ``idle_deadline`` may run ahead of
    ``logged_deadline`` by less than the touch granularity (reads extend it
    in memory and log it only now and then).

    A session loaded from a snapshot or replayed from a CREATE keeps its item
    block as one bytes object (``packed``) until :attr:`data` is first used;
    changes replayed before then are kept beside it and applied when it is
    decoded. That is what makes opening a store cost no decoding and hold one
    bytes object per session instead of a dict and its values.
    """

    __slots__ = (
        "_data",
        "created_at",
        "digest",
        "hard_deadline",
        "idle_deadline",
        "indexed",
        "logged_deadline",
        "meta",
        "origin",
        "packed",
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
        data: dict[str, bytes] | None,
        packed: bytes | int | None = None,
        origin: Origin | None = None,
        indexed: int = -1,
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
        #: The data, or while ``packed`` is set, the keys set since (or None).
        self._data = data
        #: The item block not yet decoded (bytes, or the session's number in
        #: its snapshot block, whose bytes ``origin`` holds), or None.
        self.packed = packed
        #: Where ``packed`` was read from, for the error if it is malformed.
        self.origin = origin
        #: This session's key in the expiry index (-1: not indexed).
        self.indexed = indexed

    @property
    def data(self) -> dict[str, bytes]:
        """Key -> encoded value. Decodes the item block on first use (O(keys)):
        :class:`CorruptionError` naming the file and offset if it is malformed."""
        if self.packed is None:  # read before _data: unpack() sets _data first
            return self._data  # type: ignore[return-value]
        return self.unpack()

    def unpack(self) -> dict[str, bytes]:
        """Decode the packed item block now (thread-safe: one thread decodes,
        the others wait and find it done)."""
        with _UNPACK_LOCK:
            if self.packed is None:
                return self._data  # type: ignore[return-value]
            origin = self.origin
            try:
                data = decode_item_block(self._packed_bytes(), _max_value(origin))
            except FileError as exc:
                path, offset = locate(origin, self.packed)
                raise exc.located(path or "<memory>", offset) from None
            if self._data:
                data.update(self._data)
            self._data = data
            self.packed = None
            self.origin = None  # the last decoded session of a block frees its bytes
            return data

    def data_size(self) -> int:
        """Bytes the data holds in memory, estimated without decoding it (a
        packed block counts as itself). For monitoring."""
        size = sys.getsizeof
        with _UNPACK_LOCK:
            if self.packed is not None:
                return size(self._packed_bytes())
            data = self._data
        assert data is not None
        return size(data) + sum(map(size, list(data.values())))

    def _packed_bytes(self) -> bytes:
        packed = self.packed
        if type(packed) is int:
            origin = self.origin
            assert isinstance(origin, BlockColumns)
            return origin.block.item(packed)
        assert isinstance(packed, bytes)
        return packed

    def items(self) -> bytes:
        """The data as an item block (what CREATE and BLOCK records carry): the
        packed bytes as they are if nothing changed them, so compaction copies
        an unread session without decoding it; else encoded from :attr:`data`."""
        if self.packed is not None and not self._data:
            return self._packed_bytes()
        data = self.data.copy()  # one consistent copy, even if a writer changes it meanwhile
        return item_block(zip(keys_bytes(data), data.values(), strict=True))

    @property
    def expires_at(self) -> float:
        """When the session stops being readable, unless read (idle) before then."""
        return min(self.idle_deadline, self.hard_deadline)

    def live_at(self, now: float) -> bool:
        """True if the session exists and has not expired at *now*."""
        return self.digest is not DEAD and now < self.idle_deadline and now < self.hard_deadline


_UNPACK_LOCK = threading.Lock()
_TAKE_LOCK = threading.Lock()  # SessionTable._take: one thread makes a block session's state
# Idle timeouts and hard deadlines repeat across sessions (often inf, or one
# configured ttl): loading shares one float object per distinct value.
_shared_floats: dict[float, float] = {}


def _share(x: float) -> float:
    """The shared float object equal to *x* (a bounded cache, like the loader's)."""
    y = _shared_floats.get(x)
    if y is None:
        if len(_shared_floats) >= 64:
            _shared_floats.clear()
        _shared_floats[x] = y = x
    return y


def sids_of(keys: Iterable[int]) -> list[int]:
    """The SIDs of expiry index keys (see :meth:`SessionTable.expiry_keys`)."""
    return list(map(_SID_MASK.__and__, keys))


_sid_of = operator.attrgetter("sid")
_idle_of = operator.attrgetter("idle_deadline")
_hard_of = operator.attrgetter("hard_deadline")
_user_of = operator.attrgetter("user")


class FileOrigin(NamedTuple):
    """A file sessions were read from, and the value limit they were read under."""

    path: str
    max_value: int


class BlockColumns:
    """One snapshot BLOCK record as loaded: its sessions stay in the record's
    payload (a :class:`~walsess.record.Block`, about 80 bytes a session plus
    its item block) until something looks them up, instead of each getting a
    :class:`SessionState` and its fields at open.

    The table's dicts map such a session's SID and ref key to a *handle*
    (``block number << 16 | i``); the first lookup turns it into a
    :class:`SessionState` (:meth:`SessionTable.state`), which replaces the
    handle in both dicts. ``taken[i]`` is 1 once session *i* has been. Its
    item block stays here, packed, until it is decoded: the block is freed
    when the last of its sessions is.
    """

    __slots__ = ("block", "file", "keys", "left", "offset", "taken")

    def __init__(self, block: Block, file: FileOrigin, offset: int, keys: list[int]) -> None:
        self.block = block
        #: Where the block was read from: its item area is at ``offset`` of ``file``.
        self.file = file
        self.offset = offset
        #: Expiry index keys, until the indexes are built (end of the bulk load).
        self.keys: list[int] | None = keys
        self.taken = bytearray(block.n)
        self.left = block.n

    def state(self, i: int, indexed: int) -> SessionState:
        """Session *i* as a :class:`SessionState` (its item block still packed)."""
        sid, digest, created, ttl, idle, hard, user, meta = self.block.session(i)
        return SessionState(sid, digest, created, _share(ttl), idle, _share(hard), user, meta,
                            None, i, self, indexed)  # fmt: skip

    def untaken(self, column: Iterable[Any]) -> Iterator[Any]:
        """The values of *column* for the sessions not yet taken out."""
        return compress(column, map(operator.not_, self.taken))


#: A CREATE's item block is at ``(file, offset)``: a plain tuple, which replay
#: builds in one bytecode; a snapshot block's sessions share its BlockColumns.
Origin = Union[tuple[FileOrigin, int], BlockColumns]  # noqa: UP007 - a runtime alias on 3.10


_HANDLE_BITS = 16  # MAX_BLOCK_SESSIONS < 2**16
_HANDLE_MASK = (1 << _HANDLE_BITS) - 1

#: Bulk replay keeps one-key sets aside per SID in a list for SIDs below this
#: (at most 32 MiB of list); sets for higher SIDs are applied as they come.
_PENDING_SIDS = 1 << 22


def _max_value(origin: Origin | None) -> int:
    if origin is None:
        return MAX_PAYLOAD_BYTES
    return origin.file.max_value if isinstance(origin, BlockColumns) else origin[0].max_value


def locate(origin: Origin | None, packed: bytes | int | None) -> tuple[str | None, int]:
    """(file, offset) of the packed item block *packed* that came from *origin*."""
    if origin is None:
        return None, 0
    if isinstance(origin, BlockColumns):
        assert type(packed) is int
        return origin.file.path, origin.offset + origin.block.item_start(packed)
    return origin[0].path, origin[1]


def _add_noted(st: SessionState | None, noted: dict[str, bytes]) -> None:
    """Apply to *st* (if it is live) the one-key sets replay noted for its SID,
    in order (see :meth:`SessionTable.set_key`)."""
    if st is not None:
        data = st._data
        if data is None:
            st._data = noted
        else:
            data.update(noted)


class SessionTable:
    """Sessions by SID, by ref key, by user and by expiry, with SID allocation.

    Costs: lookups are one dict probe; a create, destroy or touch also costs
    O(log n) in the expiry index (a sortedcontainers ``SortedList`` of ints);
    :meth:`expiring` costs O(log n + k) for k sessions due.

    During replay (:meth:`begin_bulk` .. :meth:`end_bulk`) the expiry and
    user indexes are not maintained record by record but built once at the
    end, which is what keeps opening a large store linear.

    The sessions of a snapshot stay in their blocks' columns
    (:class:`BlockColumns`) until something looks them up by SID or ref key;
    only then does a session get its :class:`SessionState` (about 0.5 us
    once). So opening a store costs two dict entries per session, and a
    store whose sessions are mostly never read between two restarts holds
    less than a plain dict of them would. Listing and compaction read the
    columns through :meth:`views` and leave them as they are.
    """

    def __init__(self) -> None:
        #: SID -> session, or a handle into ``_blocks`` for one not looked up
        #: yet: use :meth:`state`, which resolves handles.
        self.by_sid: dict[int, SessionState | int] = {}
        #: Ref key -> session or handle, as ``by_sid``: use :meth:`find`.
        self.by_ref: dict[bytes, SessionState | int] = {}
        #: User -> the SIDs of their sessions.
        self.by_user: dict[str, set[int]] = {}
        self._blocks: list[BlockColumns | None] = []
        self.expiry: SortedList = SortedList()
        self.next_sid = 1
        self._bulk = False
        #: Sessions created or touched in bulk mode, for end_bulk to index.
        self._unindexed: list[SessionState] = []
        #: Bulk mode: SID -> the keys replayed one-key MODIFYs set since the
        #: session's last other record, not yet applied (see set_key).
        self._pending: list[dict[str, bytes] | None] = []
        self._reading = FileOrigin("", MAX_PAYLOAD_BYTES)
        self._apply: dict[type, Callable[[Any], Any]] = {
            Modify: self._apply_modify,
            Touch: self._apply_touch,
            Create: self.apply_create,
            Destroy: self._apply_destroy,
            ChangeId: self._apply_change_id,
            End: lambda r: None,
            Block: self._reject_block,
        }

    def __len__(self) -> int:
        return len(self.by_sid)

    def __iter__(self) -> Iterator[SessionState]:
        return iter(self.states())

    def states(self) -> list[SessionState]:
        """Every session, as a :class:`SessionState` kept in the table (O(n);
        the sessions of a snapshot not looked up yet are made now)."""
        for handle in [st for st in self.by_sid.values() if type(st) is int]:
            self._take(handle)
        return [st for st in self.by_sid.values() if isinstance(st, SessionState)]

    def views(self, limit: int | None = None) -> list[SessionState]:
        """Every session (or the first *limit*), for reading only: a session not
        looked up yet is described by a new :class:`SessionState` the table
        does not keep, so listing or compacting a store does not make it hold
        one per session."""
        values = (
            list(self.by_sid.values())
            if limit is None
            else list(islice(self.by_sid.values(), limit))
        )
        return [st if isinstance(st, SessionState) else self._view(st) for st in values]

    def _view(self, handle: int) -> SessionState:
        cols = self._blocks[handle >> _HANDLE_BITS]
        assert cols is not None
        return cols.state(handle & _HANDLE_MASK, -1)

    def _filed_key(self, cols: BlockColumns, i: int) -> int:
        """The expiry index's own key object for block session *i* (an equal
        int would do, but sharing the object saves 36 bytes a session)."""
        sid, _, _, _, idle, hard, _, _ = cols.block.session(i)
        key = _expiry_key(min(idle, hard), sid)
        expiry = self.expiry
        at = expiry.bisect_left(key)
        return expiry[at] if at < len(expiry) and expiry[at] == key else key

    def view(self, sid: int) -> SessionState | None:
        """The session with *sid*, as :meth:`views` describes it, or None."""
        st = self.by_sid.get(sid)
        return self._view(st) if type(st) is int else st  # type: ignore[return-value]

    def state(self, sid: int) -> SessionState | None:
        """The session with *sid*, or None (one dict probe; the first lookup of a
        snapshot session not looked up yet also makes its SessionState)."""
        st = self.by_sid.get(sid)
        if type(st) is int and self._take(st):
            st = self.by_sid.get(sid)
        return st  # type: ignore[return-value]

    def _take(self, handle: int) -> bool:
        """Make and keep the SessionState of the block session *handle*, unless
        another thread did first (lookups take no lock, so two may try).
        Either way, the dicts hold a SessionState for it (or nothing, if it was
        destroyed meanwhile) when this returns True; look it up again."""
        with _TAKE_LOCK:
            cols = self._blocks[handle >> _HANDLE_BITS]
            i = handle & _HANDLE_MASK
            if cols is None or cols.taken[i]:
                return True
            st = cols.state(i, -1 if self._bulk else self._filed_key(cols, i))
            # by_ref first: a lookup that finds the state there may look at by_sid
            self.by_ref[st.digest[:REF_BYTES]] = st
            self.by_sid[st.sid] = st
            cols.taken[i] = 1
            cols.left -= 1
            if not cols.left:
                self._blocks[handle >> _HANDLE_BITS] = None  # every session taken: free them
            if self._bulk:
                self._unindexed.append(st)  # indexed at end_bulk
            return True

    # -- bulk loading -----------------------------------------------------------

    def begin_bulk(self) -> None:
        """Stop maintaining the expiry and user indexes until :meth:`end_bulk`."""
        self._bulk = True
        self._pending = []
        # Every SessionState the indexes will hold passes through _unindexed
        # (insert, create_packed, _take and touch add to it in bulk mode).
        self._unindexed = [v for v in self.by_sid.values() if isinstance(v, SessionState)]

    def end_bulk(self) -> None:
        """Build the expiry and user indexes from scratch, in C but for the
        sessions created or touched since :meth:`begin_bulk` (a snapshot's
        come with their keys). Sorting is near linear when the keys arrive in
        order, as compaction writes them."""
        by_sid = self.by_sid
        for sid, noted in enumerate(self._pending):
            if noted is not None:
                # state()'s probe, inlined (once per session replayed). Still in
                # bulk mode: a snapshot session taken here is indexed below.
                st = by_sid.get(sid)
                _add_noted(self.state(sid) if isinstance(st, int) else st, noted)
        self._pending = []
        self._bulk = False
        states = [
            st
            for st in dict.fromkeys(self._unindexed)  # once each, in order
            if st.digest is not DEAD and by_sid.get(st.sid) is st
        ]
        self._unindexed = []
        keys = list(
            _expiry_keys(
                list(map(_sid_of, states)),
                list(map(_idle_of, states)),
                list(map(_hard_of, states)),
            )
        )
        for st, key in zip(states, keys, strict=True):
            st.indexed = key
        by_user: dict[str, set[int]] = {}
        for st in compress(states, map(operator.is_not, map(_user_of, states), repeat(None))):
            assert st.user is not None
            by_user.setdefault(st.user, set()).add(st.sid)
        for cols in self._blocks:
            if cols is None or cols.keys is None:
                continue
            keys.extend(cols.untaken(cols.keys))
            cols.keys = None
            if len(cols.block.user_table) == 1:
                continue  # no session of this block has an owner
            users = list(cols.untaken(cols.block.users))
            sids = list(cols.untaken(cols.block.sids))
            for user, sid in compress(
                zip(users, sids, strict=True), map(operator.is_not, users, repeat(None))
            ):
                by_user.setdefault(user, set()).add(sid)
        self.expiry = SortedList(keys)
        self.by_user = by_user

    def renumber(self) -> None:
        """Give the sessions SIDs 1..n in their order, and index them again."""
        states = sorted(self.states(), key=lambda st: st.sid)
        self.begin_bulk()
        self.by_sid = {}
        self._blocks = []  # every session was taken out above
        for new_sid, st in enumerate(states, start=1):
            st.sid = new_sid
            self.by_sid[new_sid] = st
        self._unindexed = states
        self.next_sid = len(states) + 1
        self.end_bulk()

    def load_block(self, block: Block, path: str, offset: int, max_value: int) -> None:
        """Add the sessions of a snapshot BLOCK record read at *offset* of *path*,
        as columns (:class:`BlockColumns`): no object per session but its SID,
        ref key and handle. Bulk only; C-level maps throughout.

        Raises :class:`CorruptionError` if a SID or ref key is already taken
        (a snapshot holds each session once).
        """
        assert self._bulk, "load_block is for loading: call begin_bulk() first"
        n = block.n
        number = len(self._blocks)
        sids = block.sids
        keys = list(_expiry_keys(sids, block.idle_deadline, block.hard_deadline))
        file = FileOrigin(path, max_value)
        self._blocks.append(BlockColumns(block, file, offset + block.area_at, keys))
        # one int object per session, shared by both dicts
        handles = list(range(number << _HANDLE_BITS, (number << _HANDLE_BITS) + n))
        by_sid, by_ref = self.by_sid, self.by_ref
        sessions = len(by_sid)
        by_sid.update(zip(sids, handles, strict=True))
        by_ref.update(zip(block.digest_prefixes(REF_BYTES), handles, strict=True))
        if len(by_sid) != sessions + n or len(by_ref) != len(by_sid):
            raise CorruptionError("a session appears twice in the snapshot", path, offset)
        top = max(sids)
        if top >= self.next_sid:
            self.next_sid = top + 1 if top < MAX_SID else 1

    # -- lookups --------------------------------------------------------------

    def find(self, digest: bytes) -> SessionState | None:
        """The session whose token has *digest*, or None.

        A plain comparison is safe here: timing can at most reveal a prefix of
        a digest, and a digest of a 256-bit token cannot be inverted.
        """
        ref = digest[:REF_BYTES]
        st = self.by_ref.get(ref)
        if type(st) is int and self._take(st):
            st = self.by_ref.get(ref)
        if st is not None and st.digest == digest:  # type: ignore[union-attr]
            return st  # type: ignore[return-value]
        return None

    def find_ref(self, ref: bytes) -> SessionState | None:
        """The session whose ref key is *ref* (see :func:`walsess.tokens.ref_key`), or None."""
        st = self.by_ref.get(ref)
        if type(st) is int and self._take(st):
            st = self.by_ref.get(ref)
        return st  # type: ignore[return-value]

    def ref_taken(self, digest: bytes) -> bool:
        """True if a session already uses the ref key of *digest*."""
        return ref_key(digest) in self.by_ref

    def of_user(self, user: str) -> list[SessionState]:
        """The stored sessions of *user* (expired ones included), oldest first."""
        states = [st for st in map(self.state, self.by_user.get(user, ())) if st is not None]
        return sorted(states, key=lambda st: (st.created_at, st.sid))

    def expiring(self, now: float) -> list[SessionState]:
        """Sessions whose indexed deadline is at or before *now*: the candidates
        for expiry. Reads may have extended some of them in memory since."""
        bound = _expiry_key(now, _SID_MASK)
        state = self.state
        out = []
        for key in self.expiry.irange(maximum=bound):
            st = state(key & _SID_MASK)
            if st is not None and st.indexed == key:
                out.append(st)
        return out

    def expiry_keys(self) -> list[int]:
        """Every session's expiry index key, soonest first (see :func:`sids_of`).
        O(n) in C: about 10 ms for a million sessions."""
        return list(self.expiry)

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
        pending = self._pending
        if pending and not isinstance(record, Block):
            sid = record.sid
            if sid < len(pending) and pending[sid] is not None:
                self._apply_pending(sid)  # the sets came first
        self._apply[type(record)](record)

    def set_key(self, sid: int, key: str, value: bytes) -> None:
        """Replay's fast path: one key set by a MODIFY record. A session whose
        item block is still packed keeps the key beside it, undecoded.

        In bulk mode, for a SID inside the list that CREATEs replayed in bulk
        grow (up to ``_PENDING_SIDS``), the set is only noted in a per-SID
        dict in that list, and applied before the SID's next other record
        (:meth:`apply`, :meth:`create_packed`) or at :meth:`end_bulk`. Why:
        finding the session costs a probe of a dict of every session at a
        random place, several cache misses a record; the list's slot is one,
        and this was most of a replayed MODIFY's cost (the developer suite's
        replay of 1,000,000 records went from about 404,000 to 490,000
        records/s). Sets for a SID with no live session are dropped when
        applied, as they would have been at once.
        """
        pending = self._pending
        try:
            noted = pending[sid]
        except IndexError:  # a SID beyond the list (or not in bulk mode): at once
            pass
        else:
            if noted is None:
                pending[sid] = {key: value}
            else:
                noted[key] = value
            return
        st = self.by_sid.get(sid)  # state()'s probe, inlined: this runs per record
        if type(st) is int:
            st = self.state(sid)
        if st is not None:
            data = st._data  # type: ignore[union-attr]
            if data is None:
                st._data = {key: value}  # type: ignore[union-attr]
            else:
                data[key] = value

    def _apply_pending(self, sid: int) -> None:
        """Apply the sets :meth:`set_key` noted for *sid* (bulk mode)."""
        noted = self._pending[sid]
        self._pending[sid] = None
        if noted is not None:
            _add_noted(self.state(sid), noted)

    def touch_sid(self, sid: int, idle_deadline: float, ttl: float) -> None:
        """Replay's fast path for a TOUCH record."""
        st = self.state(sid)
        if st is not None:
            self.touch(st, idle_deadline, ttl)

    def create_packed(
        self,
        sid: int,
        digest: bytes,
        created_at: float,
        ttl: float,
        idle_deadline: float,
        hard_deadline: float,
        user: str | None,
        meta: bytes | None,
        offset: int,
        items: bytes,
    ) -> None:
        """Replay's fast path for a CREATE record read from the file set with
        :meth:`reading`: the item block stays packed until first used."""
        st = SessionState(sid, digest, created_at, ttl, idle_deadline, hard_deadline, user, meta,
                          None, items, (self._reading, offset))  # fmt: skip
        by_sid, by_ref = self.by_sid, self.by_ref
        ref = digest[:REF_BYTES]
        if ref in by_ref:
            self._check_ref_free(ref, sid, self._reading.path, offset)
        if self._bulk and sid not in by_sid:
            by_sid[sid] = st  # the common case, without insert()'s generality
            by_ref[ref] = st
            self._unindexed.append(st)
            if sid >= self.next_sid:
                self.next_sid = sid + 1 if sid < MAX_SID else 1
        else:
            self.insert(st)  # replaces a session with this SID, and its noted sets
        if self._bulk:
            pending = self._pending
            if sid < len(pending):
                pending[sid] = None
            elif sid < _PENDING_SIDS:  # note this SID's sets from now on
                size = min(max(sid + 1, 2 * len(pending)), _PENDING_SIDS)
                pending.extend([None] * (size - len(pending)))

    def reading(self, path: str, max_value: int) -> None:
        """Name the file the next records replayed come from (for errors found later)."""
        self._reading = FileOrigin(path, max_value)

    def _check_ref_free(self, ref: bytes, sid: int, path: str | None, offset: int | None) -> None:
        """Replaying a CREATE: no other session may hold its ref key. The store
        never gives two sessions one ref (``revoke(ref)`` names one session), so a
        file that does is corrupt."""
        other = self.find_ref(ref)
        if other is not None and other.sid != sid:
            raise CorruptionError(
                "two sessions share a ref key (the first 8 bytes of their digests)", path, offset
            )

    def apply_create(self, r: Create) -> SessionState:
        self._check_ref_free(r.digest[:REF_BYTES], r.sid, None, None)
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
        old = self.state(sid)
        if old is not None:
            self.remove(old)
        self.by_sid[sid] = st
        self.by_ref[ref_key(st.digest)] = st
        if sid >= self.next_sid:
            self.next_sid = sid + 1 if sid < MAX_SID else 1
        if self._bulk:
            self._unindexed.append(st)
        else:
            self.reindex(st, min(st.idle_deadline, st.hard_deadline))
            if st.user is not None:
                self.by_user.setdefault(st.user, set()).add(sid)
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
                owned.discard(st.sid)
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
        if self._bulk:
            self._unindexed.append(st)
        else:
            self.reindex(st, min(idle_deadline, st.hard_deadline))

    @staticmethod
    def _reject_block(r: Block) -> None:
        raise CorruptionError("a snapshot's BLOCK record in a log", None, None)

    def _apply_destroy(self, r: Destroy) -> None:
        st = self.state(r.sid)
        if st is not None:
            self.remove(st)

    def _apply_change_id(self, r: ChangeId) -> None:
        st = self.state(r.sid)
        if st is not None:
            self.change_digest(st, r.digest)

    def _apply_modify(self, r: Modify) -> None:
        st = self.state(r.sid)
        if st is not None:
            self.modify(st, r.clear, r.changes)

    def _apply_touch(self, r: Touch) -> None:
        st = self.state(r.sid)
        if st is not None:
            self.touch(st, r.idle_deadline, r.ttl)

    # -- invariants --------------------------------------------------------------

    def _check(self) -> None:
        """Assert every invariant between the indexes (for tests, as sortedcontainers does)."""
        assert not self._bulk
        assert len(self.by_ref) == len(self.by_sid) == len(self.expiry)
        for sid, value in list(self.by_sid.items()):
            if not isinstance(value, SessionState):  # a block session not taken out yet
                cols = self._blocks[value >> _HANDLE_BITS]
                assert cols is not None and not cols.taken[value & _HANDLE_MASK]
                assert cols.block.session(value & _HANDLE_MASK)[0] == sid
                view = self._view(value)
                assert self.by_ref[ref_key(view.digest)] == value
                assert _expiry_key(view.expires_at, sid) in self.expiry
                assert view.user is None or sid in self.by_user[view.user]
                continue
            st = value
            assert st.sid == sid and st.digest is not DEAD
            assert self.by_ref[ref_key(st.digest)] is st
            assert st.indexed == _expiry_key(min(st.idle_deadline, st.hard_deadline), sid) or (
                st.indexed in self.expiry and (st.indexed & _SID_MASK) == sid
            )
            assert st.indexed in self.expiry
            if st.user is not None:
                assert sid in self.by_user[st.user]
        assert sum(len(v) for v in self.by_user.values()) == sum(
            1 for st in self.views() if st.user is not None
        )
        assert all(cols is None or (cols.left and cols.keys is None) for cols in self._blocks)
