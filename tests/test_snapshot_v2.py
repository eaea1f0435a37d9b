"""Snapshot format v2 (columnar BLOCK records): round trip, every structural
error named exactly, and item blocks decoded lazily at first read.

A v2 snapshot is a header, BLOCK records and an END record. A BLOCK's frame
holds its session count in the SID field, and its payload is, for n sessions:
sids u32[n], digests 32*n, created/ttl/idle/hard f64[n] each, user refs,
meta refs and item ends u32[n] each, a user table, a meta table, and the
item area. :class:`BlockLayout` computes where each of those starts, so the
tests below can damage exactly one of them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

import walsess
from walsess import record as r
from walsess import tokens
from walsess.fileio import OS
from walsess.snapshot import SnapshotWriter, load_snapshot, snapshot_name, snapshot_size
from walsess.table import SessionTable

MAX_VALUE = 1 << 20
GENERATION = 2

# -- building snapshots ---------------------------------------------------------


def create_items(c: r.Create) -> bytes:
    """The item block a CREATE's items make (what a BLOCK carries for it)."""
    return r.item_block((k.encode(), v) for k, v in c.items)


def encode_blocks(sessions: Sequence[r.Create], block_size: int) -> list[bytes]:
    """*sessions* as BLOCK records of at most *block_size* sessions each."""
    out = []
    for i in range(0, len(sessions), block_size):
        chunk = sessions[i : i + block_size]
        out.append(
            r.encode_block(
                [c.sid for c in chunk],
                [c.digest for c in chunk],
                [c.created_at for c in chunk],
                [c.ttl for c in chunk],
                [c.idle_deadline for c in chunk],
                [c.hard_deadline for c in chunk],
                [c.user for c in chunk],
                [c.meta for c in chunk],
                [create_items(c) for c in chunk],
            )
        )
    return out


def snapshot_records(
    sessions: Sequence[r.Create],
    version: int,
    block_size: int = r.BLOCK_SESSIONS,
    generation: int = GENERATION,
) -> list[bytes]:
    """The records of a snapshot of *sessions* in format *version* (1: one
    CREATE per session; 2: BLOCK records), header first, END last."""
    head = r.encode_header(generation, 0, r.SNAPSHOT_MAGIC, version=version)
    body = encode_blocks(sessions, block_size) if version == 2 else map(r.encode_record, sessions)
    return [head, *body, r.encode_end(len(sessions))]


def reseal(record: bytes | bytearray) -> bytes:
    """*record* with its trailing CRC-32C recomputed, so a damaged record passes its checksum."""
    body = bytes(record[:-4])
    return body + r.crc32c(body).to_bytes(4, "little")


def put_u32(buf: bytearray, at: int, value: int) -> None:
    buf[at : at + 4] = value.to_bytes(4, "little")


