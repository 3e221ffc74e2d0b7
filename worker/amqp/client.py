"""A small oslo-compatible client: cast, call and read events (CLI, demo and tests use it)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import amqp.exceptions
import kombu.exceptions
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from worker.amqp.connection import connection_for, masked, node_urls
from worker.amqp.faults import BrokerError, diagnose, explain
from worker.codec import envelope, signing
from worker.config import Config
from worker.errors import WorkerError

#: What a broker that is down, or refuses us, raises through kombu and py-amqp.
_BROKER_FAULTS = (OSError, kombu.exceptions.KombuError, amqp.exceptions.AMQPError)


class RemoteError(WorkerError):
    """A call's reply carried a failure."""

    def __init__(self, failure: dict[str, Any]) -> None:
        super().__init__(f"{failure.get('class')}: {failure.get('message')}")
        self.failure = failure
        self.exc_class = str(failure.get("class"))


class CallTimeout(WorkerError):
    """No ending reply in time."""


class NoConsumer(WorkerError):
    """A mandatory message found no queue: no worker consumes that host's topic."""


def declaration_clashes(conn: Connection, cfg: Config) -> list[tuple[str, str]]:
    """Declare what the worker declares, as it does; each refusal (problem, fix).

    Each declaration on a channel of its own, since a 406 closes the channel.
    A consumer already on the host queue is a clash too: two workers for one
    host would split its casts.
    """
    from worker.amqp import topology

    found: list[tuple[str, str]] = []
    host_queue = topology.host_queue(cfg)
    for entity in (topology.control_exchange(cfg), host_queue, topology.alt_host_queue(cfg),
                   *topology.notification_queues(cfg)):
        channel = conn.channel()
        try:
            entity(channel).declare()
        except amqp.exceptions.ChannelError as exc:
            # A queue's declaration declares its exchange first: say a clash there once.
            if (clash := diagnose(exc, "")) not in found:
                found.append(clash)
            continue
        if entity is host_queue:
            _, _, consumers = channel.queue_declare(host_queue.name, passive=True)
            if consumers:
                found.append((f"another worker already consumes {host_queue.name}",
                              "stop it, or give this worker a host of its own (host option)"))
        channel.close()
    return found


@contextlib.contextmanager
def session(cfg: Config) -> Iterator[Connection]:
    """A connected broker connection with publisher confirms, for one command.

    Whatever the broker does wrong inside, at connect or later (down, a
    refused login, a 406 on a declaration), comes out as one BrokerError
    saying what to do; the URL in it has its password masked.
    """
    urls = node_urls(cfg.transport_url)
    shown = ";".join(masked(url) for url in urls)
    try:
        with connection_for(cfg, confirm=True) as conn:
            # One round over the nodes, quickly: a person is waiting.
            conn.ensure_connection(max_retries=len(urls), interval_start=0.5,
                                   interval_step=0.5, interval_max=1)
            yield conn
    except _BROKER_FAULTS as exc:
        raise BrokerError(explain(exc, shown)) from None


