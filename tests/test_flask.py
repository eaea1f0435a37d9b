"""walsess.flask through Flask's own test client.

Every test drives a real Flask application with ``app.test_client()`` (two
clients in two threads when requests must overlap) and checks real effects:
the Set-Cookie headers and their attributes, the store's record counter and
session count, and the data read back from a fresh reopen of the store
directory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from conftest import appended, parse_cookie, reopen_data
from flask import Flask, flash, get_flashed_messages, jsonify, request, session
from flask.testing import FlaskClient
from werkzeug.http import parse_date
from werkzeug.test import TestResponse

import walsess
import walsess.flask
from walsess.clock import ManualClock
from walsess.flask import FlaskSession, init_app, logout, regenerate
from walsess.tokens import new_token

DAY31 = 31 * 24 * 60 * 60  # Flask's default PERMANENT_SESSION_LIFETIME
DEFAULT_TTL = 1800.0  # walsess.open's default_ttl

# -- helpers ---------------------------------------------------------------------------------


def set_cookies(resp: TestResponse) -> list[str]:
    return resp.headers.getlist("Set-Cookie")


def the_cookie(resp: TestResponse, name: str = "session") -> tuple[str, dict[str, str]]:
    """The one Set-Cookie for *name*: (value, attributes). Fails if there is none or more."""
    mine = [(v, a) for n, v, a in map(parse_cookie, set_cookies(resp)) if n == name]
    assert len(mine) == 1, f"expected one Set-Cookie for {name!r}, got {set_cookies(resp)}"
    return mine[0]


def is_deletion(attrs: dict[str, str]) -> bool:
    expires = parse_date(attrs.get("expires"))
    return attrs.get("max-age") == "0" and expires is not None and expires.timestamp() == 0


def token_of(client: FlaskClient, name: str = "session") -> str:
    c = client.get_cookie(name)
    assert c is not None, f"the client holds no {name!r} cookie"
    return c.value


# -- the application under test --------------------------------------------------------------


def make_app(store: walsess.Store, **config: Any) -> Flask:
    """A Flask app with walsess sessions and no SECRET_KEY (the cookie carries only a token)."""
    app = Flask(__name__)
    app.config.update(TESTING=True, **config)
    init_app(app, store)

    @app.get("/untouched")
    def untouched() -> str:
        return "no session here"

    @app.get("/read")
    def read() -> Any:
        return jsonify(value=session.get(request.args.get("k", "x")))

    @app.get("/dump")
    def dump() -> Any:
        return jsonify(dict(session))

    @app.post("/put")
    def put() -> str:
        for k, v in request.args.items():
            session[k] = v
        return "ok"

    @app.post("/append")
    def append() -> str:
        session.setdefault("cart", []).append(int(request.args["n"]))
        return "ok"

    @app.post("/login")
    def login() -> str:
        regenerate(user=request.args["user"])
        session["user"] = request.args["user"]
        return "in"

    @app.post("/logout")
    def signout() -> str:
        logout()
        if "then" in request.args:
            session["then"] = request.args["then"]
        return "out"

    @app.post("/permanent")
    def permanent() -> str:
        session.permanent = request.args["on"] == "1"
        return "ok"

    @app.post("/clear")
    def wipe() -> str:
        session.clear()
        return "cleared"

    return app


@pytest.fixture
def app(store: walsess.Store) -> Flask:
    return make_app(store)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def store_app_client(store: walsess.Store) -> FlaskClient:
    return make_app(store).test_client()


def new_session(client: FlaskClient, **values: str) -> str:
    resp = client.post("/put", query_string=values)
    token, _ = the_cookie(resp)
    return token


# -- nothing for nothing -----------------------------------------------------------------------


def test_request_that_stores_nothing_creates_no_session(
    client: FlaskClient, store: walsess.Store
) -> None:
    before = appended(store)
    for path in ("/read", "/dump", "/untouched"):
        resp = client.get(path)
        assert resp.status_code == 200
        assert set_cookies(resp) == []
    assert client.get("/read").headers["Vary"] == "Cookie"  # it read the session
    assert "Vary" not in client.get("/untouched").headers
    assert store.stats()["sessions"] == 0
    assert appended(store) == before
    assert client.get_cookie("session") is None


def test_untouched_request_does_no_lookup(
    client: FlaskClient, store: walsess.Store, clock: ManualClock
) -> None:
    token = new_session(client, x="1")
    store.touch(token, 100)  # a short idle timeout, so a lookup would visibly extend it
    clock.advance(90)
    before = appended(store)
    resp = client.get("/untouched")
    assert resp.status_code == 200
    assert set_cookies(resp) == []
    assert "Vary" not in resp.headers
    assert appended(store) == before
    clock.advance(20)  # 110 s after the last lookup: expired unless the request extended it
    assert not store.exists(token)


def test_touched_request_extends_the_session(
    client: FlaskClient, store: walsess.Store, clock: ManualClock
) -> None:
    # The control for the test above: the same steps with a read do extend it.
    token = new_session(client, x="1")
    store.touch(token, 100)
    clock.advance(90)
    assert client.get("/read").get_json() == {"value": "1"}
    clock.advance(20)
    assert store.exists(token)


def test_unchanged_request_writes_no_record(client: FlaskClient, store: walsess.Store) -> None:
    token = new_session(client, x="1", y="2")
    before = appended(store)
    assert client.get("/read").get_json() == {"value": "1"}
    assert client.get("/dump").get_json() == {"x": "1", "y": "2"}
    resp = client.post("/put", query_string={"x": "1"})  # the value it already has
    assert set_cookies(resp) == []  # a browser-session cookie is not re-sent
    assert appended(store) == before
    assert token_of(client) == token


def test_each_change_is_one_record(
    client: FlaskClient, store: walsess.Store, store_dir: str, clock: ManualClock
) -> None:
    token = new_session(client, x="1")
    before = appended(store)
    client.post("/put", query_string={"x": "2", "y": "3", "z": "4"})
    assert appended(store) == before + 1
    store.close()
    assert reopen_data(store_dir, token, clock) == {"x": "2", "y": "3", "z": "4"}


# -- nested values ---------------------------------------------------------------------------


def test_nested_mutation_is_saved(
    client: FlaskClient, store: walsess.Store, store_dir: str, clock: ManualClock
) -> None:
    client.post("/append", query_string={"n": "1"})
    token = token_of(client)
    before = appended(store)
    for n in (2, 3):
        resp = client.post("/append", query_string={"n": str(n)})
        assert set_cookies(resp) == []
    assert appended(store) == before + 2
    assert client.get("/read", query_string={"k": "cart"}).get_json() == {"value": [1, 2, 3]}
    store.close()
    assert reopen_data(store_dir, token, clock) == {"cart": [1, 2, 3]}


def test_flashed_messages_are_saved_and_consumed(
    app: Flask, client: FlaskClient, store: walsess.Store
) -> None:
    # flash() appends to a list in the session; get_flashed_messages() pops it.
    @app.post("/flash")
    def do_flash() -> str:
        flash("saved!")
        return "ok"

    @app.get("/messages")
    def messages() -> Any:
        return jsonify(get_flashed_messages())

    client.post("/flash")
    client.post("/flash")
    token = token_of(client)
    assert client.get("/messages").get_json() == ["saved!", "saved!"]
    assert client.get("/messages").get_json() == []
    handle = store.get(token)
    assert handle is not None and "_flashes" not in handle


# -- login and logout ------------------------------------------------------------------------


def test_login_regenerate_keeps_data_and_kills_old_token(
    client: FlaskClient, store: walsess.Store, store_dir: str, clock: ManualClock
) -> None:
    old = new_session(client, cart="3 items")
    resp = client.post("/login", query_string={"user": "alice"})
    new, attrs = the_cookie(resp)
    assert new != old
    assert not is_deletion(attrs)
    assert store.get(old) is None
    assert [i.ref for i in store.sessions_of("alice")] == [store.get(new).ref]  # type: ignore[union-attr]
    assert client.get("/dump").get_json() == {"cart": "3 items", "user": "alice"}
    # The old token (a fixation attempt, or a copy an attacker kept) reads nothing.
    other = store_app_client(store)
    other.set_cookie("session", old)
    assert other.get("/dump").get_json() == {}
    store.close()
    assert reopen_data(store_dir, new, clock) == {"cart": "3 items", "user": "alice"}
    assert reopen_data(store_dir, old, clock) is None


def test_login_without_a_session_creates_one_with_owner(
    client: FlaskClient, store: walsess.Store
) -> None:
    resp = client.post("/login", query_string={"user": "bob"})
    token, _ = the_cookie(resp)
    handle = store.get(token)
    assert handle is not None and dict(handle) == {"user": "bob"}
    assert [i.ref for i in store.sessions_of("bob")] == [handle.ref]


def test_logout_destroys_and_deletes_cookie(client: FlaskClient, store: walsess.Store) -> None:
    client.post("/login", query_string={"user": "carol"})
    token = token_of(client)
    resp = client.post("/logout")
    value, attrs = the_cookie(resp)
    assert value == ""
    assert is_deletion(attrs)
    assert attrs["path"] == "/" and "httponly" in attrs and attrs["samesite"] == "Lax"
    assert resp.headers["Vary"] == "Cookie"
    assert client.get_cookie("session") is None
    assert store.get(token) is None
    assert store.stats()["sessions"] == 0
    assert store.sessions_of("carol") == []


def test_store_after_logout_goes_to_a_new_session(
    client: FlaskClient, store: walsess.Store
) -> None:
    old = new_session(client, x="1")
    resp = client.post("/logout", query_string={"then": "bye"})
    new, attrs = the_cookie(resp)
    assert new != old and not is_deletion(attrs)
    assert store.get(old) is None
    handle = store.get(new)
    assert handle is not None and dict(handle) == {"then": "bye"}


def test_helpers_require_init_app(store: walsess.Store) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="x")

    @app.post("/login")
    def login() -> str:
        regenerate(user="u")
        return "in"

    with pytest.raises(RuntimeError, match="init_app"):
        app.test_client().post("/login")
    with pytest.raises(RuntimeError):  # no request at all
        logout()


# -- cookies the store does not know ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["unknown", "expired", "malformed", "empty", "huge"])
def test_bad_cookie_gets_new_token_only_when_storing(
    client: FlaskClient, store: walsess.Store, clock: ManualClock, kind: str
) -> None:
    if kind == "unknown":
        bad = new_token()  # well formed, never issued
    elif kind == "expired":
        bad = store.create({"x": "old"}, ttl=60).id
        clock.advance(61)
    elif kind == "malformed":
        bad = "not-a-token!"
    elif kind == "empty":
        bad = ""
    else:
        bad = "A" * 5000
    headers = {"Cookie": f"session={bad}"}
    before = appended(store)
    resp = client.get("/dump", headers=headers)
    assert resp.get_json() == {}
    assert set_cookies(resp) == []
    assert appended(store) == before
    resp = client.post("/put", query_string={"y": "2"}, headers=headers)
    token, _ = the_cookie(resp)
    assert token != bad
    if bad:
        assert not store.exists(bad)
    handle = store.get(token)
    assert handle is not None and dict(handle) == {"y": "2"}
    assert store.stats()["sessions"] == 1


# -- cookie attributes -----------------------------------------------------------------------


def test_default_cookie_attributes(client: FlaskClient, store: walsess.Store) -> None:
    resp = client.post("/put", query_string={"x": "1"})
    token, attrs = the_cookie(resp)
    assert store.exists(token)
    assert len(token) >= 43  # 256 random bits
    assert attrs == {"httponly": "", "path": "/", "samesite": "Lax"}  # no Max-Age, Expires
    assert resp.headers["Vary"] == "Cookie"


@pytest.mark.parametrize("samesite", ["Strict", "None"])
def test_configured_cookie_attributes(store: walsess.Store, samesite: str) -> None:
    app = make_app(
        store,
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_DOMAIN="example.test",
        SESSION_COOKIE_PATH="/app",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE=samesite,
        SESSION_COOKIE_PARTITIONED=True,
    )
    client = app.test_client()
    resp = client.post("/put", query_string={"x": "1"}, base_url="https://example.test")
    token, attrs = the_cookie(resp, "sid")
    assert store.exists(token)
    assert attrs == {
        "domain": "example.test",
        "secure": "",
        "httponly": "",
        "path": "/app",
        "samesite": samesite,
        "partitioned": "",
    }
    # The client sends it back, under its name, to the app mounted at its path.
    resp = client.get("/read", base_url="https://www.example.test/app")
    assert resp.get_json() == {"value": "1"}
    assert client.get("/read", base_url="https://other.test/app").get_json() == {"value": None}


def test_httponly_can_be_turned_off_and_path_falls_back_to_application_root(
    store: walsess.Store,
) -> None:
    app = make_app(store, SESSION_COOKIE_HTTPONLY=False, APPLICATION_ROOT="/root")
    resp = app.test_client().post("/put", query_string={"x": "1"})
    _, attrs = the_cookie(resp)
    assert attrs == {"path": "/root", "samesite": "Lax"}


# -- permanent sessions ----------------------------------------------------------------------


def test_permanent_session_has_max_age_and_lifetime_ttl(
    store: walsess.Store, clock: ManualClock
) -> None:
    app = make_app(store, PERMANENT_SESSION_LIFETIME=timedelta(hours=2))
    client = app.test_client()
    resp = client.post("/permanent", query_string={"on": "1"})
    token, attrs = the_cookie(resp)
    assert attrs["max-age"] == str(7200)
    expires = parse_date(attrs["expires"])
    assert expires is not None and expires.timestamp() == clock.now + 7200
    handle = store.get(token)
    assert handle is not None and handle.ttl == 7200
    assert dict(handle) == {"_permanent": True}
    # Sliding: an hour later a read extends the session, and the cookie follows.
    clock.advance(3600)
    resp = client.get("/read")
    again, attrs = the_cookie(resp)
    assert again == token
    assert attrs["max-age"] == str(7200)
    expires = parse_date(attrs["expires"])
    assert expires is not None and expires.timestamp() == clock.now + 7200
    assert store.get(token).expires_at == clock.now + 7200  # type: ignore[union-attr]


def test_permanent_cookie_not_refreshed_when_refresh_each_request_is_off(
    store: walsess.Store, clock: ManualClock
) -> None:
    app = make_app(store, SESSION_REFRESH_EACH_REQUEST=False)
    client = app.test_client()
    the_cookie(client.post("/permanent", query_string={"on": "1"}))
    clock.advance(600)
    assert set_cookies(client.get("/read")) == []  # unchanged: cookie left alone
    clock.advance(600)
    resp = client.post("/put", query_string={"x": "1"})  # modified: re-sent, as Flask does
    _, attrs = the_cookie(resp)
    assert attrs["max-age"] == str(DAY31)


def test_toggling_permanent_changes_ttl_and_cookie(
    client: FlaskClient, store: walsess.Store
) -> None:
    token = new_session(client, x="1")
    assert store.get(token).ttl == DEFAULT_TTL  # type: ignore[union-attr]
    resp = client.post("/permanent", query_string={"on": "1"})
    same, attrs = the_cookie(resp)
    assert same == token and attrs["max-age"] == str(DAY31) and "expires" in attrs
    assert store.get(token).ttl == DAY31  # type: ignore[union-attr]
    resp = client.post("/permanent", query_string={"on": "0"})
    same, attrs = the_cookie(resp)  # re-sent as a browser-session cookie
    assert same == token
    assert "max-age" not in attrs and "expires" not in attrs
    assert store.get(token).ttl == DEFAULT_TTL  # type: ignore[union-attr]
    assert client.get("/dump").get_json() == {"x": "1", "_permanent": False}


# -- the SessionMixin attributes -------------------------------------------------------------


def test_mixin_attributes(app: Flask, client: FlaskClient) -> None:
    seen: dict[str, Any] = {}

    @app.post("/flags")
    def flags() -> str:
        seen["type"] = isinstance(session, FlaskSession)
        seen["new"] = session.new
        seen["modified_before"] = session.modified
        if "n" in request.args:
            session.setdefault("cart", []).append(int(request.args["n"]))
        seen["modified_after"] = session.modified
        seen["accessed"] = session.accessed
        return "ok"

    client.post("/flags")
    assert seen == {
        "type": True,
        "new": True,
        "modified_before": False,
        "modified_after": False,
        "accessed": True,
    }
    client.post("/flags", query_string={"n": "1"})
    assert seen["new"] is True and seen["modified_after"] is True
    client.post("/flags", query_string={"n": "2"})  # a nested change, with no flag set
    assert seen["new"] is False
    assert seen["modified_before"] is False and seen["modified_after"] is True


def test_setting_modified_is_accepted_and_writes_nothing_new(
    app: Flask, client: FlaskClient, store: walsess.Store
) -> None:
    @app.post("/mark")
    def mark() -> str:
        session.get("x")
        session.modified = True  # the usual Flask idiom after a nested change
        return "ok"

    new_session(client, x="1")
    before = appended(store)
    assert client.post("/mark").status_code == 200
    assert appended(store) == before


# -- overlapping requests --------------------------------------------------------------------


def run_in_thread(fn: Callable[[], TestResponse]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # reported by the test, not lost in the thread
            out.append(exc)

    t = threading.Thread(target=target)
    t.start()
    return t, out


def test_overlapping_requests_keep_both_changes(
    store: walsess.Store, store_dir: str, clock: ManualClock
) -> None:
    app = make_app(store)
    barrier = threading.Barrier(2, timeout=10)

    @app.post("/slow-put")
    def slow_put() -> str:
        k, v = request.args["k"], request.args["v"]
        session.get("base")  # both requests have loaded the session...
        barrier.wait()  # ...before either commits
        session[k] = v
        return "ok"

    first = app.test_client()
    token = new_session(first, base="0")
    second = app.test_client()
    second.set_cookie("session", token)
    t1, out1 = run_in_thread(lambda: first.post("/slow-put", query_string={"k": "a", "v": "1"}))
    t2, out2 = run_in_thread(lambda: second.post("/slow-put", query_string={"k": "b", "v": "2"}))
    for t in (t1, t2):
        t.join(20)
        assert not t.is_alive()
    for out in (out1, out2):
        assert isinstance(out[0], TestResponse) and out[0].status_code == 200, out
        assert set_cookies(out[0]) == []
    assert dict(store.get(token) or {}) == {"base": "0", "a": "1", "b": "2"}
    store.close()
    assert reopen_data(store_dir, token, clock) == {"base": "0", "a": "1", "b": "2"}


def test_clear_deletes_only_the_keys_the_request_saw(store: walsess.Store) -> None:
    app = make_app(store)
    cleared, go = threading.Event(), threading.Event()

    @app.post("/slow-clear")
    def slow_clear() -> str:
        session.clear()
        cleared.set()
        assert go.wait(10)
        return "cleared"

    first = app.test_client()
    token = new_session(first, x="1", y="2")
    t, out = run_in_thread(lambda: first.post("/slow-clear"))
    assert cleared.wait(10)
    # While the clearing request is open, another one adds a key and commits.
    second = app.test_client()
    second.set_cookie("session", token)
    assert second.post("/put", query_string={"z": "3"}).status_code == 200
    go.set()
    t.join(20)
    assert isinstance(out[0], TestResponse) and out[0].status_code == 200, out
    assert dict(store.get(token) or {}) == {"z": "3"}


def test_request_racing_a_logout_deletes_cookie_and_does_not_resurrect(
    store: walsess.Store,
) -> None:
    app = make_app(store)
    loaded, go = threading.Event(), threading.Event()

    @app.post("/slow-put")
    def slow_put() -> str:
        session.get("x")
        loaded.set()
        assert go.wait(10)
        session["late"] = "write"
        return "ok"

    first = app.test_client()
    token = new_session(first, x="1")
    t, out = run_in_thread(lambda: first.post("/slow-put"))
    assert loaded.wait(10)
    second = app.test_client()
    second.set_cookie("session", token)
    _, attrs = the_cookie(second.post("/logout"))
    assert is_deletion(attrs)
    go.set()
    t.join(20)
    resp = out[0]
    assert isinstance(resp, TestResponse) and resp.status_code == 200, out
    _, attrs = the_cookie(resp)
    assert is_deletion(attrs)
    assert store.get(token) is None
    assert store.stats()["sessions"] == 0


# -- errors and start-up ---------------------------------------------------------------------


def test_init_app_fails_at_start_up_for_a_closed_store(store_dir: str) -> None:
    s = walsess.open(store_dir, cleanup_interval=None)
    s.close()
    app = Flask(__name__)
    with pytest.raises(walsess.StoreClosed):
        init_app(app, s)
    assert "walsess" not in app.extensions


def test_init_app_leaves_store_in_extensions(app: Flask, store: walsess.Store) -> None:
    assert app.extensions["walsess"] is store
    assert isinstance(app.session_interface, walsess.flask.WalsessSessionInterface)


def test_store_errors_propagate(client: FlaskClient, store: walsess.Store) -> None:
    new_session(client, x="1")
    store.close()
    assert client.get("/untouched").status_code == 200  # never looked up: unaffected
    with pytest.raises(walsess.StoreClosed):
        client.get("/read")


def test_unstorable_value_fails_the_request_and_saves_nothing(
    app: Flask, client: FlaskClient, store: walsess.Store
) -> None:
    @app.post("/bad")
    def bad() -> str:
        session["ok"] = "fine"
        session["bad"] = object()
        return "ok"

    token = new_session(client, x="1")
    before = appended(store)
    with pytest.raises(walsess.ValidationError, match="'bad'"):
        client.post("/bad")
    assert appended(store) == before
    assert dict(store.get(token) or {}) == {"x": "1"}


def test_meta_receives_the_request(store: walsess.Store) -> None:
    app = Flask(__name__)
    app.config["TESTING"] = True
    init_app(app, store, meta=lambda r: {"ua": r.headers.get("User-Agent", "")})

    @app.post("/put")
    def put() -> str:
        session["x"] = 1
        return "ok"

    client = app.test_client()
    client.post("/put", headers={"User-Agent": "pytest-agent"})
    client.post("/put", headers={"User-Agent": "changed"})  # only the creating request counts
    infos = list(store.sessions())
    assert [i.meta for i in infos] == [{"ua": "pytest-agent"}]


# -- durability ------------------------------------------------------------------------------


def test_always_mode_data_survives_reopen(store_dir: str, clock: ManualClock) -> None:
    with walsess.open(store_dir, durability="always", clock=clock, cleanup_interval=None) as s:
        client = make_app(s).test_client()
        client.post("/put", query_string={"x": "1"})
        client.post("/append", query_string={"n": "7"})
        client.post("/login", query_string={"user": "dora"})
        token = token_of(client)
    assert reopen_data(store_dir, token, clock) == {"x": "1", "cart": [7], "user": "dora"}
    # And the cookie keeps working against the reopened store.
    with walsess.open(store_dir, clock=clock, cleanup_interval=None) as s:
        client = make_app(s).test_client()
        client.set_cookie("session", token)
        assert client.get("/dump").get_json() == {"x": "1", "cart": [7], "user": "dora"}
