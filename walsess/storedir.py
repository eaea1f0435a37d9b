"""The store directory as a whole: which files make up the state, and recovery.

A directory holds snapshots ``<g>.snap`` and logs ``<g>.log``. Snapshot *s*
is paired with log *s*: a compaction first starts log *s* (whose header says
it follows snapshot *s*), then writes snapshot *s* from the table while
writers go on appending to log *s*. So the state is

    snapshot s  +  logs s, s+1, ..., newest        (or, with no snapshot, logs 1..newest)

and opening picks the newest valid snapshot whose log chain is complete.
Logs older than the chosen snapshot are stale: never replayed (their
generation is below it, and a log whose header follows an older snapshot is
refused), and deleted. A damaged newest snapshot is passed over only when an
older snapshot plus a complete chain of logs gives the full state; otherwise
opening fails with :class:`CorruptionError` rather than lose data.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic

from .changelog import LOG_FILE, ChangeLog, Cut, LogReplay, log_name, replay_log
from .damage import FOLLOWS_OFFSET, follows_problem
from .errors import CorruptionError, FileError
from .fileio import FileSystem, must_fsync_dir
from .snapshot import SNAPSHOT_FILE, load_snapshot, snapshot_name
from .table import SessionTable

__all__ = ["LoadProgress", "Loaded", "Recovery", "StoreDirectory"]

#: Told how far a load has got: ``progress(bytes_done, bytes_total)`` (see
#: :meth:`StoreDirectory.load`).
LoadProgress = Callable[[int, int], object]

_TMP_FILE = re.compile(r"^[0-9a-f]{16}\.(log|snap)\.tmp$")


@dataclass(frozen=True)
class Recovery:
    """What opening a store found and did."""

    #: The snapshot loaded, or None.
    snapshot: str | None
    #: Sessions loaded from it.
    snapshot_sessions: int
    #: Log records replayed after it.
    records: int
    #: Log files replayed, oldest first.
    files: tuple[str, ...]
    #: Torn tails cut from the newest log.
    cuts: tuple[Cut, ...]
    #: Damaged snapshots passed over because older files gave the full state.
    skipped: tuple[str, ...]
    #: Obsolete files deleted (stale logs, old snapshots, temporary files).
    removed: tuple[str, ...]
    #: Sessions in the table after recovery (from the snapshot and the logs;
    #: those expired but not yet collected included).
    sessions: int
    #: How long recovery took, in seconds: a measurement (``time.monotonic``),
    #: not the store's clock, which tests move by hand.
    seconds: float

    @property
    def clean(self) -> bool:
        """True if nothing had to be cut or passed over."""
        return not self.cuts and not self.skipped


class StoreDirectory:
    """Names, lists and removes the files of one store directory."""

    def __init__(self, path: str, fs: FileSystem) -> None:
        self.path = path
        self._fs = fs

    def _generations(self, pattern: re.Pattern[str]) -> list[int]:
        found = []
        for name in os.listdir(self.path):
            m = pattern.match(name)
            if m:
                found.append(int(m.group(1), 16))
        return sorted(found)

    def logs(self) -> list[int]:
        return self._generations(LOG_FILE)

    def snapshots(self) -> list[int]:
        return self._generations(SNAPSHOT_FILE)

    def log_path(self, generation: int) -> str:
        return os.path.join(self.path, log_name(generation))

    def snapshot_path(self, generation: int) -> str:
        return os.path.join(self.path, snapshot_name(generation))

    def sizes(self) -> tuple[int, int]:
        """(snapshot bytes, log bytes) on disk now."""
        snap = sum(_size(self.snapshot_path(g)) for g in self.snapshots())
        logs = sum(_size(self.log_path(g)) for g in self.logs())
        return snap, logs

    def remove_before(self, snapshot: int) -> list[str]:
        """Delete logs and snapshots older than *snapshot*, then fsync the directory."""
        doomed = [self.log_path(g) for g in self.logs() if g < snapshot]
        doomed += [self.snapshot_path(g) for g in self.snapshots() if g < snapshot]
        for path in doomed:
            self._fs.unlink(path)
        if doomed:
            must_fsync_dir(self._fs, self.path)
        return doomed

    # -- recovery ------------------------------------------------------------------

    def load(self, max_value: int, *, progress: LoadProgress | None = None) -> Loaded:
        """Read the state without changing any file: the newest valid snapshot whose
        log chain is complete, and the logs after it. Safe while another process
        has the store open (a torn tail is reported, not cut).

        *progress*, if given, is called with (bytes read, bytes to read): with 0
        before the first file, after each file (the snapshot, then each log), and
        last with both equal. It is called per file, never per record, so it
        costs one ``stat`` and one call a file; a single big file shows no
        progress until it is read. Falling back past a damaged snapshot starts
        the count again with the files of the older state.

        The cyclic garbage collector is paused meanwhile: loading makes millions
        of objects and no cycles, and each automatic collection would walk the
        whole growing heap again (a quarter of the time of a replay). What it
        made is then filed in the oldest generation, unscanned.
        """
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._load(max_value, progress)
        finally:
            if paused:
                if gc.get_freeze_count() == 0:
                    # Move what the load made straight to the oldest generation
                    # (two O(1) list splices), instead of letting the first young
                    # collection walk a million new sessions. Skipped if the
                    # application froze objects itself: unfreeze would undo it.
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()

    def _load(self, max_value: int, progress: LoadProgress | None) -> Loaded:
        fs = self._fs
        logs = self.logs()
        snaps = self.snapshots()
        skipped: list[str] = []
        first_error: FileError | None = None
        for s in [*reversed(snaps), 0]:
            chain = [g for g in logs if g >= s]
            start = s if s else 1
            if chain and chain != list(range(start, start + len(chain))):
                if first_error is None:
                    missing = sorted(set(range(start, chain[-1] + 1)) - set(chain))
                    first_error = CorruptionError(
                        f"log generation(s) {', '.join(map(str, missing))} missing", self.path
                    )
                continue
            if s == 0 and snaps and not chain:
                continue  # every snapshot failed and there is no log chain to fall back on
            if s and not chain:
                # A compaction starts log s before it writes snapshot s, so the log
                # exists unless something removed it, and with it what came after.
                if first_error is None:
                    first_error = CorruptionError(f"log generation {s} is missing", self.path)
                continue
            snapshot = self.snapshot_path(s)
            meter = _Meter(progress, ([snapshot] if s else []) + [self.log_path(g) for g in chain])
            table = SessionTable()
            table.begin_bulk()
            loaded = 0
            if s:
                try:
                    loaded = load_snapshot(snapshot, fs, table, max_value, meter.within(snapshot))
                except FileError as exc:
                    if first_error is None:
                        first_error = exc
                    skipped.append(f"{snapshot}: {exc.reason}")
                    continue
                meter.read(snapshot)
            # Falling back past a damaged newer snapshot is safe only because this
            # older one comes with a complete chain of logs: the full state.
            return self._replay(table, s, loaded, chain, skipped, max_value, meter)
        assert first_error is not None
        raise first_error

    def _replay(
        self,
        table: SessionTable,
        s: int,
        loaded: int,
        chain: list[int],
        skipped: list[str],
        max_value: int,
        meter: _Meter,
    ) -> Loaded:
        records = 0
        replays: list[LogReplay] = []
        for i, g in enumerate(chain):
            path = self.log_path(g)
            table.reading(path, max_value)
            last = replay_log(
                path, self._fs, table.apply, table.set_key, max_value, i == len(chain) - 1,
                generation=g, on_touch=table.touch_sid, on_create=table.create_packed,
            )  # fmt: skip
            replays.append(last)
            records += last.records
            # The header's generation against the name is replay_log's (the rule
            # `walsess check` applies); the chain's half of the follows rule is here.
            problem = None if last.header is None else follows_problem(last.header.follows, g, s)
            if problem is not None:
                raise CorruptionError(problem, path, FOLLOWS_OFFSET)
            meter.read(path)
        table.end_bulk()
        return Loaded(table, s, loaded, records, tuple(replays), tuple(skipped))

    def recover(
        self, max_value: int, *, progress: LoadProgress | None = None
    ) -> tuple[SessionTable, ChangeLog, Recovery]:
        """:meth:`load` (which reports to *progress*), then make the directory
        writable: remove temporary and stale files, cut a torn tail, and open the
        newest log for append."""
        started = monotonic()
        fs = self._fs
        removed = [os.path.join(self.path, n) for n in os.listdir(self.path) if _TMP_FILE.match(n)]
        for path in removed:
            fs.unlink(path)
        loaded = self.load(max_value, progress=progress)
        s = loaded.snapshot
        if not loaded.logs:
            log = ChangeLog.create(self.path, fs, s or 1, follows=s)
        else:
            last = loaded.logs[-1]
            log = ChangeLog.open_newest(last, fs, self.logs()[-1], follows=s)
        try:
            # Damaged newer snapshots that were passed over stay for inspection
            # until a later compaction supersedes them.
            removed += self.remove_before(s)
        except BaseException:
            log.close()
            raise
        recovery = Recovery(
            snapshot=self.snapshot_path(s) if s else None,
            snapshot_sessions=loaded.snapshot_sessions,
            records=loaded.records,
            files=tuple(r.path for r in loaded.logs),
            cuts=tuple(r.cut for r in loaded.logs if r.cut is not None),
            skipped=loaded.skipped,
            removed=tuple(removed),
            sessions=len(loaded.table),
            seconds=monotonic() - started,
        )
        return loaded.table, log, recovery


@dataclass(frozen=True)
class Loaded:
    """The state read from a directory by :meth:`StoreDirectory.load`."""

    table: SessionTable
    #: Generation of the snapshot used (0: none).
    snapshot: int
    snapshot_sessions: int
    records: int
    logs: tuple[LogReplay, ...]
    skipped: tuple[str, ...]


class _Meter:
    """Turns "this file is read" into ``progress(bytes done, bytes total)`` calls;
    does nothing (not even a ``stat``) when *progress* is None.

    The sizes are taken once, before reading, so the count ends exactly at
    the total (after the last file, or at once when there is none) even while
    another process appends to the newest log.
    """

    def __init__(self, progress: LoadProgress | None, paths: list[str]) -> None:
        self._progress = progress
        self._sizes = {} if progress is None else {path: _size(path) for path in paths}
        self._total = sum(self._sizes.values())
        self._done = 0
        if progress is not None:
            progress(0, self._total)

    def read(self, path: str) -> None:
        if self._progress is not None:
            self._done += self._sizes[path]
            self._progress(self._done, self._total)

    def within(self, path: str) -> Callable[[int], object] | None:
        """A callback for offsets reached inside *path* (per snapshot block), or None."""
        progress = self._progress
        if progress is None:
            return None
        done, total, size = self._done, self._total, self._sizes[path]
        return lambda offset: progress(done + min(offset, size), total)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
