"""Expiry: removing expired sessions (gc) and the background cleanup thread.

An :class:`Expiry` belongs to one :class:`~walsess.store.Store`, which gives
it, explicitly, what gc needs: the store lock, the table, the clock, a check
that the store is open, a way to destroy sessions (logged, with hooks) and
what to do after a round. The store delegates ``gc()``, ``stop_cleanup()``
and ``last_gc`` here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import StoreClosed
from .table import SessionState, SessionTable

__all__ = ["Expiry"]

log = logging.getLogger("walsess")


class Expiry:
    """One store's gc and cleanup thread.

    *destroy* removes the given sessions as expired (a logged DESTROY each,
    destroy hooks run) and returns how many it removed; *after_gc* runs after
    each round (the store moves its compaction trigger). *interval* is the
    seconds between background rounds, None for no thread.
    """

    def __init__(
        self,
        *,
        path: str,
        table: SessionTable,
        lock: threading.Lock,
        clock: Callable[[], float],
        check_open: Callable[[], None],
        destroy: Callable[[list[SessionState]], int],
        after_gc: Callable[[], None],
        interval: float | None,
    ) -> None:
        self._path = path
        self._table = table
        self._lock = lock
        self._clock = clock
        self._check_open = check_open
        self._destroy = destroy
        self._after_gc = after_gc
        self._interval = interval
        #: The last gc round: {"at": clock time, "seconds": duration, "removed": count}.
        self.last_gc: dict[str, float] | None = None
        self._stop_cleanup = threading.Event()
        #: The background cleanup thread, or None if *interval* is None.
        self.cleaner: threading.Thread | None = None

    def start(self) -> None:
        """Start the background cleanup thread, if the store has an interval."""
        if self._interval:
            self.cleaner = threading.Thread(
                target=self._cleanup_loop, name="walsess-cleanup", daemon=True
            )
            self.cleaner.start()

    def disown(self, lock: threading.Lock) -> None:
        """In a forked child: take the store's new *lock* (a parent thread may
        have held the old one at the fork)."""
        self._lock = lock

    def expired_now(self, now: float) -> int:
        """Stored sessions that have expired but are not yet removed by gc.
        Under the store lock; O(log n + k) for the k sessions due."""
        return sum(1 for st in self._table.expiring(now) if not st.live_at(now))

    def gc(self) -> int:
        """Remove expired sessions: see :meth:`walsess.Store.gc`."""
        self._check_open()
        started = time.monotonic()
        now = self._clock()
        with self._lock:
            due = self._table.expiring(now)
            expired = []
            for st in due:
                if st.live_at(now):
                    self._table.reindex(st, st.expires_at)  # extended by reads since
                else:
                    expired.append(st)
        count = self._destroy(expired)
        self.last_gc = {"at": now, "seconds": time.monotonic() - started, "removed": count}
        self._after_gc()
        return count

    def _cleanup_loop(self) -> None:
        interval = self._interval
        assert interval is not None
        while not self._stop_cleanup.wait(interval):
            try:
                self.gc()
            except StoreClosed:
                return
            except Exception:  # keep cleaning; say why this round failed
                log.exception("walsess: background gc of %s failed", self._path)

    def stop(self) -> None:
        """Stop the background cleanup thread now; harmless to call twice."""
        self._stop_cleanup.set()
        cleaner = self.cleaner
        if cleaner is not None and cleaner is not threading.current_thread():
            cleaner.join()
