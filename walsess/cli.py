"""The ``walsess`` command: check, dump, repair, stats, compact and export a store directory.

check, dump and stats only read, take no lock and work while another
process has the store open. repair, compact and export take the store's
lock and say so when someone else holds it (export changes no file: it
holds the lock so the application cannot change the store while it copies).

Exit status: 0 success (for check: clean, or only a torn tail that the next
open cuts), 1 corruption or a failed operation, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import record as rec
from . import tokens
from .changelog import LOG_FILE
from .codec import JSON
from .errors import LockedError, ValidationError, WalsessError
from .export import export_store
from .fileio import OS
from .options import Options
from .progress import Progress
from .repair import RepairStep, repair_store
from .snapshot import SNAPSHOT_FILE
from .storedir import Loaded, StoreDirectory
from .verify import iter_records, verify_directory

__all__ = ["PROGRESS_MIN_BYTES", "main"]

#: check and stats draw a progress bar on stderr only for a store whose
#: snapshot and log files total more than this many bytes (smaller ones open
#: in well under a second), and only when stderr is a terminal.
PROGRESS_MIN_BYTES = 64 * 1024 * 1024


class UsageError(Exception):
    """Bad arguments: exit status 2."""


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _bar_stream(directory: str, quiet: bool = False) -> TextIO | None:
    """stderr if progress should be drawn there: it is a terminal, *quiet* (--json)
    is not set and the store is bigger than :data:`PROGRESS_MIN_BYTES`; else None.
    Cost: one ``stat`` per file."""
    stream = sys.stderr
    if quiet or not stream.isatty():
        return None
    return stream if sum(StoreDirectory(directory, OS).sizes()) > PROGRESS_MIN_BYTES else None


def _load(directory: str, bar_stream: TextIO | None) -> Loaded:
    """:meth:`StoreDirectory.load` of *directory*, with a bar on *bar_stream*
    (erased when done) if it is not None."""
    files = StoreDirectory(directory, OS)
    if bar_stream is None:
        return files.load(rec.MAX_PAYLOAD_BYTES)
    bar = Progress(0, "opening", bar_stream, percent=True)
    try:
        return files.load(
            rec.MAX_PAYLOAD_BYTES, progress=lambda done, total: bar.update(done, total=total)
        )
    finally:
        bar.finish()


def _sessions(directory: str, bar_stream: TextIO | None) -> int | WalsessError:
    """The sessions an open would read, or why the files do not open (what
    ties them together: snapshot choice, log chain, each log's ``follows``)."""
    try:
        return len(_load(directory, bar_stream).table)
    except WalsessError as exc:
        return exc


# -- check -------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    directory = args.dir
    bar_stream = _bar_stream(directory)
    bar: list[Progress] = []

    def show(total: int, path: str) -> None:
        if not bar:
            bar.append(Progress(total, "checking", bar_stream))
        if path:
            bar[0].step(os.path.basename(path))

    reports = verify_directory(directory, progress=None if bar_stream is None else show)
    if bar:
        bar[0].finish()
    records = sum(r.records for r in reports)
    size = sum(r.size for r in reports)
    sessions = _sessions(directory, bar_stream)
    shown = "?" if isinstance(sessions, WalsessError) else f"{sessions:,}"
    out.write(
        f"{directory}: {len(reports)} files, {records:,} records, {shown} sessions, {_size(size)}\n"
    )
    for r in reports:
        what = "sessions" if r.kind == "snapshot" else "records"
        status = "ok"
        if r.torn_tail:
            status = (
                f"torn tail: {r.size - (r.problem_offset or 0):,} bytes at offset"
                f" {r.problem_offset} would be cut on open ({r.problem})"
            )
        elif r.problem is not None:
            status = f"CORRUPT at offset {r.problem_offset}: {r.problem}"
        out.write(
            f"  {os.path.basename(r.path)}  {r.kind:<8} {r.records:>10,} {what:<8}"
            f" {_size(r.size):>10}  {status}\n"
        )
    bad = [r for r in reports if r.corrupt]
    if bad:
        first = bad[0]
        out.write(f"corrupt: {first.path} at offset {first.problem_offset}: {first.problem}\n")
        out.write("run 'walsess repair' to cut it (the damaged files are copied aside first)\n")
        return 1
    if isinstance(sessions, WalsessError):
        # Every file is fine by itself; the error names the file (and offset)
        # that open refuses for what ties the files together.
        out.write(
            f"corrupt: the files do not form a complete state: {_one_line(sessions)}"
            " (see 'walsess stats')\n"
        )
        return 1
    if any(r.torn_tail for r in reports):
        out.write("clean, except a torn tail that the next open cuts (a crash artifact)\n")
    else:
        out.write("clean\n")
    return 0


# -- dump --------------------------------------------------------------------------------


def _value(raw: bytes) -> Any:
    try:
        return JSON.decode(raw)
    except (ValueError, UnicodeDecodeError):
        return {"hex": raw.hex()}


def _describe(file: str, offset: int, r: rec.SessionRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "file": os.path.basename(file),
        "offset": offset,
        "op": rec.Op(_OPS[type(r)]).name,
        "sid": r.sid,
    }
    if isinstance(r, rec.Create):
        out.update(
            ref=tokens.ref_of(r.digest),
            created_at=r.created_at,
            ttl=r.ttl,
            idle_deadline=r.idle_deadline,
            hard_deadline=None if r.hard_deadline == float("inf") else r.hard_deadline,
            user=r.user,
            meta=None if r.meta is None else _value(r.meta),
            data={k: _value(v) for k, v in r.items},
        )
    elif isinstance(r, rec.Modify):
        out.update(
            clear=r.clear,
            set={k: _value(v) for k, v in r.changes if v is not None},
            delete=[k for k, v in r.changes if v is None],
        )
    elif isinstance(r, rec.Touch):
        out.update(idle_deadline=r.idle_deadline, ttl=r.ttl)
    elif isinstance(r, rec.Destroy):
        out.update(reason=rec.DestroyReason(r.reason).name.lower())
    elif isinstance(r, rec.ChangeId):
        out.update(ref=tokens.ref_of(r.digest))
    elif isinstance(r, rec.End):
        out.update(sessions=r.sessions)
    return out


_OPS = {
    rec.Create: rec.Op.CREATE,
    rec.Destroy: rec.Op.DESTROY,
    rec.ChangeId: rec.Op.CHANGE_ID,
    rec.Modify: rec.Op.MODIFY,
    rec.Touch: rec.Op.TOUCH,
    rec.End: rec.Op.END,
}


def cmd_dump(args: argparse.Namespace, out: TextIO) -> int:
    want = None if args.session is None else tokens.digest(args.session)
    sids: set[int] = set()  # SIDs that belong to the wanted session right now
    for file, offset, r in iter_records(args.dir):
        if want is not None:
            digest = getattr(r, "digest", None)
            if digest is not None:
                if digest == want:
                    sids.add(r.sid)
                elif isinstance(r, rec.Create):
                    sids.discard(r.sid)  # the SID now names another session
            if r.sid not in sids:
                continue
            if isinstance(r, rec.Destroy):
                sids.discard(r.sid)
        item = _describe(file, offset, r)
        if args.json:
            out.write(json.dumps(item, sort_keys=False) + "\n")
        else:
            head = f"{item.pop('file')}:{item.pop('offset')} {item.pop('op')} sid={item.pop('sid')}"
            rest = " ".join(f"{k}={json.dumps(v)}" for k, v in item.items())
            out.write(f"{head} {rest}\n")
    return 0


# -- stats -------------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    bar_stream = _bar_stream(args.dir, quiet=args.json)
    started = time.monotonic()
    loaded = _load(args.dir, bar_stream)
    seconds = time.monotonic() - started
    snap_bytes, log_bytes = StoreDirectory(args.dir, OS).sizes()
    table = loaded.table
    now = time.time()
    live = sum(1 for st in table.views() if st.live_at(now))
    users = len(table.by_user)
    info = {
        "directory": args.dir,
        "sessions": live,
        "expired_pending_gc": len(table) - live,
        "users": users,
        "snapshot": loaded.snapshot or None,
        "snapshot_sessions": loaded.snapshot_sessions,
        "log_records": loaded.records,
        "log_files": len(loaded.logs),
        "snapshot_bytes": snap_bytes,
        "log_bytes": log_bytes,
        "torn_tail_bytes": sum(r.cut.dropped for r in loaded.logs if r.cut is not None),
        # What an open would read, and how long reading it took (store.recovery
        # has the same two figures for an open store).
        "sessions_read": len(table),
        "load_seconds": seconds,
    }
    if args.json:
        out.write(json.dumps(info) + "\n")
    else:
        for k, v in info.items():
            if isinstance(v, float):
                out.write(f"{k:<20} {v:,.3f}\n")
            else:
                out.write(f"{k:<20} {v:,}\n" if isinstance(v, int) else f"{k:<20} {v}\n")
    return 0


# -- repair ------------------------------------------------------------------------------


def _confirm(question: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("repair changes files: pass --yes when not on a terminal")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_repair(args: argparse.Namespace, out: TextIO) -> int:
    directory = args.dir

    def confirm(steps: Sequence[RepairStep]) -> bool:
        out.write(f"damage: {steps[0].damage}\n")
        for step in steps:
            out.write(f"  will {step.text}\n")
        return _confirm("Proceed?", args.yes)

    outcome = repair_store(directory, confirm)
    if not outcome.steps:
        out.write(f"{directory}: nothing to repair\n")
        return 0
    if not outcome.applied:
        out.write("nothing changed\n")
        return 1
    for aside in outcome.copies:
        name = os.path.basename(aside)
        out.write(f"copied {name.split('.broken-')[0]} to {name}\n")
    out.write("repaired: " + "; ".join(step.text for step in outcome.steps) + "\n")
    return 0


# -- compact -----------------------------------------------------------------------------


def cmd_compact(args: argparse.Namespace, out: TextIO) -> int:
    from .store import open as open_store

    # The defaults but: every change synced, values copied as bytes whatever
    # their codec (so no value is too large to copy), no background work.
    options = Options(
        durability="always",
        codec=_PassThrough(),
        max_value_bytes=rec.MAX_PAYLOAD_BYTES // 2,
        compact_ratio=None,
        compact_min_bytes=0,
        cleanup_interval=None,
    )
    try:
        store = open_store(args.dir, options)
    except LockedError:
        raise LockedError(
            f"{args.dir} is open in another process: compact it from there (store.compact())"
        ) from None
    with store:
        before = sum(StoreDirectory(args.dir, OS).sizes())
        result = store.compact()
        after = sum(StoreDirectory(args.dir, OS).sizes())
    out.write(
        f"compacted {args.dir}: {result.sessions:,} sessions, {_size(before)} -> {_size(after)}"
        f" in {result.seconds:.2f} s\n"
    )
    return 0


class _PassThrough:
    """Compaction copies values as bytes; it never needs to decode them."""

    name = "bytes"

    def encode(self, value: Any) -> bytes:
        raise TypeError("walsess compact does not encode values")

    def decode(self, data: bytes) -> Any:
        return data


# -- export ------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from .redis_store import RedisStore  # needs redis-py: only for this command

    try:
        # The largest values a store can hold: export copies bytes, whatever their size.
        target = RedisStore.from_url(
            args.to, prefix=args.prefix, max_value_bytes=rec.MAX_PAYLOAD_BYTES // 2
        )
    except ValidationError as exc:
        raise UsageError(f"--to/--prefix: {_one_line(exc)}") from None
    bar_stream = _bar_stream(args.dir)
    opening = None if bar_stream is None else Progress(0, "opening", bar_stream, percent=True)
    # Each session is a round trip to Redis: drawn whenever stderr is a terminal.
    bar = Progress(0, "checking" if args.dry_run else "exporting")
    try:
        report = export_store(
            args.dir,
            target,
            dry_run=args.dry_run,
            progress=lambda done, total: bar.update(done, total=total),
            load_progress=(
                None if opening is None else lambda done, total: opening.update(done, total=total)
            ),
        )
    finally:
        if opening is not None:
            opening.finish()
        bar.finish()
        target.close()
    where = f"{target.address} (prefix {args.prefix!r})"
    what = (
        f"{report.sessions:,} sessions of {report.users:,} users"
        f" ({report.anonymous:,} without one), {_size(report.data_bytes)} of data"
    )
    if report.dry_run:
        out.write(f"would copy {what} from {args.dir} to {where}; nothing written\n")
    else:
        out.write(f"copied {what} from {args.dir} to {where} in {report.seconds:.2f} s\n")
    if report.expired:
        out.write(f"skipped {report.expired:,} expired sessions\n")
    return 0


# -- entry point -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="walsess", description="Inspect, verify, repair and export walsess stores."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="verify every checksum and the structure")
    c.add_argument("dir")
    c = sub.add_parser("dump", help="list the records")
    c.add_argument("dir")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument(
        "--session",
        metavar="TOKEN",
        help="only the records of this session (write --session=TOKEN: a token may start with -)",
    )
    c = sub.add_parser("repair", help="cut a damaged store back to its last good record")
    c.add_argument("dir")
    c.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    c = sub.add_parser("stats", help="sessions, records and bytes")
    c.add_argument("dir")
    c.add_argument("--json", action="store_true")
    c = sub.add_parser("compact", help="write a snapshot and drop old log files")
    c.add_argument("dir")
    c = sub.add_parser(
        "export",
        help="copy every live session into Redis (walsess.RedisStore)",
        description=(
            "Copy every live session of the store in DIR into Redis, for a"
            " walsess.RedisStore: tokens, refs, owners, metadata, data (the encoded"
            " bytes: give the RedisStore the application's codec) and the idle and"
            " absolute time each has left. Stop the application first: the store's"
            " lock is held while copying. Running it again writes the same sessions"
            " again (idempotent), so rerun it after an interruption. Exit status 1,"
            " with the reason, if Redis cannot be reached."
        ),
    )
    c.add_argument("dir")
    c.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="redis://HOST:PORT[/DB], rediss://..., unix:///path or redis+cluster://HOST:PORT",
    )
    c.add_argument(
        "--prefix",
        default="walsess",
        help="the RedisStore's key prefix (its prefix= argument; default walsess)",
    )
    c.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be copied (sessions, users, bytes) and write nothing",
    )
    from .benchmark.runner import add_arguments

    add_arguments(sub.add_parser("bench", help="benchmark walsess against sqlite3, Redis, ..."))
    return p


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    from .benchmark.runner import run

    return run(args, out)


