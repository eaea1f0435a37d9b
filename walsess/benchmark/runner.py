"""``walsess bench``: run the workloads on every row, print the table, write JSON and a PNG.

Order of a run:

1. Rows whose package or server is missing are skipped, one line each.
2. Every row that runs a per-request workload gets its own store, holding
   ``sessions`` sessions. Workload by workload, the repeats of the rows are
   interleaved (round robin, rotating the order) so a noisy neighbour slows
   them all alike; each figure is the median over repeats.
3. For open, memory and disk, each row builds a store of ``open_sessions``
   sessions (its disk bytes measured once closed), then a fresh process
   opens it: the resident memory it takes and the open times.

Ratios are this row's figure over the reference row's, in the same unit:
above 1 is more ops/s (better) for throughput, more seconds or bytes
(worse) for open, memory and disk. The references are sqlite-normal and the
two floors; for the durable workloads, which only durable rows run,
sqlite-full. The printed open table also has a column for floor-json (one
``json.loads`` of the same sessions, open's floor: ``Workload.floors``).

After the tables come the targets (:data:`TARGETS`): walsess.RedisStore's
per-key set and whole-session read against the raw redis-py hash peer on the
same server settings, as a ratio of time per operation computed from the
same run's repeats, with "met" or "not met".
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import walsess

from ..progress import Progress
from . import web
from .measure import Measured, median, rotated, run_for, run_threads
from .peers import (
    BASELINE,
    DURABLE_BASELINE,
    FLOORS,
    PEERS,
    PIP_HINT,
    REDIS_RAW,
    REDIS_STORE,
    PeerSpec,
    peer_names,
)
from .workloads import (
    ALIASES,
    SEED,
    WORKLOADS,
    Populated,
    Workload,
    applies,
    build_store,
    measure_footprint,
    parse_scale,
)

__all__ = ["FULL", "QUICK", "TARGETS", "Settings", "Target", "Verdict", "add_arguments", "run"]

JSON_DEFAULT = "walsess-bench.json"
PNG_DEFAULT = "walsess-bench.png"
#: Version of the JSON document's layout.
JSON_FORMAT = 1


@dataclass(frozen=True)
class Settings:
    """How big and how long: *sessions* per store for the per-request workloads,
    *open_sessions* for open, memory and disk; *repeats* of *min_time* seconds
    each; *opens* timed opens."""

    mode: str
    sessions: int
    open_sessions: int
    repeats: int
    min_time: float
    opens: int


QUICK = Settings("quick", 2_000, 10_000, 3, 0.07, 3)
FULL = Settings("full", 100_000, 1_000_000, 5, 1.0, 3)


def tiny(n: int, mode: str) -> Settings:
    """The hidden ``--scale N``: N sessions everywhere, one short repeat (for tests)."""
    return Settings(mode, n, n, 1, 0.02, 1)


# -- arguments ----------------------------------------------------------------------------


def _only(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """``--only``: (peer names, workload names) from comma-separated names of either."""
    peers: set[str] = set()
    works: set[str] = set()
    known_peers = set(peer_names())
    known_works = {w.name for w in WORKLOADS}
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        if name in known_peers:
            peers.add(name)
        elif name in known_works:
            works.add(name)
        elif name in ALIASES:
            works.update(ALIASES[name])
        elif name in web.SELECTORS:
            works.add(name)  # the per-request web rows (walsess.benchmark.web)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown name {name!r}: peers are {', '.join(peer_names())};"
                f" workloads are {', '.join([*(w.name for w in WORKLOADS), *ALIASES])};"
                f" web rows: {', '.join(sorted(web.SELECTORS))}"
            )
    return frozenset(peers), frozenset(works)


def _scale(text: str) -> int:
    try:
        return parse_scale(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``walsess bench``."""
    p.description = (
        "Benchmark walsess side by side with sqlite3, diskcache, lmdb, cachelib's"
        " FileSystemCache, a Redis server (started here) through redis-py and through"
        " walsess.RedisStore, and two floors: the same"
        " workloads for every row, printed as a table of ops/s with each row's ratio to"
        " sqlite-normal and to the floors, and written as JSON and a PNG chart. Rows whose"
        f" package or server is missing are skipped ({PIP_HINT}; apt-get install redis-server)."
    )
    p.epilog = (
        "Ratios are this row's figure over the reference row's, in the same unit: above 1 is"
        " faster for ops/s, slower or bigger for open, memory and disk."
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help=f"small stores ({QUICK.sessions:,} sessions; {QUICK.open_sessions:,} for open,"
        " memory and disk), short repeats: under a minute (the default)",
    )
    size.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help=f"{FULL.sessions:,} sessions per store, {FULL.open_sessions:,} for open, memory"
        " and disk, longer repeats: many minutes and several GiB of disk",
    )
    p.set_defaults(mode="quick")
    p.add_argument(
        "--only",
        type=_only,
        default=(frozenset(), frozenset()),
        metavar="NAMES",
        help="comma-separated peers and/or workloads to run (default: all). Peers: "
        + ", ".join(peer_names())
        + ". Workloads: "
        + ", ".join(w.name for w in WORKLOADS)
        + " (durable: both durable-set). Web requests through Flask, Django, Starlette: web,"
        " or one framework: web-flask, web-django, web-starlette",
    )
    p.add_argument(
        "--json",
        default=JSON_DEFAULT,
        metavar="PATH",
        help=f"results file (default {JSON_DEFAULT})",
    )
    p.add_argument(
        "--png",
        default=PNG_DEFAULT,
        metavar="PATH",
        help=f"bar chart, if matplotlib is installed (default {PNG_DEFAULT})",
    )
    p.add_argument("--no-png", action="store_true", help="do not draw the chart")
    p.add_argument(
        "--workdir",
        default=None,
        metavar="DIR",
        help="where the stores are built and removed (default: the temporary directory);"
        " the durable rows mean something only on a real disk",
    )
    p.add_argument("--scale", type=_scale, default=None, help=argparse.SUPPRESS)


