"""The exceptions walsess raises. Every one derives from :class:`WalsessError`.

Errors about files carry the ``path`` and, where it applies, the byte
``offset`` they concern, so a message can be acted on without a debugger.
"""

from __future__ import annotations


class WalsessError(Exception):
    """Base class of every error raised by walsess."""


class FileError(WalsessError):
    """A store file is unreadable as walsess data; ``path`` and ``offset`` say where."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        self.path = path
        self.offset = offset
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}"
            if offset is not None:
                where += f" at offset {offset}"
            where += ": "
        super().__init__(where + message)

    def located(self, path: str, base_offset: int = 0) -> FileError:
        """A copy of this error naming *path*, with offsets shifted by *base_offset*."""
        offset = None if self.offset is None else self.offset + base_offset
        return type(self)(self.reason, path, offset)


class CorruptionError(FileError):
    """Data that fails its checksum or structure somewhere a crash cannot explain.

    A torn record at the very end of the newest log is a crash artifact and is
    cut, not reported with this error; a bad record followed by a good one is
    corruption and is.
    """


class FormatError(FileError):
    """A file that is not a walsess file, or is from an unsupported format version."""


class LimitError(FormatError):
    """A record that is valid but larger than this store is configured to accept."""


class LockedError(WalsessError):
    """Another opener (in this process or another) holds the store's lock."""


class InsecureStore(WalsessError):
    """The store directory, or a file in it, can be written by other users (group or
    others write permission) or belongs to another user. Someone who can write
    there can plant a log that creates sessions with tokens they know, so the
    store is refused; the message gives the ``chmod``/``chown`` to run."""


class StoreClosed(WalsessError):
    """The store was closed; open it again to use it."""


class StoreForked(StoreClosed):
    """The store was opened in another process, and this one is a fork of it.

    A forked child shares the parent's log file and lock; if both wrote, each
    would overwrite the other's records and one side's sessions would be lost
    on the next restart. So every call in the child raises this, nothing is
    written, and the parent's store keeps working. Open the store after
    forking (gunicorn without ``--preload``, or in a post-fork hook), once the
    parent has closed its copy; or use a store shared between processes.
    """


class StorePoisoned(WalsessError):
    """An fsync or an unrecoverable write failed; the store refuses further writes.

    Retrying an fsync after a failure can report success without the data
    being on disk, so walsess never retries: reopen the store to recover from
    what the log really holds.
    """


class StorageError(WalsessError):
    """The storage under a store failed: an operating-system call on a store file,
    or a command to a Redis server (:class:`RedisUnavailable`); the cause is chained."""


class RedisUnavailable(StorageError):
    """A :class:`walsess.RedisStore` could not reach its Redis server (connection
    refused, reset or timed out); the message names the server's address.

    The call changed nothing it did not finish: every change to one session is
    one Lua script, applied whole or not at all. When the connection drops
    after a script was sent, the script may have run; retrying a
    ``create``/``update`` is then safe, a retried ``destroy`` returns False.
    """


class SessionNotFound(WalsessError):
    """The session is unknown, destroyed, regenerated or expired."""


class StoreFull(WalsessError):
    """No room for another session (``max_sessions``, or the session-number space)."""


class ValidationError(WalsessError, ValueError):
    """Input that can never be stored; nothing was written."""


class InvalidKey(ValidationError):
    """A data key that is not a ``str`` or is longer than 65,535 UTF-8 bytes."""


class ValueTooLarge(ValidationError):
    """An encoded value longer than the store's ``max_value_bytes``."""


class TooManyKeys(ValidationError):
    """A change that would give a session more keys than the format allows
    (:data:`walsess.record.MAX_KEYS`, 65,535), or one record more changes."""


class CodecError(ValidationError):
    """A value the store's codec cannot encode (for JSON: sets, bytes, objects, NaN)."""
