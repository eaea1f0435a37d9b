"""``walsess bench``: walsess side by side with the stores Python users would otherwise pick.

* :mod:`walsess.benchmark.peers`: one small adapter per store (walsess,
  sqlite3, diskcache, lmdb, cachelib, a Redis server it starts itself, and
  two floors), all with the same methods: ``create(data) -> token``,
  ``set(token, key, value)``, ``read(token) -> dict | None``,
  ``destroy(token)``, ``close()``, and a ``durable`` flag.
* :mod:`walsess.benchmark.workloads`: the session data, the seeded access
  plans and the operations every row runs; also the child process that
  measures open time, memory and disk per session.
* :mod:`walsess.benchmark.measure`: the measuring tools, for ``walsess bench``
  and the developers' suite alike: timing loops (``run_for``, ``calibrate``),
  the thread runner, medians, resident memory and the fresh-interpreter child.
* :mod:`walsess.benchmark.runner`: the ``walsess bench`` command: which rows
  and workloads, the progress bar, the table, the JSON and the PNG.

The developers' pytest-benchmark suite in ``bench/`` times the same
operations (``bench/test_peers.py``). The peers' packages are the optional
extra ``walsess[bench]``; a peer whose package or server is missing is
skipped with a line that says how to install it.
"""