# -- results ------------------------------------------------------------------------------


@dataclass
class Result(Measured):
    """One figure of *workload* on row *peer*: the median of the samples (per repeat)."""

    workload: Workload = field(kw_only=True)
    peer: str = field(kw_only=True)
    calls: int = 0  # operations timed, over all repeats
    extra: dict[str, Any] = field(default_factory=dict)


def references(w: Workload) -> tuple[str, ...]:
    """The rows workload *w*'s ratios are stated against."""
    return (DURABLE_BASELINE,) if w.durable_only else (BASELINE, *FLOORS, *w.floors)


class Results:
    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Result] = {}
        self.errors: list[tuple[str, str, str]] = []  # (peer, workload, message)

    def add(self, w: Workload, peer: str, sample: float, calls: int = 0, **extra: Any) -> None:
        r = self.by_key.setdefault((w.name, peer), Result(workload=w, peer=peer))
        r.samples.append(sample)
        r.calls += calls
        r.extra.update(extra)

    def get(self, workload: str, peer: str) -> Result | None:
        return self.by_key.get((workload, peer))

    def ratio(self, r: Result, reference: str) -> float | None:
        ref = self.get(r.workload.name, reference)
        if ref is None or ref.median <= 0 or not math.isfinite(ref.median):
            return None
        return r.median / ref.median

    def fail(self, peer: str, workload: str, exc: BaseException) -> None:
        self.errors.append((peer, workload, f"{type(exc).__name__}: {exc}"))


# -- targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Row *peer*'s time per operation of *workload* is at most *limit* times row
    *reference*'s."""

    workload: str
    peer: str
    reference: str
    limit: float


#: Issue 12: walsess.RedisStore's per-key set and whole-session read within 1.3 x
#: the time of the raw redis-py hash peer on the same server settings.
TARGETS: tuple[Target, ...] = (
    Target("set", REDIS_STORE, REDIS_RAW, 1.3),
    Target("read", REDIS_STORE, REDIS_RAW, 1.3),
)


@dataclass(frozen=True)
class Verdict:
    """A :class:`Target` judged on one run: *ratio* is the median over repeats of
    (peer's time per operation / reference's), each repeat's two figures taken in
    the same round (the rows' repeats are interleaved)."""

    target: Target
    ratio: float

    @property
    def met(self) -> bool:
        return self.ratio <= self.target.limit

    def line(self) -> str:
        t = self.target
        return (
            f"  target {t.workload}: {t.peer} takes {self.ratio:.2f} x the time of {t.reference}"
            f" per operation (at most {t.limit:g}): {'met' if self.met else 'NOT MET'}"
        )

    def to_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "workload": t.workload,
            "peer": t.peer,
            "reference": t.reference,
            "limit": t.limit,
            "time_ratio": self.ratio,
            "met": self.met,
        }


