"""Log lines: JSON or console, the libraries' records through the same pipeline, journald
priorities, and no password in any of them."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from worker import logs

PASSWORD = "s3cret"


@pytest.fixture
def logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[Callable[..., Callable[[], list[str]]]]:
    """Factory: logs.setup(level, fmt) onto a real file; returns a reader of its lines.

    Afterwards logging is set up again as the suite's conftest leaves it.
    """
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handles = []

    def make(level: str = "info", fmt: str = "json", journal: bool = False
             ) -> Callable[[], list[str]]:
        path = tmp_path / f"log{len(handles)}.txt"
        handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by the fixture)
        handles.append(handle)
        if journal:
            found = os.fstat(handle.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{found.st_dev}:{found.st_ino}")
        logs.setup(level, fmt, stream=handle)

        def lines() -> list[str]:
            handle.flush()
            return path.read_text(encoding="utf-8").splitlines()
        return lines

    yield make
    for handle in handles:
        handle.close()
    logs.setup("warning", "json")
    structlog.configure(cache_logger_on_first_use=False)


@pytest.mark.parametrize(("text", "expected"), [
    ("cannot connect to amqp://nova:s3cret@rabbit:5672//",
     "cannot connect to amqp://nova:***@rabbit:5672//"),
    ("amqp://nova:s3cret@h1//;amqps://nova:s3cret@h2//", "amqp://nova:***@h1//;amqps://nova:***@h2//"),
    ("amqp://u:s3c@ret@host//", "amqp://u:***@host//"),  # py-amqp reads the password s3c@ret
    ("amqp://u:s3/cret@h:1//", "amqp://u:***@h:1//"),
    ("OperationalError('amqp://u:s3cret@h')", "OperationalError('amqp://u:***@h')"),
    ('{"u": "amqp://u:s3cret@h//", "m": "a@b"}', '{"u": "amqp://u:***@h//", "m": "a@b"}'),
    ("qemu+tcp://u:s3cret@host/system", "qemu+tcp://u:***@host/system"),
    ("qemu+tcp://host:16509/system", "qemu+tcp://host:16509/system"),
    ("amqp://guest@h// and user@example.org", "amqp://guest@h// and user@example.org"),
])
def test_mask_hides_the_password_of_every_url_and_nothing_else(text: str, expected: str) -> None:
    """The password of each scheme://user:password@ goes; the user, host and the rest stay."""
    assert expected == logs.mask(text)


def test_json_lines_mask_passwords_in_values_nested_values_and_tracebacks(
        logged: Callable[..., Callable[[], list[str]]]) -> None:
    """Whatever a caller logs (a URL, a dict, an exception), no password reaches the line."""
    lines = logged("info", "json")
    log = logs.get("test")

    log.info("connecting", url=f"amqp://nova:{PASSWORD}@h//",
             nodes={"all": [f"amqp://nova:{PASSWORD}@h2//"]}, error=OSError(f"x amqp://n:{PASSWORD}@h"))
    try:
        raise ConnectionError(f"cannot connect to amqp://nova:{PASSWORD}@h//")
    except ConnectionError:
        log.exception("connect_failed")

    first, second = (json.loads(line) for line in lines())
    assert ("amqp://nova:***@h//", ["amqp://nova:***@h2//"]) == (first["url"],
                                                                first["nodes"]["all"])
    assert "amqp://nova:***@h//" in second["exception"]
    assert PASSWORD not in "\n".join(lines())


def test_a_library_s_stdlib_record_is_a_json_line_of_the_same_pipeline(
        logged: Callable[..., Callable[[], list[str]]]) -> None:
    """A py-amqp warning comes out as our JSON: event, level, logger, timestamp, masked."""
    lines = logged("info", "json")

    logging.getLogger("amqp").warning("Received method %s during closing channel %s",
                                      (60, 60), f"amqp://nova:{PASSWORD}@h//")

    [line] = lines()
    record = json.loads(line)
    assert ("Received method (60, 60) during closing channel amqp://nova:***@h//", "warning",
            "amqp") == (record["event"], record["level"], record["logger"])
    assert record["timestamp"].endswith("Z")


