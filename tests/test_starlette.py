"""walsess.starlette.SessionMiddleware through Starlette's and FastAPI's own clients.

Every test drives a real Starlette (or FastAPI) application, through
``starlette.testclient.TestClient`` or httpx's ``ASGITransport`` when two
requests must overlap on one event loop, and checks real effects: the
Set-Cookie headers and their attributes, the store's record counter, and the
data read back from a fresh reopen of the store directory.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from conftest import appended, parse_cookie, reopen_data
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

import walsess
from walsess.clock import ManualClock
from walsess.fileio import FileSystem
from walsess.starlette import SessionMiddleware, logout, regenerate
from walsess.tokens import new_token

DAY14 = 14 * 24 * 60 * 60

# -- helpers ---------------------------------------------------------------------------------


def set_cookies(resp: httpx.Response) -> list[str]:
    return resp.headers.get_list("set-cookie")


def the_cookie(resp: httpx.Response, name: str = "session") -> tuple[str, dict[str, str]]:
    """The one Set-Cookie for *name*: (value, attributes). Fails if there is none or more."""
    found = [parse_cookie(h) for h in set_cookies(resp)]
    mine = [(v, a) for n, v, a in found if n == name]
    assert len(mine) == 1, f"expected one Set-Cookie for {name!r}, got {set_cookies(resp)}"
    return mine[0]


def cookie(token: str, name: str = "session") -> dict[str, str]:
    return {"cookie": f"{name}={token}"}


# -- the application under test --------------------------------------------------------------


async def read(request: StarletteRequest) -> Response:
    return JSONResponse({"value": request.session.get(request.query_params.get("k", "x"))})


async def put(request: StarletteRequest) -> Response:
    for k, v in request.query_params.items():
        request.session[k] = v
    return PlainTextResponse("ok")


async def append(request: StarletteRequest) -> Response:
    request.session.setdefault("cart", []).append(int(request.query_params["n"]))
    return PlainTextResponse("ok")


async def untouched(request: StarletteRequest) -> Response:
    return PlainTextResponse("no session here")


async def login(request: StarletteRequest) -> Response:
    await regenerate(request, user=request.query_params["user"])
    request.session["user"] = request.query_params["user"]
    return PlainTextResponse("in")


async def signout(request: StarletteRequest) -> Response:
    await logout(request)
    return PlainTextResponse("out")


async def wipe(request: StarletteRequest) -> Response:
    request.session.clear()
    return PlainTextResponse("cleared")


async def ws_endpoint(websocket: WebSocket) -> None:
    before = websocket.query_params.get("before")
    if before is not None:
        websocket.session["before"] = before
    await websocket.accept()
    said = await websocket.receive_text()
    websocket.session["said"] = said
    await websocket.send_text(str(websocket.session.get("n")))
    if websocket.query_params.get("wait_for_disconnect"):
        await websocket.receive_text()  # raises WebSocketDisconnect when the client leaves
    await websocket.close()


ROUTES = [
    Route("/read", read),
    Route("/put", put, methods=["GET", "POST"]),
    Route("/append", append, methods=["POST"]),
    Route("/untouched", untouched),
    Route("/login", login, methods=["POST"]),
    Route("/logout", signout, methods=["POST"]),
    Route("/clear", wipe, methods=["POST"]),
    WebSocketRoute("/ws", ws_endpoint),
]


def make_app(store: walsess.Store, routes: list[Any] | None = None, **options: Any) -> Starlette:
    app = Starlette(routes=ROUTES if routes is None else routes)
    app.add_middleware(SessionMiddleware, store=store, **options)
    return app


@pytest.fixture
def client(store: walsess.Store) -> Iterator[TestClient]:
    with TestClient(make_app(store)) as c:
        yield c


def new_session(client: TestClient, **values: str) -> str:
    resp = client.post("/put", params=values)
    token, _ = the_cookie(resp)
    return token


# -- nothing for nothing -----------------------------------------------------------------------


def test_untouched_request_does_nothing(client: TestClient, store: walsess.Store) -> None:
    token = new_session(client, x="1")
    before = appended(store)
    resp = client.get("/untouched", headers=cookie(token))
    assert resp.status_code == 200
    assert set_cookies(resp) == []
    assert "vary" not in resp.headers  # not even the header a touched session adds
    assert appended(store) == before


def test_request_that_stores_nothing_creates_no_session(
    client: TestClient, store: walsess.Store
) -> None:
    before = appended(store)
    for path in ("/read", "/untouched"):
        resp = client.get(path)
        assert resp.status_code == 200
        assert set_cookies(resp) == []
    assert client.get("/read").headers["vary"] == "Cookie"
    assert store.stats()["sessions"] == 0
    assert appended(store) == before


def test_unchanged_request_writes_no_record(client: TestClient, store: walsess.Store) -> None:
    token = new_session(client, x="1", y="2")
    before = appended(store)
    assert client.get("/read", headers=cookie(token)).json() == {"value": "1"}
    # Setting a key to the value it has is no change either.
    client.post("/put", params={"x": "1"}, headers=cookie(token))
    assert appended(store) == before
    # ...and a real change is exactly one record, both keys at once.
    client.post("/put", params={"x": "3", "y": "4"}, headers=cookie(token))
    assert appended(store) == before + 1
    assert dict(store.get(token) or {}) == {"x": "3", "y": "4"}


# -- the data ------------------------------------------------------------------------------------


def test_nested_mutation_is_saved(
    client: TestClient, store: walsess.Store, store_dir: str, clock: ManualClock
) -> None:
    resp = client.post("/append", params={"n": "1"})
    token, _ = the_cookie(resp)
    client.post("/append", params={"n": "2"}, headers=cookie(token))
    client.post("/append", params={"n": "3"}, headers=cookie(token))
    store.close()
    assert reopen_data(store_dir, token, clock) == {"cart": [1, 2, 3]}


def test_login_regenerate_and_logout(client: TestClient, store: walsess.Store) -> None:
    anon = new_session(client, cart="3 apples")
    resp = client.post("/login", params={"user": "alice"}, headers=cookie(anon))
    token, _ = the_cookie(resp)
    assert token != anon
    assert store.get(anon) is None  # the pre-login token is dead at once
    assert dict(store.get(token) or {}) == {"cart": "3 apples", "user": "alice"}
    assert [info.ref for info in store.sessions_of("alice")] == [store.get(token).ref]  # type: ignore[union-attr]
    assert client.get("/read", params={"k": "user"}, headers=cookie(token)).json() == {
        "value": "alice"
    }
    # The old cookie is an unknown token now: reading it finds nothing, sets nothing.
    resp = client.get("/read", params={"k": "cart"}, headers=cookie(anon))
    assert resp.json() == {"value": None}
    assert set_cookies(resp) == []

    resp = client.post("/logout", headers=cookie(token))
    value, attrs = the_cookie(resp)
    assert value == ""
    assert attrs["max-age"] == "0"
    assert "1970" in attrs["expires"]
    assert attrs["path"] == "/"
    assert "httponly" in attrs
    assert store.get(token) is None
    assert store.sessions_of("alice") == []


def test_login_without_a_session_creates_one_with_owner(
    client: TestClient, store: walsess.Store
) -> None:
    resp = client.post("/login", params={"user": "bob"})
    token, _ = the_cookie(resp)
    handle = store.get(token)
    assert handle is not None and handle.user == "bob" and dict(handle) == {"user": "bob"}


def test_logout_with_a_stale_cookie_deletes_it(client: TestClient, store: walsess.Store) -> None:
    before = appended(store)
    resp = client.post("/logout", headers=cookie(new_token()))
    value, attrs = the_cookie(resp)
    assert value == "" and attrs["max-age"] == "0"
    assert appended(store) == before


def unknown_token(client: TestClient, store: walsess.Store, clock: ManualClock) -> str:
    return new_token()


def expired_token(client: TestClient, store: walsess.Store, clock: ManualClock) -> str:
    token = new_session(client, x="old")
    clock.advance(DAY14 + 1)
    return token


def destroyed_token(client: TestClient, store: walsess.Store, clock: ManualClock) -> str:
    token = new_session(client, x="old")
    store.destroy(token)
    return token


@pytest.mark.parametrize(
    "bad",
    [
        unknown_token,
        expired_token,
        destroyed_token,
        lambda *_: "not-a-token",
        lambda *_: "",
        lambda *_: "x" * 4000,
        lambda *_: '"quoted value"',
        lambda *_: "\u00e9t\u00e9",
    ],
    ids=["unknown", "expired", "destroyed", "malformed", "empty", "huge", "quoted", "latin1"],
)
def test_bad_cookie_gets_new_token_only_when_storing(
    client: TestClient,
    store: walsess.Store,
    clock: ManualClock,
    bad: Callable[[TestClient, walsess.Store, ManualClock], str],
) -> None:
    token = bad(client, store, clock)
    headers = [(b"cookie", f"session={token}".encode())]  # raw bytes, UTF-8 included
    sessions = store.stats()["sessions"]
    resp = client.get("/read", headers=headers)
    assert resp.json() == {"value": None}
    assert set_cookies(resp) == []
    assert store.stats()["sessions"] == sessions

    resp = client.post("/put", params={"y": "new"}, headers=headers)
    fresh, _ = the_cookie(resp)
    assert fresh != token
    assert len(fresh) >= 43
    assert dict(store.get(fresh) or {}) == {"y": "new"}  # the old data is not carried over
    assert store.get(token) is None  # the client's token was not adopted


def test_cookie_among_others_and_split_cookie_headers(
    client: TestClient, store: walsess.Store
) -> None:
    token = new_session(client, x="1")
    resp = client.get("/read", headers={"cookie": f"theme=dark; session={token}; lang=fr"})
    assert resp.json() == {"value": "1"}
    # HTTP/2 lets a client send its cookies in several headers.
    raw = [(b"cookie", b"theme=dark"), (b"cookie", f"session={token}".encode())]
    resp = client.get("/read", headers=raw)
    assert resp.json() == {"value": "1"}
    # A cookie whose name merely contains ours is not ours.
    resp = client.get("/read", headers={"cookie": f"mysession={token}; session_id=1"})
    assert resp.json() == {"value": None}
    # Parsed as Starlette's cookie_parser does: spaces, the last duplicate, quotes.
    for header in (
        f" session = {token} ",
        f"session=stale; session={token}",
        f'session="{token}"',
    ):
        assert client.get("/read", headers={"cookie": header}).json() == {"value": "1"}, header


# -- cookie attributes ---------------------------------------------------------------------------


def test_default_cookie_attributes(client: TestClient, store: walsess.Store) -> None:
    resp = client.post("/put", params={"x": "1"})
    token, attrs = the_cookie(resp)
    assert attrs == {"path": "/", "max-age": str(DAY14), "httponly": "", "samesite": "lax"}
    handle = store.get(token)
    assert handle is not None and handle.ttl == DAY14  # max_age is the idle timeout
    assert resp.headers["vary"] == "Cookie"


def test_vary_cookie_merges_with_the_apps_vary(store: walsess.Store) -> None:
    async def negotiated(request: StarletteRequest) -> Response:
        request.session.get("x")
        return PlainTextResponse("hi", headers={"vary": "Accept-Encoding"})

    with TestClient(make_app(store, routes=[Route("/n", negotiated)])) as c:
        resp = c.get("/n")
    assert resp.headers.get_list("vary") == ["Accept-Encoding, Cookie"]


def test_configured_cookie_attributes(store: walsess.Store) -> None:
    app = make_app(
        store,
        session_cookie="sid",
        max_age=600,
        path="/app",
        same_site="strict",
        https_only=True,
        domain="example.org",
        partitioned=True,
    )
    with TestClient(app) as c:
        resp = c.post("/put", params={"x": "1"})
        token, attrs = the_cookie(resp, "sid")
        assert attrs == {
            "path": "/app",
            "max-age": "600",
            "httponly": "",
            "samesite": "strict",
            "secure": "",
            "domain": "example.org",
            "partitioned": "",
        }
        assert c.get("/read", headers=cookie(token, "sid")).json() == {"value": "1"}
        assert c.get("/read", headers=cookie(token)).json() == {"value": None}
        resp = c.post("/logout", headers=cookie(token, "sid"))
        value, attrs = the_cookie(resp, "sid")
        # Deleting must name the same path and domain, or the browser keeps the cookie.
        assert value == "" and attrs["max-age"] == "0"
        assert attrs["path"] == "/app" and attrs["domain"] == "example.org"
        assert "secure" in attrs


def test_browser_session_cookie_when_max_age_is_none(store: walsess.Store) -> None:
    with TestClient(make_app(store, max_age=None)) as c:
        resp = c.post("/put", params={"x": "1"})
        token, attrs = the_cookie(resp)
        assert "max-age" not in attrs and "expires" not in attrs
        handle = store.get(token)
        assert handle is not None and handle.ttl == store.default_ttl
        # Nothing to keep fresh in a browser-session cookie: a read sends none.
        assert set_cookies(c.get("/read", headers=cookie(token))) == []


def test_max_age_follows_sliding_expiry(store: walsess.Store, clock: ManualClock) -> None:
    with TestClient(make_app(store, max_age=600)) as c:
        token = new_session(c, x="1")
        clock.advance(500)
        before = appended(store)
        resp = c.get("/read", headers=cookie(token))
        assert resp.json() == {"value": "1"}
        value, attrs = the_cookie(resp)  # re-sent so the browser keeps it as long as the store
        assert value == token and attrs["max-age"] == "600"
        assert appended(store) - before <= 1  # at most the rate-limited TOUCH
        clock.advance(500)  # 1000 s after creation: alive because it slid
        assert c.get("/read", headers=cookie(token)).json() == {"value": "1"}
        clock.advance(601)
        resp = c.get("/read", headers=cookie(token))
        assert resp.json() == {"value": None} and set_cookies(resp) == []


def test_max_age_follows_absolute_lifetime(store_dir: str, clock: ManualClock) -> None:
    with (
        walsess.open(store_dir, clock=clock, cleanup_interval=None, max_lifetime=1000) as s,
        TestClient(make_app(s, max_age=600)) as c,
    ):
        token = new_session(c, x="1")
        clock.advance(300)
        _, attrs = the_cookie(c.get("/read", headers=cookie(token)))
        assert attrs["max-age"] == "600"
        clock.advance(400)  # 700 s after creation: the idle deadline is past the hard one
        _, attrs = the_cookie(c.get("/read", headers=cookie(token)))
        assert attrs["max-age"] == "300"  # the store's hard deadline, not 600


def test_max_age_must_be_positive(store: walsess.Store) -> None:
    with pytest.raises(ValueError, match="max_age"):
        SessionMiddleware(make_app(store), store=store, max_age=0)


def test_changed_max_age_retimes_existing_session(store: walsess.Store) -> None:
    with TestClient(make_app(store, max_age=600)) as c:
        token = new_session(c, x="1")
    with TestClient(make_app(store, max_age=60)) as c:
        _, attrs = the_cookie(c.get("/read", headers=cookie(token)))
        assert attrs["max-age"] == "60"
    handle = store.get(token)
    assert handle is not None and handle.ttl == 60


def test_meta_receives_the_connection(store: walsess.Store) -> None:
    calls: list[str] = []

    def meta(conn: Any) -> dict[str, Any]:
        calls.append(conn.url.path)
        return {"ua": conn.headers.get("user-agent")}

    with TestClient(make_app(store, meta=meta)) as c:
        c.get("/read")  # creates nothing: meta is not called
        assert calls == []
        token, _ = the_cookie(c.post("/put", params={"x": "1"}, headers={"user-agent": "UA/1"}))
        c.post("/put", params={"x": "2"}, headers=cookie(token))  # not a creation
    assert calls == ["/put"]
    [info] = list(store.sessions())
    assert info.meta == {"ua": "UA/1"}


def test_helpers_require_the_middleware(store: walsess.Store) -> None:
    with (
        TestClient(Starlette(routes=ROUTES)) as c,
        pytest.raises(RuntimeError, match="add_middleware"),
    ):
        c.post("/login", params={"user": "x"})


# -- overlapping requests ------------------------------------------------------------------------


class AsyncBarrier:
    """Holds *parties* tasks of one event loop until all have arrived."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.event = anyio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.event.set()
        with anyio.fail_after(10):
            await self.event.wait()


