"""Where walsess spends its time in the hot paths: cProfile of the benchmark workloads.

Usage (from the project root)::

    python -m bench.hotspots                          # set, get, get-token, create, replay
    python -m bench.hotspots --ops set,replay --top 20 --scale 200k

cProfile's per-call overhead inflates small functions, so treat its numbers
as a ranking, not as times. For an unbiased sample, run the operations
without instrumentation under a sampling profiler::

    py-spy record -o set.svg -- python -m bench.hotspots --ops set --spin 10
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

import argparse
import cProfile
import io
import pstats
import sys
import tempfile

from bench.workloads import Operation, Scale, Workbench
from walsess.benchmark.measure import call_times, run_for
from walsess.benchmark.workloads import parse_scale

#: Profile name -> (group, operation name) in :data:`bench.workloads.CATALOG`.
PROFILES = {
    "set": ("set", "walsess-interval"),
    "get": ("get", "walsess-handle"),
    "get-token": ("get", "walsess-token"),
    "create": ("create", "walsess-interval"),
    "replay": ("replay", "walsess-open"),
}


def _calls_for(op: Operation, seconds: float) -> int:
    """Calls of *op* that take about *seconds*, uninstrumented (a quarter of it is spent
    counting them)."""
    if op.unit == "record":
        return 1
    calls, _ = run_for(op.fn, seconds / 4)
    return max(1, calls * 4)


def profile(op: Operation, seconds: float, top: int, sort: str) -> str:
    """The top *top* functions of *op* by *sort* over about *seconds* of calls."""
    calls = _calls_for(op, seconds)
    prof = cProfile.Profile()
    prof.enable()
    call_times(op.fn, calls)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    units = calls * op.per_call
    head = f"== {op.group}/{op.name}: {op.description} ({units:,} {op.unit}s profiled)"
    return head + "\n" + buf.getvalue().strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="cProfile the walsess hot paths")
    ap.add_argument("--ops", default=",".join(PROFILES), help=f"subset of {list(PROFILES)}")
    ap.add_argument("--scale", type=parse_scale, default=100_000, help="records in the replay log")
    ap.add_argument("--seconds", type=float, default=3.0, help="profiled time per operation")
    ap.add_argument("--top", type=int, default=15, help="functions listed per operation")
    ap.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    ap.add_argument(
        "--spin",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run each operation uninstrumented this long instead (for py-spy)",
    )
    args = ap.parse_args(argv)
    chosen = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in chosen if o not in PROFILES]
    if bad:
        ap.error(f"unknown ops {bad}; choose from {list(PROFILES)}")
    with (
        tempfile.TemporaryDirectory(prefix="walsess-hot-") as workdir,
        Workbench(workdir, Scale(args.scale)) as wb,
    ):
        for name in chosen:
            op = wb.operation(*PROFILES[name])
            if args.spin is not None:
                print(f"spinning {name} for {args.spin}s", file=sys.stderr, flush=True)
                run_for(op.fn, args.spin)  # uninstrumented, for an external profiler
            else:
                print(profile(op, args.seconds, args.top, args.sort), end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
