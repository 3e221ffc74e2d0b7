"""The completed-message journal: record, reopen, bounds, damage, migration, a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import tracemalloc
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from worker.core import journal as journal_mod
from worker.core.journal import Journal
from worker.errors import JournalUnavailable
from worker.messages import Outgoing

REPLY = Outgoing("", "reply_08c90c0ac22c4e899b48d0a866dd11df", b'{"oslo.version": "2.0"}', True)
EVENT = Outgoing("nova", "versioned_notifications.info", '{"é": "ü"}'.encode())
#: Too big for the pages a database already has: writing it needs more room.
BIG = Outgoing("nova", "versioned_notifications.info", b'"' + b"x" * 65536 + b'"')

OpenJournal = Callable[..., Journal]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The worker's state dir for one test."""
    return tmp_path / "state"


@pytest.fixture
def open_journal(state: Path) -> Iterator[OpenJournal]:
    """Opens Journals on one state dir and closes every one after the test."""
    opened: list[Journal] = []

    def make(**kwargs: float) -> Journal:
        j = Journal(str(state), **kwargs)  # type: ignore[arg-type]
        opened.append(j)
        return j

    yield make
    for j in opened:
        j.close()


class Clock:
    """A settable time.time for the journal module only."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replaces the journal's clock, so age limits are tested without waiting."""
    fake = Clock(1_800_000_000.0)
    monkeypatch.setattr(journal_mod, "time", types.SimpleNamespace(time=fake.time))
    return fake


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection on a journal file, committed and closed on exit."""
    db = sqlite3.connect(path)
    try:
        with db:
            yield db
    finally:
        db.close()


def known(j: Journal, ids: list[str]) -> list[str]:
    """The ids of ids that the journal knows, in order."""
    return [u for u in ids if j.get(u) is not None]


def test_record_then_get(open_journal: OpenJournal) -> None:
    """A recorded id is found with what it must publish; an unknown one is None."""
    j = open_journal()

    entry = j.record("a" * 32, [EVENT, REPLY])

    assert entry == j.get("a" * 32)
    assert (EVENT, REPLY) == entry.outgoing
    assert j.get("b" * 32) is None
    assert 1 == len(j)


def test_entries_survive_a_reopen_with_their_bodies(open_journal: OpenJournal) -> None:
    """A new Journal on the same dir sees every entry, bodies byte for byte."""
    first = open_journal()
    recorded = [first.record(f"id{i}", [EVENT, REPLY]) for i in range(3)]
    first.close()

    second = open_journal()

    assert recorded == [second.get(f"id{i}") for i in range(3)]
    assert '{"é": "ü"}'.encode() == second.get("id0").outgoing[0].body  # type: ignore[union-attr]
    assert second.get("id2").outgoing[1].mandatory is True  # type: ignore[union-attr]


def test_record_is_on_disk_before_close(open_journal: OpenJournal) -> None:
    """A record is committed at once: a second reader sees it while the first is still open."""
    first = open_journal()
    first.record("written", [REPLY])

    assert REPLY == open_journal().get("written").outgoing[0]  # type: ignore[union-attr]


def test_recording_an_id_again_replaces_it(open_journal: OpenJournal, clock: Clock) -> None:
    """An id recorded twice keeps the later entry, once."""
    j = open_journal()
    j.record("twice", [EVENT])
    clock.now += 1

    later = j.record("twice", [REPLY])

    assert later == j.get("twice")
    assert 1 == len(j)


def test_missing_state_dir_is_created(tmp_path: Path) -> None:
    """Opening a journal in a state dir that does not exist yet creates it."""
    state = tmp_path / "a" / "b"

    j = Journal(str(state))
    try:
        j.record("x", [])
    finally:
        j.close()

    assert (state / "journal.sqlite3").is_file()


# --- bounds --------------------------------------------------------------------------


def test_count_bound_drops_the_oldest_at_open(open_journal: OpenJournal, clock: Clock) -> None:
    """Beyond max_entries the oldest ids are forgotten when the journal is opened."""
    first = open_journal(max_entries=3)
    for i in range(5):
        first.record(f"id{i}", [])
        clock.now += 1
    first.close()

    reopened = open_journal(max_entries=3)

    assert ["id2", "id3", "id4"] == known(reopened, [f"id{i}" for i in range(5)])
    assert 3 == len(reopened)


def test_count_bound_is_kept_in_batches_not_on_every_write(open_journal: OpenJournal,
                                                           clock: Clock) -> None:
    """A write only inserts; every TRIM_EVERY-th write trims back to max_entries, oldest first."""
    j = open_journal(max_entries=10)
    every = journal_mod.TRIM_EVERY
    for i in range(every - 1):
        j.record(f"id{i}", [])
        clock.now += 0.001
    untrimmed = len(j)

    j.record("last", [])

    assert every - 1 == untrimmed
    assert 10 == len(j)
    assert [f"id{i}" for i in range(every - 10, every - 1)] == known(
        j, [f"id{i}" for i in range(every - 1)])
    assert j.get("last") is not None


def test_ids_recorded_again_do_not_count_twice(open_journal: OpenJournal,
                                               clock: Clock) -> None:
    """The count bound counts entries, not writes: re-recording ids never trims others."""
    j = open_journal(max_entries=10)
    ids = [f"id{i}" for i in range(10)]
    for number in range(journal_mod.TRIM_EVERY):
        j.record(ids[number % 10], [])
        clock.now += 0.001

    assert ids == known(j, ids)
    assert 10 == len(j)


def test_age_bound_drops_old_entries_at_open(open_journal: OpenJournal, clock: Clock) -> None:
    """Entries that aged out while the worker was down are deleted when it starts."""
    first = open_journal(max_age=60.0)
    first.record("old", [])
    clock.now += 30
    first.record("young", [])
    first.close()
    clock.now += 40

    second = open_journal(max_age=60.0)

    assert ["young"] == known(second, ["old", "young"])
    assert 1 == len(second)


def test_entry_exactly_max_age_old_is_kept(open_journal: OpenJournal, clock: Clock) -> None:
    """The age bound is inclusive: at exactly max_age an entry is still known."""
    open_journal(max_age=60.0).record("edge", [])
    clock.now += 60

    assert ["edge"] == known(open_journal(max_age=60.0), ["edge"])


def test_keep_younger_than_spares_young_entries_from_the_count_bound(
        open_journal: OpenJournal, clock: Clock) -> None:
    """Entries younger than keep_younger_than outlive max_entries; once older, the oldest go."""
    bounds = {"max_entries": 3, "keep_younger_than": 60.0}
    first = open_journal(**bounds)
    for i in range(5):
        first.record(f"id{i}", [])
        clock.now += 1
    first.close()
    ids = [f"id{i}" for i in range(5)]

    clock.now += 30
    all_young = known(open_journal(**bounds), ids)
    clock.now += 32  # id0 and id1 are now over 60 s old, id2 is 60 s old
    some_old = known(open_journal(**bounds), ids)

    assert ids == all_young
    assert ["id2", "id3", "id4"] == some_old


def test_age_bound_applies_within_keep_younger_than(open_journal: OpenJournal,
                                                    clock: Clock) -> None:
    """keep_younger_than does not extend max_age: an entry older than max_age still goes."""
    bounds = {"max_age": 60.0, "keep_younger_than": 3600.0}
    open_journal(**bounds).record("old", [])
    clock.now += 61

    assert 0 == len(open_journal(**bounds))


# --- damage --------------------------------------------------------------------------


@pytest.mark.parametrize("outgoing", [
    "{not json",
    "[" * 100000,
    '{"x": "nova"}',
    '[{"x": "nova"}]',
    "[1, 2]",
    '"text"',
    b"\x80\x81 not utf-8",
], ids=["not-json", "deeply-nested", "a-dict", "missing-keys", "not-dicts", "a-string",
        "not-utf8"])
def test_damaged_record_is_skipped_with_a_warning(open_journal: OpenJournal,
                                                  outgoing: str | bytes) -> None:
    """A record that does not read back as an Outgoing list is unknown, with a warning."""
    # Given a journal with one good record and one damaged
    j = open_journal()
    j.record("good", [EVENT])
    with raw(j.path) as db:
        db.execute("INSERT INTO journal VALUES ('bad', 1e18, ?)", (outgoing,))

    # When both are looked up
    with capture_logs() as logs:
        found = known(j, ["good", "bad"])

    # Then the damaged one is unknown (its message runs again) and reported
    assert ["good"] == found
    assert [("warning", "bad")] == [(e["log_level"], e["unique_id"]) for e in logs
                                    if e["event"] == "journal_record_skipped"]


def test_garbage_database_is_moved_aside(open_journal: OpenJournal, state: Path) -> None:
    """A journal file that is not a database is set aside and a fresh one is used."""
    state.mkdir()
    garbage = b"\x00garbage" * 512
    (state / "journal.sqlite3").write_bytes(garbage)

    with capture_logs() as logs:
        j = open_journal()
    j.record("after", [EVENT])

    aside = list(state.glob("journal.sqlite3.corrupt-*"))
    assert [garbage] == [p.read_bytes() for p in aside]
    assert EVENT == j.get("after").outgoing[0]  # type: ignore[union-attr]
    assert ["error"] == [e["log_level"] for e in logs
                         if e["event"] == "journal_damaged_moved_aside"]


def test_read_failure_raises_journal_unavailable(open_journal: OpenJournal) -> None:
    """A lookup the database cannot answer raises JournalUnavailable, not sqlite3's error."""
    j = open_journal()
    j.close()

    with pytest.raises(JournalUnavailable, match="journal read failed"):
        j.get("any")


