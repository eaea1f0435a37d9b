"""Snapshot files: the live sessions written out, so old log files can be deleted.

A snapshot ``<generation>.snap`` (format version 2) is a header (magic
``WSSSNP\r\n``), BLOCK records of up to 4,096 sessions each, stored column
by column, and an END record holding the count (docs/FORMAT.md). It is
written under a temporary name, fsynced, renamed into place and the
directory fsynced; only then is it trusted, and only then may the files it
replaces be deleted. A snapshot without its END record, with any record
failing its checksum, or whose count disagrees with its blocks, is invalid
as a whole: it never yields a partial state. Version 1 snapshots (one CREATE
record per session) are still read.

Loading decodes columns with bulk C-level operations and leaves every
session's item block packed (see :class:`walsess.table.SessionState`): no
session's data is decoded at open.

Example::

    writer = SnapshotWriter(directory, fs, generation=7)
    writer.add(states)                    # under the store's lock: no I/O
    writer.flush()                        # whole blocks, outside it
    writer.commit()                       # the rest; durable and visible from here on
    load_snapshot(writer.path, fs, table, max_value=1 << 20)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import record
from .damage import classify_snapshot
from .fileio import FileSystem, must_fsync, must_fsync_dir
from .record import HEADER_SIZE, SNAPSHOT_MAGIC, Block, encode_block, encode_end, encode_header
from .table import SessionState, SessionTable

__all__ = ["SNAPSHOT_FILE", "SnapshotWriter", "load_snapshot", "snapshot_name", "snapshot_size"]

SNAPSHOT_FILE = re.compile(r"^([0-9a-f]{16})\.snap$")


def snapshot_name(generation: int) -> str:
    """File name of the snapshot of *generation*."""
    return f"{generation:016x}.snap"


class SnapshotWriter:
    """Writes one snapshot file in pieces, then installs it atomically.

    Cost: one write per BLOCK record, one fsync and one rename at
    :meth:`commit`. Not thread-safe; one compaction writes one snapshot.
    """

    def __init__(self, directory: str, fs: FileSystem, generation: int) -> None:
        self.directory = directory
        self.generation = generation
        self.path = os.path.join(directory, snapshot_name(generation))
        self.tmp = self.path + ".tmp"
        self.count = 0
        self._fs = fs
        self._fd: int | None = fs.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.size = 0
        self._pending: tuple[list[Any], ...] = tuple([] for _ in range(9))
        try:
            self._put(encode_header(generation, 0, SNAPSHOT_MAGIC))
        except BaseException:
            self.abort()
            raise

    def _put(self, data: bytes) -> None:
        assert self._fd is not None, "snapshot already committed or aborted"
        self._fs.write_all(self._fd, data)
        self.size += len(data)

    def add(self, states: Iterable[SessionState]) -> None:
        """Queue *states* for the snapshot, column by column: cheap enough to call
        under the store's lock (no I/O, and no tracked object per session, so
        it never sets off the garbage collector). An unread session's item
        block is taken as it is. :meth:`flush` writes what is queued."""
        for column, values in zip(self._pending, _columns(list(states)), strict=True):
            column.extend(values)

    def flush(self, partial: bool = False) -> None:
        """Write the queued sessions as BLOCK records of ``BLOCK_SESSIONS``
        (and, with *partial*, the rest as a shorter one). Not under the lock."""
        pending = self._pending
        size = record.BLOCK_SESSIONS
        while len(pending[0]) >= size or (partial and pending[0]):
            self._put(encode_block(*(column[:size] for column in pending)))
            self.count += min(size, len(pending[0]))
            for column in pending:
                del column[:size]

    def commit(self) -> None:
        """The sessions still queued, the END record, fsync, rename into place,
        fsync the directory."""
        self.flush(partial=True)
        self._put(encode_end(self.count))
        fd, self._fd = self._fd, None
        assert fd is not None
        try:
            must_fsync(self._fs, fd, self.tmp)
        finally:
            self._fs.close(fd)
        self._fs.rename(self.tmp, self.path)
        must_fsync_dir(self._fs, self.directory)

    def abort(self) -> None:
        """Close and remove the temporary file; never raises."""
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                self._fs.close(fd)
            self._fs.unlink(self.tmp)
        except OSError:
            pass


def snapshot_size(states: Sequence[SessionState]) -> int:
    """The exact size of the snapshot of *states*, written in this order."""
    step = record.BLOCK_SESSIONS
    body = 0
    for i in range(0, len(states), step):
        columns = _columns(states[i : i + step])
        body += len(encode_block(*columns))
    return HEADER_SIZE + body + len(encode_end(len(states)))


def _columns(states: Sequence[SessionState]) -> tuple[list[Any], ...]:
    return (
        [st.sid for st in states],
        [st.digest for st in states],
        [st.created_at for st in states],
        [st.ttl for st in states],
        [st.idle_deadline for st in states],
        [st.hard_deadline for st in states],
        [st.user for st in states],
        [st.meta for st in states],
        [st.items() for st in states],
    )


def load_snapshot(
    path: str,
    fs: FileSystem,
    table: SessionTable,
    max_value: int,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Add every session of the snapshot at *path* to *table* (in bulk mode),
    item blocks packed; returns how many. The file is judged by
    :func:`walsess.damage.classify_snapshot`, as ``walsess check`` judges it.
    *progress*, if given, is called with the offset of each block as it is loaded.

    Raises :class:`FormatError` or :class:`CorruptionError` naming *path* and
    the offset if the file is not a complete, valid snapshot; *table* may then
    hold some of its sessions and must be dropped.
    """
    buf = fs.read(path)
    table.reading(path, max_value)

    def add(pos: int, block: Block) -> None:
        table.load_block(block, path, pos, max_value)

    def add_and_tell(pos: int, block: Block) -> None:
        table.load_block(block, path, pos, max_value)
        assert progress is not None
        progress(pos)

    verdict = classify_snapshot(
        buf,
        generation=int(os.path.basename(path).split(".")[0], 16),
        max_value=max_value,
        on_block=add if progress is None else add_and_tell,
        on_create=table.create_packed,
    )
    error = verdict.error
    if error is not None:
        raise error if error.path else error.located(path)
    return verdict.sessions
