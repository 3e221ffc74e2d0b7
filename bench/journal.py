"""Journal: write cost per record, open time and memory of a full journal, vs bare sqlite3.

Our side writes N records through worker.journal.Journal (one pause.end event
each, as a cast records), timing every call; the baseline, in the same run and
process, is a bare sqlite3 loop inserting the same rows (JSON made beforehand)
into the same table with the same pragmas, one autocommitted INSERT each. The
two alternate in chunks of 1,000 records, so that both meet the same disk and
the same WAL checkpoints; the ratio is our overhead (lock, JSON, periodic
trim). Then 3,000 more records go into the full journal (each TRIM_EVERY-th
trims as many entries), and the full journal is opened again: time, RSS
growth and tracemalloc peak, beside a bare open of the bare file.
Run: .venv/bin/python -m bench.journal            (N=100,000, about 30 s here)
     .venv/bin/python -m bench.journal --fsync    (synchronous=FULL on both sides)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from bench.common import append_result, machine, percentile, raw_event
from worker import logs
from worker.codec import envelope
from worker.core.journal import TRIM_EVERY, Journal
from worker.messages import Outgoing


class Closable(Protocol):
    """A Journal or a sqlite3 Connection."""

    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)

SCHEMA = """
CREATE TABLE journal (id TEXT PRIMARY KEY, completed_at REAL NOT NULL, outgoing TEXT NOT NULL);
CREATE INDEX journal_completed_at ON journal (completed_at);
"""
#: Records written to one side before switching to the other.
CHUNK = 1000
#: Records written into the full journal, where writes also trim.
AFTER_FULL = 3000


def end_event(unique_id: str) -> Outgoing:
    """The end event a pause cast records, as the dispatcher builds it."""
    event = raw_event(str(uuid.uuid4()), "pause", "end", publisher_id="compute.bench-host",
                      topic="versioned_notifications", unique_id=unique_id)
    return Outgoing("nova", event.routing_key, envelope.wrap(event.message))


def rss_kib() -> int:
    """This process's resident memory now (VmRSS), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed_open(opener: Callable[[], T]) -> tuple[T, float, float, float]:
    """(what opener returned, seconds, RSS growth MiB, tracemalloc peak KiB) of one open.

    Timed once without tracemalloc (it slows allocation), then opened again under it.
    """
    before = rss_kib()
    started = time.perf_counter()
    opened = opener()
    seconds = time.perf_counter() - started
    grown = (rss_kib() - before) / 1024
    tracemalloc.start()
    try:
        again = opener()
        peak = tracemalloc.get_traced_memory()[1] / 1024
    finally:
        tracemalloc.stop()
    again.close()
    return opened, seconds, grown, peak


