"""Maintenance benchmarks: compaction pauses, gc, snapshot load and steady-state disk.

Like :mod:`bench.workloads` (whose scale it reuses, and the data and access
plans of :mod:`walsess.benchmark.workloads`),
this module holds the workloads only; ``bench/test_maintenance.py`` and
``bench/report.py`` are thin runners. Stores hold ``N = scale.maintenance_sessions``
sessions of five small keys (``N`` is the replay-log record count:
1,000,000 at full scale, 1,000 in the CI smoke test).

* **compaction**: :class:`CompactionTarget`. ``store.compact()`` runs in one
  thread while a writer thread sets one key per call on random sessions and
  records the latency of every call (``time.perf_counter_ns`` around it)
  until the compaction returns; :meth:`~CompactionTarget.baseline_window`
  records the same writer alone for as long, for comparison. Automatic
  compaction and the cleanup thread are off.
* **gc**: :class:`GcTarget`. ``N`` sessions, of which :func:`gc_expired` (1,000
  at full scale) have a short ttl; an injected :class:`ManualClock` is moved
  past it and ``store.gc()`` is timed. The same on a store ten times smaller
  with as many expired sessions shows whether gc costs O(expired) or O(N).
* **snapshot**: :func:`snapshot_open_op` opens a store that holds a snapshot
  of ``N`` sessions and an empty log (:meth:`MaintenanceBench.snapshot`).
* **disk**: :func:`churn` runs sessions through their life (create, update,
  log out or expire through the injected clock and gc) with automatic
  compaction on, and samples the bytes on disk against the live bytes
  whenever no compaction is running.

Example::

    with MaintenanceBench("/tmp/mb", Scale(20_000)) as mb:
        target = mb.compaction()
        target.settle()
        window = target.compaction_window()
        print(window.latencies.max_ms, window.compaction_seconds)
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import walsess
from bench.workloads import TTL, Scale
from walsess.benchmark.measure import run_threads
from walsess.benchmark.workloads import KEYS, SEED, access_plan, new_value, session_data
from walsess.clock import ManualClock

__all__ = [
    "DISK_RATIO",
    "DISK_TARGET",
    "DISK_TTL_TICKS",
    "GC_RATIO_MET_BELOW",
    "MAINTENANCE_GROUPS",
    "PAUSE_TARGET_MS",
    "SNAPSHOT_TARGET",
    "CompactionTarget",
    "DiskResult",
    "DiskSample",
    "GcTarget",
    "Latencies",
    "MaintenanceBench",
    "ManualClock",
    "PauseWindow",
    "build_snapshot",
    "churn",
    "disk_live_sessions",
    "disk_min_bytes",
    "gc_expired",
    "snapshot_open_op",
]

#: The report groups this module adds to :data:`bench.workloads.GROUPS`.
MAINTENANCE_GROUPS = ("compaction", "gc", "snapshot", "disk")

#: Target: the longest writer call while a compaction runs, in milliseconds.
PAUSE_TARGET_MS = 50.0
#: Target: sessions loaded per second when opening a store from its snapshot.
SNAPSHOT_TARGET = 2_000_000.0
#: Target: max(disk) / (2 x live + compact_min_bytes) in the steady state.
DISK_TARGET = 1.0
#: gc of the large store over gc of the small one "is ~1": the report calls it
#: met below this (gc in O(N) would give ~10, the stores' size ratio).
GC_RATIO_MET_BELOW = 2.0

#: Expired sessions per gc at full scale.
GC_EXPIRED = 1_000
#: The small gc store holds N // GC_SMALL_DIVISOR sessions.
GC_SMALL_DIVISOR = 10
#: Idle timeout of the sessions gc is to remove (the rest have ``TTL``, 7 days).
SHORT_TTL = 60.0

#: compact_min_bytes of the disk churn at full scale (scaled down with N).
DISK_MIN_BYTES = 1 << 20
#: compact_ratio of the disk churn (the store's default).
DISK_RATIO = 2.0
#: Session idle timeout in the churn, in ticks (one tick = one second of the
#: injected clock); the churn runs DISK_WARMUP + DISK_MEASURE lifetimes.
DISK_TTL_TICKS = 20
DISK_WARMUP = 2
DISK_MEASURE = 5
#: Samples per tick (the tick's work is done in this many slices).
DISK_SLICES = 2


def _fresh_dir(path: str) -> str:
    if os.path.exists(path):
        shutil.rmtree(path)
    return path


# -- latencies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Latencies:
    """Per-call latencies of one window: how many calls, and quantiles in ms."""

    count: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, ns: list[int], seconds: float) -> Latencies:
        """From per-call nanoseconds (nearest-rank quantiles); NaN if there are none."""
        s = sorted(ns)

        def q(p: float) -> float:
            return s[max(0, math.ceil(p * len(s)) - 1)] / 1e6 if s else math.nan

        return cls(len(s), seconds, q(0.5), q(0.99), s[-1] / 1e6 if s else math.nan)


class _FullCollections:
    """Counts the interpreter's full (generation 2) garbage collections while
    active, and the longest: a writer pause may be one of those, not walsess."""

    def __init__(self) -> None:
        self.count = 0
        self.max_ms = 0.0
        self._t0 = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter_ns()
        else:
            self.count += 1
            self.max_ms = max(self.max_ms, (time.perf_counter_ns() - self._t0) / 1e6)

    def __enter__(self) -> _FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def _write_until(
    ops: Iterator[tuple[walsess.Session, str, Any]], stop: threading.Event, out: list[int]
) -> None:
    """Set one key per call, appending each call's latency (ns) to *out*, until *stop*.

    Makes at least one call, so a window is never empty.
    """
    clock = time.perf_counter_ns
    append = out.append
    stopped = stop.is_set
    for s, k, v in ops:
        t0 = clock()
        s[k] = v
        append(clock() - t0)
        if stopped():
            return


# -- compaction: writer latencies while compact() runs -------------------------------


@dataclass(frozen=True)
class PauseWindow:
    """The writer's latencies over one window, with or without a compaction in it.

    ``full_gcs``/``full_gc_max_ms``: the interpreter's generation-2 collections
    during the window (any thread), which pause every thread alike.
    """

    kind: str  # "compaction" or "baseline"
    latencies: Latencies
    compaction_seconds: float  # 0.0 for a baseline window
    sessions: int  # sessions the compaction wrote (0 for a baseline)
    snapshot_bytes: int
    full_gcs: int
    full_gc_max_ms: float


class CompactionTarget:
    """A store of *sessions* sessions (five small keys), automatic compaction and
    the cleanup thread off, with the handles a seeded access plan writes to.

    Only the handles the plan uses are kept (at most 65,536), not one per session.
    """

    def __init__(
        self, path: str, sessions: int, durability: str = "interval", seed: int = SEED
    ) -> None:
        self.path = path
        self.sessions = sessions
        self.store = walsess.open(
            path,
            durability=durability,
            default_ttl=TTL,
            compact_ratio=None,
            cleanup_interval=None,
        )
        plan = access_plan(sessions, seed)
        wanted = {i for i, _, _ in plan}
        handles: dict[int, walsess.Session] = {}
        create = self.store.create
        for i in range(sessions):
            s = create(session_data(i))
            if i in wanted:
                handles[i] = s
        self._ops: Iterator[tuple[walsess.Session, str, Any]] = itertools.cycle(
            [(handles[i], k, v) for i, k, v in plan]
        )

    def settle(self) -> None:
        """Collect the interpreter's garbage before a window (not part of it)."""
        gc.collect()

    def compaction_window(self) -> PauseWindow:
        """``store.compact()`` in one thread, the writer in another until it returns."""
        latencies: list[int] = []
        done = threading.Event()
        result: list[tuple[walsess.Compaction, float]] = []

        # run_threads starts both together
        def compactor() -> None:
            try:
                t0 = time.perf_counter()
                compaction = self.store.compact()
                result.append((compaction, time.perf_counter() - t0))
            finally:
                done.set()

        def writer() -> None:
            _write_until(self._ops, done, latencies)

        with _FullCollections() as full:
            run_threads([compactor, writer], calls=1)
        compaction, seconds = result[0]
        return PauseWindow(
            "compaction",
            Latencies.of(latencies, seconds),
            seconds,
            compaction.sessions,
            compaction.snapshot_bytes,
            full.count,
            full.max_ms,
        )

    def baseline_window(self, seconds: float) -> PauseWindow:
        """The same writer alone for *seconds* (at least 10 ms): no compaction."""
        seconds = max(seconds, 0.01)
        latencies: list[int] = []
        stop = threading.Event()
        took: list[float] = []

        def writer() -> None:
            t0 = time.perf_counter()
            _write_until(self._ops, stop, latencies)
            took.append(time.perf_counter() - t0)

        def timer() -> None:
            time.sleep(seconds)
            stop.set()

        with _FullCollections() as full:
            run_threads([writer, timer], calls=1)
        return PauseWindow(
            "baseline", Latencies.of(latencies, took[0]), 0.0, 0, 0, full.count, full.max_ms
        )

    def finish(self) -> str:
        """Compact once more with no writer (the log is then empty), close; the path."""
        self.store.compact()
        self.close()
        return self.path

    def close(self) -> None:
        self.store.close()