def verdicts(results: Results) -> list[Verdict]:
    """The :data:`TARGETS` whose two rows ran in *results*, judged.

    Cost: O(repeats) per target. The samples are ops/s, so a repeat's time ratio is
    reference ops/s over peer ops/s.
    """
    out = []
    for t in TARGETS:
        mine, ref = results.get(t.workload, t.peer), results.get(t.workload, t.reference)
        if mine is None or ref is None:
            continue
        pairs = [(a, b) for a, b in zip(mine.samples, ref.samples, strict=False) if a > 0]
        if pairs:
            out.append(Verdict(t, median(b / a for a, b in pairs)))
    return out


# -- running ------------------------------------------------------------------------------


def _filesystem(path: str) -> str | None:
    """The file system type of *path*'s mount (Linux), e.g. ``ext4`` or ``tmpfs``."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    path = os.path.realpath(path)
    best, kind = "", None
    for m in mounts:
        point = m[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, m[2]
    return kind


def _step_count(rows: list[PeerSpec], works: list[Workload], s: Settings) -> int:
    live = [w for w in works if w.per_request]
    steps = sum(1 for r in rows if any(applies(w, r) for w in live))
    steps += sum(s.repeats for w in live for r in rows if applies(w, r))
    foot = [w for w in works if not w.per_request]
    steps += 2 * sum(1 for r in rows if any(applies(w, r) for w in foot))
    return steps


def run_live(
    rows: list[PeerSpec],
    works: list[Workload],
    s: Settings,
    workdir: str,
    results: Results,
    progress: Progress,
) -> None:
    """The per-request workloads (one thread, or durable threads) on populated stores."""
    live = [w for w in works if w.per_request]
    stores: dict[str, Populated] = {}
    try:
        for spec in rows:
            if not any(applies(w, spec) for w in live):
                continue
            progress.step(f"populate {spec.name}")
            try:
                stores[spec.name] = Populated(
                    spec, os.path.join(workdir, spec.name), s.sessions, SEED
                )
            except Exception as exc:
                results.fail(spec.name, "populate", exc)
        for w in live:
            names = [r.name for r in rows if applies(w, r) and r.name in stores]
            ops: dict[str, Any] = {}
            for name in names:
                store = stores[name]
                ops[name] = (
                    store.threaded_operations(w.name)
                    if w.kind == "threads"
                    else store.operation(w.name)
                )
            failed: set[str] = set()
            for rep in range(s.repeats):
                for name in rotated(names, rep):
                    progress.step(f"{w.name} {name}")
                    if name in failed:
                        continue
                    try:
                        if w.kind == "threads":
                            calls, secs = run_threads(ops[name], duration=s.min_time)
                        else:
                            calls, secs = run_for(ops[name], s.min_time)
                    except Exception as exc:
                        failed.add(name)
                        results.fail(name, w.name, exc)
                        continue
                    results.add(w, name, calls / secs, calls=calls)
    finally:
        for store in stores.values():
            store.close()


def run_footprints(
    rows: list[PeerSpec],
    works: list[Workload],
    s: Settings,
    workdir: str,
    results: Results,
    progress: Progress,
) -> None:
    """Open time, memory and disk: build each row's store, then measure it in a fresh process."""
    foot = [w for w in works if not w.per_request]
    n = s.open_sessions
    for spec in rows:
        by_name = {w.name: w for w in foot if applies(w, spec)}
        if not by_name:
            continue
        path = os.path.join(workdir, f"{spec.name}-open")
        try:
            token = ""
            progress.step(f"build {spec.name}")
            if spec.persistent:
                built = build_store(spec, n, path)
                token = built.token
                if "disk" in by_name:
                    results.add(
                        by_name["disk"],
                        spec.name,
                        built.disk_bytes / n,
                        sessions=n,
                        bytes=built.disk_bytes,
                        apparent_bytes=built.disk_apparent_bytes,
                        build_seconds=built.seconds,
                    )
            progress.step(f"open {spec.name}")
            opens = s.opens if "open" in by_name else 0
            fp = measure_footprint(spec.name, n, path, token, opens)
            if "memory" in by_name:
                results.add(
                    by_name["memory"],
                    spec.name,
                    fp["rss_bytes"] / n,
                    sessions=n,
                    bytes=fp["rss_bytes"],
                )
            if "open" in by_name and spec.persistent:
                for secs in fp["open_seconds"]:
                    results.add(by_name["open"], spec.name, secs, sessions=n)
        except Exception as exc:
            results.fail(spec.name, "open/memory/disk", exc)


# -- output -------------------------------------------------------------------------------


def _fmt_value(w: Workload, v: float) -> str:
    return f"{v * 1e3:,.1f} ms" if w.unit == "s" else f"{v:,.0f}"


