"""The metrics read at scrape time, the HTTP endpoint, the textfile, and their options."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.scrape import Samples, scrape
from worker import config
from worker.errors import ConfigError
from worker.ops.export import Exporter
from worker.ops.metrics import POWER_STATES, Metrics, Readings


class World:
    """What the readings read: plain values a test changes between scrapes."""

    def __init__(self) -> None:
        self.up = True
        self.libvirt = True
        self.broker = False
        self.running = 3
        self.waiting = 7
        self.reconnects = {"broker": 2, "libvirt": 1}
        self.events = {"info": 5, "error": 1}
        self.failures = 4
        self.states = {"running": 2, "paused": 1, "made-up": 9}
        self.nodes = {"consume": "10.0.0.1:5672", "publish": "10.0.0.2:5672"}

    def readings(self) -> Readings:
        return Readings(
            up=lambda: self.up, libvirt_connected=lambda: self.libvirt,
            broker_connected=lambda: self.broker, verbs_in_flight=lambda: self.running,
            queue_depth=lambda: self.waiting, reconnects=lambda: self.reconnects,
            events_published=lambda: self.events, confirm_failures=lambda: self.failures,
            power_states=lambda: self.states, broker_nodes=lambda: self.nodes)


@pytest.fixture
def world() -> World:
    """A worker's state as plain values."""
    return World()


@pytest.fixture
def metrics(world: World) -> Metrics:
    """Metrics over a two-method table reading world."""
    return Metrics(["pause_instance", "unpause_instance"], world.readings())


def _read(metrics: Metrics) -> Samples:
    return Samples(metrics.exposition().decode())


def test_readings_are_exported_under_the_issue_s_names(world: World, metrics: Metrics) -> None:
    """Each reading appears as its metric, with the value the worker holds now."""
    seen = _read(metrics)

    assert 1 == seen.get("compute_worker_up")
    assert (1, 0) == (seen.get("compute_worker_libvirt_connected"),
                      seen.get("compute_worker_broker_connected"))
    assert (3, 7) == (seen.get("compute_worker_verbs_in_flight"),
                      seen.get("compute_worker_queue_depth"))
    assert (2, 1) == (seen.get("compute_worker_reconnects_total", peer="broker"),
                      seen.get("compute_worker_reconnects_total", peer="libvirt"))
    assert (5, 1) == (seen.get("compute_worker_events_published_total", priority="info"),
                      seen.get("compute_worker_events_published_total", priority="error"))
    assert 4 == seen.get("compute_worker_publish_confirm_failures_total")


def test_each_connection_names_its_broker_node_and_a_down_one_none(world: World,
                                                                  metrics: Metrics) -> None:
    """compute_worker_broker_node{connection,node} is 1 for the node each connection is on;
    a connection that is down has no series, and a name other than the two is not a label."""
    assert 1 == _read(metrics).get("compute_worker_broker_node", connection="consume",
                                   node="10.0.0.1:5672")
    world.nodes = {"consume": "", "publish": "10.0.0.3:5672", "made-up": "10.0.0.9:5672"}

    seen = _read(metrics)

    assert {"publish"} == seen.labels("compute_worker_broker_node", "connection")
    assert {"10.0.0.3:5672"} == seen.labels("compute_worker_broker_node", "node")


def test_every_power_state_is_a_series_and_no_other(world: World, metrics: Metrics) -> None:
    """All six states are shown (0 when empty); a state outside nova's is not a label."""
    seen = _read(metrics)

    assert set(POWER_STATES) == seen.labels("compute_worker_instances", "power_state")
    assert (2, 1, 0) == tuple(seen.get("compute_worker_instances", power_state=s)
                              for s in ("running", "paused", "shutdown"))


def test_readings_change_between_scrapes(world: World, metrics: Metrics) -> None:
    """Read at each scrape: what changed since is what the next one says."""
    world.libvirt, world.up = False, False
    world.reconnects = {"broker": 2, "libvirt": 2}

    seen = _read(metrics)

    assert (0, 0, 2) == (seen.get("compute_worker_libvirt_connected"),
                         seen.get("compute_worker_up"),
                         seen.get("compute_worker_reconnects_total", peer="libvirt"))


def test_a_failing_reading_costs_its_value_not_the_scrape() -> None:
    """A reading that raises shows 0 and is logged; every other metric is still there."""
    def broken() -> int:
        raise RuntimeError("a bug in a reading")
    fragile = Metrics([], Readings(
        up=lambda: True, libvirt_connected=lambda: True, broker_connected=lambda: True,
        verbs_in_flight=broken, queue_depth=lambda: 1, reconnects=lambda: {},
        events_published=lambda: {}, confirm_failures=lambda: 0, power_states=lambda: {}))

    with capture_logs() as logs:
        seen = _read(fragile)

    assert (0, 1) == (seen.get("compute_worker_verbs_in_flight"),
                      seen.get("compute_worker_queue_depth"))
    assert ["metrics_reading_failed"] == [e["event"] for e in logs]


