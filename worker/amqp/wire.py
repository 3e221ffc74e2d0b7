"""The wire: how the thread that owns a broker connection moves its frames, chosen once.

wire_for() looks at a new connection once and picks one of three, so that the
consumer's and the publisher's loops are one path each, whatever the transport:

- FastWire: plain TCP, py-amqp, fast_path on. Whatever the socket holds is
  read in one recv() and handed to py-amqp frame by frame; publishes and
  settlements go out as one write per batch (worker.amqp.frames); the thread
  sleeps in poll() on the socket and its waker together.
- PolledWire: TLS (poll() cannot see bytes TLS has already decrypted), or
  fast_path off. Every frame through kombu's and py-amqp's own calls, no
  internals; the loop polls, briefly while work is owed.
- MemoryWire: kombu's in-memory transport (the demo). No socket, no
  confirms, no heartbeats.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from amqp.basic_message import Message as AmqpMessage
from kombu import Connection, Producer

from worker.amqp import frames
from worker.amqp.frames import FrameReader
from worker.amqp.waker import Waker
from worker.messages import Outgoing, Settlement

#: A delivery (kombu's Message) and the settlement owed on it.
Owed = tuple[Any, Settlement]
#: A message to publish and the headers it carries (None: no headers at all).
Publishing = tuple[Outgoing, "dict[str, Any] | None"]
Publish = Callable[[Sequence[Publishing]], None]
#: A publisher confirm: on_confirm(delivery_tag, multiple, nacked).
OnConfirm = Callable[[int, bool, bool], None]
#: A mandatory message the broker could not route: on_return(exc, exchange, routing_key, message).
OnReturn = Callable[[Exception, str, str, Any], None]

# Every message we publish is JSON and persistent (events and replies alike).
CONTENT_TYPE, CONTENT_ENCODING, PERSISTENT = "application/json", "utf-8", 2
# heartbeat_check() at most this often: py-amqp sends a heartbeat every heartbeat/2 s.
HEARTBEAT_CHECK_EVERY = 1.0
# The smallest wait py-amqp handles as a wait: with 0 its socket turns
# non-blocking and a short read spins on EAGAIN instead of timing out.
_POLL = 0.0001
# How often MemoryWire looks at kombu's in-memory queues while it waits: the
# transport's own polling interval (worker.amqp.connection sets it).
MEMORY_POLL = 0.005


class Wire(Protocol):
    """What the loop that owns a connection needs of it, whatever the transport."""

    #: Whether the broker confirms publishes (py-amqp); the in-memory transport does not.
    confirms: bool

    def publishing(self, channel: Any, on_confirm: OnConfirm, on_return: OnReturn) -> Publish:
        """Make channel the one to publish on (in confirm mode where there is one); its publish."""

    def settle(self, settlements: Sequence[Owed]) -> None:
        """Ack, reject or requeue deliveries of this connection, in order."""

    def pump(self) -> None:
        """Handle every frame that has already arrived, without waiting."""

    def wait(self, timeout: float, poll: float) -> None:
        """Sleep until woken, frames arrive (they are handled) or timeout.

        A wire that cannot see its waker while it reads returns after at most
        poll seconds, so that the loop looks at its own work that often.
        """

    def release(self) -> None:
        """Call before py-amqp reads the socket itself (basic.consume, basic.cancel)."""

    def heartbeat(self) -> None:
        """Send and check AMQP heartbeats when due; call it every turn of the loop."""


def wire_for(conn: Connection, waker: Waker, *, fast_path: bool) -> Wire:
    """The wire of a connected kombu connection, for the whole of its life."""
    if conn.transport.driver_type != "amqp":
        return MemoryWire(conn, waker)
    sock = socket_of(conn)
    if fast_path and sock is not None:
        return FastWire(conn, waker, sock)
    return PolledWire(conn)


def socket_of(conn: Connection) -> socket.socket | None:
    """The raw socket of a plain-TCP py-amqp connection; None for TLS or another transport."""
    if conn.transport.driver_type != "amqp" or conn.ssl:
        return None
    sock = getattr(getattr(conn.connection, "transport", None), "sock", None)
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None
    return sock


class _Amqp:
    """What both py-amqp wires do alike: confirm mode, returns, heartbeats."""

    confirms = True

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._next_heartbeat = time.monotonic()

    def _select(self, channel: Any, on_confirm: OnConfirm, on_return: OnReturn) -> None:
        channel.confirm_select()
        channel.events["basic_ack"].add(lambda tag, multiple: on_confirm(tag, multiple, False))
        channel.events["basic_nack"].add(lambda tag, multiple: on_confirm(tag, multiple, True))
        channel.events["basic_return"].add(on_return)

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._conn.heartbeat_check()
            self._next_heartbeat = time.monotonic() + HEARTBEAT_CHECK_EVERY


class FastWire(_Amqp):
    """Plain TCP: batched reads into py-amqp's frame handler, one write per batch."""

    def __init__(self, conn: Connection, waker: Waker, sock: socket.socket) -> None:
        super().__init__(conn)
        self._amqp = conn.connection  # py-amqp's own Connection
        self._waker, self._sock = waker, sock
        self._reader = FrameReader(self._amqp, sock)

    def publishing(self, channel: Any, on_confirm: OnConfirm, on_return: OnReturn) -> Publish:
        self._select(channel, on_confirm, on_return)
        # Confirms read here skip py-amqp's method dispatch: one comes per publish.
        self._reader.on_confirm = on_confirm
        amqp, channel_id = self._amqp, channel.channel_id

        # kombu's Producer.publish, and even py-amqp's basic_publish, cost several
        # times the frames themselves, and this is the publisher's hot loop.
        def publish(batch: Sequence[Publishing]) -> None:
            frames.write(amqp, b"".join(
                frames.publish(channel_id, amqp.frame_max, out.exchange, out.routing_key,
                               out.mandatory, out.body,
                               frames.properties(CONTENT_TYPE, CONTENT_ENCODING, PERSISTENT,
                                                 headers))
                for out, headers in batch))
        return publish

    def settle(self, settlements: Sequence[Owed]) -> None:
        data = b"".join(
            frames.ack(message.channel.channel_id, message.delivery_tag) if action == "ack"
            else frames.reject(message.channel.channel_id, message.delivery_tag,
                               requeue=action == "requeue")
            for message, action in settlements)
        if data:
            frames.write(self._amqp, data)

    def pump(self) -> None:
        self._reader.pump()

    def wait(self, timeout: float, poll: float) -> None:
        if self._waker.wait(self._sock, timeout):
            self._reader.pump()

    def release(self) -> None:
        self._reader.release()


