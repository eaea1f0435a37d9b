"""A RedisStore made from a Sentinel client (``Sentinel(...).master_for(service)``) on a
real deployment: a primary, its replica and one Sentinel (tests/redis_servers.py).

The whole Store and Session API runs on this kind of store in
tests/test_api_both.py (the ``redis_sentinel`` kind); here is what only
Sentinel means: what errors name, and a failover under a live store. Real
servers only, skipped with the reason when redis-server is missing; readiness
and the failover are polled, never slept for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from redis_servers import RedisSentinel, free_port, missing_reason

import walsess

redis = pytest.importorskip("redis")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402
from redis.sentinel import Sentinel  # noqa: E402

from walsess.redis_store import RedisStore  # noqa: E402


def master_client(port: int, service: str = "walsess") -> Any:
    """A redis-py client on *service*'s primary, found through the Sentinel at *port*.

    Its Sentinel connections are not retried: by default redis-py retries each with
    a backoff, about 4 s before an unreachable Sentinel is an error, and these
    tests want the error, not the wait."""
    no_retry = {"retry": Retry(NoBackoff(), 0)}
    return Sentinel([("127.0.0.1", port)], sentinel_kwargs=no_retry).master_for(service)


@pytest.fixture
def own_deployment(tmp_path: Path) -> Iterator[RedisSentinel]:
    """A deployment of this test's own, for tests that stop its servers (it starts in
    a fraction of a second: the session one is left running for the others)."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    deployment = RedisSentinel.start(tmp_path / "sentinel")
    try:
        yield deployment
    finally:
        deployment.stop()


def test_redis_sentinel_store_names_the_service_and_its_sentinels(
    redis_sentinel: RedisSentinel, redis_sentinel_client: Any, clock: FakeClock
) -> None:
    store = RedisStore(redis_sentinel_client, clock=clock)
    expected = f"redis sentinel service walsess (sentinels 127.0.0.1:{redis_sentinel.port})"
    assert store.address == expected
    assert store.stats()["address"] == expected
    assert expected in repr(store)
    # One server holds every key: the owner's index is kept inside the scripts.
    assert store.cluster is False


def test_redis_sentinel_unreachable_sentinels_raise_redis_unavailable(clock: FakeClock) -> None:
    port = free_port()  # nobody listens there
    with master_client(port) as client, pytest.raises(walsess.RedisUnavailable) as caught:
        RedisStore(client, clock=clock).create({"a": 1})
    message = str(caught.value)
    assert message.startswith(f"redis sentinel service walsess (sentinels 127.0.0.1:{port})")
    assert "no Sentinel named a live primary" in message
    assert "<redis" not in message  # not redis-py's repr of every Sentinel client
    assert isinstance(caught.value, walsess.WalsessError)
    assert isinstance(caught.value.__cause__, redis.sentinel.MasterNotFoundError)


def test_redis_sentinel_unknown_service_raises_redis_unavailable(
    redis_sentinel: RedisSentinel, clock: FakeClock
) -> None:
    with (
        master_client(redis_sentinel.port, "nosuch") as client,
        pytest.raises(walsess.RedisUnavailable, match=r"^redis sentinel service nosuch \("),
    ):
        RedisStore(client, clock=clock).ping()


def test_redis_sentinel_outages_raise_redis_unavailable_naming_the_service(
    own_deployment: RedisSentinel, clock: FakeClock
) -> None:
    client = master_client(own_deployment.port)
    store = RedisStore(client, clock=clock)
    session = store.create({"a": 1})
    name = f"redis sentinel service walsess (sentinels 127.0.0.1:{own_deployment.port})"

    # The Sentinel down, the primary up: the store keeps its open connection to the
    # primary and works on; a client that must ask a Sentinel first cannot connect.
    own_deployment.sentinels[0].stop()
    assert store.get(session.id) is not None
    with (
        master_client(own_deployment.port) as fresh,
        pytest.raises(walsess.RedisUnavailable, match=f"^{re.escape(name)} is unavailable"),
    ):
        RedisStore(fresh, clock=clock).get(session.id)

    # Every server down: the store's connection is gone, no Sentinel answers.
    for server in own_deployment.servers:
        server.stop()
    with pytest.raises(walsess.RedisUnavailable, match=f"^{re.escape(name)} is unavailable"):
        store.get(session.id)
    client.close()


def test_redis_sentinel_failover_keeps_replicated_sessions(
    redis_sentinel: RedisSentinel, redis_sentinel_client: Any, clock: FakeClock
) -> None:
    store = RedisStore(redis_sentinel_client, clock=clock)
    made = [store.create({"n": i}, user="alice", meta={"ip": "10.0.0.1"}) for i in range(10)]
    made[0]["cart"] = [1, 2]
    # Redis replicates asynchronously: the primary acknowledges a write before the
    # replica has it, so a write acknowledged just before a failover can be lost
    # when the replica is promoted. WAIT blocks until the replica has acknowledged
    # every earlier write of this connection (the client's one pooled connection,
    # the one that wrote): only then are they sure to survive the failover.
    assert redis_sentinel_client.wait(1, 1000) == 1
    old = redis_sentinel.primary()

    new = redis_sentinel.failover()

    assert new is not old
    # The same store object: its pooled connection to the old primary was closed by
    # Sentinel when it demoted that server, and redis-py asked the Sentinel again.
    for i, session in enumerate(made):
        again = store.get(session.id)
        assert again is not None and again["n"] == i
    assert made[0]["cart"] == [1, 2]
    assert sorted(info.ref for info in store.sessions_of("alice")) == sorted(s.ref for s in made)
    later = store.create({"after": True}, user="alice")
    made[1]["k"] = "v"
    # Those writes are on the new primary itself, not on the demoted server.
    with redis.Redis(host="127.0.0.1", port=new.port) as client:
        direct = RedisStore(client, clock=clock)
        assert dict(direct.get(later.id) or {}) == {"after": True}
        assert dict(direct.get(made[1].id) or {}) == {"n": 1, "k": "v"}
        assert len(direct.sessions_of("alice")) == 11
