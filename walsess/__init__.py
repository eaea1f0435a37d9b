"""walsess: web sessions in memory, made durable by a binary append-only change log.

Example::

    import walsess

    with walsess.open("var/sessions", durability="interval") as store:
        s = store.create({"user_id": 42}, user="42")
        s["cart"] = [1, 2]              # logged (write(2)) before it is applied
        same = store.get(s.id)          # None once expired or destroyed

Layers, bottom up: :mod:`~walsess.record` (the byte format, pure functions),
:mod:`~walsess.fileio` (the I/O seam), :mod:`~walsess.changelog` (log files,
recovery), :mod:`~walsess.table` (the in-memory table),
:mod:`~walsess.durability` (fsync policies), :mod:`~walsess.options` (the
settings), :mod:`~walsess.store` and :mod:`~walsess.session` (the API).
:mod:`~walsess.redis_store` has the same API on Redis (``walsess[redis]``).
"""

from typing import TYPE_CHECKING, Any

from .changelog import Cut
from .clock import ManualClock
from .codec import JSON, PICKLE, Codec, JSONCodec, PickleCodec
from .errors import (
    CodecError,
    CorruptionError,
    FileError,
    FormatError,
    InsecureStore,
    InvalidKey,
    LimitError,
    LockedError,
    RedisUnavailable,
    SessionNotFound,
    StorageError,
    StoreClosed,
    StoreForked,
    StoreFull,
    StorePoisoned,
    TooManyKeys,
    ValidationError,
    ValueTooLarge,
    WalsessError,
)
from .options import Options
from .record import FORMAT_VERSION
from .session import Session, SessionInfo
from .store import Compaction, Store, open
from .storedir import Recovery

if TYPE_CHECKING:
    from .redis_store import RedisSession, RedisStore

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "JSON",
    "PICKLE",
    "Codec",
    "CodecError",
    "Compaction",
    "CorruptionError",
    "Cut",
    "FileError",
    "FormatError",
    "InsecureStore",
    "InvalidKey",
    "JSONCodec",
    "LimitError",
    "LockedError",
    "ManualClock",
    "Options",
    "PickleCodec",
    "Recovery",
    "RedisSession",
    "RedisStore",
    "RedisUnavailable",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "StorageError",
    "Store",
    "StoreClosed",
    "StoreForked",
    "StoreFull",
    "StorePoisoned",
    "TooManyKeys",
    "ValidationError",
    "ValueTooLarge",
    "WalsessError",
    "open",
]


def __getattr__(name: str) -> Any:
    """``walsess.RedisStore`` and ``walsess.RedisSession``, imported on first use, so
    that ``import walsess`` never needs redis-py (the ``walsess[redis]`` extra)."""
    if name in ("RedisStore", "RedisSession"):
        from . import redis_store

        return getattr(redis_store, name)
    raise AttributeError(f"module 'walsess' has no attribute {name!r}")
