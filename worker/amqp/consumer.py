"""The consuming side: one thread owns the consuming connection, its acks and heartbeats."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from amqp.exceptions import AccessRefused
from kombu import Consumer as KombuConsumer
from kombu import Message

from worker import logs
from worker.amqp import frames as amqp_wire
from worker.amqp.connection import Waker, open_connection, socket_of
from worker.amqp.frames import FrameReader
from worker.amqp.topology import declared_only, rpc_queues
from worker.config import Config
from worker.errors import HostQueueTaken
from worker.messages import Delivery, Settlement
from worker.retry import reconnecting

log = logs.get(__name__)


class Consumer:
    """Consumes the RPC queues; settles only on its own thread, never across a reconnect."""

    def __init__(self, cfg: Config, on_delivery: Callable[[Delivery], None],
                 busy: Callable[[], bool]) -> None:
        self.cfg = cfg
        self._on_delivery = on_delivery
        self._busy = busy
        self._settlements: queue.SimpleQueue[tuple[int, Message, Settlement]] = queue.SimpleQueue()
        self._generation = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._consumer: KombuConsumer | None = None
        self._waker = Waker()
        self.fanout_unique = uuid.uuid4().hex
        self.connected = threading.Event()
        #: Set when the first connection found another worker on this host's queue.
        self.refused: HostQueueTaken | None = None
        self._ever_consumed = False
        self._host_queue_name = ""
        self.received = 0

    def stop(self) -> None:
        """Ask the loop to stop consuming and return."""
        self._stop.set()
        self._waker.wake()

    def pause(self) -> None:
        """Stop taking new messages (they wait in the queue) until resume()."""
        self._paused.set()
        self._waker.wake()

    def resume(self) -> None:
        """Take messages again after pause()."""
        self._paused.clear()
        self._waker.wake()

    def run(self) -> None:
        """Consume until stop(), reconnecting with backoff when the broker goes away."""
        try:
            reconnecting(lambda: open_connection(self.cfg), self._serve, name="consumer",
                         stopping=self._stop.is_set)
        finally:
            self._waker.close()


    def _serve(self, conn: Any) -> None:
        channel = conn.channel()
        channel.basic_qos(0, self.cfg.rabbit.prefetch_count, False)
        for extra in declared_only(self.cfg):
            extra(channel).declare()
        queues = [q(channel) for q in rpc_queues(self.cfg, self.fanout_unique)]
        self._host_queue_name = queues[0].name
        for q in queues:
            q.declare()
        # on_message gets the raw message: we decode it ourselves, so an
        # undecodable body is answered and rejected, not silently dropped.
        consumer = KombuConsumer(channel, queues, on_message=self._received, no_ack=False)
        self._generation += 1
        consuming = not self._paused.is_set()
        if consuming:
            self._consume(consumer)
        self.connected.set()
        log.info("consumer_connected", url=conn.as_uri(), queues=[q.name for q in queues],
                 prefetch=self.cfg.rabbit.prefetch_count)
        try:
            self._loop(conn, consumer, consuming)
        finally:
            self.connected.clear()

    def _consume(self, consumer: KombuConsumer) -> None:
        """Start consuming; HostQueueTaken when another worker holds this host's queue."""
        try:
            consumer.consume()
        except AccessRefused as exc:
            taken = HostQueueTaken(
                f"another worker already consumes {self._host_queue_name} (host "
                f"{self.cfg.host!r}): "
                "give each worker its own host, or stop the other one")
            if not self._ever_consumed:
                # At start it is a mistake to report, not an outage to ride out.
                self.refused = taken
                self._stop.set()
            else:
                # After a reconnect the broker may still hold our own consumer
                # from the dead connection until its heartbeat times out.
                log.warning("host_queue_taken_retrying", reason=str(exc)[:200])
            raise taken from None
        self._ever_consumed = True
        log.info("consuming")

    def _loop(self, conn: Any, consumer: KombuConsumer, consuming: bool) -> None:
        sock = socket_of(conn)
        # Plain TCP: read in batches and write acks in batches (worker.amqp.frames).
        reader = FrameReader(conn.connection, sock) if sock is not None else None
        next_heartbeat = time.monotonic()
        while not self._stop.is_set():
            wanted = not self._paused.is_set()
            if wanted != consuming:
                if reader is not None:
                    reader.release()  # py-amqp reads the consume-ok/cancel-ok itself
                if wanted:
                    self._consume(consumer)
                else:
                    consumer.cancel()
                    log.warning("consuming_paused")
            consuming = wanted
            if reader is not None and sock is not None:
                # Sleep until the broker sends something or a verb thread has a
                # settlement for us: acks go out at once, and idle costs nothing.
                if self._waker.wait(sock, 1.0):
                    reader.pump()
            else:  # TLS or in-memory: poll, briefly while work is in flight
                try:
                    conn.drain_events(timeout=0.002 if self._busy() else 0.5)
                except TimeoutError:
                    pass
            self._settle_owed(conn, reader is not None)
            if time.monotonic() >= next_heartbeat and conn.transport.driver_type == "amqp":
                conn.heartbeat_check()
                next_heartbeat = time.monotonic() + 1.0
        self._settle_owed(conn, reader is not None)

    def _received(self, message: Message) -> None:
        self.received += 1
        generation = self._generation
        once = threading.Lock()

        def settle(action: Settlement) -> None:
            # A second settlement of one delivery would close the channel (406
            # unknown delivery tag), taking every other unacked message with it.
            if not once.acquire(blocking=False):
                log.error("settlement_repeated_ignored", action=action)
                return
            self._settlements.put((generation, message, action))
            self._waker.wake()

        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        info = message.delivery_info
        self._on_delivery(Delivery(body, bool(info.get("redelivered")), settle,
                                   dict(message.headers or {}), str(info.get("exchange") or ""),
                                   str(info.get("routing_key") or "")))

    def _settle_owed(self, conn: Any, batched: bool) -> None:
        """Carry out the settlements verb threads recorded, as one write where possible."""
        frames: list[bytes] = []
        while True:
            try:
                generation, message, action = self._settlements.get_nowait()
            except queue.Empty:
                break
            if generation != self._generation:
                # Its channel is gone: the broker will redeliver it, and the
                # journal absorbs that redelivery. Acking now would 406.
                log.info("settlement_dropped_stale_channel", action=action)
                continue
            if not batched:
                if action == "ack":
                    message.ack()
                elif action == "reject":
                    message.reject(requeue=False)
                else:
                    message.requeue()
                continue
            channel, tag = message.channel.channel_id, message.delivery_tag
            frames.append(amqp_wire.ack(channel, tag) if action == "ack"
                          else amqp_wire.reject(channel, tag, requeue=action == "requeue"))
        if frames:
            amqp_wire.write(conn.connection, b"".join(frames))
