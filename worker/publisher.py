"""The publishing side: one thread owns a producer connection; others hand it messages."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection, Producer

from worker import envelope, logs, signing
from worker.broker import connection_for
from worker.config import Config
from worker.errors import PublishError
from worker.journal import Outgoing
from worker.retry import broker_policy
from worker.topology import control_exchange, notification_queues

log = logs.get(__name__)


@dataclass
class _Watch:
    """A call in progress: send an ``ending: false`` reply every interval."""

    reply_q: str
    msg_id: str
    interval: float
    due: float = field(default=0.0)


class Publisher:
    """Publishes with confirms on its own connection and thread; keeps messages until confirmed."""

    def __init__(self, cfg: Config, signing_key: bytes | None = None) -> None:
        self.cfg = cfg
        self._key = signing_key
        self._queue: deque[tuple[Outgoing, Future[None]]] = deque()
        self._cond = threading.Condition()
        self._watches: dict[int, _Watch] = {}
        self._watch_ids = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._connected = threading.Event()
        self.published = 0

    # --- used from any thread --------------------------------------------------

    def start(self) -> None:
        """Start the publishing thread."""
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """True once the first connection is up."""
        return self._connected.wait(timeout)

    def send(self, out: Outgoing) -> Future[None]:
        """Queue one message; the future resolves when the broker has confirmed it."""
        future: Future[None] = Future()
        with self._cond:
            self._queue.append((out, future))
            self._cond.notify()
        return future

    def watch_call(self, reply_q: str, msg_id: str, interval: float) -> int:
        """Start call-monitor heartbeats for a running call; returns a handle."""
        with self._cond:
            self._watch_ids += 1
            self._watches[self._watch_ids] = _Watch(reply_q, msg_id, interval,
                                                    time.monotonic() + interval)
            self._cond.notify()
            return self._watch_ids

    def unwatch_call(self, handle: int) -> None:
        """Stop the heartbeats of a call."""
        with self._cond:
            self._watches.pop(handle, None)

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what is queued (within timeout), then close."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # --- the publishing thread ---------------------------------------------------

    def _run(self) -> None:
        policy = broker_policy(event="publisher_reconnect_wait")
        while True:
            with self._cond:
                if self._stopping and not self._queue:
                    return
            try:
                policy(self._serve)
                return
            except Exception:  # never reached: the policy retries forever
                log.exception("publisher_gave_up")
                return

    def _serve(self) -> None:
        with connection_for(self.cfg, confirm=True) as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            exchange = control_exchange(self.cfg)
            exchange(channel).declare()
            for queue in notification_queues(self.cfg):
                queue(channel).declare()
            producer = Producer(channel, on_return=self._returned)
            self._connected.set()
            log.info("publisher_connected", url=conn.as_uri())
            while True:
                item = self._next(conn, producer)
                if item is None:
                    if self._stopping:
                        return
                    continue
                out, future = item
                try:
                    self._publish(producer, out)
                except conn.connection_errors + (socket.timeout, OSError):
                    with self._cond:  # not confirmed: keep it, first in line
                        self._queue.appendleft(item)
                    raise
                except Exception as exc:  # a refusal that a retry would not fix
                    log.error("publish_refused", routing_key=out.routing_key, error=str(exc))
                    future.set_exception(PublishError(str(exc)))
                    continue
                self.published += 1
                future.set_result(None)

    def _next(self, conn: Connection,
              producer: Producer) -> tuple[Outgoing, Future[None]] | None:
        with self._cond:
            if not self._queue and not self._stopping:
                self._cond.wait(self._idle_wait())
            item = self._queue.popleft() if self._queue else None
            due = self._due_watches()
        for watch in due:
            self._heartbeat(producer, watch)
        if item is None:
            self._keep_alive(conn)
        return item

    def _idle_wait(self) -> float:
        wait = 1.0
        now = time.monotonic()
        for watch in self._watches.values():
            wait = min(wait, max(0.0, watch.due - now))
        return wait

    def _due_watches(self) -> list[_Watch]:
        now = time.monotonic()
        due = []
        for watch in self._watches.values():
            if watch.due <= now:
                watch.due = now + watch.interval
                due.append(watch)
        return due

    def _heartbeat(self, producer: Producer, watch: _Watch) -> None:
        body = envelope.reply(watch.msg_id, ending=False)
        self._publish(producer, Outgoing("", watch.reply_q, body, True))

    def _keep_alive(self, conn: Connection) -> None:
        # Read what the broker sent (heartbeats, returns) so heartbeat_check
        # does not take our own silence for the broker's.
        if conn.transport.driver_type == "memory":
            return
        try:
            conn.drain_events(timeout=0.001)
        except TimeoutError:
            pass
        conn.heartbeat_check()

    def _publish(self, producer: Producer, out: Outgoing) -> None:
        headers = {signing.HEADER: signing.sign(self._key, out.body)} if self._key else None
        producer.publish(
            out.body, exchange=out.exchange, routing_key=out.routing_key,
            content_type="application/json", content_encoding="utf-8",
            delivery_mode=2, mandatory=out.mandatory, retry=False, headers=headers,
            confirm_timeout=self.cfg.confirm_timeout,
        )

    def _returned(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        log.warning("message_returned", exchange=exchange, routing_key=routing_key,
                    reason=str(exc)[:200])