# -- gc: cost against expired sessions, not all sessions ------------------------------


class GcTarget:
    """A store of *sessions* sessions, *expired* of which :meth:`prepare` makes due.

    The store runs on a :class:`ManualClock`. It is built with ``sessions -
    expired`` sessions of ttl ``TTL`` (7 days) and *expired* of ttl
    ``SHORT_TTL``, spread evenly among them; :meth:`prepare` moves the clock
    past ``SHORT_TTL`` (after the first round, it first creates *expired*
    new short-lived sessions, so the store keeps its size), and
    :meth:`gc_op` removes them. Call them alternately.
    """

    def __init__(
        self, path: str, sessions: int, expired: int, durability: str = "interval"
    ) -> None:
        if not 0 < expired <= sessions:
            raise ValueError(f"expired must be in 1..{sessions}, not {expired}")
        self.path = path
        self.sessions = sessions
        self.expired = expired
        self.clock = ManualClock()
        self.store = walsess.open(
            path,
            durability=durability,
            default_ttl=TTL,
            compact_ratio=None,
            cleanup_interval=None,
            clock=self.clock,
        )
        step = sessions // expired
        short = set(range(step - 1, step * expired, step))
        create = self.store.create
        for i in range(sessions):
            if i in short:
                create(session_data(i), ttl=SHORT_TTL)
            else:
                create(session_data(i))
        self._next = sessions
        self._due = expired  # short-lived sessions that exist and gc has not removed

    def prepare(self) -> None:
        """Make exactly ``expired`` sessions due for gc (not timed)."""
        if self._due == 0:
            create = self.store.create
            for i in range(self._next, self._next + self.expired):
                create(session_data(i), ttl=SHORT_TTL)
            self._next += self.expired
            self._due = self.expired
        self.clock.advance(SHORT_TTL + 1.0)

    def gc_op(self) -> int:
        """``store.gc()``: the timed call. Returns how many sessions it removed."""
        removed = self.store.gc()
        self._due = 0
        return removed

    def close(self) -> None:
        self.store.close()


