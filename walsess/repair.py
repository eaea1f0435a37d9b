"""Repairing a damaged store directory: what ``walsess repair`` plans and does.

:func:`plan_repair` only reads; :func:`apply_repair` copies every file it
will change aside (``<name>.broken-<stamp>``) before changing it. The
guarantee: after a repair the store opens, ``walsess check`` passes, and
every session whose records are intact and come before the first damaged
record of their file is kept. In particular:

* A damaged header (bad checksum, bad magic, zeroed, truncated, or shifted by
  a few inserted bytes) is rebuilt from what it must say: the kind and
  generation come from the file name, a log's ``follows`` is the newest
  snapshot at or below its generation; the records after it are checked by
  their own checksums, so a header is never a reason to drop them.
* A log is cut at its first bad record, and the logs after it are moved aside
  (their changes depend on what was lost, as redis-check-aof truncates).
* A snapshot keeps every session whose record is intact: a damaged record
  costs only itself (reading resumes at the next valid record, if reading
  from there runs cleanly to the END at the end of the file), and the file is
  closed with a new END. If older files already give the full state (the store
  opens without it) it is moved aside instead, so a partial snapshot never
  shadows a complete state.
* A header whose checksum is valid but which says another kind, generation
  or a newer format version is not damage but a misplaced file or a newer
  walsess: repair refuses (:class:`CorruptionError` / :class:`FormatError`)
  and changes nothing.

Example::

    plan = plan_repair("var/sessions")
    for step in plan:
        print(step.text)
    apply_repair("var/sessions", plan)

:func:`repair_store` does the whole of ``walsess repair`` (lock, plan,
confirm, apply); every file change goes through a :class:`FileSystem`, so
fault-injection file systems can test it.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import CorruptionError, FileError, FormatError, LockedError
from .fileio import OS, FileSystem, must_fsync, must_fsync_dir
from .lockfile import DirectoryLock
from .record import (
    FORMAT_VERSION,
    HEADER_SIZE,
    LOG_MAGIC,
    MAX_PAYLOAD_BYTES,
    SNAPSHOT_MAGIC,
    SNAPSHOT_VERSIONS,
    Block,
    Create,
    End,
    Op,
    Record,
    RecordReader,
    crc32c,
    encode_end,
    encode_header,
    next_valid_record,
)
from .storedir import StoreDirectory
from .verify import verify_buffer

__all__ = ["RepairOutcome", "RepairStep", "apply_repair", "plan_repair", "repair_store"]

#: How far past its place a shifted header's first record is searched for: bytes
#: inserted into a header. Bounded so that a record inside a damaged record's
#: payload is not taken for the start of the file's records.
MAX_HEADER_SHIFT = 64

_HEAD = struct.Struct("<8sHHQQI")


@dataclass(frozen=True)
class RepairStep:
    """One change to one file. ``content`` is the file's new image (None: move it aside)."""

    path: str
    kind: str
    text: str
    content: bytes | None
    #: The damage found, for the report ("file at offset N: reason").
    damage: str


def _size(n: int) -> str:
    return f"{n:,} bytes"


def _header_damage(buf: bytes, path: str, kind: str, generation: int) -> str | None:
    """Why the header of *buf* must be rebuilt, or None if it is right.

    Raises if the header is intact (its checksum holds) but says something
    this file cannot be: that is a misplaced file or a newer format, which a
    rebuild would silently turn into something else.
    """
    if len(buf) < HEADER_SIZE:
        return f"the header is {len(buf)} bytes, expected {HEADER_SIZE}"
    magic, version, _flags, found, _follows, crc = _HEAD.unpack_from(buf, 0)
    if crc != crc32c(buf[: HEADER_SIZE - 4]):
        return "header checksum mismatch"
    want = LOG_MAGIC if kind == "log" else SNAPSHOT_MAGIC
    if magic != want:
        raise CorruptionError(
            f"an intact header of another kind (magic {magic!r}) under a {kind}'s name:"
            " a misplaced file; move it out of the store directory, repair does not guess",
            path,
            0,
        )
    if version not in ((FORMAT_VERSION,) if kind == "log" else SNAPSHOT_VERSIONS):
        raise FormatError(
            f"format version {version}, written by a newer walsess: upgrade walsess"
            " instead of repairing",
            path,
            8,
        )
    if found != generation:
        raise CorruptionError(
            f"an intact header says generation {found}, the file name {generation}:"
            " a file copied under another name; move it out of the store directory,"
            " repair does not guess",
            path,
            12,
        )
    return None


