"""The service: wires hypervisor, journal, publisher, dispatcher and consumer, once."""

from __future__ import annotations

import threading
from collections.abc import Callable

from worker import __version__, events, logs
from worker.config import Config
from worker.consumer import Consumer
from worker.dispatcher import Dispatcher
from worker.hypervisor import Hypervisor
from worker.journal import Journal
from worker.ordering import KeyedExecutor
from worker.paths import InstancePaths
from worker.publisher import Publisher

log = logs.get(__name__)


class Service:
    """One worker for one host: start(), then stop() or wait for a signal."""

    def __init__(self, cfg: Config, *, retry_sleep: Callable[[float], None] | None = None) -> None:
        self.cfg = cfg
        self.paths = InstancePaths(cfg.instances_path)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.hypervisor = Hypervisor(cfg.libvirt_uri, on_close=self._libvirt_closed)
        self.journal = Journal(cfg.state_dir, max_entries=cfg.journal_max_entries,
                               max_age=cfg.journal_max_age)
        self.publisher = Publisher(cfg)
        self.executor = KeyedExecutor(cfg.max_concurrent_ops)
        self.dispatcher = Dispatcher(cfg, self.hypervisor, self.journal, self.publisher,
                                     self.executor, self.paths, retry_sleep=retry_sleep)
        self.consumer = Consumer(cfg, self.dispatcher.deliver,
                                 busy=lambda: self.executor.pending > 0)
        self._consumer_thread = threading.Thread(target=self._consume, name="consumer",
                                                 daemon=True)
        self.stopped = threading.Event()

    def _consume(self) -> None:
        try:
            self.consumer.run()
        except Exception:
            log.exception("consumer_crashed")
            self.stopped.set()

    def start(self, timeout: float = 30.0) -> None:
        """Connect everything and start consuming; returns once messages are being taken."""
        log.info("worker_starting", host=self.cfg.host, uri=self.cfg.libvirt_uri,
                 version=__version__, journal_entries=len(self.journal))
        if not self.hypervisor.alive():
            log.warning("libvirt_not_reached_yet", uri=self.cfg.libvirt_uri)
        self.publisher.start()
        self._consumer_thread.start()
        if not (self.publisher.wait_connected(timeout) and self.consumer.connected.wait(timeout)):
            log.warning("broker_not_reached_yet", timeout=timeout)
        self.publish_service_status(up=True, disabled_reason=None)
        log.info("worker_started", host=self.cfg.host)

    def publish_service_status(self, *, up: bool, disabled_reason: str | None) -> None:
        """Emit service.update: up or down, and why the host is disabled if it is."""
        data = {"host": self.cfg.host, "binary": "compute-worker", "topic": self.cfg.topic,
                "up": up, "disabled": disabled_reason is not None,
                "disabled_reason": disabled_reason, "version": __version__}
        event = events.notification(
            event_type="service.update", payload_name="ServiceStatusPayload", data=data,
            publisher_id=self.cfg.event_publisher_id, topic=self.cfg.notification_topic)
        self.publisher.send(self.dispatcher.event_outgoing(event))

    def _libvirt_closed(self, reason: str) -> None:
        log.warning("libvirt_lost", reason=reason)

    def stop(self, grace: float = 30.0) -> None:
        """Stop taking messages, finish work in flight within grace, requeue the rest, close."""
        log.info("worker_stopping", in_flight=self.executor.pending, grace_s=grace)
        self.consumer.pause()
        self.dispatcher.draining = True
        finished = self.executor.wait_idle(grace)
        if not finished:
            log.warning("stop_grace_expired", still_running=self.executor.pending)
        self.consumer.stop()
        self._consumer_thread.join(10)
        self.publish_service_status(up=False, disabled_reason=None)
        self.publisher.stop()
        self.executor.shutdown()
        self.journal.close()
        self.hypervisor.close()
        self.stopped.set()
        log.info("worker_stopped", completed=self.dispatcher.completed,
                 rejected=self.dispatcher.rejected)
