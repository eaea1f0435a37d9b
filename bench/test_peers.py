"""``walsess bench``'s rows and workloads (:mod:`walsess.benchmark`) in the pytest-benchmark suite.

Every workload runs on every row whose store is available here; a row
whose package or server is missing is skipped with the line that says how to
install it. With ``--benchmark-disable`` (the CI smoke test) each runs once
and nothing is timed; without it pytest-benchmark times them, grouped by
workload (``peers-set``, ...), rows side by side. Stores hold
``scale.sessions`` sessions (200 in the CI smoke test).

Nothing here asserts a timing: only that each row stores what it is given
and that each workload runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.workloads import Scale
from walsess.benchmark.measure import rotated, run_batches, run_for, run_threads
from walsess.benchmark.peers import PEERS, PeerSpec, peer_spec
from walsess.benchmark.workloads import (
    WORKLOADS,
    Populated,
    build_store,
    measure_footprint,
    session_data,
    timed_open,
    workload,
)

ROWS = [p.name for p in PEERS]
DURABLE_ROWS = [p.name for p in PEERS if p.durable]
PERSISTENT_ROWS = [p.name for p in PEERS if p.persistent]
OP_WORKLOADS = [w.name for w in WORKLOADS if w.kind == "op"]
THREAD_WORKLOADS = [w.name for w in WORKLOADS if w.kind == "threads"]
#: Calls per thread of one round of a threaded workload.
CALLS_PER_THREAD = 4


def available(name: str) -> PeerSpec:
    """Row *name*, or skip the test saying what is missing and how to install it."""
    spec = peer_spec(name)
    reason = spec.missing()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return spec


class Pool:
    """One populated store per row, built on first use, all closed at the end."""

    def __init__(self, root: str, sessions: int) -> None:
        self.root = root
        self.sessions = sessions
        self.stores: dict[str, Populated] = {}

    def get(self, name: str) -> Populated:
        spec = available(name)
        if name not in self.stores:
            path = os.path.join(self.root, name)
            self.stores[name] = Populated(spec, path, self.sessions)
        return self.stores[name]

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores.clear()


@pytest.fixture(scope="module")
def pool(scale: Scale, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    p = Pool(str(tmp_path_factory.mktemp("walsess-peers")), scale.sessions)
    try:
        yield p
    finally:
        p.close()


# -- each row stores what it is given -----------------------------------------------------


@pytest.mark.parametrize("name", ROWS)
def test_row_contract(name: str, tmp_path: Path) -> None:
    spec = available(name)
    path = os.path.join(tmp_path, "store")
    peer = spec.open(path)
    try:
        assert peer.durable == spec.durable
        a = peer.create({"user_id": 1, "cart": [1, 2]})
        b = peer.create(session_data(7))
        assert isinstance(a, str) and a != b
        assert peer.read(a) == {"user_id": 1, "cart": [1, 2]}
        peer.set(a, "theme", "dark")
        peer.set(a, "user_id", 2)
        assert peer.read(a) == {"user_id": 2, "cart": [1, 2], "theme": "dark"}
        peer.destroy(a)
        assert peer.read(a) is None
        peer.set(a, "theme", "light")  # no row resurrects a destroyed session
        assert peer.read(a) is None
        assert peer.read("no-such-token") is None
        tokens = list(peer.populate(session_data(i) for i in range(3)))
        assert [peer.read(t) for t in tokens] == [session_data(i) for i in range(3)]
    finally:
        peer.close()
    if spec.persistent:
        again = spec.open(path)
        try:
            assert again.read(b) == session_data(7)
            assert again.read(a) is None
            assert [again.read(t) for t in tokens] == [session_data(i) for i in range(3)]
        finally:
            again.close()


def test_missing_row_says_how_to_install() -> None:
    spec = PeerSpec("x", "x", lambda path: peer_spec("floor-dict").open(path), False,
                    modules=("walsess_no_such_module",))  # fmt: skip
    assert spec.missing() == (
        "Python package walsess_no_such_module not installed (pip install 'walsess[bench]')"
    )
    spec = PeerSpec("y", "y", spec.factory, False, programs=("walsess-no-such-program",),
                    install="apt-get install it")  # fmt: skip
    assert spec.missing() == "walsess-no-such-program not found on PATH (apt-get install it)"
    assert peer_spec("floor-dict").missing() is None


# -- every workload once ------------------------------------------------------------------


@pytest.mark.parametrize("work", OP_WORKLOADS)
@pytest.mark.parametrize("name", ROWS)
def test_workload(benchmark: BenchmarkFixture, pool: Pool, name: str, work: str) -> None:
    benchmark.group = f"peers-{work}"
    benchmark.extra_info["description"] = workload(work).description
    store = pool.get(name)
    before = len(store.tokens)
    benchmark(store.operation(work))
    if work == "create":
        assert len(store.tokens) == before  # creates do not join the population
    assert all(store.peer.read(t) is not None for t in store.tokens[:20])


@pytest.mark.parametrize("work", THREAD_WORKLOADS)
@pytest.mark.parametrize("name", DURABLE_ROWS)
def test_durable_workload(benchmark: BenchmarkFixture, pool: Pool, name: str, work: str) -> None:
    benchmark.group = f"peers-{work}"
    benchmark.extra_info["description"] = workload(work).description
    w = workload(work)
    ops = pool.get(name).threaded_operations(work)
    assert len(ops) == w.threads
    calls, seconds = benchmark(lambda: run_threads(ops, calls=CALLS_PER_THREAD))
    assert calls == w.threads * CALLS_PER_THREAD and seconds > 0


def test_run_for_and_threads_count_calls() -> None:
    count = [0]

    def op() -> None:
        count[0] += 1

    calls, seconds = run_for(op, 0.01)
    assert calls == count[0] > 0 and seconds >= 0.01
    calls, seconds = run_threads([op, op, op], duration=0.01)
    assert calls > 0 and seconds >= 0.01

    def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_threads([op, boom], calls=3)


def test_run_batches_grows_and_caps_its_batches() -> None:
    batches: list[int] = []
    calls, seconds = run_batches(batches.append, 0.01, first=8, most=64)
    assert batches[0] == 8 and max(batches) <= 64 and len(batches) > 1
    assert calls == sum(batches) and seconds >= 0.01


def test_rotated_puts_each_first_once_per_round() -> None:
    items = ["a", "b", "c"]
    assert [rotated(items, r)[0] for r in range(4)] == ["a", "b", "c", "a"]
    assert all(sorted(rotated(items, r)) == items for r in range(3))
    assert rotated([], 5) == []


@pytest.mark.parametrize("name", PERSISTENT_ROWS)
def test_open(benchmark: BenchmarkFixture, scale: Scale, name: str, tmp_path: Path) -> None:
    spec = available(name)
    benchmark.group = "peers-open"
    path = os.path.join(tmp_path, "store")
    built = build_store(spec, scale.sessions, path)

    def reopen() -> object:
        peer, got, seconds = timed_open(spec, path, built.token)
        peer.close()
        assert got == session_data(scale.sessions - 1) and seconds > 0
        return got

    benchmark.pedantic(reopen, rounds=3, iterations=1)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("name", ROWS)
def test_memory_and_disk(scale: Scale, name: str, tmp_path: Path) -> None:
    """The child process of the memory, disk and open workloads; figures printed (``-s``)."""
    spec = available(name)
    n = scale.sessions
    path = os.path.join(tmp_path, "store")
    token, disk = "", 0
    if spec.persistent:
        built = build_store(spec, n, path)
        token, disk = built.token, built.disk_bytes
        assert built.sessions == n and disk > 0
    fp = measure_footprint(name, n, path, token, opens=1)
    assert isinstance(fp["rss_bytes"], int)
    assert len(fp["open_seconds"]) == (1 if spec.persistent else 0)
    print(
        f"\n{name}: {n} sessions, memory {fp['rss_bytes'] / n:,.0f} B/session,"
        f" disk {disk / n:,.0f} B/session, open {fp['open_seconds']}"
    )
