"""What only a RedisStore means: its keys and hash tags, Redis TTLs, the owner index,
keyspace notifications, connection failures, put_state, the integrations on Redis.

Real servers only (tests/redis_servers.py; skipped with the reason when
redis-server is missing); time is the injected clock, and Redis's own
expiry is triggered with PEXPIREAT in the past, never by waiting.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from redis_servers import RedisNode, free_port

import walsess

redis = pytest.importorskip("redis")
from redis.cluster import RedisCluster as ClusterClient  # noqa: E402

from walsess.redis_store import RedisStore  # noqa: E402


@pytest.fixture(params=["redis", "redis_cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def rstore(url: str, clock: FakeClock) -> Iterator[RedisStore]:
    with RedisStore.from_url(url, clock=clock) as store:
        yield store


def raw(store: RedisStore) -> Any:
    """The store's own redis-py client (a white-box view of what Redis holds)."""
    return store._r


def all_keys(store: RedisStore) -> list[bytes]:
    return sorted(raw(store).scan_iter(match="*", count=1000))


# -- what Redis holds -------------------------------------------------------------------


def test_redis_holds_digests_never_a_usable_token(rstore: RedisStore) -> None:
    made = [rstore.create({"k": i}, user=f"u{i % 3}") for i in range(20)]
    tokens = [s.id for s in made] + [rstore.regenerate(made[0].id).id]
    stored = b""
    for key in all_keys(rstore):
        stored += key
        if raw(rstore).type(key) == b"hash":
            for field, value in raw(rstore).hgetall(key).items():
                stored += field + value
        else:
            stored += b"".join(raw(rstore).zrange(key, 0, -1))
    for token in tokens:
        assert token.encode() not in stored
        assert walsess.tokens.digest(token) in stored or token == made[0].id


def test_redis_keys_of_a_session_share_a_hash_tag_of_its_ref(rstore: RedisStore) -> None:
    s = rstore.create({"a": 1}, user="u")
    keys = [k for k in all_keys(rstore) if b":s:" in k]
    assert keys == [f"walsess:s:{{{s.ref[:2]}}}:{s.ref}".encode()]
    new = rstore.regenerate(s.id, user="v")
    if rstore.cluster:  # the new ref keeps the old one's hash tag: one node, one script
        assert new.ref[:2] == s.ref[:2]
        # a byte of its digest is chosen, so it draws 8 more bits: 256 remain
        assert len(new.id) == len(walsess.tokens.new_token()) + 1
    assert [k for k in all_keys(rstore) if b":s:" in k] == [
        f"walsess:s:{{{new.ref[:2]}}}:{new.ref}".encode()
    ]


def test_redis_cluster_spreads_sessions_over_every_node(redis_cluster_url: str) -> None:
    with RedisStore.from_url(redis_cluster_url) as store:
        for _ in range(60):
            store.create(user="u")
        per_node = [
            len(list(store._r.get_redis_connection(node).scan_iter(match="walsess:s:*")))
            for node in store._r.get_primaries()
        ]
        assert len(per_node) == 3 and all(n > 0 for n in per_node) and sum(per_node) == 60
        assert len(store) == 60 and len(list(store.sessions())) == 60  # SCAN on every node
        assert len(store.sessions_of("u")) == 60 and store.destroy_user("u") == 60


def test_redis_ttl_follows_the_deadline_and_reads_write_per_granularity(
    url: str, clock: FakeClock
) -> None:
    with RedisStore.from_url(url, clock=clock, touch_granularity=60) as store:
        s = store.create(ttl=1800)
        key = f"walsess:s:{{{s.ref[:2]}}}:{s.ref}"
        assert 1_799_000 < raw(store).pttl(key) <= 1_800_000
        idle = raw(store).hget(key, "#i")
        for _ in range(59):
            clock.advance(1)
            assert store.get(s.id) is not None
        assert raw(store).hget(key, "#i") == idle  # 59 s of reads: nothing written
        clock.advance(1)
        store.get(s.id)
        assert float(raw(store).hget(key, "#i")) == clock.now + 1800  # one extension
        assert store.touch(s.id, ttl=10) and 9_000 < raw(store).pttl(key) <= 10_000


