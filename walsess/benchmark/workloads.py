"""The workloads of ``walsess bench``, the same for every row.

Written once, used by the ``walsess bench`` command (:mod:`.runner`) and by
the developers' pytest-benchmark suite (``bench/``):

* the data: :func:`session_data` (five small keys), :func:`new_value`, and
  the seeded plans (:func:`access_plan`, :func:`create_plan`), so every row
  touches the same sessions, keys and values in the same order;
* :data:`WORKLOADS`: what is measured, by name;
* :class:`Populated`: a row's store holding some sessions, which hands out
  the zero-argument operation of each per-request workload
  (:meth:`Populated.operation`);
* :func:`build_store` makes a row's store of N sessions and measures its
  disk bytes; :func:`footprint`, in a fresh process
  (:func:`measure_footprint`), measures the resident memory the sessions
  take once the store is opened again, and times opening it;
  :func:`memory_growth` measures what populating an open store adds.

The loops that time the operations, the thread runner and the child-process
runner are in :mod:`.measure`.

Run as a module, this is that child process::

    python -m walsess.benchmark.workloads footprint walsess-interval 20000 DIR TOKEN 3
"""

from __future__ import annotations

import collections
import functools
import gc
import itertools
import json
import os
import random
import re
import shutil
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .measure import rss, run_child
from .peers import Peer, PeerSpec, RedisServer, peer_spec

__all__ = [
    "KEYS",
    "SEED",
    "WORKLOADS",
    "Built",
    "Populated",
    "Workload",
    "access_plan",
    "build_store",
    "create_plan",
    "footprint",
    "measure_footprint",
    "memory_growth",
    "new_value",
    "parse_scale",
    "resident",
    "session_data",
    "timed_open",
    "workload",
]

#: Every random choice derives from this seed.
SEED = 20_240_601
#: Length of a precomputed plan (cycled); large enough that the sessions it
#: touches are spread over the store.
PLAN_SIZE = 1 << 16
#: The five small keys every benchmark session holds.
KEYS = ("user_id", "csrf", "cart", "theme", "visits")


# -- scale --------------------------------------------------------------------------------

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}


def parse_scale(text: str) -> int:
    """A count from ``"1000"``, ``"1_000_000"``, ``"1e6"``, ``"200k"`` or ``"1m"``."""
    m = re.fullmatch(r"\s*([0-9][0-9_.e+]*)\s*([kKmM]?)\s*", text)
    if m is None:
        raise ValueError(f"not a count: {text!r}")
    n = int(float(m.group(1)) * _SUFFIX[m.group(2).lower()])
    if n < 2:
        raise ValueError(f"the scale must be at least 2, not {text!r}")
    return n


# -- data ---------------------------------------------------------------------------------


def session_data(i: int) -> dict[str, Any]:
    """The five small keys of session number *i* (about 80 bytes of JSON)."""
    return {
        "user_id": 100_000 + i,
        "csrf": f"{(i * 2_654_435_761) & 0xFFFF_FFFF_FFFF_FFFF:016x}",
        "cart": [i % 97, 2, 3],
        "theme": "dark" if i & 1 else "light",
        "visits": i % 10,
    }


def new_value(key: str, rng: random.Random) -> Any:
    """A fresh value for *key*, of the same kind and size as :func:`session_data` puts there."""
    if key == "user_id":
        return 100_000 + rng.randrange(1_000_000)
    if key == "csrf":
        return f"{rng.getrandbits(64):016x}"
    if key == "cart":
        return [rng.randrange(97), rng.randrange(10), 3]
    if key == "theme":
        return rng.choice(("dark", "light"))
    return rng.randrange(1000)


@functools.lru_cache(maxsize=8)
def _access_plan(sessions: int, seed: int, size: int) -> tuple[tuple[int, str, Any], ...]:
    rng = random.Random(seed)
    plan = []
    for _ in range(size):
        key = rng.choice(KEYS)
        plan.append((rng.randrange(sessions), key, new_value(key, rng)))
    return tuple(plan)


def access_plan(
    sessions: int, seed: int = SEED, size: int = PLAN_SIZE
) -> list[tuple[int, str, Any]]:
    """*size* random ``(session index, key, new value)`` choices among *sessions* sessions."""
    return list(_access_plan(sessions, seed, size))


