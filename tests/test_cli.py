"""The ``walsess`` command, run as a subprocess on real stores, clean and damaged."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

import walsess
from walsess import cli as cli_module
from walsess import record as r
from walsess.cli import main
from walsess.progress import Progress


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walsess", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


@pytest.fixture
def now_clock() -> FakeClock:
    """A clock at the real present: the command judges expiry by the wall clock."""
    return FakeClock(time.time())


@pytest.fixture
def built(tmp_path: Path, now_clock: FakeClock) -> tuple[str, dict[str, dict[str, object]]]:
    """A store with a snapshot and a log after it; returns (dir, {token: data})."""
    clock = now_clock
    path = str(tmp_path / "store")
    with walsess.open(path, clock=clock, cleanup_interval=None) as store:
        sessions = [store.create({"i": i}, user=f"u{i % 2}") for i in range(6)]
        sessions[0]["cart"] = [1, 2]
        store.compact()
        sessions[1]["late"] = "yes"
        store.destroy(sessions[2].id)
        data = {s.id: dict(s) for s in sessions if s.id != sessions[2].id}
    return path, data


def newest_log(path: str) -> Path:
    return sorted(Path(path).glob("*.log"))[-1]


def test_check_clean(built: tuple[str, dict[str, dict[str, object]]]) -> None:
    path, data = built
    res = run("check", path)
    assert res.returncode == 0, res.stderr
    assert f"{len(data)} sessions" in res.stdout and res.stdout.rstrip().endswith("clean")
    assert "6 sessions" in res.stdout  # the snapshot's line


def test_check_reports_torn_tail_and_exits_0(
    built: tuple[str, dict[str, dict[str, object]]],
) -> None:
    path, _ = built
    log = newest_log(path)
    size = log.stat().st_size
    with log.open("ab") as f:
        f.write(b"\x03\x01\x00torn")
    res = run("check", path)
    assert res.returncode == 0
    assert f"torn tail: 7 bytes at offset {size}" in res.stdout
    assert log.stat().st_size == size + 7  # check never writes


def test_check_corrupt_names_file_and_offset(
    built: tuple[str, dict[str, dict[str, object]]],
) -> None:
    path, _ = built
    log = newest_log(path)
    buf = bytearray(log.read_bytes())
    buf[r.HEADER_SIZE + 10] ^= 0x01  # inside the first record; a valid one follows
    log.write_bytes(bytes(buf))
    res = run("check", path)
    assert res.returncode == 1
    assert f"corrupt: {log} at offset {r.HEADER_SIZE}" in res.stdout
    assert "Traceback" not in res.stderr + res.stdout


def test_repair_copies_aside_cuts_and_reports(
    built: tuple[str, dict[str, dict[str, object]]],
) -> None:
    path, _data = built
    log = newest_log(path)
    original = log.read_bytes()
    buf = bytearray(original)
    buf[r.HEADER_SIZE + 10] ^= 0x01
    log.write_bytes(bytes(buf))
    refused = run("repair", path, stdin="")  # not a terminal and no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert log.read_bytes() == bytes(buf)
    res = run("repair", path, "--yes")
    assert res.returncode == 0, res.stderr
    dropped = len(original) - r.HEADER_SIZE
    assert f"cut {log.name} at offset {r.HEADER_SIZE}: {dropped:,} bytes dropped" in res.stdout
    aside = [p for p in os.listdir(path) if p.startswith(log.name + ".broken-")]
    assert len(aside) == 1 and (Path(path) / aside[0]).read_bytes() == bytes(buf)
    assert run("check", path).returncode == 0
    with walsess.open(path, cleanup_interval=None) as store:
        # the snapshot's state survives; the log's two changes were cut
        assert store.recovery.clean and len(store) == 6


def test_repair_salvages_a_damaged_snapshot(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Damage costs the sessions of its block: one session per block here.
    monkeypatch.setattr(r, "BLOCK_SESSIONS", 1)
    path = str(tmp_path / "s")
    with walsess.open(path, clock=clock, cleanup_interval=None) as store:
        tokens = [store.create({"i": i}).id for i in range(10)]
        store.compact()
    snap = next(Path(path).glob("*.snap"))
    buf = bytearray(snap.read_bytes())
    buf[-40] ^= 0xFF  # inside the last BLOCK record
    snap.write_bytes(bytes(buf))
    assert run("check", path).returncode == 1
    with pytest.raises(walsess.CorruptionError):
        walsess.open(path, clock=clock)
    res = run("repair", path, "--yes")
    assert res.returncode == 0, res.stderr
    with walsess.open(path, clock=clock, cleanup_interval=None) as store:
        alive = [t for t in tokens if store.exists(t)]
        assert alive == tokens[:9]  # all but the damaged last session


def test_dump_json_and_session_filter(built: tuple[str, dict[str, dict[str, object]]]) -> None:
    path, data = built
    res = run("dump", path, "--json")
    assert res.returncode == 0
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert {row["op"] for row in rows} >= {"CREATE", "END", "MODIFY", "DESTROY"}
    assert all({"file", "offset", "op", "sid"} <= row.keys() for row in rows)
    token = next(t for t, d in data.items() if "late" in d)
    mine = [
        json.loads(line)
        for line in run("dump", path, "--json", f"--session={token}").stdout.splitlines()
    ]
    assert [row["op"] for row in mine] == ["CREATE", "MODIFY"]
    assert mine[1]["set"] == {"late": "yes"}
    assert token not in res.stdout  # tokens never appear


def test_stats_while_the_store_is_open(built: tuple[str, dict[str, dict[str, object]]]) -> None:
    path, data = built
    with walsess.open(path, cleanup_interval=None) as store:
        store.create({"more": 1})
        res = run("stats", path, "--json")
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        assert info["sessions"] == len(data) + 1 and info["users"] == 2
        assert run("check", path).returncode == 0
        locked = run("compact", path)
        assert locked.returncode == 1 and "open in another process" in locked.stderr
        locked = run("repair", path, "--yes")
        assert locked.returncode == 1 and "open in another process" in locked.stderr


def test_compact_command(built: tuple[str, dict[str, dict[str, object]]]) -> None:
    path, data = built
    res = run("compact", path)
    assert res.returncode == 0, res.stderr
    assert f"{len(data)} sessions" in res.stdout
    assert len(list(Path(path).glob("*.log"))) == 1
    with walsess.open(path, cleanup_interval=None) as store:
        for token, d in data.items():
            got = store.get(token)
            assert got is not None and dict(got) == d


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_erases_itself() -> None:
    term = _Terminal()
    bar = Progress(2, "checking", stream=term)
    bar.step("0000000000000001.log")
    assert term.getvalue().startswith("\rchecking [" + "#" * 15 + "." * 15 + "] 1/2 ")
    assert "0000000000000001.log" in term.getvalue()
    bar.step("snapshot")
    assert "[" + "#" * 30 + "] 2/2 snapshot" in term.getvalue()
    bar.finish()
    assert term.getvalue().endswith("\r" + " " * 100 + "\r")


def test_progress_in_percent_follows_a_changing_total() -> None:
    term = _Terminal()
    bar = Progress(0, "opening", stream=term, percent=True)
    bar.update(0, total=200)
    assert term.getvalue().endswith("] " + "  0% " + " " * 40)
    bar.update(50)
    assert "[" + "#" * 7 + "." * 23 + "]  25% " in term.getvalue()
    bar.update(300, total=100)  # a total may be overtaken (a file grew): never past 100%
    assert term.getvalue().endswith("[" + "#" * 30 + "] 100% " + " " * 40)


_FRAME = re.compile(r"\r(checking|opening) \[[#.]{30}\] +(\d+)(%|/\d+) ")


def _frames(drawn: str) -> list[tuple[str, str]]:
    """(label, count) of every frame of the bars drawn, e.g. ("opening", "100%")."""
    return [(m[1], m[2] + m[3]) for m in _FRAME.finditer(drawn)]


def _store_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.suffix in (".log", ".snap"))


def _stdout(command: list[str], stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> str:
    """What ``walsess *command*`` prints, with *stderr* as sys.stderr; stats'
    load_seconds (a measurement) is left out so outputs compare."""
    monkeypatch.setattr(sys, "stderr", stderr)
    out = io.StringIO()
    assert main(command, out) == 0
    return re.sub(r'(load_seconds"?:? +)[0-9.e-]+', r"\1T", out.getvalue())


@pytest.mark.parametrize("command", ["check", "stats"])
def test_a_big_store_shows_opening_progress_on_a_terminal(
    built: tuple[str, dict[str, dict[str, object]]], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Issue 11: check and stats draw a bar on stderr while they read a store
    above PROGRESS_MIN_BYTES, from 0% to 100% of its bytes, then erase it;
    stdout is the same as without one."""
    path, _ = built
    monkeypatch.setattr(cli_module, "PROGRESS_MIN_BYTES", _store_bytes(path) - 1)
    plain = _stdout([command, path], io.StringIO(), monkeypatch)
    term = _Terminal()
    assert _stdout([command, path], term, monkeypatch) == plain
    frames = _frames(term.getvalue())
    opening = [count for label, count in frames if label == "opening"]
    # One frame before the first file and one after each (a snapshot and a log).
    # 0%, each snapshot block, the end of the snapshot, 100%; never backwards.
    assert opening[0] == "0%" and opening[-1] == "100%" and len(opening) >= 3
    percents = [int(p[:-1]) for p in opening]
    assert percents == sorted(percents) and 0 < percents[-2] < 100
    checking = [count for label, count in frames if label == "checking"]
    assert checking == (["1/2", "2/2"] if command == "check" else [])
    assert term.getvalue().endswith("\r" + " " * 100 + "\r")


