"""The one seam through which the engine touches the file system.

Every open, write, fsync, rename, truncate and unlink of store files goes
through a :class:`FileSystem`. Production uses :data:`OS`; tests pass a
subclass that fails the k-th call, writes only part of a buffer, or records
every call to build the states a power loss can leave.

Nothing here retries or interprets errors: callers decide what a failure
means (a failed fsync poisons the store, a failed write is cut back).
"""

from __future__ import annotations

import os

from .errors import StorePoisoned

__all__ = ["OS", "FileSystem", "must_fsync", "must_fsync_dir"]


class FileSystem:
    """Thin wrappers over :mod:`os` calls. Override any method to inject faults."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def read(self, path: str) -> bytes:
        """The whole content of *path*."""
        with open(path, "rb") as f:
            return f.read()

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def fsync_dir(self, path: str) -> None:
        """Make a directory's entries (created, renamed, removed files) durable."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)

    def write_all(self, fd: int, data: bytes) -> None:
        """write(2) until all of *data* is written; a short write is continued."""
        view = memoryview(data)
        while view:
            n = self.write(fd, view)
            if n <= 0:
                raise OSError(f"write returned {n}")
            view = view[n:]


OS = FileSystem()


def must_fsync(fs: FileSystem, fd: int, path: str) -> None:
    """fsync, turning a failure into :class:`StorePoisoned`: after a failed fsync
    nothing about the disk can be trusted, and retrying can report a false success."""
    try:
        fs.fsync(fd)
    except OSError as exc:
        raise StorePoisoned(f"fsync of {path} failed ({exc.strerror or exc})") from exc


def must_fsync_dir(fs: FileSystem, path: str) -> None:
    """:func:`must_fsync` for a directory's entries."""
    try:
        fs.fsync_dir(path)
    except OSError as exc:
        raise StorePoisoned(f"fsync of directory {path} failed ({exc.strerror or exc})") from exc