def write_store(directory: str | Path, records: Sequence[bytes]) -> str:
    """A store directory holding snapshot GENERATION made of *records* and its
    empty log; returns the snapshot's path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, snapshot_name(GENERATION))
    with open(path, "wb") as f:
        f.write(b"".join(records))
    with open(os.path.join(directory, f"{GENERATION:016x}.log"), "wb") as f:
        f.write(r.encode_header(GENERATION, GENERATION))
    return path


def load(path: str) -> SessionTable:
    table = SessionTable()
    table.begin_bulk()
    load_snapshot(path, OS, table, MAX_VALUE)
    table.end_bulk()
    return table


#: The parts of a BLOCK record, in order (see BlockLayout.regions).
BLOCK_PARTS = (
    "count",
    "sids",
    "digests",
    "created",
    "ttl",
    "idle",
    "hard",
    "user_refs",
    "meta_refs",
    "item_ends",
    "users",
    "metas",
    "items",
)


class BlockLayout(NamedTuple):
    """Offsets, within one BLOCK record, of its frame fields and columns."""

    n: int
    frame_count: int  # the frame's SID field, which holds the session count
    sids: int
    digests: int
    created: int
    ttl: int
    idle: int
    hard: int
    user_refs: int
    meta_refs: int
    item_ends: int
    users: int  # the user table: count u32, lengths u16, bytes
    metas: int  # the meta table: count u32, lengths u32, bytes
    items: int  # the item area
    crc: int

    @classmethod
    def of(cls, record: bytes) -> BlockLayout:
        n = int.from_bytes(record[1:5], "little")
        p = 9
        users = p + 80 * n
        user_count = int.from_bytes(record[users : users + 4], "little")
        user_bytes = sum(
            int.from_bytes(record[users + 4 + 2 * i : users + 6 + 2 * i], "little")
            for i in range(user_count)
        )
        metas = users + 4 + 2 * user_count + user_bytes
        meta_count = int.from_bytes(record[metas : metas + 4], "little")
        meta_bytes = sum(
            int.from_bytes(record[metas + 4 + 4 * i : metas + 8 + 4 * i], "little")
            for i in range(meta_count)
        )
        items = metas + 4 + 4 * meta_count + meta_bytes
        return cls(
            n,
            1,
            p,
            p + 4 * n,
            p + 36 * n,
            p + 44 * n,
            p + 52 * n,
            p + 60 * n,
            p + 68 * n,
            p + 72 * n,
            p + 76 * n,
            users,
            metas,
            items,
            len(record) - 4,
        )

    def regions(self) -> dict[str, tuple[int, int]]:
        """Each part of the record as (start, end), frame count included."""
        bounds = self[2:]  # sids .. crc: each part ends where the next starts
        spans = [(self.frame_count, self.frame_count + 4), *pairwise(bounds)]
        return dict(zip(BLOCK_PARTS, spans, strict=True))


def expect_corruption(path: str, offset: int, fn: Callable[[], object]) -> walsess.CorruptionError:
    """Run *fn*; it must raise CorruptionError naming *path* at exactly *offset*."""
    with pytest.raises(walsess.CorruptionError) as info:
        fn()
    exc = info.value
    assert type(exc) is walsess.CorruptionError, exc
    assert exc.path == path, exc
    assert exc.offset == offset, exc
    return exc


# -- the round trip ---------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=8)  # storable UTF-8
finite = st.floats(-1e12, 1e12, allow_nan=False)
# Deadlines are not negative: see test_negative_deadline_breaks_the_expiry_index.
deadlines = st.floats(0, 1e12)


@st.composite
def session_lists(draw: Any, max_size: int = 12) -> list[r.Create]:
    """Sessions with distinct SIDs and ref keys, users, metadata and data of every shape."""
    sids = draw(st.lists(st.integers(1, r.MAX_SID), max_size=max_size, unique=True))
    digests = draw(
        st.lists(
            st.binary(min_size=32, max_size=32),
            min_size=len(sids),
            max_size=len(sids),
            unique_by=tokens.ref_key,
        )
    )
    out = []
    for sid, digest in zip(sids, digests, strict=True):
        data = draw(st.dictionaries(text, st.binary(max_size=24), max_size=4))
        out.append(
            r.Create(
                sid,
                digest,
                draw(finite),
                draw(finite | st.just(0.0)),
                draw(deadlines),
                draw(deadlines | st.just(float("inf"))),
                draw(st.none() | st.sampled_from(["alice", "bob", "ü"]) | text),
                draw(st.none() | st.sampled_from([b"{}", b""]) | st.binary(max_size=16)),
                tuple(data.items()),
            )
        )
    return out


def full_state(table: SessionTable) -> dict[int, tuple[Any, ...]]:
    return {
        sid: (
            s.digest,
            s.created_at,
            s.ttl,
            s.idle_deadline,
            s.hard_deadline,
            s.user,
            s.meta,
            s.data,
        )
        for sid, s in ((s.sid, s) for s in table.states())
    }


@settings(max_examples=150)
@given(session_lists(), st.integers(1, 5), st.booleans())
def test_round_trip(sessions: list[r.Create], block_size: int, by_writer: bool) -> None:
    """Writing sessions as v2 blocks and loading them gives the state their
    CREATE records give, with every item block still packed until read."""
    with tempfile.TemporaryDirectory() as d:
        check_round_trip(d, sessions, block_size, by_writer)


def check_round_trip(d: str, sessions: list[r.Create], block_size: int, by_writer: bool) -> None:
    if by_writer:
        source = SessionTable()
        states = [source.apply_create(c) for c in sessions]
        writer = SnapshotWriter(d, OS, GENERATION)
        saved, r.BLOCK_SESSIONS = r.BLOCK_SESSIONS, block_size
        try:
            for i in range(0, len(states), 2):  # queued two at a time, as chunks are
                writer.add(states[i : i + 2])
                writer.flush()
            writer.commit()
            assert os.path.getsize(writer.path) == snapshot_size(states)
        finally:
            r.BLOCK_SESSIONS = saved
        path = writer.path
    else:
        path = write_store(d, snapshot_records(sessions, 2, block_size))
    table = SessionTable()
    table.begin_bulk()
    assert load_snapshot(path, OS, table, MAX_VALUE) == len(sessions)
    table.end_bulk()
    table._check()
    assert all(type(v) is int for v in table.by_sid.values())  # no session made yet
    assert all(s.packed is not None for s in table.views())  # nothing decoded yet
    assert all(s.packed is not None for s in table.states())  # made, still not decoded
    table._check()
    expected = SessionTable()
    for c in sessions:
        expected.apply_create(c)
    assert full_state(table) == full_state(expected)
    assert list(table.expiry) == list(expected.expiry)
    assert table.by_user == expected.by_user
    # (next_sid is only where allocation starts looking; blocks may leave it elsewhere.)


def test_empty_snapshot_round_trips(tmp_path: Path) -> None:
    path = write_store(tmp_path, snapshot_records([], 2))
    assert len(load(path)) == 0


# -- structural errors, each named exactly -----------------------------------------


def sessions_of(n: int, start: int = 1, **fields: Any) -> list[r.Create]:
    """*n* plain sessions with SIDs from *start*, distinct digests, one key each."""
    out = []
    for sid in range(start, start + n):
        c = r.Create(
            sid,
            tokens.digest(f"token{sid}"),
            1.0,
            100.0,
            101.0,
            float("inf"),
            None,
            None,
            (("k", b"%d" % sid),),
        )
        out.append(c._replace(**fields))
    return out


def damaged(
    records: list[bytes],
    which: int,
    change: Callable[[bytearray, BlockLayout], None],
    resealed: bool = True,
) -> list[bytes]:
    """*records* with record *which* (a BLOCK) changed by *change*, and resealed."""
    rec = bytearray(records[which])
    change(rec, BlockLayout.of(records[which]))
    out = list(records)
    out[which] = reseal(rec) if resealed else bytes(rec)
    return out


def offset_of(records: list[bytes], which: int) -> int:
    return sum(map(len, records[:which]))


def test_torn_block(tmp_path: Path) -> None:
    records = snapshot_records(sessions_of(5), 2, block_size=2)
    for which in (1, 2, 3):
        data = b"".join(records)
        at = offset_of(records, which)
        path = write_store(tmp_path / str(which), [data[: at + len(records[which]) // 2]])
        expect_corruption(path, at, partial(load, path))


def test_end_count_disagrees_with_blocks(tmp_path: Path) -> None:
    records = snapshot_records(sessions_of(5), 2, block_size=2)
    for count in (4, 6, 0):
        records[-1] = r.encode_end(count)
        path = write_store(tmp_path / str(count), records)
        expect_corruption(path, offset_of(records, 4), partial(load, path))


def test_block_claims_more_sessions_than_it_holds(tmp_path: Path) -> None:
    records = snapshot_records(sessions_of(4), 2, block_size=2)
    bad = damaged(records, 2, lambda b, lay: put_u32(b, lay.frame_count, 3))
    path = write_store(tmp_path / "3", bad)
    # Three sessions' fixed columns do not fit in two sessions' bytes.
    expect_corruption(path, offset_of(records, 2) + 9, partial(load, path))
    bad = damaged(records, 2, lambda b, lay: put_u32(b, lay.frame_count, r.MAX_BLOCK_SESSIONS + 1))
    path = write_store(tmp_path / "max", bad)
    expect_corruption(path, offset_of(records, 2) + 1, partial(load, path))


def test_zero_session_block(tmp_path: Path) -> None:
    records = snapshot_records(sessions_of(2), 2)
    bad = damaged(records, 1, lambda b, lay: put_u32(b, lay.frame_count, 0))
    path = write_store(tmp_path, bad)
    expect_corruption(path, offset_of(records, 1) + 1, partial(load, path))


def ends_out_of_order(b: bytearray, lay: BlockLayout) -> None:
    second = int.from_bytes(b[lay.item_ends + 4 : lay.item_ends + 8], "little")
    put_u32(b, lay.item_ends, second + 1)  # past the second, the last still right


def ends_past_area(b: bytearray, lay: BlockLayout) -> None:
    at = lay.item_ends + 4 * (lay.n - 1)
    put_u32(b, at, int.from_bytes(b[at : at + 4], "little") + 1)


def ends_short_of_area(b: bytearray, lay: BlockLayout) -> None:
    at = lay.item_ends + 4 * (lay.n - 1)
    put_u32(b, at, int.from_bytes(b[at : at + 4], "little") - 1)


@pytest.mark.parametrize("change", [ends_out_of_order, ends_past_area, ends_short_of_area])
def test_item_ends_out_of_order_or_range(
    tmp_path: Path, change: Callable[[bytearray, BlockLayout], None]
) -> None:
    records = snapshot_records(sessions_of(3, user="u", meta=b"{}"), 2)
    path = write_store(tmp_path, damaged(records, 1, change))
    expected = offset_of(records, 1) + BlockLayout.of(records[1]).item_ends
    expect_corruption(path, expected, partial(load, path))


@pytest.mark.parametrize("table", ["users", "metas"])
def test_reference_out_of_range(tmp_path: Path, table: str) -> None:
    records = snapshot_records(sessions_of(2, user="u", meta=b"{}"), 2)
    column = "user_refs" if table == "users" else "meta_refs"
    bad = damaged(records, 1, lambda b, lay: put_u32(b, getattr(lay, column) + 4, 2))
    path = write_store(tmp_path, bad)
    # The reference names a value the table does not hold: the table is named.
    expected = offset_of(records, 1) + getattr(BlockLayout.of(records[1]), table)
    expect_corruption(path, expected, partial(load, path))


@pytest.mark.parametrize("table", ["users", "metas"])
@pytest.mark.parametrize("count", [3, 2**32 - 1])
def test_table_count_larger_than_block(tmp_path: Path, table: str, count: int) -> None:
    records = snapshot_records(sessions_of(2, user="u", meta=b"{}"), 2)
    bad = damaged(records, 1, lambda b, lay: put_u32(b, getattr(lay, table), count))
    path = write_store(tmp_path, bad)
    expected = offset_of(records, 1) + getattr(BlockLayout.of(records[1]), table)
    expect_corruption(path, expected, partial(load, path))


def test_user_not_utf8(tmp_path: Path) -> None:
    records = snapshot_records(sessions_of(1, user="u"), 2)
    bad = damaged(records, 1, lambda b, lay: b.__setitem__(lay.users + 6, 0xFF))
    path = write_store(tmp_path, bad)
    expected = offset_of(records, 1) + BlockLayout.of(records[1]).users
    expect_corruption(path, expected, partial(load, path))


@pytest.mark.parametrize("twice", ["sid", "ref"])
def test_session_twice_across_blocks(tmp_path: Path, twice: str) -> None:
    first, second = sessions_of(2), sessions_of(2, start=3)
    if twice == "sid":
        second[1] = second[1]._replace(sid=first[0].sid)
    else:
        second[1] = second[1]._replace(digest=first[0].digest[:8] + bytes(24))
    records = snapshot_records([*first, *second], 2, block_size=2)
    path = write_store(tmp_path, records)
    expect_corruption(path, offset_of(records, 2), partial(load, path))


def test_ref_key_twice_in_a_v1_snapshot(tmp_path: Path) -> None:
    sessions = sessions_of(2)
    sessions[1] = sessions[1]._replace(digest=sessions[0].digest[:8] + bytes(24))
    records = snapshot_records(sessions, 1)
    path = write_store(tmp_path, records)
    # Named at the second CREATE's item block: where replay's fast path is.
    items_at = 9 + 65  # op, sid, length; digest, four times, flags (no user, no meta)
    expect_corruption(path, offset_of(records, 2) + items_at, partial(load, path))


def test_session_twice_in_one_block(tmp_path: Path) -> None:
    sessions = sessions_of(3)
    sessions[2] = sessions[2]._replace(sid=1)
    records = snapshot_records(sessions, 2)
    path = write_store(tmp_path, records)
    expect_corruption(path, offset_of(records, 1), partial(load, path))


def test_block_in_a_log(tmp_path: Path) -> None:
    d = tmp_path / "store"
    d.mkdir()
    log = d / f"{1:016x}.log"
    log.write_bytes(r.encode_header(1, 0) + encode_blocks(sessions_of(2), 2)[0])
    expect_corruption(
        str(log),
        r.HEADER_SIZE,
        lambda: walsess.open(str(d), clock=FakeClock(), cleanup_interval=None),
    )


def test_create_in_a_v2_snapshot(tmp_path: Path) -> None:
    records = snapshot_records(sessions_of(3), 2, block_size=2)
    records.insert(2, r.encode_record(sessions_of(1, start=9)[0]))
    records[-1] = r.encode_end(4)
    path = write_store(tmp_path, records)
    expect_corruption(path, offset_of(records, 2), partial(load, path))


def test_block_in_a_v1_snapshot(tmp_path: Path) -> None:
    records = snapshot_records(sessions_of(2), 1)
    records.insert(2, encode_blocks(sessions_of(1, start=9), 1)[0])
    records[-1] = r.encode_end(3)
    path = write_store(tmp_path, records)
    expect_corruption(path, offset_of(records, 2), partial(load, path))


def test_v1_snapshot_still_loads(tmp_path: Path) -> None:
    sessions = sessions_of(3, user="u")
    path = write_store(tmp_path, snapshot_records(sessions, 1))
    expected = SessionTable()
    for c in sessions:
        expected.apply_create(c)
    assert full_state(load(path)) == full_state(expected)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("deadline", [float("-inf"), -1e308])
def test_huge_negative_deadline(tmp_path: Path, version: int, deadline: float) -> None:
    sessions = sessions_of(2, hard_deadline=deadline)
    path = write_store(tmp_path, snapshot_records(sessions, version))
    try:
        load(path)
    except (walsess.CorruptionError, walsess.FormatError) as exc:
        assert exc.path == path
        return


def test_negative_deadline_breaks_the_expiry_index(tmp_path: Path) -> None:
    path = write_store(tmp_path, snapshot_records(sessions_of(2, idle_deadline=-10.0), 2))
    table = load(path)
    table._check()
    table.touch(table.state(1), 50.0, 100.0)  # type: ignore[arg-type]
    table._check()


# -- item blocks decoded at first read --------------------------------------------

TOKENS = ["first", "second", "third"]


def lazy_store(directory: Path, bad: bytes) -> tuple[str, int]:
    """A store whose snapshot's one block holds three live sessions, the second
    with item block *bad*; returns the snapshot path and that item block's offset."""
    sessions = [
        r.Create(
            i + 1, tokens.digest(t), 1.0, 3600.0, 2e9, float("inf"), None, None, (("n", b"%d" % i),)
        )
        for i, t in enumerate(TOKENS)
    ]
    block = r.encode_block(
        *zip(*[(*c[:8], create_items(c) if c.sid != 2 else bad) for c in sessions], strict=True)
    )
    records = snapshot_records(sessions, 2)
    records[1] = block
    path = write_store(directory, records)
    lay = BlockLayout.of(block)
    return path, r.HEADER_SIZE + lay.items + len(create_items(sessions[0]))


