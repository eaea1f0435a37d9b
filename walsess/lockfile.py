"""The store directory's exclusive lock: one opener at a time, in any process.

flock(2) locks belong to an open file description, so a second opener in the
same process conflicts just like one in another process, and the kernel
drops the lock when its holder dies: a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os

from .errors import LockedError
from .fileio import FileSystem

__all__ = ["LOCK_NAME", "DirectoryLock"]

LOCK_NAME = "LOCK"


class DirectoryLock:
    """Holds ``flock(LOCK_EX)`` on ``DIR/LOCK`` until :meth:`release`."""

    def __init__(self, directory: str, fs: FileSystem) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self._fs = fs
        fd = fs.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fs.close(fd)
            raise LockedError(
                f"{self.path} is locked: the store is open in another process or in"
                " another walsess.open() of this process. A store belongs to one process:"
                " run one worker process with threads (gunicorn -w 1 --threads N, a single"
                " uvicorn worker), or use a store shared between processes. A development"
                " server's reloader counts as a second process when it imports the app in"
                " its watcher too (flask run --debug: add --no-reload)"
            ) from None
        except BaseException:
            fs.close(fd)
            raise
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock; harmless to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._fs.close(fd)  # closing the descriptor releases the flock
