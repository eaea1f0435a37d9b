"""A one-line progress bar for long commands (``walsess check``, ``walsess bench``).

It lives apart from the CLI so the benchmark can show progress without
depending on the command-line module: imports go one way, from both of them
to here. It imports nothing from walsess.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """A one-line progress bar on a terminal; silent when stderr is not one.

    Each step rewrites the line in place (one write and flush, O(1)); on a
    stream that is not a terminal nothing is written at all, so logs and
    pipes stay clean:

    >>> import io
    >>> bar = Progress(2, "checking", stream=io.StringIO())
    >>> bar.step("a.log"); bar.step("b.log"); bar.finish()
    >>> bar.done, bar.stream.getvalue()
    (2, '')
    """

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty()
        self.done = 0

    def step(self, what: str = "") -> None:
        """Count one step done; *what* (its last 40 characters) is shown beside the bar."""
        self.done += 1
        if self.enabled:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(
                f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}]"
                f" {self.done}/{self.total} {what[-40:]:<40}"
            )
            self.stream.flush()

    def finish(self) -> None:
        """Erase the bar so the command's own output starts on a clean line."""
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
