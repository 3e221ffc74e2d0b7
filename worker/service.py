"""The service: wires hypervisor, journal, publisher, dispatcher and consumer, once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from handlers import network
from handlers.registry import TABLE
from worker import __version__, logs
from worker.amqp.connection import masked
from worker.amqp.consumer import Consumer
from worker.amqp.peers import AmqpPeers
from worker.amqp.publisher import Publisher
from worker.codec import signing
from worker.config import Config
from worker.core.answers import Answers
from worker.core.context import Context
from worker.core.dispatcher import Dispatcher, Lines
from worker.core.host_report import HostReport
from worker.core.journal import Journal
from worker.core.ordering import KeyedExecutor
from worker.core.peers import Arrivals
from worker.core.state_watch import StateWatch
from worker.errors import HostQueueTaken, HypervisorUnavailable, TopologyMismatch
from worker.messages import Outgoing
from worker.ops.export import Exporter
from worker.ops.metrics import Metrics, Readings
from worker.ops.systemd import Notifier, Supervision
from worker.retry import libvirt_reconnect_policy
from worker.virt.hypervisor import Hypervisor
from worker.virt.image_cache import ImageCache
from worker.virt.lifecycle import LifecycleEvent
from worker.virt.paths import InstancePaths

log = logs.get(__name__)


class Service:
    """One worker for one host: start(), then stop() or wait for a signal."""

    def __init__(self, cfg: Config, *, retry_sleep: Callable[[float], None] | None = None,
                 sync_interval: float = 60.0, debounce: float = 2.0) -> None:
        self.cfg = cfg
        self._stopping = threading.Event()
        # Waits between libvirt reconnects end at once when the worker is stopped.
        self._sleep = retry_sleep or self._rest
        self.paths = InstancePaths(cfg.instances_path)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.hypervisor = Hypervisor(cfg.libvirt_uri, on_close=self._libvirt_lost,
                                     on_lifecycle=self._lifecycle,
                                     instances_path=str(self.paths.root))
        # A signed message may be replayed within signature_max_age: its id
        # must still be known then, however many others came since.
        self.journal = Journal(cfg.state_dir, max_entries=cfg.worker.journal_max_entries,
                               max_age=cfg.worker.journal_max_age, fsync=cfg.worker.journal_fsync,
                               keep_younger_than=cfg.worker.signature_max_age
                               if cfg.worker.signing_key_file else 0.0)
        key = signing.load_key(cfg.worker.signing_key_file) if cfg.worker.signing_key_file else None
        self.publisher = Publisher(cfg, signing_key=key, on_blocked=self._broker_blocked,
                                   on_mismatch=self._topology_mismatch("broker_topology"))
        self.answers = Answers(cfg, __version__)
        self._up = False
        self.metrics = Metrics(TABLE.methods, self._readings())
        self.exporter = Exporter(self.metrics.registry, listen=cfg.worker.metrics_listen,
                                 textfile=cfg.worker.metrics_textfile,
                                 interval=cfg.worker.metrics_textfile_interval)
        # Verbs wait in their instance's line; queries run beside them, in a
        # pool of their own so that slow verbs on every line cannot hold them.
        self.executor = KeyedExecutor(cfg.max_concurrent_ops)
        self.queries = KeyedExecutor(max(2, cfg.max_concurrent_ops // 2), name="query")
        # Instances coming in by live migration: like one a verb works on, the state
        # watch leaves them alone until the move is over.
        self.arrivals = Arrivals()
        self.watch = StateWatch(cfg, self.hypervisor, self.answers, self.publisher.send,
                                self._in_hand, debounce=debounce,
                                sync_interval=sync_interval)
        self.dispatcher = Dispatcher(cfg, TABLE, self.hypervisor, self.journal, self.publisher,
                                     Lines(self.executor, self.queries), self.paths,
                                     self.answers, retry_sleep=retry_sleep,
                                     on_verb_end=self._verb_ended, signing_key=key,
                                     on_fault=self.fault,
                                     peers=AmqpPeers(cfg, signing_key=key),
                                     arrivals=self.arrivals, meter=self.metrics)
        self.consumer = Consumer(cfg, self.dispatcher.deliver, busy=self._busy,
                                 on_mismatch=self._topology_mismatch("broker_queues"))
        self.host_report = HostReport(cfg, self.hypervisor, self.answers, self.publisher.send)
        self._threads = [
            threading.Thread(target=self._consume, name="consumer", daemon=True),
            threading.Thread(target=self._guard_libvirt, name="libvirt-guard", daemon=True),
        ]
        if cfg.image_cache.manager_interval >= 0 and cfg.image_cache.remove_unused_base_images:
            self._threads.append(threading.Thread(target=self._sweep_image_cache,
                                                  name="image-cache", daemon=True))
        self._libvirt_down = threading.Event()
        self._lost_reason = ""
        # kind -> reason of every fault now lasting (libvirt lost, broker
        # blocked, journal unwritable): consuming is paused while any lasts.
        self._faults: dict[str, str] = {}
        self._faults_lock = threading.Lock()
        self.stopped = threading.Event()
        self.systemd = Supervision(Notifier(), self.systemd_state,
                                   lambda: min(self.consumer.moved_at, self.publisher.moved_at))
        self._heartbeat = threading.Thread(target=self._report_alive, name="heartbeat",
                                           daemon=True)
        self.libvirt_outages = 0
        self._started = False

    # --- wiring callbacks -------------------------------------------------------------

    def _readings(self) -> Readings:
        """What a metrics scrape reads: counts the parts keep anyway, read when asked."""
        def reconnects() -> dict[str, int]:
            opened = (self.consumer.connections, self.publisher.connections)
            return {"broker": sum(max(0, n - 1) for n in opened),
                    "libvirt": max(0, self.hypervisor.opened - 1)}
        return Readings(
            up=lambda: self._up,
            libvirt_connected=lambda: self.hypervisor.connected,
            broker_connected=lambda: self.consumer.connected.is_set() and self.publisher.connected,
            verbs_in_flight=lambda: self.executor.running + self.queries.running,
            queue_depth=lambda: self.executor.waiting,
            reconnects=reconnects,
            events_published=lambda: dict(self.publisher.events),
            confirm_failures=lambda: self.publisher.confirm_failures,
            power_states=lambda: self.watch.power_states(),
            broker_nodes=self.broker_nodes)

    def _rest(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _publish(self, out: Outgoing) -> None:
        self.publisher.send(out)

    def _busy(self) -> bool:
        return self.executor.pending > 0 or self.queries.pending > 0

    def _in_hand(self, uuid: str) -> bool:
        """A verb works on the instance, or it is arriving: its state is not news yet."""
        return self.executor.busy(uuid) or uuid in self.arrivals

    def _lifecycle(self, event: LifecycleEvent) -> None:
        # Most events are our own verbs at work; their end events say it all,
        # so drop those here rather than look at the domain again later.
        if not self._in_hand(event.uuid):
            self.watch.lifecycle(event)

    def _verb_ended(self, uuid: str, result: Any) -> None:
        self.host_report.verb_ended(uuid, result)
        if isinstance(result, dict) and "power_state" in result:
            self.watch.observed(uuid, result["power_state"])
        else:
            self.watch.schedule(uuid, "sync")  # failed verb: look at what is there now

    def _libvirt_lost(self, reason: str) -> None:
        # Called from libvirt's event thread or a verb thread: only record.
        self._lost_reason = reason
        self._libvirt_down.set()

    def _broker_blocked(self, reason: str | None) -> None:
        # On the publisher's thread, inside its frame reader: hand over, never wait.
        # Only the publishing connection is blocked: acks on the consumer's still flow.
        if reason is not None:
            log.error("broker_blocked_consuming_paused", reason=reason)
            self.fault("broker_blocked", f"broker blocked publishing: {reason}")
        else:
            log.info("broker_unblocked")
            self.fault("broker_blocked", None)

    def _topology_mismatch(self, kind: str) -> Callable[[TopologyMismatch | None], None]:
        # Queues or an exchange the broker holds with other flags, found after a
        # reconnect: nothing the worker can fix, so it stays disabled and says why.
        return lambda exc: self.fault(kind, None if exc is None else exc.message)

    def fault(self, kind: str, reason: str | None) -> None:
        """A fault of this kind began (with its reason) or ended (None).

        While any fault lasts the worker takes no messages (they wait in the
        queue) and reports itself disabled with every reason; when the last
        one ends it takes messages again and says so.
        """
        with self._faults_lock:
            before = dict(self._faults)
            if reason is None:
                self._faults.pop(kind, None)
            else:
                self._faults[kind] = reason
            now = dict(self._faults)
            if now == before:
                return
            if now:
                self.consumer.pause()
            elif not self._stopping.is_set():
                self.consumer.resume()
            log.info("service_faults_changed", faults=sorted(now), consuming=not now)
            # Under the lock: two changes close together are reported in order.
            self.publish_service_status(up=True, disabled_reason="; ".join(now.values()) or None)

    @property
    def faults(self) -> dict[str, str]:
        """The faults lasting now: kind -> reason."""
        with self._faults_lock:
            return dict(self._faults)

    @property
    def refused(self) -> HostQueueTaken | TopologyMismatch | None:
        """Why the worker cannot run at all (set on its first connection), if it cannot."""
        return self.consumer.refused or self.publisher.refused

    def systemd_state(self) -> tuple[bool, str]:
        """(consuming, what the worker is doing) for systemd's READY and STATUS."""
        if self._stopping.is_set():
            return False, "stopping"
        faults = self.faults
        if faults:
            return False, "disabled, not consuming: " + "; ".join(faults.values())
        if not (self.consumer.connected.is_set() and self.publisher.wait_connected(0)):
            return False, f"connecting to the broker at {masked(self.cfg.transport_url)}"
        if not self.consumer.consuming:
            return False, "connected, not consuming yet"
        return True, f"consuming {self.cfg.topic}.{self.cfg.host}"

    def _report_alive(self) -> None:
        """nova's service heartbeat: service.update every report_interval while running."""
        while not self._stopping.wait(self.cfg.report_interval):
            # Under the faults lock: a heartbeat never overtakes the report of a change.
            with self._faults_lock:
                if self._stopping.is_set():
                    return
                reason = "; ".join(self._faults.values()) or None
                self.publish_service_status(up=True, disabled_reason=reason)

    # --- threads ---------------------------------------------------------------------------

    def _consume(self) -> None:
        try:
            self.consumer.run()
        except Exception:
            log.exception("consumer_crashed")
            self.stopped.set()

    def _guard_libvirt(self) -> None:
        """While libvirt is away: take no messages, say so, reconnect, then say so again."""
        while not self._stopping.is_set():
            if not self._libvirt_down.wait(0.5) or self._stopping.is_set():
                continue
            self.libvirt_outages += 1
            reason = self._lost_reason or "libvirt connection lost"
            log.error("libvirt_unavailable_consuming_paused", reason=reason)
            self.fault("libvirt", f"libvirt unavailable: {reason}")
            policy = libvirt_reconnect_policy(self._sleep)
            try:
                policy(self._reconnect)
            except HypervisorUnavailable:
                continue  # only when stopping
            self._libvirt_down.clear()
            self.watch.sync_now()
            self.fault("libvirt", None)
            log.info("libvirt_reconnected", uri=self.cfg.libvirt_uri)

    def _sweep_image_cache(self) -> None:
        """nova's image cache manager: remove base images no instance has used for long."""
        options = self.cfg.image_cache
        # nova's rule: 0 runs at the default periodic interval (60 s).
        interval = options.manager_interval or 60
        cache = ImageCache(self.cfg.instances_path, self.cfg.images_path)
        while not self._stopping.wait(interval):
            try:
                swept = cache.sweep(options.remove_unused_original_minimum_age_seconds)
            except Exception as exc:  # a bad sweep must not end the thread (or the worker)
                log.error("image_cache_sweep_failed", error=str(exc)[:300])
                continue
            log.info("image_cache_swept", removed=len(swept.removed), in_use=len(swept.in_use),
                     kept_young=len(swept.too_young))

    def _reconnect(self) -> None:
        if self._stopping.is_set():
            return
        self._libvirt_down.clear()
        with self.hypervisor.guard():
            self.hypervisor.connection().getLibVersion()

    # --- start and stop --------------------------------------------------------------------

    def start(self, timeout: float = 30.0, cancel: threading.Event | None = None) -> None:
        """Connect everything and start consuming; returns once messages are being taken.

        Returns early, consuming or not, once cancel is set (a stop signal while the
        broker is away): stop() follows.
        """
        log.info("worker_starting", host=self.cfg.host, uri=self.cfg.libvirt_uri,
                 version=__version__, journal_entries=len(self.journal))
        self._up = True
        self.exporter.start()  # first: a scrape shows what start is waiting for
        if not self.hypervisor.alive():
            log.warning("libvirt_not_reached_yet", uri=self.cfg.libvirt_uri)
        else:
            self._replug_vifs()
        self.publisher.start()
        for thread in self._threads:
            thread.start()
        self.systemd.start()
        deadline = time.monotonic() + timeout
        while not (self.consumer.connected.is_set() and self.publisher.wait_connected(0)):
            refused = self.refused
            if refused is not None:
                log.error("host_queue_taken" if isinstance(refused, HostQueueTaken)
                          else "broker_topology_mismatch", reason=refused.message)
                self.abandon()
                raise refused
            if cancel is not None and cancel.is_set():
                log.warning("start_cancelled")
                return
            if time.monotonic() >= deadline:
                log.warning("broker_not_reached_yet", timeout=timeout)
                break
            self.consumer.connected.wait(0.05)
        self.publish_service_status(up=True, disabled_reason=None)
        self.watch.start()
        self.host_report.start()
        self._heartbeat.start()
        self._started = True
        log.info("worker_started", host=self.cfg.host)

    def _replug_vifs(self) -> None:
        """Make again the taps, bridges and filters recorded VIFs lost (a host reboot)."""
        try:
            made = network.replug_host(Context(self.hypervisor, self.cfg, self.paths))
        except Exception as exc:  # the worker starts anyway; power on replugs again
            log.error("vifs_not_replugged_at_start", error=str(exc)[:300])
            return
        if made:
            log.info("vifs_replugged_at_start", made=made)

    def abandon(self) -> None:
        """Undo start() without a word on the wire: the host belongs to another worker.

        A service.update from here would tell the world that the other
        worker's host went down.
        """
        self._stopping.set()
        self.systemd.stopping("refused at start")
        self.consumer.stop()
        self.publisher.stop(timeout=5)  # nothing was queued yet
        for thread in self._threads:
            thread.join(5)
        self.executor.shutdown(wait=False)
        self.queries.shutdown(wait=False)
        self.journal.close()
        self.hypervisor.close()
        self._up = False
        self.exporter.stop()
        self.stopped.set()

    def broker_nodes(self) -> dict[str, str]:
        """The broker node (host:port) each connection is on now, "" for one that is down."""
        return {"consume": self.consumer.node, "publish": self.publisher.node}

    def publish_service_status(self, *, up: bool, disabled_reason: str | None) -> None:
        """Emit service.update: up or down, and why the host is disabled if it is."""
        # nova's ServiceStatusPayload has no "up": a stopped worker says it is disabled.
        reason = disabled_reason if up else "compute-worker stopped"
        self._publish(self.answers.service_status(disabled_reason=reason,
                                                  broker=self.broker_nodes()))

    def stop(self, grace: float = 30.0) -> None:
        """Stop taking messages, finish work in flight within grace, requeue the rest, close."""
        log.info("worker_stopping", in_flight=self.executor.pending, grace_s=grace)
        self._up = False
        self._stopping.set()
        self._libvirt_down.set()  # wakes the libvirt guard, which then sees the stop
        self.systemd.stopping()
        self.consumer.pause()
        self.dispatcher.draining = True
        deadline = time.monotonic() + grace
        finished = self.executor.wait_idle(grace) and self.queries.wait_idle(
            max(0.0, deadline - time.monotonic()))
        # Finished verbs are acked when their events are confirmed; give that the rest of grace.
        settled = self.dispatcher.wait_settled(max(0.0, deadline - time.monotonic()))
        if not (finished and settled):
            log.warning("stop_grace_expired", still_running=self.executor.pending)
        # Closing the consuming channel returns every unacked message to the queue.
        self.consumer.stop()
        for thread in self._threads:
            thread.join(10)
        if self._started:  # not when a stop signal cut start() short
            self.watch.stop()
            self.host_report.stop()
            self._heartbeat.join(5)
        self.publish_service_status(up=False, disabled_reason=None)
        self.publisher.stop()
        self.executor.shutdown(wait=finished)
        self.queries.shutdown(wait=finished)
        self.journal.close()
        self.hypervisor.close()
        self.exporter.stop()  # the textfile's last write says up 0
        self.stopped.set()
        log.info("worker_stopped", completed=self.dispatcher.completed,
                 rejected=self.dispatcher.rejected)
