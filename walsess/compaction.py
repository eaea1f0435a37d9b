"""Compaction: write the live sessions as a snapshot and start a new log generation.

A :class:`Compactor` belongs to one :class:`~walsess.store.Store`. It holds
the compaction thread, the trigger (a log size) and the backoff after a
failure; the store gives it what it needs, explicitly, when it is made: the
store lock, the table, the log, the directory, the file system and a few
checks. The store calls :meth:`Compactor.start` after an append that takes
the log past :attr:`Compactor.threshold`, and delegates ``compact()``,
``compacting``, ``wait_compaction()``, ``snapshot_size()`` and
``last_compaction`` here.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .changelog import ChangeLog
from .errors import StorageError, StoreClosed, StorePoisoned
from .fileio import FileSystem
from .snapshot import SnapshotWriter, snapshot_size
from .storedir import StoreDirectory
from .table import SessionTable, sids_of

__all__ = ["CHUNK_SESSIONS", "Compaction", "Compactor"]

log = logging.getLogger("walsess")

_INF = math.inf
#: Sessions written to a snapshot per hold of the store lock during compaction
#: (about 2-3 ms of encoding on a slow core: the longest a writer waits for it).
#: Read at each compaction, so a test may make it small.
CHUNK_SESSIONS = 250


@dataclass(frozen=True)
class Compaction:
    """What one compaction did."""

    generation: int
    sessions: int
    snapshot_bytes: int
    started_at: float
    seconds: float
    removed: tuple[str, ...]


class Compactor:
    """One store's compactions: the trigger, the background thread and the backoff.

    Every argument comes from the store that owns it: *lock* is the store
    lock (held around every change to *table* and *log*), *check_open* and
    *check_writable* raise the store's error for a closed, forked or
    poisoned store, *fsync* makes the log durable, and *poisoned* records a
    failure that poisons the store. *snapshot_bytes* and *snapshot_sessions*
    describe the snapshot the store was opened from (0 if none).
    """

    def __init__(
        self,
        *,
        path: str,
        fs: FileSystem,
        files: StoreDirectory,
        table: SessionTable,
        log: ChangeLog,
        lock: threading.Lock,
        clock: Callable[[], float],
        check_open: Callable[[], None],
        check_writable: Callable[[], None],
        fsync: Callable[[], None],
        poisoned: Callable[[StorePoisoned], None],
        ratio: float | None,
        min_bytes: int,
        snapshot_bytes: int,
        snapshot_sessions: int,
    ) -> None:
        self._path = path
        self._fs = fs
        self._files = files
        self._table = table
        self._log = log
        self._lock = lock
        self._clock = clock
        self._check_open = check_open
        self._check_writable = check_writable
        self._fsync = fsync
        self._poisoned = poisoned
        self._ratio = ratio
        self._min_bytes = min_bytes
        self._snapshot_bytes = snapshot_bytes
        self._snapshot_sessions = snapshot_sessions
        # One compaction at a time; the auto-compaction threshold on the log size.
        self._compact_lock = threading.Lock()
        #: Compact once the log passes this many bytes (``math.inf``: never).
        #: The store compares its log size with it after each append.
        self.threshold = _INF
        self._thread: threading.Thread | None = None
        #: Background compactions failed in a row, and the last one's error.
        self.failures = 0
        self.error: str | None = None
        self._not_before = 0  # log bytes: the backoff after a failure
        #: What the last compaction did, or None if none ran since open.
        self.last: Compaction | None = None

    def disown(self, lock: threading.Lock) -> None:
        """In a forked child: take the store's new *lock*, and a new compaction
        lock, since a parent thread may have held the old ones at the fork."""
        self._lock = lock
        self._compact_lock = threading.Lock()

    def live_bytes(self) -> float:
        """What a snapshot of the live table would take: the last snapshot's bytes per
        session times the sessions now (256 bytes a session before any snapshot)."""
        per_session = 256.0
        if self._snapshot_sessions:
            per_session = self._snapshot_bytes / self._snapshot_sessions
        return per_session * len(self._table)

    def set_threshold(self) -> None:
        """Compact once snapshot + log exceed compact_ratio x live and compact_min_bytes
        (as Redis rewrites its AOF once it doubles), so disk stays within about
        compact_ratio x live + compact_min_bytes. Under the store lock (or at open)."""
        if self._ratio is None:
            self.threshold = _INF
        else:
            limit = max(self._min_bytes, self._ratio * self.live_bytes())
            self.threshold = limit - self._snapshot_bytes
            if self.failures:
                self.threshold = max(self.threshold, self._not_before)

    def live_changed(self) -> None:
        """After gc: live data shrank (or grew), so move the trigger. Takes the
        store lock; a running compaction sets the trigger itself when done."""
        with self._lock:
            if not self._compact_lock.locked():
                self.set_threshold()

    def start(self) -> None:
        """Under the lock, after an append and before it is applied: start a
        background compaction. Never raises: a thread that cannot start (the
        process is out of threads) is a failed compaction, which backs off."""
        self.threshold = _INF  # until this compaction sets it again
        thread = threading.Thread(target=self._auto_compact, name="walsess-compactor", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            self._compaction_failed(exc)
            return
        self._thread = thread

    def _auto_compact(self) -> None:
        try:
            self.compact()
        except (StoreClosed, StorePoisoned):
            pass
        except Exception as exc:
            with self._lock:
                self._compaction_failed(exc)

    def _compaction_failed(self, exc: BaseException) -> None:
        """Under the lock: count a failed background compaction and back off.

        The next try waits until the log has grown 2**k times past its size
        now, so a disk that stays full costs O(log n) attempts for n writes,
        not a compaction (and a thread) per write.
        """
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}"
        self._not_before = self._log.size * 2 ** min(self.failures, 30)
        self.set_threshold()
        log.error(
            "walsess: background compaction of %s failed (%d in a row); next try once"
            " the log reaches %d bytes",
            self._path,
            self.failures,
            self.threshold,
            exc_info=exc,
        )

    def compact(self) -> Compaction:
        """Compact now: see :meth:`walsess.Store.compact`."""
        self._check_open()  # before the compaction lock, which a forked child may find held
        with self._compact_lock:
            try:
                return self._compact()
            except StorePoisoned as exc:
                self._poisoned(exc)
                raise

    @property
    def compacting(self) -> bool:
        """True while a compaction (background or :meth:`compact`) is running."""
        compactor = self._thread
        return self._compact_lock.locked() or (compactor is not None and compactor.is_alive())

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background compaction, if one is running; False if
        *timeout* seconds passed first. A :meth:`compact` call in another
        thread is not waited for (its caller has the result)."""
        compactor = self._thread
        if compactor is None or compactor is threading.current_thread():
            return True
        compactor.join(timeout)
        return not compactor.is_alive()

    def snapshot_size(self) -> int:
        """The exact size in bytes of the snapshot a compaction would write now.

        O(n) encoding work under the lock, taken once: for tests and capacity
        planning (what ``compact_ratio`` multiplies), not for a request path.
        """
        self._check_open()
        with self._lock:
            return snapshot_size(self._table.views())

    def _compact(self) -> Compaction:
        started = time.monotonic()
        started_at = self._clock()
        # Make the log durable before taking the lock, so that the fsync the
        # rotation does under the lock has little left to write.
        self._fsync()
        with self._lock:
            self._check_writable()
            generation = self._log.generation + 1
            try:
                self._log.rotate(follows=generation)
            except OSError as exc:
                raise StorageError(f"compaction could not start a new log: {exc}") from exc
            # In expiry order, so the next open sorts its expiry index in
            # linear time; the list is copied now, the SIDs taken out unlocked.
            keys = self._table.expiry_keys()
        try:
            writer = SnapshotWriter(self._path, self._fs, generation)
        except OSError as exc:
            raise StorageError(f"compaction could not create a snapshot: {exc}") from exc
        try:
            chunk_sessions = CHUNK_SESSIONS
            find = self._table.view
            for i in range(0, len(keys), chunk_sessions):
                # Taken out chunk by chunk, so no single step holds the
                # interpreter for long (a list of a million is ~40 ms in one call).
                sids = sids_of(keys[i : i + chunk_sessions])
                with self._lock:
                    self._check_writable()
                    writer.add([st for st in map(find, sids) if st is not None])
                writer.flush()
            writer.commit()
        except OSError as exc:
            writer.abort()
            raise StorageError(f"compaction failed writing {writer.tmp}: {exc}") from exc
        except BaseException:
            writer.abort()
            raise
        try:
            removed = self._files.remove_before(generation)
        except OSError as exc:
            raise StorageError(f"compaction could not remove old files: {exc}") from exc
        result = Compaction(
            generation=generation,
            sessions=writer.count,
            snapshot_bytes=writer.size,
            started_at=started_at,
            seconds=time.monotonic() - started,
            removed=tuple(removed),
        )
        with self._lock:
            self.last = result
            self.failures = 0
            self.error = None
            self._not_before = 0
            self._snapshot_bytes = writer.size
            self._snapshot_sessions = writer.count
            self.set_threshold()
        return result

    def renumber(self) -> None:
        """At open, before any writer: give the sessions SIDs 1..n and compact, so
        the 32-bit SID space never runs out however long the store lives."""
        self._table.renumber()
        self._compact()
