"""One fault scenario: private names, tap, caster, worker subprocess, load; then the checks."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from kombu import Connection

from tests.brokers import queue_counts, tail, wait_until
from tests.domains import Vm
from tests.faults.support import (
    FIGURES,
    Cast,
    Caster,
    Figures,
    Load,
    Outcome,
    ResilientTap,
    WorkerProcess,
    alarms,
    all_answered,
    analyse,
    completions,
    config_values,
    describe_errors,
    fill_figures,
    last_targets,
    load_config,
    order_violations,
    plan_casts,
    vm_states,
    worker_argv,
)
from worker.amqp.topology import alt_host_queue, host_queue, notification_queues


class Broker(Protocol):
    """A broker of the test's own (a PrivateBroker, a BrokerCluster): its queues' counts."""

    def queue_counts(self, name: str) -> tuple[int, int] | None:
        """(ready, unacked) of a queue; None if it does not exist."""


class Scenario:
    """Everything one scenario runs, torn down on exit even when a check failed."""

    def __init__(self, name: str, *, url: str, durable: bool, quorum: bool, tmp: Path,
                 vms: list[Vm], count: int, rate: float, broker: Broker | None = None,
                 event_queues: bool = False, figures: list[Figures] | None = None,
                 **options: Any) -> None:
        """broker: the test's own, left as it is at the end (else the shared broker, whose
        queues and exchange the scenario deletes); event_queues: the tap reads the worker's
        own event queues rather than one of its own; figures: where this scenario's go
        (FIGURES, the faults tier's table, by default). options override the worker's."""
        self.name = name
        self.url = url
        self.durable = durable
        self.broker = broker
        self.tmp = tmp
        self.vms = vms
        tag = f"{name[:12]}-{uuid.uuid4().hex[:8]}"
        self.values = config_values(url=url, tmp=tmp, tag=tag, durable=durable, quorum=quorum,
                                    **options)
        self.cfg = load_config(self.values)
        self.plan: list[Cast] = plan_casts(vms, count, self.cfg.event_publisher_id)
        self.rate = rate
        self.figures = Figures(name)
        (FIGURES if figures is None else figures).append(self.figures)
        self.event_queues = event_queues
        self.began = time.monotonic()
        self.tap: ResilientTap | None = None
        self.caster: Caster | None = None
        self.load: Load | None = None
        self.worker = WorkerProcess(worker_argv(self.values), tmp)
        self.stop_code: int | None = None
        self.finished = False

    # --- set up and tear down ---------------------------------------------------------------

    def __enter__(self) -> Scenario:
        try:
            # The host queue exists before the first cast, so none is unroutable.
            with Connection(self.url, connect_timeout=5) as conn:
                conn.ensure_connection(max_retries=3, timeout=5)
                host_queue(self.cfg)(conn.channel()).declare()
            self.tap = ResilientTap(self.url, self.cfg.control_exchange,
                                    self.cfg.notifications.notification_topic, durable=self.durable,
                                    queues=notification_queues(self.cfg) if self.event_queues
                                    else None)
            self.caster = Caster(self.url, self.cfg.control_exchange,
                                 f"{self.cfg.topic}.{self.cfg.host}", durable=self.durable)
            self.worker.start()
            self.load = Load(self.caster, self.plan, self.rate)
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not self.finished and self.load is not None:
            # Failed before the end: keep what is known for the printed figures.
            self.figures.casts_sent = self.load.sent
            self.figures.publish_retries = self.caster.retries if self.caster else 0
            self.figures.elapsed = time.monotonic() - self.began
            self.figures.notes.append(f"aborted: {str(exc).splitlines()[0][:200]}")
        self._teardown()

    def _teardown(self) -> None:
        if self.load is not None:
            self.load.abort()
        self.worker.close()
        if self.tap is not None:
            self.tap.close()
        if self.caster is not None:
            self.caster.close()
        if self.broker is None:
            self._delete_topology()

    def _delete_topology(self) -> None:
        """On the shared broker: delete the queues and the exchange this scenario made."""
        names = [host_queue(self.cfg).name, alt_host_queue(self.cfg).name] + [
            q.name for q in notification_queues(self.cfg)]
        for record in self.worker.records():
            if record.get("event") == "consumer_connected":
                names += [q for q in record.get("queues", []) if q.startswith(
                    f"{self.cfg.topic}_fanout_")]
        with contextlib.suppress(Exception), Connection(self.url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
            channel = conn.channel()
            for name in dict.fromkeys(names):
                with contextlib.suppress(Exception):
                    channel.queue_delete(name)
            channel.exchange_delete(self.cfg.control_exchange)

    # --- the run --------------------------------------------------------------------------------

    def start_load(self) -> Load:
        """Start casting; the load."""
        assert self.load is not None
        self.load.start()
        return self.load

    def queue_state(self) -> tuple[int, int] | None:
        """(ready, unacked) of the host queue."""
        name = host_queue(self.cfg).name
        if self.broker is not None:
            return self.broker.queue_counts(name)
        return queue_counts(name)

    def tap_diagnosis(self) -> str:
        """How the tap is doing, for a failure message."""
        assert self.tap is not None
        try:
            counts = (self.broker.queue_counts(self.tap.queue.name) if self.broker
                      else queue_counts(self.tap.queue.name))
        except AssertionError as exc:
            counts = str(exc)  # type: ignore[assignment]
        kinds = Counter(r.event.get("event_type") for r in self.tap.snapshot())
        return (f"tap: {len(self.tap.records)} events {dict(kinds)}, reconnects "
                f"{self.tap.reconnects} {dict(self.tap.errors)}, thread alive "
                f"{self.tap.alive}, its queue (ready, unacked) {counts}")

    def finish(self, timeout: float = 90.0) -> Outcome:
        """Wait for the last cast, every answer and an empty host queue; the outcome.

        The figures are filled in before anything is asserted, so they print even when a
        check fails.
        """
        assert self.load is not None and self.tap is not None and self.caster is not None
        problems: list[str] = []
        try:
            self.load.join(timeout)
        except AssertionError as exc:
            problems.append(str(exc))
        if not self.tap.wait_for(all_answered(self.plan[: self.load.sent]), timeout):
            problems.append(f"not every cast was answered within {timeout:.0f}s "
                            f"({self.tap_diagnosis()})")
        try:
            wait_until(lambda: self.queue_state() == (0, 0), 30, "the host queue to be empty "
                       "(nothing ready, nothing unacknowledged)", 0.5)
        except AssertionError as exc:
            problems.append(f"{exc}; last seen (ready, unacked) = {self.queue_state()}")
        time.sleep(1.0)  # anything still moving would show in the states below
        self.states = vm_states(self.vms)
        outcome = analyse(self.plan[: self.load.sent], self.tap.snapshot())
        self.stop_code = self.worker.terminate(45)
        fill_figures(self.figures, self.load, self.caster, outcome, self.worker.records(),
                     self.began)
        if outcome.errors:
            self.figures.notes.append(f"{self.name}: {len(outcome.errors)} error events: "
                                      f"{describe_errors(outcome)}")
        self.problems = problems
        self.finished = True
        return outcome

    # --- the checks every scenario makes ------------------------------------------------------

    def logs_hint(self) -> str:
        """Where to look."""
        return f"worker logs: {', '.join(str(p) for p in self.worker.logs)}"

    def check(self, outcome: Outcome) -> None:
        """Every cast answered, events valid and matched, states right, effects once, in order.

        Every check runs; one AssertionError lists all that failed.
        """
        assert self.load is not None
        failures: list[str] = list(self.problems)
        if self.load.sent != len(self.plan):
            failures.append(f"only {self.load.sent} of {len(self.plan)} casts were confirmed")
        if outcome.missing:
            failures.append(f"{len(outcome.missing)} casts never answered by an end or error "
                            "event: " + "; ".join(f"#{c.index} {c.action} {c.vm.name} "
                                                  f"uid={c.unique_id}"
                                                  for c in outcome.missing[:5]))
        if outcome.invalid:
            failures.append(f"{len(outcome.invalid)} events fail their schema: "
                            f"{outcome.invalid[:3]}")
        if outcome.strays:
            failures.append(f"{len(outcome.strays)} end/error events do not match their cast's "
                            f"message_id: {outcome.strays[:3]}")
        targets = last_targets(self.plan)
        for vm in self.vms:
            state = self.states.get(vm.uuid)
            if state is None or state.power != targets[vm.uuid] or state.transitional:
                failures.append(f"{vm.name}: last cast asked for {targets[vm.uuid]}, libvirt "
                                f"says {state}")
        records = self.worker.records()
        done = completions(records)
        twice = {uid: n for uid, n in Counter(done).items() if n > 1}
        if twice:
            failures.append(f"{len(twice)} verbs completed more than once: {twice}")
        order = order_violations(self.plan, done)
        if order:
            failures.append(f"per-instance order broken {len(order)} times: {order[:4]}")
        crashes = [(r.get("event"), r.get("error"), r.get("reason")) for r in alarms(records)]
        if crashes:
            failures.append(f"worker reported {len(crashes)} crashes: {crashes[:3]}")
        if self.stop_code != 0:
            last = self.worker.logs[-1]
            failures.append(f"SIGTERM did not stop the worker cleanly (exit {self.stop_code}); "
                            f"{last}:\n{tail(last)}")
        assert not failures, "\n".join(failures + [self.logs_hint()])
