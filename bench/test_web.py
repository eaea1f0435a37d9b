"""``walsess bench``'s web rows (:mod:`walsess.benchmark.web`) in the pytest-benchmark suite.

Each row is a framework (Flask, Django, Starlette) with one session backend,
driven in process; its store holds ``min(scale.sessions, 2000)`` sessions
made through its own application (200 in the CI smoke test). Rows whose
package, adapter or redis-server is missing are skipped, saying what is
missing. With ``--benchmark-disable`` each workload runs one batch; without
it pytest-benchmark times batches of :data:`BATCH` requests (so a round's
time is ``BATCH`` requests), grouped ``web-<framework>-<workload>``.

The overheads over the bare request and the target verdicts are what
``walsess bench --only web`` prints; here they are only checked to be
computed. Nothing asserts a timing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.workloads import Scale
from walsess.benchmark import runner, web
from walsess.benchmark.workloads import session_data

ROWS = [r.key for r in web.ROWS]
PAIRS = [(r.key, w) for r in web.ROWS for w in r.works]
#: Requests per timed round.
BATCH = 50
#: Sessions per row's store, at most (populating goes through the app, request by request).
MAX_SESSIONS = 2000


def available(key: str) -> web.WebRow:
    row = web.web_row(key)
    reason = row.missing()
    if reason is not None:
        pytest.skip(f"{key}: {reason}")
    return row


# -- the whole group, as walsess bench runs it (first: the pool below re-points Django) ---


def test_run_reports_every_row_with_overheads_and_targets(tmp_path: Path) -> None:
    s = web.WebSettings(sessions=4, repeats=2, min_time=0.002)
    r = web.run(str(tmp_path), s)
    assert r.errors == []
    ran = {row.key for row in r.rows}
    assert ran | {row.key for row, _ in r.skipped} == set(ROWS)
    assert all(why for _, why in r.skipped)
    for row in r.rows:
        for w in row.works:
            samples = r.samples[row.key, w]
            assert len(samples) == 2 and all(x > 0 for x in samples)
            if not row.baseline:
                assert r.overhead(row.key, w) is not None
    lines = web.format_report(r)
    text = "\n".join(lines)
    for row in r.rows:
        assert any(line.strip().startswith(row.name) for line in lines), row.key
    for v in r.verdicts():
        assert v.peer in ran and web.web_row(v.peer).target and not web.web_row(v.peer).walsess
        assert v.met == (v.walsess <= 0.5 * v.peer_overhead)
        assert f"target {v.work}: walsess" in text
    for fw in web.FRAMEWORKS:
        if f"{fw}/walsess-interval" in ran and f"{fw}/bare" in ran:
            peers = [k for k in ran if k.startswith(fw) and web.web_row(k).target]
            peers = [k for k in peers if not web.web_row(k).walsess and k != f"{fw}/bare"]
            got = {v.work for v in r.verdicts() if v.framework == fw}
            assert got == ({"read", "write"} if peers else set()), fw
    doc = json.loads(json.dumps(web.to_json(r)))
    assert {x["framework"] + "/" + x["name"] for x in doc["rows"]} == set(ROWS)
    assert len(doc["results"]) == sum(len(row.works) for row in r.rows)


def test_walsess_bench_only_web(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = ["--only", "web-starlette", "--scale", "3", "--json", str(out), "--no-png"]
    assert runner.main([*argv, "--workdir", str(tmp_path / "work")]) == 0
    doc = json.loads(out.read_text())
    assert doc["results"] == [] and doc["peers"] == []  # no other group ran
    assert {x["framework"] for x in doc["web"]["rows"]} == {"starlette"}


def test_a_row_that_fails_is_reported_not_timed(tmp_path: Path) -> None:
    def broken(ctx: web.Context) -> web.Driver:
        raise RuntimeError("no such backend")

    row = web.WebRow("flask", "broken", "a row whose build fails", broken)
    r = web.run(str(tmp_path), web.WebSettings(2, 1, 0.001), [row])
    assert r.errors == [("flask/broken", "set up", "RuntimeError: no such backend")]
    assert r.samples == {}


def _wsgi_500(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
    return [b"boom"]


def test_an_error_answer_stops_the_timing() -> None:
    run = web.WsgiDriver(_wsgi_500, "s").runner("/read", ["s=1", "s=2"])
    with pytest.raises(RuntimeError, match="500"):
        run(3)


def test_time_requests_counts_requests() -> None:
    done = [0]

    def run(n: int) -> None:
        for _ in range(n):
            done[0] += 1

    calls, seconds = web.time_requests(run, 0.005)
    assert calls == done[0] > 0 and seconds >= 0.005


def test_cookie_of_reads_set_and_deleted_cookies() -> None:
    assert web.cookie_of("session=abc; Path=/; HttpOnly") == ("session", "abc")
    assert web.cookie_of('sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT')[1] is None
    assert web.cookie_of("session=abc; Max-Age=0; Path=/")[1] is None


# -- each row: its contract, then every workload ------------------------------------------


class Pool:
    """One prepared row per key, built on first use, all closed at the end."""

    def __init__(self, root: str, sessions: int) -> None:
        self.ctx = web.Context(root)
        self.sessions = sessions
        self.rows: dict[str, web.Prepared] = {}

    def get(self, key: str) -> web.Prepared:
        row = available(key)
        if key not in self.rows:
            self.rows[key] = web.Prepared(row, self.ctx, self.sessions)
        return self.rows[key]

    def close(self) -> None:
        for p in self.rows.values():
            p.close()
        self.rows.clear()
        self.ctx.close()


@pytest.fixture(scope="module")
def pool(scale: Scale, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    p = Pool(str(tmp_path_factory.mktemp("walsess-web")), min(scale.sessions, MAX_SESSIONS))
    try:
        yield p
    finally:
        p.close()


@pytest.mark.parametrize("key", ROWS)
def test_row_serves_its_sessions(pool: Pool, key: str) -> None:
    p = pool.get(key)
    d = p.driver
    assert len(p.cookies) == pool.sessions
    assert all(c.startswith(d.cookie_name + "=") for c in p.cookies)
    if p.row.baseline:
        assert d.request("/none", p.cookies[0]).body == b"ok"
        return
    assert len(set(p.cookies)) == pool.sessions  # one session per client
    last = pool.sessions - 1
    got = d.request("/read", p.cookies[last])
    assert (got.status, got.body) == (200, str(session_data(last)["user_id"]).encode())
    wrote = d.request("/write", p.cookies[last])
    new = wrote.cookies.get(d.cookie_name)
    cookie = p.cookies[last] if new is None else f"{d.cookie_name}={new}"
    assert d.request("/visits", cookie).body == wrote.body
    # the other sessions are untouched by it
    assert d.request("/visits", p.cookies[0]).body != wrote.body


@pytest.mark.parametrize(("key", "work"), PAIRS)
def test_request(benchmark: BenchmarkFixture, pool: Pool, key: str, work: str) -> None:
    row = web.web_row(key)
    benchmark.group = f"web-{row.framework}-{work}"
    benchmark.extra_info["description"] = web.WORKS[work]
    benchmark.extra_info["requests_per_round"] = BATCH
    run = pool.get(key).runs[work]
    benchmark.pedantic(run, args=(BATCH,), rounds=20, warmup_rounds=1, iterations=1)  # type: ignore[no-untyped-call]
