"""Prometheus metrics: the registry and every metric the worker exports.

Two kinds. What the dispatcher reports as it happens (each message's outcome, each
verb's duration, absorbed redeliveries) are prometheus_client counters and a
histogram, told through the core's ``Meter`` protocol: a few increments on the hot
path. Everything else (connections, lines, confirms, instances) the worker already
keeps; ``Readings`` reads it at each scrape, so keeping it costs nothing meanwhile.

Label values are bounded: a method is one of the method table's names or ``other``,
so a hostile sender cannot make new series by inventing names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker import logs

log = logs.get(__name__)

#: The method label of every message whose method is not in the table (or has none).
OTHER = "other"
OUTCOMES = ("ok", "error", "rejected", "duplicate")
#: nova's power states, as the worker maps libvirt's; each is exported, 0 when none is in it.
POWER_STATES = ("pending", "running", "paused", "shutdown", "crashed", "suspended")
PEERS = ("broker", "libvirt")
#: The worker's two broker connections, each on a node of its own choosing.
CONNECTIONS = ("consume", "publish")
#: oslo's notification priorities; the worker sends info and error (always exported).
PRIORITIES = ("audit", "critical", "debug", "error", "info", "sample", "warn")
# Queries take milliseconds, a pause tens of them, a build or snapshot seconds to
# minutes, a live migration up to the completion timeout.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           120.0, 300.0, 900.0, 1800.0)


@dataclass(frozen=True)
class Readings:
    """What a scrape reads from the worker as it is now; each must be cheap and not block."""

    up: Callable[[], bool]
    libvirt_connected: Callable[[], bool]
    broker_connected: Callable[[], bool]
    verbs_in_flight: Callable[[], int]
    queue_depth: Callable[[], int]
    #: peer (broker, libvirt) -> connections opened again after a loss.
    reconnects: Callable[[], Mapping[str, int]]
    #: priority -> events the broker confirmed.
    events_published: Callable[[], Mapping[str, int]]
    confirm_failures: Callable[[], int]
    #: power state -> instances known in it.
    power_states: Callable[[], Mapping[str, int]]
    #: connection (consume, publish) -> the broker node it is on as host:port ("" while down).
    broker_nodes: Callable[[], Mapping[str, str]] = lambda: {}


class Metrics:
    """The registry; a ``Meter`` for the dispatcher; the exposition text."""

    def __init__(self, methods: Iterable[str], readings: Readings) -> None:
        self.registry = CollectorRegistry()
        self._methods = frozenset(methods)
        self._messages = Counter(
            "compute_worker_rpc_messages_total",
            "RPC messages handled, by method and outcome (ok, error, rejected, duplicate)",
            ["method", "outcome"], registry=self.registry)
        self._durations = Histogram(
            "compute_worker_verb_duration_seconds",
            "seconds each RPC method's handler ran (libvirt waits included)",
            ["method"], buckets=BUCKETS, registry=self.registry)
        self._absorbed = Counter(
            "compute_worker_redeliveries_absorbed_total",
            "redelivered messages whose verb did not run again (journal or running copy)",
            registry=self.registry)
        self.registry.register(_Readout(readings))
        # Children by the names as given, so the hot path is one dict lookup; only
        # table names are keys, so hostile names cannot grow it.
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    # --- the Meter protocol (worker/core/meter.py) --------------------------------

    def message(self, method: str, outcome: str, seconds: float | None = None) -> None:
        """One message ended with outcome; seconds: how long its verb ran."""
        child = self._counted.get((method, outcome))
        if child is None:
            child = self._messages.labels(self._label(method), outcome)
            if method in self._methods:
                self._counted[(method, outcome)] = child
        child.inc()
        if seconds is not None:
            timed = self._timed.get(method)
            if timed is None:
                timed = self._durations.labels(self._label(method))
                if method in self._methods:
                    self._timed[method] = timed
            timed.observe(seconds)

    def redelivery_absorbed(self) -> None:
        """A redelivery did not run its verb again."""
        self._absorbed.inc()

    # --- out ------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format a scrape gets."""
        return bytes(generate_latest(self.registry))

    def _label(self, method: str) -> str:
        return method if method in self._methods else OTHER


class _Readout(Collector):
    """The metrics read at scrape time from what the worker keeps anyway."""

    def __init__(self, readings: Readings) -> None:
        self._r = readings

    def collect(self) -> Iterator[Metric]:
        r = self._r
        yield _gauge("compute_worker_up", "1 while the worker runs, 0 once it is stopping",
                     lambda: int(r.up()))
        yield _gauge("compute_worker_libvirt_connected",
                     "1 while the libvirt connection is open", lambda: int(r.libvirt_connected()))
        yield _gauge("compute_worker_broker_connected",
                     "1 while both broker connections (consuming, publishing) are up",
                     lambda: int(r.broker_connected()))
        nodes = GaugeMetricFamily(
            "compute_worker_broker_node", "1 for the broker node each connection (consume, "
            "publish) is on now; no series for a connection that is down",
            labels=["connection", "node"])
        for connection, node in sorted(dict(_read(r.broker_nodes, {})).items()):
            if node and connection in CONNECTIONS:  # nodes come from transport_url: bounded
                nodes.add_metric([connection, node], 1)
        yield nodes
        yield _gauge("compute_worker_verbs_in_flight",
                     "RPC messages whose handler is running now", r.verbs_in_flight)
        yield _gauge("compute_worker_queue_depth",
                     "messages taken from the broker waiting in their instance's line",
                     r.queue_depth)
        yield _labelled(CounterMetricFamily, "compute_worker_reconnects",
                        "connections opened again after a loss, by peer (broker counts the "
                        "consuming and the publishing connection each)", "peer",
                        r.reconnects, PEERS, PEERS)
        yield _labelled(CounterMetricFamily, "compute_worker_events_published",
                        "events the broker confirmed, by priority", "priority",
                        r.events_published, ("error", "info"), PRIORITIES)
        family = CounterMetricFamily("compute_worker_publish_confirm_failures",
                                     "publishes the broker nacked or did not confirm within "
                                     "confirm_timeout (they are published again)")
        family.add_metric([], _read(r.confirm_failures, 0))
        yield family
        yield _labelled(GaugeMetricFamily, "compute_worker_instances",
                        "instances on this host by power state", "power_state",
                        r.power_states, POWER_STATES, POWER_STATES)


def _read(reading: Callable[[], Any], fallback: Any) -> Any:
    """A reading, or fallback when it fails: one bad reading must not fail the scrape."""
    try:
        return reading()
    except Exception:
        log.exception("metrics_reading_failed")
        return fallback


def _gauge(name: str, text: str, reading: Callable[[], int]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=_read(reading, 0))


def _labelled(kind: type[Any], name: str, text: str, label: str,
              reading: Callable[[], Mapping[str, int]], always: Iterable[str],
              allowed: Iterable[str]) -> Metric:
    """One series per allowed label value that is always shown or has a count."""
    counts = dict(_read(reading, {}))
    family = kind(name, text, labels=[label])
    allowed = tuple(allowed)
    shown = [v for v in allowed if v in always or v in counts]
    for value in shown:
        family.add_metric([value], counts.get(value, 0))
    return family  # type: ignore[no-any-return]
