"""One classifier of damage: is a file intact, a crash artifact to cut, or corrupt?

Opening a store (:func:`walsess.changelog.replay_log`,
:meth:`walsess.storedir.StoreDirectory.load`) and ``walsess check``
(:mod:`walsess.verify`) both call these functions (and the snapshot loader,
:func:`walsess.snapshot.load_snapshot`, :func:`classify_snapshot`), so they cannot disagree on
what a file is. Everything here is pure: bytes and numbers in, a verdict out;
no file is read, cut or locked. The byte-level work (headers, records,
checksums, the search for a valid record after a bad one) is
:mod:`walsess.record`'s.

The rules (docs/FORMAT.md, "Torn tails and corruption"):

* a log whose records end cleanly is :attr:`LogState.INTACT`;
* the newest log whose records stop where no valid record follows has a
  :attr:`LogState.TORN_TAIL`: a crash artifact, cut at the stop offset;
* the newest log whose header never landed (all zeros, or a prefix of the
  magic) with no valid record after it is an :attr:`LogState.UNWRITTEN_HEADER`:
  a crash artifact of its creation, started again (a cut at offset 0);
* anything else is :attr:`LogState.CORRUPT`, with the error that names the
  offset (a bad record before a valid one, a torn tail in an older log, a
  header that is damaged or says another generation than the file's name).

Example::

    >>> from walsess.record import encode_header, encode_touch
    >>> log = encode_header(3, 0) + encode_touch(1, 5.0, 5.0)
    >>> classify_log(log + b"\\x04torn", newest=True, generation=3).state
    <LogState.TORN_TAIL: 'torn tail'>
    >>> classify_log(log, newest=True, generation=4).reason
    'header says generation 3, but the file name says 4: a copied or renamed file'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import CorruptionError, FileError
from .record import (
    HEADER_SIZE,
    LOG_MAGIC,
    MAX_PAYLOAD_BYTES,
    SNAPSHOT_MAGIC,
    Block,
    Create,
    End,
    Header,
    Record,
    RecordReader,
    decode_header,
    next_valid_record,
)

__all__ = [
    "FOLLOWS_OFFSET",
    "GENERATION_OFFSET",
    "LogState",
    "LogVerdict",
    "SnapshotVerdict",
    "classify_log",
    "classify_snapshot",
    "end_count_problem",
    "follows_problem",
    "generation_problem",
]

#: Offset of the ``generation`` field in a log or snapshot header.
GENERATION_OFFSET = 12
#: Offset of the ``follows`` field in a log header.
FOLLOWS_OFFSET = 20


# -- header rules: pure functions of plain values ----------------------------------------


def generation_problem(header_generation: int, name_generation: int) -> str | None:
    """Why a file whose header says *header_generation* cannot be the file whose name
    says *name_generation*, or None if they agree. The problem is at
    :data:`GENERATION_OFFSET`. Holds for logs and snapshots alike.

    >>> generation_problem(2, 2) is None
    True
    """
    if header_generation == name_generation:
        return None
    return (
        f"header says generation {header_generation}, but the file name says"
        f" {name_generation}: a copied or renamed file"
    )


def follows_problem(follows: int, generation: int, snapshot: int = 0) -> str | None:
    """Why the log of *generation* whose header says it follows snapshot *follows*
    cannot be replayed over snapshot *snapshot* (0: none), or None if it can.
    The problem is at :data:`FOLLOWS_OFFSET`.

    A log continues the snapshot its header names, which is never newer than
    the log itself; it is never replayed over a snapshot newer than that one
    (it holds changes the snapshot may already contain, or lack). With the
    default *snapshot* 0, only the file's own half of the rule is checked.

    >>> follows_problem(3, 4, snapshot=3) is None
    True
    >>> follows_problem(2, 4, snapshot=3)
    'log follows snapshot 2, but snapshot 3 was loaded: a stale or misplaced log'
    """
    if follows > generation:
        return (
            f"log follows snapshot {follows}, newer than the log itself (generation {generation})"
        )
    if follows < snapshot:
        return (
            f"log follows snapshot {follows}, but snapshot {snapshot} was loaded:"
            " a stale or misplaced log"
        )
    return None


def end_count_problem(end_sessions: int, sessions: int) -> str | None:
    """Why a snapshot whose END record says *end_sessions* but which holds *sessions*
    CREATE records is invalid, or None if they agree. The problem is at the END
    record's offset.

    >>> end_count_problem(2, 1)
    'END says 2 sessions, the file holds 1'
    """
    if end_sessions == sessions:
        return None
    return f"END says {end_sessions} sessions, the file holds {sessions}"


# -- a log file image --------------------------------------------------------------------


class LogState(Enum):
    """What a log file image is (see the module's docstring for the rules)."""

    INTACT = "intact"
    TORN_TAIL = "torn tail"
    UNWRITTEN_HEADER = "unwritten header"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class LogVerdict:
    """The verdict of :func:`classify_log` on one log file image."""

    state: LogState
    #: The decoded header; None if it never landed or is damaged.
    header: Header | None
    #: Records before :attr:`end` (0 when the file is corrupt in a record that
    #: checksums but does not decode: the count is not needed then).
    records: int
    #: Offset just past the last good record: where a cut leaves the file (0 for
    #: an unwritten header, which is started again).
    end: int
    #: Where the damage starts: the cut offset of a torn tail or unwritten
    #: header, the offset a corruption error names; None if intact.
    offset: int | None = None
    #: Why, in words; None if intact.
    reason: str | None = None
    #: For :attr:`LogState.CORRUPT`, the error to raise: a :class:`CorruptionError`,
    #: or a :class:`FormatError` (another magic, a newer version, a value over
    #: *max_value*). It names the offset but no path: ``error.located(path)``.
    error: FileError | None = None

    @property
    def opens(self) -> bool:
        """True if opening the store accepts this file (perhaps after a cut)."""
        return self.state is not LogState.CORRUPT

    @property
    def cut(self) -> bool:
        """True if opening cuts bytes off this file (a torn tail or unwritten header)."""
        return self.state is LogState.TORN_TAIL or self.state is LogState.UNWRITTEN_HEADER


def _header_never_landed(buf: bytes) -> bool:
    """A header that never fully landed (all zeros, or a prefix of our magic) with
    no valid record anywhere after it: only then is the file a crash artifact."""
    head = buf[:HEADER_SIZE]
    if len(buf) >= HEADER_SIZE and head.count(0) != HEADER_SIZE:
        return False
    unwritten = head.count(0) == len(head) or LOG_MAGIC.startswith(head[: len(LOG_MAGIC)])
    return unwritten and next_valid_record(buf, -1) is None


def _corrupt(error: FileError, header: Header | None = None, records: int = 0,
             end: int = 0) -> LogVerdict:  # fmt: skip
    return LogVerdict(LogState.CORRUPT, header, records, end, error.offset, error.reason, error)


def _header_verdict(buf: bytes, exc: FileError, newest: bool) -> LogVerdict:
    """The verdict on a log whose header does not decode (*exc* says why)."""
    if newest and _header_never_landed(buf):
        # The file was created but its header never landed: a crash artifact of
        # creation, which opening starts again.
        return LogVerdict(
            LogState.UNWRITTEN_HEADER, None, 0, 0, 0, f"unwritten header ({exc.reason})"
        )
    if buf[:HEADER_SIZE].count(0) == HEADER_SIZE:
        # Our file (by its name) whose header was wiped: damage, not a foreign file.
        following = next_valid_record(buf, -1)
        if following is not None:
            why = f"the header is zeroed but a valid record follows at offset {following}"
        else:
            why = "the header is zeroed in a log that is not the newest"
        return _corrupt(CorruptionError(why, None, 0))
    return _corrupt(exc)


def _record_start(buf: bytes, offset: int, max_value: int) -> tuple[int, int]:
    """(records before, start) of the record holding *offset*, which checksums but
    does not decode. A second pass over the bytes before it, paid only for such
    a corrupt file: the fast first pass does not track where each record starts."""
    reader = RecordReader(buf[:offset], HEADER_SIZE, max_value)
    try:
        records = reader.replay(lambda _pos, _rec: None)
    except FileError:  # pragma: no cover - those records decoded in the first pass
        return 0, HEADER_SIZE
    return records, reader.end


#: Why an END record cannot be in a log.
END_IN_LOG = "an END record belongs in snapshots, not logs"
BLOCK_IN_LOG = "a BLOCK record belongs in snapshots, not logs"


def classify_log(
    buf: bytes,
    *,
    newest: bool,
    generation: int | None,
    max_value: int = MAX_PAYLOAD_BYTES,
    apply: Callable[[Record], object] | None = None,
    set_key: Callable[[int, str, bytes], object] | None = None,
    on_touch: Callable[[int, float, float], object] | None = None,
    on_create: Callable[..., object] | None = None,
) -> LogVerdict:
    """Classify the log file image *buf*: intact, torn tail, unwritten header or corrupt.

    *newest*: the file is the newest log of its store (only there is a torn tail
    or an unwritten header a crash artifact). *generation*: the generation its
    file name says (None: do not hold the header to a name). *max_value*: the
    largest value accepted; a larger one is corruption with a ``LimitError``.

    Reading the records can feed them on, so opening a store reads its bytes
    once: each record goes to ``apply(record)`` as it is read, or, for a MODIFY
    setting one key, to ``set_key(sid, key, value)``, and TOUCH and CREATE
    records to *on_touch* and *on_create* (see :meth:`RecordReader.replay`).
    Records before a corruption have been fed on by the time the verdict says
    so: discard what they built.

    Cost: one CRC pass over *buf*; after a bad record, a search of the bytes
    after it that is linear in them (:func:`next_valid_record`); nothing else.
    No I/O.
    """
    try:
        header = decode_header(buf)
    except FileError as exc:
        return _header_verdict(buf, exc, newest)
    if generation is not None:
        problem = generation_problem(header.generation, generation)
        if problem is not None:
            return _corrupt(CorruptionError(problem, None, GENERATION_OFFSET), header)
    problem = follows_problem(header.follows, header.generation)
    if problem is not None:
        return _corrupt(CorruptionError(problem, None, FOLLOWS_OFFSET), header)

    def checked(pos: int, rec: Record) -> None:
        if type(rec) is End:
            raise CorruptionError(END_IN_LOG, None, pos)
        if type(rec) is Block:
            raise CorruptionError(BLOCK_IN_LOG, None, pos)
        if apply is not None:
            apply(rec)

    reader = RecordReader(buf, HEADER_SIZE, max_value)
    try:
        records = reader.replay(checked, set_key, on_touch, on_create)
    except FileError as exc:
        before, start = _record_start(buf, exc.offset or HEADER_SIZE, max_value)
        return _corrupt(exc, header, before, start)
    stop = reader.stop
    if stop is None:
        return LogVerdict(LogState.INTACT, header, records, reader.end)
    following = next_valid_record(buf, stop.offset)
    if newest and following is None:
        return LogVerdict(LogState.TORN_TAIL, header, records, reader.end, stop.offset, stop.reason)
    detail = stop.reason
    if following is not None:
        detail += f"; a valid record follows at offset {following}"
    else:
        detail += " in a log that is not the newest"
    return _corrupt(CorruptionError(detail, None, stop.offset), header, records, reader.end)


# -- a snapshot file image ---------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotVerdict:
    """The verdict of :func:`classify_snapshot` on one snapshot file image.

    A snapshot is valid or corrupt, never torn: it was complete before it was
    renamed into place, so any damage at all makes it invalid as a whole.
    """

    #: The decoded header; None if it is damaged.
    header: Header | None
    #: Sessions in the records before :attr:`end`.
    sessions: int
    #: Offset just past the last good record (the start of the damaged one).
    end: int
    #: The error to raise if the snapshot is invalid (naming the offset but no
    #: path, unless a callback raised it); None if it is valid.
    error: FileError | None = None

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def offset(self) -> int | None:
        """Where the damage is; None if valid."""
        return None if self.error is None else self.error.offset

    @property
    def reason(self) -> str | None:
        """Why, in words; None if valid."""
        return None if self.error is None else self.error.reason


def classify_snapshot(
    buf: bytes,
    *,
    generation: int,
    max_value: int = MAX_PAYLOAD_BYTES,
    on_block: Callable[[int, Block], object] | None = None,
    on_create: Callable[..., object] | None = None,
) -> SnapshotVerdict:
    """Classify the snapshot file image *buf*, whose file name says *generation*.

    Version 2 holds BLOCK records, version 1 CREATE records; then one END record
    counting the sessions, and nothing after it. Reading can feed the sessions
    on, so opening reads the bytes once: each BLOCK to ``on_block(offset,
    block)``, each version 1 CREATE to *on_create* as
    :meth:`RecordReader.replay` passes it. A callback may raise a
    :class:`FileError` (a SID twice, say): that is the verdict's error. Sessions
    fed on before an invalid verdict must be discarded.

    Cost: one CRC pass over *buf* and the columns' bulk decoding; a search for a
    valid record after a bad one only to word the error. No I/O.

    >>> from walsess.record import SNAPSHOT_MAGIC, encode_end, encode_header
    >>> image = encode_header(2, 0, SNAPSHOT_MAGIC) + encode_end(0)
    >>> classify_snapshot(image, generation=2).valid
    True
    >>> classify_snapshot(image[:-1], generation=2).reason
    'record length 8 runs past the end (a snapshot is never torn)'
    """
    try:
        header = decode_header(buf, SNAPSHOT_MAGIC)
    except FileError as exc:
        return SnapshotVerdict(None, 0, 0, exc)
    holds = Block if header.version >= 2 else Create  # a snapshot's session records
    ends: list[tuple[int, End]] = []
    sessions = 0

    def take(pos: int, rec: Record) -> None:
        nonlocal sessions
        if ends:
            raise CorruptionError("a record follows the END record", None, pos)
        if type(rec) is End:
            ends.append((pos, rec))
            return
        if type(rec) is not holds:
            raise CorruptionError(
                f"a {type(rec).__name__.upper()} record in a version {header.version} snapshot",
                None,
                pos,
            )
        if type(rec) is Block:
            if on_block is not None:
                on_block(pos, rec)
            sessions += len(rec.sids)
        else:
            sessions += 1

    def create(*fields: Any) -> None:
        nonlocal sessions
        if ends:
            raise CorruptionError("a record follows the END record", None, fields[-2])
        assert on_create is not None
        on_create(*fields)
        sessions += 1

    fast = create if on_create is not None and holds is Create else None
    reader = RecordReader(buf, HEADER_SIZE, max_value)
    try:
        reader.replay(take, on_create=fast)
    except FileError as exc:
        end = HEADER_SIZE if exc.offset is None else _record_start(buf, exc.offset, max_value)[1]
        return SnapshotVerdict(header, sessions, end, exc)
    stop = reader.stop
    if stop is not None:
        why = f"{stop.reason} (a snapshot is never torn)"
        following = next_valid_record(buf, stop.offset)
        if following is not None:
            why += f"; a valid record follows at offset {following}"
        return SnapshotVerdict(
            header, sessions, reader.end, CorruptionError(why, None, stop.offset)
        )
    if not ends:
        error = CorruptionError("no END record: the snapshot is incomplete", None, reader.end)
        return SnapshotVerdict(header, sessions, reader.end, error)
    pos, last = ends[0]
    problem = end_count_problem(last.sessions, sessions)
    if problem is not None:
        return SnapshotVerdict(header, sessions, pos, CorruptionError(problem, None, pos))
    problem = generation_problem(header.generation, generation)
    if problem is not None:
        error = CorruptionError(problem, None, GENERATION_OFFSET)
        return SnapshotVerdict(header, sessions, reader.end, error)
    return SnapshotVerdict(header, sessions, reader.end)
