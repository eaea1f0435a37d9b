"""The change log on disk: replaying log files, then appending, fsyncing and rotating.

A store's log is a sequence of files ``<generation>.log`` (16 hex digits),
each starting with a header (see :mod:`walsess.record`). :func:`replay_log`
reads one file and hands every record to callbacks. Where a file stops
holding valid records:

* at the end of the newest file, with no valid record anywhere after it, the
  bytes are a crash artifact (a torn record, or the zeros or garbage a power
  loss leaves when a file grew before its data landed): they are reported as
  a :class:`Cut`, and :meth:`ChangeLog.open_newest` truncates them (fsynced)
  before anything is appended;
* anywhere else it is corruption: :class:`CorruptionError` names the file
  and offset, and nothing is cut.

Which is which is decided by :func:`walsess.damage.classify_log`, which
``walsess check`` uses too.

Appends are one ``write(2)`` each; a write that fails part way is cut back,
so the file never holds half a record followed by more records.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .damage import LogState, LogVerdict, classify_log
from .errors import StorageError, StorePoisoned
from .fileio import FileSystem, must_fsync, must_fsync_dir
from .record import HEADER_SIZE, Header, Record, encode_header

__all__ = ["ChangeLog", "Cut", "LogReplay", "log_name", "replay_log"]

LOG_FILE = re.compile(r"^([0-9a-f]{16})\.log$")


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
class LogReplay:
    """What replaying one log file found: its :class:`LogVerdict`, and the cut it calls for."""

    path: str
    verdict: LogVerdict
    cut: Cut | None

    @property
    def header(self) -> Header | None:
        return self.verdict.header

    @property
    def records(self) -> int:
        return self.verdict.records

    @property
    def end(self) -> int:
        """Where the file's good records end: its size once a torn tail is cut."""
        return self.verdict.end


def replay_log(
    path: str,
    fs: FileSystem,
    apply: Callable[[Record], object],
    set_key: Callable[[int, str, bytes], object],
    max_value: int,
    newest: bool,
    *,
    generation: int | None = None,
    on_touch: Callable[[int, float, float], object] | None = None,
    on_create: Callable[..., object] | None = None,
) -> LogReplay:
    """Replay the log file at *path*: records to ``apply(record)``, one-key sets
    to ``set_key(sid, key, value)``, and TOUCH and CREATE records to the fast
    paths *on_touch* and *on_create* if given (see :meth:`RecordReader.replay`).

    The file is classified by :func:`walsess.damage.classify_log` (the rules
    ``walsess check`` uses too): a torn tail or unwritten header (only if
    *newest*) is reported as a :class:`Cut`, not yet cut; anything else wrong
    raises its :class:`CorruptionError` or :class:`FormatError` naming *path*
    and the offset. *generation* is the one the file's name says (by default,
    read from *path*); a header saying another is corruption. Cost: one read
    of the file and one pass over it.
    """
    if generation is None:
        named = LOG_FILE.match(os.path.basename(path))
        generation = int(named.group(1), 16) if named else None
    buf = fs.read(path)
    verdict = classify_log(
        buf,
        newest=newest,
        generation=generation,
        max_value=max_value,
        apply=apply,
        set_key=set_key,
        on_touch=on_touch,
        on_create=on_create,
    )
    if verdict.error is not None:
        raise verdict.error.located(path) from None
    cut = None
    if verdict.cut:
        assert verdict.offset is not None and verdict.reason is not None
        cut = Cut(path, verdict.offset, len(buf) - verdict.offset, verdict.reason)
    return LogReplay(path, verdict, cut)


class ChangeLog:
    """The open, writable newest log file of a store directory.

    Appends are serialised by the store's lock; :meth:`sync` and
    :meth:`rotate` may run in other threads and serialise on a lock of
    their own, so an fsync never meets a closed descriptor.
    """

    def __init__(
        self,
        directory: str,
        fs: FileSystem,
        generation: int,
        follows: int,
        fd: int,
        size: int,
        written: int = 0,
    ) -> None:
        self.directory = directory
        self.generation = generation
        #: The snapshot generation this log continues (0: none).
        self.follows = follows
        self.path = os.path.join(directory, log_name(generation))
        self._fs = fs
        # The plain file system's write is os.write itself: skip the wrapper's
        # frame on the hot path. A subclass (fault injection) is always called.
        self._write = os.write if type(fs).write is FileSystem.write else fs.write
        self._fd: int | None = fd
        self._fd_lock = threading.Lock()
        #: Bytes in the current file.
        self.size = size
        #: Bytes appended since open, across rotations: a monotonic position.
        self.written = written
        self.appends = 0

    @classmethod
    def open_newest(
        cls, replay: LogReplay, fs: FileSystem, generation: int, follows: int
    ) -> ChangeLog:
        """Open the newest log for append after replaying it, cutting its torn tail.

        *follows* is the snapshot the store loaded, for a log that is started again.
        """
        directory = os.path.dirname(replay.path)
        if replay.verdict.state is LogState.UNWRITTEN_HEADER:  # start the file again
            fs.unlink(replay.path)
            must_fsync_dir(fs, directory)
            return cls.create(directory, fs, generation, follows=follows)
        fd = fs.open(replay.path, os.O_WRONLY | os.O_APPEND)
        try:
            if replay.cut is not None:
                fs.truncate(fd, replay.end)
                must_fsync(fs, fd, replay.path)  # the cut is durable before records follow
        except BaseException:
            fs.close(fd)
            raise
        header = replay.header
        assert header is not None  # only an unwritten header has none, and it is started again
        return cls(directory, fs, generation, header.follows, fd, replay.end)

    @classmethod
    def create(
        cls, directory: str, fs: FileSystem, generation: int, follows: int, written: int = 0
    ) -> ChangeLog:
        """A new log file holding only its header, made durable with its directory entry."""
        path = os.path.join(directory, log_name(generation))
        tmp = path + ".tmp"
        fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fs.write_all(fd, encode_header(generation, follows))
            must_fsync(fs, fd, tmp)
        finally:
            fs.close(fd)
        fs.rename(tmp, path)
        must_fsync_dir(fs, directory)
        fd = fs.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(directory, fs, generation, follows, fd, HEADER_SIZE, written)

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
        with self._fd_lock:
            if self._fd is not None:
                self._fs.fsync(self._fd)

    def rotate(self, follows: int) -> None:
        """Continue in a new file of the next generation that follows snapshot *follows*.

        The current file is fsynced first, so every position before the switch
        is durable; if that fsync fails, :class:`StorePoisoned` (never retried).
        If creating the new file fails, appends go on in the current one. The
        caller holds the store lock (no appends meanwhile).
        """
        with self._fd_lock:
            if self._fd is None:
                raise StorageError(f"{self.path} is closed")
            must_fsync(self._fs, self._fd, self.path)
        new = ChangeLog.create(self.directory, self._fs, self.generation + 1, follows)
        with self._fd_lock:
            old_fd, self._fd, new._fd = self._fd, new._fd, None
            self.generation = new.generation
            self.follows = follows
            self.path = new.path
            self.size = new.size
        if old_fd is not None:
            self._fs.close(old_fd)

    def forget(self) -> None:
        """Close the descriptor without its lock or an fsync: for a forked child,
        whose copy of the lock may have been held by a parent thread at the fork."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._fs.close(fd)

    def close(self) -> None:
        """Close the file (without fsync: the durability policy decides that)."""
        with self._fd_lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                self._fs.close(fd)
