"""``walsess bench``, run as a subprocess at a tiny scale (the hidden ``--scale``).

Only the command is tested here: its exit status, its JSON and its table;
no timing is asserted. The rows and workloads themselves are exercised by
``bench/test_peers.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

#: Sessions per store in these runs: enough to exercise every workload, quick.
SCALE = "60"


def bench(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walsess", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=180,
    )


def results_of(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["workload"], r["peer"]): r for r in doc["results"]}


def test_floor_and_walsess(tmp_path: Path) -> None:
    res = bench(
        tmp_path,
        "--quick",
        "--only",
        "floor-dict,walsess-interval",
        "--json",
        "tmp.json",
        "--scale",
        SCALE,
        "--no-png",
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # no progress bar when not on a terminal
    doc = json.loads((tmp_path / "tmp.json").read_text())
    assert doc["format"] == 1 and doc["tool"] == "walsess bench"
    assert doc["settings"]["mode"] == "quick" and doc["settings"]["sessions"] == int(SCALE)
    assert doc["errors"] == []
    assert [(p["name"], p["status"]) for p in doc["peers"]] == [
        ("floor-dict", "ran"),
        ("walsess-interval", "ran"),
    ]
    names = [w["name"] for w in doc["workloads"]]
    assert names == [
        "create", "set", "read", "mixed", "durable-set-1", "durable-set-8", "open", "memory",
        "disk",
    ]  # fmt: skip
    got = results_of(doc)
    # the dict floor is neither durable nor persistent: no durable workload, no open, no disk
    assert {w for w, p in got if p == "floor-dict"} == {"create", "set", "read", "mixed", "memory"}
    assert {w for w, p in got if p == "walsess-interval"} == {
        "create", "set", "read", "mixed", "open", "memory", "disk",
    }  # fmt: skip
    for (work, _), r in got.items():
        assert r["samples"] and r["value"] == sorted(r["samples"])[len(r["samples"]) // 2]
        if work in ("create", "set", "read", "mixed"):
            assert r["unit"] == "ops/s" and r["value"] > 0 and r["calls"] > 0
        assert r["ratios"]["sqlite-normal"] is None  # sqlite did not run
        floors = {"floor-json"} if work == "open" else set()
        assert set(r["ratios"]) == {"sqlite-normal", "floor-dict", "floor-dict-write", *floors}
    s = got[("set", "walsess-interval")]
    floor = got[("set", "floor-dict")]
    assert s["ratios"]["floor-dict"] == pytest.approx(s["value"] / floor["value"])
    assert floor["ratios"]["floor-dict"] == pytest.approx(1.0)
    assert got[("open", "walsess-interval")]["unit"] == "s"
    assert got[("disk", "walsess-interval")]["value"] > 0
    out = res.stdout
    assert out.startswith("walsess bench --quick:")
    assert "\nset: set one key of a random existing session (ops/s" in out
    assert "x floor-dict" in out and "x sqlite-normal" not in out
    assert "wrote tmp.json" in out


def test_durable_rows_only(tmp_path: Path) -> None:
    res = bench(
        tmp_path, "--only", "durable,walsess-always,floor-dict", "--scale", SCALE, "--no-png"
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "walsess-bench.json").read_text())  # the default path
    got = results_of(doc)
    assert set(got) == {("durable-set-1", "walsess-always"), ("durable-set-8", "walsess-always")}
    assert got[("durable-set-1", "walsess-always")]["ratios"] == {"sqlite-full": None}
    assert [w["threads"] for w in doc["workloads"]] == [1, 8]
    assert "durable-set-8: set, durable on return, 8 threads" in res.stdout


def test_missing_peer_is_skipped_with_how_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))  # no redis-server to be found
    res = bench(
        tmp_path, "--only", "redis-always,floor-dict,set", "--scale", SCALE, "--no-png", env=env
    )
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("skipped redis-always: "))
    assert "install" in line
    doc = json.loads((tmp_path / "walsess-bench.json").read_text())
    peers = {p["name"]: p for p in doc["peers"]}
    assert peers["redis-always"]["status"] == "skipped"
    assert peers["redis-always"]["reason"] in line
    assert peers["floor-dict"]["status"] == "ran"
    assert set(results_of(doc)) == {("set", "floor-dict")}


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_store_row_beside_the_raw_peer_with_its_targets(tmp_path: Path) -> None:
    res = bench(
        tmp_path, "--only", "walsess-redis,redis-everysec,set,read,open", "--scale", SCALE,
        "--no-png",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "walsess-bench.json").read_text())
    assert set(results_of(doc)) == {
        ("set", "walsess-redis"), ("set", "redis-everysec"),
        ("read", "walsess-redis"), ("read", "redis-everysec"), ("open", "redis-everysec"),
    }  # fmt: skip
    targets = {t["workload"]: t for t in doc["targets"]}
    assert set(targets) == {"set", "read"}
    for work, t in targets.items():
        assert (t["peer"], t["reference"], t["limit"]) == ("walsess-redis", "redis-everysec", 1.3)
        assert t["time_ratio"] > 0 and t["met"] == (t["time_ratio"] <= 1.3)
        verdict = "met" if t["met"] else "NOT MET"
        assert (
            f"  target {work}: walsess-redis takes {t['time_ratio']:.2f} x the time of"
            f" redis-everysec per operation (at most 1.3): {verdict}"
        ) in res.stdout
    # A row in the set and read tables beside the raw peer (which also has open).
    shown = [x.split()[0] for x in res.stdout.splitlines() if x.startswith("  ") and "redis" in x]
    assert shown.count("walsess-redis") == 2 and shown.count("redis-everysec") == 3


def test_a_target_is_the_median_of_the_same_rounds_time_ratios() -> None:
    from walsess.benchmark.runner import Results, verdicts
    from walsess.benchmark.workloads import workload

    results = Results()
    for mine, raw in ((100.0, 120.0), (80.0, 120.0), (100.0, 110.0)):  # ops/s per round
        results.add(workload("set"), "walsess-redis", mine)
        results.add(workload("set"), "redis-everysec", raw)
    results.add(workload("read"), "walsess-redis", 50.0)  # the raw row did not run
    (v,) = verdicts(results)
    assert v.target.workload == "set"
    assert v.ratio == pytest.approx(1.2)  # of 1.2, 1.5 and 1.1
    assert v.met and "(at most 1.3): met" in v.line()
    results.add(workload("set"), "walsess-redis", 60.0)
    results.add(workload("set"), "redis-everysec", 120.0)
    (v,) = verdicts(results)
    assert v.ratio == pytest.approx(1.35) and not v.met and v.line().endswith("NOT MET")


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_png(tmp_path: Path) -> None:
    res = bench(tmp_path, "--only", "floor-dict,read", "--scale", SCALE, "--png", "chart.png")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote chart.png" in res.stdout


def test_usage_errors(tmp_path: Path) -> None:
    res = bench(tmp_path, "--only", "floor-dict,nope")
    assert res.returncode == 2
    assert "unknown name 'nope'" in res.stderr and "sqlite-normal" in res.stderr
    res = bench(tmp_path, "--quick", "--full")
    assert res.returncode == 2
    assert not (tmp_path / "walsess-bench.json").exists()


def test_help_hides_scale(tmp_path: Path) -> None:
    res = bench(tmp_path, "--help")
    assert res.returncode == 0
    for option in ("--quick", "--full", "--only", "--json", "--png", "--workdir"):
        assert option in res.stdout
    assert "--scale" not in res.stdout


def test_the_benchmark_does_not_import_the_cli() -> None:
    # Imports go one way (issue 11): the benchmark shares the progress bar with
    # `walsess check` through walsess.progress, not by reaching into walsess.cli.
    probe = "import sys, walsess.benchmark.runner; print('walsess.cli' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