# -- snapshot load ---------------------------------------------------------------------


def build_snapshot(path: str, sessions: int) -> int:
    """Make *path* a store holding a snapshot of *sessions* sessions and an empty log."""
    with walsess.open(
        path, durability="never", default_ttl=TTL, compact_ratio=None, cleanup_interval=None
    ) as store:
        create = store.create
        for i in range(sessions):
            create(session_data(i))
        store.compact()
    return sessions


def snapshot_open_op(path: str) -> Callable[[], int]:
    """Open the store in *path* (load its snapshot), close it; returns sessions loaded.

    Raises if the store's log held records: the measure is the snapshot alone.
    """

    def op() -> int:
        store = walsess.open(path, durability="never", compact_ratio=None, cleanup_interval=None)
        try:
            recovery = store.recovery
            if recovery.records:
                raise RuntimeError(f"{path}: the log holds {recovery.records} records")
            return recovery.snapshot_sessions
        finally:
            store.close()

    return op


# -- steady-state disk -----------------------------------------------------------------


@dataclass(frozen=True)
class DiskSample:
    """Bytes on disk and live bytes at one point with no compaction running."""

    tick: int
    sessions: int
    snapshot_bytes: int
    log_bytes: int
    live_exact: int
    live_estimate: int

    @property
    def disk_bytes(self) -> int:
        return self.snapshot_bytes + self.log_bytes


