"""Each framework's adapter end to end: real server processes on 127.0.0.1, real HTTP.

Flask and Django run under gunicorn with one worker process and 8 threads,
Starlette under one uvicorn worker: the deployment the adapters document. The
apps (``apps/``) keep their store in "interval" durability mode, where every
change reaches write(2) before its response is sent, so a SIGKILL of the
server loses nothing a client was told succeeded; the tests crash servers and
read every acknowledged value back through a restarted one.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .harness import FRAMEWORKS, Framework, Server

_MISSING = [
    name
    for name in ("gunicorn", "uvicorn", "httpx", "flask", "django", "starlette")
    if importlib.util.find_spec(name) is None
]
pytestmark = [
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"the end-to-end servers need {', '.join(_MISSING)}: pip install -e '.[test]'",
    ),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="the harness waits for server processes through Linux's /proc and pidfds",
    ),
]

#: The one message every framework's start-up failure must carry (from LockedError).
LOCKED_ADVICE = "run one worker process with threads"


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> Framework:
    return FRAMEWORKS[request.param]


# -- clients ------------------------------------------------------------------------------


@dataclass
class User:
    """One simulated browser: a cookie jar, and what the server acknowledged to it."""

    name: str
    cookies: httpx.Cookies = field(default_factory=httpx.Cookies)
    #: The session data this user's acknowledged requests leave (its keys only).
    expected: dict[str, Any] = field(default_factory=dict)
    #: Tokens this user held before a login or a logout: they must be dead.
    dead_tokens: list[str] = field(default_factory=list)
    #: Requests that got anything but a 200 (the test fails on any).
    failures: list[str] = field(default_factory=list)


def token(cookies: httpx.Cookies, fw: Framework) -> str | None:
    return cookies.get(fw.cookie)


def act(client: httpx.Client, user: User, fw: Framework, op: str, params: dict[str, str]) -> None:
    """Send one request; if it is acknowledged (200), apply it to the user's model."""
    before = token(client.cookies, fw)
    try:
        resp = client.post(f"/{op}", params=params)
    except httpx.HTTPError as exc:
        user.failures.append(f"{user.name} {op} {params}: {exc!r}")
        return
    if resp.status_code != 200:
        user.failures.append(f"{user.name} {op} {params}: {resp.status_code} {resp.text[:200]}")
        return
    if op == "set":
        user.expected[params["key"]] = params["value"]
    elif op == "append":
        user.expected.setdefault(params["key"], []).append(params["value"])
    elif op == "login":
        user.expected["user"] = params["user"]
        assert before is not None
        user.dead_tokens.append(before)
        if token(client.cookies, fw) in (None, before):
            user.failures.append(f"{user.name} login: the token did not change ({before})")
    elif op == "logout":
        user.expected.clear()
        assert before is not None
        user.dead_tokens.append(before)
        if token(client.cookies, fw) is not None:
            user.failures.append(f"{user.name} logout: the cookie was not deleted")


def session_of(server: Server, cookies: httpx.Cookies) -> tuple[dict[str, Any], list[str]]:
    """What ``GET /get`` returns with these cookies, and the Set-Cookie headers it sent."""
    with server.client(cookies=httpx.Cookies(cookies)) as c:
        resp = c.get("/get")
    assert resp.status_code == 200, server.explain(f"GET /get: {resp.status_code} {resp.text}")
    data: dict[str, Any] = resp.json()
    return data, resp.headers.get_list("set-cookie")


def issued(set_cookie: list[str], fw: Framework) -> list[str]:
    """The session tokens these Set-Cookie headers give (a deletion gives none)."""
    tokens = []
    for header in set_cookie:
        name, _, value = header.partition(";")[0].partition("=")
        if name.strip() == fw.cookie and value.strip().strip('"'):
            tokens.append(value.strip())
    return tokens


def stats(server: Server) -> dict[str, Any]:
    with server.client() as c:
        resp = c.get("/stats")
    assert resp.status_code == 200, server.explain(f"GET /stats: {resp.status_code}")
    out: dict[str, Any] = resp.json()
    return out


def log_bytes(store_dir: Path) -> int:
    return sum(p.stat().st_size for p in store_dir.glob("*.log"))


# -- the tests ----------------------------------------------------------------------------

#: Requests per client in the concurrent phase: sets over a few keys (each key is
#: overwritten, so the last acknowledged value must win) and in-place appends.
SETS = 20
KEYS_PER_USER = 4


def plan(user: str) -> list[tuple[str, dict[str, str]]]:
    steps: list[tuple[str, dict[str, str]]] = []
    for i in range(SETS):
        steps.append(("set", {"key": f"{user}-k{i % KEYS_PER_USER}", "value": f"{user}-v{i}"}))
        if i % 3 == 0:
            steps.append(("append", {"key": f"{user}-list", "value": f"{user}-a{i}"}))
    return steps


