"""Fault injection: fail the k-th file-system call of a workload, for every k.

As SQLite's fault VFS does: a workload of mixed operations (with a
compaction in the middle) runs once to count its I/O calls, then once per k
with the k-th write, fsync, rename, truncate or unlink failing (ENOSPC or
EIO), or the k-th write writing only part of its buffer before failing.
Each time:

* the failing call raises a WalsessError that names the cause;
* memory never holds a change the log does not (the table equals the model
  of acknowledged operations, plus the failing one only if its record was
  fully written before an fsync failed);
* after a failed fsync every later write raises StorePoisoned, and no fsync
  is ever attempted again;
* reopening with a healthy file system gives exactly the model of the
  operations whose records reached the file: every acknowledged one, in order.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import FakeClock

import walsess
from walsess.fileio import FileSystem

KINDS = ("write", "fsync", "rename", "truncate", "unlink")


class Injected(OSError):
    pass


@dataclass
class FaultFS(FileSystem):
    """Counts calls; the call numbered *fail_at* fails (short write or error)."""

    fail_at: int = -1
    short: bool = False
    calls: int = 0
    failed_kind: str | None = None
    fsyncs_after_failed_fsync: int = 0
    log: list[str] = field(default_factory=list)

    def _tick(self, kind: str) -> bool:
        self.calls += 1
        if self.failed_kind == "fsync" and kind == "fsync":
            self.fsyncs_after_failed_fsync += 1
        if self.calls == self.fail_at:
            self.failed_kind = kind
            return True
        return False

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self._tick("write"):
            if self.short and len(data) > 1:
                os.write(fd, bytes(data[: len(data) // 2]))
            raise Injected(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self._tick("fsync"):
            raise Injected(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    def rename(self, src: str, dst: str) -> None:
        if self._tick("rename"):
            raise Injected(errno.EIO, os.strerror(errno.EIO))
        os.rename(src, dst)

    def truncate(self, fd: int, size: int) -> None:
        if self._tick("truncate"):
            raise Injected(errno.EIO, os.strerror(errno.EIO))
        os.ftruncate(fd, size)

    def unlink(self, path: str) -> None:
        if self._tick("unlink"):
            raise Injected(errno.EIO, os.strerror(errno.EIO))
        os.unlink(path)


Model = dict[str, dict[str, Any]]


def workload(seed: int, n: int) -> list[tuple[str, int, str, Any]]:
    """(op, session index, key, value) steps; 'compact' once in the middle."""
    rng = random.Random(seed)
    ops: list[tuple[str, int, str, Any]] = []
    for i in range(n):
        if i == n // 2:
            ops.append(("compact", 0, "", None))
            continue
        op = rng.choice(["create", "set", "set", "set", "update", "delete", "destroy", "touch"])
        ops.append((op, rng.randrange(8), rng.choice("abc"), rng.randrange(1000)))
    return ops


def apply(store: walsess.Store, handles: list[str], model: Model, step: tuple[str, int, str, Any],
          clock: FakeClock) -> None:  # fmt: skip
    """Perform *step* on the store and, only if it returns, on the model."""
    op, i, key, value = step
    live = [t for t in handles if t in model]
    token = live[i % len(live)] if live else None
    if op == "create" or token is None:
        s = store.create({"n": value})
        handles.append(s.id)
        model[s.id] = {"n": value}
    elif op == "compact":
        store.compact()
    elif op == "set":
        s = store.get(token)
        assert s is not None
        s[key] = value
        model[token][key] = value
    elif op == "update":
        s = store.get(token)
        assert s is not None
        s.update({key: value, "u": value})
        model[token].update({key: value, "u": value})
    elif op == "delete":
        s = store.get(token)
        assert s is not None
        if key in model[token]:
            del s[key]
            del model[token][key]
    elif op == "destroy":
        assert store.destroy(token)
        del model[token]
    elif op == "touch":
        assert store.touch(token, ttl=3600)


def state(store: walsess.Store, tokens: list[str]) -> Model:
    out: Model = {}
    for t in tokens:
        s = store.get(t)
        if s is not None:
            out[t] = dict(s)
    return out


def run(tmp: str, fs: FileSystem, durability: str, steps: list[tuple[str, int, str, Any]]
        ) -> tuple[Model, Model | None, list[str], BaseException | None]:  # fmt: skip
    """Returns (acknowledged model, model with the failed step, tokens, error)."""
    clock = FakeClock()
    handles: list[str] = []
    model: Model = {}
    error: BaseException | None = None
    try:
        store = walsess.open(tmp, durability=durability, fs=fs, clock=clock,
                             cleanup_interval=None, compact_ratio=None)  # fmt: skip
    except walsess.WalsessError as exc:  # the fault hit opening: nothing acknowledged
        return model, None, handles, exc
    with_failed: Model | None = None
    try:
        for step in steps:
            before = {k: dict(v) for k, v in model.items()}
            try:
                apply(store, handles, model, step, clock)
            except walsess.WalsessError as exc:
                if error is None:
                    error = exc
                    # what the model would be had the failed step taken effect
                    trial = {k: dict(v) for k, v in before.items()}
                    trial_handles = list(handles)
                    with_failed = _replay_step(trial, trial_handles, step, handles)
                mem = state(store, handles)
                assert mem in (before, with_failed), "memory diverged from the log"
                # From here the model is what memory (and so the log) holds.
                model.clear()
                model.update(mem)
            store._table._check()
    finally:
        with contextlib.suppress(walsess.WalsessError):
            store.close()
    return model, with_failed, handles, error


def _replay_step(model: Model, handles: list[str], step: tuple[str, int, str, Any],
                 real_handles: list[str]) -> Model:  # fmt: skip
    """The model after *step* (a create that failed is invisible: its token is unknown)."""
    op, i, key, value = step
    live = [t for t in real_handles if t in model]
    token = live[i % len(live)] if live else None
    if token is None or op in ("create", "compact", "touch"):
        return model
    if op == "set":
        model[token][key] = value
    elif op == "update":
        model[token].update({key: value, "u": value})
    elif op == "delete":
        model[token].pop(key, None)
    elif op == "destroy":
        del model[token]
    return model


@pytest.mark.parametrize("durability", ["always", "never"])
@pytest.mark.parametrize("short", [False, True], ids=["error", "short-write"])
def test_every_fault_point(tmp_path: Any, durability: str, short: bool) -> None:
    steps = workload(seed=7, n=200)
    counter = FaultFS()
    base, _, _, err = run(str(tmp_path / "count"), counter, durability, steps)
    assert err is None and base
    total = counter.calls
    assert total > 200
    kinds_failed: set[str] = set()
    for k in range(1, total + 1):
        fs = FaultFS(fail_at=k, short=short)
        path = str(tmp_path / f"k{k}")
        acked, with_failed, handles, error = run(path, fs, durability, steps)
        if fs.failed_kind is None:
            continue  # the k-th call happened at close/open, outside the workload
        kinds_failed.add(fs.failed_kind)
        if error is not None:
            assert (
                os.strerror(errno.EIO) in str(error)
                or os.strerror(errno.ENOSPC) in str(error)
                or isinstance(error.__cause__, OSError)
            ), f"cause not named: {error!r}"
        if fs.failed_kind == "fsync":
            assert fs.fsyncs_after_failed_fsync == 0, "an fsync was retried after failing"
        with walsess.open(path, clock=FakeClock(), cleanup_interval=None) as again:
            got = state(again, handles)
        assert got == acked or (with_failed is not None and got == with_failed), (
            f"k={k} ({fs.failed_kind}): reopened state is not the acknowledged prefix"
        )
    assert {"write", "fsync", "rename"} <= kinds_failed