# --- the JSON-lines journal of earlier versions --------------------------------------


def test_jsonl_journal_is_imported_once(open_journal: OpenJournal, state: Path) -> None:
    """Good lines of journal.jsonl are imported, damaged ones counted once, the file renamed."""
    # Given the JSON-lines journal of an earlier version, with damaged lines among good ones
    state.mkdir()
    good = [{"id": f"id{i}", "t": 1e18, "out": [o.to_json() for o in (EVENT, REPLY)]}
            for i in range(2)]
    damaged = ['{"id": "x"}', "[1, 2]", '"text"', "\x00\x01garbage", "[" * 100000,
               '{"id": "nan", "t": NaN, "out": []}', '{"id": "cut", "t": 1e18, "ou']
    (state / "journal.jsonl").write_text(
        "\n".join([json.dumps(good[0]), *damaged, json.dumps(good[1])]) + "\n", "utf-8")

    # When the worker starts, twice
    with capture_logs() as logs:
        j = open_journal()
    j.close()
    with capture_logs() as logs_again:
        again = open_journal()

    # Then the good lines are known, the damaged ones reported once, the file kept aside
    assert ["id0", "id1"] == known(again, ["id0", "id1", "x", "nan", "cut"])
    assert (EVENT, REPLY) == again.get("id1").outgoing  # type: ignore[union-attr]
    assert [len(damaged)] == [e["skipped"] for e in logs
                              if e["event"] == "journal_jsonl_lines_skipped"]
    assert [] == [e for e in logs_again if e["event"].startswith("journal_jsonl")]
    assert [] == list(state.glob("journal.jsonl"))
    assert (state / "journal.jsonl.imported").is_file()