def test_overlapping_requests_keep_both_changes(
    store: walsess.Store, store_dir: str, clock: ManualClock
) -> None:
    barrier: AsyncBarrier | None = None

    async def slow_put(request: StarletteRequest) -> Response:
        key = request.path_params["key"]
        seen = dict(request.session)  # loaded before the other request commits
        assert barrier is not None
        await barrier.wait()
        request.session[key] = f"{key}-value"
        return JSONResponse(seen)

    app = make_app(store, routes=[*ROUTES, Route("/slow/{key}", slow_put, methods=["POST"])])

    async def main() -> tuple[str, list[httpx.Response]]:
        nonlocal barrier
        barrier = AsyncBarrier(2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            token, _ = the_cookie(await c.post("/put", params={"base": "1"}))
            responses = await asyncio.gather(
                c.post("/slow/a", headers=cookie(token)),
                c.post("/slow/b", headers=cookie(token)),
            )
            return token, list(responses)

    token, responses = asyncio.run(main())
    # Both saw the session as it was before either wrote: they really overlapped.
    assert [r.json() for r in responses] == [{"base": "1"}, {"base": "1"}]
    store.close()
    assert reopen_data(store_dir, token, clock) == {"base": "1", "a": "a-value", "b": "b-value"}


def test_clear_deletes_only_the_keys_the_request_saw(store: walsess.Store) -> None:
    loaded = anyio.Event()
    other_done = anyio.Event()

    async def slow_clear(request: StarletteRequest) -> Response:
        seen = sorted(request.session)
        loaded.set()
        with anyio.fail_after(10):
            await other_done.wait()
        request.session.clear()
        return JSONResponse(seen)

    app = make_app(store, routes=[*ROUTES, Route("/slow-clear", slow_clear, methods=["POST"])])

    async def main() -> tuple[str, list[str]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            token, _ = the_cookie(await c.post("/put", params={"a": "1", "b": "2"}))

            async def other() -> None:
                with anyio.fail_after(10):
                    await loaded.wait()
                await c.post("/put", params={"c": "3"}, headers=cookie(token))
                other_done.set()

            resp, _ = await asyncio.gather(c.post("/slow-clear", headers=cookie(token)), other())
            return token, resp.json()

    token, seen = asyncio.run(main())
    assert seen == ["a", "b"]
    assert dict(store.get(token) or {}) == {"c": "3"}


def test_overlapping_sync_endpoints_in_fastapi_threads(
    store: walsess.Store, store_dir: str, clock: ManualClock
) -> None:
    barrier = threading.Barrier(2, timeout=10)
    api = FastAPI()
    api.add_middleware(SessionMiddleware, store=store)

    @api.post("/put")
    def put_(request: Request, k: str, v: str) -> dict[str, str]:
        request.session[k] = v
        return {"ok": k}

    @api.post("/slow/{key}")
    def slow(request: Request, key: str) -> dict[str, Any]:
        seen = dict(request.session)
        barrier.wait()  # both requests hold a loaded session here
        request.session[key] = key.upper()
        return seen

    with TestClient(api) as c:
        token, _ = the_cookie(c.post("/put", params={"k": "base", "v": "1"}))

    results: dict[str, Any] = {}

    def run(key: str) -> None:
        with TestClient(api) as c:  # one client (and event loop thread) per browser tab
            results[key] = c.post(f"/slow/{key}", headers=cookie(token)).json()

    threads = [threading.Thread(target=run, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"a": {"base": "1"}, "b": {"base": "1"}}
    store.close()
    assert reopen_data(store_dir, token, clock) == {"base": "1", "a": "A", "b": "B"}


def test_request_racing_a_logout_does_not_resurrect_the_session(store: walsess.Store) -> None:
    loaded = anyio.Event()
    logged_out = anyio.Event()

    async def slow_put(request: StarletteRequest) -> Response:
        request.session.get("x")
        loaded.set()
        with anyio.fail_after(10):
            await logged_out.wait()
        request.session["late"] = "change"
        return PlainTextResponse("ok")

    app = make_app(store, routes=[*ROUTES, Route("/slow", slow_put, methods=["POST"])])

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            token, _ = the_cookie(await c.post("/put", params={"x": "1"}))

            async def other_tab() -> None:
                with anyio.fail_after(10):
                    await loaded.wait()
                await c.post("/logout", headers=cookie(token))
                logged_out.set()

            resp, _ = await asyncio.gather(c.post("/slow", headers=cookie(token)), other_tab())
            return resp

    resp = asyncio.run(main())
    value, attrs = the_cookie(resp)  # the slow request tells its client it is logged out
    assert value == "" and attrs["max-age"] == "0"
    assert store.stats()["sessions"] == 0


def test_unstorable_value_fails_the_request_and_saves_nothing(store: walsess.Store) -> None:
    async def bad(request: StarletteRequest) -> Response:
        request.session["ok"] = 1
        request.session["bad"] = {1, 2}  # a set: not JSON
        return PlainTextResponse("never sent")

    before = appended(store)
    app = make_app(store, routes=[Route("/bad", bad, methods=["POST"])])
    with TestClient(app, raise_server_exceptions=False) as c:
        resp = c.post("/bad")
    assert resp.status_code == 500
    assert set_cookies(resp) == []
    assert store.stats()["sessions"] == 0 and appended(store) == before


# -- FastAPI -------------------------------------------------------------------------------------


def test_fastapi_login_flow(store: walsess.Store, store_dir: str, clock: ManualClock) -> None:
    api = FastAPI()
    api.add_middleware(SessionMiddleware, store=store, https_only=True)

    @api.post("/cart/{item}")
    async def add(request: Request, item: str) -> dict[str, Any]:
        request.session.setdefault("cart", []).append(item)
        return {"cart": request.session["cart"]}

    @api.post("/login/{user}")
    async def login_(request: Request, user: str) -> dict[str, str]:
        await regenerate(request, user=user)
        request.session["user"] = user
        return {"user": user}

    @api.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        return {"user": request.session.get("user"), "cart": request.session.get("cart")}

    @api.post("/logout")
    async def logout_(request: Request) -> dict[str, str]:
        await logout(request)
        return {}

    # https: the client's cookie jar sends a Secure cookie back, as a browser would.
    with TestClient(api, base_url="https://testserver") as c:
        first, attrs = the_cookie(c.post("/cart/apple"))
        assert "secure" in attrs and "httponly" in attrs and attrs["samesite"] == "lax"
        c.post("/cart/pear")
        token, _ = the_cookie(c.post("/login/carol"))
        assert token != first
        assert c.get("/me").json() == {"user": "carol", "cart": ["apple", "pear"]}
        value, _ = the_cookie(c.post("/logout"))
        assert value == ""
        assert c.get("/me").json() == {"user": None, "cart": None}
    assert store.get(token) is None and store.get(first) is None
    store.close()
    assert reopen_data(store_dir, token, clock) is None


# -- WebSockets ----------------------------------------------------------------------------------


def test_websocket_reads_and_saves_to_existing_session(
    client: TestClient, store: walsess.Store
) -> None:
    token = new_session(client, n="5")
    with client.websocket_connect("/ws", headers=cookie(token)) as ws:
        assert not any(k.lower() == b"set-cookie" for k, _ in ws.extra_headers or [])
        ws.send_text("hello")
        assert ws.receive_text() == "5"
    assert dict(store.get(token) or {}) == {"n": "5", "said": "hello"}


def test_websocket_commit_on_client_disconnect(client: TestClient, store: walsess.Store) -> None:
    token = new_session(client, n="5")
    # The endpoint lets WebSocketDisconnect escape (the client left mid-conversation);
    # the test client re-raises it when the connection ends.
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/ws?wait_for_disconnect=1", headers=cookie(token)) as ws,
    ):
        ws.send_text("bye")
        assert ws.receive_text() == "5"
        ws.close()
    assert dict(store.get(token) or {}) == {"n": "5", "said": "bye"}


def test_websocket_new_session_at_accept_gets_cookie(
    client: TestClient, store: walsess.Store
) -> None:
    with client.websocket_connect("/ws?before=hi") as ws:
        headers = [(k.decode().lower(), v.decode()) for k, v in ws.extra_headers or []]
        [header] = [v for k, v in headers if k == "set-cookie"]
        name, token, attrs = parse_cookie(header)
        assert name == "session" and "httponly" in attrs
        ws.send_text("there")
        assert ws.receive_text() == "None"
    assert dict(store.get(token) or {}) == {"before": "hi", "said": "there"}


def test_websocket_never_creates_a_session_after_accept(
    client: TestClient, store: walsess.Store
) -> None:
    before = appended(store)
    with client.websocket_connect("/ws") as ws:
        ws.send_text("lost")  # no cookie could reach the client now: nothing is created
        assert ws.receive_text() == "None"
    assert store.stats()["sessions"] == 0
    assert appended(store) == before


# -- "always" durability: fsync off the event loop -------------------------------------------------


class GatedFS(FileSystem):
    """Records which thread calls fsync; when armed, holds one fsync until released."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def fsync(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        if self.armed:
            self.armed = False
            self.entered.set()
            # On the loop thread this would wait for a request the blocked loop
            # can never serve: fail instead of hanging.
            if not self.release.wait(10):
                raise AssertionError("fsync held the event loop")
        super().fsync(fd)


def test_always_mode_commits_off_the_event_loop(store_dir: str, clock: ManualClock) -> None:
    fs = GatedFS()
    loop_threads: set[int] = set()

    async def ping(request: StarletteRequest) -> Response:
        loop_threads.add(threading.get_ident())
        return PlainTextResponse("pong")

    async def main(app: Starlette) -> dict[str, Any]:
        out: dict[str, Any] = {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            loop_threads.add(threading.get_ident())
            fs.threads.clear()
            fs.armed = True
            storing = asyncio.ensure_future(c.post("/put", params={"x": "1"}))
            entered = await anyio.to_thread.run_sync(fs.entered.wait, 10)
            assert entered, "the commit never reached fsync"
            # The commit is now inside fsync; the loop still serves other requests.
            assert (await c.get("/ping")).text == "pong"
            out["stored_before_release"] = storing.done()
            fs.release.set()
            token, _ = the_cookie(await storing)
            out["token"] = token
            out["create"] = list(fs.threads)
            fs.threads.clear()
            login_resp = await c.post("/login", params={"user": "dana"}, headers=cookie(token))
            out["login_token"], _ = the_cookie(login_resp)
            out["login"] = list(fs.threads)
            fs.threads.clear()
            await c.post("/logout", headers=cookie(out["login_token"]))
            out["logout"] = list(fs.threads)
        return out

    with walsess.open(
        store_dir, clock=clock, cleanup_interval=None, durability="always", fs=fs
    ) as s:
        app = make_app(s, routes=[*ROUTES, Route("/ping", ping)])
        out = asyncio.run(main(app))
        assert s.get(out["token"]) is None and s.get(out["login_token"]) is None
    assert out["stored_before_release"] is False  # the response waited for its fsync
    for step in ("create", "login", "logout"):
        assert out[step], f"{step}: no fsync in always mode"
        assert loop_threads.isdisjoint(out[step]), f"{step}: fsync ran on the event loop thread"
    with walsess.open(store_dir, clock=clock, cleanup_interval=None) as s:
        assert s.sessions_of("dana") == [] and s.stats()["sessions"] == 0


def test_always_mode_data_survives_reopen(store_dir: str, clock: ManualClock) -> None:
    with (
        walsess.open(store_dir, clock=clock, cleanup_interval=None, durability="always") as s,
        TestClient(make_app(s)) as c,
    ):
        token = new_session(c, x="1")
        c.post("/append", params={"n": "7"}, headers=cookie(token))
    assert reopen_data(store_dir, token, clock) == {"x": "1", "cart": [7]}