def test_concurrent_clients_survive_sigkill(
    framework: Framework, servers: Callable[..., Server], tmp_path: Path
) -> None:
    """8 concurrent clients, 4 on their own sessions (one logs in, one logs out
    midway) and 4 sharing one session (distinct keys each); then SIGKILL, restart on
    the same store, and every acknowledged value is there through the old cookies."""
    fw = framework
    store_dir = tmp_path / "store"
    server = servers(fw, store_dir)

    own = [User(f"own{i}") for i in range(4)]
    sharing = [User(f"share{i}") for i in range(4)]
    with server.client() as c:  # the shared session, created before the clients start
        resp = c.post("/set", params={"key": "shared", "value": "yes"})
        assert resp.status_code == 200, server.explain(resp.text)
        shared_token = c.cookies[fw.cookie]
    for u in sharing:  # as the server's host-only cookie, so its replies replace it
        u.cookies.set(fw.cookie, shared_token, domain="127.0.0.1", path="/")

    login_user, logout_user = own[0], own[1]
    barrier = threading.Barrier(len(own) + len(sharing))

    def run(user: User) -> None:
        steps = plan(user.name)
        if user is login_user:
            steps.insert(len(steps) // 2, ("login", {"user": "alice"}))
        if user is logout_user:
            steps.insert(len(steps) // 2, ("logout", {}))
        try:
            with server.client(cookies=user.cookies) as client:
                barrier.wait(timeout=30)  # all 8 start together: the shared session's
                for op, params in steps:  # requests overlap in the server's threads
                    act(client, user, fw, op, params)
                user.cookies = httpx.Cookies(client.cookies)
        except Exception:
            user.failures.append(f"{user.name}: {traceback.format_exc()}")

    threads = [threading.Thread(target=run, args=(u,)) for u in own + sharing]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), server.explain("clients still running")
    failures = [f for u in own + sharing for f in u.failures]
    assert not failures, server.explain("\n".join(failures))
    shared_token_now = {token(u.cookies, fw) for u in sharing}
    assert shared_token_now == {shared_token}, "the sharing clients' token changed"

    shared_expected: dict[str, Any] = {"shared": "yes"}
    for u in sharing:
        shared_expected.update(u.expected)
    assert len(shared_expected) == 1 + len(sharing) * (KEYS_PER_USER + 1)

    def check(server: Server, when: str) -> None:
        for u in own:
            data, _ = session_of(server, u.cookies)
            assert data == u.expected, server.explain(f"{when}: {u.name}'s session")
        for u in sharing:  # per-key merge: every sharer's keys, none lost to another's write
            data, _ = session_of(server, u.cookies)
            assert data == shared_expected, server.explain(f"{when}: the shared session")
        dead = [t for u in own for t in u.dead_tokens]
        assert len(dead) == 2
        for t in dead:  # the token before a login or a logout opens nothing, creates nothing
            data, set_cookie = session_of(server, httpx.Cookies({fw.cookie: t}))
            assert data == {}, server.explain(f"{when}: an old token still opens {data}")
            # (Django deletes a cookie that names no session; no one may issue one.)
            assert issued(set_cookie, fw) == [], f"{when}: a dead token got {set_cookie}"
        # 4 own sessions (the login kept its session under a new token; the logout's
        # later writes made a new one) and the shared one: nothing else was created.
        assert stats(server)["sessions"] == len(own) + 1, server.explain(f"{when}: sessions")

    # The model holds what the test means to check: in-place appends, all acknowledged.
    appends = sum(op == "append" for op, _ in plan("x"))
    for u in [*sharing, *own[2:], login_user]:
        assert len(u.expected[f"{u.name}-list"]) == appends > 1
    assert login_user.expected["user"] == "alice"

    check(server, "before the crash")

    server.kill()
    restarted = servers(fw, store_dir)
    check(restarted, "after SIGKILL and restart")


def test_second_server_on_the_store_fails_at_start_up(
    framework: Framework, servers: Callable[..., Server], tmp_path: Path
) -> None:
    """A second server process on a store the first holds exits non-zero at start-up,
    saying to run one worker process with threads; the first keeps serving."""
    store_dir = tmp_path / "store"
    first = servers(framework, store_dir)
    with first.client() as c:
        assert c.post("/set", params={"key": "k", "value": "v"}).status_code == 200
        jar = httpx.Cookies(c.cookies)

    second = servers(framework, store_dir, wait=False)
    code = second.wait_exit(timeout=30)
    assert code != 0, second.explain("started on a store another process holds")
    assert LOCKED_ADVICE in second.log(), second.explain("no LockedError advice in the output")
    assert "LockedError" in second.log(), second.explain("the failure is not LockedError")

    data, _ = session_of(first, jar)
    assert data == {"k": "v"}, first.explain("the first server lost its session")


def test_requests_that_store_nothing_write_nothing(
    framework: Framework, servers: Callable[..., Server], tmp_path: Path
) -> None:
    """``/health`` (with or without a session cookie) and a cookieless ``/get`` set no
    cookie and append no record; the log files on disk do not grow."""
    fw = framework
    store_dir = tmp_path / "store"
    server = servers(fw, store_dir)
    with server.client() as c:
        assert c.post("/set", params={"key": "k", "value": "v"}).status_code == 200
        live = httpx.Cookies(c.cookies)
    before = stats(server)
    on_disk = log_bytes(store_dir)
    assert before["records_appended"] >= 1 and on_disk > 0  # the counters do move

    for cookies in (httpx.Cookies(), live):
        with server.client(cookies=cookies) as c:
            for _ in range(10):
                resp = c.get("/health")
                assert resp.status_code == 200, server.explain(resp.text)
                assert resp.headers.get_list("set-cookie") == []
    for _ in range(10):  # a bot reading without a cookie: no session, no cookie
        data, set_cookie = session_of(server, httpx.Cookies())
        assert data == {} and set_cookie == []

    after = stats(server)
    assert after["records_appended"] == before["records_appended"]
    assert after["sessions"] == before["sessions"] == 1
    assert log_bytes(store_dir) == on_disk