def test_redis_max_lifetime_caps_the_redis_ttl(url: str, clock: FakeClock) -> None:
    with RedisStore.from_url(url, clock=clock, max_lifetime=100) as store:
        s = store.create(ttl=1800)
        assert 99_000 < raw(store).pttl(f"walsess:s:{{{s.ref[:2]}}}:{s.ref}") <= 100_000


# -- the owner index --------------------------------------------------------------------


def test_redis_owner_index_shrinks_when_many_sessions_expire(
    rstore: RedisStore, clock: FakeClock
) -> None:
    """Issue 12: no orphan index entries grow without bound."""
    doomed = [rstore.create(ttl=10, user="alice") for _ in range(300)]
    kept = rstore.create(ttl=1000, user="alice")
    assert rstore.index_size("alice") == 301
    clock.advance(10)  # expired on the store's clock; Redis still holds them
    assert [i.ref for i in rstore.sessions_of("alice")] == [kept.ref]
    assert rstore.index_size("alice") == 1  # the listing pruned what it found dead
    more = [rstore.create(ttl=1000, user="alice") for _ in range(200)]
    for s in more:  # Redis expires these itself: their keys vanish, the entries stay
        raw(rstore).pexpireat(f"walsess:s:{{{s.ref[:2]}}}:{s.ref}", 1)
    assert rstore.index_size("alice") == 201
    clock.advance(1000)  # past their scores
    # gc deletes what expired on the store's clock but Redis still holds (the 300
    # and the kept one, expired by now) and prunes the entries of the vanished 200.
    assert rstore.gc() == 301
    assert rstore.index_size("alice") == 0 and rstore.sessions_of("alice") == []
    assert not any(b":u:" in k for k in all_keys(rstore))  # the empty index is gone
    assert all(rstore.get(s.id) is None for s in doomed)


def test_redis_index_entry_for_a_session_not_written_yet_is_kept(
    rstore: RedisStore, clock: FakeClock
) -> None:
    """A cluster create lists the session before writing it: an entry whose
    session is missing is pruned only once its score (expiry) has passed."""
    raw(rstore).zadd("walsess:u:bob", {"00" * 8: clock.now + 100})
    assert rstore.sessions_of("bob") == [] and rstore.index_size("bob") == 1
    clock.advance(100)
    rstore.gc()
    assert rstore.index_size("bob") == 0


def test_redis_index_lists_a_session_extended_past_its_score(
    rstore: RedisStore, clock: FakeClock
) -> None:
    s = rstore.create(ttl=100, user="carol")
    for _ in range(5):
        clock.advance(60)
        assert rstore.get(s.id) is not None  # the score (expiry at create) is stale now
    assert [i.ref for i in rstore.sessions_of("carol")] == [s.ref]
    assert rstore.gc() == 0 and rstore.destroy_user("carol") == 1


# -- hooks from keyspace notifications ------------------------------------------------------


def test_redis_expiry_notifications_run_the_hooks(rstore: RedisStore) -> None:
    seen: list[tuple[str, str]] = []
    arrived = threading.Event()

    def hook(info: walsess.SessionInfo, reason: str) -> None:
        seen.append((info.ref, reason))
        arrived.set()

    rstore.on_destroy(hook)
    stop = rstore.watch_expiry(configure=True)
    s = rstore.create({"a": 1})
    # A deadline in the past makes Redis delete the key (a "del" event, not
    # "expired"), so the key gets 1 ms and the test waits for the event itself
    # (Redis's expiry cycle runs 10 times a second), up to a bounded deadline.
    raw(rstore).pexpire(f"walsess:s:{{{s.ref[:2]}}}:{s.ref}", 1)
    assert arrived.wait(10), "no expired event within 10 s"
    assert seen == [(s.ref, "expired")]
    stop()


# -- errors -----------------------------------------------------------------------------


