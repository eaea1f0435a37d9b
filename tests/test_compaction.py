"""Compaction: crash safety, fuzzy snapshots, SIGKILL, open-time rules, renumbering.

* Crash at every step: a :class:`FaultFS` records every file-system call a
  ``store.compact()`` makes. For each k, a fresh store runs the same workload,
  then compacts with the process "dying" at the k-th call (a
  :class:`Crash`, a ``BaseException`` nothing in walsess handles, and every
  later call fails too). The store is abandoned without ``close()``: only what
  the kernel does at exit happens (its descriptors are closed, which releases
  the directory lock). Reopening must give exactly the state before the
  compaction. A second variant writes to the store from inside the snapshot
  writes (with ``walsess.compaction.CHUNK_SESSIONS`` = 3, between chunks):
  every acknowledged change must survive a crash at any call, the writers'
  own appends included.
* Fuzzy snapshot: hypothesis picks writes of every kind to interleave between
  the chunks of a snapshot (``walsess.compaction.CHUNK_SESSIONS`` 1..4); after
  the compaction a reopen must give the state the store held at close (idle deadlines between
  the logged and the in-memory one, as documented). Half the examples make
  creates reuse freed SIDs (as after the SID space wrapped), so a chunk can
  find a different session under a SID listed at the rotation.
* SIGKILL: a child compacts in a loop in one thread while writer threads
  change sessions and report each acknowledged change; the parent kills it at
  a random moment. ``KILL_TRIALS`` kills per durability mode ("always" and
  "interval"), 10 by default, so 20 in a run (set
  ``WALSESS_COMPACT_KILL_TRIALS`` to change it); each trial reopens and checks
  every acknowledged change, and the trials of a mode share one directory.
* Open-time rules: stale logs, damaged snapshots (every byte flipped, every
  truncation, a missing END), falling back to an older snapshot with a complete
  log chain, leftover ``.tmp`` files, indexes rebuilt from a snapshot.
* SID renumbering above 2**31 at open, and automatic compaction.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, start_child
from hypothesis import given, settings
from hypothesis import strategies as st

import walsess
from walsess import compaction
from walsess import record as wrecord
from walsess.fileio import FileSystem
from walsess.record import MAX_SID, Block, End, RecordReader
from walsess.tokens import digest

#: Store options for the tests' own opens: no background threads, so the
#: file-system calls a compaction makes are exactly the same in every run.
QUIET: dict[str, Any] = {"durability": "never", "cleanup_interval": None, "compact_ratio": None}
USERS = ("alice", "bob", "carol")
KEYS = ("a", "b", "c", "d")

State = dict[int, tuple[Any, ...]]


def store_state(store: walsess.Store) -> State:
    """Everything the table holds for each SID (the idle deadline in memory included)."""
    return {
        sid: (
            st.digest,
            st.created_at,
            st.ttl,
            st.idle_deadline,
            st.logged_deadline,
            st.hard_deadline,
            st.user,
            st.meta,
            dict(st.data),
        )
        for sid, st in ((st.sid, st) for st in store._table.states())
    }


def files(directory: str, pattern: str) -> list[str]:
    return sorted(p.name for p in Path(directory).glob(pattern))


def peek(store: walsess.Store, token: str) -> walsess.Session | None:
    """A handle for *token* that, unlike ``store.get``, does not extend the session."""
    st = store._table.find(digest(token))
    return None if st is None else walsess.Session(store, st, token)


def gen_of(name: str) -> int:
    return int(name.split(".")[0], 16)


def workload(
    store: walsess.Store,
    rng: random.Random,
    clock: FakeClock,
    steps: int,
    handles: list[walsess.Session] | None = None,
) -> list[walsess.Session]:
    """Random changes of every kind, each logged (no reads that extend in memory only)."""
    live = [] if handles is None else handles
    for i in range(steps):
        r = rng.random()
        if not live or r < 0.3:
            kw: dict[str, Any] = {}
            if rng.random() < 0.5:
                kw["user"] = rng.choice(USERS)
            if rng.random() < 0.3:
                kw["meta"] = {"ip": f"10.0.0.{i}", "agent": "test"}
            if rng.random() < 0.2:
                kw["ttl"] = rng.choice([600.0, 3600.0])
            if rng.random() < 0.2:
                kw["max_lifetime"] = 7200.0
            live.append(store.create({"n": i, "l": [i, "x" * rng.randrange(20)]}, **kw))
            continue
        idx = rng.randrange(len(live))
        h = live[idx]
        if r < 0.55:
            h[rng.choice(KEYS)] = i
        elif r < 0.65:
            h.update({k: [i, k] for k in rng.sample(KEYS, 2)})
        elif r < 0.70:
            key = rng.choice(KEYS)
            if key in h:
                del h[key]
        elif r < 0.73:
            h.clear()
        elif r < 0.76:
            h.replace({"r": i})
        elif r < 0.82:
            live[idx] = store.regenerate(h.id)
        elif r < 0.86:
            clock.advance(rng.random() * 3)
            assert store.touch(h.id, ttl=rng.choice([None, 900.0]))
        elif r < 0.94:
            assert store.destroy(live.pop(idx).id)
        elif r < 0.98:
            assert store.revoke(live.pop(idx).ref)
        else:
            store.destroy_user(rng.choice(USERS))
            live[:] = [s for s in live if store.exists(s.id)]
    return live


# -- crash at every step of a compaction -----------------------------------------------


class Crash(BaseException):
    """The process dies here. Not an OSError: nothing in walsess handles it."""


class FaultFS(FileSystem):
    """Counts (while armed) every call; dies at call number ``crash_at`` and stays dead.

    Every descriptor opened through it is tracked, so an abandoned store's
    descriptors can be closed as the kernel would at exit. ``between_chunks``,
    if set, runs before each (armed) write to a ``.snap.tmp`` file: writers
    going on while the snapshot is written.
    """

    def __init__(self) -> None:
        self.armed = False
        self.dead = False
        self.crash_at: int | None = None
        self.calls: list[tuple[str, str]] = []
        self.fds: dict[int, str] = {}
        self.between_chunks: Callable[[], None] | None = None

    def _call(self, name: str, path: str) -> None:
        if self.dead:
            raise Crash(f"{name} {path} after the crash")
        if not self.armed:
            return
        if len(self.calls) == self.crash_at:
            self.dead = True
            raise Crash(f"crash at call {self.crash_at}: {name} {path}")
        self.calls.append((name, os.path.basename(path)))

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        self._call("open", path)
        fd = super().open(path, flags, mode)
        self.fds[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self._call("close", self.fds.get(fd, "?"))
        super().close(fd)
        self.fds.pop(fd, None)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        path = self.fds.get(fd, "?")
        hook = self.between_chunks
        if hook is not None and self.armed and not self.dead and path.endswith(".snap.tmp"):
            hook()
        self._call("write", path)
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._call("fsync", self.fds.get(fd, "?"))
        super().fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        self._call("truncate", self.fds.get(fd, "?"))
        super().truncate(fd, size)

    def rename(self, src: str, dst: str) -> None:
        self._call("rename", src)
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self._call("unlink", path)
        super().unlink(path)

    def fsync_dir(self, path: str) -> None:
        self._call("fsync_dir", path)
        super().fsync_dir(path)

    def exit(self, store: walsess.Store) -> None:
        """What the kernel does when the process dies: close every descriptor
        (which drops the flock). The store object is left as the crash left it."""
        self.armed = self.dead = False
        self.between_chunks = None
        store._sync.close()  # "never": no thread; kept for symmetry
        for fd in list(self.fds):
            os.close(fd)
        self.fds.clear()
        store._log._fd = None  # the numbers may be reused: the dead store must not touch them
        store._dirlock._fd = None
        store.closed = True


@dataclass
class Acked:
    """Changes that writers running between snapshot chunks had acknowledged."""

    keys: dict[tuple[str, str], Any] = field(default_factory=dict)
    created: dict[str, dict[str, Any]] = field(default_factory=dict)
    destroyed: set[str] = field(default_factory=set)

    def check(self, store: walsess.Store) -> None:
        for token in self.destroyed:
            assert not store.exists(token), "an acknowledged destroy was lost"
        for token, data in self.created.items():
            if token in self.destroyed:
                continue
            s = peek(store, token)
            assert s is not None, "an acknowledged create was lost"
            for key, value in data.items():
                if (token, key) not in self.keys:
                    assert s[key] == value
        for (token, key), value in self.keys.items():
            if token not in self.destroyed:
                s = peek(store, token)
                assert s is not None and s[key] == value, "an acknowledged set was lost"


def interleave(
    store: walsess.Store, live: list[walsess.Session], rng: random.Random, acked: Acked
) -> None:
    """Two writes, as another thread would make them between two snapshot chunks."""
    for _ in range(2):
        r = rng.random()
        if not live or r < 0.2:
            data = {"late": rng.randrange(1000)}
            s = store.create(data, user=rng.choice(USERS))
            live.append(s)
            acked.created[s.id] = data
        elif r < 0.85:
            s = rng.choice(live)
            key, value = rng.choice(KEYS), rng.randrange(1000)
            s[key] = value
            acked.keys[(s.id, key)] = value
        else:
            s = live.pop(rng.randrange(len(live)))
            assert store.destroy(s.id)
            acked.destroyed.add(s.id)


@dataclass
class Trial:
    calls: list[tuple[str, str]]
    crashed: bool


def crash_trial(directory: str, crash_at: int | None, writers: bool) -> Trial:
    """Workload, a first compaction, more workload, then a compaction that dies at
    call *crash_at*; reopen and compare. Returns the calls the compaction made."""
    rng = random.Random(20240601)  # the same workload, so the same calls, every trial
    clock = FakeClock()
    fs = FaultFS()
    store = walsess.open(directory, fs=fs, clock=clock, **QUIET)
    live = workload(store, rng, clock, 50)
    first = store.compact()  # the crashing compaction replaces a snapshot and its log
    live = workload(store, rng, clock, 40, live)
    before = store_state(store)
    assert before, "the workload left no sessions"
    assert all(st.idle_deadline == st.logged_deadline for st in store._table)
    acked = Acked()
    if writers:
        fs.between_chunks = lambda: interleave(store, live, rng, acked)
    fs.crash_at = crash_at
    fs.armed = True
    crashed = False
    try:
        store.compact()
    except Crash:
        crashed = True
    fs.armed = False
    at_death = store_state(store)
    if not writers:
        assert at_death == before, "a compaction changed the table"
    fs.exit(store)
    assert crashed == (crash_at is not None)
    calls = fs.calls

    renames = [i for i, (name, path) in enumerate(calls) if name == "rename" and ".snap" in path]
    installed = crash_at is None or (len(renames) == 1 and crash_at > renames[0])
    with walsess.open(directory, clock=clock, **QUIET) as again:
        where = f"crash at call {crash_at} ({calls[-1] if calls else 'none'} was the last done)"
        assert store_state(again) == at_death, where
        again._table._check()
        assert not files(directory, "*.tmp"), where
        snap = again.recovery.snapshot
        assert snap is not None
        if installed:
            assert gen_of(os.path.basename(snap)) == first.generation + 1, where
        else:
            assert gen_of(os.path.basename(snap)) == first.generation, where
        if writers:
            acked.check(again)
        # The store goes on: another compaction and reopen keep the state.
        again.compact()
        state = store_state(again)
    with walsess.open(directory, clock=clock, **QUIET) as third:
        assert store_state(third) == state and third.recovery.clean, where
        assert len(files(directory, "*.snap")) == 1
    return Trial(calls, crashed)


@pytest.mark.parametrize("writers", [False, True], ids=["quiet", "writes-between-chunks"])
def test_crash_at_every_call_of_a_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers: bool
) -> None:
    monkeypatch.setattr(compaction, "CHUNK_SESSIONS", 3)
    monkeypatch.setattr(wrecord, "BLOCK_SESSIONS", 3)  # a block per chunk: many writes
    reference = crash_trial(str(tmp_path / "reference" / "store"), None, writers)
    calls = reference.calls
    names = {name for name, _ in calls}
    # The compaction must have made every kind of call for "every step" to mean anything.
    assert {"open", "write", "fsync", "rename", "unlink", "fsync_dir", "close"} <= names
    snapshot_writes = sum(1 for name, p in calls if name == "write" and p.endswith(".snap.tmp"))
    assert snapshot_writes >= 5, "the snapshot should be written in several chunks"
    if writers:
        log_writes = sum(1 for name, p in calls if name == "write" and p.endswith(".log"))
        assert log_writes >= 2 * snapshot_writes  # the writers' appends are crash points too
    for k in range(len(calls)):
        trial = crash_trial(str(tmp_path / f"k{k}" / "store"), k, writers)
        assert trial.crashed
        assert trial.calls == calls[:k], f"crash at {k}: the calls before it differ"
        shutil.rmtree(tmp_path / f"k{k}")


# -- fuzzy snapshot correctness ----------------------------------------------------------------

_data = st.dictionaries(
    st.sampled_from(KEYS), st.one_of(st.integers(-5, 5), st.lists(st.integers(0, 3), max_size=2))
)
_idx = st.integers(0, 63)
_op = st.one_of(
    st.tuples(st.just("create"), _data, st.sampled_from([None, *USERS])),
    st.tuples(st.just("set"), _idx, st.sampled_from(KEYS), st.integers(0, 99)),
    st.tuples(st.just("update"), _idx, _data),
    st.tuples(st.just("delete"), _idx, st.sampled_from(KEYS)),
    st.tuples(st.just("clear"), _idx),
    st.tuples(st.just("replace"), _idx, _data),
    st.tuples(st.just("destroy"), _idx),
    st.tuples(st.just("regenerate"), _idx),
    st.tuples(st.just("touch"), _idx, st.sampled_from([None, 500.0, 5000.0])),
    # A clock step, then a read: 0.5 s extends in memory only, 2 s writes a TOUCH.
    st.tuples(st.just("read"), _idx, st.sampled_from([0.5, 2.0])),
)


def run_op(
    store: walsess.Store, clock: FakeClock, live: list[walsess.Session], op: tuple[Any, ...]
) -> None:
    kind = op[0]
    if kind == "create":
        live.append(store.create(op[1], user=op[2]))
        return
    if not live:
        return
    i = op[1] % len(live)
    s = live[i]
    if kind == "set":
        s[op[2]] = op[3]
    elif kind == "update":
        s.update(op[2])
    elif kind == "delete":
        if op[2] in s:
            del s[op[2]]
    elif kind == "clear":
        s.clear()
    elif kind == "replace":
        s.replace(op[2])
    elif kind == "destroy":
        assert store.destroy(live.pop(i).id)
    elif kind == "regenerate":
        live[i] = store.regenerate(s.id)
    elif kind == "touch":
        assert store.touch(s.id, ttl=op[2])
    else:
        clock.advance(op[2])
        assert store.get(s.id) is not None


class HookFS(FileSystem):
    """Runs ``hook`` before each write to a snapshot being written."""

    def __init__(self) -> None:
        self.hook: Callable[[], None] | None = None
        self.names: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        self.names[fd] = path
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.hook is not None and self.names.get(fd, "").endswith(".snap.tmp"):
            self.hook()
        return super().write(fd, data)


@settings(max_examples=60)
@given(
    initial=st.lists(st.tuples(_data, st.sampled_from([None, *USERS])), max_size=12),
    batches=st.lists(st.lists(_op, max_size=4), max_size=10),
    chunk=st.integers(1, 4),
    reuse_sids=st.booleans(),
)
def test_fuzzy_snapshot_with_writes_between_chunks(
    initial: list[tuple[dict[str, Any], str | None]],
    batches: list[list[tuple[Any, ...]]],
    chunk: int,
    reuse_sids: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(compaction, "CHUNK_SESSIONS", chunk)
        mp.setattr(wrecord, "BLOCK_SESSIONS", chunk)
        path = os.path.join(tmp, "store")
        clock = FakeClock()
        fs = HookFS()
        opts = {**QUIET, "default_ttl": 1000.0, "touch_granularity": 1.0}
        store = walsess.open(path, fs=fs, clock=clock, **opts)
        live = [store.create(data, user=user) for data, user in initial]
        if reuse_sids:
            # As after the SID space wrapped: creates fill the SIDs that destroys free,
            # so a snapshot chunk may find a different session under a listed SID.
            store._table.next_sid = 1
        pending = list(batches)
        ran = 0

        def between_chunks() -> None:
            nonlocal ran
            if pending:
                ran += 1
                for op in pending.pop(0):
                    run_op(store, clock, live, op)

        fs.hook = between_chunks
        result = store.compact()
        fs.hook = None
        # Header, one write per chunk that still has sessions, END: a batch before each.
        assert min(len(batches), 2) <= ran <= 2 + -(-len(initial) // chunk)
        for batch in pending:  # the rest after the compaction, into the same log
            for op in batch:
                run_op(store, clock, live, op)
        store._table._check()
        want = store_state(store)
        users = {u: [i.ref for i in store.sessions_of(u)] for u in USERS}
        store.close()

        with walsess.open(path, clock=clock, **opts) as again:
            assert again.recovery.snapshot is not None
            assert gen_of(os.path.basename(again.recovery.snapshot)) == result.generation
            got = store_state(again)
            assert got.keys() == want.keys()
            for sid, (dg, created, ttl, idle, logged, hard, user, meta, data) in want.items():
                g = got[sid]
                assert (g[0], g[1], g[2], g[5], g[6], g[7], g[8]) == (
                    dg,
                    created,
                    ttl,
                    hard,
                    user,
                    meta,
                    data,
                ), f"sid {sid}"
                # A read extends in memory; the snapshot may or may not have caught it.
                assert logged <= g[3] <= idle, f"sid {sid}: {logged} <= {g[3]} <= {idle}"
            again._table._check()
            assert {u: [i.ref for i in again.sessions_of(u)] for u in USERS} == users
            assert sorted(s.id for s in live if again.exists(s.id)) == sorted(s.id for s in live)


# -- SIGKILL during compactions with concurrent writers -------------------------------------

KILL_TRIALS = int(os.environ.get("WALSESS_COMPACT_KILL_TRIALS", "10"))

CHILD = r"""
import random, sys, threading
import walsess

