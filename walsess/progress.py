"""A one-line progress bar for long commands (``walsess check``, ``stats``, ``bench``).

It lives apart from the CLI so the benchmark can show progress without
depending on the command-line module: imports go one way, from both of them
to here. It imports nothing from walsess.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """A one-line progress bar on a terminal; silent when the stream is not one.

    Each step rewrites the line in place (one write and flush, O(1)); on a
    stream that is not a terminal nothing is written at all, so logs and
    pipes stay clean. *stream* defaults to ``sys.stderr`` as it is when the bar
    is made (so a redirected stderr is honoured). The count is shown as
    ``done/total``, or with *percent* as a percentage (for totals in bytes):

    >>> import io
    >>> bar = Progress(2, "checking", stream=io.StringIO())
    >>> bar.step("a.log"); bar.step("b.log"); bar.finish()
    >>> bar.done, bar.stream.getvalue()
    (2, '')
    """

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, *, percent: bool = False
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.percent = percent
        self.done = 0

    def step(self, what: str = "") -> None:
        """Count one step done; *what* (its last 40 characters) is shown beside the bar."""
        self.update(self.done + 1, what=what)

    def update(self, done: int, *, total: int | None = None, what: str = "") -> None:
        """Show *done* steps (or bytes) done, of *total* if given (it may change,
        e.g. when a load falls back to other files) or of the total so far."""
        if total is not None:
            self.total = max(total, 1)
        self.done = done
        if self.enabled:
            width = 30
            shown = min(done, self.total)
            filled = width * shown // self.total
            count = f"{100 * shown // self.total:3}%" if self.percent else f"{done}/{self.total}"
            self.stream.write(
                f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {count} {what[-40:]:<40}"
            )
            self.stream.flush()

    def finish(self) -> None:
        """Erase the bar so the command's own output starts on a clean line."""
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