def _unit_label(w: Workload) -> str:
    return "ms" if w.unit == "s" else w.unit


def format_report(
    results: Results,
    rows: list[PeerSpec],
    works: list[Workload],
    skipped: list[tuple[PeerSpec, str]],
    s: Settings,
    head: str,
) -> list[str]:
    out = [head]
    for spec, reason in skipped:
        out.append(f"skipped {spec.name}: {reason}")
    for w in works:
        got = [r for r in (results.get(w.name, spec.name) for spec in rows) if r is not None]
        if not got:
            continue
        refs = [ref for ref in references(w) if (b := results.get(w.name, ref)) and b.median > 0]
        better = "higher" if w.higher_is_better else "lower"
        n = s.sessions if w.per_request else s.open_sessions
        what = f"{n:,} sessions"
        out.append("")
        out.append(f"{w.name}: {w.description} ({_unit_label(w)}, {better} is better; {what})")
        header = f"  {'peer':<18} {_unit_label(w):>14}" + "".join(f" {'x ' + r:>18}" for r in refs)
        out.append(header)
        for r in got:
            cells = []
            for ref in refs:
                ratio = results.ratio(r, ref)
                cells.append(f" {'-' if ratio is None else f'{ratio:.2f}':>18}")
            out.append(f"  {r.peer:<18} {_fmt_value(w, r.median):>14}" + "".join(cells))
    judged = verdicts(results)
    if judged:
        out.append("")
        out.append("targets (issue 12: what moving to walsess.RedisStore costs per request):")
        out.extend(v.line() for v in judged)
    if results.errors:
        out.append("")
        for peer, work, msg in results.errors:
            out.append(f"FAILED {peer} ({work}): {msg}")
    return out


def to_json(
    results: Results,
    rows: list[PeerSpec],
    works: list[Workload],
    skipped: list[tuple[PeerSpec, str]],
    s: Settings,
    meta: dict[str, Any],
) -> dict[str, Any]:
    failed = {peer for peer, _, _ in results.errors}
    missing = {spec.name: reason for spec, reason in skipped}
    peers = []
    for spec in [*rows, *(sp for sp, _ in skipped)]:
        status = "skipped" if spec.name in missing else "failed" if spec.name in failed else "ran"
        peers.append(
            {
                "name": spec.name,
                "description": spec.description,
                "durable": spec.durable,
                "persistent": spec.persistent,
                "status": status,
                "reason": missing.get(spec.name),
            }
        )
    out_results = []
    for w in works:
        for spec in rows:
            r = results.get(w.name, spec.name)
            if r is None:
                continue
            out_results.append(
                {
                    "workload": w.name,
                    "peer": spec.name,
                    "unit": w.unit,
                    "value": r.median,
                    "samples": r.samples,
                    "ratios": {ref: results.ratio(r, ref) for ref in references(w)},
                    **({"calls": r.calls} if r.calls else {}),
                    **r.extra,
                }
            )
    return {
        "format": JSON_FORMAT,
        "tool": "walsess bench",
        **meta,
        "settings": {
            "mode": s.mode,
            "sessions": s.sessions,
            "open_sessions": s.open_sessions,
            "repeats": s.repeats,
            "min_time": s.min_time,
            "opens": s.opens,
            "seed": SEED,
        },
        "peers": peers,
        "workloads": [
            {
                "name": w.name,
                "description": w.description,
                "unit": w.unit,
                "higher_is_better": w.higher_is_better,
                "durable_only": w.durable_only,
                "threads": w.threads,
                "references": list(references(w)),
            }
            for w in works
        ],
        "results": out_results,
        "targets": [v.to_json() for v in verdicts(results)],
        "errors": [{"peer": p, "workload": w, "error": m} for p, w, m in results.errors],
    }


