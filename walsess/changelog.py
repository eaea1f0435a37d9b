"""The change log on disk: recovery when a store opens, then appends and fsyncs.

A store's log is a sequence of files ``<generation>.log`` (16 hex digits),
each starting with a header (see :mod:`walsess.record`). Recovery reads them
oldest first and hands every record to a callback. Where a file stops
holding valid records:

* at the end of the newest file, with no valid record anywhere after it, the
  bytes are a crash artifact (a torn record, or the zeros or garbage a power
  loss leaves when a file grew before its data landed): they are cut off and
  fsynced away before anything is appended, and reported in :class:`Recovery`;
* anywhere else it is corruption: :class:`CorruptionError` names the file
  and offset, and nothing is cut.

Appends are one ``write(2)`` each; a write that fails part way is cut back,
so the file never holds half a record followed by more records.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CorruptionError, FileError, StorageError, StorePoisoned
from .fileio import FileSystem
from .record import (
    HEADER_SIZE,
    LOG_MAGIC,
    Record,
    RecordReader,
    decode_header,
    encode_header,
    next_valid_record,
)

__all__ = ["ChangeLog", "Cut", "Recovery", "log_name"]

_LOG_FILE = re.compile(r"^([0-9a-f]{16})\.log$")


def log_name(generation: int) -> str:
    """File name of the log of *generation*."""
    return f"{generation:016x}.log"


@dataclass(frozen=True)
class Cut:
    """Bytes cut from the end of a log file because they held no valid record."""

    path: str
    offset: int
    dropped: int
    reason: str


@dataclass(frozen=True)
class Recovery:
    """What opening a store found: records replayed, files read and tails cut."""

    records: int
    files: tuple[str, ...]
    cuts: tuple[Cut, ...]

    @property
    def clean(self) -> bool:
        """True if nothing had to be cut."""
        return not self.cuts


def _looks_unwritten(buf: bytes) -> bool:
    """A header that never fully landed: all zeros, or a prefix of our magic."""
    if len(buf) >= HEADER_SIZE and buf[:HEADER_SIZE].count(0) != HEADER_SIZE:
        return False
    head = buf[:HEADER_SIZE]
    return head.count(0) == len(head) or LOG_MAGIC.startswith(head[: len(LOG_MAGIC)])


class ChangeLog:
    """The open, writable newest log file of a store directory.

    Use :meth:`open`; it recovers and replays first. Not thread-safe by
    itself: the store serialises appends under its lock.
    """

    def __init__(self, directory: str, fs: FileSystem, generation: int, fd: int, size: int):
        self.directory = directory
        self.generation = generation
        self.path = os.path.join(directory, log_name(generation))
        self._fs = fs
        # The plain file system's write is os.write itself: skip the wrapper's
        # frame on the hot path. A subclass (fault injection) is always called.
        self._write = os.write if type(fs).write is FileSystem.write else fs.write
        self._fd: int | None = fd
        #: Bytes in the current file.
        self.size = size
        #: Bytes appended since open; a monotonic position for group commit.
        self.written = 0
        self.appends = 0

    # -- opening ------------------------------------------------------------

    @staticmethod
    def generations(directory: str) -> list[int]:
        """Generations of the log files in *directory*, oldest first."""
        found = []
        for name in os.listdir(directory):
            m = _LOG_FILE.match(name)
            if m:
                found.append(int(m.group(1), 16))
        return sorted(found)

    @classmethod
    def open(
        cls,
        directory: str,
        fs: FileSystem,
        apply: Callable[[Record], object],
        set_key: Callable[[int, str, bytes], object],
        max_value: int,
    ) -> tuple[ChangeLog, Recovery]:
        """Replay every log file, cut a torn tail, and open the newest for append.

        Each record goes to ``apply(record)``, except single-key sets, which go
        to ``set_key(sid, key, value)`` (see :meth:`RecordReader.replay`).
        """
        gens = cls.generations(directory)
        if not gens:
            return cls._create(directory, fs, generation=1, follows=0), Recovery(0, (), ())
        records = 0
        cuts: list[Cut] = []
        files: list[str] = []
        good_end = HEADER_SIZE
        for i, gen in enumerate(gens):
            path = os.path.join(directory, log_name(gen))
            newest = i == len(gens) - 1
            files.append(path)
            buf = fs.read(path)
            try:
                header = decode_header(buf)
            except FileError as exc:
                if newest and _looks_unwritten(buf):
                    # The file was created but its header never landed: a crash
                    # artifact of creation. Start it again from an empty state.
                    cuts.append(Cut(path, 0, len(buf), f"unwritten header ({exc.reason})"))
                    fs.unlink(path)
                    fs.fsync_dir(directory)
                    log = cls._create(directory, fs, generation=gen, follows=0)
                    return log, Recovery(records, tuple(files), tuple(cuts))
                raise exc.located(path) from None
            if header.generation != gen:
                raise CorruptionError(
                    f"header says generation {header.generation}, file name says {gen}", path, 12
                )
            reader = RecordReader(buf, HEADER_SIZE, max_value)
            try:
                records += reader.replay(lambda _pos, rec: apply(rec), set_key)
            except FileError as exc:
                raise exc.located(path) from None
            good_end = reader.end
            stop = reader.stop
            if stop is None:
                continue
            following = next_valid_record(buf, stop.offset)
            if not newest or following is not None:
                detail = f"{stop.reason}"
                if following is not None:
                    detail += f"; a valid record follows at offset {following}"
                else:
                    detail += " in a log that is not the newest"
                raise CorruptionError(detail, path, stop.offset)
            cuts.append(Cut(path, stop.offset, len(buf) - stop.offset, stop.reason))
        newest_path = os.path.join(directory, log_name(gens[-1]))
        fd = fs.open(newest_path, os.O_WRONLY | os.O_APPEND)
        try:
            if cuts:
                fs.truncate(fd, good_end)
                fs.fsync(fd)  # the cut must be durable before new records follow it
        except BaseException:
            fs.close(fd)
            raise
        log = cls(directory, fs, gens[-1], fd, good_end)
        return log, Recovery(records, tuple(files), tuple(cuts))

    @classmethod
    def _create(cls, directory: str, fs: FileSystem, generation: int, follows: int) -> ChangeLog:
        """A new log file holding only its header, made durable with its directory entry."""
        path = os.path.join(directory, log_name(generation))
        tmp = path + ".tmp"
        fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fs.write_all(fd, encode_header(generation, follows))
            fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.rename(tmp, path)
        fs.fsync_dir(directory)
        fd = fs.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(directory, fs, generation, fd, HEADER_SIZE)

    # -- writing ------------------------------------------------------------

    def append(self, data: bytes) -> int:
        """Write one or more whole records with write(2); returns :attr:`written` after them.

        On failure the file is cut back to where it was and :class:`StorageError`
        is raised; if even the cut fails, :class:`StorePoisoned`.
        """
        fd = self._fd
        if fd is None:
            raise StorageError(f"{self.path} is closed")
        try:
            n = self._write(fd, data)
            if n != len(data):  # a short write: finish it, or cut it back below
                self._fs.write_all(fd, data[n:])
        except OSError as exc:
            self._cut_back(fd, exc)
            raise StorageError(
                f"write to {self.path} failed ({exc.strerror or exc}); nothing was applied"
            ) from exc
        self.size += len(data)
        self.written += len(data)
        self.appends += 1
        return self.written

    def _cut_back(self, fd: int, cause: OSError) -> None:
        try:
            self._fs.truncate(fd, self.size)
        except OSError as exc:
            raise StorePoisoned(
                f"write to {self.path} failed ({cause.strerror or cause}) and cutting the"
                f" partial record back failed too ({exc.strerror or exc})"
            ) from exc

    def sync(self) -> None:
        """fsync the current file. Errors propagate as OSError; callers poison the store."""
        if self._fd is not None:
            self._fs.fsync(self._fd)

    def close(self) -> None:
        """Close the file (without fsync: the durability policy decides that)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._fs.close(fd)
