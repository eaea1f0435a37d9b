"""A stateful model test: a real store, driven by random operations, against a dict model.

The machine opens a store in a temporary directory with an injected clock
(nothing sleeps), a small ``default_ttl`` and ``touch_granularity``, no
background threads (``cleanup_interval=None``, ``compact_ratio=None``), and
applies random creates, key sets, atomic updates, deletes, clears, replaces,
destroys, revokes, per-user destroys, regenerations, touches, reads, gc runs,
compactions, clock advances (some landing exactly on a deadline) and
close-and-reopen cycles. After every step the invariants compare everything
the store says with the model, without disturbing it (``store.exists``, the
listings and a non-extending peek, never ``store.get``).

Expiry is modelled exactly, as :meth:`walsess.Store._extend` documents it: a
session is live while ``now < min(idle_deadline, hard_deadline)``; a read moves
the idle deadline to ``now + ttl`` in memory, and logs a TOUCH only once that
moves it by ``min(touch_granularity, ttl / 10)`` past the last logged deadline.
So the model keeps, per session, the in-memory idle deadline, the logged one
(which the granularity is measured from) and the durable one (what a reopen
restores: the logged one, or the in-memory one a compaction wrote into the
snapshot). A reopen resets the first two to the third: a session can expire
earlier after a restart (by less than the granularity), never later.

The model also counts the records each operation must write (checked against
``stats()["records_appended"]`` and, at a reopen, ``recovery.records``), the
destroy-hook calls each must make, and what the newest snapshot holds. A
second invariant replays the files as they are on disk at that step (newest
snapshot, then the logs after it) into a fresh ``SessionTable`` and compares
it with the model's durable state, so a record that encodes or replays wrongly
is caught without waiting for a reopen.

Settings: 100 examples of up to 50 steps (about 5-10 s). ``test_scripted_edges``
walks the exact-deadline and restart-inside-the-band cases on purpose, since
random runs reach them only now and then.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

import walsess
from walsess import tokens
from walsess.changelog import replay_log
from walsess.fileio import OS
from walsess.session import Session, SessionInfo
from walsess.snapshot import load_snapshot
from walsess.storedir import StoreDirectory
from walsess.table import SessionTable

DEFAULT_TTL = 100.0
GRANULARITY = 5.0
MAX_VALUE = 1 << 20

KEYS = st.sampled_from(["a", "b", "c", "", "ключ"])
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)
DATA = st.dictionaries(KEYS, JSON_VALUES, max_size=3)
TTLS = st.sampled_from([None, 10.0, 50.0, 300.0, 2.5])
LIFETIMES = st.sampled_from([None, 30.0, 120.0])
USER_NAMES = ["alice", "bob", "ü"]
USERS = st.none() | st.sampled_from(USER_NAMES)
METAS = st.none() | st.dictionaries(st.sampled_from(["ip", "agent"]), JSON_VALUES, max_size=2)
# Steps around the granularity bands (0.25 .. 5 for ttl 2.5 .. 300), and steps equal to
# ttls and lifetimes, which land a clock moved right after a create onto a deadline.
ADVANCES = st.sampled_from(
    [
        0.1,
        0.25,
        0.5,
        1.0,
        2.0,
        2.5,
        4.75,
        5.0,
        6.0,
        10.0,
        30.0,
        50.0,
        99.0,
        100.0,
        101.0,
        120.0,
        350.0,
    ]
)


def note_event(name: str) -> None:
    """Count *name* in hypothesis' statistics (a no-op in the scripted tests)."""
    if currently_in_test_context():
        event(name)


