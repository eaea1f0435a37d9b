"""A clock to inject with ``walsess.open(clock=...)`` in tests: it moves only when told.

Expiry is judged by the store's clock, so a test (yours or ours) advances a
:class:`ManualClock` instead of sleeping.

Example::

    >>> clock = ManualClock(1000.0)
    >>> clock(), clock.advance(5), clock()
    (1000.0, None, 1005.0)
"""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """Seconds since the epoch, held in :attr:`now` until :meth:`advance` moves it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
