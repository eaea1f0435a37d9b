"""When appended records are fsynced: the three durability modes.

Every mode writes each change with write(2) before the call that made it
returns, so a killed process loses nothing acknowledged. They differ only in
what a power loss (or kernel crash) can take:

``always``
    The call returns after an fsync that covers its record. Threads that
    commit together share one fsync (group commit): the first waiter becomes
    the leader and fsyncs everything written so far; the others wait for it,
    and whoever is still not covered leads the next round.
``interval``
    A daemon thread fsyncs at most ``fsync_interval`` seconds after the first
    change that is not yet durable. A power loss loses at most that window
    (plus the time one fsync takes).
``never``
    fsync only on :meth:`close` and :meth:`Store.sync`; the kernel writes
    back on its own schedule (about 30 s on Linux).

The *fsync* callable given to a policy must raise :class:`StorePoisoned` on
failure and refuse to run again afterwards; policies never retry it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import StorePoisoned, ValidationError

__all__ = ["MODES", "AlwaysSync", "IntervalSync", "NeverSync", "SyncPolicy", "make_policy"]

log = logging.getLogger("walsess")

MODES = ("always", "interval", "never")


class SyncPolicy:
    """Base policy: nothing happens after an append; nothing to wait for."""

    name = "never"
    #: True if :meth:`wait` must be called after each commit (outside the store lock).
    waits = False
    #: The store calls :meth:`appended` only while this is False, saving a call per
    #: write for the policies that do nothing then.
    dirty = True

    def __init__(self, fsync: Callable[[], None], position: Callable[[], int]) -> None:
        self._fsync = fsync
        self._position = position

    def appended(self) -> None:
        """Called under the store lock after each append. Must be cheap."""

    def wait(self, position: int) -> None:
        """Block until bytes up to *position* are durable (``always`` only)."""

    def close(self) -> None:
        """Stop any background work. The store fsyncs once more itself."""


class NeverSync(SyncPolicy):
    """fsync on close and on demand only."""


class AlwaysSync(SyncPolicy):
    """Each commit returns after an fsync covering it; concurrent commits share fsyncs."""

    name = "always"
    waits = True

    def __init__(self, fsync: Callable[[], None], position: Callable[[], int]) -> None:
        super().__init__(fsync, position)
        self._cond = threading.Condition(threading.Lock())
        self._durable = 0
        self._leading = False

    def wait(self, position: int) -> None:
        cond = self._cond
        with cond:
            while self._durable < position:
                if self._leading:
                    cond.wait()
                    continue
                self._leading = True
                # Everything written so far is covered by the fsync we are about
                # to make, including records of threads now queueing behind us.
                target = self._position()
                cond.release()
                try:
                    self._fsync()
                except BaseException:
                    cond.acquire()
                    self._leading = False
                    cond.notify_all()
                    raise
                cond.acquire()
                self._durable = max(self._durable, target)
                self._leading = False
                cond.notify_all()


class IntervalSync(SyncPolicy):
    """A flusher thread fsyncs within ``interval`` seconds of the first unsynced change."""

    name = "interval"

    def __init__(
        self, fsync: Callable[[], None], position: Callable[[], int], interval: float
    ) -> None:
        super().__init__(fsync, position)
        self.interval = interval
        #: Set under the store lock by the first append after a flush.
        self.dirty = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="walsess-flusher", daemon=True)
        self._thread.start()

    def appended(self) -> None:
        if not self.dirty:
            self.dirty = True
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping.wait(self.interval):
                return  # close() makes the final fsync
            # Clear before syncing: a write racing with us marks dirty again and
            # is covered by this fsync or the next one.
            self._wake.clear()
            # close() sets _stopping before _wake: if it raced with the clear
            # above, either we see _stopping now or _wake is set again after
            # the clear and the next wait returns at once. Without this check
            # close() could wait forever for a flusher asleep on _wake.
            if self._stopping.is_set():
                return
            self.dirty = False
            try:
                self._fsync()
            except StorePoisoned as exc:
                log.error("walsess: background fsync failed; store poisoned: %s", exc)
                return
            except Exception:  # never let the flusher die silently
                log.exception("walsess: background fsync raised unexpectedly")
                return

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


def make_policy(
    mode: str, fsync: Callable[[], None], position: Callable[[], int], interval: float
) -> SyncPolicy:
    """The policy for durability *mode* (one of :data:`MODES`)."""
    if mode == "always":
        return AlwaysSync(fsync, position)
    if mode == "interval":
        return IntervalSync(fsync, position, interval)
    if mode == "never":
        return NeverSync(fsync, position)
    raise ValidationError(f"durability must be one of {', '.join(MODES)}; got {mode!r}")
