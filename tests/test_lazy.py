"""Lazily decoded sessions (issue 11): opening decodes no session's data.

A session loaded from a snapshot BLOCK or replayed from a CREATE keeps its
item block packed until it is first read or changed; changes replayed before
then wait beside it; compaction copies an unread session's block as it is.
"""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

import walsess
from walsess import record as r
from walsess.table import SessionState, SessionTable

QUIET: dict[str, Any] = {"cleanup_interval": None, "compact_ratio": None}


def states(store: walsess.Store) -> list[SessionState]:
    return store._table.states()


def build(path: str, clock: FakeClock, n: int = 20, compact: bool = True) -> dict[str, Any]:
    made = {}
    with walsess.open(path, clock=clock, **QUIET) as store:
        for i in range(n):
            s = store.create({"i": i, "name": f"n{i}", "flag": i % 2 == 0}, user=f"u{i % 3}")
            made[s.id] = s.to_dict()
        if compact:
            store.compact()
    return made


@pytest.mark.parametrize("compact", [True, False], ids=["snapshot", "log"])
def test_open_decodes_nothing_and_a_read_decodes_one(
    tmp_path: Path, clock: FakeClock, compact: bool
) -> None:
    path = str(tmp_path / "s")
    made = build(path, clock, compact=compact)
    with walsess.open(path, clock=clock, **QUIET) as store:
        assert all(st.packed is not None for st in states(store))
        token = next(iter(made))
        got = store.get(token)
        assert got is not None and got.to_dict() == made[token]
        assert sum(st.packed is None for st in states(store)) == 1
        assert {t: d for t in made if (d := store.get(t).to_dict()) is not None} == made  # type: ignore[union-attr]
        assert all(st.packed is None and st.origin is None for st in states(store))


def test_changes_replayed_before_the_first_read_are_kept_beside_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A one-key MODIFY replayed over a packed session waits beside the block;
    the first read merges them (this once deadlocked: the merge re-entered the
    decode lock)."""
    path = str(tmp_path / "s")
    with walsess.open(path, clock=clock, **QUIET) as store:
        s = store.create({"a": 1, "b": 2})
        store.compact()
        s["b"] = 3  # one-key MODIFY in the log after the snapshot
        s["c"] = 4
        token = s.id
    with walsess.open(path, clock=clock, **QUIET) as store:
        (st,) = states(store)
        assert st.packed is not None
        result: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: result.append(store.get(token).to_dict()))  # type: ignore[union-attr]
        reader.start()
        reader.join(10.0)
        assert not reader.is_alive(), "the first read of a session with replayed changes hung"
        assert result == [{"a": 1, "b": 3, "c": 4}]


def test_compaction_copies_an_unread_session_as_it_is(tmp_path: Path, clock: FakeClock) -> None:
    path = str(tmp_path / "s")
    made = build(path, clock)
    first = next(Path(path).glob("*.snap")).read_bytes()
    with walsess.open(path, clock=clock, **QUIET) as store:
        before = [st.items() for st in states(store)]
        c = store.compact()
        assert all(st.packed is not None for st in states(store)), "compaction decoded"
    second = (Path(path) / f"{c.generation:016x}.snap").read_bytes()
    old_blocks = [b for _, b in r.RecordReader(first) if isinstance(b, r.Block)]
    new_blocks = [b for _, b in r.RecordReader(second) if isinstance(b, r.Block)]
    assert [r.block_items(b) for b in new_blocks] == [r.block_items(b) for b in old_blocks]
    assert sorted(before) == sorted(i for b in new_blocks for i in r.block_items(b))
    with walsess.open(path, clock=clock, **QUIET) as store:
        assert {t: store.get(t).to_dict() for t in made} == made  # type: ignore[union-attr]


def test_concurrent_first_reads_and_writes_agree(tmp_path: Path, clock: FakeClock) -> None:
    path = str(tmp_path / "s")
    made = build(path, clock, n=50)
    with walsess.open(path, clock=clock, **QUIET) as store:
        tokens = list(made)
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def reader(k: int) -> None:
            start.wait()
            try:
                for t in tokens[k::2]:
                    s = store.get(t)
                    assert s is not None
                    assert s["i"] == made[t]["i"]
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def writer(k: int) -> None:
            start.wait()
            try:
                for t in tokens[k::2]:
                    s = store.get(t)
                    assert s is not None
                    s["w"] = k
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(k % 2,)) for k in range(4)]
        threads += [threading.Thread(target=writer, args=(k % 2,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30.0)
        assert not errors, errors
        for t in tokens:
            s = store.get(t)
            assert s is not None and s.to_dict() == {**made[t], "w": tokens.index(t) % 2}
    with walsess.open(path, clock=clock, **QUIET) as store:
        assert all(store.get(t)["w"] == tokens.index(t) % 2 for t in tokens)  # type: ignore[index]


@pytest.mark.parametrize("enabled", [True, False])
def test_open_leaves_the_garbage_collector_as_it_found_it(
    tmp_path: Path, clock: FakeClock, enabled: bool
) -> None:
    path = str(tmp_path / "s")
    build(path, clock, n=5)
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with walsess.open(path, clock=clock, **QUIET):
            assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_open_keeps_objects_the_application_froze_frozen(tmp_path: Path, clock: FakeClock) -> None:
    path = str(tmp_path / "s")
    build(path, clock, n=5)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with walsess.open(path, clock=clock, **QUIET):
            assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_stats_decodes_no_session(tmp_path: Path, clock: FakeClock) -> None:
    path = str(tmp_path / "s")
    build(path, clock)
    with walsess.open(path, clock=clock, **QUIET) as store:
        assert store.stats()["memory_bytes_estimate"] > 0
        assert all(st.packed is not None for st in states(store))


# -- snapshot sessions kept as columns until looked up -------------------------------


def untaken(store: walsess.Store) -> int:
    """How many sessions the table still holds as block columns (no SessionState)."""
    return sum(type(v) is int for v in store._table.by_sid.values())


def test_a_snapshot_session_gets_an_object_only_when_looked_up(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = str(tmp_path / "s")
    made = build(path, clock)
    tokens = list(made)
    with walsess.open(path, clock=clock, **QUIET) as store:
        assert untaken(store) == len(made)
        listed = {i.ref for i in store.sessions()}
        store.stats()
        assert store.snapshot_size() > 0
        store.compact()  # copies every session from the columns
        assert untaken(store) == len(made), "listing, stats or compaction kept objects"
        assert listed == {walsess.tokens.ref_of(walsess.tokens.digest(t)) for t in tokens}
        assert store.get(tokens[0]) is not None
        assert untaken(store) == len(made) - 1
        owned = store.sessions_of("u1")  # takes out u1's sessions, and only those
        assert len(owned) == sum(1 for i in range(len(made)) if i % 3 == 1)
        assert untaken(store) == len(made) - 1 - len(owned)  # session 0 is u0's
        assert store.revoke(owned[0].ref)
        store._table._check()
    with walsess.open(path, clock=clock, **QUIET) as store:  # the compacted snapshot
        got = {t: s.to_dict() for t in tokens if (s := store.get(t)) is not None}
        assert len(got) == len(made) - 1 and all(got[t] == made[t] for t in got)
        store._table._check()


def test_racing_first_lookups_make_one_state_and_never_revive_a_destroyed_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Lookups take no lock, so several threads may find one session's handle
    at once; exactly one SessionState is made, and a session destroyed by one
    thread is not brought back by another that saw its handle before."""
    path = str(tmp_path / "s")
    made = build(path, clock, n=300)
    digests = [walsess.tokens.digest(t) for t in made]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        with walsess.open(path, clock=clock, **QUIET) as store:
            table = store._table
            start = threading.Barrier(5)
            seen: list[list[SessionState | None]] = []
            errors: list[BaseException] = []

            def finder() -> None:
                found: list[SessionState | None] = []
                seen.append(found)
                start.wait()
                found.extend(map(table.find, digests))

            def destroyer() -> None:
                start.wait()
                try:
                    for token in list(made)[::2]:
                        assert store.destroy(token)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=finder) for _ in range(4)]
            threads.append(threading.Thread(target=destroyer))
            for th in threads:
                th.start()
            for th in threads:
                th.join(30.0)
            assert not errors, errors
            for i, digest in enumerate(digests):
                now = table.find(digest)
                if i % 2:
                    assert now is not None
                    assert all(found[i] is now for found in seen), "two states for one session"
                else:
                    assert now is None, "a destroyed session came back"
                    assert all(found[i] is None or found[i].digest == b"" for found in seen)
            table._check()
    finally:
        sys.setswitchinterval(old)


