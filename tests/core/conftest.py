"""The core tier: the dispatcher with its real journal and handlers, no broker, no daemon.

libvirt is a private ``test:///<node.xml>`` per test; the outbox records what would be
published and confirms it when the test says. Each test takes milliseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from handlers.registry import TABLE
from tests.core.support import RecordingOutbox, Settles, node_xml
from worker import __version__
from worker import config as config_mod
from worker.core.answers import Answers
from worker.core.dispatcher import Dispatcher, Lines
from worker.core.journal import Journal
from worker.core.meter import Meter
from worker.core.methods import MethodTable
from worker.core.ordering import KeyedExecutor
from worker.virt.hypervisor import Hypervisor
from worker.virt.paths import InstancePaths


@dataclass
class Core:
    """One dispatcher and everything it was handed."""

    dispatcher: Dispatcher
    outbox: RecordingOutbox
    settles: Settles
    uuids: list[str]
    hypervisor: Hypervisor
    journal: Journal
    lines: Lines
    faults: list[tuple[str, str | None]]

    def deliver(self, message: dict[str, Any] | bytes, number: int,
                redelivered: bool = False) -> None:
        """Hand the dispatcher one delivery, as the consumer thread would."""
        self.dispatcher.deliver(self.settles.delivery(message, number=number,
                                                      redelivered=redelivered))


@pytest.fixture
def make_core(tmp_path: Path) -> Iterator[Callable[..., Core]]:
    """Factory: a dispatcher over a node of `domains` running test domains and a table."""
    made: list[Core] = []

    def make(*, domains: int = 2, table: MethodTable = TABLE, auto_confirm: bool = True,
             meter: Meter | None = None, **options: Any) -> Core:
        uri, uuids = node_xml(tmp_path / f"node{len(made)}.xml", domains)
        cfg = config_mod.load(None, {
            "host": "core-host", "transport_url": "memory://", "connection_uri": uri,
            "virt_type": "test", "instances_path": str(tmp_path / "instances"),
            "state_dir": str(tmp_path / f"state{len(made)}"), **options}, environ={})
        hypervisor = Hypervisor(uri)
        paths = InstancePaths(cfg.instances_path)
        paths.root.mkdir(parents=True, exist_ok=True)
        outbox = RecordingOutbox(auto=auto_confirm)
        journal = Journal(cfg.state_dir)
        lines = Lines(KeyedExecutor(4), KeyedExecutor(2, name="query"))
        faults: list[tuple[str, str | None]] = []
        dispatcher = Dispatcher(cfg, table, hypervisor, journal, outbox, lines, paths,
                                Answers(cfg, __version__), retry_sleep=lambda _s: None,
                                on_fault=lambda kind, reason: faults.append((kind, reason)),
                                meter=meter)
        core = Core(dispatcher, outbox, Settles(), uuids, hypervisor, journal, lines, faults)
        made.append(core)
        return core

    yield make
    for core in made:
        core.dispatcher.draining = True
        for line in (core.lines.ordered, core.lines.unordered):
            line.wait_idle(10)
            line.shutdown()
        core.journal.close()
        core.hypervisor.close()


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event a slow test handler waits on; set at teardown so no thread is left hanging."""
    event = threading.Event()
    yield event
    event.set()
