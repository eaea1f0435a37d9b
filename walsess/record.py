"""The change-log format as pure functions over bytes: no files, no clocks, no locks.

This module is the executable form of docs/FORMAT.md. Everything that reads
or writes walsess bytes goes through it, so the spec and the code cannot
drift apart (a test decodes the hex example in FORMAT.md with it).

Layout (little-endian)::

    file   := header record*
    header := magic[8] version:u16 flags:u16 generation:u64 follows:u64 crc:u32   (32 bytes)
    record := op:u8 sid:u32 length:u32 payload[length] crc:u32                    (13 + length)

``crc`` is CRC-32C (Castagnoli) over every byte of the record before it, so
the length field is covered too.

Decoding trusts nothing: every length is checked against the bytes that
remain before anything is sliced, and a record whose checksum fails is
reported as a :class:`Stop`, for the caller to classify as a torn tail or
as corruption with :func:`next_valid_record`.

Example::

    >>> rec = encode_touch(7, idle_deadline=1700000000.0, ttl=1800.0)
    >>> reader = RecordReader(encode_header(1, 0) + rec)
    >>> [r for _, r in reader]
    [Touch(sid=7, idle_deadline=1700000000.0, ttl=1800.0)]
"""

from __future__ import annotations

import importlib
import re
import struct
import sys
import warnings
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import IntEnum
from itertools import accumulate
from typing import Any, NamedTuple, Union

import crcmod.predefined

from .errors import CorruptionError, FileError, FormatError, InvalidKey, LimitError

__all__ = [
    "BLOCK_SESSIONS",
    "CRC_C_EXTENSION",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "LOG_MAGIC",
    "MAX_BLOCK_SESSIONS",
    "MAX_KEYS",
    "MAX_KEY_BYTES",
    "MAX_PAYLOAD_BYTES",
    "RECORD_OVERHEAD",
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "SNAPSHOT_VERSIONS",
    "Block",
    "ChangeId",
    "Create",
    "Destroy",
    "DestroyReason",
    "End",
    "Header",
    "Modify",
    "Op",
    "Record",
    "RecordReader",
    "SessionRecord",
    "Stop",
    "Touch",
    "block_creates",
    "block_items",
    "crc32c",
    "decode_header",
    "decode_item_block",
    "encode_block",
    "encode_change_id",
    "encode_create",
    "encode_destroy",
    "encode_end",
    "encode_header",
    "encode_modify",
    "encode_record",
    "encode_set",
    "encode_touch",
    "item_block",
    "key_bytes",
    "keys_bytes",
    "next_valid_record",
]

LOG_MAGIC = b"WSSLOG\r\n"
SNAPSHOT_MAGIC = b"WSSSNP\r\n"
#: Version of the log format (its header and records).
FORMAT_VERSION = 1
#: Version of the snapshot format written: 2 is columnar BLOCK records; 1 (one
#: CREATE record per session) is still read.
SNAPSHOT_VERSION = 2
#: Snapshot versions this walsess reads.
SNAPSHOT_VERSIONS = (1, 2)

HEADER_SIZE = 32
_HEADER = struct.Struct("<8sHHQQ")  # + u32 crc = 32 bytes
_RECORD_HEAD = struct.Struct("<BII")  # op, sid, payload length
_HEAD_SIZE = _RECORD_HEAD.size  # 9
RECORD_OVERHEAD = _HEAD_SIZE + 4

MAX_KEY_BYTES = 0xFFFF
#: Most keys one session may hold, and most items one record's item block may
#: carry (a CREATE's keys, a MODIFY's changes). Decoding one item costs about
#: 100 bytes of Python objects, so this bounds what a single record can make a
#: reader allocate (about 7 MB) before it is applied; a web session with more
#: keys than a u16 can count is a bug, not a workload.
MAX_KEYS = 0xFFFF
#: Hard limit of the format on one record's payload; a store's own limit is lower.
MAX_PAYLOAD_BYTES = 1 << 30
MAX_SID = 0xFFFF_FFFF

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_CREATE_FIXED = struct.Struct("<32sddddB")  # digest, created, ttl, idle, hard, flags
_TOUCH = struct.Struct("<BIIdd")
_DESTROY = struct.Struct("<BIIB")
_CHANGE_ID = struct.Struct("<BII32s")
_F64X2 = struct.Struct("<dd")
_ONE_SET_SHAPE = b"\x00\x01\x00\x00\x00\x00"
# The same head read as integers, so replay builds no bytes object to compare:
# flags=0 and the count's low byte (1) make 256, the rest of the count and
# kind=0 make 0.
_ONE_SET_HEAD = struct.Struct("<BIIHIHI")

_CREATE_HAS_USER = 0x01
_CREATE_HAS_META = 0x02
_MODIFY_CLEAR = 0x01
_KIND_SET = 0
_KIND_DELETE = 1
DIGEST_SIZE = 32

_crc_fun = crcmod.predefined.mkPredefinedCrcFun("crc-32c")
#: True when crcmod's C extension computes checksums (the pure-Python fallback
#: is about 50 times slower; install a compiler and reinstall crcmod to get it).
CRC_C_EXTENSION: bool = bool(
    getattr(importlib.import_module("crcmod.crcmod"), "_usingExtension", False)
)
if not CRC_C_EXTENSION:  # pragma: no cover - depends on the installation
    warnings.warn("crcmod's C extension is missing: walsess will be slow", stacklevel=2)


# crcmod wraps its C function in a Python closure; calling the C function
# directly saves a Python frame per record, which replay speed notices.
# _crc_c(data, state, table) returns the raw register: xor with 0xffffffff.
def _crc_via_closure(data: bytes | memoryview, crc: int, table: Any) -> int:
    # crcmod's closure computes xorout ^ raw(data, xorout ^ crc): undo both xors.
    return int(_crc_fun(data, crc ^ 0xFFFFFFFF)) ^ 0xFFFFFFFF


