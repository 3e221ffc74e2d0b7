"""A small oslo-compatible client: cast, call and read events (CLI, demo and tests use it)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from worker.codec import envelope, signing
from worker.errors import WorkerError


class RemoteError(WorkerError):
    """A call's reply carried a failure."""

    def __init__(self, failure: dict[str, Any]) -> None:
        super().__init__(f"{failure.get('class')}: {failure.get('message')}")
        self.failure = failure
        self.exc_class = str(failure.get("class"))


class CallTimeout(WorkerError):
    """No ending reply in time."""


class RpcClient:
    """Casts and calls on ``<topic>.<host>``; like oslo, one reply queue serves all its calls."""

    def __init__(self, connection: Connection, *, exchange: str = "nova", topic: str = "compute",
                 durable: bool = False, signing_key: bytes | None = None) -> None:
        """signing_key: sign every cast and call, as a worker with require_signature wants."""
        self.conn = connection
        self._key = signing_key
        self.exchange = Exchange(exchange, type="topic", durable=durable, auto_delete=False)
        self.topic = topic
        self._producer = Producer(connection.channel())
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

    def _publish(self, routing_key: str, body: bytes) -> None:
        headers = (signing.headers(self._key, self.exchange.name, routing_key, body)
                   if self._key is not None else None)
        self._producer.publish(body, exchange=self.exchange, routing_key=routing_key,
                               content_type="application/json", content_encoding="utf-8",
                               delivery_mode=2, headers=headers)

    def cast(self, host: str, method: str, args: dict[str, Any], *, version: str = "6.0",
             context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a cast; returns the inner message sent (with its ``_unique_id``)."""
        msg = self._message(method, args, version, context)
        self._publish(f"{self.topic}.{host}", envelope.wrap(msg))
        return msg

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
            self._publish(f"{self.topic}.{host}", envelope.wrap(msg))
            deadline = time.monotonic() + timeout
            while not any(r.get("ending") for r in replies):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallTimeout(f"no reply to {method} within {timeout}s")
                try:
                    self.conn.drain_events(timeout=min(left, 0.5))
                except TimeoutError:
                    pass
        finally:
            del self._replies[msg_id]
        self.heartbeats = sum(1 for r in replies if not r.get("ending"))
        final = next(r for r in replies if r.get("ending"))
        if final.get("failure"):
            raise RemoteError(json.loads(final["failure"]))
        return final.get("result")


def tail_events(connection: Connection, *, exchange: str = "nova",
                topic: str = "versioned_notifications", durable: bool = False,
                timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """Yield events from a private queue bound to ``<topic>.*`` (other readers keep theirs)."""
    channel = connection.channel()
    ex = Exchange(exchange, type="topic", durable=durable, auto_delete=False)
    queue = Queue(f"{topic}_tail_{uuid.uuid4().hex}", ex, routing_key=f"{topic}.*",
                  exclusive=True, auto_delete=True)(channel)
    queue.declare()
    got: list[dict[str, Any]] = []

    def received(message: Message) -> None:
        got.append(envelope.unwrap(message.body, 1 << 30))
        message.ack()

    deadline = None if timeout is None else time.monotonic() + timeout
    with Consumer(channel, [queue], on_message=received):
        while deadline is None or time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=0.5)
            except TimeoutError:
                pass
            while got:
                yield got.pop(0)
