"""``walsess export``: an embedded store's sessions moved into Redis (walsess/export.py).

Each test runs against a real single ``redis-server`` and a real 3-master
Redis Cluster (the ``target_url`` fixture). Expiry is judged on an injected
clock shared by the embedded store and the RedisStore: no test sleeps.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from conftest import FakeClock
from redis_servers import free_port

import walsess
from walsess.cli import main
from walsess.export import ExportReport, export_store


@pytest.fixture(params=["redis", "redis_cluster"])
def target_url(request: pytest.FixtureRequest) -> str:
    """An emptied Redis: a single node, then a cluster."""
    name = "redis_url" if request.param == "redis" else "redis_cluster_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def target(target_url: str, clock: FakeClock) -> Iterator[walsess.RedisStore]:
    with walsess.RedisStore.from_url(target_url, prefix="moved", clock=clock) as store:
        yield store


def client_of(url: str) -> Any:
    """A plain redis-py client on *url* (a cluster client for a cluster URL)."""
    if url.startswith("redis+cluster://"):
        return redis.cluster.RedisCluster.from_url("redis://" + url.partition("://")[2])
    return redis.Redis.from_url(url)


def dump(url: str, prefix: str) -> dict[bytes, Any]:
    """Every key of *prefix* on the Redis at *url*, with its full content (hashes
    field by field, sorted sets with their scores), keys without the prefix so
    two prefixes compare. Each key must carry a Redis TTL (checked, not compared:
    Redis counts it down in real time)."""
    client = client_of(url)
    try:
        out: dict[bytes, Any] = {}
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            kind = client.type(key)
            if kind == b"hash":
                value: Any = client.hgetall(key)
                assert client.pttl(key) > 0, key
            else:
                assert kind == b"zset", (key, kind)
                value = client.zrange(key, 0, -1, withscores=True)
            out[key[len(prefix) :]] = value
        return out
    finally:
        client.close()


def db_size(url: str) -> int:
    client = client_of(url)
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            sizes = client.dbsize(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            return sum(sizes.values()) if isinstance(sizes, dict) else int(sizes)
        return int(client.dbsize())
    finally:
        client.close()


def build(path: str, clock: FakeClock) -> dict[str, dict[str, Any]]:
    """An embedded store with a snapshot and a log after it: sessions with and
    without an owner, metadata, an absolute lifetime, other idle timeouts, one
    destroyed and one expired. Returns {token: what each live session holds}."""
    live: dict[str, dict[str, Any]] = {}
    with walsess.open(path, clock=clock, cleanup_interval=None) as store:
        doomed = store.create({"x": 1}, ttl=10)
        made = [
            store.create({"i": i, "name": f"n{i}"}, user=f"u{i % 3}", meta={"ip": f"10.0.0.{i}"})
            for i in range(7)
        ]
        made.append(store.create({"anon": True}, ttl=7200, max_lifetime=3 * 3600))
        made.append(store.create(ttl=60))
        store.compact()
        made[0]["cart"] = [1, 2]
        made[1].update(a=1, b={"c": None})
        del made[2]["name"]
        store.destroy(made[3].id)
        del made[3]
        clock.advance(11)  # doomed expires, the others (idle >= 60 s) do not
        assert not store.exists(doomed.id)
        for s in made:
            live[s.id] = {
                "data": dict(s),
                "ref": s.ref,
                "user": s.user,
                "meta": s.meta,
                "created_at": s.created_at,
                "expires_at": s.expires_at,
                "ttl": s.ttl,
            }
    return live


def test_every_live_session_moves_and_its_token_works(
    target: walsess.RedisStore, target_url: str, store_dir: str, clock: FakeClock
) -> None:
    live = build(store_dir, clock)
    seen: list[tuple[int, int]] = []
    report = export_store(store_dir, target, progress=lambda d, t: seen.append((d, t)))
    assert report == ExportReport(
        sessions=len(live), expired=1, users=3, anonymous=2,
        data_bytes=report.data_bytes, dry_run=False, seconds=report.seconds,
    )  # fmt: skip
    assert report.data_bytes > 0
    assert seen == [(i, len(live) + 1) for i in range(1, len(live) + 2)]
    assert len(target) == len(live)
    for token, want in live.items():
        assert target.exists(token)
        s = target.get(token)
        assert s is not None, want
        assert s.to_dict() == want["data"]
        assert (s.ref, s.user, s.meta, s.created_at, s.ttl) == (
            want["ref"], want["user"], want["meta"], want["created_at"], want["ttl"],
        )  # fmt: skip
    for user in ("u0", "u1", "u2"):
        refs = {info.ref for info in target.sessions_of(user)}
        assert refs == {w["ref"] for w in live.values() if w["user"] == user}
        assert refs
    # Revoking by ref works on the moved sessions, and the token dies with it.
    token, want = next((t, w) for t, w in live.items() if w["user"] == "u0")
    assert target.revoke(want["ref"]) and target.get(token) is None
    assert want["ref"] not in {info.ref for info in target.sessions_of("u0")}
    # The absolute lifetime moved too: the 3-hour session dies at its deadline
    # however often it is read.
    anon = next(t for t, w in live.items() if w["data"] == {"anon": True})
    for _ in range(3):
        clock.advance(3600 - 20)
        assert target.get(anon) is not None
    clock.advance(3600)
    assert target.get(anon) is None


def test_remaining_idle_time_moves(
    target: walsess.RedisStore, store_dir: str, clock: FakeClock
) -> None:
    with walsess.open(store_dir, clock=clock, cleanup_interval=None) as store:
        s = store.create({"a": 1}, ttl=100)
        clock.advance(30)  # 70 s left, not read since
        token = s.id
    export_store(store_dir, target)
    clock.advance(69)
    assert target.exists(token)
    clock.advance(1)
    assert not target.exists(token)


def test_running_twice_changes_nothing(
    target: walsess.RedisStore, target_url: str, store_dir: str, clock: FakeClock
) -> None:
    live = build(store_dir, clock)
    export_store(store_dir, target)
    once = dump(target_url, "moved")
    assert len([k for k in once if b":s:" in k]) == len(live)
    again = export_store(store_dir, target)
    assert again.sessions == len(live)
    assert dump(target_url, "moved") == once


def test_an_interrupted_export_rerun_is_a_whole_export(
    target_url: str, store_dir: str, clock: FakeClock
) -> None:
    live = build(store_dir, clock)
    with walsess.RedisStore.from_url(target_url, prefix="whole", clock=clock) as whole:
        export_store(store_dir, whole)

    class Interrupted(Exception):
        pass

    def stop_after_3(done: int, total: int) -> None:
        if done == 3:
            raise Interrupted

    with walsess.RedisStore.from_url(target_url, prefix="rerun", clock=clock) as rerun:
        with pytest.raises(Interrupted):
            export_store(store_dir, rerun, progress=stop_after_3)
        part = dump(target_url, "rerun")
        assert 0 < len([k for k in part if b":s:" in k]) < len(live)
        export_store(store_dir, rerun)  # the lock was released by the interruption
    assert dump(target_url, "rerun") == dump(target_url, "whole")


def test_dry_run_writes_nothing(
    target: walsess.RedisStore, target_url: str, store_dir: str, clock: FakeClock
) -> None:
    live = build(store_dir, clock)
    report = export_store(store_dir, target, dry_run=True)
    assert (report.sessions, report.expired, report.users, report.dry_run) == (
        len(live), 1, 3, True,
    )  # fmt: skip
    assert db_size(target_url) == 0
    assert report.data_bytes == export_store(store_dir, target).data_bytes
    for token in live:
        assert target.exists(token)


def test_dry_run_from_the_command_line_leaves_redis_empty(target_url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with walsess.open(path, cleanup_interval=None) as store:  # the wall clock, as the CLI
        for i in range(5):
            store.create({"i": "x" * i}, user=f"u{i % 2}")
        store.create({"anon": 1})
    out = io.StringIO()
    assert main(["export", path, "--to", target_url, "--dry-run"], out) == 0
    assert db_size(target_url) == 0
    text = out.getvalue()
    assert text.startswith("would copy 6 sessions of 2 users (1 without one)"), text
    assert "nothing written" in text


def test_export_from_the_command_line(target_url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with walsess.open(path, cleanup_interval=None) as store:
        tokens = {store.create({"i": i}, user="ann").id: {"i": i} for i in range(3)}
    out = io.StringIO()
    assert main(["export", path, "--to", target_url, "--prefix", "app"], out) == 0
    assert out.getvalue().startswith("copied 3 sessions of 1 users (0 without one)")
    with walsess.RedisStore.from_url(target_url, prefix="app") as moved:
        for token, data in tokens.items():
            s = moved.get(token)
            assert s is not None and s.to_dict() == data
        assert len(moved.sessions_of("ann")) == 3
    # Twice: the same sessions again.
    assert main(["export", path, "--to", target_url, "--prefix", "app"], io.StringIO()) == 0
    with walsess.RedisStore.from_url(target_url, prefix="app") as moved:
        assert len(moved) == 3


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(list(argv), out)
    return status, out.getvalue(), err.getvalue()


def test_unreachable_redis_exits_1_with_the_address(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with walsess.open(path, cleanup_interval=None) as store:
        store.create({"a": 1})
    port = free_port()  # nobody listens there
    started = time.monotonic()
    status, out, err = run_main("export", path, "--to", f"redis://127.0.0.1:{port}/0")
    assert status == 1 and out == "", err
    assert err.startswith("walsess: error: ") and err.count("\n") == 1, err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err
    assert time.monotonic() - started < 30


def test_bad_url_or_prefix_is_a_usage_error(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with walsess.open(path, cleanup_interval=None) as store:
        store.create({"a": 1})
    for argv in (["--to", "http://x"], ["--to", "redis://127.0.0.1:1", "--prefix", "a:b"]):
        status, _, err = run_main("export", path, *argv)
        assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    status, _, err = run_main("export", path)  # --to is required
    assert status == 2 and "--to" in err


def test_refuses_a_store_open_elsewhere(target_url: str, store_dir: str, clock: FakeClock) -> None:
    with walsess.open(store_dir, clock=clock, cleanup_interval=None) as store:
        store.create({"a": 1})
        with (
            walsess.RedisStore.from_url(target_url, clock=clock) as target,
            pytest.raises(walsess.LockedError, match="stop the application"),
        ):
            export_store(store_dir, target)
        status, _, err = run_main("export", store_dir, "--to", target_url)
        assert status == 1 and "stop the application" in err
    assert db_size(target_url) == 0


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the progress bar draws on it."""

    def isatty(self) -> bool:
        return True


def test_the_command_draws_a_bar_on_a_terminal_and_erases_it(
    target_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "store")
    with walsess.open(path, cleanup_interval=None) as store:
        for i in range(3):
            store.create({"i": i})
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["export", path, "--to", target_url], io.StringIO()) == 0
    drawn = term.getvalue()
    frames = re.findall(r"\rexporting \[[#.]{30}\] (\d+/\d+) ", drawn)
    assert frames == ["1/3", "2/3", "3/3"], drawn
    assert drawn.endswith("\r" + " " * 100 + "\r")
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    assert main(["export", path, "--to", target_url, "--dry-run"], io.StringIO()) == 0
    assert plain.getvalue() == ""  # not a terminal: nothing drawn