_defaults: tuple[Any, ...] = _crc_fun.__defaults__ or ()
_crc_c: Callable[[bytes | memoryview, int, Any], int] = _crc_via_closure
_crc_table: Any = None
if len(_defaults) == 3 and _defaults[0] == 0:
    _crc_table, _crc_c = _defaults[1], _defaults[2]


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli) of *data*. Costs one C call."""
    return _crc_c(data, 0xFFFFFFFF, _crc_table) ^ 0xFFFFFFFF


#: What the raw C CRC routine returns over a whole record (or header) whose
#: trailing CRC field is right: CRC-32C's residue 0x48674bc7, before the final
#: xor. Checking a record is then one call and one comparison.
_RESIDUE_RAW = 0x48674BC7 ^ 0xFFFFFFFF


class Op(IntEnum):
    """Record types. The numbers are part of the format and never change."""

    CREATE = 0
    DESTROY = 1
    CHANGE_ID = 2
    MODIFY = 3
    TOUCH = 4
    END = 5
    BLOCK = 6


class DestroyReason(IntEnum):
    """Why a session was destroyed; stored in DESTROY records for tools and hooks."""

    DESTROYED = 0
    EXPIRED = 1
    REVOKED = 2


class Header(NamedTuple):
    """A log file's header: its generation and the snapshot generation it follows."""

    version: int
    generation: int
    follows: int


class Create(NamedTuple):
    """A session comes into being with all of its state (op 0)."""

    sid: int
    digest: bytes
    created_at: float
    ttl: float
    idle_deadline: float
    hard_deadline: float
    user: str | None
    meta: bytes | None
    items: tuple[tuple[str, bytes], ...]


class Destroy(NamedTuple):
    """A session is gone (op 1)."""

    sid: int
    reason: int


class ChangeId(NamedTuple):
    """A session gets a new token; the old one is dead (op 2)."""

    sid: int
    digest: bytes


class Modify(NamedTuple):
    """Key sets and deletes applied atomically, after clearing all keys if ``clear`` (op 3).

    A change is ``(key, value)`` to set or ``(key, None)`` to delete.
    """

    sid: int
    clear: bool
    changes: tuple[tuple[str, bytes | None], ...]


class Touch(NamedTuple):
    """A session's idle deadline (and idle timeout) moves (op 4)."""

    sid: int
    idle_deadline: float
    ttl: float


class End(NamedTuple):
    """The last record of a snapshot: how many CREATE records precede it (op 5).

    Only valid in snapshot files; a snapshot without it is incomplete.
    """

    sid: int
    sessions: int


class Block:
    """Up to :data:`MAX_BLOCK_SESSIONS` sessions of a version 2 snapshot (op 6),
    kept as the record's payload: one bytes object, columns read from it on
    demand. Session *i* is ``sids[i]``, ``digests[i]`` and so on; each of those
    properties builds its whole column (O(n), for tools and tests), while
    :meth:`session` and :meth:`item` read one session's fields (O(1)).

    Why one object: a loaded store keeps each block until its sessions have
    all been read, and one allocation per block is what the allocator can
    give back to the system afterwards. Session *i*'s item block is
    ``area[ends[i - 1]:ends[i]]`` (from 0 for the first); ``area`` starts at
    offset ``area_at`` of the record, which errors found when an item block
    is decoded name.
    """

    __slots__ = ("area_at", "area_start", "meta_table", "n", "payload", "user_table")

    def __init__(
        self,
        n: int,
        payload: bytes,
        area_start: int,
        user_table: list[str | None],
        meta_table: list[bytes | None],
    ) -> None:
        self.n = n
        #: The record's payload, checked by :func:`decode_record`.
        self.payload = payload
        #: Where the item area starts in ``payload``.
        self.area_start = area_start
        self.area_at = area_start + _HEAD_SIZE
        #: Owners and metadata by reference number (0: none).
        self.user_table = user_table
        self.meta_table = meta_table

    def __repr__(self) -> str:
        return f"Block(n={self.n}, {len(self.payload)} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Block) and other.payload == self.payload

    __hash__ = None  # type: ignore[assignment]

    def _column(self, code: str, column: int, width: int) -> array[Any]:
        at = column * self.n
        return _read_column(code, memoryview(self.payload)[at : at + width * self.n])

    @property
    def sids(self) -> list[int]:
        return self._column("I", 0, 4).tolist()

    @property
    def digest_column(self) -> bytes:
        """The digests, 32 bytes each, as one bytes object."""
        return self.payload[4 * self.n : _FLOATS_AT * self.n]

    @property
    def digests(self) -> list[bytes]:
        return list(_digests(self.n, f"{DIGEST_SIZE}s").unpack_from(self.payload, 4 * self.n))

    def digest_prefixes(self, size: int) -> list[bytes]:
        """The first *size* bytes of every digest (ref keys), in one C call."""
        each = f"{size}s{DIGEST_SIZE - size}x"
        return list(_digests(self.n, each).unpack_from(self.payload, 4 * self.n))

    @property
    def created_at(self) -> array[float]:
        return self._column("d", _FLOATS_AT, 8)

    @property
    def ttl(self) -> array[float]:
        return self._column("d", _FLOATS_AT + 8, 8)

    @property
    def idle_deadline(self) -> array[float]:
        return self._column("d", _FLOATS_AT + 16, 8)

    @property
    def hard_deadline(self) -> array[float]:
        return self._column("d", _FLOATS_AT + 24, 8)

    @property
    def users(self) -> list[str | None]:
        return list(map(self.user_table.__getitem__, self._column("I", _REFS_AT, 4)))

    @property
    def metas(self) -> list[bytes | None]:
        return list(map(self.meta_table.__getitem__, self._column("I", _REFS_AT + 4, 4)))

    @property
    def ends(self) -> array[int]:
        return self._column("I", _ENDS_AT, 4)

    @property
    def area(self) -> bytes:
        return self.payload[self.area_start :]

    def session(
        self, i: int
    ) -> tuple[int, bytes, float, float, float, float, str | None, bytes | None]:
        """Session *i*'s fields but its items: sid, digest, created_at, ttl,
        idle and hard deadlines, user, meta. A few C calls."""
        n, payload = self.n, self.payload
        at = _FLOATS_AT * n + 8 * i
        return (
            _unpack_u32(payload, 4 * i)[0],
            payload[4 * n + DIGEST_SIZE * i : 4 * n + DIGEST_SIZE * (i + 1)],
            _unpack_f64(payload, at)[0],
            _unpack_f64(payload, at + 8 * n)[0],
            _unpack_f64(payload, at + 16 * n)[0],
            _unpack_f64(payload, at + 24 * n)[0],
            self.user_table[_unpack_u32(payload, _REFS_AT * n + 4 * i)[0]],
            self.meta_table[_unpack_u32(payload, (_REFS_AT + 4) * n + 4 * i)[0]],
        )

    def item_start(self, i: int) -> int:
        """Where session *i*'s item block starts in :attr:`area`."""
        return _unpack_u32(self.payload, _ENDS_AT * self.n + 4 * (i - 1))[0] if i else 0

    def item(self, i: int) -> bytes:
        """Session *i*'s item block, as it is in the record (not decoded)."""
        end = _unpack_u32(self.payload, _ENDS_AT * self.n + 4 * i)[0]
        area = self.area_start
        return self.payload[area + self.item_start(i) : area + end]


