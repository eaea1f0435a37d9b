"""Reader fuzzing: generated and mutated log and snapshot files.

Whatever the bytes, loading a store either succeeds with a state equal to
the state after some prefix of the original records, or raises
CorruptionError or FormatError naming the file and an offset inside it:
never another exception, never a state that no prefix had, and never
memory out of proportion to the file. The main test runs 10,000 examples
under the derandomized CI profile.
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def creates(sid: Any) -> Any:
    return st.builds(
        r.Create,
        sid,
        st.binary(min_size=32, max_size=32),
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
    return {sid: (s.digest, dict(s.data)) for sid, s in table.by_sid.items()}


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
        head[8:10] = (r.FORMAT_VERSION + 1).to_bytes(2, "little")
        b[:32] = bytes(head) + r.crc32c(bytes(head)).to_bytes(4, "little")
    return bytes(b)


def write_mutated_log_store(
    d: str, recs: list[r.Record], how: tuple[str, int, int], junk: bytes, with_snapshot: bool
) -> tuple[dict[str, int], SessionTable | None]:
    """Write into *d* a store whose one log holds *recs*, mutated by *how*, after a
    snapshot of the first record (if *with_snapshot* and it is a CREATE); returns
    ({file: size}, the snapshot's table or None)."""
    files: dict[str, int] = {}
    base = None
    if with_snapshot:
        snap = [x for x in recs[:1] if isinstance(x, r.Create)]
        base = SessionTable()
        for x in snap:
            base.apply(x)
        body = r.encode_header(1, 0, r.SNAPSHOT_MAGIC)
        body += b"".join(map(r.encode_record, snap)) + r.encode_end(len(snap))
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
    d: str, sessions: list[r.Create], how: tuple[str, int, int], junk: bytes
) -> dict[str, int]:
    """Write into *d* a snapshot of *sessions* mutated by *how*, and the empty log
    after it; returns {snapshot: size}."""
    body = r.encode_header(2, 0, r.SNAPSHOT_MAGIC)
    body += b"".join(map(r.encode_record, sessions)) + r.encode_end(len(sessions))
    bad = mutate(body, how, junk)
    path = os.path.join(d, snapshot_name(2))
    with open(path, "wb") as f:
        f.write(bad)
    log = r.encode_header(2, 2)
    with open(os.path.join(d, f"{2:016x}.log"), "wb") as f:
        f.write(log)
    return {path: len(bad)}


def check_load(directory: str, files: dict[str, int], acceptable: list[Any]) -> None:
    try:
        loaded = StoreDirectory(directory, OS).load(MAX_VALUE)
    except (walsess.CorruptionError, walsess.FormatError) as exc:
        assert exc.path is not None, exc
        if exc.path != directory:  # a damaged file, not a missing one
            assert exc.path in files, exc
            assert exc.offset is not None and 0 <= exc.offset <= files[exc.path], exc
        return
    assert state_of(loaded.table) in acceptable


@settings(max_examples=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(records, min_size=1, max_size=8),
    mutations,
    st.binary(min_size=1, max_size=16),
    st.booleans(),
)
def test_mutated_log(recs: list[r.Record], how: tuple[str, int, int], junk: bytes,
                     with_snapshot: bool) -> None:  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        files, base = write_mutated_log_store(d, recs, how, junk, with_snapshot)
        check_load(d, files, prefix_states(recs, base))


@settings(max_examples=1_000)
@given(st.lists(creates(st.integers(1, 10**6)), min_size=1, max_size=6, unique_by=lambda c: c.sid),
       mutations, st.binary(min_size=1, max_size=16))  # fmt: skip
def test_mutated_snapshot(sessions: list[r.Create], how: tuple[str, int, int], junk: bytes) -> None:
    """A snapshot is all or nothing: either every session loads or the open fails."""
    with tempfile.TemporaryDirectory() as d:
        files = write_mutated_snapshot_store(d, sessions, how, junk)
        full = prefix_states(list(sessions))[-1]
        check_load(d, files, [full])


@settings(max_examples=200)
@given(st.sampled_from([2**20, 2**30, 2**32 - 1]), st.integers(0, 3))
def test_huge_lengths_allocate_nothing(length: int, which: int) -> None:
    """A length field claiming gigabytes costs no more memory than the file."""
    recs = [r.Touch(1, 1.0, 1.0)] * 3
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
