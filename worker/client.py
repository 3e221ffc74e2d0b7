"""A small oslo-compatible client: cast, call and read events (CLI, demo and tests use it)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from worker import envelope
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
    """Casts and calls on ``<topic>.<host>`` over the control exchange."""

    def __init__(self, connection: Connection, *, exchange: str = "nova", topic: str = "compute",
                 durable: bool = False) -> None:
        self.conn = connection
        self.exchange = Exchange(exchange, type="topic", durable=durable, auto_delete=False)
        self.topic = topic
        self._producer = Producer(connection.channel())
        self.exchange(self._producer.channel).declare()

    def _message(self, method: str, args: dict[str, Any], version: str,
                 context: dict[str, Any] | None) -> dict[str, Any]:
        msg: dict[str, Any] = {"method": method, "args": args, "version": version,
                               "_unique_id": envelope.new_unique_id()}
        ctx = {"request_id": f"req-{uuid.uuid4()}", **(context or {})}
        msg.update({f"_context_{k}": v for k, v in ctx.items()})
        return msg

    def _publish(self, routing_key: str, body: bytes) -> None:
        self._producer.publish(body, exchange=self.exchange, routing_key=routing_key,
                               content_type="application/json", content_encoding="utf-8",
                               delivery_mode=2)

    def cast(self, host: str, method: str, args: dict[str, Any], *, version: str = "1.0",
             context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a cast; returns the inner message sent (with its ``_unique_id``)."""
        msg = self._message(method, args, version, context)
        self._publish(f"{self.topic}.{host}", envelope.wrap(msg))
        return msg

    def call(self, host: str, method: str, args: dict[str, Any], *, timeout: float = 30.0,
             version: str = "1.0", monitor: float | None = None,
             context: dict[str, Any] | None = None) -> Any:
        """Send a call and wait for its ending reply; RemoteError on a failure."""
        msg = self._message(method, args, version, context)
        reply_q = f"reply_{uuid.uuid4().hex}"
        msg.update(_msg_id=uuid.uuid4().hex, _reply_q=reply_q, _timeout=monitor)
        channel = self.conn.channel()
        queue = Queue(reply_q, exclusive=True, auto_delete=True)(channel)
        queue.declare()
        replies: list[dict[str, Any]] = []

        def received(message: Message) -> None:
            replies.append(envelope.unwrap(message.body, 1 << 30))
            message.ack()

        try:
            with Consumer(channel, [queue], on_message=received):
                self._publish(f"{self.topic}.{host}", envelope.wrap(msg))
                deadline = time.monotonic() + timeout
                while True:
                    if any(r.get("ending") for r in replies):
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise CallTimeout(f"no reply to {method} within {timeout}s")
                    try:
                        self.conn.drain_events(timeout=min(left, 0.5))
                    except TimeoutError:
                        pass
        finally:
            channel.close()
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