def _records_start(buf: bytes) -> int:
    """Where the records of a file with a damaged header begin: right after the
    header, or a little later if bytes were inserted into it."""
    if len(buf) <= HEADER_SIZE or next_valid_record(buf, HEADER_SIZE - 1) == HEADER_SIZE:
        return HEADER_SIZE
    found = next_valid_record(buf, HEADER_SIZE)
    if found is not None and found <= HEADER_SIZE + MAX_HEADER_SHIFT:
        return found
    return HEADER_SIZE  # the first record is damaged too: the cut below drops it


def _holds_sessions(r: Record) -> bool:
    """True for the records a snapshot holds its sessions in (CREATE in version 1,
    BLOCK in version 2)."""
    return type(r) is Create or type(r) is Block


def _sids(r: Record) -> list[int]:
    return r.sids if isinstance(r, Block) else [r.sid]


def _salvage_snapshot(buf: bytes, good_end: int) -> tuple[bytes, int, int]:
    """The sessions of the snapshot image *buf* (header intact) whose records are
    intact, as a new image closed by an END; returns (image, sessions, bytes dropped).

    Snapshot records are independent (a CREATE per session in version 1, a BLOCK
    of sessions in version 2, no SID in two), so a damaged one costs only its own
    sessions: after it, reading resumes at the next checksum-valid record. That
    resumption is trusted only if reading from it then runs cleanly to an END
    record ending exactly at the end of the file, with no SID twice and no more
    sessions than the END counts: a record found inside a damaged record's payload
    (a stored value can hold bytes that look like a record) ends inside that
    payload, where the next read fails, so it is never taken for a session.
    Otherwise only the records before *good_end* are kept. Cost: linear in *buf*.
    """
    head: list[tuple[int, Record]] = []
    reader = RecordReader(buf[:good_end])
    reader.replay(lambda pos, x: head.append((pos, x)))
    bounds = [pos for pos, _ in head] + [reader.end]
    kept = [(bounds[i], bounds[i + 1], x) for i, (_, x) in enumerate(head) if _holds_sessions(x)]
    prefix = b"".join(buf[a:b] for a, b, _ in kept)
    kept_sids = [sid for _, _, x in kept for sid in _sids(x)]
    cut = (
        buf[:HEADER_SIZE] + prefix + encode_end(len(kept_sids)),
        len(kept_sids),
        len(buf) - HEADER_SIZE - len(prefix),
    )
    resume = next_valid_record(buf, good_end)
    if resume is None:
        return cut
    tail: list[tuple[int, Record]] = []
    reader = RecordReader(buf, resume)
    try:
        reader.replay(lambda pos, x: tail.append((pos, x)))
    except FileError:
        return cut
    if reader.stop is not None or not tail:
        return cut
    last_pos, last = tail[-1]
    after = [x for _, x in tail[:-1]]
    sids = kept_sids + [sid for x in after for sid in _sids(x)]
    if (
        type(last) is not End
        or not all(map(_holds_sessions, after))
        or len(set(sids)) != len(sids)
        or len(sids) > last.sessions
    ):
        return cut
    records = prefix + buf[resume:last_pos]
    image = buf[:HEADER_SIZE] + records + encode_end(len(sids))
    # The old END is replaced, not dropped: the damaged bytes are the rest.
    return image, len(sids), len(buf) - HEADER_SIZE - len(records) - (len(buf) - last_pos)