path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()


def say(*words):
    line = " ".join(map(str, words)) + "\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()


store = walsess.open(path, durability=mode, fsync_interval=0.005, clock=lambda: 1.7e9,
                     compact_ratio=None, cleanup_interval=None)


def compactor():
    while True:
        say("compacting")
        c = store.compact()
        say("compacted", c.generation, c.sessions)


def writer(w):
    rng = random.Random(seed * 16 + w)
    mine = []
    for seq in range(1, 1000000):
        r = rng.random()
        if not mine or (r < 0.2 and len(mine) < 40):
            say("intent", w, "create", seq)
            s = store.create({"w": w, "n": seq}, user=f"u{w}")
            mine.append(s)
            say("ack", w, "create", seq, s.id)
        elif r < 0.7:
            s = rng.choice(mine)
            key = rng.choice("abc")
            say("intent", w, "set", seq, s.id, key)
            s[key] = seq
            say("ack", w, "set", seq, s.id, key)
        elif r < 0.9:
            s = rng.choice(mine)
            keys = rng.sample("abcd", 2)
            say("intent", w, "update", seq, s.id, *keys)
            s.update({k: seq for k in keys})
            say("ack", w, "update", seq, s.id, *keys)
        else:
            s = mine.pop(rng.randrange(len(mine)))
            say("intent", w, "destroy", seq, s.id)
            assert store.destroy(s.id)
            say("ack", w, "destroy", seq, s.id)


