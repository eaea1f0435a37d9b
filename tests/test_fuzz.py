"""Reader fuzzing: generated and mutated log and snapshot files.

Whatever the bytes, loading a store either succeeds with a state equal to
the state after some prefix of the original records, or raises
CorruptionError or FormatError naming the file and an offset inside it:
never another exception, never a state that no prefix had, and never
memory out of proportion to the file. The main test runs 10,000 examples
under the derandomized CI profile. Snapshots are built in both formats (v1:
CREATE records; v2: BLOCK records of a chosen size).

Item blocks are decoded at first use, so a session may load and its data
raise later; that error must name a file and an offset in it too. Damage
that passes the checksum (a record changed, then resealed) is aimed at each
column of a BLOCK, its count and the END count: it must be refused or load a
consistent table, never crash.
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_snapshot_v2 import BLOCK_PARTS, BlockLayout, reseal, snapshot_records

import walsess
from walsess import record as r
from walsess.fileio import OS
from walsess.snapshot import snapshot_name
from walsess.storedir import StoreDirectory
from walsess.table import SessionTable

MAX_VALUE = 1 << 20

keys = st.sampled_from(["a", "b", "cart", "ü"])
values = st.sampled_from([b"1", b'"x"', b"[1,2]", b"{}", b"null"])
sids = st.integers(1, 4)


def _digest(sid: int, rest: bytes) -> bytes:
    """A digest whose ref key (first 8 bytes) is the SID's own: the store never
    gives two sessions one ref, and a file that does is refused as corrupt."""
    return sid.to_bytes(8, "little") + rest


def creates(sid: Any) -> Any:
    return st.builds(
        lambda sid, rest, *fields: r.Create(sid, _digest(sid, rest), *fields),
        sid,
        st.binary(min_size=24, max_size=24),
        st.just(1.0),
        st.just(100.0),
        st.just(101.0),
        st.just(float("inf")),
        st.none() | st.just("user"),
        st.none() | st.just(b"{}"),
        st.lists(st.tuples(keys, values), max_size=3).map(tuple),
    )


records = st.one_of(
    creates(sids),
    st.builds(r.Modify, sids, st.booleans(),
              st.lists(st.tuples(keys, st.none() | values), max_size=3).map(tuple)),
    st.builds(r.Destroy, sids, st.just(0)),
    st.builds(r.Touch, sids, st.just(500.0), st.just(100.0)),
)  # fmt: skip


def state_of(table: SessionTable) -> dict[int, tuple[bytes, dict[str, bytes]]]:
    return {s.sid: (s.digest, dict(s.data)) for s in table.states()}


def prefix_states(recs: list[r.Record], base: SessionTable | None = None) -> list[Any]:
    table = base or SessionTable()
    out = [state_of(table)]
    for rec in recs:
        table.apply(rec)
        out.append(state_of(table))
    return out


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("zero_page"), st.integers(0, 10**6), st.integers(1, 4096)),
    st.tuples(st.just("huge_length"), st.integers(0, 10**6), st.sampled_from([2**31, 2**32 - 1])),
    st.tuples(st.just("garbage"), st.integers(0, 10**6), st.integers(1, 64)),
    # A run of a short pattern: record-like frames at many offsets (issue 10's
    # `00 00 00 01`), which once made the search after a bad record quadratic.
    st.tuples(st.just("pattern"), st.integers(0, 10**6), st.integers(1, 4096)),
    st.tuples(st.just("magic"), st.just(0), st.just(0)),
    st.tuples(st.just("future_version"), st.just(0), st.just(0)),
)


def mutate(buf: bytes, how: tuple[str, int, int], rng_bytes: bytes) -> bytes:
    kind, at, arg = how
    b = bytearray(buf)
    at = at % (len(b) + 1)
    if kind == "flip" and b:
        b[at % len(b)] ^= 1 << arg
    elif kind == "truncate":
        del b[at:]
    elif kind == "zero_page":
        b[at : at + arg] = bytes(len(b[at : at + arg]))
    elif kind == "huge_length" and len(b) > r.HEADER_SIZE + 9:
        pos = r.HEADER_SIZE + 5  # the first record's length field
        b[pos : pos + 4] = arg.to_bytes(4, "little")
    elif kind == "garbage":
        b[at:at] = (rng_bytes * (arg // max(len(rng_bytes), 1) + 1))[:arg]
    elif kind == "pattern":
        b[at:at] = ((rng_bytes[:4] or b"\x00") * arg)[: 4 * arg]
    elif kind == "magic":
        b[0:8] = b"NOTMAGIC"
    elif kind == "future_version":
        head = bytearray(b[:28])
        head[8:10] = (max(r.FORMAT_VERSION, *r.SNAPSHOT_VERSIONS) + 1).to_bytes(2, "little")
        b[:32] = bytes(head) + r.crc32c(bytes(head)).to_bytes(4, "little")
    return bytes(b)


def check_located(exc: walsess.FileError, directory: str, files: dict[str, int]) -> None:
    """*exc* names the store directory (a missing file) or one of *files* and an
    offset inside it."""
    assert exc.path is not None, exc
    if exc.path != directory:  # a damaged file, not a missing one
        assert exc.path in files, exc
        assert exc.offset is not None and 0 <= exc.offset <= files[exc.path], exc


def check_load(directory: str, files: dict[str, int], acceptable: list[Any]) -> None:
    """Loading fails naming a file and an offset, or gives an acceptable state.

    Item blocks are decoded at first use, so a checksum-valid record holding a
    malformed one loads, and reading that session's data raises instead: that
    error too must name one of *files* (never the directory) and an offset in it.
    """
    try:
        loaded = StoreDirectory(directory, OS).load(MAX_VALUE)
    except (walsess.CorruptionError, walsess.FormatError) as exc:  # LimitError is a FormatError
        check_located(exc, directory, files)
        return
    try:
        state = state_of(loaded.table)
    except (walsess.CorruptionError, walsess.FormatError) as exc:
        assert exc.path in files, exc
        check_located(exc, directory, files)
        return
    assert state in acceptable


@settings(max_examples=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(records, min_size=1, max_size=8),
    mutations,
    st.binary(min_size=1, max_size=16),
    st.booleans(),
    st.sampled_from([1, 2]),
)
def test_mutated_log(recs: list[r.Record], how: tuple[str, int, int], junk: bytes,
                     with_snapshot: bool, version: int) -> None:  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        files, base = write_mutated_log_store(d, recs, how, junk, with_snapshot, version)
        check_load(d, files, prefix_states(recs, base))


def write_mutated_log_store(
    d: str,
    recs: list[r.Record],
    how: tuple[str, int, int],
    junk: bytes,
    with_snapshot: bool,
    version: int = r.SNAPSHOT_VERSION,
) -> tuple[dict[str, int], SessionTable | None]:
    """Write into *d* a store whose one log holds *recs*, mutated by *how*, after a
    snapshot (format *version*) of the first record (if *with_snapshot* and it
    is a CREATE); returns ({file: size}, the snapshot's table or None)."""
    files: dict[str, int] = {}
    base = None
    if with_snapshot:
        snap = [x for x in recs[:1] if isinstance(x, r.Create)]
        base = SessionTable()
        for x in snap:
            base.apply(x)
        body = b"".join(snapshot_records(snap, version, generation=1))
        path = os.path.join(d, snapshot_name(1))
        with open(path, "wb") as f:
            f.write(body)
        files[path] = len(body)
    log = r.encode_header(1, 1 if with_snapshot else 0) + b"".join(map(r.encode_record, recs))
    bad = mutate(log, how, junk)
    path = os.path.join(d, f"{1:016x}.log")
    with open(path, "wb") as f:
        f.write(bad)
    files[path] = len(bad)
    return files, base


def write_mutated_snapshot_store(
    d: str,
    sessions: list[r.Create],
    how: tuple[str, int, int],
    junk: bytes,
    version: int = r.SNAPSHOT_VERSION,
    block_size: int = r.BLOCK_SESSIONS,
) -> dict[str, int]:
    """Write into *d* a snapshot (format *version*, blocks of *block_size*) of
    *sessions* mutated by *how*, and the empty log after it; returns {snapshot: size}."""
    body = b"".join(snapshot_records(sessions, version, block_size))
    bad = mutate(body, how, junk)
    return {write_snapshot(d, bad): len(bad)}


def write_snapshot(d: str, body: bytes) -> str:
    """Snapshot 2 holding *body*, with the empty log 2 after it; returns its path."""
    path = os.path.join(d, snapshot_name(2))
    with open(path, "wb") as f:
        f.write(body)
    with open(os.path.join(d, f"{2:016x}.log"), "wb") as f:
        f.write(r.encode_header(2, 2))
    return path


# Distinct SIDs and ref keys: a snapshot holding either twice is refused whole.
snapshot_sessions = st.lists(creates(st.integers(1, 10**6)), min_size=1, max_size=6,
                             unique_by=(lambda c: c.sid, lambda c: c.digest[:8]))  # fmt: skip
versions = st.sampled_from([1, 2])
block_sizes = st.integers(1, 4)


@settings(max_examples=1_000)
@given(snapshot_sessions, versions, block_sizes, mutations, st.binary(min_size=1, max_size=16))
def test_mutated_snapshot(sessions: list[r.Create], version: int, block_size: int,
                          how: tuple[str, int, int], junk: bytes) -> None:  # fmt: skip
    """A snapshot (v1, or v2 in several blocks) is all or nothing: either every
    session loads or the open fails."""
    with tempfile.TemporaryDirectory() as d:
        files = write_mutated_snapshot_store(d, sessions, how, junk, version, block_size)
        full = prefix_states(list(sessions))[-1]
        check_load(d, files, [full])


# A resealed mutation aims at one of BLOCK_PARTS (the frame's count, each
# column, the tables, the item area); in a CREATE or END record, any part but
# the count means the payload.
#: u32 values worth writing over a count, reference or offset: the edges.
WORDS = [0, 1, 2, 3, 4, 255, 2**16 - 1, 2**16, 2**31, 2**32 - 1]


def regions_of(record: bytes) -> dict[str, tuple[int, int]]:
    if record[0] == r.Op.BLOCK:
        return BlockLayout.of(record).regions()
    return {"count": (1, 5), "payload": (r.RECORD_OVERHEAD - 4, len(record) - 4)}


def reseal_mutate(records: list[bytes], which: int, part: str, at: int, bit: int,
                  word: int | None) -> list[bytes]:  # fmt: skip
    """*records* with one bit of *part* of record *which* flipped (or a u32 in
    it set to *word*), and that record's CRC made right again."""
    which = 1 + which % (len(records) - 1)  # any record but the header
    rec = bytearray(records[which])
    regions = regions_of(records[which])
    start, end = regions.get(part, regions.get("payload", (0, 0)))
    if word is not None and end - start >= 4:
        pos = start + at % (end - start - 3)
        rec[pos : pos + 4] = word.to_bytes(4, "little")
    elif end > start:
        rec[start + at % (end - start)] ^= 1 << bit
    out = list(records)
    out[which] = reseal(rec)
    return out


@settings(max_examples=1_000)
@given(snapshot_sessions, versions, block_sizes, st.integers(0, 100), st.sampled_from(BLOCK_PARTS),
       st.integers(0, 10**6), st.integers(0, 7), st.none() | st.sampled_from(WORDS))  # fmt: skip
def test_resealed_snapshot(sessions: list[r.Create], version: int, block_size: int, which: int,
                           part: str, at: int, bit: int, word: int | None) -> None:  # fmt: skip
    """Damage no checksum catches, in every column of a BLOCK, its count, a
    CREATE or the END count: open fails naming the snapshot and an offset in
    it, or succeeds with a consistent table whose every session's data either
    decodes or raises such an error. Never another exception."""
    records = snapshot_records(sessions, version, block_size)
    bad = b"".join(reseal_mutate(records, which, part, at, bit, word))
    with tempfile.TemporaryDirectory() as d:
        path = write_snapshot(d, bad)
        files = {path: len(bad)}
        try:
            loaded = StoreDirectory(d, OS).load(MAX_VALUE)
        except (walsess.CorruptionError, walsess.FormatError) as exc:
            assert exc.path == path, exc
            check_located(exc, d, files)
            return
        loaded.table._check()
        for state in loaded.table.states():
            try:
                _ = state.data
            except (walsess.CorruptionError, walsess.FormatError) as exc:
                assert exc.path == path, exc
                check_located(exc, d, files)


@settings(max_examples=200)
@given(st.sampled_from([2**20, 2**30, 2**32 - 1]), st.integers(0, 3))
def test_huge_lengths_allocate_nothing(length: int, which: int) -> None:
    """A length field claiming gigabytes costs no more memory than the file."""
    recs: list[r.Record] = [r.Touch(1, 1.0, 1.0)] * 3
    buf = bytearray(r.encode_header(1, 0) + b"".join(map(r.encode_record, recs)))
    pos = r.HEADER_SIZE + which * len(r.encode_record(recs[0])) + 5
    if pos + 4 <= len(buf):
        buf[pos : pos + 4] = length.to_bytes(4, "little")
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, f"{1:016x}.log"), "wb") as f:
            f.write(bytes(buf))
        tracemalloc.start()
        try:
            check_load(d, {os.path.join(d, f"{1:016x}.log"): len(buf)}, prefix_states(recs))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"{peak} bytes allocated for a {len(buf)}-byte file"