def read_all(store: walsess.Store, token: str) -> dict[str, Any]:
    handle = store.get(token)
    assert handle is not None
    return dict(handle)


def count_too_large() -> bytes:
    good = r.item_block([(b"k", b"1")])
    return (1000).to_bytes(4, "little") + good[4:]


def lengths_too_long() -> bytes:
    good = bytearray(r.item_block([(b"k", b"1")]))
    good[6:10] = (2).to_bytes(4, "little")  # the value's length runs past the block
    return bytes(good)


# (item block, offset in it of what is wrong: the count, the lengths)
MALFORMED = [(count_too_large(), 0), (lengths_too_long(), 4), (b"\x01\x00", 0)]


@pytest.mark.parametrize(("bad", "inside"), MALFORMED)
def test_malformed_item_block_raises_at_first_read(tmp_path: Path, bad: bytes, inside: int) -> None:
    """Open succeeds; the first read of the bad session raises naming the
    snapshot and the offset in it, others read fine; compaction copies the
    item block undecoded, and the new snapshot names itself at first read."""
    d = tmp_path / "store"
    path, offset = lazy_store(d, bad)
    offset += inside
    clock = FakeClock()
    with walsess.open(str(d), clock=clock, cleanup_interval=None) as store:
        assert read_all(store, "first") == {"n": 0}
        assert read_all(store, "third") == {"n": 2}
        expect_corruption(path, offset, lambda: read_all(store, "second"))
        # Still broken on the next read: the error is not cached away.
        expect_corruption(path, offset, lambda: read_all(store, "second"))
        compaction = store.compact()
    new = os.path.join(str(d), snapshot_name(compaction.generation))
    assert new != path
    with walsess.open(str(d), clock=clock, cleanup_interval=None) as store:
        assert read_all(store, "first") == {"n": 0}
        assert read_all(store, "third") == {"n": 2}
        with pytest.raises(walsess.CorruptionError) as info:
            read_all(store, "second")
        assert info.value.path == new
        # Copied unchanged: the new snapshot carries the same bytes at the named offset.
        assert info.value.offset is not None
        with open(new, "rb") as f:
            assert f.read()[info.value.offset - inside :].startswith(bad)


def test_item_block_over_max_value_is_a_limit_error(tmp_path: Path) -> None:
    d = tmp_path / "store"
    big = r.item_block([(b"k", b'"' + b"x" * 2000 + b'"')])
    path, offset = lazy_store(d, big)
    with walsess.open(
        str(d), clock=FakeClock(), cleanup_interval=None, max_value_bytes=1024
    ) as store:
        assert read_all(store, "first") == {"n": 0}
        with pytest.raises(walsess.LimitError) as info:
            read_all(store, "second")
        assert info.value.path == path
        assert info.value.offset == offset + 4  # the lengths, where the value's is
