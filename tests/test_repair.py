"""``walsess repair``: after ``repair --yes`` the store opens, ``check`` passes, and
every session whose records are intact is kept: in a log, the records before the
first damaged one (or behind a damaged header); in a snapshot, every session
whose record is undamaged (a damaged session costs only itself), and nothing
that was not there.

The property runs over the damage kinds the fuzz suite (tests/test_fuzz.py:
bit flips anywhere including headers, truncation, zeroed pages, inserted
garbage, huge lengths, a wrong magic) and the recovery suite produce, on logs
and on snapshots, built the way those suites build them. A header with a valid
checksum but a newer version is not damage: repair refuses it and changes
nothing (its own test). On a real store's files (tests/test_recovery.py's log
with every record type, and a snapshot a compaction wrote): every header bit
flipped in turn, and the recovery suite's zeroed headers, valid record after
garbage, mid-log flips, truncations and zero pages.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_fuzz import creates, mutate, mutations, prefix_states, records, state_of
from test_recovery import BuiltLog, build_log, records_before, reopen, store_state, write_log

import walsess
from walsess import record as r
from walsess.cli import main
from walsess.clock import ManualClock
from walsess.fileio import OS, FileSystem
from walsess.repair import repair_store
from walsess.snapshot import snapshot_name
from walsess.storedir import StoreDirectory
from walsess.table import SessionTable

QUIET: dict[str, Any] = {"durability": "never", "cleanup_interval": None, "compact_ratio": None}


def cli(*args: str) -> tuple[int, str, str]:
    """Run the command in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(list(args), out=out)
    return status, out.getvalue(), err.getvalue()


def listing(directory: str) -> dict[str, bytes]:
    return {name: Path(directory, name).read_bytes() for name in sorted(os.listdir(directory))}


# -- defect 3: a snapshot with a damaged header ------------------------------------------


def test_a_flipped_header_bit_in_a_snapshot_keeps_every_session(tmp_path: Path) -> None:
    """Issue 10, defect 3: one flipped bit in byte 13 of a snapshot's header made
    repair report a cut at offset 0 and delete the snapshot, leaving a store that
    could not open. The header is rebuilt from the name and contents instead."""
    path = str(tmp_path / "s")
    clock = ManualClock()
    with walsess.open(path, clock=clock, **QUIET) as store:
        made = {store.create({"i": i}, user=f"u{i % 3}").id: {"i": i} for i in range(20)}
        store.compact()
    snap = next(Path(path).glob("*.snap"))
    intact = snap.read_bytes()
    damaged = bytearray(intact)
    damaged[13] ^= 0x01
    snap.write_bytes(bytes(damaged))
    assert cli("check", path)[0] == 1
    status, out, _ = cli("repair", path, "--yes")
    assert status == 0, out
    assert f"rebuild the header of {snap.name}" in out
    assert snap.read_bytes() == intact  # exactly the header that was lost
    assert [p.read_bytes() for p in Path(path).glob("*.snap.broken-*")] == [bytes(damaged)]
    assert cli("check", path)[0] == 0
    assert cli("repair", path, "--yes")[1].endswith("nothing to repair\n")
    with walsess.open(path, clock=clock, **QUIET) as store:
        assert {t: dict(s) for t in made if (s := store.get(t)) is not None} == made


