"""docs/FORMAT.md's hex example must decode, with the library, to what the doc says."""

from __future__ import annotations

import math
import re
from pathlib import Path

from walsess import record as r
from walsess import tokens

DOC = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def example_bytes(kind: str = "hex") -> bytes:
    text = DOC.read_text()
    block = re.search(rf"```{kind}\n(.*?)```", text, re.S)
    assert block is not None, f"FORMAT.md has no ```{kind} block"
    out = bytearray()
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        offset, _, data = line.partition(":")
        assert int(offset, 16) == len(out), f"offset column wrong at {line!r}"
        out += bytes.fromhex(data)
    return bytes(out)


def test_example_decodes_to_the_documented_records() -> None:
    buf = example_bytes()
    header = r.decode_header(buf)
    assert header == r.Header(version=r.FORMAT_VERSION, generation=1, follows=0)
    reader = r.RecordReader(buf)
    records = [rec for _, rec in reader]
    assert reader.stop is None and reader.end == len(buf)
    digest = tokens.digest("example-token-not-a-real-one")
    assert records == [
        r.Create(
            1, digest, 1700000000.0, 1800.0, 1700001800.0, math.inf, "42", None, (("uid", b"42"),)
        ),
        r.Modify(1, False, (("cart", b"[1,2]"),)),
        r.Modify(1, False, (("uid", None),)),
        r.Touch(1, 1700003600.0, 1800.0),
        r.Destroy(1, r.DestroyReason.DESTROYED),
    ]
    # and the library writes exactly these bytes for those records
    assert r.encode_header(1, 0) + b"".join(map(r.encode_record, records)) == buf


def test_documented_crc_check_value_and_residue() -> None:
    import struct

    assert r.crc32c(b"123456789") == 0xE3069283
    for rec in (r.encode_touch(1, 2.0, 3.0), r.encode_set(9, "k", b"[1]"), r.encode_header(1, 0)):
        body, stored = rec[:-4], struct.unpack("<I", rec[-4:])[0]
        assert stored == r.crc32c(body)
        assert r.crc32c(rec) == 0x48674BC7  # the residue the doc promises


def test_doc_op_numbers_match_the_code() -> None:
    text = DOC.read_text()
    for op in r.Op:
        assert re.search(rf"^\| {op.value} \| {op.name} \|", text, re.M), op


def test_snapshot_example_loads(tmp_path: Path) -> None:
    from walsess.fileio import OS
    from walsess.snapshot import load_snapshot, snapshot_name
    from walsess.table import SessionTable

    buf = example_bytes("hex-snapshot")
    assert r.decode_header(buf, r.SNAPSHOT_MAGIC) == r.Header(r.SNAPSHOT_VERSION, 2, 0)
    path = tmp_path / snapshot_name(2)
    path.write_bytes(buf)
    table = SessionTable()
    table.begin_bulk()
    assert load_snapshot(str(path), OS, table, 1 << 20) == 1
    table.end_bulk()
    st = table.find(tokens.digest("example-token-not-a-real-one"))
    assert st is not None and st.sid == 1 and st.user == "42" and st.meta is None
    assert st.packed is not None  # not decoded at open
    assert st.data == {"cart": b"[1,2]"} and st.idle_deadline == 1700003600.0
    assert (st.created_at, st.ttl, st.hard_deadline) == (1700000000.0, 1800.0, math.inf)
    # and the library writes exactly these bytes for that session
    block = r.encode_block([1], [st.digest], [st.created_at], [st.ttl], [st.idle_deadline],
                           [st.hard_deadline], [st.user], [st.meta], [st.items()])  # fmt: skip
    assert r.encode_header(2, 0, r.SNAPSHOT_MAGIC) + block + r.encode_end(1) == buf
