"""The request-scoped seam (walsess.request.RequestSession) that every integration uses.

The state machine interleaves several requests on one session (each loads,
changes some keys, commits, in any order) and checks the store against a
model of per-key merge: a commit changes exactly the keys whose encoding its
request changed, whatever other requests committed meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import FakeClock
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

import walsess
from walsess.request import Action, RequestSession


def records(store: walsess.Store) -> int:
    return int(store.stats()["records_appended"])


def stored(store: walsess.Store, token: str) -> dict[str, Any]:
    s = store.get(token)
    assert s is not None
    return s.to_dict()


# -- laziness, nothing for nothing ---------------------------------------------------


def test_untouched_view_does_no_lookup_and_no_write(store: walsess.Store, clock: FakeClock) -> None:
    s = store.create({"a": 1}, ttl=100)
    clock.advance(90)  # a lookup would extend the idle deadline past 100
    before = records(store)
    view = RequestSession(store, s.id)
    assert view.commit() == walsess.request.Outcome(Action.NONE)
    assert not view.loaded
    clock.advance(20)
    assert store.get(s.id) is None  # nobody extended it
    assert records(store) == before


def test_storing_nothing_creates_nothing(store: walsess.Store) -> None:
    view = RequestSession(store, None)
    assert view.get("user") is None and "x" not in view and len(view) == 0
    out = view.commit()
    assert out.action is Action.NONE and out.token is None
    assert len(store) == 0 and records(store) == 0


def test_unchanged_request_writes_no_record(store: walsess.Store) -> None:
    s = store.create({"a": [1, 2], "b": {"c": "d"}, "n": 5})
    before = records(store)
    view = RequestSession(store, s.id)
    assert view["a"] == [1, 2] and dict(view.items()) == {"a": [1, 2], "b": {"c": "d"}, "n": 5}
    view["n"] = 5  # the same value again is no change
    assert view.changes() == {}
    assert view.commit().action is Action.NONE
    assert records(store) == before


def test_nested_change_is_saved_without_a_flag(
    store: walsess.Store, store_dir: str, clock: FakeClock
) -> None:
    s = store.create({"cart": [1, 2], "prefs": {"theme": "dark"}})
    view = RequestSession(store, s.id)
    view["cart"].append(3)
    view["prefs"]["lang"] = "fr"
    before = records(store)
    view.commit()
    assert records(store) == before + 1  # both keys in one record
    token = s.id
    store.close()
    with walsess.open(store_dir, clock=clock) as again:
        assert stored(again, token) == {"cart": [1, 2, 3], "prefs": {"theme": "dark", "lang": "fr"}}


def test_values_never_read_are_never_decoded(store: walsess.Store) -> None:
    """A key whose stored bytes are not valid for the codec any more (say, a value
    of an older app version) costs nothing and breaks nothing unless read."""
    s = store.create({"ok": 1, "other": 2})
    s.write_encoded({"broken": b"{not json"})
    view = RequestSession(store, s.id)
    view["ok"] += 1
    view.commit()
    assert store.get(s.id).encoded()["broken"] == b"{not json"  # type: ignore[union-attr]
    assert stored_key(store, s.id, "ok") == 2


def stored_key(store: walsess.Store, token: str, key: str) -> Any:
    s = store.get(token)
    assert s is not None
    return s[key]


# -- tokens: fixation, login, logout ---------------------------------------------------


@pytest.mark.parametrize("cookie", ["", "x", "not-a-token", "\x00" * 600, "A" * 43])
def test_unknown_token_is_never_adopted(store: walsess.Store, cookie: str) -> None:
    view = RequestSession(store, cookie)
    assert not view.exists and view.token is None
    view["a"] = 1
    out = view.commit()
    assert out.action is Action.SET and out.token is not None and out.token != cookie
    assert store.get(cookie) is None and stored(store, out.token) == {"a": 1}


def test_expired_token_gets_a_new_session(store: walsess.Store, clock: FakeClock) -> None:
    s = store.create({"old": 1}, ttl=10)
    clock.advance(11)
    view = RequestSession(store, s.id)
    assert "old" not in view
    view["new"] = 2
    out = view.commit()
    assert out.token != s.id and stored(store, out.token or "") == {"new": 2}


def test_regenerate_keeps_data_changes_token_and_sets_owner(store: walsess.Store) -> None:
    s = store.create({"cart": [1]})
    view = RequestSession(store, s.id)
    view["cart"].append(2)
    view.regenerate(user="42")
    assert store.get(s.id) is None  # the old token is dead at once
    view["user_id"] = 42
    out = view.commit(ttl=600)
    assert out.action is Action.SET and out.token == view.token and out.token != s.id
    assert stored(store, out.token or "") == {"cart": [1, 2], "user_id": 42}
    assert [i.ref for i in store.sessions_of("42")] == [store.get(out.token or "").ref]  # type: ignore[union-attr]
    assert out.max_age == 600


def test_regenerate_without_a_session_creates_one_for_the_user(store: walsess.Store) -> None:
    view = RequestSession(store, "unknown")
    view.regenerate(user="u1")
    view["x"] = 1
    out = view.commit()
    assert out.token and out.token != "unknown"
    assert len(store.sessions_of("u1")) == 1


def test_destroy_deletes_cookie_and_later_data_goes_to_a_new_session(
    store: walsess.Store,
) -> None:
    s = store.create({"user": "ann"})
    view = RequestSession(store, s.id)
    view.destroy()
    assert store.get(s.id) is None and len(view) == 0
    assert view.commit().action is Action.DELETE

    cookieless = RequestSession(store, None)
    cookieless.destroy()  # a logout from a client with no cookie: nothing to delete
    assert cookieless.commit().action is Action.NONE

    s2 = store.create({"user": "bob"})
    view = RequestSession(store, s2.id)
    view.destroy()
    view["flash"] = "logged out"
    out = view.commit()
    assert out.action is Action.SET and out.token not in (None, s2.id)
    assert stored(store, out.token or "") == {"flash": "logged out"}


@pytest.mark.parametrize("ttl", [None, 50.0])
@pytest.mark.parametrize("change", [True, False])
def test_commit_after_a_logout_elsewhere_drops_changes(
    store: walsess.Store, ttl: float | None, change: bool
) -> None:
    s = store.create({"user": "ann"})
    view = RequestSession(store, s.id)
    if change:
        view["cart"] = [1]
    else:
        assert view["user"] == "ann"
    store.destroy(s.id)  # another request logged out meanwhile
    out = view.commit(ttl=ttl, refresh=True)
    assert out.action is Action.DELETE and out.interrupted
    assert len(store) == 0  # the logged-out session is not brought back
    assert view.commit().action is Action.NONE and len(store) == 0  # nor by a second commit


# -- per-key merge -----------------------------------------------------------------------


def test_overlapping_requests_keep_both_changes(store: walsess.Store) -> None:
    s = store.create({"a": 0, "b": 0, "c": 0})
    first, second = RequestSession(store, s.id), RequestSession(store, s.id)
    first["a"] += 1
    second["b"] += 1
    del second["c"]
    first.commit()
    second.commit()
    assert stored(store, s.id) == {"a": 1, "b": 1}


def test_clear_deletes_only_the_keys_the_request_saw(store: walsess.Store) -> None:
    s = store.create({"a": 1, "b": 2})
    clearing, adding = RequestSession(store, s.id), RequestSession(store, s.id)
    clearing.clear()
    adding["new"] = 3
    adding.commit()
    clearing.commit()
    assert stored(store, s.id) == {"new": 3}


def test_ttl_change_is_logged_once_and_resends_the_cookie(
    store: walsess.Store, clock: FakeClock
) -> None:
    s = store.create({"a": 1}, ttl=100)
    view = RequestSession(store, s.id)
    assert view["a"] == 1
    out = view.commit(ttl=3600)
    assert out.action is Action.SET and out.max_age == 3600
    assert store.get(s.id).ttl == 3600  # type: ignore[union-attr]
    before = records(store)
    again = RequestSession(store, s.id)
    assert again["a"] == 1
    assert again.commit(ttl=3600).action is Action.NONE
    assert again.commit(ttl=3600, refresh=True).action is Action.SET
    assert records(store) == before


def test_bad_value_names_its_key_and_writes_nothing(store: walsess.Store) -> None:
    s = store.create({"a": 1})
    view = RequestSession(store, s.id)
    view["a"] = 2
    view["bad"] = {1, 2}
    before = records(store)
    with pytest.raises(walsess.CodecError, match="'bad'"):
        view.commit()
    assert records(store) == before and stored(store, s.id) == {"a": 1}


def test_second_commit_writes_nothing_more(store: walsess.Store) -> None:
    view = RequestSession(store, None)
    view["a"] = [1]
    token = view.commit().token
    before = records(store)
    assert view.commit().action is Action.NONE and records(store) == before
    view["a"].append(2)
    view.commit()
    assert stored(store, token or "") == {"a": [1, 2]}


def test_always_mode_load_defers_the_touch_fsync_to_commit(
    store_dir: str, clock: FakeClock
) -> None:
    with walsess.open(store_dir, durability="always", clock=clock) as store:
        s = store.create({"a": 1}, ttl=1000)
        synced = store.stats()["fsyncs"]
        clock.advance(500)  # far enough for a read to log a TOUCH
        view = RequestSession(store, s.id)
        assert view["a"] == 1
        assert store.stats()["fsyncs"] == synced  # the load did not wait
        view.commit()
        assert store.stats()["fsyncs"] == synced + 1  # the commit did


# -- the state machine ----------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "cart"])
VALUES = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=3))


def _enc(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Request:
    def __init__(self, view: RequestSession, seen: dict[str, Any]) -> None:
        self.view = view
        self.seen = seen  # the model's session as this request loaded it
        self.now: dict[str, Any] = json.loads(json.dumps(seen))


class InterleavedRequests(RuleBasedStateMachine):
    """Requests on one session load, change and commit in any interleaving."""

    requests = Bundle("requests")

    @initialize()
    def open_store(self) -> None:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.store = walsess.open(self.tmp.name + "/s", cleanup_interval=None)
        self.token = self.store.create({"a": 0}).id
        self.model: dict[str, Any] = {"a": 0}

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    @rule(target=requests)
    def begin(self) -> Request:
        view = RequestSession(self.store, self.token)
        len(view)  # load now, as the model does
        return Request(view, json.loads(json.dumps(self.model)))

    @rule(req=requests, key=KEYS, value=VALUES)
    def set_key(self, req: Request, key: str, value: Any) -> None:
        req.view[key] = value
        req.now[key] = json.loads(json.dumps(value))

    @rule(req=requests, key=KEYS)
    def delete_key(self, req: Request, key: str) -> None:
        if key in req.now:
            del req.view[key]
            del req.now[key]

    @rule(req=requests, key=KEYS, item=st.integers(0, 9))
    def append_nested(self, req: Request, key: str, item: int) -> None:
        if isinstance(req.now.get(key), list):
            req.view[key].append(item)
            req.now[key].append(item)

    @rule(req=requests)
    def clear(self, req: Request) -> None:
        req.view.clear()
        req.now.clear()

    @rule(req=consumes(requests))
    def commit(self, req: Request) -> None:
        req.view.commit()
        for key, value in req.now.items():
            if key not in req.seen or _enc(req.seen[key]) != _enc(value):
                self.model[key] = value
        for key in req.seen:
            if key not in req.now:
                self.model.pop(key, None)

    @invariant()
    def store_equals_model(self) -> None:
        if hasattr(self, "store"):
            assert stored(self.store, self.token) == self.model


TestInterleavedRequests = InterleavedRequests.TestCase


@pytest.mark.parametrize(
    ("header", "values"),
    [
        ("", []),
        ("session=abc", ["abc"]),
        ("a=1; session=tok; b=2", ["tok"]),
        (" session = x ;session=y", ["x", "y"]),
        ("xsession=1; session_id=2; session=3", ["3"]),
        ("session=", [""]),
        ('session="quoted"', ["quoted"]),
        ('session="', ['"']),
        ("a=1", []),
    ],
)
def test_cookie_finder(header: str, values: list[str]) -> None:
    assert walsess.request.cookie_finder("session")(header) == values
    assert walsess.request.cookie_finder("a.b")("axb=1; a.b=2") == ["2"]  # the name is literal