class PolledWire(_Amqp):
    """TLS, or the fast path turned off: kombu's and py-amqp's own calls, polled."""

    def publishing(self, channel: Any, on_confirm: OnConfirm, on_return: OnReturn) -> Publish:
        self._select(channel, on_confirm, on_return)

        def publish(batch: Sequence[Publishing]) -> None:
            for out, headers in batch:
                properties: dict[str, Any] = {"content_type": CONTENT_TYPE,
                                              "content_encoding": CONTENT_ENCODING,
                                              "delivery_mode": PERSISTENT}
                if headers is not None:
                    properties["application_headers"] = headers
                # py-amqp's basic_publish, not kombu's Producer: the frames are then
                # byte for byte the fast path's (no priority, no empty header table).
                channel.basic_publish(AmqpMessage(out.body, **properties),
                                      exchange=out.exchange, routing_key=out.routing_key,
                                      mandatory=out.mandatory)
        return publish

    def settle(self, settlements: Sequence[Owed]) -> None:
        _settle_each(settlements)

    def pump(self) -> None:
        while True:
            try:
                self._conn.drain_events(timeout=_POLL)
            except TimeoutError:
                return

    def wait(self, timeout: float, poll: float) -> None:
        try:
            self._conn.drain_events(timeout=min(timeout, poll))
        except TimeoutError:
            pass

    def release(self) -> None:
        pass  # py-amqp does every read itself


class MemoryWire:
    """kombu's in-memory transport: no socket to read, no confirms, no heartbeats."""

    confirms = False

    def __init__(self, conn: Connection, waker: Waker) -> None:
        self._conn = conn
        self._waker = waker

    def publishing(self, channel: Any, on_confirm: OnConfirm, on_return: OnReturn) -> Publish:
        producer = Producer(channel, on_return=on_return)

        def publish(batch: Sequence[Publishing]) -> None:
            for out, headers in batch:
                producer.publish(out.body, exchange=out.exchange, routing_key=out.routing_key,
                                 content_type=CONTENT_TYPE, content_encoding=CONTENT_ENCODING,
                                 delivery_mode=PERSISTENT, mandatory=out.mandatory,
                                 retry=False, headers=headers)
        return publish

    def settle(self, settlements: Sequence[Owed]) -> None:
        _settle_each(settlements)

    def pump(self) -> None:
        self._deliver()

    def wait(self, timeout: float, poll: float) -> None:
        # The transport delivers only inside drain_events: look at its queues
        # every MEMORY_POLL, and on the waker in between.
        deadline = time.monotonic() + min(timeout, poll)
        while not self._deliver():
            left = deadline - time.monotonic()
            if left <= 0 or self._waker.wait_alone(min(left, MEMORY_POLL)):
                return

    def _deliver(self) -> int:
        count = 0
        while True:
            try:
                self._conn.drain_events(timeout=0)  # 0: look once, never sleep
            except TimeoutError:
                return count
            count += 1

    def release(self) -> None:
        pass

    def heartbeat(self) -> None:
        pass


def _settle_each(settlements: Sequence[Owed]) -> None:
    for message, action in settlements:
        if action == "ack":
            message.ack()
        elif action == "reject":
            message.reject(requeue=False)
        else:
            message.requeue()