@pytest.fixture
def exporter(metrics: Metrics, tmp_path: Path) -> Iterator[Exporter]:
    """An exporter on an ephemeral port writing tmp_path/worker.prom every 0.1 s."""
    made = Exporter(metrics.registry, listen="127.0.0.1:0", textfile=str(tmp_path / "worker.prom"),
                    interval=0.1)
    made.start()
    yield made
    made.stop()


def test_the_endpoint_serves_what_the_registry_holds(exporter: Exporter,
                                                     metrics: Metrics) -> None:
    """GET /metrics on the listen address gives the exposition, counters included."""
    metrics.message("pause_instance", "ok", 0.02)
    assert exporter.address is not None

    seen = scrape(exporter.address)

    assert 1 == seen.get("compute_worker_rpc_messages_total", method="pause_instance",
                         outcome="ok")
    assert 1 == seen.get("compute_worker_verb_duration_seconds_bucket", method="pause_instance",
                         le="0.025")


def test_the_textfile_is_replaced_whole_every_interval(exporter: Exporter, world: World,
                                                       tmp_path: Path) -> None:
    """Written at start, then renamed over (a new inode each time), never left half-done."""
    path = tmp_path / "worker.prom"
    first = os.stat(path).st_ino
    assert 3 == Samples(path.read_text()).get("compute_worker_verbs_in_flight")
    world.running = 5
    deadline = time.monotonic() + 5
    while Samples(path.read_text()).get("compute_worker_verbs_in_flight") != 5:
        assert time.monotonic() < deadline, "the textfile was not written again"
        time.sleep(0.02)

    assert first != os.stat(path).st_ino
    assert ["worker.prom"] == [p.name for p in tmp_path.iterdir()]


def test_stop_writes_the_textfile_a_last_time(exporter: Exporter, world: World,
                                              tmp_path: Path) -> None:
    """The last write comes after the worker stopped: node_exporter then reads up 0."""
    world.up = False
    exporter.stop()

    assert 0 == Samples((tmp_path / "worker.prom").read_text()).get("compute_worker_up")
    assert exporter.address is None


def test_a_port_taken_costs_the_endpoint_not_the_worker(metrics: Metrics) -> None:
    """Another process on the port: an error line, no endpoint, and start() returns."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        exporter = Exporter(metrics.registry, listen=f"127.0.0.1:{port}", textfile="",
                            interval=1)
        with capture_logs() as logs:
            exporter.start()
        exporter.stop()

    assert None is exporter.address
    assert ["metrics_listen_failed"] == [e["event"] for e in logs if e["log_level"] == "error"]


def test_an_unwritable_textfile_is_logged_once(metrics: Metrics, tmp_path: Path) -> None:
    """A directory that is not there: one error line however many writes fail."""
    exporter = Exporter(metrics.registry, listen="", textfile=str(tmp_path / "no" / "w.prom"),
                        interval=0.1)
    with capture_logs() as logs:
        exporter.start()
        time.sleep(0.35)
        exporter.stop()

    assert ["metrics_textfile_not_written"] == [e["event"] for e in logs]


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:9469", ("127.0.0.1", 9469)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9469", ("::1", 9469)),
    ("metrics.example.org:9000", ("metrics.example.org", 9000)),
])
def test_metrics_listen_is_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    """HOST:PORT, an IPv6 address in brackets."""
    assert listen == config.load(None, {"metrics_listen": listen}, environ={}).worker.metrics_listen
    assert expected == config.host_port(listen)


@pytest.mark.parametrize("listen", ["9469", "localhost", ":9469", "host:port", "h:70000"])
def test_a_listen_that_is_not_host_port_is_refused(listen: str) -> None:
    """The error names the option and how to turn it off."""
    with pytest.raises(ConfigError, match="option metrics_listen: .* is not HOST:PORT.*empty"):
        config.load(None, {"metrics_listen": listen}, environ={})


def test_metrics_defaults_and_off() -> None:
    """On at 127.0.0.1:9469 by default; empty turns it off; a textfile must be *.prom."""
    assert "127.0.0.1:9469" == config.load(environ={}).worker.metrics_listen
    assert "" == config.load(environ={"COMPUTE_WORKER_METRICS_LISTEN": ""}).worker.metrics_listen
    with pytest.raises(ConfigError, match="metrics_textfile: .* must end in .prom"):
        config.load(None, {"metrics_textfile": "/var/lib/node_exporter/worker.txt"}, environ={})
