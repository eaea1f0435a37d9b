"""Power-loss simulation: every state a crash can leave, recovered and checked.

A recording file system captures every open, write, fsync, rename, unlink,
truncate and directory fsync of a workload (with a compaction in the middle),
and marks where each operation was acknowledged. From the trace we build the
states a power loss at each point can leave, as LevelDB's fault-injection
test does: a file holds what its last fsync made durable plus any prefix of
the writes after it, the last of them torn (or, as when a file grows before
its data lands, followed by zeros); the directory holds the entries of its
last fsync, or also the creations, renames and unlinks after it. Each state
is opened with a healthy file system and must:

* open (a torn tail is cut; nothing else is wrong with such a state);
* equal the state after some prefix of the operations (never a mix);
* with "always", include every operation acknowledged before the crash;
  with "interval", every one acknowledged before the log's last fsync.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

import walsess
from walsess.fileio import FileSystem


@dataclass
class Inode:
    current: bytearray = field(default_factory=bytearray)
    durable: bytes = b""


@dataclass
class Trace(FileSystem):
    """Passes calls through and records them as (kind, args...)."""

    ops: list[tuple[Any, ...]] = field(default_factory=list)
    paths: dict[int, str] = field(default_factory=dict)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        if not flags & os.O_DIRECTORY:
            self.ops.append(("open", path, bool(flags & os.O_CREAT), bool(flags & os.O_TRUNC)))
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        n = super().write(fd, data)
        self.ops.append(("write", self.paths[fd], bytes(data[:n])))
        return n

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        path = self.paths[fd]
        self.ops.append(("fsync_dir", path) if os.path.isdir(path) else ("fsync", path))

    def truncate(self, fd: int, size: int) -> None:
        super().truncate(fd, size)
        self.ops.append(("truncate", self.paths[fd], size))

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        self.ops.append(("rename", src, dst))

    def unlink(self, path: str) -> None:
        super().unlink(path)
        self.ops.append(("unlink", path))


def simulate(ops: list[tuple[Any, ...]], upto: int, root: str
             ) -> tuple[dict[str, Inode], dict[str, Inode]]:  # fmt: skip
    """Replay the first *upto* ops: (directory as it is, directory as last fsynced)."""
    current: dict[str, Inode] = {}
    durable: dict[str, Inode] = {}
    for op in ops[:upto]:
        kind = op[0]
        if kind == "open":
            _, path, create, trunc = op
            if path not in current and create:
                current[path] = Inode()
            if trunc:
                current[path].current = bytearray()
        elif kind == "write":
            current[op[1]].current += op[2]
        elif kind == "truncate":
            del current[op[1]].current[op[2] :]
        elif kind == "fsync":
            ino = current[op[1]]
            ino.durable = bytes(ino.current)
        elif kind == "fsync_dir" and os.path.abspath(op[1]) == os.path.abspath(root):
            durable = dict(current)
        elif kind == "rename":
            current[op[2]] = current.pop(op[1])
        elif kind == "unlink":
            current.pop(op[1], None)
    return current, durable


def materialise(entries: dict[str, Inode], into: str, how: str, rng: random.Random) -> None:
    os.makedirs(into, mode=0o700)
    for path, ino in entries.items():
        data = bytes(ino.current)
        keep = len(ino.durable) if data.startswith(ino.durable) else 0
        if how == "synced" or data == ino.durable:  # nothing unsynced: nothing to tear
            content = ino.durable
        elif how == "all":
            content = data
        else:  # a random prefix of the unsynced writes, torn, maybe with zeros after
            cut = rng.randint(keep, len(data))
            content = data[:cut]
            if how == "zeros":
                content += bytes(rng.randint(1, 512))
        with open(os.path.join(into, os.path.basename(path)), "wb") as f:
            f.write(content)


def run_workload(path: str, durability: str, seed: int
                 ) -> tuple[Trace, list[tuple[int, dict[str, dict[str, Any]]]]]:  # fmt: skip
    """Returns the trace and [(trace position when acknowledged, model after)]."""
    rng = random.Random(seed)
    fs = Trace()
    clock = FakeClock()
    acks: list[tuple[int, dict[str, dict[str, Any]]]] = []
    model: dict[str, dict[str, Any]] = {}
    store = walsess.open(path, durability=durability, fsync_interval=0.001, fs=fs, clock=clock,
                         cleanup_interval=None, compact_ratio=None)  # fmt: skip
    acks.append((len(fs.ops), {}))
    for i in range(60):
        roll = rng.random()
        if i == 30:
            store.compact()
        elif roll < 0.25 or not model:
            s = store.create({"i": i})
            model[s.id] = {"i": i}
        elif roll < 0.35:
            token = rng.choice(sorted(model))
            store.destroy(token)
            del model[token]
        else:
            token = rng.choice(sorted(model))
            s = store.get(token)
            assert s is not None
            s.update(k=i, j=-i)
            model[token].update(k=i, j=-i)
        acks.append((len(fs.ops), {t: dict(d) for t, d in model.items()}))
    store.close()
    return fs, acks


def state_of(path: str, tokens: set[str]) -> dict[str, dict[str, Any]]:
    with walsess.open(path, clock=FakeClock(), cleanup_interval=None, compact_ratio=None) as s:
        out = {}
        for t in tokens:
            got = s.get(t)
            if got is not None:
                out[t] = dict(got)
        return out


@pytest.mark.parametrize("durability", ["always", "interval"])
def test_every_power_loss_state(tmp_path: Path, durability: str) -> None:
    root = str(tmp_path / "live")
    fs, acks = run_workload(root, durability, seed=3)
    tokens = {t for _, m in acks for t in m}
    rng = random.Random(11)
    states = 0
    for upto in range(1, len(fs.ops) + 1):
        current, durable = simulate(fs.ops, upto, root)
        acked = [m for pos, m in acks if pos <= upto]
        last_log_fsync = max(
            (
                i + 1
                for i, op in enumerate(fs.ops[:upto])
                if op[0] == "fsync" and op[1].endswith(".log")
            ),
            default=0,
        )
        required = len([1 for pos, _ in acks if pos <= last_log_fsync])
        if durability == "always":
            required = len(acked)
        for dir_view, entries in (("durable", durable), ("current", current)):
            for how in ("synced", "all", "torn", "zeros"):
                where = str(tmp_path / f"crash-{upto}-{dir_view}-{how}")
                materialise(entries, where, how, rng)
                got = state_of(where, tokens)
                states += 1
                prefixes = [m for _, m in acks]
                assert got in prefixes, f"crash at op {upto} ({dir_view}, {how}): not a prefix"
                j = (
                    prefixes.index(got)
                    if prefixes.count(got) == 1
                    else max(k for k, m in enumerate(prefixes) if m == got)
                )
                if how != "synced" or dir_view == "durable":
                    assert j + 1 >= required, (
                        f"crash at op {upto} ({dir_view}, {how}): lost acknowledged changes"
                        f" ({j + 1} of {required} required)"
                    )
                shutil.rmtree(where)
    assert states > 500, states
    print(f"{durability}: {states} crash states recovered")