@dataclass
class DiskResult:
    """What :func:`churn` saw. Ratios are over the steady-state samples
    (ticks from ``warmup_ticks`` on): disk / (2 x live + compact_min_bytes)."""

    live_target: int
    ttl_ticks: int
    warmup_ticks: int
    ticks: int
    compact_min_bytes: int
    compact_ratio: float
    operations: int = 0
    seconds: float = 0.0
    compactions: int = 0
    skipped: int = 0  # sample points passed over because a compaction was running
    samples: list[DiskSample] = field(default_factory=list)

    @property
    def steady(self) -> list[DiskSample]:
        return [s for s in self.samples if s.tick >= self.warmup_ticks]

    def bound(self, s: DiskSample, exact: bool = True) -> float:
        """2 x live + compact_min_bytes at sample *s*."""
        live = s.live_exact if exact else s.live_estimate
        return 2.0 * live + self.compact_min_bytes

    def worst(self, exact: bool = True) -> DiskSample | None:
        """The steady-state sample with the largest disk / bound."""
        steady = self.steady
        return max(steady, key=lambda s: s.disk_bytes / self.bound(s, exact)) if steady else None

    def max_ratio(self, exact: bool = True) -> float:
        w = self.worst(exact)
        return math.nan if w is None else w.disk_bytes / self.bound(w, exact)

    def to_json(self) -> dict[str, Any]:
        biggest = max(self.steady, key=lambda s: s.disk_bytes, default=None)
        return {
            "live_target": self.live_target,
            "ttl_ticks": self.ttl_ticks,
            "warmup_ticks": self.warmup_ticks,
            "ticks": self.ticks,
            "compact_min_bytes": self.compact_min_bytes,
            "compact_ratio": self.compact_ratio,
            "operations": self.operations,
            "seconds": self.seconds,
            "compactions": self.compactions,
            "skipped": self.skipped,
            "steady_samples": len(self.steady),
            "max_disk_bytes": None if biggest is None else biggest.disk_bytes,
            "max_ratio_exact": self.max_ratio(exact=True),
            "max_ratio_estimate": self.max_ratio(exact=False),
            "samples": [{**asdict(s), "disk_bytes": s.disk_bytes} for s in self.samples],
        }


