"""Opening costs time linear in the bytes and memory a small multiple of them,
whatever the bytes (issue 10, defect 4; docs/FORMAT.md, "Bounds").

Work is measured, not timed: the CRC routine the reader calls is replaced by
a counting one, so the figures do not depend on the machine or its load.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import walsess
from walsess import record as r

#: The tail of issue 10: every offset a candidate, frames reaching 64 KiB ahead.
CRAFTED = b"\x00\x00\x00\x01"


class CrcMeter:
    """Counts the calls and bytes that go through ``walsess.record._crc_c``."""

    def __init__(self, real: Callable[[Any, int, Any], int]) -> None:
        self.real = real
        self.calls = 0
        self.bytes = 0

    def __call__(self, data: Any, state: int, table: Any) -> int:
        self.calls += 1
        self.bytes += len(data)
        return self.real(data, state, table)


@pytest.fixture
def meter(monkeypatch: pytest.MonkeyPatch) -> Iterator[CrcMeter]:
    m = CrcMeter(r._crc_c)
    monkeypatch.setattr(r, "_crc_c", m)
    yield m


def newest_log(directory: str) -> str:
    return os.path.join(directory, max(f for f in os.listdir(directory) if f.endswith(".log")))


def store_with_tail(directory: str, tail: bytes) -> tuple[str, int]:
    """A store holding one session whose newest log ends in *tail*; (log, tail offset)."""
    with walsess.open(directory) as s:
        s.create({"a": 1})
    log = newest_log(directory)
    size = os.path.getsize(log)
    with open(log, "ab") as f:
        f.write(tail)
    return log, size


def open_work(directory: str, meter: CrcMeter) -> tuple[int, int]:
    meter.calls = meter.bytes = 0
    with walsess.open(directory) as s:
        assert s.recovery.cuts, "the crafted tail holds no valid record: it is cut"
        assert len(s) == 1
    return meter.calls, meter.bytes


def test_crafted_tail_open_work_is_linear(tmp_path: Path, meter: CrcMeter) -> None:
    """Regression: 128 KiB of `00 00 00 01` cost 2 s, 512 KiB 15 s (quadratic)."""
    small, large = 16 << 10, 128 << 10  # x8
    store_with_tail(str(tmp_path / "warm"), CRAFTED * 64)
    open_work(str(tmp_path / "warm"), meter)  # one-off tables, outside the figures
    store_with_tail(str(tmp_path / "s"), CRAFTED * (small // 4))
    store_with_tail(str(tmp_path / "l"), CRAFTED * (large // 4))
    calls_s, bytes_s = open_work(str(tmp_path / "s"), meter)
    calls_l, bytes_l = open_work(str(tmp_path / "l"), meter)
    # Eight times the bytes: at most twice eight times the work (quadratic is
    # 64 times; not exactly 8 here because the 64 KiB frames of this pattern
    # fit in the larger tail only).
    assert bytes_l <= 16 * bytes_s, (bytes_s, bytes_l)
    assert calls_l <= 16 * calls_s, (calls_s, calls_l)
    # And a constant per byte of tail, whatever the bytes: at most
    # _SHORT_FRAME + 2 * _BLOCK + 255 CRC bytes per candidate offset.
    per_candidate = r._SHORT_FRAME + 2 * r._BLOCK + 255
    assert bytes_l <= per_candidate * large, bytes_l


def test_crafted_tail_check_is_linear(tmp_path: Path, meter: CrcMeter) -> None:
    """`walsess check` classifies the same tail with the same linear search."""
    from walsess.verify import verify_directory

    reports = []
    for name, size in (("s", 16 << 10), ("l", 128 << 10)):
        d = str(tmp_path / name)
        store_with_tail(d, CRAFTED * (size // 4))
        meter.bytes = 0
        reports.append((verify_directory(d), meter.bytes))
    (_, bytes_s), (_, bytes_l) = reports
    assert bytes_l <= 16 * bytes_s, (bytes_s, bytes_l)


def test_bad_record_then_valid_after_crafted_run_is_corruption(tmp_path: Path) -> None:
    """The search still finds a valid record however far behind a crafted run it is."""
    d = str(tmp_path / "s")
    bad = bytearray(r.encode_touch(1, 1.0, 1.0))
    bad[12] ^= 1
    good = r.encode_touch(1, 2.0, 2.0)
    log, at = store_with_tail(d, bytes(bad) + CRAFTED * 4096 + good)
    with pytest.raises(walsess.CorruptionError) as err:
        walsess.open(d)
    assert err.value.path == log and err.value.offset == at
    assert f"a valid record follows at offset {at + len(bad) + 4 * 4096}" in str(err.value)


# -- the search itself, against the obvious quadratic one ---------------------


def reference_next_valid_record(buf: bytes, after: int) -> int | None:
    """Checksum every plausible frame from scratch: the definition, in O(n^2)."""
    for pos in range(max(after + 1, 0), len(buf) - r.RECORD_OVERHEAD + 1):
        n = int.from_bytes(buf[pos + 5 : pos + 9], "little")
        total = r.RECORD_OVERHEAD + n
        if buf[pos] > 5 or buf[pos + 1 : pos + 9] == bytes(8) or n > r.MAX_PAYLOAD_BYTES:
            continue
        if pos + total <= len(buf) and r.crc32c(buf[pos : pos + total]) == 0x48674BC7:
            return pos
    return None


def frames() -> Any:
    # Lengths on both sides of _SHORT_FRAME and of the 256-byte table step, so
    # that both the direct and the algebraic check are exercised.
    lengths = st.sampled_from([0, 1, 16, 200, 243, 244, 255, 256, 300, 1000, 4099, 70_000])
    return st.builds(
        lambda op, sid, n, seed: r._frame(op, sid, (seed * (n // max(len(seed), 1) + 1))[:n]),
        st.integers(0, 5),
        st.integers(0, 2**32 - 1),
        lengths,
        st.binary(min_size=1, max_size=8),
    )


pieces = st.one_of(
    frames(),
    st.binary(max_size=300),
    st.integers(0, 600).map(lambda k: CRAFTED * k),
    st.integers(1, 600).map(bytes),
)


@settings(max_examples=300)
@given(st.lists(pieces, max_size=5), st.integers(0, 2**20), st.data())
def test_next_valid_record_matches_the_definition(parts: list[bytes], flip: int, data: Any) -> None:
    buf = bytearray(b"".join(parts))
    if buf and data.draw(st.booleans()):
        buf[flip % len(buf)] ^= 1 << (flip % 8)
    after = data.draw(st.integers(-1, len(buf)))
    assert r.next_valid_record(bytes(buf), after) == reference_next_valid_record(bytes(buf), after)


ZEROS = memoryview(bytes(1 << 22))


@settings(max_examples=60)
@given(st.integers(0, len(ZEROS)), st.integers(0, 2**32 - 1))
def test_advance_is_feeding_zero_bytes(length: int, register: int) -> None:
    """M^L by tables is the C routine over L zero bytes."""
    assert r._advance(register, length) == r._crc_c(ZEROS[:length], register, r._crc_table)


@settings(max_examples=60)
@given(st.integers(0, 2**30 + r.RECORD_OVERHEAD), st.integers(0, 2**30), st.integers(0, 2**32 - 1))
def test_advance_composes(a: int, b: int, register: int) -> None:
    """M^a M^b = M^(a+b) up to the longest frame: the high table digits are right too."""
    assert r._advance(r._advance(register, a), b) == r._advance(register, a + b)


# -- memory -----------------------------------------------------------------


def write_log(directory: Path, body: bytes) -> str:
    directory.mkdir(mode=0o700)
    path = str(directory / f"{1:016x}.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(r.encode_header(1, 0) + body)
    return path


def peak_opening(directory: str, read: int | None = None) -> tuple[int, BaseException | None]:
    """Peak memory and error of opening the store (and reading the data of
    session *read*, found by SID, if given)."""
    tracemalloc.start()
    err: BaseException | None = None
    try:
        with walsess.open(directory, clock=lambda: 1.0) as store:
            if read is not None:
                len(store._table.state(read).data)  # type: ignore[union-attr]
    except walsess.WalsessError as exc:
        err = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, err


def many_items_create(n: int) -> bytes:
    keys = [b"%05x" % i for i in range(n)]
    return r.encode_create(1, bytes(32), 1.0, 1e9, 2e9, float("inf"), None, None, keys, [b"1"] * n)


def test_item_count_above_max_keys_is_refused_before_allocating(tmp_path: Path) -> None:
    """Regression: 3 million empty items in one CREATE cost 320 MB to open.

    Opening keeps the item block packed, so it allocates nothing for the
    items; the first read checks the count before unpacking any length."""
    n = 200_000
    body = r.encode_create(1, bytes(32), 1.0, 1e9, 2e9, float("inf"), None, None,
                           [b""] * n, [b""] * n)  # fmt: skip
    path = write_log(tmp_path / "s", body)
    size = os.path.getsize(path)
    peak, err = peak_opening(str(tmp_path / "s"), read=1)
    assert isinstance(err, walsess.LimitError), err
    assert err.path == path and err.offset == r.HEADER_SIZE + 9 + r._CREATE_FIXED.size
    assert str(r.MAX_KEYS) in str(err)
    assert peak <= 2 * size + (1 << 20), (peak, size)


def test_modify_above_max_keys_is_refused(tmp_path: Path) -> None:
    n = r.MAX_KEYS + 1
    create = r.encode_create(1, bytes(32), 1.0, 1e9, 2e9, float("inf"), None, None, [], [])
    modify = r.encode_modify(1, False, [(b"k", b"1")] * n)
    path = write_log(tmp_path / "s", create + modify)
    size = os.path.getsize(path)
    peak, err = peak_opening(str(tmp_path / "s"))
    assert isinstance(err, walsess.LimitError), err
    assert err.path == path and err.offset == r.HEADER_SIZE + len(create) + 10
    assert peak <= 2 * size + (1 << 20), (peak, size)


def test_max_keys_create_opens_in_proportion(tmp_path: Path) -> None:
    """The largest CREATE a reader accepts: memory a small multiple of the file."""
    body = many_items_create(r.MAX_KEYS)
    path = write_log(tmp_path / "s", body)
    size = os.path.getsize(path)
    peak, err = peak_opening(str(tmp_path / "s"))
    assert err is None
    assert peak <= 40 * size + (1 << 20), (peak, size, peak / size)


@pytest.mark.parametrize("length", [2**20, 2**30, 2**32 - 1])
def test_huge_length_frame_costs_the_file(tmp_path: Path, length: int) -> None:
    """A length field claiming up to 4 GiB, followed by 64 KiB: memory ~ the file."""
    head = r.encode_touch(1, 1.0, 1.0)
    frame = bytearray(r.encode_touch(1, 1.0, 1.0))
    frame[5:9] = length.to_bytes(4, "little")
    path = write_log(tmp_path / "s", head + bytes(frame) + CRAFTED * (1 << 14))
    size = os.path.getsize(path)
    peak, err = peak_opening(str(tmp_path / "s"))
    assert err is None  # a torn tail: cut
    assert peak <= 2 * size + (1 << 20), (peak, size)


def test_crafted_tail_memory(tmp_path: Path) -> None:
    path, _ = store_with_tail(str(tmp_path / "s"), CRAFTED * (1 << 14))
    size = os.path.getsize(path)
    peak, err = peak_opening(str(tmp_path / "s"))
    assert err is None
    assert peak <= 2 * size + (1 << 20), (peak, size)
