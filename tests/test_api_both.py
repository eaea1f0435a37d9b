"""The Store and Session API, the same behaviour on every store.

Each test runs four times through the ``any_store`` / ``open_any`` fixtures
(tests/conftest.py): on the embedded :class:`walsess.Store`, on a
:class:`walsess.RedisStore` on a real single ``redis-server``, on one on a
real 3-master Redis Cluster, and on one made from a Sentinel client
(``Sentinel(...).master_for``) on a real primary, replica and Sentinel.
Time is the injected clock: no test sleeps. Tests that mean something for
one store only live elsewhere and say so by name (tests/test_store.py: the
log, reopening; tests/test_redis_store.py: hash tags, Redis TTLs, the owner
index, connection failures; tests/test_redis_sentinel.py: failover).
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import pytest
from conftest import AnyStore, FakeClock

import walsess
from walsess import record as r
from walsess.request import Action, RequestSession


def test_the_issue_example(any_store: AnyStore, clock: FakeClock) -> None:
    store = any_store
    s = store.create({"user_id": 42}, ttl=3600, user="42")
    s["cart"] = [1, 2]
    s.update(a=1, b=2)
    del s["a"]
    assert dict(s) == {"user_id": 42, "cart": [1, 2], "b": 2}
    assert s.get("cart") == [1, 2] and s.get("nope", 7) == 7 and len(s) == 3
    assert s.user == "42" and s.created_at == clock.now and s.expires_at == clock.now + 3600
    assert len(s.ref) == 16 and s.ref not in s.id
    got = store.get(s.id)
    assert got is not None and got.to_dict() == dict(s) and got == s
    assert store.exists(s.id) and s.id in store and len(store) == 1
    new = store.regenerate(s.id)
    assert store.get(s.id) is None and store.get(new.id) is not None
    with pytest.raises(walsess.SessionNotFound):
        s["x"] = 1
    assert store.touch(new.id, ttl=10)
    assert new.expires_at == clock.now + 10 and new.ttl == 10
    new.clear()
    assert dict(new) == {}
    assert store.destroy(new.id) and not store.destroy(new.id)
    assert len(store) == 0 and store.stats()["sessions"] == 0


def test_reads_return_copies(any_store: AnyStore) -> None:
    s = any_store.create({"l": [1]})
    s["l"].append(2)
    assert s["l"] == [1]


def test_revoke_by_ref(any_store: AnyStore) -> None:
    store = any_store
    s = store.create({"a": 1})
    assert not store.revoke("0" * 16) and not store.revoke("xyz") and not store.revoke(s.id)
    assert store.revoke(s.ref) and store.get(s.id) is None and not store.revoke(s.ref)


def test_a_session_without_data_is_found(any_store: AnyStore) -> None:
    store = any_store
    empty = store.create()
    cleared = store.create({"#d": 1, "a": 2})
    cleared.clear()
    for s in (empty, cleared):
        got = store.get(s.id)
        assert got is not None and got.ref == s.ref
        assert got.encoded() == {} and len(got) == 0 and got.to_dict() == {}


def test_unknown_tokens(any_store: AnyStore) -> None:
    store = any_store
    store.create()
    for bad in ("", "nope", "x" * 10_000, 42, None, b"bytes", "\udc80"):
        assert store.get(bad) is None  # type: ignore[arg-type]
        assert not store.exists(bad)  # type: ignore[arg-type]
        assert not store.destroy(bad)  # type: ignore[arg-type]
        assert not store.touch(bad)  # type: ignore[arg-type]
    with pytest.raises(walsess.SessionNotFound):
        store.regenerate("nope")


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (lambda s, st: s.__setitem__("k", {1, 2}), walsess.CodecError),
        (lambda s, st: s.__setitem__("k", float("nan")), walsess.CodecError),
        (lambda s, st: s.__setitem__("k", object()), walsess.CodecError),
        (lambda s, st: s.__setitem__(1, "v"), walsess.InvalidKey),
        (lambda s, st: s.__setitem__(b"k", "v"), walsess.InvalidKey),
        (lambda s, st: s.__setitem__("k" * 65536, "v"), walsess.InvalidKey),
        (lambda s, st: s.__setitem__("k", "x" * 2000), walsess.ValueTooLarge),
        (lambda s, st: s.update(ok=1, bad={1}), walsess.CodecError),
        (lambda s, st: s.update({"ok": 1, 2: "v"}), walsess.InvalidKey),
        (lambda s, st: s.update(7), walsess.ValidationError),
        (lambda s, st: s.__delitem__("missing"), KeyError),
        (lambda s, st: s.write_encoded({"k": "not bytes"}), walsess.ValidationError),
        (lambda s, st: st.create({"k": {1}}), walsess.CodecError),
        (lambda s, st: st.create({3: 1}), walsess.InvalidKey),
        (lambda s, st: st.create([("k", 1)]), walsess.ValidationError),
        (lambda s, st: st.create(ttl=0), walsess.ValidationError),
        (lambda s, st: st.create(ttl=float("inf")), walsess.ValidationError),
        (lambda s, st: st.create(ttl="10"), walsess.ValidationError),
        (lambda s, st: st.create(user=42), walsess.ValidationError),
        (lambda s, st: st.create(meta={"x": {1}}), walsess.CodecError),
        (lambda s, st: st.touch(s.id, ttl=-1), walsess.ValidationError),
        (lambda s, st: st.regenerate(s.id, user=42), walsess.ValidationError),
        (lambda s, st: st.sessions_of(None), walsess.ValidationError),
        (lambda s, st: st.destroy_user("u", keep="one string"), walsess.ValidationError),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    open_any: Any, clock: FakeClock, action: Any, error: type[Exception]
) -> None:
    store = open_any(max_value_bytes=1000)
    s = store.create({"k": 1}, user="u")
    before = [(i.ref, i.user, i.expires_at) for i in store.sessions()]
    log = None if not isinstance(store, walsess.Store) else store.stats()["records_appended"]
    with pytest.raises(error) as info:
        action(s, store)
    if error is not KeyError:
        assert isinstance(info.value, walsess.WalsessError)
    assert dict(s) == {"k": 1} and len(store) == 1 and store.get(s.id) == s
    assert [(i.ref, i.user, i.expires_at) for i in store.sessions()] == before
    if log is not None:  # the embedded store: not a byte of it logged either
        assert store.stats()["records_appended"] == log


def test_closed_store(open_any: Any) -> None:
    store = open_any()
    s = store.create({"a": 1})
    store.close()
    store.close()  # idempotent
    for action in (
        lambda: store.create(),
        lambda: store.get(s.id),
        lambda: store.exists(s.id),
        lambda: s.__setitem__("a", 2),
        lambda: s["a"],
        lambda: len(store),
        lambda: store.sessions_of("u"),
        *([store.sync] if isinstance(store, walsess.Store) else [store.ping]),
    ):
        with pytest.raises(walsess.StoreClosed):
            action()


def test_pickle_only_by_name(open_any: Any) -> None:
    with pytest.raises(walsess.CodecError):
        open_any().create({"t": (1, 2)})["b"] = b"bytes"
    store = open_any(codec="pickle")
    s = store.create({"b": b"bytes", "t": (1, 2)})
    got = store.get(s.id)
    assert got is not None and got["b"] == b"bytes" and got["t"] == (1, 2)


def test_each_change_is_seen_by_every_handle(any_store: AnyStore) -> None:
    s = any_store.create({"a": 1})
    other = any_store.get(s.id)
    assert other is not None
    s["b"] = 2
    assert other.to_dict() == {"a": 1, "b": 2} and other["b"] == 2 and "b" in other
    other.replace({"c": 3})
    assert dict(s) == {"c": 3} and list(s) == ["c"] and "a" not in s
    s.write_encoded({"d": any_store.codec.encode([4]), "c": None, "absent": None})
    assert other.encoded() == {"d": b"[4]"}


def test_update_and_clear_are_one_change(any_store: AnyStore) -> None:
    s = any_store.create({"keep": 0})
    s.update([("a", 1), ("b", 2)], c=3)
    with pytest.raises(walsess.CodecError):
        s.update(a=9, bad={1})
    assert dict(s) == {"keep": 0, "a": 1, "b": 2, "c": 3}
    s.clear()
    assert dict(s) == {} and len(s) == 0
    s.replace([("x", 1), ("x", 2)])  # the last value of a key wins, as in a dict
    assert dict(s) == {"x": 2}


# -- expiry ---------------------------------------------------------------------


def test_idle_expiry_and_sliding(any_store: AnyStore, clock: FakeClock) -> None:
    store = any_store
    s = store.create({"a": 1}, ttl=100)
    clock.advance(99)
    assert store.get(s.id) is not None  # extends to now + 100
    clock.advance(99)
    assert store.exists(s.id)  # exists does not extend
    clock.advance(1)
    assert store.get(s.id) is None and not store.exists(s.id) and len(store) == 0
    with pytest.raises(walsess.SessionNotFound, match="expired"):
        s["a"]
    with pytest.raises(walsess.SessionNotFound):
        s["b"] = 2
    assert not store.destroy(s.id) and not store.touch(s.id) and not store.revoke(s.ref)


def test_max_lifetime_is_absolute(open_any: Any, clock: FakeClock) -> None:
    store = open_any(max_lifetime=250)
    s = store.create(ttl=100)
    for _ in range(4):
        clock.advance(60)
        assert store.get(s.id) is not None
    clock.advance(10)
    assert store.get(s.id) is None


def test_reads_extend_the_deadline_within_the_granularity(open_any: Any, clock: FakeClock) -> None:
    store = open_any(touch_granularity=60)
    s = store.create(ttl=1800)
    for _ in range(200):
        clock.advance(7)
        assert store.get(s.id) is not None
        assert clock.now + 1800 - 60 <= s.expires_at <= clock.now + 1800


def test_touch_sets_the_idle_timeout(any_store: AnyStore, clock: FakeClock) -> None:
    s = any_store.create(ttl=100)
    clock.advance(50)
    assert any_store.touch(s.id) and s.expires_at == clock.now + 100
    assert any_store.touch(s.id, ttl=5) and s.ttl == 5
    clock.advance(5)
    assert not any_store.exists(s.id)


def test_gc_removes_the_expired_and_runs_their_hooks(any_store: AnyStore, clock: FakeClock) -> None:
    seen: list[tuple[str, str | None, dict[str, Any] | None, str]] = []
    any_store.on_destroy(lambda info, why: seen.append((info.ref, info.user, info.data, why)))
    old = [any_store.create({"i": i}, ttl=10, user="u" if i % 2 else None) for i in range(6)]
    young = any_store.create({"young": True}, ttl=100, user="u")
    clock.advance(10)
    assert any_store.gc() == 6 and any_store.gc() == 0
    assert sorted(seen, key=lambda x: x[0]) == sorted(
        ((s.ref, "u" if i % 2 else None, {"i": i}, "expired") for i, s in enumerate(old)),
        key=lambda x: x[0],
    )
    assert [i.ref for i in any_store.sessions_of("u")] == [young.ref] and len(any_store) == 1


# -- owners, listings, hooks -------------------------------------------------------


def test_sessions_of_a_user_and_destroy_user(any_store: AnyStore, clock: FakeClock) -> None:
    store = any_store
    seen: list[tuple[str, str]] = []
    store.on_destroy(lambda info, why: seen.append((info.ref, why)))
    mine = []
    for i in range(5):
        mine.append(store.create({"i": i}, user="alice", meta={"device": i}))
        clock.advance(1)
    bob = store.create(user="bob")
    nobody = store.create()
    infos = store.sessions_of("alice")
    assert [i.ref for i in infos] == [s.ref for s in mine]  # oldest first
    assert [i.meta for i in infos] == [{"device": i} for i in range(5)]
    assert all(i.user == "alice" and i.data is None for i in infos)
    assert {i.ref for i in store.sessions()} == {s.ref for s in [*mine, bob, nobody]}
    assert store.sessions_of("nobody") == []
    assert store.destroy_user("alice", keep=[mine[0].id, mine[1].ref]) == 3
    assert [i.ref for i in store.sessions_of("alice")] == [mine[0].ref, mine[1].ref]
    assert sorted(seen) == sorted((s.ref, "revoked") for s in mine[2:])
    assert store.get(mine[2].id) is None and store.get(bob.id) is not None
    assert store.destroy_user("alice") == 2 and store.sessions_of("alice") == []


def test_hooks_see_the_reason_and_the_last_data(any_store: AnyStore) -> None:
    store = any_store
    seen: list[tuple[str, dict[str, Any] | None, str]] = []
    stop = store.on_destroy(lambda info, why: seen.append((info.ref, info.data, why)))
    store.on_destroy(lambda info, why: 1 / 0)  # a failing hook changes nothing
    a, b, c = (store.create({"n": n}) for n in range(3))
    assert store.destroy(a.id)
    new = store.regenerate(b.id)
    assert store.revoke(c.ref)
    assert seen == [(a.ref, {"n": 0}, "destroyed"), (b.ref, {"n": 1}, "regenerated"),
                    (c.ref, {"n": 2}, "revoked")]  # fmt: skip
    stop()
    store.destroy(new.id)
    assert len(seen) == 3


def test_regenerate_with_a_new_owner(any_store: AnyStore, clock: FakeClock) -> None:
    """A login: new token, same data and expiry, and the session now listed under
    its user; the old token and handles are dead, hooks say "regenerated"."""
    store = any_store
    seen: list[tuple[str, str | None, str]] = []
    store.on_destroy(lambda info, reason: seen.append((info.ref, info.user, reason)))
    s = store.create({"cart": [1]}, ttl=100, meta={"agent": "x"}, user="before")
    created = s.created_at
    clock.advance(10)
    new = store.regenerate(s.id, user="42")
    assert store.get(s.id) is None and new.id != s.id
    with pytest.raises(walsess.SessionNotFound):
        s["cart"]
    assert new.to_dict() == {"cart": [1]} and new.user == "42"
    assert new.meta == {"agent": "x"} and new.ttl == 100 and new.created_at == created
    assert [i.ref for i in store.sessions_of("42")] == [new.ref]
    assert store.sessions_of("before") == []
    assert seen == [(s.ref, "before", "regenerated")]
    again = store.regenerate(new.id)  # keeps the owner
    assert again.user == "42" and store.get(new.id) is None
    assert [i.ref for i in store.sessions_of("42")] == [again.ref]
    nobody = store.regenerate(again.id, user=None)
    assert nobody.user is None and store.sessions_of("42") == [] and len(store) == 1


def test_tokens_are_256_bit_and_unique(any_store: AnyStore) -> None:
    toks = {any_store.create().id for _ in range(200)}
    assert len(toks) == 200
    for t in toks:
        assert len(base64.urlsafe_b64decode(t + "=")) == 32


def test_a_session_holds_at_most_max_keys(any_store: AnyStore) -> None:
    store = any_store
    limit = r.MAX_KEYS
    full = {f"k{i}": 0 for i in range(limit)}
    with pytest.raises(walsess.TooManyKeys, match="65,535"):
        store.create({**full, "one more": 1})
    assert len(store) == 0
    s = store.create(full)
    with pytest.raises(walsess.TooManyKeys):
        s["one more"] = 1
    with pytest.raises(walsess.TooManyKeys):
        s.update({"one more": 1})
    with pytest.raises(walsess.TooManyKeys):
        s.replace({**full, "one more": 1})
    assert len(s) == limit and "one more" not in s
    s["k0"] = 1  # changing a key it has is fine
    s.update([("k1", None)])
    del s["k2"]
    s["new"] = 1  # back under the limit after a delete
    assert len(s) == limit
    with pytest.raises(walsess.TooManyKeys, match="one change"):
        s.write_encoded({f"x{i}": None for i in range(limit + 1)})


def test_thread_safety(any_store: AnyStore) -> None:
    store = any_store
    sessions = [store.create() for _ in range(8)]

    def work(i: int) -> None:
        for j in range(100):
            sessions[i][f"k{j % 7}"] = j
            sessions[(i + 1) % 8].get("k0")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {
        i: {f"k{k}": max(j for j in range(100) if j % 7 == k) for k in range(7)} for i in range(8)
    }
    for i, s in enumerate(sessions):
        got = store.get(s.id)
        assert got is not None and dict(got) == expected[i]


# -- the request seam every integration uses ------------------------------------------


def test_request_views_keep_both_overlapping_changes(any_store: AnyStore) -> None:
    first = RequestSession(any_store, None)
    first["a"] = 1
    out = first.commit()
    assert out.action is Action.SET and out.token is not None
    one, two = RequestSession(any_store, out.token), RequestSession(any_store, out.token)
    one["b"] = [1]
    two["c"] = 2
    assert one.commit().action is Action.NONE and two.commit().action is Action.NONE
    again = any_store.get(out.token)
    assert again is not None and dict(again) == {"a": 1, "b": [1], "c": 2}


def test_request_login_and_logout(any_store: AnyStore) -> None:
    view = RequestSession(any_store, None)
    view["cart"] = [1]
    token = view.commit().token
    login = RequestSession(any_store, token)
    login.regenerate(user="7")
    out = login.commit()
    assert out.action is Action.SET and out.token != token and any_store.get(token) is None
    assert [i.user for i in any_store.sessions_of("7")] == ["7"]
    logout = RequestSession(any_store, out.token)
    logout.destroy()
    assert logout.commit().action is Action.DELETE and any_store.get(out.token) is None