def test_redis_unreachable_server_names_its_address(clock: FakeClock) -> None:
    port = free_port()
    with RedisStore.from_url(f"redis://127.0.0.1:{port}/0", clock=clock) as store:
        for call in (store.ping, lambda: store.create({"a": 1}), lambda: store.get("x" * 43)):
            with pytest.raises(walsess.RedisUnavailable, match=f"127.0.0.1:{port}") as info:
                call()
            assert isinstance(info.value, walsess.StorageError)


def test_redis_server_gone_mid_way_raises_and_applies_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    node = RedisNode.start(tmp_path / "r")
    try:
        store = RedisStore.from_url(f"redis://127.0.0.1:{node.port}/0", clock=clock)
        s = store.create({"a": 1})
        node.stop()
        with pytest.raises(walsess.RedisUnavailable, match=str(node.port)):
            s.update(a=2, b=3)
        store.close()
    finally:
        node.stop()


def test_redis_scripts_are_loaded_again_when_the_server_forgets_them(
    rstore: RedisStore, clock: FakeClock
) -> None:
    """Scripts run by SHA; a server that answers NOSCRIPT (restarted, failed
    over, SCRIPT FLUSH) is given each script again, and the call succeeds."""

    def forget() -> None:
        raw(rstore).script_flush()
        assert not any(raw(rstore).script_exists(rstore._s_get.sha))

    forget()
    s = rstore.create({"a": 1}, user="u")
    forget()
    assert rstore.get(s.id) is not None
    forget()
    s["b"] = 2
    forget()
    s.update(c=3)
    forget()
    assert rstore.touch(s.id)
    forget()
    new = rstore.regenerate(s.id)
    forget()
    assert new.to_dict() == {"a": 1, "b": 2, "c": 3}
    clock.advance(rstore.default_ttl + 1)
    forget()
    assert rstore.gc() == 1
    forget()
    assert not rstore.destroy(new.id) and len(rstore) == 0


def test_redis_error_inside_a_script_is_a_storage_error(rstore: RedisStore) -> None:
    s = rstore.create({"a": 1})
    raw(rstore).delete(f"walsess:s:{{{s.ref[:2]}}}:{s.ref}")
    raw(rstore).set(f"walsess:s:{{{s.ref[:2]}}}:{s.ref}", "not a hash")
    with pytest.raises(walsess.StorageError, match=r"refused a command.*WRONGTYPE"):
        rstore.get(s.id)


def test_redis_settings_that_do_not_apply_are_refused(redis_url: str) -> None:
    with pytest.raises(walsess.ValidationError, match="durability"):
        RedisStore.from_url(redis_url, durability="always")
    with pytest.raises(walsess.ValidationError, match="max_sessions"):
        RedisStore.from_url(redis_url, walsess.Options(max_sessions=10))
    for prefix in ("a{b}", "a:b", "a*", "", "x" * 65, 7):
        with pytest.raises(walsess.ValidationError, match="prefix"):
            RedisStore.from_url(redis_url, prefix=prefix)  # type: ignore[arg-type]
    with pytest.raises(walsess.ValidationError, match="decode_responses"):
        RedisStore(redis.Redis.from_url(redis_url, decode_responses=True))
    with pytest.raises(walsess.ValidationError, match="redis-py client"):
        RedisStore(object())
    with pytest.raises(walsess.ValidationError, match="Redis URL"):
        RedisStore.from_url("http://example.com")


