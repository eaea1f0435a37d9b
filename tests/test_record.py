"""The sans-IO record layer: round trips, every prefix, bounds, and what it refuses."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import walsess
from walsess import record as r

keys = st.text(min_size=0, max_size=12)
values = st.binary(max_size=40)
digests = st.binary(min_size=32, max_size=32)
sids = st.integers(1, 2**32 - 1)
times = st.floats(allow_nan=False, width=64)

creates = st.builds(
    r.Create,
    sids,
    digests,
    times,
    times,
    times,
    times,
    st.none() | st.text(max_size=10),
    st.none() | st.binary(max_size=20),
    st.lists(st.tuples(keys, values), max_size=5).map(tuple),
)
modifies = st.builds(
    r.Modify,
    sids,
    st.booleans(),
    st.lists(st.tuples(keys, st.none() | values), max_size=5).map(tuple),
)
records = st.one_of(
    creates,
    modifies,
    st.builds(r.Destroy, sids, st.sampled_from(list(r.DestroyReason))),
    st.builds(r.ChangeId, sids, digests),
    st.builds(r.Touch, sids, times, times),
)


def log_of(recs: list[r.Record]) -> bytes:
    return r.encode_header(1, 0) + b"".join(r.encode_record(x) for x in recs)


def decode_all(
    buf: bytes, max_value: int = r.MAX_PAYLOAD_BYTES
) -> tuple[list[r.Record], r.RecordReader]:
    reader = r.RecordReader(buf, r.HEADER_SIZE, max_value)
    return [rec for _, rec in reader], reader


def same(a: r.Record, b: r.Record) -> bool:
    # NaN-free floats compare exactly; -0.0 == 0.0 is fine for a round trip check
    return a == b


@given(st.lists(records, max_size=6))
def test_round_trip(recs: list[r.Record]) -> None:
    buf = log_of(recs)
    got, reader = decode_all(buf)
    assert reader.stop is None and reader.end == len(buf)
    assert all(same(x, y) for x, y in zip(got, recs, strict=True))
    assert log_of(got) == buf


@given(st.lists(records, min_size=1, max_size=4), st.data())
def test_every_prefix_yields_only_whole_records(recs: list[r.Record], data: st.DataObject) -> None:
    """As h11 tests its parser: each prefix decodes to the records wholly inside it."""
    buf = log_of(recs)
    ends = []
    pos = r.HEADER_SIZE
    for x in recs:
        pos += len(r.encode_record(x))
        ends.append(pos)
    for cut in range(r.HEADER_SIZE, len(buf) + 1):
        got, reader = decode_all(buf[:cut])
        whole = sum(1 for e in ends if e <= cut)
        assert len(got) == whole
        if cut in ends or cut == r.HEADER_SIZE:
            assert reader.stop is None
        else:
            assert reader.stop is not None and reader.stop.offset == reader.end
            # nothing valid follows a torn record of a single well-formed log
            assert r.next_valid_record(buf[:cut], reader.stop.offset) is None


def test_zeros_and_garbage_after_records_are_a_stop_with_nothing_valid_after() -> None:
    buf = log_of([r.Touch(1, 1.0, 2.0)])
    for tail in (bytes(4096), b"\xff" * 100, bytes(range(256))):
        got, reader = decode_all(buf + tail)
        assert len(got) == 1 and reader.stop is not None and reader.stop.offset == len(buf)
        assert r.next_valid_record(buf + tail, len(buf)) is None


def test_a_valid_record_after_a_bad_one_is_found() -> None:
    a = r.encode_touch(1, 1.0, 2.0)
    b = r.encode_destroy(2)
    bad = bytearray(r.encode_header(1, 0) + a + b)
    bad[r.HEADER_SIZE + 12] ^= 0x40  # inside a's payload
    _, reader = decode_all(bytes(bad))
    assert reader.stop == r.Stop(r.HEADER_SIZE, "checksum mismatch")
    assert r.next_valid_record(bytes(bad), r.HEADER_SIZE) == r.HEADER_SIZE + len(a)


def frame(op: int, sid: int, payload: bytes) -> bytes:
    body = struct.pack("<BII", op, sid, len(payload)) + payload
    return body + struct.pack("<I", r.crc32c(body))


def test_huge_length_is_a_stop_not_an_allocation() -> None:
    body = struct.pack("<BII", 3, 1, 0xFFFFFFFF)
    buf = r.encode_header(1, 0) + body + struct.pack("<I", r.crc32c(body))
    got, reader = decode_all(buf)
    assert got == [] and reader.stop is not None and "runs past" in reader.stop.reason


@pytest.mark.parametrize(
    ("payload", "op", "error", "words"),
    [
        (b"\x00\xff\xff\xff\xff", 3, walsess.CorruptionError, "cannot fit"),  # count too big
        (bytes.fromhex("00 01000000 00 0200 00000000 fffe"), 3, walsess.CorruptionError, "UTF-8"),
        (bytes.fromhex("00 01000000 07 0100 00000000 61"), 3, walsess.CorruptionError, "kind 7"),
        (bytes.fromhex("00 01000000 01 0100 01000000 61 62"), 3, walsess.CorruptionError, "delete"),
        (bytes.fromhex("00 01000000 00 0100 05000000 61 62"), 3, walsess.CorruptionError, "add up"),
        (bytes.fromhex("00 00000000 00"), 3, walsess.CorruptionError, "add up"),
        (bytes.fromhex("00 0100"), 3, walsess.CorruptionError, "runs past"),
        (b"\x04\x00\x00\x00\x00", 3, walsess.FormatError, "flags"),
        (b"", 9, walsess.FormatError, "unknown record op"),
        (b"\x00", 4, walsess.CorruptionError, "runs past"),
    ],
)
def test_checksum_valid_but_malformed_records_raise(
    payload: bytes, op: int, error: type[Exception], words: str
) -> None:
    buf = r.encode_header(1, 0) + frame(op, 1, payload)
    with pytest.raises(error, match=words) as info:
        decode_all(buf)
    assert isinstance(info.value, walsess.FileError)
    assert r.HEADER_SIZE <= (info.value.offset or 0) < len(buf)


def test_value_over_the_readers_limit_is_a_limit_error() -> None:
    buf = log_of([r.Modify(1, False, (("k", b"x" * 100),))])
    with pytest.raises(walsess.LimitError, match="max_value_bytes=99"):
        decode_all(buf, max_value=99)
    assert len(decode_all(buf, max_value=100)[0]) == 1


def test_header_checks() -> None:
    good = r.encode_header(7, 3)
    assert r.decode_header(good) == r.Header(1, 7, 3)
    with pytest.raises(walsess.FormatError, match="not a walsess log"):
        r.decode_header(b"SQLite format 3\x00" + bytes(16))
    future = struct.pack("<8sHHQQ", r.LOG_MAGIC, 99, 0, 1, 0)
    with pytest.raises(walsess.FormatError, match="version 99") as info:
        r.decode_header(future + struct.pack("<I", r.crc32c(future)))
    assert info.value.offset == 8
    flipped = bytearray(good)
    flipped[15] ^= 1
    with pytest.raises(walsess.CorruptionError, match="header checksum"):
        r.decode_header(bytes(flipped))
    with pytest.raises(walsess.CorruptionError):
        r.decode_header(good[:20])


def test_key_bytes_validation() -> None:
    assert r.key_bytes("ключ") == "ключ".encode()
    assert len(r.key_bytes("k" * 65535)) == 65535
    for bad in (b"k", 1, None, "k" * 65536, "\udc80"):
        with pytest.raises(walsess.InvalidKey):
            r.key_bytes(bad)


def test_encode_set_equals_general_modify() -> None:
    assert r.encode_set(5, "key", b"[1]") == r.encode_modify(5, False, [(b"key", b"[1]")])
    assert r.encode_set(5, "ключ", b"") == r.encode_modify(5, False, [("ключ".encode(), b"")])
    for bad in (b"k", 1, "k" * 65536):
        with pytest.raises(walsess.InvalidKey):
            r.encode_set(1, bad, b"1")  # type: ignore[arg-type]


def test_infinity_survives() -> None:
    rec = r.Create(1, bytes(32), 0.0, 1.0, 1.0, math.inf, None, None, ())
    assert decode_all(log_of([rec]))[0] == [rec]