say("ready")
threads = [threading.Thread(target=compactor, daemon=True)]
threads += [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

Sessions = dict[str, dict[str, Any]]


def apply_change(model: Sessions, w: int, words: list[str]) -> None:
    """Apply ``op seq token ...`` of writer *w* to *model* (a create without a token:
    in flight, its token never reported, so not applied here)."""
    op, seq = words[0], int(words[1])
    if op == "create":
        if len(words) > 2:
            model[words[2]] = {"w": w, "n": seq}
    elif op in ("set", "update"):
        model[words[2]].update({k: seq for k in words[3:]})
    else:
        assert op == "destroy", words
        del model[words[2]]


@dataclass
class KillResult:
    acked: Sessions
    pending: dict[str, list[str]]
    acks: int
    compactions_started: int
    mid_compaction: bool


def kill_child(directory: str, mode: str, seed: int, rng: random.Random) -> KillResult:
    proc, watchdog = start_child(CHILD, directory, mode, str(seed))
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[bytes] = []
        wanted = rng.randint(10, 300)
        acks = started = 0
        while acks < wanted or started == 0:
            line = proc.stdout.readline()
            assert line.endswith(b"\n"), f"child ended early: {line!r} {proc.stderr.read()!r}"
            lines.append(line)
            acks += line.startswith(b"ack ")
            started += line == b"compacting\n"
        time.sleep(rng.random() * 0.01)  # the kill lands anywhere; the check does not care
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rest, err = proc.stdout.read(), proc.stderr.read()
        assert proc.returncode == -signal.SIGKILL, err.decode()
    finally:
        watchdog.cancel()
        if proc.poll() is None:  # pragma: no cover - only after a failed assertion
            proc.kill()
            proc.wait()
    lines += rest.splitlines(keepends=True)
    acked: Sessions = {}
    pending: dict[str, list[str]] = {}
    acks = started = 0
    in_compaction = False
    for raw in lines:
        if not raw.endswith(b"\n"):
            break  # cut by the kill
        words = raw.decode().split()
        if words[0] == "compacting":
            started += 1
            in_compaction = True
        elif words[0] == "compacted":
            in_compaction = False
        elif words[0] == "intent":
            pending[words[1]] = words[2:]
        elif words[0] == "ack":
            intent = pending.pop(words[1])
            assert words[2:4] == intent[:2], (words, intent)
            apply_change(acked, int(words[1]), words[2:])
            acks += 1
    return KillResult(acked, pending, acks, started, in_compaction)


@pytest.mark.parametrize("mode", ["always", "interval"])
def test_sigkill_during_compaction_loses_nothing_acknowledged(tmp_path: Path, mode: str) -> None:
    directory = str(tmp_path / "store")
    rng = random.Random(f"compact-kill-{mode}")
    known: Sessions = {}  # what earlier trials left, as the store showed it
    unknown = 0  # sessions whose create was in flight at a kill and landed
    mid = from_snapshot = total_acks = 0
    for trial in range(KILL_TRIALS):
        res = kill_child(directory, mode, rng.randrange(2**32), rng)
        total_acks += res.acks
        mid += res.mid_compaction
        acked = {**known, **res.acked}
        with walsess.open(directory, clock=lambda: 1.7e9, **QUIET) as store:
            store._table._check()
            from_snapshot += store.recovery.snapshot is not None
            seen: Sessions = {}
            for token, data in acked.items():
                s = store.get(token)
                allowed: list[dict[str, Any] | None] = [data]
                # The one change in flight of the writer that owns this session may have landed.
                for w, intent in res.pending.items():
                    if len(intent) > 2 and intent[2] == token:
                        after = {token: dict(data)}
                        apply_change(after, int(w), intent)
                        allowed.append(after.get(token))
                got = None if s is None else s.to_dict()
                assert got in allowed, (
                    f"{mode} trial {trial}: session {token[:8]} holds {got}, acknowledged"
                    f" {data}; recovery {store.recovery}"
                )
                if got is not None:
                    seen[token] = got
            in_flight = sum(1 for i in res.pending.values() if i[0] == "create")
            extra = len(store) - len(seen) - unknown
            assert 0 <= extra <= in_flight, f"{mode} trial {trial}: {extra} unexplained sessions"
            unknown += extra
            known = seen
    assert total_acks >= 10 * KILL_TRIALS
    if KILL_TRIALS >= 5:  # almost every kill lands in a compaction; a few trials may not
        assert mid > 0, "no kill landed while a compaction was running"
        assert from_snapshot > 0, "no trial recovered from a snapshot"


# -- open-time rules --------------------------------------------------------------------------


def build_compacted(directory: str, clock: FakeClock, sessions: int = 4) -> dict[str, Any]:
    """A closed store with one snapshot (and its empty log); returns token -> data."""
    store = walsess.open(directory, clock=clock, **QUIET)
    out = {}
    for i in range(sessions):
        s = store.create({"i": i, "v": "x" * i}, user=USERS[i % 3], meta={"k": i})
        s["more"] = [i]
        out[s.id] = s.to_dict()
    store.compact()
    store.close()
    assert files(directory, "*.snap") == ["0000000000000002.snap"]
    assert files(directory, "*.log") == ["0000000000000002.log"]
    return out


def test_stale_logs_are_deleted_and_never_replayed(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    keep = store.create({"k": 1})
    doomed = store.create({"d": 1}, user="alice")
    store.sync()
    stale = (Path(store_dir) / "0000000000000001.log").read_bytes()  # holds doomed's CREATE
    assert store.destroy(doomed.id)
    keep["k"] = 2
    store.compact()
    want = store_state(store)
    store.close()
    log1 = Path(store_dir) / "0000000000000001.log"
    assert not log1.exists()
    for content in (stale, b"garbage that is no log at all" * 3):
        log1.write_bytes(content)
        with walsess.open(store_dir, clock=clock, **QUIET) as again:
            assert str(log1) in again.recovery.removed
            assert not log1.exists()
            assert all(not f.endswith("0000000000000001.log") for f in again.recovery.files)
            assert store_state(again) == want
            assert not again.exists(doomed.id) and again.sessions_of("alice") == []


@pytest.fixture
def compacted(
    store_dir: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Path, bytes, list[int]]:
    monkeypatch.setattr(wrecord, "BLOCK_SESSIONS", 2)
    build_compacted(store_dir, clock)
    monkeypatch.undo()
    snap = Path(store_dir) / "0000000000000002.snap"
    image = snap.read_bytes()
    starts = [pos for pos, _ in RecordReader(image)]
    assert len(starts) == 3 and starts[0] == 32  # two BLOCKs of two sessions and the END
    return store_dir, snap, image, starts


def expect_damage(directory: str, clock: FakeClock, snap: Path, offset: int, kind: type) -> None:
    with pytest.raises(walsess.FileError) as info:
        walsess.open(directory, clock=clock, **QUIET)
    exc = info.value
    assert type(exc) is kind, f"{exc!r}"
    assert exc.path == str(snap) and exc.offset == offset, f"{exc!r}"
    assert str(snap) in str(exc) and f"offset {offset}" in str(exc)


def test_damaged_snapshot_without_old_logs_is_refused(
    compacted: tuple[str, Path, bytes, list[int]], clock: FakeClock
) -> None:
    directory, snap, image, starts = compacted
    bounds = [*starts, len(image)]
    for pos in range(len(image)):
        damaged = bytearray(image)
        damaged[pos] ^= 1 << (pos % 8)
        snap.write_bytes(bytes(damaged))
        if pos < 32:  # the header: a changed magic is "not a snapshot", the rest a bad crc
            kind = walsess.FormatError if pos < 8 else walsess.CorruptionError
            expect_damage(directory, clock, snap, 0, kind)
        else:
            record = max(s for s in starts if s <= pos)
            expect_damage(directory, clock, snap, record, walsess.CorruptionError)
    for size in range(len(image)):
        snap.write_bytes(image[:size])
        if size < 32:
            offset = 0
        elif size in bounds:  # whole records, but no END: incomplete
            offset = size
        else:
            offset = max(s for s in starts if s <= size)
        expect_damage(directory, clock, snap, offset, walsess.CorruptionError)
    # Missing END, said plainly; and bytes after the END.
    snap.write_bytes(image[: starts[-1]])
    with pytest.raises(walsess.CorruptionError, match="no END record"):
        walsess.open(directory, clock=clock, **QUIET)
    snap.write_bytes(image + image[starts[1] : starts[2]])
    expect_damage(directory, clock, snap, len(image), walsess.CorruptionError)
    # The damaged snapshot is kept for inspection, and the intact one still opens.
    snap.write_bytes(image)
    with walsess.open(directory, clock=clock, **QUIET) as store:
        assert len(store) == 4 and store.recovery.clean


def test_older_snapshot_with_complete_chain_is_used(store_dir: str, clock: FakeClock) -> None:
    rng = random.Random(7)
    store = walsess.open(store_dir, clock=clock, **QUIET)
    live = workload(store, rng, clock, 40)
    store.compact()  # snapshot 2, log 2
    live = workload(store, rng, clock, 30, live)
    store.close()
    aside = Path(store_dir).parent / "aside"
    aside.mkdir()
    for name in ("0000000000000002.snap", "0000000000000002.log"):
        shutil.copy2(Path(store_dir) / name, aside / name)
    store = walsess.open(store_dir, clock=clock, **QUIET)
    c = store.compact()  # snapshot 3, log 3: the files of generation 2 are deleted
    assert c.generation == 3 and len(c.removed) == 2
    workload(store, rng, clock, 30, [h for s in live if (h := peek(store, s.id)) is not None])
    want = store_state(store)
    users = {u: [i.ref for i in store.sessions_of(u)] for u in USERS}
    store.close()

    snap3 = Path(store_dir) / "0000000000000003.snap"
    image = snap3.read_bytes()
    damaged = bytearray(image)
    damaged[len(image) // 2] ^= 0x10
    snap3.write_bytes(bytes(damaged))
    # Snapshot 2 without its log: not the full state, so the damage is reported.
    shutil.copy2(aside / "0000000000000002.snap", Path(store_dir))
    with pytest.raises(walsess.CorruptionError) as info:
        walsess.open(store_dir, clock=clock, **QUIET)
    assert info.value.path == str(snap3)
    # With log 2 back, snapshot 2 + logs 2, 3 are the full state.
    shutil.copy2(aside / "0000000000000002.log", Path(store_dir))
    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        rec = store.recovery
        assert rec.snapshot == str(Path(store_dir) / "0000000000000002.snap")
        assert len(rec.skipped) == 1 and str(snap3) in rec.skipped[0] and not rec.clean
        assert [os.path.basename(f) for f in rec.files] == [
            "0000000000000002.log",
            "0000000000000003.log",
        ]
        assert store_state(store) == want
        store._table._check()
        assert {u: [i.ref for i in store.sessions_of(u)] for u in USERS} == users
        assert snap3.exists(), "a passed-over snapshot stays for inspection"
        c = store.compact()  # supersedes everything, the damaged snapshot included
        assert str(snap3) in c.removed
    assert files(store_dir, "*.snap") == ["0000000000000004.snap"]
    assert files(store_dir, "*.log") == ["0000000000000004.log"]
    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        assert store.recovery.clean and store_state(store) == want


def test_leftover_tmp_files_are_removed_at_open(store_dir: str, clock: FakeClock) -> None:
    data = build_compacted(store_dir, clock)
    leftovers = [
        Path(store_dir) / "0000000000000003.snap.tmp",
        Path(store_dir) / "0000000000000003.log.tmp",
        Path(store_dir) / "0000000000000002.snap.tmp",
    ]
    leftovers[0].write_bytes(b"\x00" * 100)
    leftovers[1].write_bytes(b"WSSLOG")
    leftovers[2].write_bytes(b"")
    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        assert sorted(store.recovery.removed) == sorted(map(str, leftovers))
        assert not any(p.exists() for p in leftovers)
        assert {t: store.get(t).to_dict() for t in data} == data  # type: ignore[union-attr]


def test_snapshot_load_keeps_user_index_and_expiry(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    short = [store.create({"i": i}, ttl=100.0, user="alice") for i in range(3)]
    capped = store.create({"c": 1}, ttl=5000.0, max_lifetime=300.0, user="bob")
    long = [store.create({"i": i}, ttl=1000.0, user=u) for i, u in enumerate(["alice", "bob"])]
    anon = store.create({"anon": True}, ttl=1000.0)
    refs = {u: [i.ref for i in store.sessions_of(u)] for u in ("alice", "bob")}
    assert len(refs["alice"]) == 4 and len(refs["bob"]) == 2
    store.compact()
    store.close()
    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        assert store.recovery.snapshot is not None and store.recovery.records == 0
        assert store.recovery.snapshot_sessions == 7
        store._table._check()
        assert {u: [i.ref for i in store.sessions_of(u)] for u in ("alice", "bob")} == refs
        clock.advance(150)  # the short sessions have expired
        assert store.gc() == 3
        store._table._check()
        assert [i.ref for i in store.sessions_of("alice")] == [long[0].ref]
        clock.advance(200)  # past capped's max_lifetime, though its ttl is long
        assert store.gc() == 1
        assert [i.ref for i in store.sessions_of("bob")] == [long[1].ref]
        assert all(not store.exists(s.id) for s in [*short, capped])
        assert all(store.exists(s.id) for s in [*long, anon])
        clock.advance(1000)
        assert store.gc() == 3 and len(store) == 0
        store._table._check()


# -- SID renumbering ----------------------------------------------------------------------------


def test_sids_above_2_31_are_renumbered_at_open(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    low = [store.create({"low": i}, user="alice") for i in range(3)]  # SIDs 1..3
    store._table.next_sid = MAX_SID - 4  # 2**32 - 5
    high = [store.create({"high": i}, user="bob", meta={"i": i}) for i in range(8)]
    sids = sorted(store._table.by_sid)
    # Five SIDs up to 2**32 - 1, then the allocator wraps and skips 1..3 in use.
    assert sids == [1, 2, 3, 4, 5, 6, *range(MAX_SID - 4, MAX_SID + 1)]
    assert store.destroy(low[1].id) and store.destroy(high[2].id)
    high[0]["x"] = "changed"
    want = {s.id: s.to_dict() for s in [low[0], low[2], *high[:2], *high[3:]]}
    infos = {u: [i.ref for i in store.sessions_of(u)] for u in ("alice", "bob")}
    store.close()

    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        n = len(want)
        assert sorted(store._table.by_sid) == list(range(1, n + 1))
        store._table._check()
        assert {t: store.get(t).to_dict() for t in want} == want  # type: ignore[union-attr]
        assert {u: [i.ref for i in store.sessions_of(u)] for u in ("alice", "bob")} == infos
        assert store.last_compaction is not None  # renumbered, then compacted
        new = store.create({"new": 1})
        assert new._state.sid == n + 1
        want[new.id] = {"new": 1}
        state = store_state(store)
    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        assert store.recovery.snapshot is not None and store.recovery.clean
        assert store.recovery.snapshot_sessions == n and store.recovery.records == 1
        assert store_state(store) == state
        assert store.last_compaction is None  # nothing to renumber this time
    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        assert store.recovery.clean and store_state(store) == state
        assert {t: store.get(t).to_dict() for t in want} == want  # type: ignore[union-attr]


def test_crash_at_every_call_of_the_renumbering_open(tmp_path: Path) -> None:
    """The renumbering compaction at open dies at each of its calls in turn: the
    next open still finds every session and renumbers (or has renumbered) them."""

    def build(directory: str) -> dict[str, dict[str, Any]]:
        store = walsess.open(directory, clock=FakeClock(), **QUIET)
        store.create({"low": 0})
        store._table.next_sid = MAX_SID - 2
        made = [store.create({"i": i}, user=USERS[i % 3]) for i in range(6)]
        made[1]["x"] = [1]
        assert store.destroy(made[4].id)
        want = {s.id: s.to_dict() for s in made if store.exists(s.id)}
        store.close()
        return want

    def crash_open(directory: str, crash_at: int | None) -> list[tuple[str, str]]:
        fs = FaultFS()
        fs.crash_at = crash_at
        fs.armed = True
        try:
            store = walsess.open(directory, fs=fs, clock=FakeClock(), **QUIET)
        except Crash:
            store = None
        assert (store is None) == (crash_at is not None)
        calls = fs.calls
        if store is None:  # only the descriptors remain for the kernel to close
            fs.armed = fs.dead = False
            for fd in list(fs.fds):
                os.close(fd)
        else:
            fs.exit(store)
        return calls

    ref_dir = str(tmp_path / "ref" / "store")  # every trial's directory is named "store"
    build(ref_dir)
    reference = crash_open(ref_dir, None)
    assert ("rename", "0000000000000002.snap.tmp") in reference
    for k in range(len(reference)):
        directory = str(tmp_path / f"k{k}" / "store")
        want = build(directory)
        assert crash_open(directory, k) == reference[:k]
        with walsess.open(directory, clock=FakeClock(), **QUIET) as store:
            assert sorted(store._table.by_sid) == list(range(1, len(want) + 2)), f"crash at {k}"
            assert {t: peek(store, t).to_dict() for t in want} == want  # type: ignore[union-attr]
            store._table._check()
        with walsess.open(directory, clock=FakeClock(), **QUIET) as store:
            assert store.recovery.snapshot is not None and store.recovery.clean
            assert store.last_compaction is None
        shutil.rmtree(tmp_path / f"k{k}")


def test_recreated_newest_log_still_follows_the_snapshot(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(store_dir, clock=clock, **QUIET)
    a = store.create({"a": 1})
    store.compact()  # snapshot 2, log 2 (follows 2)
    store.close()
    log = Path(store_dir) / "0000000000000002.log"
    log.write_bytes(bytes(32))  # its header never landed, nothing after it: a crash artifact
    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        assert len(store.recovery.cuts) == 1 and peek(store, a.id) is not None
        b = store.create({"b": 2})
    with walsess.open(store_dir, clock=clock, **QUIET) as store:  # BUG: CorruptionError here
        assert peek(store, a.id) is not None and peek(store, b.id) is not None
        assert store.recovery.clean


# -- automatic compaction -------------------------------------------------------------------


def test_automatic_compaction(store_dir: str, clock: FakeClock) -> None:
    store = walsess.open(
        store_dir,
        clock=clock,
        durability="never",
        cleanup_interval=None,
        compact_min_bytes=4096,
        compact_ratio=2.0,
    )
    sessions = [store.create({"i": i}) for i in range(5)]
    deadline = time.monotonic() + 10.0
    writes = 0
    while store.last_compaction is None:
        assert time.monotonic() < deadline, "no automatic compaction was started"
        assert writes < 50_000, "the log grew far past the threshold without a compaction"
        sessions[writes % 5]["v"] = "x" * 100 + str(writes)
        writes += 1
    assert writes > 10, "a compaction started before the log reached compact_min_bytes"
    assert store.wait_compaction(10.0)
    assert not store.compacting
    c = store.last_compaction
    assert c is not None and c.sessions == 5 and c.generation == store._log.generation
    assert files(store_dir, "*.snap") == [f"{c.generation:016x}.snap"]
    assert files(store_dir, "*.log") == [f"{c.generation:016x}.log"]
    assert not files(store_dir, "*.tmp")
    stats = store.stats()
    assert stats["snapshot_bytes"] == c.snapshot_bytes == stats["live_bytes_estimate"]
    want = {s.id: s.to_dict() for s in sessions}
    state = store_state(store)
    store.close()
    with walsess.open(store_dir, clock=clock, **QUIET) as store:
        assert store.recovery.snapshot is not None and store.recovery.clean
        assert store_state(store) == state
        assert {t: store.get(t).to_dict() for t in want} == want  # type: ignore[union-attr]


def test_snapshot_holds_what_the_doc_says(store_dir: str, clock: FakeClock) -> None:
    """Header (version 2), a BLOCK carrying every session's whole state column by
    column, END with the count."""
    store = walsess.open(store_dir, clock=clock, touch_granularity=60.0, **QUIET)
    a = store.create({"k": [1]}, user="alice", meta={"ip": "1"}, ttl=1000.0)
    store.create()
    clock.advance(10)
    assert store.get(a.id) is not None  # extends a in memory only (10 < 60)
    c = store.compact()
    image = (Path(store_dir) / f"{c.generation:016x}.snap").read_bytes()
    assert wrecord.decode_header(image, wrecord.SNAPSHOT_MAGIC).version == 2
    recs = [r for _, r in RecordReader(image)]
    assert [type(r) for r in recs] == [Block, End]
    block, end = recs
    assert isinstance(block, Block) and isinstance(end, End) and end.sessions == 2
    i = block.digests.index(digest(a.id))
    assert block.users[i] == "alice" and block.metas[i] == b'{"ip":"1"}'
    assert block.idle_deadline[i] == clock.now + 1000.0  # the in-memory one
    assert wrecord.decode_item_block(block.item(i)) == {"k": b"[1]"}
    assert c.sessions == 2 and c.snapshot_bytes == len(image)
    store.close()


class FullDiskFS(FileSystem):
    """Every snapshot temp file fails to open with ENOSPC (a full disk), counted."""

    def __init__(self) -> None:
        self.snapshot_attempts = 0

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if path.endswith(".snap.tmp"):
            self.snapshot_attempts += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return super().open(path, flags, mode)


def test_failed_background_compaction_backs_off(
    store_dir: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10, defect 6: with the snapshot's temp file failing (ENOSPC), every
    write used to start another compactor thread. Now the attempts back off
    (O(log n) for n writes), stats() says so, and a success clears it."""
    fs = FullDiskFS()
    store = walsess.open(
        store_dir, clock=clock, fs=fs, durability="never", cleanup_interval=None,
        compact_ratio=2.0, compact_min_bytes=1,
    )  # fmt: skip
    try:
        threads_before = threading.active_count()
        for i in range(300):
            store.create({"i": i})
            store.wait_compaction()  # let each attempt finish: the worst case for a storm
        assert 1 <= fs.snapshot_attempts <= 12, fs.snapshot_attempts
        assert threading.active_count() <= threads_before + 1
        stats = store.stats()
        assert stats["compaction_failures"] == fs.snapshot_attempts
        assert "No space left" in stats["last_compaction_error"]
        retry_at = stats["next_compaction_at_log_bytes"]
        assert retry_at is not None and retry_at > 0
        store.gc()  # gc moves the threshold; it must keep the backoff
        assert store.stats()["next_compaction_at_log_bytes"] >= retry_at
        assert "background compaction" in caplog.text
        fs.open = FileSystem.open.__get__(fs)  # type: ignore[method-assign]  # disk freed
        store.compact()
        assert store.stats()["compaction_failures"] == 0
        assert store.stats()["last_compaction_error"] is None
    finally:
        store.close()


@pytest.mark.parametrize("ratio", [0.5, 1, 1.0, -2.0])
def test_a_compact_ratio_that_cannot_work_is_refused(store_dir: str, ratio: float) -> None:
    with pytest.raises(walsess.ValidationError, match="compact_ratio"):
        walsess.open(store_dir, compact_ratio=ratio)
    assert not os.path.exists(os.path.join(store_dir, "LOCK"))


def test_a_compactor_that_cannot_start_fails_no_write(
    store_dir: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10, defect 2's class: nothing that can fail runs between writing a
    record and applying it. Starting the compactor thread happens there; a
    process out of threads must not leave a logged change unapplied."""
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "walsess-compactor":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with walsess.open(
        store_dir, clock=clock, durability="never", cleanup_interval=None,
        compact_ratio=2.0, compact_min_bytes=1,
    ) as store:  # fmt: skip
        tokens = [store.create({"i": i}).id for i in range(50)]
        assert all(store.exists(t) for t in tokens)
        assert store.stats()["compaction_failures"] >= 1
        assert "can't start new thread" in store.stats()["last_compaction_error"]
    monkeypatch.undo()
    with walsess.open(store_dir, clock=clock) as store:
        assert all(store.exists(t) for t in tokens)


def test_snapshot_size_is_what_compaction_writes(tmp_path: Path) -> None:
    with walsess.open(tmp_path / "s", compact_ratio=None) as store:
        for i in range(50):
            store.create({"i": i, "name": "x" * i}, user=str(i % 3), meta={"ip": "::1"})
        predicted = store.snapshot_size()
        c = store.compact()
        assert not store.compacting
        assert (
            predicted
            == c.snapshot_bytes
            == os.path.getsize(tmp_path / "s" / f"{c.generation:016x}.snap")
        )
