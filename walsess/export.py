"""Moving an embedded store's sessions into Redis: ``walsess export DIR --to redis://...``.

:func:`export_store` copies every live session of a store directory into a
:class:`walsess.RedisStore` through :meth:`~walsess.RedisStore.put_state`:
the token's digest (so its ref, and every token the embedded store handed
out, keep working), the owner, the metadata, the data as the encoded bytes
the store holds (nothing is decoded, so the RedisStore must use the codec
the application used), the creation time, the idle timeout and the time
left before the idle and absolute deadlines.

It holds the directory's lock for the whole copy, as an open store does, so
it refuses to run while the application has the store open (a session
changed after it was copied would be lost) and no application opens the
store meanwhile. It changes no file of the store.

Each session is written whole, replacing what Redis holds under its ref, so
an export is idempotent (a second run writes the same sessions again and
leaves Redis as it was) and safe to rerun after an interruption (the rerun
writes every session, those the first run copied included). Run it before
the application starts on Redis: a rerun puts back the embedded store's
version of every session it copies.

Example::

    with walsess.RedisStore.from_url("redis://10.0.0.5:6379/0") as target:
        report = export_store("/var/lib/myapp/sessions", target)
    print(report.sessions, "sessions copied")

Cost: reading the store as an open does (O(its files)), then one round trip
to Redis per live session (a script).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import record as rec
from .errors import LockedError
from .fileio import OS
from .lockfile import DirectoryLock
from .storedir import LoadProgress, StoreDirectory

if TYPE_CHECKING:
    from .redis_store import RedisStore

__all__ = ["ExportProgress", "ExportReport", "export_store"]

#: Told how far an export has got: ``progress(sessions_done, sessions_total)``, after
#: each session (copied or skipped) of the store's *total* (expired ones included).
#: An exception it raises stops the export there (what is copied stays copied).
ExportProgress = Callable[[int, int], object]


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_store` copied (or, with ``dry_run``, would copy)."""

    #: Live sessions copied (would be copied).
    sessions: int
    #: Sessions in the files that had expired by the time the export reached them:
    #: not copied (Redis would drop them at once).
    expired: int
    #: Distinct owners among the sessions copied.
    users: int
    #: Sessions copied without an owner.
    anonymous: int
    #: Bytes of encoded data and metadata copied (keys and values as stored).
    data_bytes: int
    #: True if nothing was written.
    dry_run: bool
    #: How long the export took, reading the store included (``time.monotonic``).
    seconds: float


def export_store(
    source: str | os.PathLike[str],
    target: RedisStore,
    *,
    progress: ExportProgress | None = None,
    dry_run: bool = False,
    load_progress: LoadProgress | None = None,
) -> ExportReport:
    """Copy every live session of the store directory *source* into *target*.

    Liveness and the time left are judged by *target*'s clock, session by
    session, so a session keeps the idle and absolute time it had left when
    it was copied. With *dry_run* nothing is written (the report says what
    would be). *progress* is told ``(done, total)`` after each session;
    *load_progress* is told how the reading of the files goes (as
    :meth:`walsess.storedir.StoreDirectory.load` tells it).

    Raises :class:`walsess.LockedError` if the store is open in another
    process (or another ``walsess.open()`` of this one),
    :class:`walsess.RedisUnavailable` if Redis does not answer (checked before
    the files are read), and what opening the store would raise for damaged
    files (:class:`walsess.CorruptionError`).

    Example::

        report = export_store("sessions", target, dry_run=True)
        print(f"{report.sessions} sessions of {report.users} users")
    """
    started = time.monotonic()
    path = os.fspath(source)
    target.ping()  # fail before a long read when Redis is not there
    try:
        lock = DirectoryLock(path, OS)
    except LockedError:
        raise LockedError(
            f"{path} is open in another process: stop the application before exporting"
            " (a session it changed after being copied would be lost)"
        ) from None
    try:
        # The largest values a store can hold: the bytes are copied, never decoded.
        loaded = StoreDirectory(path, OS).load(rec.MAX_PAYLOAD_BYTES, progress=load_progress)
        states = loaded.table.views()
        total = len(states)
        copied = expired = anonymous = data_bytes = 0
        users: set[str] = set()
        for done, st in enumerate(states, 1):
            now = target.now()
            if not st.live_at(now):
                expired += 1
            else:
                data = st.data
                written = dry_run or target.put_state(
                    st.digest,
                    created_at=st.created_at,
                    ttl=st.ttl,
                    idle_remaining=st.idle_deadline - now,
                    hard_remaining=(
                        None if st.hard_deadline == math.inf else st.hard_deadline - now
                    ),
                    user=st.user,
                    meta=st.meta,
                    data=data,
                )
                if written:
                    copied += 1
                    if st.user is None:
                        anonymous += 1
                    else:
                        users.add(st.user)
                    data_bytes += sum(len(rec.key_bytes(k)) + len(v) for k, v in data.items())
                    data_bytes += 0 if st.meta is None else len(st.meta)
                else:  # its last moment passed between the check and the write
                    expired += 1
            if progress is not None:
                progress(done, total)
    finally:
        lock.release()
    return ExportReport(
        sessions=copied,
        expired=expired,
        users=len(users),
        anonymous=anonymous,
        data_bytes=data_bytes,
        dry_run=dry_run,
        seconds=time.monotonic() - started,
    )
