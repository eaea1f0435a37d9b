"""How the benchmarks measure: timing loops, thread runners, medians, memory, child processes.

The one home of these tools, used by ``walsess bench`` (:mod:`.workloads`,
:mod:`.runner`, :mod:`.web`) and by the developers' pytest-benchmark suite
and report in ``bench/``:

* timing one operation: :func:`call_times` (a plain loop of *n* calls),
  :func:`time_calls` (seconds for *n* calls), :func:`calibrate` (timeit's
  autorange: calls per loop for a fixed loop length), :func:`run_batches`
  and :func:`run_for` (growing batches for at least a time);
* :func:`run_threads`: several operations at once, one thread each;
* :func:`rotated`: the order of one round of interleaved repeats, so a noisy
  neighbour slows every contender alike;
* :class:`Measured` and :func:`median`: repeated samples and their median;
* :func:`rss`: a process's resident bytes;
* :func:`run_child`: a measurement in a fresh interpreter that imports this
  same walsess, answering one JSON object.

Nothing here knows about stores or workloads; it costs only what it times.

Example::

    calls, seconds = run_for(lambda: d.get("k"), 0.1)
    print(calls / seconds, "ops/s")
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import walsess

__all__ = [
    "Measured",
    "calibrate",
    "call_times",
    "median",
    "rotated",
    "rss",
    "run_batches",
    "run_child",
    "run_for",
    "run_threads",
    "time_calls",
]

T = TypeVar("T")


# -- timing one operation -----------------------------------------------------------------


def call_times(op: Callable[[], object], n: int) -> None:
    """Call *op* *n* times (the loop every timing here runs: nothing else in it)."""
    for _ in itertools.repeat(None, n):
        op()


def time_calls(op: Callable[[], object], n: int) -> float:
    """Seconds for *n* calls of *op*."""
    t0 = time.perf_counter()
    call_times(op, n)
    return time.perf_counter() - t0


def calibrate(op: Callable[[], object], min_time: float) -> int:
    """Calls per loop so that one loop takes at least *min_time* (timeit's autorange:
    1, 2, 5, 10, 20, ... calls, each tried once, so it costs about twice *min_time*)."""
    i = 1
    while True:
        for j in (1, 2, 5):
            n = i * j
            if time_calls(op, n) >= min_time:
                return n
        i *= 10


def run_batches(
    run: Callable[[int], object],
    min_time: float,
    *,
    first: int = 1,
    most: int | None = None,
) -> tuple[int, float]:
    """``run(n)`` (*n* calls) in growing batches until *min_time* seconds have passed:
    (calls, seconds).

    Batches start at *first* calls, double, and aim at half the time left so
    the last overshoots little; *most* caps a batch (a batch cannot stop early).
    """
    calls, batch = 0, first
    t0 = time.perf_counter()
    while True:
        run(batch)
        calls += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return calls, elapsed
        left = (min_time - elapsed) / max(elapsed, 1e-9) * calls
        batch = max(1, min(batch * 2, int(left / 2)))
        if most is not None:
            batch = min(batch, most)


def run_for(op: Callable[[], object], min_time: float) -> tuple[int, float]:
    """Call *op* in growing batches until *min_time* seconds have passed: (calls, seconds)."""
    return run_batches(functools.partial(call_times, op), min_time)


# -- several at once ----------------------------------------------------------------------


def run_threads(
    ops: Sequence[Callable[[], object]],
    *,
    duration: float | None = None,
    calls: int | None = None,
) -> tuple[int, float]:
    """Run each of *ops* in a thread of its own, all started together: (total calls, seconds).

    Each thread calls its op *calls* times, or until *duration* seconds have
    passed (the calls in progress then finish and count). The first error
    in any thread stops all and is raised. ``calls=1`` runs each op once:
    a set of concurrent tasks, waited for.
    """
    if (duration is None) == (calls is None):
        raise ValueError("give duration or calls")
    n = len(ops)
    start = threading.Barrier(n + 1)
    stop = threading.Event()
    counts = [0] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        op = ops[i]
        start.wait()
        c = 0
        try:
            if calls is not None:
                for _ in itertools.repeat(None, calls):
                    op()
                    c += 1
            else:
                while not stop.is_set():
                    op()
                    c += 1
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        counts[i] = c

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    if duration is not None:
        stop.wait(duration)
        stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts), elapsed


def rotated(items: Sequence[T], round_: int) -> list[T]:
    """*items* in the order of repeat *round_* of an interleaved run: rotated by one
    more each round, so no contender always runs first (or right after another).

    >>> [rotated("abc", r) for r in range(4)]
    [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    k = round_ % len(items) if items else 0
    return [*items[k:], *items[:k]]


# -- results ------------------------------------------------------------------------------


def median(samples: Iterable[float]) -> float:
    """The median of *samples*, as a float (the figure every benchmark reports)."""
    return float(statistics.median(samples))


@dataclass
class Measured:
    """Samples of one measured thing, one per repeat; its figure is their :attr:`median`."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.samples)


# -- memory and child processes -----------------------------------------------------------


def rss(pid: int | str = "self") -> int:
    """Resident bytes of process *pid* (Linux ``/proc``; one small file read)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_child(args: Sequence[str], what: str, timeout: float | None = None) -> dict[str, Any]:
    """Run ``python *args`` in a fresh interpreter and return the JSON object its last
    line of output holds; for measurements nothing else in this process may disturb
    (its memory above all).

    The child imports the same walsess as this process, wherever it came
    from. A child that fails raises :class:`RuntimeError` ``"<what> failed:
    <its last line of stderr>"``.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(walsess.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"{what} failed: {tail[0]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
