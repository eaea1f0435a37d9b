"""Median throughput of every workload, and each ratio against its target, as Markdown.

Usage (from the project root)::

    python -m bench.report                       # full scale: 1,000,000-record log
    python -m bench.report --scale 20k --repeats 5 --no-memory
    python bench/report.py --json results.json   # also write the numbers as JSON

Each operation is timed timeit-style: a loop of ``n`` calls, with ``n`` chosen
so one loop takes at least ``--min-time`` seconds, repeated ``--repeats``
times. The repeats of the operations of a group are interleaved (round robin,
rotating the order), so a noisy neighbour slows all of them alike; each
figure is the MEDIAN over repeats, and each ratio is the median of the
per-repeat ratios. Nothing is asserted: the output is for the README.

Targets (from the issue): set (interval) >= 0.6 x the dict + os.write floor;
get >= 0.5 x the dict floor; replay >= 1,000,000 records/s; memory per
session <= 1.5 x the dict floor.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import walsess
from bench.workloads import (
    GROUPS,
    SCALE_ENV,
    Operation,
    Scale,
    Workbench,
    measure_memory,
    names,
    parse_scale,
)

#: (label, group, walsess operation, floor operation, target: walsess/floor >= this)
RATIO_TARGETS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("set (interval) / dict+write floor", "set", "walsess-interval", "floor-dict-write", 0.6),
    ("get s[key] / dict floor", "get", "walsess-handle", "floor-dict", 0.5),
    ("get store.get(token)[key] / dict floor", "get", "walsess-token", "floor-dict", 0.5),
    ("set (interval) / dict floor", "set", "walsess-interval", "floor-dict", None),
    ("set (never) / dict+write floor", "set", "walsess-never", "floor-dict-write", None),
    ("create / dict+write floor", "create", "walsess-interval", "floor-dict-write", None),
)
REPLAY_TARGET = 1_000_000.0  # records/s
MEMORY_TARGET = 1.5  # walsess bytes/session over the floor's, at most


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_loop(fn: Callable[[], object], n: int) -> float:
    """Seconds for *n* calls of *fn*."""
    loop = itertools.repeat(None, n)
    t0 = time.perf_counter()
    for _ in loop:
        fn()
    return time.perf_counter() - t0


def calibrate(fn: Callable[[], object], min_time: float) -> int:
    """Calls per loop so that one loop takes at least *min_time* (timeit's autorange)."""
    i = 1
    while True:
        for j in (1, 2, 5):
            n = i * j
            if time_loop(fn, n) >= min_time:
                return n
        i *= 10


@dataclass
class Result:
    """Seconds per call of one operation, one entry per repeat."""

    op: Operation
    seconds: list[float] = field(default_factory=list)
    calls: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Median units (ops or records) per second."""
        return self.op.per_call / self.median

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.op.group,
            "name": self.op.name,
            "description": self.op.description,
            "unit": self.op.unit,
            "per_call": self.op.per_call,
            "calls_per_repeat": self.calls,
            "seconds_per_call": self.seconds,
            "median_rate": self.rate,
        }


def run_group(ops: list[Operation], repeats: int, min_time: float) -> list[Result]:
    """Time the operations of one group, interleaving their repeats."""
    results = [Result(op) for op in ops]
    for r in results:
        r.calls = 1 if r.op.unit == "record" else calibrate(r.op.fn, min_time)
    for rep in range(repeats):
        k = rep % len(results)
        for r in results[k:] + results[:k]:
            r.seconds.append(time_loop(r.op.fn, r.calls) / r.calls)
    return results


def ratio(results: dict[tuple[str, str], Result], group: str, a: str, b: str) -> float | None:
    """Median over repeats of (rate of *a*) / (rate of *b*), or None if either is missing."""
    ra, rb = results.get((group, a)), results.get((group, b))
    if ra is None or rb is None:
        return None
    return statistics.median(tb / ta for ta, tb in zip(ra.seconds, rb.seconds, strict=True))


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--scale",
        type=parse_scale,
        default=None,
        help=f"records in the replay log (sessions = records // 5); default ${SCALE_ENV}"
        " or 1,000,000",
    )
    ap.add_argument("--repeats", type=int, default=7, help="timed loops per operation")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per timed loop")
    ap.add_argument("--replay-repeats", type=int, default=3, help="opens of the replay log")
    ap.add_argument(
        "--groups", default=",".join(GROUPS), help=f"comma-separated subset of {GROUPS}"
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument(
        "--memory-sessions", type=int, default=None, help="sessions for memory (default: scale)"
    )
    ap.add_argument(
        "--tracemalloc", action="store_true", help="also measure memory with tracemalloc (slow)"
    )
    ap.add_argument("--workdir", default=None, help="where stores are built (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    scale = Scale(args.scale) if args.scale is not None else Scale.from_env()
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    unknown = set(groups) - set(GROUPS)
    if unknown:
        ap.error(f"unknown groups {sorted(unknown)}; choose from {GROUPS}")

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    results: dict[tuple[str, str], Result] = {}
    with (
        tempfile.TemporaryDirectory(prefix="walsess-bench-", dir=args.workdir) as workdir,
        Workbench(workdir, scale) as wb,
    ):
        for group in groups:
            t0 = time.perf_counter()
            what = (
                f"a log of {scale.records:,} records"
                if group == "replay"
                else f"{scale.sessions:,} sessions/target"
            )
            _log(f"[{group}] building {what} ...")
            ops = [wb.operation(group, n) for n in names(group)]
            _log(f"[{group}] built in {time.perf_counter() - t0:.1f}s; timing ...")
            gc.collect()
            repeats = args.replay_repeats if group == "replay" else args.repeats
            for r in run_group(ops, repeats, args.min_time):
                results[(group, r.op.name)] = r
            _log(f"[{group}] done in {time.perf_counter() - t0:.1f}s")
    memory: dict[str, dict[str, Any]] = {}
    if not args.no_memory:
        n = args.memory_sessions or scale.sessions
        methods = ("rss", "tracemalloc") if args.tracemalloc else ("rss",)
        for method in methods:
            for kind in ("walsess", "floor-dict"):
                _log(f"[memory] {kind}, {n:,} sessions, {method} ...")
                memory[f"{kind}/{method}"] = measure_memory(kind, n, method)
    load_after = os.getloadavg()

    out: list[str] = []
    out.append(
        f"walsess {walsess.__version__} (from {os.path.dirname(walsess.__file__)}) benchmarks,"
        f" {started}; Python {platform.python_version()}"
        f" on {platform.machine()}, {os.cpu_count()} CPUs; load average"
        f" {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    out.append(
        f"Scale: {scale.records:,} records in the replay log; {scale.sessions:,} sessions per"
        f" store; medians of {args.repeats} repeats of >= {args.min_time}s"
        f" ({args.replay_repeats} opens for replay)."
    )
    out.append("")
    out.append("| group | workload | median | per call | spread (min-max) |")
    out.append("|---|---|---:|---:|---:|")
    for (group, name), r in results.items():
        unit = "records/s" if r.op.unit == "record" else "ops/s"
        per = f"{r.median * 1e3:,.0f} ms" if r.op.unit == "record" else f"{r.median * 1e6:.2f} us"
        lo, hi = r.op.per_call / max(r.seconds), r.op.per_call / min(r.seconds)
        out.append(
            f"| {group} | {name}: {r.op.description} | {r.rate:,.0f} {unit} | {per} |"
            f" {lo:,.0f}-{hi:,.0f} |"
        )
    out.append("")
    out.append("| ratio (walsess / floor, ops/s) | median | target | |")
    out.append("|---|---:|---:|---|")
    for label, group, a, b, target in RATIO_TARGETS:
        value = ratio(results, group, a, b)
        if value is None:
            continue
        if target is None:
            out.append(f"| {label} | {value:.2f} | - | |")
        else:
            out.append(f"| {label} | {value:.2f} | >= {target} | {_verdict(value >= target)} |")
    replay = results.get(("replay", "walsess-open"))
    if replay is not None:
        out.append(
            f"| replay, records/s | {replay.rate:,.0f} | >= {REPLAY_TARGET:,.0f} |"
            f" {_verdict(replay.rate >= REPLAY_TARGET)} |"
        )
    for method in ("rss", "tracemalloc"):
        ws, fl = memory.get(f"walsess/{method}"), memory.get(f"floor-dict/{method}")
        if ws is None or fl is None:
            continue
        m = ws["bytes_per_session"] / fl["bytes_per_session"]
        out.append(
            f"| memory/session ({method}, {ws['sessions']:,} sessions):"
            f" walsess {ws['bytes_per_session']:,.0f} B / floor {fl['bytes_per_session']:,.0f} B"
            f" | {m:.2f} | <= {MEMORY_TARGET} | {_verdict(m <= MEMORY_TARGET)} |"
        )
    print("\n".join(out))

    if args.json:
        doc = {
            "started": started,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": load_after,
            "records": scale.records,
            "sessions": scale.sessions,
            "repeats": args.repeats,
            "min_time": args.min_time,
            "results": [r.to_json() for r in results.values()],
            "ratios": {
                label: ratio(results, group, a, b) for label, group, a, b, _ in RATIO_TARGETS
            },
            "memory": memory,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
