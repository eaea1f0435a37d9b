"""Read-only inspection of a store directory: what each file holds and where it is damaged.

Nothing here writes, truncates or locks, so it can look at a store another
process has open. The ``walsess`` command's check, dump and repair are built
on it.

Example::

    for report in verify_directory("var/sessions"):
        print(report.path, report.records, report.problem)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .damage import (
    GENERATION_OFFSET,
    classify_log,
    end_count_problem,
    generation_problem,
)
from .errors import FileError
from .fileio import OS, FileSystem
from .record import (
    HEADER_SIZE,
    LOG_MAGIC,
    MAX_PAYLOAD_BYTES,
    SNAPSHOT_MAGIC,
    Block,
    Create,
    End,
    Record,
    RecordReader,
    SessionRecord,
    block_creates,
    decode_header,
    next_valid_record,
)
from .storedir import StoreDirectory

__all__ = ["FileReport", "iter_records", "verify_buffer", "verify_directory", "verify_file"]


@dataclass(frozen=True)
class FileReport:
    """One file's verdict. ``problem`` is None for a clean file."""

    path: str
    kind: str  # "log" or "snapshot"
    generation: int
    size: int
    records: int
    #: Offset just past the last good record (where a repair would cut).
    good_end: int
    problem: str | None = None
    problem_offset: int | None = None
    #: True if the problem is a torn tail that opening the store cuts by itself.
    torn_tail: bool = False

    @property
    def corrupt(self) -> bool:
        return self.problem is not None and not self.torn_tail


def _files(path: str) -> list[tuple[str, str, int]]:
    d = StoreDirectory(path, OS)
    out = [("snapshot", d.snapshot_path(g), g) for g in d.snapshots()]
    out += [("log", d.log_path(g), g) for g in d.logs()]
    return out


def verify_file(
    path: str, kind: str, generation: int, newest_log: bool, fs: FileSystem = OS
) -> FileReport:
    """Check every header field, checksum and structure of one file."""
    return verify_buffer(fs.read(path), path, kind, generation, newest_log)


def verify_buffer(
    buf: bytes, path: str, kind: str, generation: int, newest_log: bool
) -> FileReport:
    """:func:`verify_file` of the image *buf* of the file at *path* (which is not read):
    repair checks what a file would hold after its header is rebuilt. Cost: one
    pass over *buf*, plus a search for a later valid record after a bad one.

    A log is judged by :func:`walsess.damage.classify_log`, as opening the store
    judges it; a snapshot by the rules the snapshot loader applies.
    """
    if kind == "log":
        verdict = classify_log(buf, newest=newest_log, generation=generation)
        return FileReport(path, kind, generation, len(buf), verdict.records, verdict.end,
                          verdict.reason, verdict.offset, verdict.cut)  # fmt: skip
    return _verify_snapshot(buf, path, generation)


def _verify_snapshot(buf: bytes, path: str, generation: int) -> FileReport:
    def report(records: int, good_end: int, problem: str | None = None,
               at: int | None = None) -> FileReport:  # fmt: skip
        return FileReport(path, "snapshot", generation, len(buf), records, good_end, problem, at)

    try:
        header = decode_header(buf, SNAPSHOT_MAGIC)
    except FileError as exc:
        return report(0, 0, exc.reason, exc.offset)
    ends: list[tuple[int, End]] = []
    others: list[tuple[int, str]] = []
    holds = Block if header.version >= 2 else Create  # a snapshot's session records
    blocked = 0  # sessions in BLOCK records beyond one per record

    def look(pos: int, rec: Record) -> None:
        nonlocal blocked
        if ends:
            others.append((pos, "a record follows the END record"))
        elif type(rec) is End:
            ends.append((pos, rec))
        elif type(rec) is not holds:
            others.append((pos, f"a {type(rec).__name__} record in a snapshot"))
        elif type(rec) is Block:
            blocked += len(rec.sids) - 1

    reader = RecordReader(buf, HEADER_SIZE, MAX_PAYLOAD_BYTES)
    try:
        records = reader.replay(look)
    except FileError as exc:
        return report(0, reader.end, exc.reason, exc.offset)
    sessions = records + blocked - len(ends)  # the END record is not a session
    if others:
        pos, why = others[0]
        return report(sessions, pos, why, pos)
    stop = reader.stop
    if stop is not None:
        reason = stop.reason
        following = next_valid_record(buf, stop.offset)
        if following is not None:
            reason += f"; a valid record follows at offset {following}"
        return report(sessions, reader.end, reason, stop.offset)
    if not ends:
        return report(sessions, reader.end, "no END record: incomplete snapshot", reader.end)
    pos, end = ends[0]
    problem = end_count_problem(end.sessions, sessions)
    if problem is not None:
        return report(sessions, pos, problem, pos)
    problem = generation_problem(header.generation, generation)
    if problem is not None:
        return report(sessions, reader.end, problem, GENERATION_OFFSET)
    return report(sessions, reader.end)


def verify_directory(
    path: str, fs: FileSystem = OS, progress: Callable[[int, str], object] | None = None
) -> list[FileReport]:
    """A report for every snapshot and log file of the store at *path*, in order.

    *progress*, if given, is called with the number of files before the first
    is checked (and an empty name), then with each file's path once checked.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory")
    files = _files(path)
    newest = max((g for kind, _, g in files if kind == "log"), default=None)
    if progress is not None:
        progress(len(files), "")
    reports = []
    for kind, p, g in files:
        reports.append(verify_file(p, kind, g, kind == "log" and g == newest, fs))
        if progress is not None:
            progress(len(files), p)
    return reports


def iter_records(path: str, fs: FileSystem = OS) -> Iterator[tuple[str, int, SessionRecord]]:
    """Every decodable record of every file, as (file, offset, record), in replay order;
    a snapshot's BLOCK record as one CREATE per session, at the block's offset.

    Stops quietly at the first damaged record of a file (check reports it).
    """
    for kind, file, _g in _files(path):
        buf = fs.read(file)
        try:
            decode_header(buf, LOG_MAGIC if kind == "log" else SNAPSHOT_MAGIC)
        except FileError:
            continue
        found: list[tuple[int, Record]] = []
        with contextlib.suppress(FileError):
            RecordReader(buf, HEADER_SIZE, MAX_PAYLOAD_BYTES).replay(
                lambda pos, rec, found=found: found.append((pos, rec))  # type: ignore[misc]
            )
        for pos, rec in found:
            if type(rec) is Block:
                try:
                    creates = block_creates(rec)
                except FileError:
                    break
                for create in creates:
                    yield file, pos, create
            else:
                yield file, pos, rec  # type: ignore[misc]