# Column offsets of a BLOCK payload, per session (docs/FORMAT.md): SIDs at 0,
# digests at 4n, the four f64 columns at 36n, owner and metadata references at
# 68n and 72n, item ends at 76n.
_FLOATS_AT = 4 + DIGEST_SIZE
_REFS_AT = _FLOATS_AT + 4 * 8
_ENDS_AT = _REFS_AT + 8


def block_items(block: Block) -> list[bytes]:
    """Every session's item block, in order."""
    return list(map(block.item, range(block.n)))


#: A record that addresses one session (or closes a snapshot): everything but a BLOCK.
SessionRecord = Union[Create, Destroy, ChangeId, Modify, Touch, End]  # noqa: UP007 - a runtime alias on 3.10
Record = Union[SessionRecord, Block]  # noqa: UP007


class Stop(NamedTuple):
    """Where a reader stopped before the end of its buffer, and why.

    A stop is either a torn tail (a crash artifact) or corruption; only the
    bytes after it can tell which (see :func:`next_valid_record`).
    """

    offset: int
    reason: str


# -- encoding -------------------------------------------------------------------


def key_bytes(key: object) -> bytes:
    """The UTF-8 bytes of a data key, or :class:`InvalidKey` if it cannot be stored."""
    if type(key) is not str and not isinstance(key, str):
        raise InvalidKey(f"session keys must be str, not {type(key).__name__}")
    try:
        kb = key.encode()
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"session key is not valid UTF-8: {exc}") from None
    if len(kb) > MAX_KEY_BYTES:
        raise InvalidKey(f"session key is {len(kb)} bytes; the limit is {MAX_KEY_BYTES}")
    return kb


def _seal(body: bytes) -> bytes:
    return body + _U32.pack(crc32c(body))


def encode_header(
    generation: int, follows: int, magic: bytes = LOG_MAGIC, version: int | None = None
) -> bytes:
    """The 32-byte header of a log file of *generation* that follows snapshot *follows*
    (or, with ``magic=SNAPSHOT_MAGIC``, of snapshot *generation*; *follows* is then 0).
    *version* defaults to the version this walsess writes for that kind of file."""
    if version is None:
        version = SNAPSHOT_VERSION if magic == SNAPSHOT_MAGIC else FORMAT_VERSION
    head = _HEADER.pack(magic, version, 0, generation, follows)
    return _seal(head)


def encode_end(count: int) -> bytes:
    """The END record that closes a snapshot of *count* sessions."""
    return _frame(Op.END, 0, _U64.pack(count))


def _frame(op: int, sid: int, payload: bytes) -> bytes:
    return _seal(_RECORD_HEAD.pack(op, sid, len(payload)) + payload)


def encode_create(
    sid: int,
    digest: bytes,
    created_at: float,
    ttl: float,
    idle_deadline: float,
    hard_deadline: float,
    user: str | None,
    meta: bytes | None,
    keys: Sequence[bytes],
    values: Sequence[bytes],
) -> bytes:
    """A CREATE record. *keys* are UTF-8 keys, *values* their encoded values, in order.

    Cost: a handful of C calls whatever the number of keys (the item block is
    columnar, so its lengths pack in one struct call).
    """
    if len(digest) != DIGEST_SIZE:
        raise ValueError("digest must be 32 bytes")
    flags = (_CREATE_HAS_USER if user is not None else 0) | (
        _CREATE_HAS_META if meta is not None else 0
    )
    head = _CREATE_FIXED.pack(digest, created_at, ttl, idle_deadline, hard_deadline, flags)
    if flags:
        parts = [head]
        if user is not None:
            ub = user.encode()
            parts += (_U16.pack(len(ub)), ub)
        if meta is not None:
            parts += (_U32.pack(len(meta)), meta)
        head = b"".join(parts)
    return _frame(Op.CREATE, sid, head + _item_block(keys, values))


def _item_lengths(n: int, kinds: bool, counted: bool = False) -> struct.Struct:
    """The struct of an item block's length arrays: [kinds u8 x n] klens u16 x n,
    vlens u32 x n; *counted* puts the block's count (u32) in front, as the encoder writes."""
    key = (n, kinds, counted)
    st = _ITEM_STRUCTS.get(key)
    if st is None:
        fmt = f"{n}B{n}H{n}I" if kinds else f"{n}H{n}I"
        st = struct.Struct(("<I" if counted else "<") + fmt)
        if len(_ITEM_STRUCTS) < 512:
            _ITEM_STRUCTS[key] = st
    return st


_ITEM_STRUCTS: dict[tuple[int, bool, bool], struct.Struct] = {}


def _item_block(keys: Sequence[bytes], values: Sequence[bytes]) -> bytes:
    """An item block of sets: count, the length arrays, then all keys, then all values."""
    n = len(keys)
    lengths = _item_lengths(n, False, True).pack(n, *map(len, keys), *map(len, values))
    return b"".join((lengths, *keys, *values))


def _change_block(keys: Sequence[bytes], values: Sequence[bytes | None]) -> bytes:
    """An item block with kinds: a value of None is a delete (length 0, no bytes)."""
    n = len(keys)
    kinds = [_KIND_SET if v is not None else _KIND_DELETE for v in values]
    vlens = [0 if v is None else len(v) for v in values]
    lengths = _item_lengths(n, True, True).pack(n, *kinds, *map(len, keys), *vlens)
    return b"".join((lengths, *keys, *[v for v in values if v is not None]))


def encode_destroy(sid: int, reason: int = DestroyReason.DESTROYED) -> bytes:
    """A DESTROY record."""
    return _seal(_DESTROY.pack(Op.DESTROY, sid, 1, reason))


