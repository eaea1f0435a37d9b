"""The walsess benchmark suite: workloads, pytest-benchmark tests and a median report.

Run ``python -m pytest bench`` (pytest-benchmark) or ``python -m bench.report``
(medians and target ratios, for the README). ``WALSESS_BENCH_SCALE`` (or
``--walsess-scale``) sets the replay log size; the default is 1,000,000.
"""
