"""Fault-injection fixtures (a private RabbitMQ node, tiny QEMU domains) and the figures.

Run with ``.venv/bin/python -m pytest tests/faults -q``. The broker tests use a RabbitMQ node
of their own (``rabbitfault@<host>``, AMQP port 5682, or another free pair if taken); the
libvirtd tests restart the system libvirtd and wait (``FAULTS_LIBVIRTD_WAIT`` seconds, default
60) for e2e or interop runs to finish first, else skip. ``FAULTS_SEED`` replays the kill
moments of a SIGKILL run. Each scenario's figures print at the end, whatever pytest captured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.brokers import PrivateBroker
from tests.faults.fixtures import domain_type, vms  # noqa: F401 - fixtures of this tier
from tests.faults.support import FIGURES, ensure_libvirtd, others_using_libvirtd


@pytest.fixture(scope="session")
def private_broker() -> Iterator[PrivateBroker]:
    """A RabbitMQ node of the suite's own, restartable at will; stopped and removed at the end."""
    broker = PrivateBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


_LIBVIRTD_BUSY: list[str] = []  # set once a wait for other runs has expired


@pytest.fixture
def libvirtd_to_ourselves() -> Iterator[None]:
    """Wait (bounded) until no e2e or interop run uses the system libvirtd; skip if they stay.

    Restarting libvirtd under another suite would break it. Once a wait has expired, later
    tests skip at once so the suite keeps its time budget.
    """
    deadline = time.monotonic() + float(os.environ.get("FAULTS_LIBVIRTD_WAIT", "60"))
    while others := others_using_libvirtd():
        if _LIBVIRTD_BUSY or time.monotonic() >= deadline:
            _LIBVIRTD_BUSY[:] = others
            pytest.skip(f"other test runs use the system libvirtd, not restarting it: {others}")
        time.sleep(2)
    yield
    ensure_libvirtd()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    """Print each scenario's figures, whatever pytest captured."""
    if not FIGURES:
        return
    tr = terminalreporter
    tr.section("fault-injection figures")
    header = (f"{'scenario':<18}{'casts':>6}{'retries':>8}{'ends':>6}{'distinct':>9}"
              f"{'repeat':>7}{'tap-rd':>7}{'absorbed':>9}{'joined':>7}{'errors':>7}"
              f"{'secs':>7}  faults")
    tr.write_line(header)
    for f in FIGURES:
        tr.write_line(f"{f.scenario:<18}{f.casts_sent:>6}{f.publish_retries:>8}"
                      f"{f.end_events:>6}{f.distinct_completed:>9}{f.repeated_events:>7}"
                      f"{f.tap_redeliveries:>7}{f.absorbed:>9}{f.joined:>7}"
                      f"{f.error_events:>7}{f.elapsed:>7.1f}  {f.faults}")
    tr.write_line("casts: confirmed by the broker; retries: cast publishes repeated until "
                  "confirmed; ends: end/error events received; distinct: casts answered; "
                  "repeat: end events seen again with the same message_id; tap-rd: our own tap's "
                  "redeliveries (not counted as repeats); absorbed: redeliveries the journal "
                  "skipped (duplicate_skipped_already_completed); joined: redeliveries that "
                  "joined a running verb")
    for f in FIGURES:
        for note in f.notes:
            tr.write_line(f"  {f.scenario}: {note}")