def encode_change_id(sid: int, digest: bytes) -> bytes:
    """A CHANGE_ID record carrying the digest of the session's new token."""
    if len(digest) != DIGEST_SIZE:
        raise ValueError("digest must be 32 bytes")
    return _seal(_CHANGE_ID.pack(Op.CHANGE_ID, sid, DIGEST_SIZE, digest))


def encode_touch(sid: int, idle_deadline: float, ttl: float) -> bytes:
    """A TOUCH record: the new absolute idle deadline and idle timeout."""
    return _seal(_TOUCH.pack(Op.TOUCH, sid, 16, idle_deadline, ttl))


_OP_MODIFY = 3
# Per-key cache for encode_set and keys_bytes: validating and encoding a key,
# and building a struct for its length, happen once per distinct key rather
# than per write.
_SET_PACKERS: dict[str, tuple[bytes, Callable[..., bytes]]] = {}
_SET_PACKERS_MAX = 4096


def _set_packer(key: object) -> tuple[bytes, Callable[..., bytes]]:
    kb = key_bytes(key)
    packer = struct.Struct(f"<BII6sHI{len(kb)}s").pack
    if type(key) is str:
        if len(_SET_PACKERS) >= _SET_PACKERS_MAX:
            _SET_PACKERS.clear()
        _SET_PACKERS[key] = (kb, packer)
    return kb, packer


def keys_bytes(keys: Iterable[object]) -> list[bytes]:
    """The UTF-8 bytes of each of *keys*, validated like :func:`key_bytes`
    (which raises :class:`InvalidKey`); a dict probe per key already seen."""
    get = _SET_PACKERS.get
    out = []
    for key in keys:
        entry = get(key) if type(key) is str else None
        out.append((entry or _set_packer(key))[0])
    return out


def encode_set(sid: int, key: str, value: bytes) -> bytes:
    """A MODIFY record that sets one key: the hot path.

    Validates *key* like :func:`key_bytes` (raising :class:`InvalidKey`), then
    builds the record with one struct call and one CRC call. The bytes equal
    ``encode_modify(sid, False, [(key_bytes(key), value)])``.
    """
    entry = _SET_PACKERS.get(key) if type(key) is str else None
    kb, pack = entry or _set_packer(key)
    klen = len(kb)
    vlen = len(value)
    body = pack(_OP_MODIFY, sid, 12 + klen + vlen, _ONE_SET_SHAPE, klen, vlen, kb) + value
    return body + _U32.pack(_crc_c(body, 0xFFFFFFFF, _crc_table) ^ 0xFFFFFFFF)


def encode_modify(sid: int, clear: bool, changes: Iterable[tuple[bytes, bytes | None]]) -> bytes:
    """A MODIFY record: optionally clear, then each (key, value) set or (key, None) delete."""
    items = list(changes)
    flags = bytes((_MODIFY_CLEAR if clear else 0,))
    block = _change_block([k for k, _ in items], [v for _, v in items])
    return _frame(Op.MODIFY, sid, flags + block)


#: Most sessions one BLOCK record holds. A compaction writes blocks of
#: :data:`BLOCK_SESSIONS`; a reader refuses more than this before allocating.
MAX_BLOCK_SESSIONS = 0xFFFF
#: Sessions per block written by compaction: big enough that per-block costs
#: vanish, small enough that a block is a few hundred KiB.
BLOCK_SESSIONS = 4096
_BLOCK_FIXED = 4 + DIGEST_SIZE + 4 * 8 + 3 * 4  # bytes per session before the tables
_LITTLE = sys.byteorder == "little"


def _column(code: str, values: Iterable[Any]) -> bytes:
    """*values* as a little-endian array of *code* (``I`` u32, ``H`` u16, ``d`` f64)."""
    arr = array(code, values)
    if not _LITTLE:  # pragma: no cover - no big-endian machine to test on
        arr.byteswap()
    return arr.tobytes()


def _read_column(code: str, buf: bytes | memoryview) -> array[Any]:
    """The little-endian array of *code* in *buf*: one C call."""
    arr = array(code)
    arr.frombytes(buf)
    if not _LITTLE:  # pragma: no cover
        arr.byteswap()
    return arr


def _table(values: Sequence[bytes | None], width: str) -> tuple[list[int], bytes]:
    """References (0: none, k: the k-th distinct value) and the table that holds
    each distinct value once: count u32, lengths (*width*), bytes."""
    index: dict[bytes, int] = {}
    refs = []
    for v in values:
        if v is None:
            refs.append(0)
        else:
            k = index.get(v)
            if k is None:
                k = index[v] = len(index) + 1
            refs.append(k)
    distinct = list(index)
    head = _U32.pack(len(distinct)) + _column(width, map(len, distinct))
    return refs, b"".join((head, *distinct))


def encode_block(
    sids: Sequence[int],
    digests: Sequence[bytes],
    created_at: Sequence[float],
    ttl: Sequence[float],
    idle_deadline: Sequence[float],
    hard_deadline: Sequence[float],
    users: Sequence[str | None],
    metas: Sequence[bytes | None],
    items: Sequence[bytes],
) -> bytes:
    """A BLOCK record of ``len(sids)`` sessions, column by column (docs/FORMAT.md).

    *items* are item blocks as :func:`item_block` makes them (or as a
    :class:`Block` or CREATE record carried them: they are copied, not decoded).
    Users and metadata are stored once per block and referred to by number.
    Cost: O(n) C calls plus one Python step per session for the tables.
    """
    n = len(sids)
    if not 0 < n <= MAX_BLOCK_SESSIONS:
        raise ValueError(f"a block holds 1..{MAX_BLOCK_SESSIONS} sessions, not {n}")
    columns = (digests, created_at, ttl, idle_deadline, hard_deadline, users, metas, items)
    if any(len(c) != n for c in columns) or any(len(d) != DIGEST_SIZE for d in digests):
        raise ValueError("every column must hold one 32-byte digest or value per session")
    user_refs, user_table = _table([None if u is None else u.encode() for u in users], "H")
    meta_refs, meta_table = _table(metas, "I")
    payload = b"".join(
        (
            _column("I", sids),
            b"".join(digests),
            _column("d", created_at),
            _column("d", ttl),
            _column("d", idle_deadline),
            _column("d", hard_deadline),
            _column("I", user_refs),
            _column("I", meta_refs),
            _column("I", accumulate(map(len, items))),
            user_table,
            meta_table,
            *items,
        )
    )
    return _frame(Op.BLOCK, n, payload)