def churn(
    path: str,
    live: int,
    *,
    compact_min_bytes: int,
    compact_ratio: float = DISK_RATIO,
    ttl_ticks: int = DISK_TTL_TICKS,
    warmup: int = DISK_WARMUP,
    measure: int = DISK_MEASURE,
    slices: int = DISK_SLICES,
    durability: str = "interval",
    seed: int = SEED,
) -> DiskResult:
    """Run about *live* sessions through their lives with automatic compaction on.

    Time is an injected :class:`ManualClock` moved one second per tick; every
    session has an idle timeout of *ttl_ticks* ticks. Each tick: the sessions
    due to log out are destroyed (``store.destroy``), ``store.gc()`` removes
    those that expired, then ``c`` sessions are created (half of them will
    log out after 1..ttl-1 ticks, the rest are abandoned and expire) and
    ``4c`` keys set on random live sessions, in *slices* slices, each
    followed by a sample when no compaction is running. ``c`` is chosen so
    about *live* sessions are live in the steady state, reached after one
    lifetime; the run lasts ``warmup + measure`` lifetimes and samples from
    the ``warmup``-th on count as steady state.
    """
    if ttl_ticks < 2 or live < 1 or slices < 1:
        raise ValueError("need ttl_ticks >= 2, live >= 1 and slices >= 1")
    ticks = (warmup + measure) * ttl_ticks
    result = DiskResult(
        live, ttl_ticks, warmup * ttl_ticks, ticks, compact_min_bytes, compact_ratio
    )
    # Average lifetime 0.75 ttl: half live ttl/2 on average, half the full ttl.
    creates = max(1, round(live / (0.75 * ttl_ticks)))
    updates = 4 * creates
    rng = random.Random(seed)
    clock = ManualClock()
    store = walsess.open(
        path,
        durability=durability,
        default_ttl=float(ttl_ticks),
        compact_ratio=compact_ratio,
        compact_min_bytes=compact_min_bytes,
        cleanup_interval=None,
        clock=clock,
    )
    t0 = time.perf_counter()
    ops = 0
    try:
        first_generation = int(store.stats()["log_generation"])
        logout: dict[int, list[walsess.Session]] = {}
        alive: list[tuple[walsess.Session, int]] = []  # (handle, tick it ends)
        made = 0

        def sample(tick: int) -> None:
            if store.compacting:
                result.skipped += 1
                return
            st = store.stats()
            result.samples.append(
                DiskSample(
                    tick,
                    int(st["stored_sessions"]),
                    int(st["snapshot_bytes"]),
                    int(st["log_bytes"]),
                    store.snapshot_size(),
                    int(st["live_bytes_estimate"]),
                )
            )

        for tick in range(ticks):
            for s in logout.pop(tick, ()):
                if not store.destroy(s.id):
                    raise RuntimeError("a session due to log out was gone")
                ops += 1
            ops += store.gc()
            alive = [(s, end) for s, end in alive if end > tick]
            for part in range(slices):
                for _ in range(creates * (part + 1) // slices - creates * part // slices):
                    s = store.create(session_data(made))
                    made += 1
                    if rng.random() < 0.5:
                        end = tick + rng.randrange(1, ttl_ticks)
                        logout.setdefault(end, []).append(s)
                    else:
                        end = tick + ttl_ticks
                    alive.append((s, end))
                    ops += 1
                for _ in range(updates * (part + 1) // slices - updates * part // slices):
                    if not alive:
                        break
                    key = rng.choice(KEYS)
                    alive[rng.randrange(len(alive))][0][key] = new_value(key, rng)
                    ops += 1
                sample(tick)
            clock.advance(1.0)
        store.wait_compaction()
        sample(ticks)
        result.compactions = int(store.stats()["log_generation"]) - first_generation
    finally:
        store.close()
    result.operations = ops
    result.seconds = time.perf_counter() - t0
    return result


# -- sizes at a scale ------------------------------------------------------------------


def gc_expired(small_sessions: int) -> int:
    """Expired sessions per gc: 1,000 at full scale, 1% of the small store below it."""
    return max(1, min(GC_EXPIRED, small_sessions // 100))


def disk_live_sessions(sessions: int) -> int:
    """Live sessions in the disk churn: N / 100 (10,000 at full scale), at least 100."""
    return max(100, sessions // 100)


def disk_min_bytes(sessions: int) -> int:
    """compact_min_bytes of the churn: 1 MiB at full scale, in proportion below (>= 4 KiB)."""
    return max(4096, DISK_MIN_BYTES * sessions // 1_000_000)


# -- the bench ---------------------------------------------------------------------------


class MaintenanceBench:
    """Builds the maintenance stores in *workdir* on first use, like
    :class:`bench.workloads.Workbench`. :meth:`release` closes a group's
    stores (the report does, to bound memory); :meth:`close` closes all."""

    def __init__(
        self, workdir: str, scale: Scale, seed: int = SEED, durability: str = "interval"
    ) -> None:
        self.workdir = workdir
        self.scale = scale
        self.seed = seed
        self.durability = durability
        self._compaction: CompactionTarget | None = None
        self._gc: dict[str, GcTarget] = {}
        self._snapshot: tuple[str, int] | None = None
        os.makedirs(workdir, exist_ok=True)

    def __enter__(self) -> MaintenanceBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sessions(self) -> int:
        """N: sessions in the compaction, gc (large) and snapshot stores."""
        return self.scale.maintenance_sessions

    @property
    def gc_sizes(self) -> dict[str, int]:
        """Sessions in the two gc stores: ``large`` (N) and ``small`` (N / 10)."""
        return {"large": self.sessions, "small": max(1, self.sessions // GC_SMALL_DIVISOR)}

    @property
    def expired(self) -> int:
        """Sessions each gc removes, the same in both gc stores."""
        return gc_expired(self.gc_sizes["small"])

    def _path(self, name: str) -> str:
        return _fresh_dir(os.path.join(self.workdir, name))

    def compaction(self) -> CompactionTarget:
        """The store of N sessions the compaction windows run on."""
        if self._compaction is None:
            self._compaction = CompactionTarget(
                self._path("compaction"), self.sessions, self.durability, self.seed
            )
        return self._compaction

    def gc(self, size: str) -> GcTarget:
        """The gc store of *size* ``"large"`` or ``"small"``."""
        target = self._gc.get(size)
        if target is None:
            target = GcTarget(
                self._path(f"gc-{size}"), self.gc_sizes[size], self.expired, self.durability
            )
            self._gc[size] = target
        return target

    def snapshot(self) -> tuple[str, int]:
        """A store directory holding a snapshot of N sessions and an empty log, and N.

        If the compaction store is built, it is compacted once more, closed
        and reused (building N sessions again is the slow part); a later
        :meth:`compaction` builds a new one.
        """
        if self._snapshot is None:
            if self._compaction is not None:
                target, self._compaction = self._compaction, None
                self._snapshot = (target.finish(), target.sessions)
            else:
                path = self._path("snapshot")
                self._snapshot = (path, build_snapshot(path, self.sessions))
        return self._snapshot

    def disk(self) -> DiskResult:
        """Run the churn (each call runs it afresh; nothing is kept)."""
        return churn(
            self._path("disk"),
            disk_live_sessions(self.sessions),
            compact_min_bytes=disk_min_bytes(self.sessions),
            durability=self.durability,
            seed=self.seed,
        )

    def release(self, group: str) -> None:
        """Close the stores of *group* (one of :data:`MAINTENANCE_GROUPS`)."""
        if group == "compaction" and self._compaction is not None:
            self._compaction.close()
            self._compaction = None
        elif group == "gc":
            for target in self._gc.values():
                target.close()
            self._gc.clear()
        elif group == "snapshot":
            self._snapshot = None

    def close(self) -> None:
        for group in MAINTENANCE_GROUPS:
            self.release(group)
