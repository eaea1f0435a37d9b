"""Benchmark workloads for walsess and the floors it is measured against.

Everything a benchmark needs is built here, independent of any runner, so the
pytest-benchmark suite (``bench/test_bench.py``), the median report
(``bench/report.py``) and the profiler (``bench/hotspots.py``) all time
exactly the same code. The data, the seeded access plans and the floors'
stores come from :mod:`walsess.benchmark` (what ``walsess bench`` runs), so
they are written once.

The pieces:

* **Targets** hold a populated store and hand out zero-argument operation
  callables: :class:`WalsessTarget` (a real store in a directory),
  :class:`DictFloor` (a dict of dicts of ``json.dumps`` strings, no I/O) and
  :class:`DictWriteFloor` (the same plus one ``os.write`` per change to an
  ``O_APPEND`` file). Random choices come from :func:`access_plan`, seeded,
  so every target replays the same sessions, keys and values in the same order.
* :func:`build_log` writes a store whose log holds a given number of records;
  :func:`replay_op` opens (replays) it.
* :class:`Workbench` builds targets lazily in one work directory and names
  every operation by ``(group, name)`` (see :data:`CATALOG`).
* :func:`measure_memory` measures bytes per session in a fresh subprocess.

The tools that time and measure (loops, threads, medians, resident memory,
child processes) are :mod:`walsess.benchmark.measure`; the data and plans
:mod:`walsess.benchmark.workloads`. Only what is particular to this suite
is here.

Example::

    with Workbench("/tmp/wb", Scale(10_000)) as wb:
        op = wb.operation("set", "walsess-interval")
        for _ in range(1000):
            op.fn()

Run as a script, this module is also the memory-measurement child::

    python bench/workloads.py memory-child walsess 200000 rss
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import walsess
from walsess.benchmark.measure import rss, run_child
from walsess.benchmark.peers import TTL as PEER_TTL
from walsess.benchmark.peers import (
    FloorDict,
    FloorDictWrite,
    Peer,
    WalsessPeer,
    floor_set_line,
    peer_spec,
)
from walsess.benchmark.workloads import (
    KEYS,
    SEED,
    Populated,
    access_plan,
    create_plan,
    memory_growth,
    new_value,
    parse_scale,
    session_data,
)

__all__ = [
    "CATALOG",
    "DEFAULT_RECORDS",
    "SCALE_ENV",
    "TTL",
    "DictFloor",
    "DictWriteFloor",
    "Operation",
    "Scale",
    "WalsessTarget",
    "Workbench",
    "build_log",
    "measure_memory",
    "replay_op",
]

#: Environment variable giving the number of records in the replay log
#: (and so the scale of everything else: sessions = records // 5).
SCALE_ENV = "WALSESS_BENCH_SCALE"
#: The replay log size the targets are stated for.
DEFAULT_RECORDS = 1_000_000
#: Idle timeout of benchmark sessions: long enough that nothing expires mid-run.
TTL = float(PEER_TTL)


# -- scale ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """How big the populated stores and the replay log are.

    ``records`` is the size of the replay log; one in five of its records
    creates a session, so stores for the per-operation benchmarks hold
    ``records // 5`` sessions too (200,000 at the default scale). The
    maintenance benchmarks' stores hold ``records`` sessions (1,000,000).
    """

    records: int = DEFAULT_RECORDS

    @classmethod
    def from_env(cls, default: int = DEFAULT_RECORDS) -> Scale:
        text = os.environ.get(SCALE_ENV)
        return cls(parse_scale(text) if text else default)

    @property
    def sessions(self) -> int:
        return max(1, self.records // 5)

    @property
    def sets(self) -> int:
        return max(0, self.records - self.sessions)

    @property
    def maintenance_sessions(self) -> int:
        """Sessions in the stores of the maintenance benchmarks (``bench/maintenance.py``:
        compaction, gc, snapshot load): as many as records, 1,000,000 at full scale."""
        return self.records


# -- operations -------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One timed operation: call ``fn()`` once to do ``per_call`` units of work.

    ``unit`` is ``"op"`` for per-request operations and ``"record"`` for
    replay, where one call replays the whole log.
    """

    group: str
    name: str
    description: str
    fn: Callable[[], object]
    per_call: int = 1
    unit: str = "op"


# -- targets ------------------------------------------------------------------------