def plan_repair(directory: str, fs: FileSystem = OS) -> list[RepairStep]:
    """The changes that make the store at *directory* open cleanly; reads only.

    Cost: every file read once and checked, one pass each. Raises
    :class:`CorruptionError` or :class:`FormatError` (naming file and offset)
    for a file repair must not touch, before anything is changed.
    """
    d = StoreDirectory(directory, fs)
    snaps, logs = d.snapshots(), d.logs()
    newest_log = logs[-1] if logs else None
    # Which snapshot open would pick now: a damaged snapshot newer than it is
    # passed over because older files give the full state.
    try:
        loaded: int | None = d.load(MAX_PAYLOAD_BYTES).snapshot
    except FileError:
        loaded = None
    steps: list[RepairStep] = []
    removed_snaps: set[int] = set()
    files = [("snapshot", g) for g in snaps] + [("log", g) for g in logs]
    cut_log: int | None = None
    for kind, g in files:
        path = d.snapshot_path(g) if kind == "snapshot" else d.log_path(g)
        name = os.path.basename(path)
        if kind == "log" and cut_log is not None:
            steps.append(
                RepairStep(
                    path,
                    kind,
                    f"move aside {name}, which follows the damage",
                    None,
                    f"{path}: follows a cut log",
                )
            )
            continue
        buf = fs.read(path)
        why = _header_damage(buf, path, kind, g)
        content = buf
        texts: list[str] = []
        damage = ""
        if why is not None:
            follows = 0
            if kind == "log":
                follows = max((s for s in snaps if s <= g and s not in removed_snaps), default=0)
            magic = LOG_MAGIC if kind == "log" else SNAPSHOT_MAGIC
            start = _records_start(buf)
            version = None
            first = next_valid_record(buf, start - 1) if kind == "snapshot" else None
            if first is not None and buf[first] == Op.CREATE:
                version = 1  # the sessions are CREATE records: a version 1 snapshot
            content = encode_header(g, follows, magic, version) + buf[start:]
            texts.append(
                f"rebuild the header of {name} (generation {g}"
                + (f", follows {follows}" if kind == "log" else "")
                + ") from its name and contents"
            )
            damage = f"{path} at offset 0: {why}"
        report = verify_buffer(content, path, kind, g, g == newest_log and kind == "log")
        if report.problem is None and why is None:
            continue
        if report.problem is not None:
            damage = damage or f"{path} at offset {report.problem_offset}: {report.problem}"
            end = report.good_end if report.good_end >= HEADER_SIZE else HEADER_SIZE
            dropped = len(content) - end
            if kind == "snapshot" and loaded is not None and loaded != g:
                # Open already uses older files that give the full state (or a newer
                # snapshot): salvaging part of this one would shadow them.
                removed_snaps.add(g)
                steps.append(
                    RepairStep(
                        path, kind, f"move aside {name} (open does not need it)", None, damage
                    )
                )
                continue
            if kind == "snapshot":
                content, kept, dropped = _salvage_snapshot(content, end)
                texts.append(
                    f"rebuild {name} from its intact records: {kept:,} sessions kept,"
                    f" {dropped:,} damaged bytes from offset {end} dropped, closed with a new END"
                )
            else:
                texts.append(
                    f"cut {name} at offset {end}: {dropped:,} bytes dropped,"
                    f" {report.records:,} records kept"
                )
                content = content[:end]
                cut_log = g
        steps.append(RepairStep(path, kind, "; ".join(texts), content, damage))
    return steps


def apply_repair(
    directory: str,
    steps: Sequence[RepairStep],
    fs: FileSystem = OS,
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """Copy each file of *steps* aside, then change it; returns the copies' paths.

    The copies (``<name>.broken-<local time of clock()>``) are fsynced, and
    the directory with them, before any file changes. Each new image is
    written to a temporary file, fsynced and renamed over the old one, so a
    crash leaves either file whole; the directory is fsynced at the end. Every
    change goes through *fs*. The caller holds the store's lock. Cost: each
    file read once and written twice.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(clock()))
    copies = []
    for step in steps:
        aside = f"{step.path}.broken-{stamp}"
        _write_durably(fs, aside, fs.read(step.path))
        copies.append(aside)
    if copies:
        must_fsync_dir(fs, directory)  # the copies exist before any original changes
    for step in steps:
        if step.content is None:
            fs.unlink(step.path)
            continue
        tmp = step.path + ".tmp"
        _write_durably(fs, tmp, step.content)
        fs.rename(tmp, step.path)
    must_fsync_dir(fs, directory)
    return copies


def _write_durably(fs: FileSystem, path: str, content: bytes) -> None:
    """Create or replace the file *path* holding *content*, fsynced."""
    fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fs.write_all(fd, content)
        must_fsync(fs, fd, path)
    finally:
        fs.close(fd)


@dataclass(frozen=True)
class RepairOutcome:
    """What :func:`repair_store` found and did."""

    #: The planned changes, in order (empty: nothing to repair).
    steps: tuple[RepairStep, ...]
    #: True if the steps were applied (the confirmation said yes).
    applied: bool
    #: Copies of the changed files, made before they changed.
    copies: tuple[str, ...]


def repair_store(
    directory: str,
    confirm: Callable[[Sequence[RepairStep]], bool],
    fs: FileSystem = OS,
    clock: Callable[[], float] = time.time,
) -> RepairOutcome:
    """``walsess repair``: take the store's lock, plan, ask, apply.

    *confirm* is called with the plan (only if there is something to repair)
    and returns whether to apply it; an exception from it changes nothing.
    Raises :class:`LockedError` if the store is open elsewhere, and what
    :func:`plan_repair` raises for a file repair must not touch. Cost: that of
    :func:`plan_repair`, plus :func:`apply_repair` if confirmed.

    Example::

        outcome = repair_store("var/sessions", lambda steps: True)
        print(len(outcome.steps), "files repaired" if outcome.applied else "")
    """
    try:
        lock = DirectoryLock(directory, fs)
    except LockedError:
        raise LockedError(
            f"{directory} is open in another process: close it before repairing"
        ) from None
    try:
        steps = tuple(plan_repair(directory, fs))
        if not steps or not confirm(steps):
            return RepairOutcome(steps, False, ())
        return RepairOutcome(steps, True, tuple(apply_repair(directory, steps, fs, clock)))
    finally:
        lock.release()