def test_redis_import_walsess_needs_no_redis() -> None:
    code = "import sys, walsess; assert 'redis' not in sys.modules; print(walsess.RedisStore)"
    src = str(Path(walsess.__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=src, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "walsess.redis_store.RedisStore" in done.stdout


# -- clients and prefixes ----------------------------------------------------------------


def test_redis_store_on_a_client_the_user_has(url: str, clock: FakeClock) -> None:
    plain = "redis://" + url.partition("://")[2]
    client = ClusterClient.from_url(plain) if "cluster" in url else redis.Redis.from_url(plain)
    store = RedisStore(client, clock=clock, prefix="app1")
    other = RedisStore(client, clock=clock, prefix="app2")
    s = store.create({"a": 1}, user="u")
    assert other.get(s.id) is None and other.sessions_of("u") == [] and len(other) == 0
    with RedisStore.from_url(url, clock=clock, prefix="app1") as again:  # another process
        got = again.get(s.id)
        assert got is not None and dict(got) == {"a": 1}
        got["b"] = 2
    assert "b" in s and s["b"] == 2  # ... whose change every handle sees
    store.close()
    other.close()
    assert client.ping()  # the user's client stays open
    client.close()


def test_redis_put_state_writes_a_session_exactly_and_idempotently(
    rstore: RedisStore, clock: FakeClock
) -> None:
    token = walsess.tokens.new_token()
    digest = walsess.tokens.digest(token)
    state: dict[str, Any] = dict(
        created_at=clock.now - 50, ttl=300.0, idle_remaining=120.0, hard_remaining=1000.0,
        user="dave", meta=b'{"ip":"10.0.0.1"}', data={"cart": b"[1,2]", "n": b"3"},
    )  # fmt: skip
    assert rstore.put_state(digest, **state)
    snapshot = {k: raw(rstore).hgetall(k) for k in all_keys(rstore) if b":s:" in k}
    assert rstore.put_state(digest, **state)  # again: the same session
    assert {k: raw(rstore).hgetall(k) for k in all_keys(rstore) if b":s:" in k} == snapshot
    [info] = rstore.sessions_of("dave")
    assert info.created_at == clock.now - 50 and info.expires_at == clock.now + 120
    assert info.last_seen == clock.now + 120 - 300 and info.meta == {"ip": "10.0.0.1"}
    s = rstore.get(token)
    assert s is not None and s.to_dict() == {"cart": [1, 2], "n": 3} and s.ref == info.ref
    assert s.user == "dave" and s.meta == {"ip": "10.0.0.1"} and s.ttl == 300
    assert not rstore.put_state(walsess.tokens.digest("other"), **{**state, "idle_remaining": 0})
    assert len(rstore) == 1
    with pytest.raises(walsess.ValidationError):
        rstore.put_state(b"short", **state)
    with pytest.raises(walsess.ValidationError, match="idle_remaining"):
        rstore.put_state(digest, **{**state, "idle_remaining": float("nan")})


# -- the integrations, unchanged, on Redis ----------------------------------------------------


def test_redis_flask_apps_in_two_processes_share_sessions(url: str, clock: FakeClock) -> None:
    from flask import Flask, session

    import walsess.flask

    def app_on(store: RedisStore) -> Flask:
        app = Flask(__name__)

        @app.post("/login/<user>")
        def login(user: str) -> str:
            walsess.flask.regenerate(user=user)
            session["user"] = user
            return "ok"

        @app.post("/add/<item>")
        def add(item: str) -> str:
            session["cart"] = [*session.get("cart", []), item]
            return "ok"

        @app.get("/cart")
        def cart() -> Any:
            return {"user": session.get("user"), "cart": session.get("cart", [])}

        walsess.flask.init_app(app, store)
        return app

    with (
        RedisStore.from_url(url, clock=clock) as one,
        RedisStore.from_url(url, clock=clock) as two,
    ):
        first, second = app_on(one).test_client(), app_on(two).test_client()
        first.post("/add/apple")
        first.post("/login/erin")
        cookie = first.get_cookie("session")
        assert cookie is not None
        second.set_cookie("session", cookie.value)
        second.post("/add/pear")
        assert first.get("/cart").json == {"user": "erin", "cart": ["apple", "pear"]}
        assert [i.user for i in two.sessions_of("erin")] == ["erin"]


def test_redis_starlette_middleware_on_redis(url: str, clock: FakeClock) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from walsess.starlette import SessionMiddleware

    async def count(request: Request) -> JSONResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return JSONResponse({"n": request.session["n"]})

    with RedisStore.from_url(url, clock=clock) as store:
        app = Starlette(routes=[Route("/", count)])
        app.add_middleware(SessionMiddleware, store=store)
        with TestClient(app) as client:
            assert [client.get("/").json()["n"] for _ in range(3)] == [1, 2, 3]
        assert len(store) == 1