class WalsessTarget:
    """A walsess store in *path* holding *sessions* sessions of five small keys.

    The handles :meth:`walsess.Store.create` returned are kept (for the
    held-handle operations) along with their tokens.
    """

    def __init__(
        self, path: str, sessions: int, durability: str = "interval", seed: int = SEED
    ) -> None:
        self.path = path
        self.durability = durability
        self.seed = seed
        self.store = walsess.open(path, durability=durability, default_ttl=TTL)
        create = self.store.create
        self.handles = [create(session_data(i)) for i in range(sessions)]
        self.tokens = [h.id for h in self.handles]

    def set_op(self) -> Callable[[], None]:
        """``s[key] = value`` on a held handle of a random session: one logged record."""
        handles = self.handles
        it = itertools.cycle(
            [(handles[i], k, v) for i, k, v in access_plan(len(handles), self.seed)]
        )

        def op() -> None:
            s, k, v = next(it)
            s[k] = v

        return op

    def get_op(self) -> Callable[[], object]:
        """``s[key]`` on a held handle of a random session."""
        handles = self.handles
        it = itertools.cycle([(handles[i], k) for i, k, _ in access_plan(len(handles), self.seed)])

        def op() -> object:
            s, k = next(it)
            return s[k]

        return op

    def get_token_op(self) -> Callable[[], object]:
        """``store.get(token)[key]``: hash the token, find and extend the session, read."""
        tokens = self.tokens
        get = self.store.get
        it = itertools.cycle([(tokens[i], k) for i, k, _ in access_plan(len(tokens), self.seed)])

        def op() -> object:
            t, k = next(it)
            return get(t)[k]  # type: ignore[index]  # every planned token is live

        return op

    def create_op(self) -> Callable[[], object]:
        """``store.create(data)`` with five small keys; the store grows with every call."""
        create = self.store.create
        it = itertools.cycle(create_plan())

        def op() -> object:
            return create(next(it))

        return op

    def close(self) -> None:
        self.handles.clear()
        self.tokens.clear()
        self.store.close()


class DictFloor(Populated):
    """The no-I/O floor: ``dict`` token -> ``dict`` key -> ``json.dumps(value)``.

    The store is ``walsess bench``'s floor-dict row
    (:class:`walsess.benchmark.peers.FloorDict`), populated as every row is
    (:class:`walsess.benchmark.workloads.Populated`, whose create operation
    it uses); set and get here are its set and read with every lookup hoisted
    out of the call. A set is ``json.dumps`` plus two dict operations, a get
    two dict lookups plus ``json.loads``: what any in-memory session store
    must at least do. *path* is where the row keeps its file, if it has one.
    """

    ROW = "floor-dict"

    def __init__(self, path: str, sessions: int, seed: int = SEED) -> None:
        super().__init__(peer_spec(self.ROW), path, sessions, seed)
        if not isinstance(self.peer, FloorDict):
            raise TypeError(f"row {self.ROW} is not a dict floor")
        self.floor: FloorDict = self.peer
        self.table = self.floor.table

    def set_op(self) -> Callable[[], None]:
        table = self.table
        dumps = json.dumps
        tokens = self.tokens
        it = itertools.cycle([(tokens[i], k, v) for i, k, v in access_plan(len(tokens), self.seed)])

        def op() -> None:
            t, k, v = next(it)
            table[t][k] = dumps(v)

        return op

    def get_op(self) -> Callable[[], object]:
        table = self.table
        loads = json.loads
        tokens = self.tokens
        it = itertools.cycle([(tokens[i], k) for i, k, _ in access_plan(len(tokens), self.seed)])

        def op() -> object:
            t, k = next(it)
            return loads(table[t][k])

        return op

    def create_op(self) -> Callable[[], object]:
        return self.operation("create")


class DictWriteFloor(DictFloor):
    """:class:`DictFloor` plus one ``os.write`` per change to an ``O_APPEND`` file
    in the directory *path* (:class:`walsess.benchmark.peers.FloorDictWrite`).

    A set writes the line ``S TAB ref TAB key TAB json NL`` (ref: the token's
    first 16 characters), a create one line with the token and every key and
    value; about the size of the walsess record for the same change. No
    fsync, like walsess in ``interval`` mode between its background fsyncs.
    """

    ROW = "floor-dict-write"

    def set_op(self) -> Callable[[], None]:
        table = self.table
        dumps = json.dumps
        write = os.write
        line = floor_set_line
        assert isinstance(self.floor, FloorDictWrite)
        fd = self.floor.fd
        tokens = self.tokens
        it = itertools.cycle([(tokens[i], k, v) for i, k, v in access_plan(len(tokens), self.seed)])

        def op() -> None:
            t, k, v = next(it)
            js = dumps(v)
            write(fd, line(t, k, js))
            table[t][k] = js

        return op


# -- replay ----------------------------------------------------------------------------


