"""Expiry, gc, the cleanup thread, destroy hooks, per-user sessions, stats, max_sessions.

Time is the injected ``clock`` everywhere: nothing sleeps to wait for a
session to expire. Only the background cleanup thread runs on real time
(``cleanup_interval`` of 0.01 s); tests wait for it with a bounded polling
loop (10 s deadline) and never assert how long anything took.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

import walsess
from walsess.record import Destroy, DestroyReason, RecordReader
from walsess.session import SessionInfo
from walsess.table import SessionState

#: No background threads unless a test asks for them.
QUIET: dict[str, Any] = {"durability": "never", "cleanup_interval": None, "compact_ratio": None}
STATS_KEYS = {
    "snapshot_bytes",
    "log_bytes",
    "live_bytes_estimate",
    "disk_to_live_ratio",
    "memory_bytes_estimate",
    "sessions",
    "last_compaction",
    "last_gc",
}


def destroys(directory: str) -> list[tuple[int, int]]:
    """(sid, reason) of every DESTROY record in the store's logs, oldest first."""
    out = []
    for log in sorted(Path(directory).glob("*.log")):
        for _, r in RecordReader(log.read_bytes()):
            if type(r) is Destroy:
                out.append((r.sid, r.reason))
    return out


def sid(s: walsess.Session) -> int:
    return s._state.sid


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll *condition* until it holds or *timeout* real seconds pass (for threads only)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def run_bounded(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Run *fn* in a thread; fail (instead of hanging) if it does not finish."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not finish: a deadlock?"
    if errors:
        raise errors[0]
    return result[0]


# -- gc --------------------------------------------------------------------------------------


def test_gc_removes_expired_sessions_and_logs_why(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, touch_granularity=60.0, **QUIET)
    table = store._table
    t0 = clock.now
    a = store.create({"a": 1}, ttl=10.0)  # expires at t0 + 10
    b = store.create({"b": 1}, ttl=100.0)  # t0 + 100
    c = store.create({"c": 1}, ttl=1000.0, max_lifetime=50.0)  # t0 + 50, however often read
    d = store.create({"d": 1})  # default ttl 1800
    e = store.create({"e": 1}, ttl=100.0)  # a read keeps it alive past t0 + 100
    table._check()
    assert len(store) == 5 and store.gc() == 0 and store.last_gc is not None
    assert store.last_gc["removed"] == 0 and destroys(store_dir) == []

    clock.advance(5)
    assert store.get(e.id) is not None
    # Moved by 5 s, less than min(60, 100 / 10): in memory only, not logged.
    assert e._state.idle_deadline == t0 + 105 and e._state.logged_deadline == t0 + 100
    table._check()

    clock.advance(6)  # t0 + 11: a has expired
    assert not store.exists(a.id) and len(store) == 4
    stats = store.stats()
    assert stats["sessions"] == 4 and stats["stored_sessions"] == 5
    assert stats["expired_pending_gc"] == 1
    assert store.gc() == 1
    table._check()
    assert len(store) == 4 and store.stats()["stored_sessions"] == 4
    assert destroys(store_dir) == [(sid(a), DestroyReason.EXPIRED)]
    assert store.last_gc["removed"] == 1 and store.last_gc["at"] == clock.now

    clock.advance(29)  # t0 + 40: reading c moves its idle deadline, not its hard one
    assert store.get(c.id) is not None and c.expires_at == t0 + 50
    clock.advance(11)  # t0 + 51
    assert len(store) == 3 and store.gc() == 1
    table._check()
    assert destroys(store_dir)[-1] == (sid(c), DestroyReason.EXPIRED)

    clock.advance(51)  # t0 + 102: b has expired; e's logged deadline passed, not its real one
    assert len(store) == 2 and store.exists(e.id)
    assert [st.sid for st in table.expiring(clock.now)] == sorted([sid(b), sid(e)])
    assert store.gc() == 1
    table._check()
    assert not store.exists(b.id) and store.exists(e.id) and len(store) == 2
    # e was re-filed under its real deadline: no longer a candidate now.
    assert [st.sid for st in table.expiring(clock.now)] == []
    assert dict(e) == {"e": 1}

    clock.advance(4)  # t0 + 106: now e has expired too
    assert store.gc() == 1 and not store.exists(e.id) and len(store) == 1
    table._check()

    assert store.destroy(d.id)  # for contrast: a destroy, not an expiry
    want = [
        (sid(a), DestroyReason.EXPIRED),
        (sid(c), DestroyReason.EXPIRED),
        (sid(b), DestroyReason.EXPIRED),
        (sid(e), DestroyReason.EXPIRED),
        (sid(d), DestroyReason.DESTROYED),
    ]
    assert destroys(store_dir) == want
    assert store.gc() == 0 and destroys(store_dir) == want  # nothing due: nothing written
    store.close()
    with walsess.open(store_dir, clock=clock, **QUIET) as again:
        assert len(again) == 0 and len(again._table) == 0
        assert not any(again.exists(s.id) for s in (a, b, c, d, e))


def test_expired_but_not_collected_sessions_stay_invisible(
    store_dir: str, clock: FakeClock
) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    gone = store.create({"x": 1}, ttl=10.0, user="u")
    kept = store.create({"y": 1}, ttl=100.0, user="u")
    clock.advance(11)
    assert store.get(gone.id) is None and not store.touch(gone.id) and not store.destroy(gone.id)
    assert not store.revoke(gone.ref)
    with pytest.raises(walsess.SessionNotFound):
        gone["x"] = 2
    assert [i.ref for i in store.sessions()] == [kept.ref]
    assert [i.ref for i in store.sessions_of("u")] == [kept.ref]
    store._table._check()
    store.close()
    with walsess.open(store_dir, clock=clock, **QUIET) as again:  # not gc'd before close
        assert len(again) == 1 and len(again._table) == 2
        assert again.get(gone.id) is None and again.get(kept.id) is not None
        assert again.gc() == 1
        again._table._check()


def test_gc_examines_only_the_sessions_due(
    store_dir: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    for _ in range(5000):
        store.create(ttl=1000.0)
    short = [store.create({"i": i}, ttl=10.0) for i in range(10)]
    for _ in range(4990):
        store.create(ttl=1000.0)
    clock.advance(11)
    due: list[int] = []
    examined = 0
    real_expiring = store._table.expiring
    real_live_at = SessionState.live_at

    def expiring(now: float) -> list[SessionState]:
        out = real_expiring(now)
        due.append(len(out))
        return out

    def live_at(self: SessionState, now: float) -> bool:
        nonlocal examined
        examined += 1
        return real_live_at(self, now)

    monkeypatch.setattr(store._table, "expiring", expiring)
    monkeypatch.setattr(SessionState, "live_at", live_at)
    assert store.gc() == 10
    monkeypatch.undo()
    assert due == [10], "gc must ask the expiry index for the sessions due, not scan"
    assert examined <= 20, f"gc looked at {examined} sessions to remove 10 of 10,000"
    assert len(store) == 9990 and not any(store.exists(s.id) for s in short)
    store._table._check()
    store.close()


# -- the cleanup thread ----------------------------------------------------------------------


def test_background_cleanup_runs_gc_in_its_thread(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(
        store_dir, clock=clock, cleanup_interval=0.01, durability="never", compact_ratio=None
    )
    seen: list[tuple[str, str, str]] = []
    store.on_destroy(
        lambda info, why: seen.append((info.ref, why, threading.current_thread().name))
    )
    s = store.create({"x": 1}, ttl=10.0)
    keep = store.create(ttl=1000.0)
    cleaner = store._expiry.cleaner
    assert cleaner is not None and cleaner.is_alive() and cleaner.name == "walsess-cleanup"
    clock.advance(11)
    assert wait_for(lambda: bool(seen)), "the cleanup thread never collected the session"
    assert seen == [(s.ref, "expired", "walsess-cleanup")]
    assert len(store._table) == 1 and store.exists(keep.id)
    assert destroys(store_dir) == [(sid(s), DestroyReason.EXPIRED)]
    assert wait_for(lambda: store.last_gc is not None)  # set once the round's hooks ran
    run_bounded(store.close)
    assert not cleaner.is_alive()


def test_close_and_stop_cleanup_stop_the_thread_promptly(store_dir: str, clock: FakeClock) -> None:
    # An hour between rounds: close() must not wait for the next one.
    store = walsess.open(
        store_dir, clock=clock, cleanup_interval=3600.0, durability="never", compact_ratio=None
    )
    cleaner = store._expiry.cleaner
    assert cleaner is not None and cleaner.is_alive()
    run_bounded(store.close)
    assert not cleaner.is_alive()

    store = walsess.open(store_dir, clock=clock, cleanup_interval=0.01, durability="never")
    cleaner = store._expiry.cleaner
    assert cleaner is not None
    seen: list[tuple[str, str]] = []
    store.on_destroy(lambda info, why: seen.append((why, threading.current_thread().name)))
    run_bounded(store.stop_cleanup)
    assert not cleaner.is_alive()
    s = store.create(ttl=10.0)
    clock.advance(11)
    assert store.gc() == 1 and not store.exists(s.id)  # gc by hand still works
    assert seen == [("expired", threading.current_thread().name)]
    run_bounded(store.stop_cleanup)  # twice is harmless
    run_bounded(store.close)


def test_failing_gc_round_is_logged_and_the_thread_goes_on(
    store_dir: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="walsess")
    store = walsess.open(
        store_dir, clock=clock, cleanup_interval=0.01, durability="never", compact_ratio=None
    )
    rounds = 0
    real_gc = store._expiry.gc

    def flaky() -> int:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("gc failed on purpose")
        return real_gc()

    store._expiry.gc = flaky  # type: ignore[method-assign]  # the cleanup thread calls it
    seen: list[str] = []
    store.on_destroy(lambda info, why: seen.append(why))
    store.create(ttl=10.0)
    clock.advance(11)
    assert wait_for(lambda: bool(seen)), "the round after a failed one never ran"
    assert rounds >= 2 and seen == ["expired"]
    failed = [r for r in caplog.records if "background gc" in r.getMessage()]
    assert failed and failed[0].exc_info is not None
    assert failed[0].exc_info[0] is RuntimeError
    assert store._expiry.cleaner is not None and store._expiry.cleaner.is_alive()
    run_bounded(store.close)


def test_failing_hook_in_the_cleanup_thread_is_logged_and_the_thread_goes_on(
    store_dir: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="walsess")
    store = walsess.open(
        store_dir, clock=clock, cleanup_interval=0.01, durability="never", compact_ratio=None
    )
    calls: list[str] = []

    def bad(info: SessionInfo, why: str) -> None:
        calls.append(info.ref)
        raise ValueError("hook failed on purpose")

    store.on_destroy(bad)
    first = store.create(ttl=10.0)
    second = store.create(ttl=20.0)
    clock.advance(11)
    assert wait_for(lambda: len(calls) >= 1)
    assert calls == [first.ref] and not store.exists(first.id) and store.exists(second.id)
    clock.advance(10)
    assert wait_for(lambda: len(calls) >= 2), "no round ran after a hook raised"
    assert calls == [first.ref, second.ref] and len(store._table) == 0

    def logged_hooks() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "on_destroy hook" in r.getMessage()]

    assert wait_for(lambda: len(logged_hooks()) >= 2)  # logged just after the hook returns
    logged = logged_hooks()
    assert len(logged) == 2 and all(r.exc_info and r.exc_info[0] is ValueError for r in logged)
    assert not [r for r in caplog.records if "background gc" in r.getMessage()]
    run_bounded(store.close)


# -- destroy hooks ---------------------------------------------------------------------------


def test_destroy_hooks_reasons_and_infos(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    events: list[tuple[SessionInfo, str]] = []
    unsubscribe = store.on_destroy(lambda info, why: events.append((info, why)))
    tokens: list[str] = []

    def made(s: walsess.Session) -> walsess.Session:
        tokens.append(s.id)
        return s

    t0 = clock.now
    a = made(store.create({"k": "va"}, user="u1", meta={"ip": "10.0.0.1"}))
    b = made(store.create({"k": "vb"}, ttl=10.0))
    c = made(store.create({"k": "vc"}, user="u1"))
    d = made(store.create({"k": "vd"}))
    e = [made(store.create({"k": f"e{i}"}, user="u2")) for i in range(3)]
    clock.advance(1)
    a["k"] = "last"

    assert store.destroy(a.id)
    clock.advance(10)
    assert store.gc() == 1
    new_c = made(store.regenerate(c.id))
    assert store.revoke(d.ref)
    assert store.destroy_user("u2", keep=[e[2].id]) == 2
    got = [(info.ref, why, info.data) for info, why in events]
    assert got == [
        (a.ref, "destroyed", {"k": "last"}),
        (b.ref, "expired", {"k": "vb"}),
        (c.ref, "regenerated", {"k": "vc"}),
        (d.ref, "revoked", {"k": "vd"}),
        (e[0].ref, "revoked", {"k": "e0"}),
        (e[1].ref, "revoked", {"k": "e1"}),
    ]
    first = events[0][0]
    assert first.user == "u1" and first.meta == {"ip": "10.0.0.1"} and first.created_at == t0
    assert events[2][0].user == "u1" and new_c.ref != c.ref and store.exists(new_c.id)
    for info, _ in events:
        assert isinstance(info, SessionInfo)
        for f in dataclasses.fields(info):
            value = getattr(info, f.name)
            assert value not in tokens, f"{f.name} holds a token"
            assert not any(t in repr(value) for t in tokens), f"{f.name} holds a token"
        assert not any(t in repr(info) for t in tokens)

    unsubscribe()
    unsubscribe()  # harmless twice
    assert store.destroy(new_c.id) and len(events) == 6
    store.close()


def test_hooks_run_after_the_lock_is_released(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    probe = store.create({"p": 1})
    calls: list[tuple[str, bool]] = []
    made: list[str] = []

    def reentrant(info: SessionInfo, why: str) -> None:
        calls.append((why, store._lock.locked()))
        assert store.get(probe.id) is not None  # would deadlock under the store's lock
        made.append(store.create({"from_hook": why}).id)
        store.sessions_of("u")

    store.on_destroy(reentrant)
    a = store.create(ttl=10.0)
    b = store.create()
    c = store.create()
    d = store.create(user="u")
    run_bounded(lambda: store.destroy(b.id))
    clock.advance(11)
    run_bounded(store.gc)
    run_bounded(lambda: store.regenerate(c.id))
    run_bounded(lambda: store.revoke(store.sessions_of("u")[0].ref))
    e = store.create(user="u")
    run_bounded(lambda: store.destroy_user("u"))
    assert calls == [
        ("destroyed", False),
        ("expired", False),
        ("regenerated", False),
        ("revoked", False),
        ("revoked", False),
    ]
    assert all(store.exists(t) for t in made) and len(made) == 5
    assert not any(store.exists(s.id) for s in (a, b, c, d, e))
    store._table._check()
    store.close()


def test_a_raising_hook_is_logged_and_the_operation_stands(
    store_dir: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="walsess")
    store = walsess.open(store_dir, clock=clock, **QUIET)
    after: list[str] = []

    def bad(info: SessionInfo, why: str) -> None:
        raise RuntimeError(f"hook failed on purpose ({why})")

    unsub_bad = store.on_destroy(bad)
    store.on_destroy(lambda info, why: after.append(why))
    s = store.create({"x": 1}, user="u")
    assert store.destroy(s.id)
    assert not store.exists(s.id) and after == ["destroyed"]
    assert destroys(store_dir) == [(sid(s), DestroyReason.DESTROYED)]
    logged = [r for r in caplog.records if "on_destroy hook" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info and logged[0].exc_info[0] is RuntimeError
    old = store.create()
    new = store.regenerate(old.id)  # raising hooks do not undo a regenerate either
    assert store.get(old.id) is None and store.get(new.id) is not None
    assert after == ["destroyed", "regenerated"]
    unsub_bad()
    caplog.clear()
    assert store.destroy(new.id) and after[-1] == "destroyed" and not caplog.records
    store.close()


# -- users, listings, stats, max_sessions -------------------------------------------------


def test_sessions_of_and_sessions(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    a1 = store.create({"x": 1}, user="alice", meta={"dev": "phone"})
    clock.advance(1)
    a2 = store.create(user="alice", ttl=10.0)
    clock.advance(1)
    a3 = store.create(user="alice")
    b1 = store.create(user="bob")
    anon = store.create()
    infos = store.sessions_of("alice")
    assert [i.ref for i in infos] == [a1.ref, a2.ref, a3.ref]  # oldest first
    assert infos[0].meta == {"dev": "phone"} and infos[0].data is None
    assert all(i.user == "alice" for i in infos)
    assert store.sessions_of("nobody") == [] and store.sessions_of("") == []
    assert sorted(i.ref for i in store.sessions()) == sorted(s.ref for s in (a1, a2, a3, b1, anon))
    clock.advance(10)  # a2 expired at t0 + 11; not collected yet
    assert [i.ref for i in store.sessions_of("alice")] == [a1.ref, a3.ref]
    assert a2.ref not in {i.ref for i in store.sessions()}
    assert store.gc() == 1
    assert [i.ref for i in store.sessions_of("alice")] == [a1.ref, a3.ref]
    store._table._check()
    store.close()


def test_destroy_user_keeps_what_it_is_told(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    revoked: list[str] = []
    store.on_destroy(lambda info, why: revoked.append(info.ref) if why == "revoked" else None)
    alice = [store.create({"i": i}, user="alice") for i in range(4)]
    bob = store.create(user="bob")
    short = store.create(user="alice", ttl=1.0)
    clock.advance(2)  # short has expired: not counted, not destroyed again
    with pytest.raises(walsess.ValidationError):
        store.destroy_user("alice", keep=alice[0].id)  # one string, not a collection
    assert store.destroy_user("alice", keep=[alice[0].id]) == 3
    assert [i.ref for i in store.sessions_of("alice")] == [alice[0].ref]
    assert sorted(revoked) == sorted(s.ref for s in alice[1:])
    assert store.exists(bob.id) and store.exists(alice[0].id)
    more = [store.create(user="alice") for _ in range(2)]
    # Keep by ref (as a device list shows it); odd entries are ignored.
    assert store.destroy_user("alice", keep=(more[0].ref, "not-a-ref", "0" * 16)) == 2
    assert [i.ref for i in store.sessions_of("alice")] == [more[0].ref]
    assert store.destroy_user("alice", keep={more[0].id, more[0].ref}) == 0
    assert store.destroy_user("alice") == 1 and store.sessions_of("alice") == []
    assert store.destroy_user("nobody") == 0 and store.destroy_user("bob", keep=[]) == 1
    assert len(store) == 0 and short.ref not in revoked
    store._table._check()
    store.close()
    with walsess.open(store_dir, clock=clock, **QUIET) as again:
        assert len(again) == 0 and again.sessions_of("alice") == []


def test_stats(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    sessions = [store.create({"v": "x" * 50}, ttl=10.0 if i < 3 else 1000.0) for i in range(10)]
    store.sync()

    def log_size() -> int:
        return sum(p.stat().st_size for p in Path(store_dir).glob("*.log"))

    s = store.stats()
    assert s.keys() >= STATS_KEYS
    # before any snapshot, live bytes are estimated at 256 a session
    assert s["sessions"] == 10 and s["snapshot_bytes"] == 0 and s["live_bytes_estimate"] == 2560
    assert s["log_bytes"] == log_size()
    assert s["disk_to_live_ratio"] == pytest.approx(s["log_bytes"] / 2560)
    assert s["memory_bytes_estimate"] > 10 * 50
    assert s["last_compaction"] is None and s["last_gc"] is None
    clock.advance(11)
    s = store.stats()
    assert s["sessions"] == 7 and s["stored_sessions"] == 10
    assert store.gc() == 3
    s = store.stats()
    assert s["sessions"] == 7 and s["last_gc"] is not None and s["last_gc"]["removed"] == 3
    c = store.compact()
    snap = Path(store_dir) / f"{c.generation:016x}.snap"
    s = store.stats()
    assert s["last_compaction"] == c and c.sessions == 7
    assert s["snapshot_bytes"] == snap.stat().st_size == c.snapshot_bytes
    assert s["live_bytes_estimate"] == c.snapshot_bytes
    assert s["log_bytes"] == log_size()
    assert s["disk_to_live_ratio"] == pytest.approx(
        (s["log_bytes"] + s["snapshot_bytes"]) / c.snapshot_bytes
    )
    for x in sessions[3:]:
        x["v"] = "y" * 500
    s = store.stats()
    assert s["log_bytes"] == log_size() and s["disk_to_live_ratio"] > 2
    store.close()


def test_max_sessions(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, max_sessions=3, **QUIET)
    seen: list[tuple[str, str]] = []
    store.on_destroy(lambda info, why: seen.append((info.ref, why)))
    a = store.create(ttl=10.0)
    b = store.create()
    c = store.create()
    assert store.last_gc is None
    with pytest.raises(walsess.StoreFull):
        store.create()
    assert store.last_gc is not None, "StoreFull must come after a gc attempt"
    assert len(store) == 3 and all(store.exists(s.id) for s in (a, b, c))  # none evicted
    clock.advance(11)  # a has expired: the next create collects it to make room
    d = store.create({"d": 1})
    assert seen == [(a.ref, "expired")]
    assert destroys(store_dir) == [(sid(a), DestroyReason.EXPIRED)]
    assert len(store) == 3 and all(store.exists(s.id) for s in (b, c, d))
    with pytest.raises(walsess.StoreFull):
        store.create()
    assert all(store.exists(s.id) for s in (b, c, d)) and len(seen) == 1
    assert store.destroy(b.id)
    e = store.create()
    assert len(store) == 3 and store.exists(e.id)
    store._table._check()
    store.close()
    with pytest.raises(walsess.ValidationError):
        walsess.open(store_dir, clock=clock, max_sessions=0, **QUIET)