class _Clock:
    """A hand-moved clock, like the ``clock`` fixture (a state machine cannot take fixtures)."""

    # Not a whole millisecond: deadlines fall between the expiry index's ticks.
    def __init__(self, now: float = 1_700_000_000.0004) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def strict_equal(a: Any, b: Any) -> bool:
    """Equality that also tells ``True`` from ``1`` and lists from tuples, recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def canonical(value: Any) -> str:
    """A JSON text that tells apart what :func:`strict_equal` tells apart."""
    return json.dumps(value, sort_keys=True)


def ref(token: str) -> str:
    return tokens.ref_of(tokens.digest(token))


@dataclass
class ModelSession:
    """What the model knows of one stored session (live or expired, not yet removed)."""

    seq: int  # creation order (SIDs are allocated in that order)
    data: dict[str, Any]
    user: str | None
    meta: dict[str, Any] | None
    created_at: float
    ttl: float
    idle: float  # in-memory idle deadline (reads move it)
    logged: float  # idle deadline of the last TOUCH/CREATE; the granularity counts from it
    durable: float  # idle deadline a reopen restores (log or snapshot)
    hard: float

    def live(self, now: float) -> bool:
        return now < self.idle and now < self.hard

    @property
    def expires_at(self) -> float:
        return min(self.idle, self.hard)

    def set_deadline(self, idle: float) -> None:
        """A logged deadline (CREATE or TOUCH): memory, log and disk agree."""
        self.idle = self.logged = self.durable = idle


def peek(store: walsess.Store, token: str) -> Session | None:
    """A handle to the session of *token* that, unlike ``store.get``, extends nothing."""
    state = store._table.find(tokens.digest(token))
    return None if state is None else Session(store, state, token)


class StoreMachine(RuleBasedStateMachine):
    tokens = Bundle("tokens")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="walsess-sm-")
        self.path = os.path.join(self.dir, "store")
        self.clock = _Clock()
        #: Stored sessions by their current token; expired ones stay until gc.
        self.sessions: dict[str, ModelSession] = {}
        #: Tokens of removed sessions (destroyed, revoked, gc'd) and of replaced tokens.
        self.dead: set[str] = set()
        #: Handles from create/get/regenerate of this open store, by token.
        self.handles: dict[str, Session] = {}
        self.created = 0
        #: Records in the log files after the newest snapshot (what a reopen replays).
        self.chain_records = 0
        #: Appends since the store was opened (``stats()["records_appended"]``).
        self.appends = 0
        #: Sessions in the newest snapshot, or None if there is none.
        self.snapshot_sessions: int | None = None
        #: Destroy-hook calls seen and expected since the last check: (ref, reason, data).
        self.hook_calls: list[tuple[str, str, str]] = []
        self.expected_hooks: list[tuple[str, str, str]] = []
        self.store = self._open()

    def _open(self) -> walsess.Store:
        store = walsess.open(
            self.path,
            durability="never",
            default_ttl=DEFAULT_TTL,
            touch_granularity=GRANULARITY,
            max_value_bytes=MAX_VALUE,
            cleanup_interval=None,
            compact_ratio=None,
            clock=self.clock,
        )
        store.on_destroy(self._hook)
        return store

    def _hook(self, info: SessionInfo, reason: str) -> None:
        self.hook_calls.append((info.ref, reason, canonical(info.data)))

    def teardown(self) -> None:
        try:
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers -----------------------------------------------------------

    def _now(self) -> float:
        return self.clock.now

    def _live(self, token: str) -> ModelSession | None:
        m = self.sessions.get(token)
        return m if m is not None and m.live(self._now()) else None

    def _by_age(self) -> list[str]:
        """Tokens of the live sessions, oldest first (as the store lists a user's)."""
        now = self._now()
        live = [t for t, m in self.sessions.items() if m.live(now)]
        return sorted(live, key=lambda t: (self.sessions[t].created_at, self.sessions[t].seq))

    def _logged(self, records: int) -> None:
        """One append of *records* records happened."""
        self.appends += 1
        self.chain_records += records

    def _removed(self, token: str, reason: str) -> None:
        """The session of *token* is gone, with one DESTROY record and one hook call."""
        m = self.sessions.pop(token)
        self.dead.add(token)
        self.expected_hooks.append((ref(token), reason, canonical(m.data)))

    def _model_extend(self, m: ModelSession) -> None:
        """What a successful store.get does to the session's deadlines."""
        new_idle = self._now() + m.ttl
        if new_idle <= m.idle:
            return
        if new_idle - m.logged < min(GRANULARITY, m.ttl * 0.1):
            note_event("get: deadline extended in memory only")
            m.idle = new_idle
        else:
            m.set_deadline(new_idle)
            self._logged(1)

    def _get(self, token: str) -> Session | None:
        """store.get, checked against and applied to the model."""
        m = self._live(token)
        handle = self.store.get(token)
        if m is None:
            assert handle is None, f"get() returned a session the model says is gone: {token}"
            return None
        assert handle is not None, "get() lost a live session"
        assert handle.id == token
        self._model_extend(m)
        self.handles[token] = handle
        return handle

    def _handle(self, token: str, fresh: bool) -> Session | None:
        """A handle to write through: a cached one (possibly stale) or one from get()."""
        if not fresh and token in self.handles:
            return self.handles[token]
        return self._get(token)

    def _write(
        self,
        token: str,
        fresh: bool,
        change: Callable[[Session, dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Apply *change(handle, model_data)* through a handle, or check that it is refused.

        *change* performs the store call and, once it returned, returns the
        model's new data; it raises what the store raises.
        """
        handle = self._handle(token, fresh)
        if handle is None:
            return
        m = self._live(token)
        if m is None:
            # A stale handle: its session expired, was removed or got a new token.
            note_event("write through a stale handle refused")
            with pytest.raises(walsess.SessionNotFound):
                change(handle, {})
            return
        m.data = change(handle, m.data)
        self._logged(1)

    # -- rules: sessions -----------------------------------------------------------

    @initialize(
        target=tokens,
        first=st.lists(st.tuples(DATA, TTLS, LIFETIMES, USERS), min_size=1, max_size=3),
    )
    def start(
        self, first: list[tuple[dict[str, Any], float | None, float | None, str | None]]
    ) -> Any:
        """Every run starts with a few sessions, so no run is spent on an empty store."""
        return multiple(*(self.create(*args) for args in first))

    @rule(target=tokens, data=DATA, ttl=TTLS, lifetime=LIFETIMES, user=USERS, meta=METAS)
    def create(
        self,
        data: dict[str, Any],
        ttl: float | None,
        lifetime: float | None,
        user: str | None,
        meta: dict[str, Any] | None = None,
    ) -> str:
        s = self.store.create(data, ttl=ttl, max_lifetime=lifetime, user=user, meta=meta)
        now = self._now()
        t = DEFAULT_TTL if ttl is None else ttl
        self._logged(1)
        assert s.id not in self.sessions and s.id not in self.dead
        assert strict_equal(s.to_dict(), data)
        self.created += 1
        self.sessions[s.id] = ModelSession(
            seq=self.created,
            data=dict(data),
            user=user,
            meta=meta,
            created_at=now,
            ttl=t,
            idle=now + t,
            logged=now + t,
            durable=now + t,
            hard=math.inf if lifetime is None else now + lifetime,
        )
        self.handles[s.id] = s
        return s.id

    @rule(token=tokens)
    def get(self, token: str) -> None:
        handle = self._get(token)
        if handle is not None:
            assert strict_equal(handle.to_dict(), self.sessions[token].data)

    @rule(token=tokens, key=KEYS, value=JSON_VALUES, fresh=st.booleans())
    def set_key(self, token: str, key: str, value: Any, fresh: bool) -> None:
        def change(h: Session, data: dict[str, Any]) -> dict[str, Any]:
            h[key] = value
            return {**data, key: value}

        self._write(token, fresh, change)

    @rule(
        token=tokens,
        items=st.lists(st.tuples(KEYS, JSON_VALUES), min_size=0, max_size=4),
        fresh=st.booleans(),
    )
    def update(self, token: str, items: list[tuple[str, Any]], fresh: bool) -> None:
        def change(h: Session, data: dict[str, Any]) -> dict[str, Any]:
            h.update(items)
            new = dict(data)
            new.update(items)
            return new

        self._write(token, fresh, change)

    @rule(token=tokens, data=st.data(), fresh=st.booleans())
    def delete_key(self, token: str, data: st.DataObject, fresh: bool) -> None:
        m = self._live(token)
        present: list[str] = sorted(m.data) if m is not None else []
        keys: st.SearchStrategy[str] = st.sampled_from(present) if present else KEYS
        key: str = data.draw(keys, label="key")
        absent: bool = data.draw(st.booleans(), label="an absent key instead")
        if present and absent:
            key = data.draw(KEYS, label="key")
        if m is not None and key not in m.data:
            handle = self._handle(token, fresh)
            if handle is None:  # pragma: no cover - the model says it is live
                raise AssertionError("a live session could not be read")
            with pytest.raises(KeyError):
                del handle[key]
            return  # a refused delete writes nothing

        def change(h: Session, data: dict[str, Any]) -> dict[str, Any]:
            del h[key]
            return {k: v for k, v in data.items() if k != key}

        self._write(token, fresh, change)

    @rule(token=tokens, data=st.none() | DATA, fresh=st.booleans())
    def replace(self, token: str, data: dict[str, Any] | None, fresh: bool) -> None:
        """Replace all the data (``clear()`` if *data* is None), as one record."""

        def change(h: Session, old: dict[str, Any]) -> dict[str, Any]:
            if data is None:
                h.clear()
                return {}
            h.replace(data)
            return dict(data)

        self._write(token, fresh, change)

    @rule(token=tokens, by_ref=st.booleans())
    def destroy(self, token: str, by_ref: bool = False) -> None:
        """Destroy by token, or revoke by the public ref as a device list does."""
        live = self._live(token) is not None
        if by_ref:
            assert self.store.revoke(ref(token)) is live
        else:
            assert self.store.destroy(token) is live
        if live:
            self._removed(token, "revoked" if by_ref else "destroyed")
            self._logged(1)

    @rule(
        user=st.sampled_from(USER_NAMES),
        keep_mask=st.integers(min_value=0, max_value=7),
        by_ref=st.booleans(),
    )
    def destroy_user(self, user: str, keep_mask: int, by_ref: bool = False) -> None:
        """Log a user out everywhere except on some kept sessions (bit i of *keep_mask*
        keeps the i-th oldest live one), named by token or by ref."""
        mine = [t for t in self._by_age() if self.sessions[t].user == user]
        kept = [t for i, t in enumerate(mine) if keep_mask >> i & 1]
        doomed = [t for t in mine if t not in kept]
        keep = [ref(t) if by_ref else t for t in kept]
        assert self.store.destroy_user(user, keep=keep) == len(doomed)
        for token in doomed:
            self._removed(token, "revoked")
        if doomed:
            self._logged(len(doomed))  # one append for the whole batch

    @rule(target=tokens, token=tokens)
    def regenerate(self, token: str) -> Any:
        m = self._live(token)
        if m is None:
            with pytest.raises(walsess.SessionNotFound):
                self.store.regenerate(token)
            return multiple()
        s = self.store.regenerate(token)
        assert s.id != token and s.id not in self.sessions and s.id not in self.dead
        self.expected_hooks.append((ref(token), "regenerated", canonical(m.data)))
        del self.sessions[token]
        self.dead.add(token)
        self.sessions[s.id] = m  # data, owner and deadlines carry over
        self.handles[s.id] = s
        self._logged(1)
        return s.id

    @rule(token=tokens, ttl=st.none() | st.sampled_from([1.0, 20.0, 100.0, 400.0]))
    def touch(self, token: str, ttl: float | None) -> None:
        m = self._live(token)
        assert self.store.touch(token, ttl) is (m is not None)
        if m is not None:
            if ttl is not None:
                m.ttl = ttl
            m.set_deadline(self._now() + m.ttl)
            self._logged(1)

    # -- rules: the whole store --------------------------------------------------------

    @rule()
    def gc(self) -> None:
        now = self._now()
        expired = [t for t, m in self.sessions.items() if not m.live(now)]
        if expired:
            note_event("gc: removed expired sessions")
        assert self.store.gc() == len(expired)
        for token in expired:
            self._removed(token, "expired")
        if expired:
            self._logged(len(expired))  # one append for the whole batch

    @rule()
    def compact(self) -> None:
        """Snapshot every stored session (expired ones too) as it is in memory."""
        result = self.store.compact()
        assert result.sessions == len(self.sessions)
        for m in self.sessions.values():
            if m.durable != m.idle:
                note_event("compact: an in-memory extension became durable")
            m.durable = m.idle
        self.chain_records = 0
        self.snapshot_sessions = len(self.sessions)

    # -- rules: time -----------------------------------------------------------------

    @rule(seconds=ADVANCES)
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(
        token=tokens,
        which=st.sampled_from(["expires", "logged", "hard"]),
        delta=st.sampled_from([0.0, -0.01, 0.01]),
    )
    def advance_to_deadline(self, token: str, which: str, delta: float) -> None:
        """Move the clock to just before, onto or just past one of a session's deadlines."""
        m = self.sessions.get(token)
        if m is None:
            return
        target = {"expires": m.expires_at, "logged": m.durable, "hard": m.hard}[which] + delta
        if self._now() < target < math.inf:
            if delta == 0.0:
                note_event(f"advance_to_deadline: onto a {which} deadline")
            self.clock.now = target

    @rule(
        token=tokens,
        fraction=st.sampled_from([0.25, 0.5, 0.99, 1.0]),
        repeat=st.integers(min_value=1, max_value=3),
        then=st.sampled_from([None, "restart", "compact", "gc"]),
        where=st.sampled_from([0.0, 0.5]),
    )
    def small_steps_then_get(
        self, token: str, fraction: float, repeat: int, then: str | None = None, where: float = 0.0
    ) -> None:
        """Advance by a fraction of the session's granularity, then read it, as a web
        app does, *repeat* times: this extends the deadline in memory, logging it only
        when it has moved by the granularity. Then, if that left the in-memory deadline
        ahead of the durable one, maybe move the clock into that band (onto the durable
        deadline, or half way) where the session is live now but would not be after a
        reopen, and reopen: directly, after a compaction (which makes the in-memory
        deadline durable: the session survives), or after a gc (which must keep it).
        """
        m = self.sessions.get(token)
        for _ in range(repeat):
            if m is not None:
                self.clock.now += fraction * min(GRANULARITY, m.ttl * 0.1)
            self.get(token)
        if m is None or then is None or not self._now() <= m.durable < m.idle:
            return
        target = m.durable + where * (m.idle - m.durable)
        if target >= m.hard:
            return  # the band lies past the hard deadline: dead in memory too
        note_event(f"small_steps_then_get: {then} in the band")
        self.clock.now = target
        self.check_all()
        assert m.live(target)
        if then == "compact":
            self.compact()
        elif then == "gc":
            self.gc()  # the session is live: re-filed under its new deadline, not removed
            assert token in self.sessions
        self.check_all()
        self.reopen()

    # -- rules: restart ----------------------------------------------------------------

    @rule()
    def reopen(self) -> None:
        stale = next(iter(self.handles.values()), None)
        self.store.close()
        if stale is not None:
            with pytest.raises(walsess.StoreClosed):
                stale.to_dict()
        self.store = self._open()
        self.handles.clear()
        self.appends = 0
        now = self._now()
        for m in self.sessions.values():
            if m.idle != m.durable:
                note_event("reopen: deadline moved back to the durable one")
                if m.live(now) and not m.durable > now:
                    note_event("reopen: a session live before the restart has expired")
            m.idle = m.logged = m.durable  # in-memory-only extensions are not on disk
        recovery = self.store.recovery
        assert recovery.clean, recovery
        assert recovery.records == self.chain_records, recovery
        assert recovery.snapshot_sessions == (self.snapshot_sessions or 0), recovery
        assert (recovery.snapshot is not None) is (self.snapshot_sessions is not None)

    # -- the checks ----------------------------------------------------------------

    def check_all(self) -> None:
        self.store_matches_model()
        self.listings_match_model()
        self.files_replay_to_model()

    @invariant()
    def store_matches_model(self) -> None:
        store = self.store
        now = self._now()
        live = {t: m for t, m in self.sessions.items() if m.live(now)}
        assert len(store) == len(live)
        if len(live) < len(self.sessions):
            note_event("invariant: some session expired")
        for token, m in self.sessions.items():
            assert store.exists(token) is m.live(now), (token, now, m)
        for token, m in live.items():
            h = peek(store, token)
            assert h is not None
            assert strict_equal(h.to_dict(), m.data), (h.to_dict(), m.data)
            assert h.user == m.user
            assert strict_equal(h.meta, m.meta)
            assert h.ttl == m.ttl
            assert h.created_at == m.created_at
            assert h.expires_at == m.expires_at
            assert h._state.logged_deadline == m.logged
            assert h._state.hard_deadline == m.hard
        for token in self.dead:
            assert not store.exists(token)
            assert store.get(token) is None  # has no effect on a dead token
        stats = store.stats()
        assert stats["records_appended"] == self.appends
        assert stats["stored_sessions"] == len(self.sessions)
        assert stats["sessions"] == len(live)
        assert stats["expired_pending_gc"] == len(self.sessions) - len(live)
        assert sorted(self.hook_calls) == sorted(self.expected_hooks)
        self.hook_calls.clear()
        self.expected_hooks.clear()

    @invariant()
    def listings_match_model(self) -> None:
        def info(token: str) -> tuple[Any, ...]:
            m = self.sessions[token]
            return (ref(token), m.user, canonical(m.meta), m.created_at, m.expires_at)

        def seen(i: SessionInfo) -> tuple[Any, ...]:
            return (i.ref, i.user, canonical(i.meta), i.created_at, i.expires_at)

        live = self._by_age()
        assert sorted(seen(i) for i in self.store.sessions()) == sorted(info(t) for t in live)
        for user in USER_NAMES:
            mine = [info(t) for t in live if self.sessions[t].user == user]
            assert [seen(i) for i in self.store.sessions_of(user)] == mine

    @invariant()
    def files_replay_to_model(self) -> None:
        """The files as they are on disk now (newest snapshot, then the logs after it),
        read into a fresh table, hold what a reopen must restore: every stored session
        (expired ones too) with its durable deadline."""
        files = StoreDirectory(self.path, OS)
        snaps, logs = files.snapshots(), files.logs()
        table = SessionTable()
        table.begin_bulk()
        if self.snapshot_sessions is None:
            assert snaps == []
            first = 1
        else:
            assert len(snaps) == 1  # older ones were deleted by the compaction
            first = snaps[0]
            loaded = load_snapshot(files.snapshot_path(first), OS, table, MAX_VALUE)
            assert loaded == self.snapshot_sessions
        assert logs == list(range(first, first + len(logs))) and logs
        count = 0
        for g in logs:
            newest = g == logs[-1]
            table.reading(files.log_path(g), MAX_VALUE)
            replay = replay_log(
                files.log_path(g), OS, table.apply, table.set_key, MAX_VALUE, newest,
                on_touch=table.touch_sid, on_create=table.create_packed,
            )  # fmt: skip
            assert replay.cut is None, replay.cut
            count += replay.records
        table.end_bulk()
        table._check()
        assert count == self.chain_records
        assert len(table) == len(self.sessions)
        for token, m in self.sessions.items():
            state = table.find(tokens.digest(token))
            assert state is not None, token
            data = {k: json.loads(v) for k, v in state.data.items()}
            assert strict_equal(data, m.data), (data, m.data)
            assert (state.user, state.ttl, state.created_at) == (m.user, m.ttl, m.created_at)
            assert strict_equal(None if state.meta is None else json.loads(state.meta), m.meta)
            assert (state.idle_deadline, state.hard_deadline) == (m.durable, m.hard)
        for token in self.dead:
            assert table.find(tokens.digest(token)) is None


StoreMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestStoreStateMachine = StoreMachine.TestCase


def _scripted(*steps: tuple[str, tuple[Any, ...]]) -> StoreMachine:
    """Run *steps* (rule name, arguments; ``"$n"`` is the n-th token created) through
    the machine, checking both invariants after each one, as hypothesis would."""
    machine = StoreMachine()
    made: list[str] = []
    try:
        machine.check_all()
        for name, args in steps:
            real = [
                made[int(a[1:])] if isinstance(a, str) and a.startswith("$") else a for a in args
            ]
            result = getattr(machine, name)(*real)
            if name in ("create", "regenerate") and isinstance(result, str):
                made.append(result)
            machine.check_all()
    finally:
        machine.teardown()
    return machine


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(
            [
                ("create", ({"a": 1}, None, 30.0, "alice")),
                ("advance_to_deadline", ("$0", "hard", -0.01)),
                ("advance_to_deadline", ("$0", "hard", 0.0)),  # expired exactly at the deadline
                ("get", ("$0",)),
                ("reopen", ()),
            ],
            id="hard-deadline-boundary",
        ),
        pytest.param(
            [
                ("create", ({}, 10.0, None, None)),
                ("advance_to_deadline", ("$0", "expires", -0.01)),
                ("get", ("$0",)),  # logs: the deadline moved by the whole band
                ("advance_to_deadline", ("$0", "expires", 0.0)),
                ("set_key", ("$0", "a", 1, False)),  # a stale handle
                ("reopen", ()),
            ],
            id="idle-deadline-boundary",
        ),
        pytest.param(
            [
                ("create", ({"k": [1]}, None, None, None)),
                ("small_steps_then_get", ("$0", 1.0, 1, None)),  # exactly one band: logged
                ("small_steps_then_get", ("$0", 0.99, 2, None)),  # drift: logs on the 2nd
                # restart at the logged deadline
                ("small_steps_then_get", ("$0", 0.5, 1, "restart", 0.0)),
            ],
            id="granularity-band-and-restart",
        ),
        pytest.param(
            [
                ("create", ({"k": 1}, None, None, "alice", {"ip": "10.0.0.1"})),
                ("create", ({}, 2.5, 30.0, "alice")),
                ("small_steps_then_get", ("$0", 0.5, 1, None)),  # in memory only
                ("compact", ()),  # ... now in the snapshot: durable
                ("set_key", ("$0", "k", 2, False)),  # in the log after the snapshot
                ("advance", (2.5,)),  # $1 expires
                # into the band: compact, then restart; the session survives
                ("small_steps_then_get", ("$0", 0.5, 1, "compact", 0.5)),
                ("gc", ()),  # $1 removed, logged after the second snapshot
                ("reopen", ()),
                ("destroy_user", ("alice", 0)),
                ("advance", (350.0,)),
                ("gc", ()),
                ("reopen", ()),
            ],
            id="compaction-gc-destroy-user",
        ),
        pytest.param(
            [
                ("create", ({"a": [1, 2]}, 2.5, None, "bob")),
                ("create", ({}, None, None, "bob")),
                # into $0's band (live in memory only): gc keeps it, the restart loses it
                ("small_steps_then_get", ("$0", 0.99, 1, "gc", 0.0)),
                ("advance_to_deadline", ("$1", "expires", 0.0)),  # between index ticks
                ("gc", ()),
                ("reopen", ()),
            ],
            id="gc-in-band-and-sub-millisecond-deadline",
        ),
        pytest.param(
            [
                ("create", ({}, None, None, None)),
                ("create", ({"x": {"y": None}}, 50.0, 120.0, "bob")),
                # restart half way in $1's band: live before, expired after the reopen
                ("small_steps_then_get", ("$1", 0.25, 2, "restart", 0.5)),
                ("touch", ("$0", 1.0)),  # a shorter idle timeout, logged
                ("regenerate", ("$0",)),  # -> $2
                ("update", ("$2", [("a", 1), ("a", 2), ("b", True)], True)),
                ("reopen", ()),
                ("advance", (1.0,)),  # $2 expires exactly now
                ("destroy", ("$0",)),  # a dead (regenerated) token
                ("destroy", ("$2",)),  # expired
                ("regenerate", ("$1",)),  # expired
                ("reopen", ()),
            ],
            id="touch-regenerate-destroy",
        ),
    ],
)
def test_scripted_edges(steps: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Edges the random runs reach only now and then, walked on purpose every time."""
    machine = _scripted(*steps)
    assert machine.created > 0
    # Every script ends with all of its sessions expired or destroyed.
    assert not any(m.live(machine.clock.now) for m in machine.sessions.values())
