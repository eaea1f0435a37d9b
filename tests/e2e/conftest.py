"""The end-to-end tests' shared fixture: real server processes, each stopped at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import Framework, Server, spawn, start


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """A factory of servers (``servers(framework, store_dir, wait=True)``; *store_dir*
    is a Redis URL for a framework on Redis), each stopped
    at the end of the test, however it ends."""
    started: list[Server] = []

    def make(framework: Framework, store_dir: Path | str, *, wait: bool = True) -> Server:
        output = tmp_path / f"server-{len(started)}.log"
        server = (
            start(framework, store_dir, output) if wait else spawn(framework, store_dir, output)
        )
        started.append(server)
        return server

    yield make
    errors = []
    for server in started:  # every one, even if stopping another failed
        try:
            server.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
