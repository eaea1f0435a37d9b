"""Flask on a :class:`walsess.RedisStore` under gunicorn ``-w 4``, end to end (issue 12).

Four worker processes share a real ``redis-server`` (the ``redis_url``
fixture); eight clients, each a thread with its own httpx client and cookie
jar, talk to them at once. What one worker writes another reads; two
overlapping requests of one session, served by two workers, keep both their
changes (per-key writes); stopping the server and starting it again loses
nothing. Every answer says which worker process served it.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from .harness import FLASK_REDIS, Server

_MISSING = [
    name
    for name in ("gunicorn", "httpx", "flask", "redis")
    if importlib.util.find_spec(name) is None
]
pytestmark = [
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"the end-to-end servers need {', '.join(_MISSING)}: pip install -e '.[test,redis]'",
    ),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="the harness waits for server processes through Linux's /proc and pidfds",
    ),
]

CLIENTS = 8
ROUNDS = 12


@dataclass
class Client:
    """One browser: its cookie jar, what the server acknowledged, what it saw."""

    name: str
    cookies: httpx.Cookies = field(default_factory=httpx.Cookies)
    expected: dict[str, str] = field(default_factory=dict)
    #: (pid that wrote the last change, pid that served the read after it)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def in_threads(jobs: list[Callable[[], None]]) -> None:
    """Run *jobs* at once, one thread each; re-raise the first error of any."""
    errors: list[str] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not errors, errors[0]


def write_and_read(server: Server, client: Client) -> None:
    """ROUNDS times: set a key, then read the whole session back."""
    with server.client(client.cookies) as http:
        for r in range(ROUNDS):
            key, value = f"k{r}", f"{client.name}-{r}"
            resp = http.post("/set", params={"key": key, "value": value})
            if resp.status_code != 200:
                client.failures.append(f"set {key}: {resp.status_code} {resp.text[:200]}")
                return
            client.expected[key] = value
            writer = resp.json()["pid"]
            got = http.get("/get")
            if got.status_code != 200:
                client.failures.append(f"get: {got.status_code} {got.text[:200]}")
                return
            body = got.json()
            if body["data"] != client.expected:
                client.failures.append(f"round {r}: read {body['data']}, not {client.expected}")
            client.pairs.append((writer, body["pid"]))
        client.cookies = http.cookies


def test_eight_clients_four_workers_and_a_restart(
    servers: Callable[..., Server], redis_url: str
) -> None:
    server = servers(FLASK_REDIS, redis_url)
    clients = [Client(f"c{i}") for i in range(CLIENTS)]
    in_threads([functools.partial(write_and_read, server, c) for c in clients])
    failures = [f for c in clients for f in c.failures]
    assert not failures, (failures[:5], server.log()[-2000:])
    pairs = [p for c in clients for p in c.pairs]
    assert len(pairs) == CLIENTS * ROUNDS
    workers = {pid for pair in pairs for pid in pair}
    assert len(workers) >= 2, server.explain(f"every request went to {workers}")
    # Written through one worker, read (correctly: checked above) through another.
    crossed = [(w, r) for w, r in pairs if w != r]
    assert crossed, server.explain("no session was read by a worker other than its writer's")
    assert len({c.cookies.get(FLASK_REDIS.cookie) for c in clients}) == CLIENTS

    server.stop()  # every worker process gone; Redis keeps running
    again = servers(FLASK_REDIS, redis_url)
    for c in clients:
        with again.client(c.cookies) as http:
            got = http.get("/get")
        assert got.status_code == 200 and got.json()["data"] == c.expected, c.name


def meet(server: Server, cookies: httpx.Cookies, name: str, key: str, out: list[Any]) -> None:
    with server.client(httpx.Cookies(cookies)) as http:
        resp = http.post("/meet", params={"name": name, "n": "2", "key": key, "value": name})
    assert resp.status_code == 200, resp.text
    out.append(resp.json())


def test_overlapping_requests_of_one_session_keep_both_changes(
    servers: Callable[..., Server], redis_url: str
) -> None:
    server = servers(FLASK_REDIS, redis_url)
    with server.client() as http:
        assert http.post("/set", params={"key": "base", "value": "1"}).status_code == 200
        cookies = http.cookies
    expected = {"base": "1"}
    for i in range(4):
        answers: list[Any] = []
        name = f"overlap-{i}"
        in_threads([functools.partial(meet, server, cookies, name, k, answers) for k in "ab"])
        # Both loaded the session before either wrote, in two worker processes.
        assert [a["before"] for a in answers] == [expected, expected]
        assert answers[0]["pid"] != answers[1]["pid"]
        expected |= {"a": name, "b": name}
        with server.client(cookies) as http:
            assert http.get("/get").json()["data"] == expected
