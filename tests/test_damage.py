"""One damage classifier (issue 11): open and ``walsess check`` reach the same verdict.

On every damaged store the fuzz, recovery and power-loss suites make (their own
generators, imported): opening succeeds exactly when check exits 0; where open
cuts a tail, check reports a torn tail at the same offset, of the same size, in
the same file; where open raises an error naming a file and offset, check
reports that file and offset. Then :mod:`walsess.damage` itself: each verdict,
and the rules open and check used to apply differently.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_fuzz import (
    creates,
    mutations,
    records,
    write_mutated_log_store,
    write_mutated_snapshot_store,
)
from test_powerloss import materialise, run_workload, simulate
from test_recovery import (
    GARBAGE_TAILS,
    QUIET,
    BuiltLog,
    build_log,
    garbage_after,
    recovery_damage,
    write_log,
)

import walsess
from walsess import record as r
from walsess.changelog import replay_log
from walsess.cli import main
from walsess.damage import (
    FOLLOWS_OFFSET,
    GENERATION_OFFSET,
    LogState,
    classify_log,
    end_count_problem,
    follows_problem,
    generation_problem,
)
from walsess.fileio import OS
from walsess.snapshot import snapshot_name

_TORN = re.compile(r"^  (\S+) .* torn tail: ([\d,]+) bytes at offset (\d+) would be cut on open")
_CORRUPT = re.compile(r"^  (\S+) .* CORRUPT at offset (\d+):")


def check(directory: str) -> tuple[int, str]:
    """``walsess check`` in this process: (exit status, output)."""
    out = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):
        status = main(["check", directory], out=out)
    return status, out.getvalue()


def assert_same_verdict(directory: str) -> str:
    """Check, then open, *directory*; assert they agree. Returns "cut", "clean" or
    "refused" (what happened), so callers can see their damage reached each."""
    status, out = check(directory)
    lines = out.splitlines()
    torn = {(m[1], int(m[3]), int(m[2].replace(",", ""))) for m in map(_TORN.match, lines) if m}
    corrupt = {(m[1], int(m[2])) for m in map(_CORRUPT.match, lines) if m}
    try:
        store = walsess.open(directory, **QUIET)
    except walsess.WalsessError as exc:
        assert status == 1, (exc, out)
        if isinstance(exc, walsess.FileError) and exc.offset is not None:
            assert exc.path is not None
            named = (os.path.basename(exc.path), exc.offset) in corrupt
            assert named or f"{exc.path} at offset {exc.offset}:" in out, (exc, out)
        else:
            assert " ".join(str(exc).split()) in out, (exc, out)
        return "refused"
    with store:
        cuts = {(os.path.basename(c.path), c.offset, c.dropped) for c in store.recovery.cuts}
    assert status == 0, (cuts, out)
    assert torn == cuts, out
    return "cut" if cuts else "clean"


# -- the fuzz suite's damage --------------------------------------------------------------


@settings(max_examples=1_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, min_size=1, max_size=8), mutations, st.binary(min_size=1, max_size=16),
       st.booleans())  # fmt: skip
def test_fuzz_mutated_logs(recs: list[r.Record], how: tuple[str, int, int], junk: bytes,
                           with_snapshot: bool) -> None:  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        write_mutated_log_store(d, recs, how, junk, with_snapshot)
        assert_same_verdict(d)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(creates(st.integers(1, 10**6)), min_size=1, max_size=6, unique_by=lambda c: c.sid),
       mutations, st.binary(min_size=1, max_size=16))  # fmt: skip
def test_fuzz_mutated_snapshots(sessions: list[r.Create], how: tuple[str, int, int],
                                junk: bytes) -> None:  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        write_mutated_snapshot_store(d, sessions, how, junk)
        assert_same_verdict(d)


# -- the recovery suite's damage on a real store's log ----------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltLog:
    return build_log(str(tmp_path_factory.mktemp("built") / "store"))


@pytest.mark.parametrize("every_bit", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_recovery_damage(built: BuiltLog, every_bit: bool) -> None:
    """Every truncation, bit flips, valid records after garbage, unwritten and zeroed
    headers, flips in a last record of each type: each image checked and opened.
    By default one bit of each byte is flipped (some 2,500 images, 15 s); marked
    slow, all eight, as the recovery suite does (some 8,000, 45 s)."""
    seen: dict[str, int] = {}
    for n, (what, image) in enumerate(recovery_damage(built)):
        if not every_bit and what.endswith("bit flipped") and n % 8:
            continue
        write_log(built, image)
        try:
            outcome = assert_same_verdict(built.directory)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None
        seen[outcome] = seen.get(outcome, 0) + 1
    assert set(seen) == {"cut", "clean", "refused"}, seen


@given(**GARBAGE_TAILS)
@example(garbage=bytes(4096), torn=0, cut_last=False)
@example(garbage=b"\x03" + bytes(12), torn=0, cut_last=False)
def test_recovery_garbage_tails(built: BuiltLog, garbage: bytes, torn: int, cut_last: bool) -> None:
    write_log(built, garbage_after(built, garbage, torn, cut_last)[0])
    assert assert_same_verdict(built.directory) == "cut"


# -- the power-loss suite's crash states --------------------------------------------------


def test_power_loss_states(tmp_path: Path) -> None:
    """Every state a power loss during the power-loss suite's workload can leave
    (with durability "interval", whose unsynced writes tear most)."""
    root = str(tmp_path / "live")
    fs, _acks = run_workload(root, "interval", seed=3)
    rng = random.Random(11)
    seen: dict[str, int] = {}
    for upto in range(1, len(fs.ops) + 1):
        current, durable = simulate(fs.ops, upto, root)
        for view, entries in (("durable", durable), ("current", current)):
            for how in ("synced", "all", "torn", "zeros"):
                where = str(tmp_path / f"crash-{upto}-{view}-{how}")
                materialise(entries, where, how, rng)
                if any(n.endswith((".log", ".snap")) for n in os.listdir(where)):
                    outcome = assert_same_verdict(where)
                    seen[outcome] = seen.get(outcome, 0) + 1
                shutil.rmtree(where)
    assert seen.get("cut", 0) > 50 and seen.get("clean", 0) > 50, seen


# -- the case of issue 11, and the rules open and check used to apply differently ----------


def _store(tmp_path: Path) -> tuple[str, str]:
    """A store of one session; (directory, its newest log)."""
    d = str(tmp_path / "s")
    with walsess.open(d, **QUIET) as store:
        store.create({"a": 1})
    return d, str(sorted(Path(d).glob("*.log"))[-1])


@pytest.mark.parametrize("head", [bytes(10), r.encode_header(2, 1)[:10]], ids=["zeros", "prefix"])
def test_an_unwritten_newest_log_is_a_cut_to_both(tmp_path: Path, head: bytes) -> None:
    """Issue 11: a 10-byte ``0000000000000002.log`` whose header never landed."""
    d, _log = _store(tmp_path)
    newest = os.path.join(d, "0000000000000002.log")
    Path(newest).write_bytes(head)
    status, out = check(d)
    assert status == 0 and "torn tail: 10 bytes at offset 0 would be cut on open" in out, out
    assert assert_same_verdict(d) == "cut"


def test_a_renamed_log_with_a_bad_record_is_refused_at_the_header_by_both(tmp_path: Path) -> None:
    """Open used to replay first and hold the generation to the name after, so a
    damaged record came first; check held the header first."""
    d, log = _store(tmp_path)
    image = Path(log).read_bytes()
    copy = os.path.join(d, f"{2:016x}.log")  # log 1 copied under the next name, damaged
    Path(copy).write_bytes(image[:-3] + b"\xff" * 3 + r.encode_touch(1, 1.0, 1.0))
    os.chmod(copy, 0o600)
    with pytest.raises(walsess.CorruptionError) as info:
        walsess.open(d, **QUIET)
    assert (info.value.path, info.value.offset) == (copy, GENERATION_OFFSET)
    assert assert_same_verdict(d) == "refused"


def test_an_end_record_in_a_log_is_refused_where_it_is(tmp_path: Path) -> None:
    """Check used to name a later malformed record instead of the END."""
    d, log = _store(tmp_path)
    at = os.path.getsize(log)
    malformed = r.encode_record(r.Modify(1, False, ()))
    body = bytearray(malformed)
    body[9] = 0x80  # unknown MODIFY flags: checksummed again below
    body[-4:] = r.crc32c(bytes(body[:-4])).to_bytes(4, "little")
    with open(log, "ab") as f:
        f.write(r.encode_end(0) + bytes(body))
    with pytest.raises(walsess.CorruptionError) as info:
        walsess.open(d, **QUIET)
    assert info.value.offset == at
    assert assert_same_verdict(d) == "refused"


@pytest.mark.parametrize("tail", ["miscounted", "two ends"])
def test_a_snapshot_whose_end_is_wrong_is_refused_by_both(tmp_path: Path, tail: str) -> None:
    """Check used to accept a snapshot whose END miscounts its sessions, or that
    has a record after its END; the loader refuses both."""
    d = str(tmp_path)
    create = r.Create(1, bytes(32), 1.0, 100.0, 101.0, float("inf"), None, None, ())
    body = r.encode_header(2, 0, r.SNAPSHOT_MAGIC, version=1) + r.encode_record(create)
    body += r.encode_end(2) if tail == "miscounted" else r.encode_end(1) + r.encode_end(1)
    Path(d, snapshot_name(2)).write_bytes(body)
    Path(d, f"{2:016x}.log").write_bytes(r.encode_header(2, 2))
    assert assert_same_verdict(d) == "refused"


def test_a_log_that_follows_a_newer_snapshot_than_itself(tmp_path: Path) -> None:
    d = str(tmp_path)
    Path(d, f"{1:016x}.log").write_bytes(r.encode_header(1, 3))
    status, out = check(d)
    assert status == 1 and f"CORRUPT at offset {FOLLOWS_OFFSET}" in out, out
    assert assert_same_verdict(d) == "refused"


def test_a_stale_log_in_the_chain_is_named_by_both(tmp_path: Path) -> None:
    """A log following an older snapshot than the one loaded: a rule of the chain,
    which check reports through the load it shares with open."""
    d = str(tmp_path)
    create = r.Create(1, bytes(32), 1.0, 100.0, 101.0, float("inf"), None, None, ())
    snap = (
        r.encode_header(2, 0, r.SNAPSHOT_MAGIC, version=1)
        + r.encode_record(create)
        + r.encode_end(1)
    )
    Path(d, snapshot_name(2)).write_bytes(snap)
    Path(d, f"{2:016x}.log").write_bytes(r.encode_header(2, 1))
    status, out = check(d)
    assert status == 1 and f"{2:016x}.log at offset {FOLLOWS_OFFSET}:" in out, out
    assert assert_same_verdict(d) == "refused"


# -- the classifier itself -----------------------------------------------------------------

LOG = r.encode_header(3, 0) + r.encode_touch(1, 5.0, 5.0) + r.encode_touch(2, 6.0, 6.0)
SECOND = r.HEADER_SIZE + len(r.encode_touch(1, 5.0, 5.0))


def test_verdicts() -> None:
    intact = classify_log(LOG, newest=False, generation=3)
    assert (intact.state, intact.records, intact.end, intact.offset) == (
        LogState.INTACT, 2, len(LOG), None)  # fmt: skip
    assert intact.header == r.Header(1, 3, 0) and intact.opens and not intact.cut

    torn = classify_log(LOG[:-2], newest=True, generation=3)
    assert (torn.state, torn.records, torn.end, torn.offset) == (
        LogState.TORN_TAIL, 1, SECOND, SECOND)  # fmt: skip
    assert torn.opens and torn.cut and torn.error is None

    older = classify_log(LOG[:-2], newest=False, generation=3)
    assert older.state is LogState.CORRUPT and not older.opens
    assert older.offset == SECOND and older.error is not None
    assert older.error.offset == SECOND and "not the newest" in older.error.reason

    unwritten = classify_log(bytes(10), newest=True, generation=3)
    assert (unwritten.state, unwritten.header, unwritten.end, unwritten.offset) == (
        LogState.UNWRITTEN_HEADER, None, 0, 0)  # fmt: skip
    assert classify_log(bytes(10), newest=False, generation=3).state is LogState.CORRUPT

    after = classify_log(LOG[:SECOND] + b"\xff" * 9 + LOG[SECOND:], newest=True, generation=3)
    assert after.state is LogState.CORRUPT and after.offset == SECOND
    assert f"a valid record follows at offset {SECOND + 9}" in (after.reason or "")


def test_a_zeroed_older_log_header_says_what_it_is() -> None:
    """The message once said "a valid record follows at offset None"."""
    verdict = classify_log(bytes(r.HEADER_SIZE), newest=False, generation=3)
    assert verdict.offset == 0 and "None" not in (verdict.reason or "")


def test_records_before_a_malformed_record_and_where_it_starts() -> None:
    body = bytearray(r.encode_record(r.Modify(1, False, ())))
    body[9] = 0x80
    body[-4:] = r.crc32c(bytes(body[:-4])).to_bytes(4, "little")
    verdict = classify_log(LOG + bytes(body), newest=True, generation=3)
    assert verdict.state is LogState.CORRUPT and isinstance(verdict.error, walsess.FormatError)
    assert (verdict.records, verdict.end) == (2, len(LOG))


def test_records_are_fed_on_as_they_are_read() -> None:
    seen: list[r.Record] = []
    sets: list[tuple[int, str, bytes]] = []
    log = LOG + r.encode_set(1, "k", b"1")
    verdict = classify_log(log, newest=True, generation=None, apply=seen.append,
                           set_key=lambda *a: sets.append(a))  # fmt: skip
    assert verdict.records == 3 and len(seen) == 2 and sets == [(1, "k", b"1")]


def test_replay_log_raises_the_verdicts_error(tmp_path: Path) -> None:
    path = str(tmp_path / f"{4:016x}.log")
    Path(path).write_bytes(LOG)
    with pytest.raises(walsess.CorruptionError) as info:
        replay_log(path, OS, lambda _r: None, lambda *_a: None, 1 << 20, True)
    verdict = classify_log(LOG, newest=True, generation=4)
    assert verdict.error is not None
    assert (info.value.path, info.value.offset, info.value.reason) == (
        path, verdict.error.offset, verdict.error.reason)  # fmt: skip


def test_rules() -> None:
    assert generation_problem(5, 5) is None and "copied or renamed" in str(generation_problem(5, 6))
    assert follows_problem(0, 1) is None and follows_problem(2, 2, snapshot=2) is None
    assert "newer than the log itself" in str(follows_problem(3, 2))
    assert "stale or misplaced" in str(follows_problem(1, 3, snapshot=2))
    assert end_count_problem(3, 3) is None and end_count_problem(3, 2) is not None
