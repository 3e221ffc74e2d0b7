"""What other threads collect (events, records), waits on it, and the plain event tap."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from kombu import Connection, Consumer, Exchange, Message, Queue

from worker.codec import envelope

Event = dict[str, Any]
T = TypeVar("T")


class Gathered(Generic[T]):
    """Items that other threads add, and a wait until they satisfy a predicate."""

    def __init__(self) -> None:
        self.items: list[T] = []
        # Reentrant: a predicate may call methods that take the lock again.
        self._cond = threading.Condition(threading.RLock())

    def add(self, item: T) -> None:
        """Keep one item and wake the waiters."""
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def snapshot(self) -> list[T]:
        """Every item so far."""
        with self._cond:
            return list(self.items)

    def until(self, predicate: Callable[[list[T]], bool], timeout: float) -> list[T] | None:
        """Block until predicate(items) holds: the items then, or None at the timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.items):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))
            return list(self.items)


def drain_until(conn: Connection, stop: threading.Event) -> None:
    """Hand conn's messages to its consumers until stop is set, heartbeats kept if it has any."""
    while not stop.is_set():
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass
        conn.heartbeat_check()


def uuid_of(event: Event) -> Any:
    """The instance an event is about (None for service events, whose uuid is the service's)."""
    if str(event.get("event_type", "")).startswith("service."):
        return None
    return event["payload"]["nova_object.data"].get("uuid")


#: The disabled_reason of a stopping worker's last service.update.
STOPPED = "compute-worker stopped"


def went_down(events: list[Event]) -> bool:
    """True once a worker's last word, service.update saying it stopped, is among events.

    A worker publishes it after everything else, on the same channel: every event it
    published before has reached the tap by then.
    """
    return any(e["event_type"] == "service.update" and stopped(e) for e in events)


def stopped(event: Event) -> bool:
    """A service.update that says the worker stopped (nova's payload has no "up")."""
    data = event["payload"]["nova_object.data"]
    return bool(data["disabled"] and data["disabled_reason"] == STOPPED)


class EventTap(Gathered[Event]):
    """Collects every event on ``<topic>.*`` of an exchange from a private queue."""

    def __init__(self, url: str, exchange: str, topic: str, *, durable: bool = False) -> None:
        super().__init__()
        self._durable = durable
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._url, self._exchange, self._topic = url, exchange, topic
        self._thread = threading.Thread(target=self._run, daemon=True, name="event-tap")
        self._thread.start()
        assert self._ready.wait(10), "event tap did not connect"

    @property
    def events(self) -> list[Event]:
        """Every event so far, in arrival order (the live list)."""
        return self.items

    def _run(self) -> None:
        with Connection(self._url) as conn:
            channel = conn.channel()
            ex = Exchange(self._exchange, type="topic", durable=self._durable, auto_delete=False)
            queue = Queue(f"tap_{uuid.uuid4().hex}", ex, routing_key=f"{self._topic}.*",
                          exclusive=True, auto_delete=True)(channel)
            queue.declare()

            def received(message: Message) -> None:
                event = envelope.unwrap(message.body, 1 << 30)
                message.ack()
                self.add(event)

            with Consumer(channel, [queue], on_message=received):
                self._ready.set()
                drain_until(conn, self._stop)

    def wait_for(self, predicate: Callable[[list[Event]], bool],
                 timeout: float = 20.0) -> list[Event]:
        """Block until predicate(events) holds; AssertionError with the events seen if not."""
        events = self.until(predicate, timeout)
        if events is None:
            seen = [(e["event_type"], uuid_of(e)) for e in self.snapshot()]
            raise AssertionError(f"timed out waiting for events; saw {seen}")
        return events

    def of(self, uuid_: str, event_type: str | None = None) -> list[Event]:
        """Events about one instance (optionally of one type), in arrival order."""
        return [e for e in self.snapshot()
                if uuid_of(e) == uuid_ and (event_type is None or e["event_type"] == event_type)]

    def wait_type(self, uuid_: str, event_type: str, count: int = 1,
                  timeout: float = 20.0) -> list[Event]:
        """Wait until count events of event_type about uuid_ arrived."""
        self.wait_for(lambda _: len(self.of(uuid_, event_type)) >= count, timeout)
        return self.of(uuid_, event_type)

    def close(self) -> None:
        """Stop the tap."""
        self._stop.set()
        self._thread.join(5)