# -- replayed one-key sets noted per SID in bulk mode -------------------------------------

_SIDS = st.sampled_from([1, 2, 5_000_000])  # the last beyond the noted-SID list
_KEYS = st.sampled_from(["a", "b"])
_VALUES = st.binary(max_size=3)
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), _SIDS, st.dictionaries(_KEYS, _VALUES, max_size=2)),
        st.tuples(st.just("set"), _SIDS, _KEYS, _VALUES),
        st.tuples(st.just("modify"), _SIDS, st.booleans(), _KEYS, st.none() | _VALUES),
        st.tuples(st.just("touch"), _SIDS),
        st.tuples(st.just("destroy"), _SIDS),
        st.tuples(st.just("regenerate"), _SIDS, st.integers(0, 255)),
    ),
    max_size=40,
)


def _replayed(steps: list[tuple[Any, ...]], bulk: bool) -> dict[int, dict[str, bytes]]:
    """Every session's data after feeding *steps* to a table through replay's
    entry points, in bulk mode (as opening does) or not (each applied at once)."""
    table = SessionTable()
    if bulk:
        table.begin_bulk()
    table.reading("<steps>", 1 << 20)
    for n, (op, sid, *args) in enumerate(steps):
        if op == "create":
            items = r.item_block((k.encode(), v) for k, v in args[0].items())
            digest = bytes([sid % 251, n % 251]) + bytes(30)
            table.create_packed(sid, digest, 0.0, 60.0, 1e9, 1e9, None, None, 0, items)
        elif op == "set":
            table.set_key(sid, args[0], args[1])
        elif op == "modify":
            table.apply(r.Modify(sid, args[0], ((args[1], args[2]),)))
        elif op == "touch":
            table.apply(r.Touch(sid, 2e9, 60.0))
        elif op == "destroy":
            table.apply(r.Destroy(sid, 0))
        else:
            table.apply(r.ChangeId(sid, bytes([args[0], 7]) + bytes(30)))
    if bulk:
        table.end_bulk()
    return {s.sid: dict(s.data) for s in table.states()}


@settings(max_examples=1000)
@given(_STEPS)
def test_noted_sets_end_as_sets_applied_at_once(steps: list[tuple[Any, ...]]) -> None:
    """Bulk replay notes one-key sets per SID and applies them before the SID's
    next other record or at the end; the sessions must come out as if each set
    had been applied when it was read (including sets to a SID with no live
    session, which are dropped, and a SID destroyed and created again)."""
    try:
        expected = _replayed(steps, bulk=False)
    except walsess.CorruptionError:
        return  # two live sessions given one ref by the generated digests
    assert _replayed(steps, bulk=True) == expected