def bare_open(path: Path, pragmas: str) -> sqlite3.Connection:
    """A bare connection with the pragmas, that has read the table once."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(pragmas)
    db.execute("SELECT 1 FROM journal LIMIT 1").fetchall()
    return db


def fill(tmp: Path, ids: list[str], outgoing: list[Outgoing],
         fsync: bool) -> tuple[list[float], list[float], list[float]]:
    """Write every record to both sides, alternating in chunks so both see the same disk.

    (ours, bare, ours once full) seconds per record; the bare rows are made beforehand.
    """
    pragmas = f"PRAGMA journal_mode=WAL; PRAGMA synchronous={'FULL' if fsync else 'OFF'};"
    db = sqlite3.connect(tmp / "bare.sqlite3", isolation_level=None)
    db.executescript(pragmas + SCHEMA)
    rows = [(uid, time.time(), json.dumps([out.to_json()]))
            for uid, out in zip(ids, outgoing, strict=True)]
    journal = Journal(str(tmp / "state"), max_entries=len(ids), fsync=fsync)
    mine: list[float] = []
    theirs: list[float] = []
    for chunk in range(0, len(ids), CHUNK):
        for row in rows[chunk:chunk + CHUNK]:
            started = time.perf_counter()
            db.execute("INSERT OR REPLACE INTO journal VALUES (?, ?, ?)", row)
            theirs.append(time.perf_counter() - started)
        for uid, out in zip(ids[chunk:chunk + CHUNK], outgoing[chunk:chunk + CHUNK],
                            strict=True):
            started = time.perf_counter()
            journal.record(uid, [out])
            mine.append(time.perf_counter() - started)
    full = []
    for number in range(AFTER_FULL):
        started = time.perf_counter()
        journal.record(f"extra{number}", [outgoing[number % len(outgoing)]])
        full.append(time.perf_counter() - started)
    journal.close()
    db.close()
    return mine, theirs, full


def figures(samples: list[float]) -> dict[str, float]:
    """Mean and p99 in µs, worst in ms."""
    return {"mean_us": statistics.mean(samples) * 1e6, "p99_us": percentile(samples, 99) * 1e6,
            "worst_ms": max(samples) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100000, help="records written (N)")
    parser.add_argument("--fsync", action="store_true",
                        help="synchronous=FULL on both sides (survives power loss)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ns = parser.parse_args()
    logs.setup("error")
    ids = [uuid.uuid4().hex for _ in range(ns.entries)]
    outgoing = [end_event(uid) for uid in ids]
    sync = "FULL" if ns.fsync else "OFF"
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        mine, theirs, full = fill(tmp, ids, outgoing, ns.fsync)
        reopened, open_s, open_rss, open_peak = timed_open(
            lambda: Journal(str(tmp / "state"), max_entries=ns.entries, fsync=ns.fsync))
        entries = len(reopened)
        reopened.close()
        conn, bare_s, bare_rss, bare_peak = timed_open(
            lambda: bare_open(tmp / "bare.sqlite3", f"PRAGMA synchronous={sync};"))
        conn.close()
    our, base, once_full = figures(mine), figures(theirs), figures(full)
    ratio = our["mean_us"] / base["mean_us"]
    print(f"journal ({ns.entries} records of one {len(outgoing[0].body)}-byte end event, "
          f"WAL, synchronous={sync}, alternating chunks of {CHUNK}):")
    print(f"  write: ours {our['mean_us']:.1f} µs/record (p99 {our['p99_us']:.1f} µs, worst "
          f"{our['worst_ms']:.1f} ms), bare sqlite3 {base['mean_us']:.1f} µs (p99 "
          f"{base['p99_us']:.1f} µs, worst {base['worst_ms']:.1f} ms), ratio {ratio:.2f}")
    print(f"  once full: {once_full['mean_us']:.1f} µs/record, worst {once_full['worst_ms']:.1f} "
          f"ms (every {TRIM_EVERY}th write trims as many entries)")
    print(f"  open of the full journal ({entries} entries): ours {open_s * 1000:.1f} ms, RSS "
          f"{open_rss:+.1f} MiB, tracemalloc peak {open_peak:.0f} KiB; bare "
          f"{bare_s * 1000:.1f} ms, RSS {bare_rss:+.1f} MiB, peak {bare_peak:.0f} KiB")
    if not ns.no_record:
        append_result(
            "Journal (SQLite WAL; µs per record; baseline bare sqlite3, same rows and pragmas)",
            f"{machine()} | N={ns.entries}, synchronous={sync} | ours {our['mean_us']:.1f} µs "
            f"(p99 {our['p99_us']:.1f}, worst {our['worst_ms']:.1f} ms); once full "
            f"{once_full['mean_us']:.1f} µs, worst {once_full['worst_ms']:.1f} ms | bare "
            f"{base['mean_us']:.1f} µs (p99 {base['p99_us']:.1f}, worst "
            f"{base['worst_ms']:.1f} ms) | ratio {ratio:.2f} | open {open_s * 1000:.1f} ms, "
            f"RSS {open_rss:+.1f} MiB, tracemalloc peak {open_peak:.0f} KiB (bare "
            f"{bare_s * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
