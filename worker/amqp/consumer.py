"""The consuming side: one thread owns the consuming connection, its acks and heartbeats."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from amqp.exceptions import AccessRefused, NotFound
from kombu import Consumer as KombuConsumer
from kombu import Message

from worker import logs
from worker.amqp.connection import Nodes, first_node, node_urls, open_node
from worker.amqp.declare import MISMATCH_RECHECK, declare
from worker.amqp.topology import ConsumedQueue, declared_only, rpc_queues
from worker.amqp.waker import Waker
from worker.amqp.wire import Owed, Wire, wire_for
from worker.config import Config
from worker.errors import HostQueueTaken, TopologyMismatch
from worker.messages import Delivery, Settlement
from worker.retry import reconnecting

log = logs.get(__name__)
#: Seconds to keep declaring a fanout queue whose old node is still stopping (404).
STUCK_QUEUE_WAIT = 5.0
#: Told what clashes with the broker's queues (None once declarations work again).
OnMismatch = Callable[[TopologyMismatch | None], None]


class Consumer:
    """Consumes the RPC queues; settles only on its own thread, never across a reconnect."""

    def __init__(self, cfg: Config, on_delivery: Callable[[Delivery], None],
                 busy: Callable[[], bool], on_mismatch: OnMismatch | None = None) -> None:
        self.cfg = cfg
        self._on_mismatch = on_mismatch
        self._mismatch: TopologyMismatch | None = None
        self._on_delivery = on_delivery
        self._busy = busy
        self._settlements: queue.SimpleQueue[tuple[int, Message, Settlement]] = queue.SimpleQueue()
        self._generation = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._consumer: KombuConsumer | None = None
        self._waker = Waker()
        self._nodes = Nodes(node_urls(cfg.transport_url), lambda url: open_node(cfg, url),
                            name="consumer", start=first_node(cfg.transport_url, cfg.host))
        self.fanout_unique = uuid.uuid4().hex
        self.connected = threading.Event()
        #: True while the broker delivers to us (connected, and not paused).
        self.consuming = False
        #: Set when the first connection found another worker on this host's queue, or
        #: queues the broker holds with other flags: the worker cannot start.
        self.refused: HostQueueTaken | TopologyMismatch | None = None
        #: Monotonic time the loop last went round (or rested): the watchdog reads it.
        self.moved_at = time.monotonic()
        self._ever_consumed = False
        self._ever_declared = False
        self._host_queue_name = ""
        #: Queues the broker cancelled our consumer of (filled while frames are read).
        self._cancelled: list[str] = []
        #: Times the broker cancelled a consumer and the worker subscribed again in place.
        self.resubscribed = 0
        self.received = 0
        #: Connections opened (the first one and every reconnect).
        self.connections = 0

    @property
    def node(self) -> str:
        """The broker node (``host:port``) this connection is on; "" while it is down."""
        return self._nodes.address if self.connected.is_set() else ""

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
            reconnecting(self._nodes.open, self._serve, name="consumer",
                         stopping=self._stop.is_set, sleep=self._rest)
        finally:
            self._waker.close()

    def _rest(self, seconds: float) -> None:
        """Sleep between reconnects: cut short by stop(), and still a moving loop."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            self.moved_at = time.monotonic()
            left = deadline - self.moved_at
            if left <= 0:
                return
            self._stop.wait(min(left, 0.5))

    def _serve(self, conn: Any) -> None:
        wire = wire_for(conn, self._waker, fast_path=self.cfg.rabbit.fast_path)
        try:
            channel, queues = self._declared(conn)
        except TopologyMismatch as exc:
            self._mismatched(exc)
            return
        self._ever_declared = True
        if self._mismatch is not None:
            self._mismatch = None
            log.info("broker_queues_match_again")
            if self._on_mismatch is not None:
                self._on_mismatch(None)
        # on_message gets the raw message: we decode it ourselves, so an
        # undecodable body is answered and rejected, not silently dropped.
        consumer = KombuConsumer(channel, queues, on_message=self._received, no_ack=False)
        self._generation += 1
        consuming = not self._paused.is_set()
        if consuming:
            self._consume(consumer)
        self.connected.set()
        self.connections += 1
        log.info("consumer_connected", url=self._nodes.current, node=self._nodes.address,
                 queues=[q.name for q in queues], prefetch=self.cfg.rabbit.prefetch_count,
                 wire=type(wire).__name__)
        try:
            self._loop(wire, consumer, consuming, {q.name: q for q in queues})
        finally:
            self.consuming = False
            self.connected.clear()

    def _declared(self, conn: Any) -> tuple[Any, list[ConsumedQueue]]:
        """A channel with its prefetch set and every queue declared; the queues, bound to it.

        A 404 on our own transient fanout queue means its node is going (``process is
        stopped by supervisor``: we reached another node while the last one stopped, and
        its queue record is not gone yet). That passes within a second or two, so it is
        declared again on a fresh channel (the 404 closed the old one) instead of costing
        a reconnect and its backoff.
        """
        deadline = time.monotonic() + STUCK_QUEUE_WAIT
        while True:
            channel = conn.channel()
            # global False: the prefetch is per consumer, which is all quorum queues take
            # (RabbitMQ refuses them a channel-wide QoS).
            channel.basic_qos(0, self.cfg.rabbit.prefetch_count, False)
            queues = [q(channel) for q in rpc_queues(self.cfg, self.fanout_unique)]
            self._host_queue_name = queues[0].name
            self._cancelled.clear()  # a cancel on the last connection is that one's
            for q in queues:
                q.on_cancelled = self._cancelled.append
            try:
                declare([extra(channel) for extra in declared_only(self.cfg)] + queues)
                return channel, queues
            except NotFound as exc:
                if self.fanout_unique not in str(exc) or time.monotonic() > deadline:
                    raise
                log.info("fanout_queue_on_a_stopping_node_declaring_again",
                         reason=str(exc)[:200])
                self._stop.wait(0.2)

    def _mismatched(self, exc: TopologyMismatch) -> None:
        """A queue clashes with the broker's: fatal at start; later, disabled until it matches."""
        if not self._ever_declared:
            self.refused = exc
            self._stop.set()
            return
        if self._mismatch is None or self._mismatch.message != exc.message:
            log.error("broker_queue_mismatch", reason=exc.message,
                      recheck_s=MISMATCH_RECHECK)
            if self._on_mismatch is not None:
                self._on_mismatch(exc)
        self._mismatch = exc
        # No reconnect a second: asking again cannot help until someone acts.
        self._rest(MISMATCH_RECHECK)

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
        self.consuming = True
        log.info("consuming")

    def _loop(self, wire: Wire, consumer: KombuConsumer, consuming: bool,
              queues: dict[str, ConsumedQueue]) -> None:
        while not self._stop.is_set():
            self.moved_at = time.monotonic()
            wanted = not self._paused.is_set()
            if wanted != consuming:
                wire.release()  # py-amqp reads the consume-ok/cancel-ok itself
                if wanted:
                    self._consume(consumer)
                else:
                    consumer.cancel()
                    self.consuming = False
                    log.warning("consuming_paused")
            consuming = wanted
            # Until the broker sends something or a verb thread has a settlement
            # for us, so acks go out at once; a wire that cannot see the waker
            # (TLS, kombu's path) polls, briefly while work is in flight.
            wire.wait(1.0, poll=0.002 if self._busy() else 0.5)
            self._settle_owed(wire)
            if self._cancelled:
                self._resubscribe(wire, consumer, queues, consuming)
            wire.heartbeat()
        self._settle_owed(wire)

    def _resubscribe(self, wire: Wire, consumer: KombuConsumer,
                     queues: dict[str, ConsumedQueue], consuming: bool) -> None:
        """The broker cancelled our consumer of some queues: declare them, consume them again.

        On the same channel, so the deliveries of the other queues keep their settlements
        (a reconnect would drop them all to be redelivered). A deleted queue comes back
        empty with its binding; a quorum queue's new leader serves it as before. What fails
        here (a 406 because someone declared it otherwise, its node still gone) costs the
        connection, and the reconnect declares everything again and says what clashes.
        """
        names = list(dict.fromkeys(self._cancelled))
        self._cancelled.clear()
        wire.release()  # py-amqp reads the declare-ok and consume-ok itself
        for name in names:
            log.warning("consumer_cancelled_by_broker", queue=name)
            consumer.cancel_by_queue(name)  # kombu forgets the tag the broker dropped
        declare([queues[name] for name in names])
        for name in names:
            consumer.add_queue(queues[name])
        if consuming:
            self._consume(consumer)  # only the queues without a consumer tag
        self.resubscribed += len(names)
        log.info("consumer_resubscribed", queues=names, consuming=consuming)

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

    def _settle_owed(self, wire: Wire) -> None:
        """Carry out the settlements verb threads recorded, as one write where the wire can."""
        owed: list[Owed] = []
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
            owed.append((message, action))
        if owed:
            wire.settle(owed)
