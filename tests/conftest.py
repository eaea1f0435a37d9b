"""Shared test fixtures: an injectable clock, a store directory, hypothesis profiles.

Hypothesis runs derandomized under the ``ci`` profile (selected when CI is
set, or with HYPOTHESIS_PROFILE=ci) so a CI run is repeatable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import walsess
from walsess.clock import ManualClock

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


#: A clock tests move by hand: no test sleeps to wait for expiry.
FakeClock = ManualClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_dir(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def store(store_dir: str, clock: FakeClock) -> Iterator[walsess.Store]:
    # No background gc: on a clock that moves only when told, it would be noise.
    s = walsess.open(store_dir, clock=clock, cleanup_interval=None)
    try:
        yield s
    finally:
        s.close()


def appended(store: walsess.Store) -> int:
    """Records the store has appended since it was opened."""
    return int(store.stats()["records_appended"])


def reopen_data(path: str, token: str, clock: ManualClock) -> dict[str, Any] | None:
    """The session's data as a fresh open of the store directory sees it."""
    with walsess.open(path, clock=clock, cleanup_interval=None) as s:
        handle = s.get(token)
        return None if handle is None else dict(handle)


def parse_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """A ``Set-Cookie`` header as (name, value, attributes with lower-cased names;
    flags map to ""), for the integrations' tests."""
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    attrs: dict[str, str] = {}
    for part in rest:
        if part:
            k, _, v = part.partition("=")
            attrs[k.strip().lower()] = v.strip()
    return name, value, attrs


def start_child(
    code: str, *args: str, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], threading.Timer]:
    """Run *code* in a child Python importing this checkout's walsess, with pipes on
    stdout and stderr and a watchdog that kills it after *timeout* seconds (cancel
    the returned timer when done)."""
    env = dict(os.environ)
    src = str(Path(walsess.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    return proc, watchdog
