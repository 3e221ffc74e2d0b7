"""The completed-message journal and outbox: ids that ran, with what they must publish."""

from __future__ import annotations

import datetime
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker import logs
from worker.errors import JournalUnavailable
from worker.messages import Outgoing

log = logs.get(__name__)

#: The bounds are enforced once per this many writes (and at open), so a write stays one INSERT.
#: Not 1,000: deleting 1,000 random-id rows at once stalled that write (and every verb
#: thread behind the lock) ~40 ms here; 100 stays within SQLite's own checkpoint pauses.
TRIM_EVERY = 100
#: Rows deleted per transaction while trimming, so no trim holds the lock for long.
TRIM_BATCH = 5000
#: SQLite's verdict on a file it cannot use as a database at all.
_DAMAGED_FILE = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)
#: What a damaged record raises on the way back: bad JSON, bad UTF-8, wrong shape, deep nesting.
_DAMAGED_RECORD = (ValueError, KeyError, TypeError, RecursionError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id TEXT PRIMARY KEY,
    completed_at REAL NOT NULL,
    outgoing TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_completed_at ON journal (completed_at);
"""
_REPLACE = "INSERT OR REPLACE INTO journal (id, completed_at, outgoing) VALUES (?, ?, ?)"
# A record is INSERT OR IGNORE, then UPDATE if the id was there: the same effect as
# INSERT OR REPLACE, but it says whether a row was added, so the journal knows its size
# without a COUNT(*) (which reads the whole index, ~1 ms at 100,000 entries).
_INSERT_NEW = "INSERT OR IGNORE INTO journal (id, completed_at, outgoing) VALUES (?, ?, ?)"
_UPDATE = "UPDATE journal SET completed_at = ?, outgoing = ? WHERE id = ?"
_OLDEST = ("DELETE FROM journal WHERE rowid IN (SELECT rowid FROM journal WHERE completed_at {op} ?"
           " ORDER BY completed_at, rowid LIMIT ?)")


@dataclass(frozen=True)
class Entry:
    """A completed message: when, and the end event and reply it produced."""

    unique_id: str
    completed_at: float
    outgoing: tuple[Outgoing, ...]


def _outgoing(items: Any) -> tuple[Outgoing, ...]:
    """The Outgoing list of a record; TypeError or KeyError when it has the wrong shape."""
    if not isinstance(items, list):
        raise TypeError(f"outgoing is a {type(items).__name__}, not a list")
    return tuple(Outgoing.from_json(item) for item in items)


def _outgoing_text(outgoing: Iterable[Outgoing]) -> str:
    return json.dumps([o.to_json() for o in outgoing])


def _jsonl_entry(line: str) -> Entry | None:
    """One line of the old JSON-lines journal, or None when it is damaged."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict) or not isinstance(data["id"], str):
            return None
        completed_at = float(data["t"])
        # json accepts NaN, which SQLite would store as NULL and refuse.
        if not math.isfinite(completed_at):
            return None
        return Entry(data["id"], completed_at, _outgoing(data["out"]))
    except _DAMAGED_RECORD:
        return None


def _roll_back(db: sqlite3.Connection) -> None:
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # rolled back already, or closed: the first error is the one reported


class Journal:
    """Completed ids in state_dir/journal.sqlite3 (WAL), bounded by age and count."""

    def __init__(self, state_dir: str, *, max_entries: int = 100000,
                 max_age: float = 7 * 86400, fsync: bool = False,
                 keep_younger_than: float = 0.0) -> None:
        self.path = Path(state_dir) / "journal.sqlite3"
        self.max_entries = max_entries
        self.max_age = max_age
        self.fsync = fsync
        #: Trimming by count spares entries younger than this (a signed message may
        #: be replayed within its freshness window, so its id must still be known).
        self.keep_younger_than = keep_younger_than
        self._lock = threading.Lock()
        self._writes = 0
        self._count = 0
        self._db = self._open()

    # --- opening ----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Connect, import the old journal once, trim; a damaged file is moved aside."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return self._prepare()
            except sqlite3.DatabaseError as exc:
                if exc.sqlite_errorcode not in _DAMAGED_FILE:
                    raise
                # Start afresh rather than fail at every start: the ids it held only
                # mean that their redeliveries run once more.
                self._move_aside(str(exc))
            return self._prepare()
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnavailable(f"journal open failed: {exc}") from exc

    def _prepare(self) -> sqlite3.Connection:
        # isolation_level=None: each INSERT commits alone; trims open their own transaction.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("journal_wal_unavailable", mode=mode, path=str(self.path))
            # OFF: a commit is in the kernel when it returns, so it survives the
            # worker being killed (what the JSON-lines journal gave). NORMAL adds
            # an fsync at every checkpoint: 74 instead of 25 us a record here, for
            # power loss only half covered. FULL (journal_fsync) covers it.
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
            # After each checkpoint the WAL is cut back to this size, so a journal
            # that once grew (a burst, a full disk) does not keep the space.
            db.execute("PRAGMA journal_size_limit=4194304")
            db.executescript(_SCHEMA)
            self._import_jsonl(db)
            self._count = db.execute("SELECT count(*) FROM journal").fetchone()[0]
            trimmed = self._trim_all(db, time.time())
        except BaseException:
            db.close()
            raise
        log.info("journal_opened", path=str(self.path), trimmed=trimmed)
        return db

    def _move_aside(self, reason: str) -> None:
        stamp = datetime.datetime.fromtimestamp(time.time(), datetime.UTC).strftime(
            "%Y%m%dT%H%M%S.%fZ")
        moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            # The -wal and -shm files belong to the damaged file: a fresh database
            # must not replay them.
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                os.replace(src, self.path.with_name(f"{src.name}.corrupt-{stamp}"))
        log.error("journal_damaged_moved_aside", path=str(self.path), moved_to=str(moved),
                  reason=reason)

    def _import_jsonl(self, db: sqlite3.Connection) -> None:
        """Import the JSON-lines journal of earlier versions once, then rename it."""
        old = self.path.with_name("journal.jsonl")
        if not old.exists():
            return
        counts = {"imported": 0, "skipped": 0}

        def rows() -> Iterator[tuple[str, float, str]]:
            with open(old, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    entry = _jsonl_entry(line)
                    if entry is None:
                        counts["skipped"] += 1
                        continue
                    counts["imported"] += 1
                    yield entry.unique_id, entry.completed_at, _outgoing_text(entry.outgoing)

        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_REPLACE, rows())
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise
        if counts["skipped"]:
            # A line cut short by a crash, or damaged: that message runs again if redelivered.
            log.warning("journal_jsonl_lines_skipped", skipped=counts["skipped"], path=str(old))
        os.replace(old, old.with_name("journal.jsonl.imported"))
        log.info("journal_jsonl_imported", entries=counts["imported"], path=str(old))

    # --- bounds -----------------------------------------------------------------------

    def _trim_batch(self, db: sqlite3.Connection, now: float) -> int:
        """Delete up to TRIM_BATCH entries beyond the bounds, oldest first; how many.

        Each DELETE commits alone (and changes nothing if it fails), so the count stays exact.
        """
        # The age bound is inclusive: at exactly max_age an entry is still known.
        gone: int = db.execute(_OLDEST.format(op="<"), (now - self.max_age, TRIM_BATCH)).rowcount
        self._count -= gone
        excess = min(self._count - self.max_entries, TRIM_BATCH - gone)
        if excess > 0:
            # Oldest first, but never one younger than keep_younger_than.
            extra: int = db.execute(_OLDEST.format(op="<="),
                                    (now - self.keep_younger_than, excess)).rowcount
            self._count -= extra
            gone += extra
        return gone

    def _trim_all(self, db: sqlite3.Connection, now: float) -> int:
        total = 0
        while (gone := self._trim_batch(db, now)) == TRIM_BATCH:
            total += gone
        return total + gone

    def _trim(self, now: float) -> None:
        """Trim in batches, letting verb threads in between; a failure waits for the next."""
        try:
            while True:
                with self._using("trim") as db:
                    if self._trim_batch(db, now) < TRIM_BATCH:
                        return
        except JournalUnavailable as exc:
            log.warning("journal_trim_failed", reason=exc.message)

    # --- use --------------------------------------------------------------------------

    @contextmanager
    def _using(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; any database or OS error as JournalUnavailable."""
        with self._lock:
            try:
                yield self._db
            except (sqlite3.Error, OSError) as exc:
                # Roll back so that the journal stays usable once the disk has room again.
                _roll_back(self._db)
                raise JournalUnavailable(f"journal {action} failed: {exc}") from exc

    def get(self, unique_id: str) -> Entry | None:
        """The entry for a completed id, or None (also when its record is damaged)."""
        with self._using("read") as db:
            row = db.execute("SELECT completed_at, CAST(outgoing AS BLOB) FROM journal"
                             " WHERE id = ?", (unique_id,)).fetchone()
        if row is None:
            return None
        try:
            return Entry(unique_id, float(row[0]), _outgoing(json.loads(row[1])))
        except _DAMAGED_RECORD as exc:
            # Unknown is safe: the message simply runs again.
            log.warning("journal_record_skipped", unique_id=unique_id,
                        reason=f"{type(exc).__name__}: {str(exc)[:200]}")
            return None

    def __len__(self) -> int:
        with self._using("read") as db:
            count: int = db.execute("SELECT count(*) FROM journal").fetchone()[0]
        return count

    def record(self, unique_id: str, outgoing: list[Outgoing]) -> Entry:
        """Mark an id completed, keeping what it must publish; written before publishing."""
        entry = Entry(unique_id, time.time(), tuple(outgoing))
        text = _outgoing_text(entry.outgoing)
        with self._using("write") as db:
            if db.execute(_INSERT_NEW, (unique_id, entry.completed_at, text)).rowcount:
                self._count += 1
            else:
                # Recorded before (a redelivery raced its first run): the later one wins.
                db.execute(_UPDATE, (entry.completed_at, text, unique_id))
            self._writes += 1
            due = self._writes % TRIM_EVERY == 0
        if due:
            self._trim(entry.completed_at)
        return entry

    def close(self) -> None:
        """Close the database."""
        with self._using("close") as db:
            db.close()