def item_block(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An item block of (UTF-8 key, encoded value) pairs, as CREATE and BLOCK
    records carry a session's data: count, lengths, keys, values."""
    pairs = list(items)
    return _item_block([k for k, _ in pairs], [v for _, v in pairs])


def encode_record(record: Record) -> bytes:
    """Any decoded record, encoded again byte for byte."""
    if isinstance(record, Create):
        return encode_create(
            record.sid,
            record.digest,
            record.created_at,
            record.ttl,
            record.idle_deadline,
            record.hard_deadline,
            record.user,
            record.meta,
            [k.encode() for k, _ in record.items],
            [v for _, v in record.items],
        )
    if isinstance(record, Destroy):
        return encode_destroy(record.sid, record.reason)
    if isinstance(record, ChangeId):
        return encode_change_id(record.sid, record.digest)
    if isinstance(record, End):
        return encode_end(record.sessions)
    if isinstance(record, Modify):
        return encode_modify(record.sid, record.clear, [(k.encode(), v) for k, v in record.changes])
    if isinstance(record, Block):
        return encode_block(record.sids, record.digests, record.created_at, record.ttl,
                            record.idle_deadline, record.hard_deadline, record.users,
                            record.metas, block_items(record))  # fmt: skip
    return encode_touch(record.sid, record.idle_deadline, record.ttl)


# -- decoding -------------------------------------------------------------------


def decode_header(buf: bytes | memoryview, magic: bytes = LOG_MAGIC) -> Header:
    """Parse a log (or snapshot) header; :class:`FormatError` or :class:`CorruptionError`."""
    if len(buf) < HEADER_SIZE:
        raise CorruptionError(f"header is {len(buf)} bytes, expected {HEADER_SIZE}", None, 0)
    found, version, _flags, generation, follows = _HEADER.unpack_from(buf, 0)
    if found != magic:
        kind = "log" if magic == LOG_MAGIC else "snapshot"
        raise FormatError(f"not a walsess {kind} (magic {bytes(found)!r})", None, 0)
    (crc,) = _U32.unpack_from(buf, HEADER_SIZE - 4)
    if crc != crc32c(buf[: HEADER_SIZE - 4]):
        raise CorruptionError("header checksum mismatch", None, 0)
    readable = SNAPSHOT_VERSIONS if magic == SNAPSHOT_MAGIC else (FORMAT_VERSION,)
    if version not in readable:
        raise FormatError(
            f"format version {version} is not supported (this walsess reads"
            f" {' and '.join(map(str, readable))}); upgrade walsess",
            None,
            8,
        )
    return Header(version, generation, follows)


_intern = sys.intern
_unpack_u16 = _U16.unpack_from
_unpack_u32 = _U32.unpack_from
_unpack_f64 = struct.Struct("<d").unpack_from


def _malformed(why: str, offset: int) -> CorruptionError:
    return CorruptionError(f"malformed payload: {why}", None, offset)


def _short(offset: int) -> CorruptionError:
    return _malformed("a field runs past the end of the record", offset)


def _decode_key(kb: bytes, offset: int) -> str:
    try:
        return _intern(kb.decode())
    except UnicodeDecodeError:
        raise _malformed("key is not UTF-8", offset) from None


def _too_large(n: int, max_value: int, offset: int) -> LimitError:
    return LimitError(
        f"value of {n} bytes exceeds max_value_bytes={max_value};"
        " reopen with a larger max_value_bytes",
        None,
        offset,
    )


def _decode_items(
    buf: bytes, pos: int, end: int, max_value: int, keys: dict[bytes, str], kinds: bool
) -> list[tuple[str, bytes | None]]:
    """The item block in ``buf[pos:end]`` (it must fill it exactly), bounds-checked.

    One struct call reads every length; their sum must equal the bytes that
    remain, so nothing is sliced or allocated on the word of a bad length.
    """
    if end - pos < 4:
        raise _short(pos)
    n = _unpack_u32(buf, pos)[0]
    pos += 4
    width = 7 if kinds else 6
    if n * width > end - pos:
        raise _malformed(f"count {n} cannot fit in the remaining bytes", pos - 4)
    if n > MAX_KEYS:
        # Checked before the lengths are unpacked: n items cost ~100 bytes each.
        raise LimitError(
            f"record holds {n} items; a session holds at most {MAX_KEYS} keys", None, pos - 4
        )
    lengths = _item_lengths(n, kinds).unpack_from(buf, pos)
    at = pos
    pos += n * width
    if kinds:
        kind_list = lengths[:n]
        lengths = lengths[n:]
        if n and max(kind_list) > _KIND_DELETE:
            raise _malformed(f"unknown change kind {max(kind_list)}", at)
    klens = lengths[:n]
    vlens = lengths[n:]
    if sum(lengths) != end - pos:
        raise _malformed(
            f"item lengths add up to {sum(lengths)} bytes, the record holds {end - pos}", at
        )
    if n and max(vlens) > max_value:
        raise _too_large(max(vlens), max_value, at)
    out: list[tuple[str, bytes | None]] = []
    append = out.append
    vpos = pos + sum(klens)
    for i in range(n):
        k_end = pos + klens[i]
        kb = buf[pos:k_end]
        key = keys.get(kb)
        if key is None:
            key = keys[kb] = _decode_key(kb, pos)
        pos = k_end
        if kinds and kind_list[i] == _KIND_DELETE:
            if vlens[i]:
                raise _malformed("a delete carries a value", at)
            append((key, None))
        else:
            v_end = vpos + vlens[i]
            append((key, buf[vpos:v_end]))
            vpos = v_end
    return out


def decode_item_block(block: bytes, max_value: int = MAX_PAYLOAD_BYTES) -> dict[str, bytes]:
    """The data a session's item block holds, every length and key checked.

    Raises :class:`CorruptionError` or :class:`LimitError` with the offset in
    *block* of what is wrong (callers locate it in their file). Cost: one
    struct call for the lengths, one slice per key and value.
    """
    items = _decode_items(block, 0, len(block), max_value, _KEY_CACHE, False)
    if len(_KEY_CACHE) > 4096:
        _KEY_CACHE.clear()
    data: dict[str, bytes] = dict(items)  # type: ignore[arg-type]
    # Short values repeat across sessions (flags, counters, small enums): one
    # shared bytes object each saves ~40 bytes per value of a decoded session.
    share = _SHORT_VALUES.setdefault
    for key, value in data.items():
        if len(value) <= _SHORT:
            data[key] = share(value, value)
    if len(_SHORT_VALUES) > 65536:
        _SHORT_VALUES.clear()
    return data


_KEY_CACHE: dict[bytes, str] = {}
_SHORT = 8
_SHORT_VALUES: dict[bytes, bytes] = {}


def block_creates(block: Block, max_value: int = MAX_PAYLOAD_BYTES) -> list[Create]:
    """The sessions of *block* as the CREATE records that recreate them, items
    decoded (for tools; loading a store keeps them packed). Errors carry the
    offset in the record."""
    out = []
    for i, items in enumerate(block_items(block)):
        try:
            data = decode_item_block(items, max_value)
        except FileError as exc:
            raise exc.located("", block.area_at + block.item_start(i)) from None
        out.append(Create(*block.session(i), tuple(data.items())))
    return out


def _decode_block(n: int, buf: bytes, start: int, end: int) -> Block:
    """The BLOCK record of *n* sessions whose verified payload is ``buf[start:end]``.

    Every count, length, reference and offset is bounded by the bytes present
    before anything is built; item blocks are sliced out but not decoded.
    """
    if not 0 < n <= MAX_BLOCK_SESSIONS:
        raise _malformed(f"a block of {n} sessions (1..{MAX_BLOCK_SESSIONS} allowed)", start - 8)
    if end - start < n * _BLOCK_FIXED + 8:
        raise _malformed(f"a block of {n} sessions needs more than {end - start} bytes", start)
    mv = memoryview(buf)
    at = start + _REFS_AT * n  # SIDs, digests and times need no check
    at_refs = at
    user_refs = _read_column("I", mv[at : at + 4 * n])
    meta_refs = _read_column("I", mv[at + 4 * n : at + 8 * n])
    ends_at = at + 8 * n
    ends = _read_column("I", mv[ends_at : ends_at + 4 * n])
    at += 12 * n
    tables = []
    for width, size in (("H", 2), ("I", 4)):
        table_at = at
        if end - at < 4:
            raise _short(at)
        count = _unpack_u32(buf, at)[0]
        if count > n or at + 4 + size * count > end:
            raise _malformed(f"a table of {count} values in a block of {n} sessions", at)
        lengths = _read_column(width, mv[at + 4 : at + 4 + size * count])
        at += 4 + size * count
        if sum(lengths) > end - at:
            raise _malformed("table values run past the end of the block", table_at)
        stops = list(_ends(at, lengths))
        values = list(map(buf.__getitem__, map(slice, [at, *stops[:-1]], stops)))
        at += sum(lengths)
        tables.append((table_at, values))
    (users_at, raw_users), (metas_at, metas_table) = tables
    try:
        user_table: list[str | None] = [None, *(u.decode() for u in raw_users)]
    except UnicodeDecodeError:
        raise _malformed("a user is not UTF-8", users_at) from None
    if _refs_beyond(user_table, buf, at_refs, n):
        raise _malformed(f"user number {max(user_refs)} is not in the block's table", users_at)
    meta_table: list[bytes | None] = [None, *metas_table]
    if _refs_beyond(meta_table, buf, at_refs + 4 * n, n):
        raise _malformed(f"metadata number {max(meta_refs)} is not in the table", metas_at)
    in_order = ends.tolist()  # sorting a sorted list is one C pass
    if ends[-1] != end - at or in_order != sorted(in_order):
        raise _malformed("item block offsets are out of order or out of range", ends_at)
    return Block(n, buf[start:end], at - start, user_table, meta_table)


def _digests(n: int, each: str) -> struct.Struct:
    """The struct of *n* digests in a row, each read by the format *each*: one C
    call slices them all."""
    st = _DIGEST_STRUCTS.get((n, each))
    if st is None:
        st = struct.Struct(each * n)
        if len(_DIGEST_STRUCTS) < 64:
            _DIGEST_STRUCTS[n, each] = st
    return st


_DIGEST_STRUCTS: dict[tuple[int, str], struct.Struct] = {}


def _refs_beyond(table: list[Any], buf: bytes, at: int, n: int) -> bool:
    """True if a u32 reference column of *n* at ``buf[at:]`` holds a number
    past *table*. A table of none but "no value" (the usual owner and metadata
    column of anonymous sessions) needs every byte zero: one C scan."""
    if len(table) == 1:
        return buf.count(0, at, at + 4 * n) != 4 * n
    return bool(max(_read_column("I", buf[at : at + 4 * n])) >= len(table))


def _ends(base: int, lengths: Iterable[int]) -> Iterator[int]:
    """*base* + the running sums of *lengths*: where each value ends."""
    return map(base.__add__, accumulate(lengths))


def _create_head(
    buf: bytes, pos: int, end: int
) -> tuple[bytes, float, float, float, float, str | None, bytes | None, int]:
    """A CREATE payload's fields before its item block (in ``buf[pos:end]``),
    and the offset where the item block starts."""
    if end - pos < _CREATE_FIXED.size:
        raise _short(pos)
    digest, created, ttl, idle, hard, flags = _CREATE_FIXED.unpack_from(buf, pos)
    pos += _CREATE_FIXED.size
    user = meta = None
    if flags:
        if flags & ~(_CREATE_HAS_USER | _CREATE_HAS_META):
            raise FormatError(f"unknown CREATE flags {flags:#x}", None, pos - 1)
        if flags & _CREATE_HAS_USER:
            if pos + 2 > end or pos + 2 + _unpack_u16(buf, pos)[0] > end:
                raise _short(pos)
            u_end = pos + 2 + _unpack_u16(buf, pos)[0]
            try:
                user = buf[pos + 2 : u_end].decode()
            except UnicodeDecodeError:
                raise _malformed("user is not UTF-8", pos) from None
            pos = u_end
        if flags & _CREATE_HAS_META:
            if pos + 4 > end or pos + 4 + _unpack_u32(buf, pos)[0] > end:
                raise _short(pos)
            m_end = pos + 4 + _unpack_u32(buf, pos)[0]
            meta = buf[pos + 4 : m_end]
            pos = m_end
    return digest, created, ttl, idle, hard, user, meta, pos


def _decode_payload(
    op: int,
    sid: int,
    buf: bytes,
    start: int,
    end: int,
    max_value: int,
    keys: dict[bytes, str] | None = None,
) -> Record:
    """The record whose checksum-verified payload is ``buf[start:end]``.

    Raises with the absolute offset in *buf* of what is wrong.
    """
    if keys is None:
        keys = {}
    rec: Record
    pos = start
    if op == _OP_MODIFY:
        if end - pos < 1:
            raise _short(pos)
        flags = buf[pos]
        if flags & ~_MODIFY_CLEAR:
            raise FormatError(f"unknown MODIFY flags {flags:#x}", None, pos)
        changes = _decode_items(buf, pos + 1, end, max_value, keys, True)
        pos = end
        rec = Modify(sid, bool(flags), tuple(changes))
    elif op == Op.TOUCH:
        if end - pos < 16:
            raise _short(pos)
        idle, ttl = _F64X2.unpack_from(buf, pos)
        pos += 16
        rec = Touch(sid, idle, ttl)
    elif op == Op.CREATE:
        digest, created, ttl, idle, hard, user, meta, pos = _create_head(buf, pos, end)
        items = _decode_items(buf, pos, end, max_value, keys, False)
        pos = end
        rec = Create(sid, digest, created, ttl, idle, hard, user, meta, tuple(items))  # type: ignore[arg-type]
    elif op == Op.DESTROY:
        if end - pos < 1:
            raise _short(pos)
        rec = Destroy(sid, buf[pos])
        pos += 1
    elif op == Op.END:
        if end - pos < 8:
            raise _short(pos)
        rec = End(sid, _U64.unpack_from(buf, pos)[0])
        pos += 8
    elif op == Op.CHANGE_ID:
        if end - pos < DIGEST_SIZE:
            raise _short(pos)
        rec = ChangeId(sid, buf[pos : pos + DIGEST_SIZE])
        pos += DIGEST_SIZE
    elif op == Op.BLOCK:
        rec = _decode_block(sid, buf, start, end)
        pos = end
    else:
        raise FormatError(f"unknown record op {op}; written by a newer walsess?", None, start - 9)
    if pos != end:
        raise _malformed(f"{end - pos} unexpected bytes after the last field", pos)
    return rec


class RecordReader:
    """Read the records of a log image, as ``(offset, record)`` pairs.

    Reading ends at the end of *buf* (``stop`` is None) or at the first
    offset that does not hold a checksum-valid record (``stop`` says where and
    why; ``end`` is the offset after the last good record). A record whose
    checksum is valid but whose content is not is never a crash artifact: it
    raises :class:`CorruptionError`, :class:`FormatError` or :class:`LimitError`
    with the offset in *buf*.

    Iterating builds one object per record. :meth:`replay` is the fast path
    for opening a store: it hands single-key sets (the bulk of any log) to a
    callback as plain arguments. Cost: one CRC pass over the bytes.
    """

    def __init__(
        self, buf: bytes, start: int = HEADER_SIZE, max_value: int = MAX_PAYLOAD_BYTES
    ) -> None:
        self.buf = buf
        self.start = start
        self.end = start
        self.max_value = max_value
        self.stop: Stop | None = None

    def __iter__(self) -> Iterator[tuple[int, Record]]:
        out: list[tuple[int, Record]] = []
        self.replay(lambda pos, rec: out.append((pos, rec)))
        return iter(out)

    def replay(
        self,
        on_record: Callable[[int, Record], object],
        on_set: Callable[[int, str, bytes], object] | None = None,
        on_touch: Callable[[int, float, float], object] | None = None,
        on_create: Callable[..., object] | None = None,
    ) -> int:
        """Call ``on_record(offset, record)`` for each record in order; return the count.

        The records that make up most of a log can go to fast paths instead,
        with no record object built:

        * *on_set*: a MODIFY that sets exactly one key, as ``on_set(sid, key, value)``;
        * *on_touch*: a TOUCH, as ``on_touch(sid, idle_deadline, ttl)``;
        * *on_create*: a CREATE, as ``on_create(sid, digest, created_at, ttl,
          idle_deadline, hard_deadline, user, meta, items_offset, items)``, where
          *items* is the item block, undecoded (see :func:`decode_item_block`),
          and *items_offset* its offset in the buffer.
        """
        buf = self.buf
        size = len(buf)
        pos = self.start
        mv = memoryview(buf)
        unpack_head = _RECORD_HEAD.unpack_from
        # A MODIFY setting one key starts op sid n | flags=0 count=1 kind=0 | klen vlen.
        unpack_set = _ONE_SET_HEAD.unpack_from
        crc_c, table, residue = _crc_c, _crc_table, _RESIDUE_RAW
        max_value = self.max_value
        max_payload = MAX_PAYLOAD_BYTES
        decode = _decode_payload
        create_head = _create_head
        unpack_f64x2 = _F64X2.unpack_from
        keys: dict[bytes, str] = {}
        key_of = keys.get
        sets = on_set is not None
        count = 0
        while pos < size:
            if size - pos >= 21:  # room for a one-key MODIFY's fixed fields
                op, sid, n, shape_a, shape_b, klen, vlen = unpack_set(buf, pos)
            elif size - pos >= RECORD_OVERHEAD:
                op, sid, n = unpack_head(buf, pos)
                shape_a = 0
            else:
                self.stop = Stop(pos, f"incomplete record ({size - pos} bytes at end)")
                break
            end = pos + 13 + n
            if n > max_payload or end > size:
                self.stop = Stop(pos, f"record length {n} runs past the end")
                break
            if crc_c(mv[pos:end], 0xFFFFFFFF, table) != residue:
                self.stop = Stop(pos, "checksum mismatch")
                break
            if (
                op == 3
                and shape_a == 256
                and shape_b == 0
                and n == 12 + klen + vlen
                and vlen <= max_value
                and sets
            ):
                k_end = pos + 21 + klen
                kb = buf[pos + 21 : k_end]
                key = key_of(kb)
                if key is None:
                    key = keys[kb] = _decode_key(kb, pos + 21)
                on_set(sid, key, buf[k_end : end - 4])  # type: ignore[misc]
            elif op == 4 and n == 16 and on_touch is not None:
                on_touch(sid, *unpack_f64x2(buf, pos + 9))
            elif op == 0 and on_create is not None:
                head = create_head(buf, pos + 9, end - 4)  # ends with the items' offset
                on_create(sid, *head, buf[head[7] : end - 4])
            else:
                # A structural error here carries its absolute offset in *buf*.
                on_record(pos, decode(op, sid, buf, pos + 9, end - 4, max_value, keys))
            count += 1
            pos = end
        self.end = pos
        return count


# Offsets where a record could start: a known op byte not followed by eight
# zero bytes (a length of 0 with SID 0 is never a valid frame of a zeroed page).
_CANDIDATE = re.compile(rb"(?=[\x00-\x06](?!\x00{8}))", re.DOTALL)

# -- finding a valid record after a bad one, in linear time ----------------------
#
# Checksumming each candidate frame directly costs the sum of their lengths,
# which a crafted tail makes quadratic (every offset a candidate whose length
# reaches near the end of the file). CRC-32C is affine over GF(2), and that
# gives a check in constant work per candidate instead. Write raw(s, D) for the
# register after feeding bytes D from state s (the C routine's result), and M
# for feeding one zero byte, a linear map. Then
#     raw(s, D) = M^|D| s  ^  raw(0, D),   and with P[i] = raw(0, buf[base:i]),
#     raw(0, buf[a:b]) = P[b] ^ M^(b-a) P[a],   so
#     raw(F, buf[a:b]) = M^(b-a) (F ^ P[a]) ^ P[b].
# P is kept every _BLOCK bytes (one pass over the bytes); P at any offset is
# one CRC call over fewer than _BLOCK bytes from the mark before it; and M^L
# applied to a register is at most 255 zero bytes through the C routine plus
# at most six lookups in tables of M^(256 d 16^k). A frame of at most
# _SHORT_FRAME bytes is simply checksummed. So each candidate costs at most
# _SHORT_FRAME + 2 * _BLOCK + 255 bytes of CRC and a few dozen operations,
# whatever its length, and the whole search is linear in the bytes searched.

_BLOCK = 128
_SHORT_FRAME = 2 * _BLOCK
_ZEROS = memoryview(bytes(256))
_POWERS: list[list[array[int]]] = []


def _apply(t: array[int], v: int) -> int:
    """The linear map whose byte tables are *t* applied to register *v*."""
    return t[v & 255] ^ t[256 | (v >> 8) & 255] ^ t[512 | (v >> 16) & 255] ^ t[768 | v >> 24]


def _op_tables(columns: Sequence[int]) -> array[int]:
    """Byte tables (4 x 256) of the linear map taking bit i to ``columns[i]``."""
    t = array("I", bytes(4 * 1024))
    for j in range(4):
        base = 256 * j
        for b in range(1, 256):
            low = b & -b
            t[base + b] = t[base + (b ^ low)] ^ columns[8 * j + low.bit_length() - 1]
    return t


def _powers() -> list[list[array[int]]]:
    """Tables of M^(256 d 16^k), k = 0..5, d = 1..15 (covering every frame length
    up to 2^32): built once per process, 360 KiB, tens of milliseconds."""
    if not _POWERS:
        crc_c, table = _crc_c, _crc_table
        unit = _op_tables([crc_c(_ZEROS, 1 << i, table) for i in range(32)])  # M^256
        levels = []
        for _ in range(6):
            row = [unit]
            for _d in range(2, 16):
                prev = row[-1]
                row.append(_op_tables([_apply(unit, _apply(prev, 1 << i)) for i in range(32)]))
            levels.append(row)
            last = row[-1]
            unit = _op_tables([_apply(unit, _apply(last, 1 << i)) for i in range(32)])
        _POWERS[:] = levels
    return _POWERS


def _advance(v: int, length: int) -> int:
    """M^length v: the register *v* after *length* zero bytes, in O(log length)."""
    low = length & 255
    if low:
        v = _crc_c(_ZEROS[:low], v, _crc_table)
    high = length >> 8
    if high:
        levels = _powers()
        k = 0
        while high:
            d = high & 15
            if d:
                v = _apply(levels[k][d - 1], v)
            high >>= 4
            k += 1
    return v


def next_valid_record(buf: bytes, after: int) -> int | None:
    """Offset of the first checksum-valid record frame starting after *after*, or None.

    This is what tells a torn tail (nothing valid follows: cut it) from
    corruption (a valid record follows a bad one: refuse). It tries every byte
    offset, yet costs time linear in the bytes after *after* whatever they hold:
    a frame that runs past the end is rejected before any checksum, and a long
    frame is checked from running checksums rather than read again (see the
    comment above). Memory: 4 bytes per 128 bytes searched. Zero-filled runs
    are skipped at C speed.
    """
    end = len(buf)
    mv = memoryview(buf)
    crc_c, table, residue = _crc_c, _crc_table, _RESIDUE_RAW
    unpack = _U32.unpack_from
    base = max(after + 1, 0)
    marks: array[int] | None = None  # marks[j] = P[base + j * _BLOCK]
    for m in _CANDIDATE.finditer(buf, base):
        pos = m.start()
        if end - pos < RECORD_OVERHEAD:
            break  # every later offset is shorter still
        total = RECORD_OVERHEAD + unpack(buf, pos + 5)[0]
        if total > end - pos or total > RECORD_OVERHEAD + MAX_PAYLOAD_BYTES:
            continue
        stop = pos + total
        if total <= _SHORT_FRAME:
            if crc_c(mv[pos:stop], 0xFFFFFFFF, table) == residue:
                return pos
            continue
        if marks is None:
            marks = array("I", [0])
            state = 0
            for at in range(base, end - _BLOCK + 1, _BLOCK):
                state = crc_c(mv[at : at + _BLOCK], state, table)
                marks.append(state)
        j = (pos - base) // _BLOCK
        at = base + j * _BLOCK
        p_start = crc_c(mv[at:pos], marks[j], table)
        j = (stop - base) // _BLOCK
        at = base + j * _BLOCK
        p_stop = crc_c(mv[at:stop], marks[j], table)
        if _advance(0xFFFFFFFF ^ p_start, total) ^ p_stop == residue:
            return pos
    return None
