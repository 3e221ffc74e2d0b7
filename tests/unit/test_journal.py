"""The completed-message journal: record, reload, crash tails, bounds, compaction."""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from worker import journal as journal_mod
from worker.journal import Journal, Outgoing

REPLY = Outgoing("", "reply_08c90c0ac22c4e899b48d0a866dd11df", b'{"oslo.version": "2.0"}', True)
EVENT = Outgoing("nova", "versioned_notifications.info", '{"é": "ü"}'.encode())

OpenJournal = Callable[..., Journal]


@pytest.fixture
def open_journal(tmp_path: Path) -> Iterator[OpenJournal]:
    """Opens Journals on one state dir and closes every one after the test."""
    opened: list[Journal] = []

    def make(**kwargs: float) -> Journal:
        j = Journal(str(tmp_path / "state"), **kwargs)  # type: ignore[arg-type]
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


def lines(j: Journal) -> list[str]:
    """The journal file's lines as on disk."""
    return j.path.read_text("utf-8").splitlines()


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
    """A record is flushed at once: a second reader sees it while the first is still open."""
    first = open_journal()
    first.record("written", [REPLY])

    assert REPLY == open_journal().get("written").outgoing[0]  # type: ignore[union-attr]


def test_truncated_last_line_is_skipped_with_a_warning(open_journal: OpenJournal) -> None:
    """A line cut short by a crash mid-write is skipped and logged; the lines before it load."""
    # Given a journal whose last line a crash cut short
    first = open_journal()
    for uid in ("one", "two", "three"):
        first.record(uid, [EVENT])
    first.close()
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) - 20])

    # When the worker starts again
    with capture_logs() as logs:
        second = open_journal()

    # Then the complete lines load and the cut one is reported
    assert (True, True, False) == tuple(second.get(u) is not None for u in ("one", "two", "three"))
    assert {"event": "journal_line_skipped", "line": 3, "log_level": "warning"} in logs


def test_record_after_a_truncated_tail_is_not_glued_to_it(open_journal: OpenJournal) -> None:
    """After loading a cut tail, the next record lands on a line of its own and survives."""
    # Given a journal reopened after a crash cut its last line
    first = open_journal()
    first.record("one", [EVENT])
    first.record("two", [EVENT])
    first.close()
    first.path.write_bytes(first.path.read_bytes()[:-10])
    with capture_logs():
        second = open_journal()

    # When it records more and is reopened once again
    second.record("three", [REPLY])
    second.close()
    with capture_logs() as logs:
        third = open_journal()

    # Then the new record loaded cleanly
    assert ["one", "three"] == [u for u in ("one", "two", "three") if third.get(u)]
    assert [] == [e for e in logs if e["event"] == "journal_line_skipped"]


def test_garbage_in_the_middle_does_not_stop_the_load(open_journal: OpenJournal) -> None:
    """Unreadable lines anywhere are skipped one by one; every good line loads."""
    first = open_journal()
    first.record("one", [EVENT])
    first.close()
    with open(first.path, "a", encoding="utf-8") as handle:
        handle.write('{"id": "x"}\n[1, 2]\n"text"\n\x00\x01garbage\n')
        handle.write(json.dumps({"id": "two", "t": 1e18, "out": []}) + "\n")

    with capture_logs() as logs:
        second = open_journal()

    assert second.get("one") is not None
    assert second.get("two") is not None
    assert [2, 3, 4, 5] == [e["line"] for e in logs if e["event"] == "journal_line_skipped"]


def test_count_bound_drops_the_oldest(open_journal: OpenJournal) -> None:
    """Beyond max_entries the oldest ids are forgotten, in memory and after a reopen."""
    j = open_journal(max_entries=3)
    for i in range(5):
        j.record(f"id{i}", [])

    assert [None, None] == [j.get("id0"), j.get("id1")]
    assert 3 == len(j)
    j.close()
    reopened = open_journal(max_entries=3)
    assert ["id2", "id3", "id4"] == [f"id{i}" for i in range(5) if reopened.get(f"id{i}")]


def test_age_bound_drops_old_entries_on_record(open_journal: OpenJournal, clock: Clock) -> None:
    """An entry older than max_age is dropped when a newer one is recorded."""
    j = open_journal(max_age=60.0)
    j.record("old", [])
    clock.now += 61

    j.record("new", [])

    assert j.get("old") is None
    assert j.get("new") is not None


def test_age_bound_drops_old_entries_on_load(open_journal: OpenJournal, clock: Clock) -> None:
    """Entries that aged out while the worker was down are not loaded."""
    first = open_journal(max_age=60.0)
    first.record("old", [])
    clock.now += 30
    first.record("young", [])
    first.close()
    clock.now += 40

    second = open_journal(max_age=60.0)

    assert (None, 1) == (second.get("old"), len(second))
    assert 1 == len(lines(second))


def test_entry_exactly_max_age_old_is_kept(open_journal: OpenJournal, clock: Clock) -> None:
    """The age bound is inclusive: at exactly max_age an entry is still known."""
    j = open_journal(max_age=60.0)
    j.record("edge", [])
    clock.now += 60

    j.record("now", [])

    assert j.get("edge") is not None


def test_compaction_keeps_the_file_bounded(open_journal: OpenJournal) -> None:
    """However many records, the file stays within twice max_entries lines and reloads whole."""
    j = open_journal(max_entries=10)
    longest = 0
    for i in range(95):
        j.record(f"id{i:03}", [EVENT])
        longest = max(longest, len(lines(j)))

    assert longest <= 20
    j.close()
    reopened = open_journal(max_entries=10)
    assert [f"id{i:03}" for i in range(85, 95)] == [
        f"id{i:03}" for i in range(95) if reopened.get(f"id{i:03}")]
    assert 10 == len(lines(reopened))


def test_missing_state_dir_is_created(tmp_path: Path) -> None:
    """Opening a journal in a state dir that does not exist yet creates it."""
    state = tmp_path / "a" / "b"

    j = Journal(str(state))
    try:
        j.record("x", [])
    finally:
        j.close()

    assert (state / "journal.jsonl").is_file()
