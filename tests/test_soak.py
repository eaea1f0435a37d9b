"""Crash soak: SIGKILL a writer at random moments, reopen, check, and go on.

A child process writes to one store (creates, per-key sets with ever
growing values, destroys, an explicit compaction now and then), with
automatic compaction set to trigger every few hundred records and the
cleanup thread collecting short-lived sessions every 20 ms, and reports
each change on stdout after the call returns. The parent kills it with
SIGKILL after a random number of acknowledgements (so kills land in writes,
fsyncs, compactions and gc alike), reopens the store and checks that every
acknowledged change is there, then starts the next child on the same
directory.

CI runs 70 kills per durability mode (210 in all). ``pytest -m slow`` runs
the long soak: WALSESS_SOAK_KILLS per mode (default 1,000).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import walsess

CHILD = r"""
import random, sys, walsess
path, mode, seed, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
store = walsess.open(path, durability=mode, fsync_interval=0.01, compact_ratio=1.1,
                     compact_min_bytes=8192, cleanup_interval=0.02)
tokens = [t for t in sys.stdin.read().split() if t]
counter = start
out = sys.stdout
out.write("ready\n"); out.flush()
while True:
    counter += 1
    roll = rng.random()
    if roll < 0.1 or not tokens:
        s = store.create({"v": counter}, user="soak")
        tokens.append(s.id)
        out.write(f"C {s.id} {counter}\n")
    elif roll < 0.15:
        store.create({"junk": 1}, ttl=0.01)  # expires at once: food for gc
        continue
    elif roll < 0.16:
        store.compact()  # besides the automatic ones
        continue
    elif roll < 0.2 and len(tokens) > 3:
        t = tokens.pop(rng.randrange(len(tokens)))
        out.write(f"d {t}\n"); out.flush()  # intent: it may land unacknowledged
        store.destroy(t)
        out.write(f"D {t}\n")
    else:
        t = rng.choice(tokens)
        s = store.get(t)
        s["v"] = counter
        out.write(f"S {t} {counter}\n")
    out.flush()
"""


def soak(path: Path, mode: str, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    live: dict[str, int] = {}  # token -> least value it must hold
    dead: set[str] = set()
    counter = 0
    compacted = 0
    for round_ in range(kills):
        child_seed = seed * 100_000 + round_
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), mode, str(child_seed), str(counter)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(" ".join(live))
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "ready"
        seen = [proc.stdout.readline() for _ in range(rng.randrange(1, 120))]
        if rng.random() < 0.5:  # sometimes mid-write, sometimes a moment later
            time.sleep(rng.random() * 0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Everything the child printed was acknowledged, whether read yet or not.
        transcript = [line.split() for line in [*seen, *proc.stdout.read().splitlines()]]
        maybe_gone = None
        for line in transcript:
            if not line:
                continue
            if line[0] in "CS":
                live[line[1]] = max(live.get(line[1], 0), int(line[2]))
            elif line[0] == "d":
                maybe_gone = line[1]
            elif line[0] == "D":
                live.pop(line[1], None)
                dead.add(line[1])
                maybe_gone = None
        counter = max([counter, *live.values()]) + 10  # above any value in flight
        with walsess.open(path, cleanup_interval=None, compact_ratio=None) as store:
            if maybe_gone is not None and not store.exists(maybe_gone):
                live.pop(maybe_gone)  # its destroy landed before the kill: allowed
                dead.add(maybe_gone)
            for token, least in live.items():
                s = store.get(token)
                assert s is not None, f"round {round_}: acknowledged session lost"
                assert s["v"] >= least, f"round {round_}: acknowledged value lost"
            for token in dead:
                assert not store.exists(token), f"round {round_}: destroyed session back"
            store._table._check()
            compacted += store.recovery.snapshot is not None
    assert compacted, "no compaction ever ran: the soak did not exercise it"


@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_soak_ci(tmp_path: Path, mode: str) -> None:
    soak(tmp_path / "store", mode, kills=70, seed=len(mode))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_soak_long(tmp_path: Path, mode: str) -> None:
    soak(tmp_path / "store", mode, kills=int(os.environ.get("WALSESS_SOAK_KILLS", "1000")), seed=7)