def test_a_damaged_log_header_is_rebuilt_with_what_it_follows(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    clock = ManualClock()
    with walsess.open(path, clock=clock, **QUIET) as store:
        a = store.create({"a": 1})
        store.compact()
        a["b"] = 2
        b = store.create({"c": 3})
    log = sorted(Path(path).glob("*.log"))[-1]
    intact = log.read_bytes()
    log.write_bytes(bytes(r.HEADER_SIZE) + intact[r.HEADER_SIZE :])  # a zeroed header
    assert cli("repair", path, "--yes")[0] == 0
    assert log.read_bytes() == intact
    assert cli("check", path)[0] == 0
    with walsess.open(path, clock=clock, **QUIET) as store:
        got_a, got_b = store.get(a.id), store.get(b.id)
        assert got_a is not None and dict(got_a) == {"a": 1, "b": 2}
        assert got_b is not None and dict(got_b) == {"c": 3}


def test_a_newer_format_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with walsess.open(path, **QUIET) as store:
        store.create({"a": 1})
    log = next(Path(path).glob("*.log"))
    head = bytearray(log.read_bytes()[:28])
    head[8:10] = (r.FORMAT_VERSION + 1).to_bytes(2, "little")
    log.write_bytes(bytes(head) + r.crc32c(bytes(head)).to_bytes(4, "little"))
    before = listing(path)
    status, _, err = cli("repair", path, "--yes")
    assert status == 1 and "newer walsess" in err and err.count("\n") == 1
    assert listing(path) == before


# -- the class rule: repair over every damage kind ----------------------------------------

#: The fuzz suite's mutations, without the one that is not damage (a newer version).
damage = mutations.filter(lambda how: how[0] != "future_version")


def damaged_range(how: tuple[str, int, int], size: int) -> tuple[int, int]:
    """The bytes a mutation of a *size*-byte image changes, as [start, end): records
    wholly before start are intact; so are all records if end is inside the header
    (a header is rebuilt, and bytes inserted into it are skipped)."""
    kind, at, arg = how
    at = at % (size + 1)
    if kind == "flip":
        at = at % size
        return at, at + 1
    if kind == "zero_page":
        return at, at + arg
    if kind == "huge_length":
        return r.HEADER_SIZE + 5, r.HEADER_SIZE + 9
    if kind == "magic":
        return 0, 8
    if kind == "garbage" and at < r.HEADER_SIZE:
        return at, r.HEADER_SIZE
    return at, size + 1  # truncation, or garbage shifting every record after it


def intact_prefix(bounds: list[int], start: int, end: int) -> int:
    """How many records (ending at *bounds*[1:]) survive damage to [start, end)."""
    if end <= r.HEADER_SIZE:
        return len(bounds) - 1
    return sum(1 for b in bounds[1:] if b <= start)


def bounds_of(header: bytes, recs: list[r.Record]) -> list[int]:
    out = [len(header)]
    for rec in recs:
        out.append(out[-1] + len(r.encode_record(rec)))
    return out


def as_block(c: r.Create) -> r.Block:
    """A version 2 snapshot's BLOCK record holding the one session *c* creates."""
    items = r.item_block((k.encode(), v) for k, v in c.items)
    image = r.encode_header(1, 0, r.SNAPSHOT_MAGIC) + r.encode_block(*([x] for x in c[:8]), [items])
    ((_, block),) = r.RecordReader(image)
    assert isinstance(block, r.Block)
    return block


def repaired_state(d: str) -> Any:
    """Repair *d*, then assert it opens and checks clean; its state."""
    status, out, err = cli("repair", d, "--yes")
    assert status == 0, (out, err)
    status, out, err = cli("check", d)
    assert status == 0, (out, err)
    with walsess.open(d, **QUIET):
        pass
    return state_of(StoreDirectory(d, OS).load(1 << 20).table)


@settings(max_examples=600)
@given(st.lists(records, min_size=1, max_size=8), damage, st.binary(min_size=1, max_size=16),
       st.booleans())  # fmt: skip
@example([r.Touch(1, 500.0, 100.0)], ("flip", 13, 0), b"x", True)
def test_repair_keeps_every_intact_record_of_a_damaged_log(
    recs: list[r.Record], how: tuple[str, int, int], junk: bytes, with_snapshot: bool
) -> None:
    with tempfile.TemporaryDirectory() as d:
        table = SessionTable()
        if with_snapshot:
            snap = [x for x in recs[:1] if isinstance(x, r.Create)]
            for x in snap:
                table.apply(x)
            body = r.encode_header(1, 0, r.SNAPSHOT_MAGIC, version=1)
            body += b"".join(map(r.encode_record, snap)) + r.encode_end(len(snap))
            Path(d, snapshot_name(1)).write_bytes(body)
        header = r.encode_header(1, 1 if with_snapshot else 0)
        log = header + b"".join(map(r.encode_record, recs))
        Path(d, f"{1:016x}.log").write_bytes(mutate(log, how, junk))
        start, end = damaged_range(how, len(log))
        keep = intact_prefix(bounds_of(header, recs), start, end)
        assert repaired_state(d) in prefix_states(recs, table)[keep:]


@settings(max_examples=600)
@given(st.lists(creates(st.integers(1, 10**6)), min_size=1, max_size=6, unique_by=lambda c: c.sid),
       damage, st.binary(min_size=1, max_size=16), st.sampled_from([1, 2]))  # fmt: skip
@example([r.Create(7, bytes(32), 1.0, 100.0, 101.0, float("inf"), None, None, ())],
         ("flip", 13, 0), b"x", 1)  # fmt: skip
@example([r.Create(7, bytes(32), 1.0, 100.0, 101.0, float("inf"), None, None, ())],
         ("flip", 13, 0), b"x", 2)  # fmt: skip
def test_repair_keeps_every_intact_session_of_a_damaged_snapshot(
    sessions: list[r.Create], how: tuple[str, int, int], junk: bytes, version: int
) -> None:
    """Version 1 holds a CREATE per session, version 2 BLOCKs: here one session
    each, so that damage costs the same sessions in both."""
    with tempfile.TemporaryDirectory() as d:
        header = r.encode_header(2, 0, r.SNAPSHOT_MAGIC, version=version)
        recs = list(sessions) if version == 1 else [as_block(c) for c in sessions]
        body = header + b"".join(map(r.encode_record, recs)) + r.encode_end(len(sessions))
        Path(d, snapshot_name(2)).write_bytes(mutate(body, how, junk))
        Path(d, f"{2:016x}.log").write_bytes(r.encode_header(2, 2))
        start, end = damaged_range(how, len(body))
        bounds = bounds_of(header, recs)
        keep = intact_prefix(bounds, start, end)
        intact = set(range(keep))
        if how[0] != "garbage" and end <= bounds[-1]:
            # Damage in place that spares the END: a damaged session costs only
            # itself, the sessions after it are read again.
            intact |= {
                i for i in range(len(sessions)) if bounds[i + 1] <= start or bounds[i] >= end
            }
        full = prefix_states(list(sessions))[-1]
        got = repaired_state(d)
        assert all(full.get(sid) == state for sid, state in got.items()), "a session changed"
        missing = {i for i in intact if sessions[i].sid not in got}
        assert not missing, (missing, got.keys())


# -- the recovery suite's damage on a real store's log and snapshot --------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltLog:
    return build_log(str(tmp_path_factory.mktemp("built") / "store"))


def repaired_store_state(built: BuiltLog, image: bytes) -> Any:
    write_log(built, image)
    status, out, err = cli("repair", built.directory, "--yes")
    assert status == 0, (out, err)
    assert cli("check", built.directory)[0] == 0
    for name in os.listdir(built.directory):
        if ".broken-" in name:
            os.unlink(os.path.join(built.directory, name))
    with reopen(built) as store:
        assert store.recovery.clean
        return store_state(store), store.recovery.records


def test_every_header_bit_of_a_real_log(built: BuiltLog) -> None:
    """Each of the 256 header bits flipped: repair rebuilds the header, every record kept."""
    for i in range(r.HEADER_SIZE):
        for bit in range(8):
            flipped = bytearray(built.image)
            flipped[i] ^= 1 << bit
            state, records = repaired_store_state(built, bytes(flipped))
            assert records == len(built.bounds) - 1 and state == built.states[-1], (i, bit)


@pytest.mark.parametrize(
    "damage",
    ["zeros32", "zeros128", "garbage_then_valid", "flip_mid", "truncate_mid", "zero_page"],
)
def test_recovery_damage_on_a_real_log(built: BuiltLog, damage: str) -> None:
    image, bounds = built.image, built.bounds
    mid = bounds[len(bounds) // 2] + 3
    if damage == "zeros32":
        bad, keep = bytes(r.HEADER_SIZE) + image[r.HEADER_SIZE :], len(bounds) - 1
    elif damage == "zeros128":
        bad, keep = bytes(128) + image[128:], 0
    elif damage == "garbage_then_valid":
        bad, keep = image + b"\xff" * 20 + image[bounds[-2] :], len(bounds) - 1
    elif damage == "flip_mid":
        bad, keep = (
            image[:mid] + bytes([image[mid] ^ 4]) + image[mid + 1 :],
            records_before(built, mid),
        )
    elif damage == "truncate_mid":
        bad, keep = image[:mid], records_before(built, mid)
    else:
        bad, keep = image[:mid] + bytes(4096) + image[mid + 4096 :], records_before(built, mid)
    state, records = repaired_store_state(built, bad)
    assert records >= keep and state == built.states[records], damage


def test_every_header_bit_of_a_real_snapshot(tmp_path: Path) -> None:
    """The defect's class on a snapshot a store wrote: any header bit, every session kept."""
    path = str(tmp_path / "s")
    with walsess.open(path, **QUIET) as store:
        made = {store.create({"i": i}, user="u").id: {"i": i} for i in range(5)}
        store.compact()
    snap = next(Path(path).glob("*.snap"))
    intact = snap.read_bytes()
    for i in range(r.HEADER_SIZE):
        for bit in range(8):
            flipped = bytearray(intact)
            flipped[i] ^= 1 << bit
            snap.write_bytes(bytes(flipped))
            assert cli("repair", path, "--yes")[0] == 0, (i, bit)
            assert snap.read_bytes() == intact, (i, bit)
            assert cli("check", path)[0] == 0
    with walsess.open(path, **QUIET) as store:
        assert {t: dict(s) for t in made if (s := store.get(t)) is not None} == made


def test_a_record_inside_a_damaged_value_is_never_taken_for_a_session(tmp_path: Path) -> None:
    """A stored value can hold the bytes of a valid CREATE (anyone who can set a value
    can craft one, with a digest of a token they know). When the record around it is
    damaged, reading resumes at that fake record; it ends inside the value, where the
    next read fails, so the resumption is refused and the fake never becomes a session."""
    fake = r.Create(99, b"\x01" * 32, 1.0, 100.0, 101.0, float("inf"), None, None, ())
    real = [
        r.Create(1, b"\x02" * 32, 1.0, 100.0, 101.0, float("inf"), None, None, ()),
        r.Create(2, b"\x03" * 32, 1.0, 100.0, 101.0, float("inf"), None, None,
                 (("v", r.encode_record(fake) + b"tail"),)),
        r.Create(3, b"\x04" * 32, 1.0, 100.0, 101.0, float("inf"), None, None, ()),
    ]  # fmt: skip
    header = r.encode_header(2, 0, r.SNAPSHOT_MAGIC, version=1)
    body = bytearray(header + b"".join(map(r.encode_record, real)) + r.encode_end(3))
    second = bounds_of(header, list(real))[1]
    body[second + 1] ^= 0x40  # the SID of the record holding the fake: its CRC fails
    d = str(tmp_path)
    Path(d, snapshot_name(2)).write_bytes(bytes(body))
    Path(d, f"{2:016x}.log").write_bytes(r.encode_header(2, 2))
    got = repaired_state(d)
    assert 99 not in got and 1 in got


# -- repair through the FileSystem seam ----------------------------------------------------


class FailingFS(FileSystem):
    """Fails the k-th write, fsync, rename or unlink (k counted from 1; 0: never)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls = 0

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.k:
            raise OSError(errno.EIO, "injected")

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._tick()
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._tick()
        super().fsync(fd)

    def rename(self, src: str, dst: str) -> None:
        self._tick()
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self._tick()
        super().unlink(path)


def test_every_file_change_of_repair_goes_through_the_file_system(tmp_path: Path) -> None:
    """Fail each of repair's file-system calls in turn: repair raises, the damaged
    log is either as it was or wholly repaired (never half), and a repair with a
    healthy file system then finishes the job."""
    path = str(tmp_path / "s")
    with walsess.open(path, **QUIET) as store:
        store.create({"a": 1})
        store.compact()
        store.create({"b": 2})
    log = sorted(Path(path).glob("*.log"))[-1]
    damaged = bytearray(log.read_bytes())
    damaged[-3] ^= 1
    damaged += r.encode_touch(1, 1.0, 1.0)  # a valid record after the bad one: corruption
    log.write_bytes(bytes(damaged))
    counting = FailingFS(0)
    planned = repair_store(path, lambda steps: False, counting).steps
    assert counting.calls == 0 and [step.path for step in planned] == [str(log)]
    whole = {bytes(damaged), planned[0].content}  # what a failed repair may leave
    k = 0
    while True:
        k += 1
        fs = FailingFS(k)
        try:
            outcome = repair_store(path, lambda steps: True, fs, clock=lambda: 0.0)
        except (OSError, walsess.WalsessError):
            assert log.read_bytes() in whole, k
            assert cli("repair", path, "--yes")[0] == 0 and cli("check", path)[0] == 0
            log.write_bytes(bytes(damaged))
            continue
        break
    assert outcome.applied and fs.calls < k  # every call of a whole repair failed once
    assert k > 5 and log.read_bytes() == planned[0].content
    assert cli("check", path)[0] == 0
