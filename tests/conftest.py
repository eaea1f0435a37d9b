"""Shared test fixtures: an injectable clock, a store directory, hypothesis profiles,
real Redis servers (tests/redis_servers.py) and ``any_store``, each kind of store in turn.

Hypothesis runs derandomized under the ``ci`` profile (selected when CI is
set, or with HYPOTHESIS_PROFILE=ci) so a CI run is repeatable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar, Union

import pytest
from hypothesis import HealthCheck, settings
from redis_servers import RedisCluster, RedisNode, RedisSentinel, flush, missing_reason

import walsess
from walsess.clock import ManualClock

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


#: A clock tests move by hand: no test sleeps to wait for expiry.
FakeClock = ManualClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_dir(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def store(store_dir: str, clock: FakeClock) -> Iterator[walsess.Store]:
    # No background gc: on a clock that moves only when told, it would be noise.
    s = walsess.open(store_dir, clock=clock, cleanup_interval=None)
    try:
        yield s
    finally:
        s.close()


def appended(store: walsess.Store) -> int:
    """Records the store has appended since it was opened."""
    return int(store.stats()["records_appended"])


def reopen_data(path: str, token: str, clock: ManualClock) -> dict[str, Any] | None:
    """The session's data as a fresh open of the store directory sees it."""
    with walsess.open(path, clock=clock, cleanup_interval=None) as s:
        handle = s.get(token)
        return None if handle is None else dict(handle)


def parse_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """A ``Set-Cookie`` header as (name, value, attributes with lower-cased names;
    flags map to ""), for the integrations' tests."""
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    attrs: dict[str, str] = {}
    for part in rest:
        if part:
            k, _, v = part.partition("=")
            attrs[k.strip().lower()] = v.strip()
    return name, value, attrs


def start_child(
    code: str, *args: str, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], threading.Timer]:
    """Run *code* in a child Python importing this checkout's walsess, with pipes on
    stdout and stderr and a watchdog that kills it after *timeout* seconds (cancel
    the returned timer when done)."""
    env = dict(os.environ)
    src = str(Path(walsess.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    return proc, watchdog


# -- Redis: real servers, started once per test session -------------------------------

#: A store of either kind: the tests in test_api_both.py run against each.
AnyStore = Union[walsess.Store, "walsess.RedisStore"]

#: The kinds of store the behavioural suite runs against (the any_store fixture).
STORE_KINDS = ("embedded", "redis", "redis_cluster", "redis_sentinel")


class _Deployment(Protocol):
    def stop(self) -> None: ...


_D = TypeVar("_D", bound=_Deployment)


def _deployment(start: Callable[[Path], _D], directory: Path) -> Iterator[_D]:
    """Start a Redis deployment of several servers in *directory*, yield it, stop
    it; skip the test, saying why, if redis-server is missing."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    deployment = start(directory)
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="session")
def redis_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    """One ``redis-server`` on a free 127.0.0.1 port, for the whole test session."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with RedisNode.start(tmp_path_factory.mktemp("redis")) as node:
        yield node


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on free 127.0.0.1 ports, for the whole test session."""
    yield from _deployment(RedisCluster.start, tmp_path_factory.mktemp("redis-cluster"))


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A primary, its replica and one Sentinel monitoring them as ``walsess``, on free
    127.0.0.1 ports, for the whole test session (a test may fail it over)."""
    yield from _deployment(RedisSentinel.start, tmp_path_factory.mktemp("redis-sentinel"))


@pytest.fixture
def redis_url(redis_node: RedisNode) -> str:
    """The single node's URL, emptied (FLUSHALL) for this test."""
    flush(redis_node.port)
    return f"redis://127.0.0.1:{redis_node.port}/0"


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """A cluster URL for RedisStore.from_url, every master emptied for this test."""
    for node in redis_cluster.nodes:
        flush(node.port)
    return f"redis+cluster://127.0.0.1:{redis_cluster.port}"


@pytest.fixture
def redis_sentinel_client(redis_sentinel: RedisSentinel) -> Iterator[Any]:
    """A redis-py client on the Sentinel deployment's primary (``Sentinel(...).master_for``),
    whichever server that is now, emptied (FLUSHALL) for this test; closed after it."""
    from redis.sentinel import Sentinel

    flush(redis_sentinel.primary().port)
    client = Sentinel([("127.0.0.1", redis_sentinel.port)]).master_for(redis_sentinel.service)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_any(
    store_kind: str, request: pytest.FixtureRequest, store_dir: str, clock: FakeClock
) -> Iterator[Callable[..., AnyStore]]:
    """``open_any(**settings)``: a store of this test's kind with *settings*, on the
    test's clock (no background gc for the embedded one); closed after the test.
    Each call gives another store: a new directory, or a new Redis prefix."""
    url = client = None
    if store_kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif store_kind == "redis_cluster":
        url = request.getfixturevalue("redis_cluster_url")
    elif store_kind == "redis_sentinel":
        client = request.getfixturevalue("redis_sentinel_client")
    opened: list[AnyStore] = []

    def open_store(**settings: Any) -> AnyStore:
        settings.setdefault("clock", clock)
        store: AnyStore
        prefix = f"t{len(opened)}"
        if client is not None:
            store = walsess.RedisStore(client, prefix=prefix, **settings)
        elif url is not None:
            store = walsess.RedisStore.from_url(url, prefix=prefix, **settings)
        else:
            settings.setdefault("cleanup_interval", None)
            store = walsess.open(f"{store_dir}{len(opened) or ''}", **settings)
        opened.append(store)
        return store

    try:
        yield open_store
    finally:
        for store in opened:
            store.close()


@pytest.fixture
def any_store(open_any: Callable[..., AnyStore]) -> AnyStore:
    """A store of each kind in turn (embedded, Redis, Redis Cluster, a Sentinel master)
    with the default settings."""
    return open_any()