def create_plan(size: int = 4096) -> list[dict[str, Any]]:
    """Data for new sessions, cycled by the create operations."""
    return [session_data(i) for i in range(size)]


@functools.lru_cache(maxsize=8)
def _mixed_plan(seed: int, size: int) -> tuple[tuple[int, int, str, Any], ...]:
    """``(kind, random 32 bits, key, value)``: kind 0 read 80%, 1 set 15%, 2 create 4%,
    3 destroy 1%; the random bits pick the session among those alive at that moment."""
    rng = random.Random(seed)
    plan = []
    for _ in range(size):
        r = rng.random()
        kind = 0 if r < 0.80 else 1 if r < 0.95 else 2 if r < 0.99 else 3
        key = rng.choice(KEYS)
        plan.append((kind, rng.getrandbits(32), key, new_value(key, rng)))
    return tuple(plan)


# -- the catalogue ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One measured thing.

    *kind*: ``"op"`` (one thread, operations for a time), ``"threads"``
    (*threads* threads at once, each change durable), ``"open"`` or
    ``"footprint"`` (from :func:`footprint`). *unit* of the value, and
    whether more is better. *floors*: rows the printed report also states
    its ratios against, as columns after the references every workload has
    (the JSON document holds their figures as rows, not as ratios).
    """

    name: str
    description: str
    kind: str
    unit: str
    higher_is_better: bool = True
    durable_only: bool = False
    threads: int = 1
    floors: tuple[str, ...] = ()

    @property
    def per_request(self) -> bool:
        """Timed call by call on a populated store ("op", "threads"), as opposed to
        measured on a store built for it ("open", "footprint")."""
        return self.kind in ("op", "threads")


WORKLOADS: tuple[Workload, ...] = (
    Workload("create", "create a session of 5 small keys", "op", "ops/s"),
    Workload("set", "set one key of a random existing session", "op", "ops/s"),
    Workload("read", "read a random session, whole", "op", "ops/s"),
    Workload("mixed", "80% read, 15% set, 4% create, 1% destroy", "op", "ops/s"),
    Workload(
        "durable-set-1", "set, durable on return, 1 thread", "threads", "ops/s",
        durable_only=True, threads=1,
    ),
    Workload(
        "durable-set-8", "set, durable on return, 8 threads (total)", "threads", "ops/s",
        durable_only=True, threads=8,
    ),
    # floor-json: the same sessions parsed by one json.loads, in a fresh process too.
    Workload(
        "open", "open a store of N sessions and read one", "open", "s", False,
        floors=("floor-json",),
    ),
    Workload(
        "memory", "resident memory per session once reopened (process + Redis server; OS page"
        " cache not counted)", "footprint", "B/session", False,
    ),
    Workload("disk", "disk per session (allocated blocks)", "footprint", "B/session", False),
)  # fmt: skip

#: Names that stand for several workloads in ``--only``.
ALIASES: dict[str, tuple[str, ...]] = {"durable": ("durable-set-1", "durable-set-8")}


def workload(name: str) -> Workload:
    for w in WORKLOADS:
        if w.name == name:
            return w
    raise KeyError(f"no workload {name!r}; one of {', '.join(w.name for w in WORKLOADS)}")


def applies(w: Workload, spec: PeerSpec) -> bool:
    """Whether row *spec* runs workload *w* (durable workloads: durable rows only;
    open and disk: rows that keep sessions across a reopen; a row that names its
    workloads: those only).

    >>> [w.name for w in WORKLOADS if applies(w, peer_spec("floor-json"))]
    ['open']
    >>> [w.name for w in WORKLOADS if applies(w, peer_spec("floor-dict"))]
    ['create', 'set', 'read', 'mixed', 'memory']
    """
    if w.durable_only and not spec.durable:
        return False
    if spec.workloads is not None and w.name not in spec.workloads:
        return False
    return spec.persistent or w.name not in ("open", "disk")


# -- operations ---------------------------------------------------------------------------


class Populated:
    """Row *spec*'s store in *path*, holding *sessions* sessions of :func:`session_data`.

    ``tokens`` are the live sessions' tokens; the mixed workload changes it as
    it creates and destroys sessions, so it always names live sessions.
    """

    def __init__(self, spec: PeerSpec, path: str, sessions: int, seed: int = SEED) -> None:
        self.spec = spec
        self.seed = seed
        self.peer: Peer = spec.open(path)
        try:
            self.tokens = list(self.peer.populate(session_data(i) for i in range(sessions)))
        except BaseException:
            self.peer.close()
            raise

    def operation(self, name: str, thread: int = 0) -> Callable[[], object]:
        """The zero-argument operation of workload *name* (one call, one request).

        For the threaded workloads, *thread* picks that thread's own plan.
        """
        peer, tokens = self.peer, self.tokens
        if name == "create":
            create = peer.create
            datas = itertools.cycle(create_plan())
            return lambda: create(next(datas))
        if name in ("set", "durable-set-1", "durable-set-8"):
            seed = self.seed + thread
            set_ = peer.set
            sets = itertools.cycle(
                [(tokens[i], k, v) for i, k, v in access_plan(len(tokens), seed)]
            )

            def set_op() -> None:
                t, k, v = next(sets)
                set_(t, k, v)

            return set_op
        if name == "read":
            read = peer.read
            reads = itertools.cycle([tokens[i] for i, _, _ in access_plan(len(tokens), self.seed)])
            return lambda: read(next(reads))
        if name == "mixed":
            return self._mixed()
        raise KeyError(f"workload {name!r} has no per-call operation")

    def _mixed(self) -> Callable[[], object]:
        peer, tokens = self.peer, self.tokens
        read, set_, create, destroy = peer.read, peer.set, peer.create, peer.destroy
        plan = itertools.cycle(_mixed_plan(self.seed, PLAN_SIZE))
        datas = itertools.cycle(create_plan())

        def op() -> object:
            kind, r, k, v = next(plan)
            n = len(tokens)
            if kind == 0 or (kind == 3 and n <= 1):
                return read(tokens[r % n])
            if kind == 1:
                set_(tokens[r % n], k, v)
            elif kind == 2:
                tokens.append(create(next(datas)))
            else:
                i = r % n
                t = tokens[i]
                tokens[i] = tokens[-1]
                tokens.pop()
                destroy(t)
            return None

        return op

    def threaded_operations(self, name: str) -> list[Callable[[], object]]:
        """One operation per thread of threaded workload *name*, each on its own plan."""
        return [self.operation(name, t) for t in range(workload(name).threads)]

    def close(self) -> None:
        self.tokens = []
        self.peer.close()


# -- open time, memory and disk -----------------------------------------------------------


def resident(peer: Peer) -> int:
    """Resident bytes of this process plus *peer*'s own processes (a Redis server)."""
    return rss() + sum(rss(p) for p in peer.processes())