# --- a full disk ---------------------------------------------------------------------


def test_failed_write_raises_and_a_later_write_succeeds(open_journal: OpenJournal) -> None:
    """A write the database refuses raises JournalUnavailable; with room again, writes work."""
    # Given a journal whose database may not grow (SQLite's own limit: SQLITE_FULL)
    j = open_journal()
    j.record("before", [EVENT])
    pages = j._db.execute("PRAGMA page_count").fetchone()[0]
    j._db.execute(f"PRAGMA max_page_count = {pages}")

    # When a write needs more room, then the room comes back
    with pytest.raises(JournalUnavailable, match="journal write failed: database or disk is full"):
        j.record("refused", [BIG])
    j._db.execute("PRAGMA max_page_count = 1073741823")
    j.record("later", [BIG])

    # Then the refused write left nothing, and the journal went on working
    assert ["before", "later"] == known(j, ["before", "refused", "later"])


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, so a disk can really fill up (needs root)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
            capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no room left; the file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
    return filler


def test_full_filesystem_write_fails_then_recovers(tiny_fs: Path) -> None:
    """On a full disk a write raises JournalUnavailable; once space is freed, writes work."""
    j = Journal(str(tiny_fs / "state"))
    try:
        j.record("before", [EVENT])
        filler = fill(tiny_fs)

        with pytest.raises(JournalUnavailable, match="journal write failed"):
            j.record("refused", [BIG])
        filler.unlink()
        j.record("later", [EVENT])

        assert ["before", "later"] == known(j, ["before", "refused", "later"])
    finally:
        j.close()


# --- size ----------------------------------------------------------------------------


def test_opening_a_full_journal_loads_nothing(open_journal: OpenJournal) -> None:
    """Opening a journal of 100,000 entries allocates well under a MiB: nothing is loaded."""
    # Given 100,000 entries, written the fast way
    open_journal().close()
    body = json.dumps([EVENT.to_json(), REPLY.to_json()])
    with raw(open_journal().path) as db:
        db.executemany("INSERT INTO journal VALUES (?, ?, ?)",
                       ((f"id{i:06}", 4e9 + i, body) for i in range(100000)))

    # When it is opened
    tracemalloc.start()
    try:
        j = open_journal()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Then it allocated next to nothing, and still knows every entry
    assert peak < 1 << 20
    assert 100000 == len(j)
    assert (EVENT, REPLY) == j.get("id054321").outgoing  # type: ignore[union-attr]

