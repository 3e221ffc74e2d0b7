"""Metrics through a libvirt loss: the worker's own connection to libvirtd is cut and comes back.

The worker talks to the system libvirtd's test driver (a private node per test) through
a socket of the test's (tests/libvirt_link.py); cutting that ends the worker's connection
as a dying daemon would, while the daemon itself, shared with every other test, runs on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.core.support import node_xml
from tests.libvirt_link import DAEMON_SOCKET, LibvirtLink
from tests.scrape import Samples, scrape
from tests.taps import EventTap
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.e2e


@pytest.fixture
def link(tmp_path: Path) -> Iterator[LibvirtLink]:
    """A cuttable way to the system libvirtd."""
    if not os.path.exists(DAEMON_SOCKET):
        pytest.fail(f"libvirtd is not listening on {DAEMON_SOCKET}; run scripts/test.sh, "
                    "which starts it")
    made = LibvirtLink(tmp_path / "libvirt.sock")
    yield made
    made.close()


@pytest.fixture
def cfg(make_config: Callable[..., Config], link: LibvirtLink, tmp_path: Path) -> Config:
    """The daemon's test driver on a private node through the link; metrics on."""
    uri, _ = node_xml(tmp_path / "node.xml", 1)
    return make_config(connection_uri=link.uri(Path(uri.removeprefix("test://"))),
                       metrics_listen="127.0.0.1:0",
                       metrics_textfile=str(tmp_path / "compute-worker.prom"),
                       metrics_textfile_interval=0.2)


@pytest.fixture
def service(cfg: Config, tap: EventTap) -> Iterator[Service]:
    """A started worker that sleeps for real between reconnects, as in production."""
    made = Service(cfg, debounce=0.3)
    made.start()
    yield made
    made.stop(grace=10)


def _until(read: Callable[[], Samples], name: str, value: float, timeout: float = 20.0,
           **labels: str) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        seen = read()
        if seen.get(name, **labels) == value:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} never {value}; last scrape:\n{seen.text}")
        time.sleep(0.05)


def test_a_libvirt_loss_shows_as_disconnected_then_one_reconnect(
        service: Service, link: LibvirtLink, cfg: Config) -> None:
    """Cut: libvirt_connected goes 0 (up stays 1); restored: 1 again, reconnects{libvirt} 1."""
    address = service.exporter.address
    assert address is not None
    textfile = Path(cfg.worker.metrics_textfile)
    seen = scrape(address)
    assert (1, 0) == (seen.get("compute_worker_libvirt_connected"),
                      seen.get("compute_worker_reconnects_total", peer="libvirt"))

    link.cut()
    lost = _until(lambda: scrape(address), "compute_worker_libvirt_connected", 0)
    assert (1, 0) == (lost.get("compute_worker_up"),
                      lost.get("compute_worker_reconnects_total", peer="libvirt"))
    _until(lambda: Samples(textfile.read_text()), "compute_worker_libvirt_connected", 0)
    link.restore()

    back = _until(lambda: scrape(address), "compute_worker_reconnects_total", 1, peer="libvirt")
    assert (1, 1) == (back.get("compute_worker_libvirt_connected"),
                      back.get("compute_worker_broker_connected"))
    _until(lambda: Samples(textfile.read_text()), "compute_worker_reconnects_total", 1,
           peer="libvirt")