def memory_growth(peer: Peer, sessions: int, method: str = "rss") -> tuple[int, str]:
    """Populate open *peer* with sessions 0 .. *sessions* - 1 of :func:`session_data`:
    (bytes its memory grew by, the last session's token).

    *method* ``"rss"``: growth of :func:`resident` (page-grained; counts the
    allocator's slack and the peer's server); ``"tracemalloc"``: growth of the
    memory Python allocated in this process (exact, several times slower).
    The tokens are dropped as they come, as a web server drops them after
    each request. Run it in a fresh process (:func:`.measure.run_child`) so
    nothing else's garbage is in the figure.
    """
    if method not in ("rss", "tracemalloc"):
        raise ValueError(f"unknown method {method!r}; 'rss' or 'tracemalloc'")
    traced = method == "tracemalloc"

    def now() -> int:
        return tracemalloc.get_traced_memory()[0] if traced else resident(peer)

    gc.collect()
    if traced:
        tracemalloc.start()
    try:
        before = now()
        token = _last(peer.populate(session_data(i) for i in range(sessions)))
        gc.collect()
        return now() - before, token
    finally:
        if traced:
            tracemalloc.stop()


def disk_usage(path: str) -> tuple[int, int]:
    """(allocated, apparent) bytes of the files under *path*, logs excluded."""
    allocated = apparent = 0
    for root, _, files in os.walk(path):
        for name in files:
            if name == RedisServer.LOG:
                continue
            st = os.lstat(os.path.join(root, name))
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def _last(tokens: Iterable[str]) -> str:
    """Consume *tokens*, keeping only the last (no list of them in memory)."""
    tail = collections.deque(tokens, maxlen=1)
    return tail[0] if tail else ""


