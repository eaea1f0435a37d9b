"""Fixtures of the benchmark suite: the scale, one shared :class:`Workbench` and
one shared :class:`MaintenanceBench`.

The scale is ``--walsess-scale N`` or ``WALSESS_BENCH_SCALE=N`` (records in
the replay log; stores hold N // 5 sessions), default 1,000,000. CI runs a
smoke test at tiny scale::

    WALSESS_BENCH_SCALE=1000 python -m pytest bench --benchmark-disable
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.maintenance import MaintenanceBench
from bench.workloads import SCALE_ENV, Scale, Workbench
from walsess.benchmark.workloads import parse_scale


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--walsess-scale",
        default=None,
        type=parse_scale,
        help=f"records in the replay log (sessions = records // 5); overrides ${SCALE_ENV};"
        " default 1,000,000",
    )


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> Scale:
    records: int | None = request.config.getoption("--walsess-scale")
    return Scale(records) if records is not None else Scale.from_env()


@pytest.fixture(scope="session")
def workbench(scale: Scale, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workbench]:
    with Workbench(str(tmp_path_factory.mktemp("walsess-bench")), scale) as wb:
        yield wb


@pytest.fixture(scope="session")
def maintenance(
    scale: Scale, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MaintenanceBench]:
    with MaintenanceBench(str(tmp_path_factory.mktemp("walsess-maintenance")), scale) as mb:
        yield mb