def write_png(doc: dict[str, Any], path: str) -> None:
    """A bar chart of *doc* (as :func:`to_json` makes it): one panel per workload."""
    mpl = importlib.import_module("matplotlib")
    mpl.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    works = [w for w in doc["workloads"] if any(r["workload"] == w["name"] for r in doc["results"])]
    if not works:
        return
    cols = min(3, len(works))
    nrows = math.ceil(len(works) / cols)
    npeers = max(sum(1 for r in doc["results"] if r["workload"] == w["name"]) for w in works)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(6 * cols, (0.32 * npeers + 1.2) * nrows), squeeze=False
    )
    for ax in axes.flat[len(works) :]:
        ax.set_visible(False)
    for ax, w in zip(axes.flat, works, strict=False):
        rs = [r for r in doc["results"] if r["workload"] == w["name"]]
        scale = 1e3 if w["unit"] == "s" else 1.0
        values = [r["value"] * scale for r in rs]
        colors = [
            "tab:orange"
            if r["peer"].startswith("walsess")
            else "tab:gray"
            if r["peer"].startswith("floor")
            else "tab:blue"
            for r in rs
        ]
        ypos = range(len(rs))
        bars = ax.barh(ypos, values, color=colors)
        fmt = "{:,.1f}" if w["unit"] == "s" else "{:,.0f}"
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=7, padding=2)
        ax.margins(x=0.18)
        ax.set_yticks(list(ypos), [r["peer"] for r in rs], fontsize=8)
        ax.invert_yaxis()
        unit = "ms" if w["unit"] == "s" else w["unit"]
        better = "higher" if w["higher_is_better"] else "lower"
        ax.set_title(f"{w['name']} ({unit}, {better} is better)", fontsize=9)
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 50:
            ax.set_xscale("log")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    s = doc["settings"]
    fig.suptitle(
        f"walsess bench ({s['mode']}): {s['sessions']:,} sessions per store,"
        f" {s['open_sessions']:,} for open/memory/disk; {doc['started']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the command --------------------------------------------------------------------------


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``walsess bench`` with parsed *args*; returns the exit status."""
    out = out or sys.stdout
    s = FULL if args.mode == "full" else QUICK
    if args.scale is not None:
        s = tiny(args.scale, s.mode)
    only_peers, only_works = args.only
    only_web = only_works & web.SELECTORS
    only_works -= only_web
    core = not only_web or bool(only_peers or only_works)
    web_rows = web.select(only_web) if only_web or not (only_peers or only_works) else []
    ws = web.settings_for(s.mode, args.scale)
    specs = [p for p in PEERS if core and (not only_peers or p.name in only_peers)]
    works = [w for w in WORKLOADS if core and (not only_works or w.name in only_works)]
    skipped: list[tuple[PeerSpec, str]] = []
    rows: list[PeerSpec] = []
    for spec in specs:
        reason = spec.missing()
        if reason is None:
            rows.append(spec)
        else:
            skipped.append((spec, reason))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    results = Results()
    steps = _step_count(rows, works, s) + web.step_count(web_rows, ws)
    progress = Progress(steps, "walsess bench")
    parent = args.workdir
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="walsess-bench-", dir=parent) as workdir:
            fs = _filesystem(workdir)
            run_live(rows, works, s, workdir, results, progress)
            run_footprints(rows, works, s, workdir, results, progress)
            web_results = web.run(os.path.join(workdir, "web"), ws, web_rows, progress)
    except KeyboardInterrupt:
        progress.finish()
        sys.stderr.write("walsess bench: interrupted; stores closed and removed\n")
        return 130
    progress.finish()
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    meta = {
        "walsess": walsess.__version__,
        "started": started,
        "seconds": seconds,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": list(load_before),
        "load_after": list(load_after),
        "filesystem": fs,
    }
    head = (
        f"walsess bench --{s.mode}: {s.sessions:,} sessions per store ({s.open_sessions:,} for"
        f" open, memory, disk); medians of {s.repeats} x {s.min_time:g} s\n"
        f"walsess {walsess.__version__}, Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs, load {load_before[0]:.2f} -> {load_after[0]:.2f},"
        f" stores on {fs or '?'}; {seconds:.0f} s"
    )
    results.errors.extend(web_results.errors)
    lines = format_report(results, rows, works, skipped, s, head)
    if web_rows:  # after the other tables, before the FAILED lines
        at = len(lines) - (len(results.errors) + 1 if results.errors else 0)
        lines[at:at] = web.format_report(web_results)
    if fs in ("tmpfs", "ramfs"):
        lines.insert(1, f"note: the stores were on {fs}, where fsync does nothing: use --workdir")
    doc = to_json(results, rows, works, skipped, s, meta)
    if web_rows:
        doc["web"] = web.to_json(web_results)
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    lines.append("")
    lines.append(f"wrote {args.json}")
    if not args.no_png:
        if importlib.util.find_spec("matplotlib") is None:
            lines.append(f"no chart: matplotlib not installed ({PIP_HINT})")
        else:
            write_png(doc, args.png)
            lines.append(f"wrote {args.png}")
    out.write("\n".join(lines) + "\n")
    return 1 if results.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m walsess.benchmark.runner``: the same as ``walsess bench``."""
    p = argparse.ArgumentParser(prog="walsess bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