_COMMANDS = {
    "check": cmd_check,
    "dump": cmd_dump,
    "repair": cmd_repair,
    "stats": cmd_stats,
    "compact": cmd_compact,
    "bench": cmd_bench,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command; returns the exit status."""
    out = out or sys.stdout
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage
        return 2 if exc.code else 0
    try:
        if args.command != "bench":
            _check_arguments(args)
        return _COMMANDS[args.command](args, out)
    except BrokenPipeError:  # piped into head: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as exc:
        sys.stderr.write(f"walsess: error: {exc}\n")
        return 2
    except (WalsessError, OSError) as exc:
        if args.debug:
            raise
        sys.stderr.write(f"walsess: error: {_one_line(exc)}\n")
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.stderr.write("walsess: interrupted\n")
        return 130
    except Exception as exc:
        # A bug, or something nobody foresaw: still one line, with the way to
        # the traceback, rather than a traceback a user has to read.
        if args.debug:
            raise
        sys.stderr.write(
            f"walsess: error: unexpected {type(exc).__name__}: {_one_line(exc)}"
            " (run with --debug for the traceback)\n"
        )
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse (:class:`UsageError`, exit 2) what is not a store directory, before any
    command touches it: no command creates a store or writes into a directory that
    holds none. Cost: one stat and one listing."""
    directory: str = args.dir
    shown = directory.encode("utf-8", "backslashreplace").decode("utf-8")
    if not os.path.exists(directory):
        raise UsageError(f"{shown} is not a store directory: it does not exist")
    if not os.path.isdir(directory):
        raise UsageError(f"{shown} is not a store directory: it is not a directory")
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise UsageError(f"{shown} cannot be listed: {exc.strerror}") from None
    if not any(LOG_FILE.match(n) or SNAPSHOT_FILE.match(n) for n in names):
        raise UsageError(
            f"{shown} is not a walsess store: it holds no log (<16 hex digits>.log)"
            " or snapshot (.snap) file"
        )
    session = getattr(args, "session", None)
    if session is not None:
        try:
            session.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                "--session: that is not a token (its bytes are not UTF-8; tokens are"
                " ASCII, as the cookie holds them)"
            ) from None


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
