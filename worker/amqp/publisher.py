"""The publishing side: one thread owns a producer connection; others hand it messages.

Confirms are pipelined: the thread publishes whatever is queued, then reads
the broker's acks (which may cover many messages at once) instead of waiting
for each message in turn. A message's future resolves only on its ack; what is
unconfirmed when the connection drops is published again on the next one.

While the broker blocks the connection (RabbitMQ's connection.blocked, sent
when a resource alarm stops it taking publishes) the thread writes no
publishes: they wait in the queue, in order, and the time does not count
against the confirm timeout. It keeps reading, so it sees the unblock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from kombu import Connection

from worker import logs
from worker.amqp.calls import CallWatches, Returns, reply_msg_id
from worker.amqp.confirms import Block, Item, Unconfirmed, complete
from worker.amqp.connection import Nodes, first_node, node_urls, open_node
from worker.amqp.declare import MISMATCH_RECHECK, declare
from worker.amqp.topology import control_exchange, notification_queues
from worker.amqp.waker import Waker
from worker.amqp.wire import Publish, Wire, wire_for
from worker.codec import envelope, signing
from worker.config import Config
from worker.errors import TopologyMismatch
from worker.messages import Held, Outgoing
from worker.retry import reconnecting

log = logs.get(__name__)
#: Told the broker's reason when it blocks publishing, None when it unblocks.
OnBlocked = Callable[[str | None], None]
#: Told what clashes with the broker's exchange or queues (None once they match again).
OnMismatch = Callable[[TopologyMismatch | None], None]
# Publish at most this many before reading acks, so acks never pile up unread.
BATCH = 256
# While messages are being held (a verb ran in the last RECENT seconds), the
# thread sleeps at most HOLD_POLL at a time, so hold() needs no wake-up.
HOLD_POLL = 0.05
RECENT = 2.0
class Publisher:
    """Publishes with pipelined confirms on its own connection and thread."""

    def __init__(self, cfg: Config, signing_key: bytes | None = None,
                 on_blocked: OnBlocked | None = None,
                 on_mismatch: OnMismatch | None = None) -> None:
        """on_blocked and on_mismatch are called on the publishing thread and must not block."""
        self.cfg = cfg
        self._on_mismatch = on_mismatch
        self._mismatch: TopologyMismatch | None = None
        self._ever_declared = False
        self._recheck_at = 0.0
        #: Set when the first connection found our exchange or event queues on the broker
        #: with other flags: the worker cannot start.
        self.refused: TopologyMismatch | None = None
        #: Monotonic time the loop last went round (or rested): the watchdog reads it.
        self.moved_at = time.monotonic()
        self._stop_event = threading.Event()
        self._key = signing_key
        self._on_blocked = on_blocked
        self._block = Block()
        self._queue: deque[Item] = deque()
        self._lock = threading.Lock()
        self._waker = Waker()
        self._nodes = Nodes(node_urls(cfg.transport_url), self._connect, name="publisher",
                            start=first_node(cfg.transport_url, cfg.host, role=1))
        self._calls = CallWatches()
        self._returns = Returns()
        self._stopping = False
        self._held: deque[Held] = deque()  # deadlines in order: every hold is the same length
        self._last_hold = -RECENT
        self._sleeping_until = 0.0  # when this thread's current wait ends; 0 when awake
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._connected = threading.Event()
        self.published = 0
        # Counted on this thread only, read from any (metrics): no lock needed.
        self._events_prefix = cfg.notifications.notification_topic + "."
        #: Events the broker confirmed, by priority (info, error).
        self.events: dict[str, int] = {}
        #: Publishes the broker nacked, or did not confirm within confirm_timeout.
        self.confirm_failures = 0
        #: Connections opened (the first one and every reconnect).
        self.connections = 0
        self._up = False

    # --- used from any thread --------------------------------------------------

    def start(self) -> None:
        """Start the publishing thread."""
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """True once the first connection is up."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        """True while a connection is up (False between a loss and the reconnect)."""
        return self._up

    @property
    def node(self) -> str:
        """The broker node (``host:port``) this connection is on; "" while it is down."""
        return self._nodes.address if self._up else ""

    def send(self, out: Outgoing) -> Future[None]:
        """Queue one message; the future resolves when the broker has confirmed it."""
        future: Future[None] = Future()
        with self._lock:
            self._queue.append((out, future))
        self._waker.wake()
        return future

    def hold(self, out: Outgoing, seconds: float) -> Held:
        """Publish out within seconds, or sooner with the next release() or send() of it.

        For a verb's start event: a verb that ends within the hold sends its
        start and end events in one write (one wake of this thread, one
        confirm read) instead of two; a slow verb's start event still goes
        out within seconds. The hold never needs a wake-up of its own while
        this thread is active, because it then sleeps at most HOLD_POLL.
        """
        held = Held(out, time.monotonic() + seconds)
        with self._lock:
            self._held.append(held)
            self._last_hold = held.deadline
            wake = self._sleeping_until > held.deadline
        if wake:
            self._waker.wake()
        return held

    def release(self, held: Held) -> Future[None]:
        """Queue a held message now (no-op if its time already came); its future."""
        with self._lock:
            if not held.released:
                held.released = True
                self._queue.append((held.out, held.future))
        return held.future

    def watch_call(self, reply_q: str, msg_id: str, interval: float) -> int:
        """Start call-monitor heartbeats for a running call (at most two a second); a handle."""
        with self._lock:
            handle = self._calls.add(reply_q, msg_id, interval, time.monotonic())
        self._waker.wake()
        return handle

    def unwatch_call(self, handle: int) -> None:
        """Stop the heartbeats of a call."""
        with self._lock:
            self._calls.remove(handle)

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what is queued (within timeout), then close."""
        with self._lock:
            self._stopping = True
        self._stop_event.set()
        self._waker.wake()
        self._thread.join(timeout)

    # --- the publishing thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            # Stopping while the broker is away, what is queued is given up: the
            # messages it answers are not acked, so they come back to the next worker.
            reconnecting(self._nodes.open, self._serve, name="publisher",
                         stopping=lambda: self._stopping or self.refused is not None,
                         sleep=self._rest)
        finally:
            self._waker.close()

    def _rest(self, seconds: float) -> None:
        """Sleep between reconnects: cut short by stop(), and still a moving loop."""
        deadline = time.monotonic() + seconds
        while not self._stop_event.is_set():
            self.moved_at = time.monotonic()
            left = deadline - self.moved_at
            if left <= 0:
                return
            self._stop_event.wait(min(left, 0.5))

    def _connect(self, url: str) -> Connection:
        return open_node(self.cfg, url, on_blocked=self._blocked, on_unblocked=self._unblocked)

    def _blocked(self, reason: str) -> None:
        # From py-amqp, on this thread, while it reads a frame (never under self._lock).
        if self._block.begin(reason):
            self._tell(reason)

    def _unblocked(self) -> None:
        if self._block.end():
            self._tell(None)

    def _tell(self, reason: str | None) -> None:
        if self._on_blocked is None:
            return
        try:
            self._on_blocked(reason)
        except Exception:  # a bug there must not cost this connection
            log.exception("broker_blocked_callback_crashed")

    def _serve(self, conn: Connection) -> None:
        """One connection's life; reconnecting() opens and closes the connection."""
        # A block is the last connection's (kept while it was being released);
        # the broker blocks this one only when it publishes under an alarm.
        self._unblocked()
        wire = wire_for(conn, self._waker, fast_path=self.cfg.rabbit.fast_path)
        channel = self._declared(conn)
        if channel is None:
            return
        unconfirmed = Unconfirmed(self._tally)
        publish = wire.publishing(
            channel, lambda tag, multiple, nacked: unconfirmed.nack(tag, multiple) if nacked
            else unconfirmed.settle(tag, multiple, None), self._returned)
        self._connected.set()
        self.connections += 1
        self._up = True
        log.info("publisher_connected", url=self._nodes.current, node=self._nodes.address,
                 confirms=wire.confirms,
                 wire=type(wire).__name__)
        try:
            self._pump(wire, publish, unconfirmed if wire.confirms else None)
        except BaseException:
            # Not confirmed on this connection: first in line on the next one,
            # and out of this one's table, so a late ack cannot complete them too.
            with self._lock:
                self._queue.extendleft(reversed(unconfirmed.take_all()))
            raise
        finally:
            self._up = False

    def _tally(self, out: Outgoing, error: str | None) -> None:
        """Count one settled publish: an event by its priority, or a failed confirm."""
        if error is not None:
            self.confirm_failures += 1
        elif out.exchange == self.cfg.control_exchange and out.routing_key.startswith(
                self._events_prefix):
            priority = out.routing_key[len(self._events_prefix):]
            self.events[priority] = self.events.get(priority, 0) + 1

    def _declared(self, conn: Connection) -> Any:
        """A channel with our exchange and event queues declared; None when the worker
        cannot start because the broker holds them with other flags.

        Later (after a reconnect) a clash is reported, and the channel serves without
        declaring: the exchange is there, so the service.update that says the host is
        disabled, and why, still goes out.
        """
        channel = conn.channel()
        try:
            declare([control_exchange(self.cfg)(channel)]
                    + [queue(channel) for queue in notification_queues(self.cfg)])
        except TopologyMismatch as exc:
            if not self._ever_declared:
                self.refused = exc
                return None
            if self._mismatch is None or self._mismatch.message != exc.message:
                log.error("broker_topology_mismatch", reason=exc.message,
                          recheck_s=MISMATCH_RECHECK)
                self._mismatch = exc
                if self._on_mismatch is not None:
                    self._on_mismatch(exc)
            self._recheck_at = time.monotonic() + MISMATCH_RECHECK
            return conn.channel()  # the refusal closed the first one
        self._ever_declared = True
        if self._mismatch is not None:
            self._mismatch = None
            log.info("broker_topology_matches_again")
            if self._on_mismatch is not None:
                self._on_mismatch(None)
        return channel

    def _headers(self, out: Outgoing) -> dict[str, Any] | None:
        if self._key is None:
            return None
        return signing.headers(self._key, out.exchange, out.routing_key, out.body)

    def _release_due(self, now: float, everything: bool = False) -> None:
        """Move held messages whose time has come into the queue (caller holds the lock)."""
        while self._held and (everything or self._held[0].deadline <= now
                              or self._held[0].released):
            held = self._held.popleft()
            if not held.released:
                held.released = True
                self._queue.append((held.out, held.future))

    def _take(self) -> list[Item]:
        with self._lock:
            self._release_due(time.monotonic(), everything=self._stopping)
            if self._block.reason is not None:
                return []  # the broker reads nothing now: keep it all queued, in order
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            # Done already (confirmed before a reconnect put it back): never published again.
            batch = [item for item in batch if not item[1].done()]
            for watch in self._calls.due(time.monotonic()):
                body = envelope.reply(watch.msg_id, ending=False)
                # Nobody waits for a heartbeat's confirm, but it takes a delivery tag.
                batch.append((Outgoing("", watch.reply_q, body, True), Future()))
        return batch

    def _pump(self, wire: Wire, publish: Publish, unconfirmed: Unconfirmed | None) -> None:
        while True:
            self.moved_at = time.monotonic()
            batch = self._take()
            if batch:
                if unconfirmed is not None:
                    # In the table before they are written: py-amqp's basic_publish
                    # reads what has arrived first, acks of this very batch included.
                    at = self._block.clock()
                    for item in batch:
                        unconfirmed.add(item, at)
                try:
                    publish([(out, self._headers(out)) for out, _ in batch])
                except BaseException:
                    if unconfirmed is None:  # else _serve puts the whole table back, in order
                        with self._lock:  # not (all) sent: back to the front, in order
                            self._queue.extendleft(reversed(batch))
                    raise
                self.published += len(batch)
                if unconfirmed is None:
                    for item in batch:
                        complete(item[1], None)
                        self._tally(item[0], None)
            if unconfirmed is not None and unconfirmed.items:
                wire.pump()  # acks that came back while we were writing
            with self._lock:
                idle = not self._queue
                settled = idle and not self._held and not (unconfirmed and unconfirmed.items)
                if settled and self._stopping:
                    return
                if settled and self._mismatch is not None and time.monotonic() >= self._recheck_at:
                    return  # a fresh connection declares again: does the broker match now?
                # Blocked: nothing to write, so wait for the broker (its unblock) too.
                wait = self._idle_wait() if idle or self._block.reason is not None else 0.0
                self._sleeping_until = time.monotonic() + wait if wait > 0 else 0.0
            if wait > 0:
                owed = bool(unconfirmed and unconfirmed.items)
                try:
                    # Until there is something to publish or to read; a wire that
                    # cannot see the waker polls, briefly while acks are owed.
                    wire.wait(wait, poll=0.002 if owed else 0.05)
                finally:
                    with self._lock:
                        self._sleeping_until = 0.0
            wire.heartbeat()
            if unconfirmed is not None and unconfirmed.nacked:
                # RabbitMQ 3.10 went on nacking every publish of a channel whose first
                # publish to a quorum queue came just after that queue's leader died (20 s
                # and more), where a new channel got through at once: publish them again
                # on a new connection, in order, their futures still pending.
                self.confirm_failures += unconfirmed.nacked
                raise ConnectionError(f"the broker nacked {unconfirmed.nacked} publishes")
            if unconfirmed is not None:
                oldest = unconfirmed.oldest()
                if (oldest is not None
                        and self._block.clock() - oldest > self.cfg.rabbit.confirm_timeout):
                    self.confirm_failures += len(unconfirmed.items)  # published again next
                    raise ConnectionError(f"no confirm within {self.cfg.rabbit.confirm_timeout}s")

    def _idle_wait(self) -> float:
        wait = 1.0
        now = time.monotonic()
        if self._held:
            wait = min(wait, max(0.0, self._held[0].deadline - now))
        if now - self._last_hold < RECENT:
            # Active: sleep at most HOLD_POLL, so that hold() never has to wake us.
            wait = min(wait, HOLD_POLL)
        soonest = self._calls.soonest()
        if soonest is not None:
            wait = min(wait, max(0.0, soonest - now))
        return wait

    def _returned(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """An unroutable mandatory message (a reply whose caller is gone): log it once per call.

        The call's heartbeats stop too: nobody is listening for them.
        """
        msg_id = reply_msg_id(getattr(message, "body", b""))
        with self._lock:
            if msg_id is not None:
                self._calls.forget(routing_key, msg_id)
            first = self._returns.first(f"{routing_key}/{msg_id}")
        if first:
            log.warning("message_returned", exchange=exchange, routing_key=routing_key,
                        msg_id=msg_id, reason=str(exc)[:200])