@pytest.mark.parametrize(
    "command, tty, above",
    [
        (["check"], False, True),  # stderr not a terminal
        (["stats"], False, True),
        (["check"], True, False),  # a small store
        (["stats"], True, False),
        (["stats", "--json"], True, True),  # --json: never
    ],
)
def test_no_progress_off_a_terminal_for_a_small_store_or_with_json(
    built: tuple[str, dict[str, dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    tty: bool,
    above: bool,
) -> None:
    path, _ = built
    size = _store_bytes(path)
    monkeypatch.setattr(cli_module, "PROGRESS_MIN_BYTES", size - 1 if above else size)
    stderr = _Terminal() if tty else io.StringIO()
    _stdout([*command, path], stderr, monkeypatch)
    assert stderr.getvalue() == ""


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run().returncode == 2
    assert run("check").returncode == 2
    res = run("check", str(tmp_path / "missing"))
    assert res.returncode == 2 and "not a store directory" in res.stderr


def test_errors_are_one_line_unless_debug(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / f"{1:016x}.log").write_bytes(b"not a log at all, just text....." * 2)
    res = run("stats", str(d))
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "not a walsess log" in res.stderr
    debug = run("--debug", "stats", str(d))
    assert "Traceback" in debug.stderr


# -- issue 10, defect 8: the command acts only on stores -------------------------------


def in_process(*args: str) -> tuple[int, str, str]:
    """Run the command through its main function: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(list(args), out=out)
    return status, out.getvalue(), err.getvalue()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_compact_of_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    """It used to create the store, parents and all, and exit 0."""
    typo = tmp_path / "no" / "such" / "store"
    res = run("compact", str(typo))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "not a store directory" in res.stderr
    assert tree(tmp_path) == []


@pytest.mark.parametrize("command", ["check", "stats", "dump", "repair", "compact"])
def test_a_directory_without_store_files_is_not_a_store(tmp_path: Path, command: str) -> None:
    """``check /etc`` and ``stats /etc`` used to say "clean" and exit 0."""
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "sub").mkdir()
    before = tree(tmp_path)
    res = run(command, str(tmp_path), *(["--yes"] if command == "repair" else []))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "not a walsess store" in res.stderr and res.stderr.count("\n") == 1
    assert tree(tmp_path) == before  # no LOCK, no log


@pytest.mark.parametrize("command", ["check", "stats", "dump", "repair", "compact"])
def test_a_file_is_a_usage_error(tmp_path: Path, command: str) -> None:
    """``compact FILE`` used to exit 1."""
    f = tmp_path / "file"
    f.write_text("x")
    res = run(command, str(f))
    assert res.returncode == 2 and "not a store directory" in res.stderr
    assert res.stderr.count("\n") == 1 and tree(tmp_path) == ["file"]


def test_dump_session_that_is_not_utf8(built: tuple[str, dict[str, dict[str, object]]]) -> None:
    """``dump --session=$'\\xff'`` used to print a traceback."""
    path, _ = built
    res = subprocess.run(
        [sys.executable, "-m", "walsess", "dump", path, b"--session=\xff"],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 2 and res.stderr.count(b"\n") == 1, res.stderr
    assert b"Traceback" not in res.stderr and res.stdout == b""


def test_an_unexpected_error_is_one_line_unless_debug(
    built: tuple[str, dict[str, dict[str, object]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = built

    def boom(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(cli_module, "verify_directory", boom)
    status, _, err = in_process("check", path)
    assert status == 1 and err.count("\n") == 1 and "something nobody planned for" in err
    with pytest.raises(RuntimeError):
        in_process("--debug", "check", path)


COMMANDS = ["check", "stats", "dump", "repair", "compact"]

#: Odd arguments: paths that do not exist (nested too), a file, an empty directory,
#: a directory of other files, names with spaces, dashes and bytes that are not UTF-8.
odd_names = st.sampled_from(
    ["missing", "a/b/c", "file", "empty", "other", "-x", " ", "caf\udce9", "\udcff\udcfe"]
)


@settings(max_examples=300)
@given(
    command=st.sampled_from(COMMANDS),
    name=odd_names,
    session=st.none() | st.text(max_size=4) | st.sampled_from(["\udcff", "-", "\udcc3\udca9"]),
    flags=st.lists(st.sampled_from(["--json", "--yes", "--debug"]), max_size=2, unique=True),
)
def test_odd_arguments_never_traceback_or_create(
    command: str, name: str, session: str | None, flags: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as root:
        base = Path(root)
        (base / "file").write_text("x")
        (base / "empty").mkdir()
        (base / "other").mkdir()
        (base / "other" / "notes.txt").write_text("x")
        before = tree(base)
        args = [a for a in flags if a != "--debug"]
        if session is not None and command == "dump":
            args.append(f"--session={session}")
        argv = (["--debug"] if "--debug" in flags else []) + [command, str(base / name), *args]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                status = main(argv, out=io.StringIO())
            except SystemExit as exc:  # pragma: no cover - main returns its status
                raise AssertionError(f"main exited: {exc}") from None
        assert status == 2, (argv, err.getvalue())
        assert err.getvalue().count("\n") >= 1 and "Traceback" not in err.getvalue()
        if "usage:" not in err.getvalue():
            assert err.getvalue().count("\n") == 1, err.getvalue()
        assert tree(base) == before, argv


@pytest.mark.parametrize("header", [b"", b"\x00" * 32, b"WSSL", b"\x00" * 10])
def test_check_and_open_agree_on_an_unwritten_newest_log_header(
    tmp_path: Path, header: bytes
) -> None:
    """Issue 10, defect 9: one rule for open and check. A newest log whose header
    never landed (a crash while creating it) is a crash artifact to open, which
    starts it again, so check must not call it corruption."""
    path = str(tmp_path / "s")
    with walsess.open(path, cleanup_interval=None) as store:
        token = store.create({"a": 1}).id
    logs = sorted(n for n in os.listdir(path) if n.endswith(".log"))
    generation = int(logs[-1].split(".")[0], 16)
    newest = os.path.join(path, f"{generation + 1:016x}.log")
    with open(newest, "wb") as f:
        f.write(header)
    os.chmod(newest, 0o600)
    result = run("check", path)
    assert result.returncode == 0, result.stdout + result.stderr
    with walsess.open(path) as store:
        assert store.exists(token)
