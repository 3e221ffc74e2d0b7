"""The core tier's parts: a private test-driver node, a recording outbox, deliveries by hand."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from worker.codec import envelope
from worker.messages import Delivery, Held, Outgoing, Settlement


def node_xml(path: Path, count: int) -> tuple[str, list[str]]:
    """A test-driver node file with count running domains; its URI and their UUIDs.

    ``test:///<file>`` gives each test a libvirt state of its own, gone with its connections.
    """
    node = etree.Element("node")
    uuids = []
    for number in range(count):
        uid = str(uuid.uuid4())
        uuids.append(uid)
        dom = etree.SubElement(node, "domain", type="test")
        etree.SubElement(dom, "name").text = f"core-{number}"
        etree.SubElement(dom, "uuid").text = uid
        etree.SubElement(dom, "memory").text = "65536"
        etree.SubElement(dom, "vcpu").text = "1"
        os_el = etree.SubElement(dom, "os")
        etree.SubElement(os_el, "type").text = "hvm"
    path.write_bytes(etree.tostring(node))
    return f"test://{path}", uuids


@dataclass
class Sent:
    """One message the dispatcher handed to the outbox, and the future it got."""

    out: Outgoing
    future: Future[None]

    @property
    def inner(self) -> dict[str, Any]:
        """The oslo inner message."""
        return envelope.unwrap(self.out.body, 1 << 20)


@dataclass
class RecordingOutbox:
    """The Outbox protocol, recording everything; confirms come when the test says.

    With ``auto`` true every send is confirmed at once, as a healthy broker would.
    """

    auto: bool = True
    sent: list[Sent] = field(default_factory=list)
    watches: dict[int, tuple[str, str, float]] = field(default_factory=dict)
    unwatched: list[int] = field(default_factory=list)
    _lock: threading.Condition = field(default_factory=threading.Condition)

    def send(self, out: Outgoing) -> Future[None]:
        """Record; confirm now when auto."""
        future: Future[None] = Future()
        with self._lock:
            self.sent.append(Sent(out, future))
            self._lock.notify_all()
        if self.auto:
            future.set_result(None)
        return future

    def hold(self, out: Outgoing, seconds: float) -> Held:
        """Held messages are recorded when released (the dispatcher always releases)."""
        return Held(out, seconds)

    def release(self, held: Held) -> Future[None]:
        """Send the held message now."""
        if not held.released:
            held.released = True
            held.future = self.send(held.out)
        return held.future

    def watch_call(self, reply_q: str, msg_id: str, interval: float) -> int:
        """Record a call watch."""
        with self._lock:
            handle = len(self.watches) + 1
            self.watches[handle] = (reply_q, msg_id, interval)
            return handle

    def unwatch_call(self, handle: int) -> None:
        """Record its end."""
        with self._lock:
            self.unwatched.append(handle)

    def wait(self, predicate: Callable[[list[Sent]], bool], timeout: float = 5.0) -> list[Sent]:
        """Block until predicate(sent) holds; AssertionError with what was sent if not."""
        with self._lock:
            if not self._lock.wait_for(lambda: predicate(self.sent), timeout):
                raise AssertionError(f"timed out; sent {[self.kind(s) for s in self.sent]}")
            return list(self.sent)

    @staticmethod
    def kind(sent: Sent) -> str:
        """An event's event_type, or 'reply' / 'heartbeat'."""
        inner = sent.inner
        if "event_type" in inner:
            return str(inner["event_type"])
        return "reply" if inner.get("ending") else "heartbeat"

    def kinds(self) -> list[str]:
        """Every message's kind, in order."""
        with self._lock:
            return [self.kind(s) for s in self.sent]


class Settles:
    """The settle function of each delivery made by hand, and what each was settled with."""

    def __init__(self) -> None:
        self.done: dict[int, list[Settlement]] = {}
        self._cond = threading.Condition()

    def delivery(self, message: dict[str, Any] | bytes, *, number: int,
                 redelivered: bool = False) -> Delivery:
        """A delivery of message (an oslo inner message, or raw bytes) settled into done[number]."""
        with self._cond:
            self.done[number] = []

        def settle(action: Settlement) -> None:
            with self._cond:
                self.done[number].append(action)
                self._cond.notify_all()

        body = message if isinstance(message, bytes) else envelope.wrap(message)
        return Delivery(body, redelivered, settle)

    def wait(self, number: int, timeout: float = 5.0) -> list[Settlement]:
        """Block until delivery number is settled; its settlements."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self.done[number]), timeout):
                raise AssertionError(f"delivery {number} not settled; all: {self.done}")
            return list(self.done[number])


def cast(method: str, uid: str | None = None, unique_id: str | None = None,
         **args: Any) -> dict[str, Any]:
    """An oslo cast's inner message."""
    if uid is not None:
        args["instance"] = {"uuid": uid}
    return {"method": method, "args": args, "version": "6.0",
            "_unique_id": unique_id or uuid.uuid4().hex, "_context_request_id": "req-core"}


def call(method: str, uid: str | None = None, timeout: float | None = None,
         **args: Any) -> dict[str, Any]:
    """An oslo call's inner message."""
    return {**cast(method, uid, **args), "_msg_id": uuid.uuid4().hex,
            "_reply_q": "reply_core", "_timeout": timeout}


def reply_of(sent: list[Sent], message: dict[str, Any]) -> dict[str, Any]:
    """The final reply to a call, decoded, with its failure parsed."""
    for item in sent:
        inner = item.inner
        if inner.get("_msg_id") == message["_msg_id"] and inner.get("ending"):
            failure = inner["failure"]
            return {**inner, "failure": json.loads(failure) if failure else None}
    raise AssertionError(f"no reply to {message['method']}")