def build_log(path: str, records: int, seed: int = SEED) -> int:
    """Make *path* a store whose log holds *records* records; returns how many it holds.

    One in five records creates a session (five small keys); the rest set one
    random key of a random session, as :func:`access_plan` would.
    """
    sessions = max(1, records // 5)
    rng = random.Random(seed)
    with walsess.open(path, durability="never", default_ttl=TTL) as store:
        create = store.create
        handles = [create(session_data(i)) for i in range(sessions)]
        choice = rng.choice
        randrange = rng.randrange
        for _ in range(records - sessions):
            key = choice(KEYS)
            handles[randrange(sessions)][key] = new_value(key, rng)
        written = int(store.stats()["records_appended"])
    return written


def replay_op(path: str) -> Callable[[], int]:
    """Open the store in *path* (one pass over its log), close it; returns records replayed."""

    def op() -> int:
        store = walsess.open(path, durability="never")
        try:
            return store.recovery.records
        finally:
            store.close()

    return op


# -- the workbench -------------------------------------------------------------------

#: Every operation a :class:`Workbench` offers, as ``(group, name, description)``.
#: Within a group the ratios are the point; the floors are named ``floor-*``.
CATALOG: tuple[tuple[str, str, str], ...] = (
    ("set", "walsess-interval", "walsess s[key] = v, durability='interval'"),
    ("set", "walsess-never", "walsess s[key] = v, durability='never'"),
    ("set", "floor-dict", "dict of dicts, json.dumps"),
    ("set", "floor-dict-write", "dict of dicts, json.dumps + os.write"),
    ("get", "walsess-handle", "walsess s[key] on a held Session"),
    ("get", "walsess-token", "walsess store.get(token)[key]"),
    ("get", "floor-dict", "dict of dicts, json.loads"),
    ("create", "walsess-interval", "walsess store.create(5 keys), 'interval'"),
    ("create", "floor-dict", "dict of dicts, token_urlsafe + json.dumps x5"),
    ("create", "floor-dict-write", "the same + os.write"),
    ("replay", "walsess-open", "walsess.open() replaying the log"),
)

GROUPS = ("set", "get", "create", "replay")


def names(group: str) -> list[str]:
    """The operation names of *group*, in :data:`CATALOG` order."""
    return [n for g, n, _ in CATALOG if g == group]


class Workbench:
    """Builds the targets in *workdir* on first use and hands out operations.

    Per-operation targets are populated with ``scale.sessions`` sessions;
    create operations run on targets of their own that start empty (they
    grow), so they never change what the others measure. Close it (or use
    ``with``) to close the stores; the directory is left to its owner.
    """

    def __init__(self, workdir: str, scale: Scale, seed: int = SEED) -> None:
        self.workdir = workdir
        self.scale = scale
        self.seed = seed
        self._targets: dict[str, WalsessTarget | DictFloor] = {}
        self._log: tuple[str, int] | None = None
        os.makedirs(workdir, exist_ok=True)

    def __enter__(self) -> Workbench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _walsess(self, label: str, sessions: int, durability: str) -> WalsessTarget:
        t = self._targets.get(label)
        if t is None:
            t = WalsessTarget(os.path.join(self.workdir, label), sessions, durability, self.seed)
            self._targets[label] = t
        assert isinstance(t, WalsessTarget)
        return t

    def _floor(self, label: str, sessions: int, write: bool) -> DictFloor:
        t = self._targets.get(label)
        if t is None:
            kind = DictWriteFloor if write else DictFloor
            t = kind(os.path.join(self.workdir, label), sessions, self.seed)
            self._targets[label] = t
        assert isinstance(t, DictFloor)
        return t

    def walsess(self, durability: str = "interval") -> WalsessTarget:
        """The populated walsess store opened with *durability*."""
        return self._walsess(f"walsess-{durability}", self.scale.sessions, durability)

    def dict_floor(self) -> DictFloor:
        return self._floor("floor-dict", self.scale.sessions, write=False)

    def dict_write_floor(self) -> DictFloor:
        return self._floor("floor-dict-write", self.scale.sessions, write=True)

    def replay_log(self) -> tuple[str, int]:
        """The store directory holding ``scale.records`` records, and its record count."""
        if self._log is None:
            path = os.path.join(self.workdir, "replay")
            if os.path.exists(path):
                shutil.rmtree(path)
            self._log = (path, build_log(path, self.scale.records, self.seed))
        return self._log

    def operation(self, group: str, name: str) -> Operation:
        """The operation *name* of *group*, building what it needs first."""
        desc = {(g, n): d for g, n, d in CATALOG}.get((group, name))
        if desc is None:
            raise KeyError(f"no operation {group}/{name}; see CATALOG")
        fn: Callable[[], object]
        per_call, unit = 1, "op"
        if group == "set":
            if name.startswith("walsess-"):
                fn = self.walsess(name.removeprefix("walsess-")).set_op()
            elif name == "floor-dict":
                fn = self.dict_floor().set_op()
            else:
                fn = self.dict_write_floor().set_op()
        elif group == "get":
            if name == "walsess-handle":
                fn = self.walsess().get_op()
            elif name == "walsess-token":
                fn = self.walsess().get_token_op()
            else:
                fn = self.dict_floor().get_op()
        elif group == "create":
            if name == "walsess-interval":
                fn = self._walsess("create-walsess", 0, "interval").create_op()
            else:
                fn = self._floor(f"create-{name}", 0, write=name == "floor-dict-write").create_op()
        else:
            path, per_call = self.replay_log()
            fn, unit = replay_op(path), "record"
        return Operation(group, name, desc, fn, per_call, unit)

    def operations(self, groups: tuple[str, ...] = GROUPS) -> Iterator[Operation]:
        """Every operation of *groups*, group by group."""
        for group in groups:
            for name in names(group):
                yield self.operation(group, name)

    def close(self) -> None:
        for t in self._targets.values():
            t.close()
        self._targets.clear()


# -- memory per session -------------------------------------------------------------

MEMORY_KINDS = ("walsess", "floor-dict", "walsess-reopened", "walsess-reopened-read")


def memory_child(kind: str, n: int, method: str) -> dict[str, Any]:
    """In this process: bytes per session of *n* sessions of *kind*, by *method*
    (``rss`` or ``tracemalloc``: :func:`walsess.benchmark.workloads.memory_growth`).

    The store (or dict) exists before the baseline, so only per-session
    memory counts.
    """
    if kind.startswith("walsess-reopened"):
        return _reopened_memory(kind, n, method)
    with tempfile.TemporaryDirectory(prefix="walsess-mem-") as workdir:
        # the rows of ``walsess bench`` (walsess.benchmark.peers), built the same way
        peer: Peer
        if kind == "walsess":
            peer = WalsessPeer(os.path.join(workdir, "s"), durability="never")
        elif kind == "floor-dict":
            peer = FloorDict()
        else:
            raise ValueError(f"unknown memory kind {kind!r}; one of {MEMORY_KINDS}")
        try:
            grown, _ = memory_growth(peer, n, method)
        finally:
            peer.close()
    return {
        "kind": kind,
        "method": method,
        "walsess": os.path.dirname(walsess.__file__),
        "sessions": n,
        "bytes": grown,
        "bytes_per_session": grown / n,
    }


def build_compacted(path: str, n: int) -> None:
    """A store of *n* sessions of :func:`session_data`, compacted and closed, with
    their tokens in ``path + ".tokens"`` (one per line)."""
    with walsess.open(path, durability="never", compact_ratio=None, cleanup_interval=None,
                      default_ttl=1e9) as store:  # fmt: skip
        tokens = [store.create(session_data(i)).id for i in range(n)]
        store.compact()
    with open(path + ".tokens", "w") as f:
        f.write("\n".join(tokens))


def _reopened_memory(kind: str, n: int, method: str) -> dict[str, Any]:
    """Bytes per session of a store of *n* sessions reopened in this process (built
    by a child, so none of the building is in this heap): not yet read
    (``walsess-reopened``) or after every session was read once (``-read``)."""
    if method != "rss":
        raise ValueError("the reopened kinds are measured by rss only")
    with tempfile.TemporaryDirectory(prefix="walsess-mem-") as workdir:
        path = os.path.join(workdir, "s")
        run_child([os.path.abspath(__file__), "build-store", path, str(n)], "store builder")
        with open(path + ".tokens") as f:
            tokens = f.read().split("\n")
        gc.collect()
        before = rss()
        store = walsess.open(path, durability="never", compact_ratio=None, cleanup_interval=None)
        try:
            if kind.endswith("-read"):
                for token in tokens:
                    session = store.get(token)
                    assert session is not None
                    session.to_dict()
            del tokens
            gc.collect()
            grown = rss() - before
        finally:
            store.close()
    return {"kind": kind, "method": method, "walsess": os.path.dirname(walsess.__file__),
            "sessions": n, "bytes": grown, "bytes_per_session": grown / n}  # fmt: skip


def measure_memory(kind: str, n: int, method: str = "rss") -> dict[str, Any]:
    """:func:`memory_child` run in a fresh interpreter, so nothing else is in the heap."""
    args = [os.path.abspath(__file__), "memory-child", kind, str(n), method]
    return run_child(args, f"memory child {kind}")


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "memory-child":
        print(json.dumps(memory_child(argv[1], int(argv[2]), argv[3])))
        return 0
    if len(argv) == 3 and argv[0] == "build-store":
        build_compacted(argv[1], int(argv[2]))
        print("{}")
        return 0
    print("usage: workloads.py memory-child {walsess,floor-dict} N {rss,tracemalloc}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