def test_the_libraries_info_records_stay_out_even_at_info(
        logged: Callable[..., Callable[[], list[str]]]) -> None:
    """kombu's and py-amqp's info lines are noise: only their warnings and worse are shown."""
    lines = logged("info", "json")

    logging.getLogger("kombu").info("connected")
    logs.get("test").info("ours")

    assert ["ours"] == [json.loads(line)["event"] for line in lines()]


def test_console_format_is_readable_lines_without_colour_off_a_terminal(
        logged: Callable[..., Callable[[], list[str]]]) -> None:
    """console: a timestamp, the level, the event and key=value; no escape codes in a file."""
    lines = logged("info", "console")

    logs.get("test").warning("verb_failed", duration_ms=1.5)
    logging.getLogger("kombu").warning("Reverting to default")

    ours, theirs = lines()
    assert "[warning  ] verb_failed" in ours and "duration_ms=1.5" in ours
    assert "Reverting to default" in theirs and "[kombu]" in theirs
    assert "\x1b[" not in ours + theirs


def test_under_journald_each_line_starts_with_its_syslog_priority(
        logged: Callable[..., Callable[[], list[str]]]) -> None:
    """JOURNAL_STREAM naming the stream: <7> debug ... <3> error, stdlib records too."""
    lines = logged("debug", "json", journal=True)
    log = logs.get("test")

    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("amqp").critical("c")

    assert ["<7>", "<6>", "<4>", "<3>", "<2>"] == [line[:3] for line in lines()]
    assert ["d", "i", "w", "e", "c"] == [json.loads(line[3:])["event"] for line in lines()]


def test_every_line_of_a_console_traceback_keeps_the_priority(
        logged: Callable[..., Callable[[], list[str]]]) -> None:
    """journald reads line by line: each line of a multi-line record gets <3>."""
    lines = logged("info", "console", journal=True)
    try:
        raise ValueError("boom")
    except ValueError:
        logs.get("test").exception("crashed")

    found = lines()
    assert 3 < len(found)
    assert all(line.startswith("<3>") for line in found), found


def test_journal_stream_of_another_file_adds_no_prefix(
        logged: Callable[..., Callable[[], list[str]]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """An inherited JOURNAL_STREAM with stderr redirected elsewhere: plain JSON lines."""
    other = tmp_path / "other"
    other.write_text("")
    found = os.stat(other)
    monkeypatch.setenv("JOURNAL_STREAM", f"{found.st_dev}:{found.st_ino}")
    lines = logged("info", "json")

    logs.get("test").info("plain")

    assert "plain" == json.loads(lines()[0])["event"]


def test_masked_excepthook_prints_the_traceback_without_the_password(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A traceback nobody caught, as the CLI prints it, carries no password."""
    try:
        raise RuntimeError(f"amqp://nova:{PASSWORD}@h//")
    except RuntimeError as exc:
        logs.masked_excepthook(RuntimeError, exc, exc.__traceback__)

    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "amqp://nova:***@h//" in err
    assert PASSWORD not in err


def test_masked_thread_excepthook_masks_what_a_dying_thread_raised(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An exception that ends a thread is printed with its thread's name, password masked."""
    def die() -> None:
        raise RuntimeError(f"amqp://nova:{PASSWORD}@h//")

    thread = threading.Thread(target=die, name="consumer")
    previous = threading.excepthook
    threading.excepthook = logs.masked_thread_excepthook
    try:
        thread.start()
        thread.join()
    finally:
        threading.excepthook = previous

    err = capsys.readouterr().err
    assert err.startswith("Exception in thread consumer:\nTraceback")
    assert "amqp://nova:***@h//" in err and PASSWORD not in err
