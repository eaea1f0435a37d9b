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

from .damage import classify_log, classify_snapshot
from .errors import FileError
from .fileio import OS, FileSystem
from .record import (
    HEADER_SIZE,
    LOG_MAGIC,
    MAX_PAYLOAD_BYTES,
    SNAPSHOT_MAGIC,
    Block,
    Record,
    RecordReader,
    SessionRecord,
    block_creates,
    decode_header,
)
from .storedir import StoreDirectory
from .table import SessionTable

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
    # Loaded into a scratch table, as opening would: a SID or ref twice is found too.
    table = SessionTable()
    table.begin_bulk()
    table.reading(path, MAX_PAYLOAD_BYTES)
    verdict = classify_snapshot(
        buf,
        generation=generation,
        on_block=lambda pos, block: table.load_block(block, path, pos, MAX_PAYLOAD_BYTES),
        on_create=table.create_packed,
    )
    return FileReport(path, "snapshot", generation, len(buf), verdict.sessions, verdict.end,
                      verdict.reason, verdict.offset)  # fmt: skip


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