@dataclass(frozen=True)
class Built:
    """A store :func:`build_store` made: the last session's token, how long it took,
    and the (allocated, apparent) bytes of its files once closed."""

    token: str
    sessions: int
    seconds: float
    disk_bytes: int
    disk_apparent_bytes: int


def build_store(spec: PeerSpec, sessions: int, path: str) -> Built:
    """Row *spec*'s store of *sessions* sessions of :func:`session_data` in *path*, closed."""
    peer = spec.open(path)
    try:
        t0 = time.perf_counter()
        token = _last(peer.populate(session_data(i) for i in range(sessions)))
        seconds = time.perf_counter() - t0
    finally:
        peer.close()
    return Built(token, sessions, seconds, *disk_usage(path))


def timed_open(spec: PeerSpec, path: str, token: str) -> tuple[Peer, dict[str, Any] | None, float]:
    """Open row *spec*'s store in *path* and read session *token*: (the open store,
    what the read returned, seconds from the call that opens to the read's return)."""
    t0 = time.perf_counter()
    peer = spec.open(path)
    try:
        got = peer.read(token)
    except BaseException:
        peer.close()
        raise
    return peer, got, time.perf_counter() - t0


def footprint(name: str, sessions: int, path: str, token: str, opens: int) -> dict[str, Any]:
    """In a fresh process: resident memory per session and open times of row *name*'s
    store of *sessions* sessions in *path* (made by :func:`build_store`; *token*
    names its last session).

    Memory: the growth of the resident set of this process plus the store's
    own processes (a Redis server) from an open empty store of the same kind
    (opened, measured and closed first, in another directory) to the store
    opened on *path* and read once: the memory the sessions take after a
    restart. A row that keeps nothing across a reopen (the dict floor) is
    built here instead, from an open empty store. Open: from the call that
    opens the store until the first read of a session returns (it must hold
    its data); *opens* times (at least once, for the memory).
    """
    spec = peer_spec(name)
    expected = session_data(sessions - 1)
    if not spec.persistent:
        peer = spec.open(path)
        try:
            grown, token = memory_growth(peer, sessions)
            if peer.read(token) != expected:
                raise RuntimeError(f"{name}: the last session does not hold its data")
        finally:
            peer.close()
        return {"rss_bytes": grown, "open_seconds": []}

    empty_path = path.rstrip(os.sep) + ".empty"
    empty = spec.open(empty_path)
    try:
        gc.collect()
        before = resident(empty)
    finally:
        empty.close()
        shutil.rmtree(empty_path, ignore_errors=True)
    open_seconds: list[float] = []
    after = 0
    for i in range(max(opens, 1)):
        gc.collect()
        peer, got, seconds = timed_open(spec, path, token)
        try:
            open_seconds.append(seconds)
            if i == 0:
                gc.collect()
                after = resident(peer)
        finally:
            peer.close()
        if got != expected:
            raise RuntimeError(f"{name}: the reopened store read {got!r}, not {expected!r}")
        # Dropped before the next open: a store still held would make that open
        # share the machine's memory with it (the last of a million sessions).
        del peer, got
    return {"rss_bytes": after - before, "open_seconds": open_seconds[:opens]}


def measure_footprint(
    name: str, sessions: int, path: str, token: str, opens: int, timeout: float = 7200
) -> dict[str, Any]:
    """:func:`footprint` in a fresh interpreter, so nothing else is in its memory."""
    args = ["-m", "walsess.benchmark.workloads", "footprint", name, str(sessions), path, token]
    return run_child([*args, str(opens)], f"footprint of {name}", timeout)


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "footprint":
        name, sessions, path, token, opens = argv[1:]
        print(json.dumps(footprint(name, int(sessions), path, token, int(opens))))
        return 0
    print("usage: python -m walsess.benchmark.workloads footprint PEER SESSIONS DIR TOKEN OPENS")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