class RpcClient:
    """Casts and calls on ``<topic>.<host>``; like oslo, one reply queue serves all its calls."""

    def __init__(self, connection: Connection, *, exchange: str = "nova", topic: str = "compute",
                 durable: bool = False, signing_key: bytes | None = None,
                 mandatory: bool = False) -> None:
        """signing_key: sign every cast and call, as a worker with require_signature wants.

        mandatory: a message no queue takes is returned and NoConsumer raised,
        where the broker would drop it silently. A cast learns that only on a
        connection with publisher confirms (the return comes before the ack);
        a call learns it while it waits for its reply.
        """
        self.conn = connection
        self._key = signing_key
        self._mandatory = mandatory
        self._returned: list[str] = []
        self.exchange = Exchange(exchange, type="topic", durable=durable, auto_delete=False)
        self.topic = topic
        self._producer = Producer(connection.channel(), on_return=self._on_return)
        self.exchange(self._producer.channel).declare()
        self._reply_q = f"reply_{uuid.uuid4().hex}"
        self._replies: dict[str, list[dict[str, Any]]] = {}
        self._reply_consumer: Consumer | None = None

    def _message(self, method: str, args: dict[str, Any], version: str,
                 context: dict[str, Any] | None) -> dict[str, Any]:
        msg: dict[str, Any] = {"method": method, "args": args, "version": version,
                               "_unique_id": envelope.new_unique_id()}
        ctx = {"request_id": f"req-{uuid.uuid4()}", **(context or {})}
        msg.update({f"_context_{k}": v for k, v in ctx.items()})
        return msg

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(routing_key)

    def _check_returned(self, routing_key: str) -> None:
        if routing_key in self._returned:
            self._returned.remove(routing_key)
            raise NoConsumer(f"no worker consumes {routing_key} (no such queue on exchange "
                             f"{self.exchange.name}: is the host name right, and has its "
                             "worker ever started?)")

    def _publish(self, routing_key: str, body: bytes) -> None:
        headers = (signing.headers(self._key, self.exchange.name, routing_key, body)
                   if self._key is not None else None)
        self._producer.publish(body, exchange=self.exchange, routing_key=routing_key,
                               content_type="application/json", content_encoding="utf-8",
                               delivery_mode=2, headers=headers, mandatory=self._mandatory)

    def cast(self, host: str, method: str, args: dict[str, Any], *, version: str = "6.0",
             context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a cast; returns the inner message sent (with its ``_unique_id``)."""
        msg = self._message(method, args, version, context)
        routing_key = f"{self.topic}.{host}"
        self._publish(routing_key, envelope.wrap(msg))
        self._check_returned(routing_key)
        return msg

    def consumers(self, host: str) -> int | None:
        """How many consumers ``<topic>.<host>`` has now; None when there is no such queue."""
        channel = self.conn.channel()
        try:
            _, _, count = channel.queue_declare(f"{self.topic}.{host}", passive=True)
        except amqp.exceptions.NotFound:  # the 404 closed the channel too
            return None
        channel.close()
        return int(count)

    def _listen(self) -> None:
        if self._reply_consumer is not None:
            return
        channel = self.conn.channel()
        queue = Queue(self._reply_q, exclusive=True, auto_delete=True)(channel)
        queue.declare()

        def received(message: Message) -> None:
            reply = envelope.unwrap(message.body, 1 << 30)
            message.ack()
            if reply.get("_msg_id") in self._replies:
                self._replies[reply["_msg_id"]].append(reply)

        self._reply_consumer = Consumer(channel, [queue], on_message=received)
        self._reply_consumer.consume()

    def call(self, host: str, method: str, args: dict[str, Any], *, timeout: float = 30.0,
             version: str = "6.0", monitor: float | None = None,
             context: dict[str, Any] | None = None) -> Any:
        """Send a call and wait for its ending reply; RemoteError on a failure."""
        self._listen()
        msg = self._message(method, args, version, context)
        msg_id = uuid.uuid4().hex
        msg.update(_msg_id=msg_id, _reply_q=self._reply_q, _timeout=monitor)
        replies = self._replies[msg_id] = []
        try:
            routing_key = f"{self.topic}.{host}"
            self._publish(routing_key, envelope.wrap(msg))
            deadline = time.monotonic() + timeout
            while not any(r.get("ending") for r in replies):
                self._check_returned(routing_key)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallTimeout(f"no reply to {method} within {timeout}s")
                try:
                    self.conn.drain_events(timeout=min(left, 0.5))
                except TimeoutError:
                    pass
                self.conn.heartbeat_check()  # a long call must not lose its connection
        finally:
            del self._replies[msg_id]
        self.heartbeats = sum(1 for r in replies if not r.get("ending"))
        final = next(r for r in replies if r.get("ending"))
        if final.get("failure"):
            raise RemoteError(json.loads(final["failure"]))
        return final.get("result")


class EventTail:
    """Events from a private queue bound to ``<topic>.*`` (other readers keep theirs).

    The queue is bound when this is made: events published after that are
    kept for it, so make it before the cast whose events it is to see.
    """

    def __init__(self, connection: Connection, *, exchange: str = "nova",
                 topic: str = "versioned_notifications", durable: bool = False) -> None:
        self.conn = connection
        channel = connection.channel()
        ex = Exchange(exchange, type="topic", durable=durable, auto_delete=False)
        queue = Queue(f"{topic}_tail_{uuid.uuid4().hex}", ex, routing_key=f"{topic}.*",
                      exclusive=True, auto_delete=True)(channel)
        queue.declare()
        self._got: list[dict[str, Any]] = []
        self._consumer = Consumer(channel, [queue], on_message=self._received)
        self._consumer.consume()

    def _received(self, message: Message) -> None:
        self._got.append(envelope.unwrap(message.body, 1 << 30))
        message.ack()

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        """The events that arrive within timeout seconds (those already here at once)."""
        timeout = max(timeout, 0.01)  # py-amqp reads 0 as "do not block" and may raise
        self.conn.heartbeat_check()  # a tail may run for days: keep the broker from closing it
        if not self._got:
            try:
                self.conn.drain_events(timeout=timeout)
            except TimeoutError:
                pass
        got, self._got = self._got, []
        return got

    def until(self, timeout: float | None) -> Iterator[dict[str, Any]]:
        """Every event, in arrival order, until timeout seconds passed (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            left = 0.5 if deadline is None else max(0.01, min(0.5, deadline - time.monotonic()))
            yield from self.poll(left)


def tail_events(connection: Connection, *, exchange: str = "nova",
                topic: str = "versioned_notifications", durable: bool = False,
                timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """Yield events from a private queue bound to ``<topic>.*`` (other readers keep theirs)."""
    yield from EventTail(connection, exchange=exchange, topic=topic,
                         durable=durable).until(timeout)
