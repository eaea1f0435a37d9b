"""pytest-benchmark runners of the maintenance workloads in ``bench/maintenance.py``.

Groups ``compaction``, ``gc``, ``snapshot`` and ``disk``. What the issue's
targets are about is not a mean time but a latency tail, a ratio or a byte
count, so each test puts its figures in ``extra_info`` (in the
``--benchmark-json`` output) and prints a line (run with ``-s``). Nothing
asserts a timing; the assertions check the workloads did what they claim.
``bench/report.py`` reports the same workloads, with medians and verdicts.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.maintenance import (
    DISK_TARGET,
    PAUSE_TARGET_MS,
    SNAPSHOT_TARGET,
    MaintenanceBench,
    snapshot_open_op,
)


@pytest.mark.benchmark(group="compaction")
def test_compaction_pauses(benchmark: BenchmarkFixture, maintenance: MaintenanceBench) -> None:
    """Time one compact() of N sessions while a writer thread sets keys; its latencies."""
    target = maintenance.compaction()
    window = benchmark.pedantic(  # type: ignore[no-untyped-call]
        target.compaction_window, setup=target.settle, rounds=1, iterations=1, warmup_rounds=0
    )
    assert window.sessions == target.sessions
    assert window.latencies.count >= 1
    target.settle()
    baseline = target.baseline_window(window.compaction_seconds)
    assert baseline.latencies.count >= 1
    benchmark.extra_info.update(
        sessions=target.sessions,
        during_compaction=asdict(window),
        baseline=asdict(baseline),
        max_ms_target=PAUSE_TARGET_MS,
    )
    w, b = window.latencies, baseline.latencies
    print(
        f"\ncompaction of {target.sessions:,} sessions in {window.compaction_seconds:.3f}s;"
        f" writer during it: {w.count:,} sets, p50 {w.p50_ms:.3f} p99 {w.p99_ms:.3f}"
        f" max {w.max_ms:.1f} ms (target <= {PAUSE_TARGET_MS:.0f});"
        f" alone: {b.count:,} sets, p99 {b.p99_ms:.3f} max {b.max_ms:.1f} ms"
    )


@pytest.mark.benchmark(group="gc")
@pytest.mark.parametrize("size", ["large", "small"])
def test_gc(benchmark: BenchmarkFixture, maintenance: MaintenanceBench, size: str) -> None:
    """gc() removing the same number of expired sessions from N and N / 10 sessions."""
    target = maintenance.gc(size)
    removed = benchmark.pedantic(  # type: ignore[no-untyped-call]
        target.gc_op, setup=target.prepare, rounds=7, iterations=1, warmup_rounds=0
    )
    assert removed == target.expired
    benchmark.extra_info.update(sessions=target.sessions, expired=target.expired)


@pytest.mark.benchmark(group="snapshot")
def test_snapshot_load(benchmark: BenchmarkFixture, maintenance: MaintenanceBench) -> None:
    """walsess.open() of a store holding a snapshot of N sessions and an empty log."""
    path, sessions = maintenance.snapshot()
    rounds = 3 if sessions >= 100_000 else 10
    loaded = benchmark.pedantic(  # type: ignore[no-untyped-call]
        snapshot_open_op(path), rounds=rounds, iterations=1, warmup_rounds=0
    )
    assert loaded == sessions
    benchmark.extra_info.update(records=sessions, records_per_s_target=SNAPSHOT_TARGET)
    if benchmark.stats is not None:
        benchmark.extra_info["records_per_s"] = round(sessions / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="disk")
def test_disk_steady_state(benchmark: BenchmarkFixture, maintenance: MaintenanceBench) -> None:
    """Session churn with automatic compaction: max disk against 2 x live + compact_min_bytes."""
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        maintenance.disk, rounds=1, iterations=1, warmup_rounds=0
    )
    assert result.compactions >= 1
    assert result.steady
    summary = result.to_json()
    del summary["samples"]
    benchmark.extra_info.update(summary, target=DISK_TARGET)
    print(
        f"\ndisk churn, ~{result.live_target:,} live sessions, {result.compactions} compactions:"
        f" max disk / (2 x live + {result.compact_min_bytes:,} B) = {result.max_ratio():.2f}"
        f" (estimate-based {result.max_ratio(exact=False):.2f}; target <= {DISK_TARGET})"
    )
