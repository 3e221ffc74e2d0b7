"""Shared test tools: an event tap on a real broker, schema checks, domain factories."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from kombu import Connection, Consumer, Exchange, Message, Queue

from worker.codec import envelope
from worker.core import schemas
from worker.virt.domain_xml import DomainSpec, domain, to_string

Event = dict[str, Any]
#: Runs a test on the worker's fast path and again on kombu's (fast_path off); the
#: test, or a fixture it uses (conftest's cfg), takes the fast_path fixture.
BOTH_PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "kombu-path"])


def check_event(event: Event) -> None:
    """Validate an event's inner message and its payload against schemas/events/."""
    schemas.validator("events", "notification")(event)
    payload = event["payload"]
    schemas.validator("events", payload["nova_object.name"])(payload["nova_object.data"])


class EventTap:
    """Collects every event on ``<topic>.*`` of an exchange from a private queue."""

    def __init__(self, url: str, exchange: str, topic: str, *, durable: bool = False) -> None:
        self._durable = durable
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._url, self._exchange, self._topic = url, exchange, topic
        self._thread = threading.Thread(target=self._run, daemon=True, name="event-tap")
        self._thread.start()
        assert self._ready.wait(10), "event tap did not connect"

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
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()

            with Consumer(channel, [queue], on_message=received):
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass

    def wait_for(self, predicate: Callable[[list[Event]], bool],
                 timeout: float = 20.0) -> list[Event]:
        """Block until predicate(events) holds; AssertionError with the events seen if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(e["event_type"], e["payload"]["nova_object.data"].get("uuid"))
                            for e in self.events]
                    raise AssertionError(f"timed out waiting for events; saw {seen}")
                self._cond.wait(left)
            return list(self.events)

    def of(self, uuid_: str, event_type: str | None = None) -> list[Event]:
        """Events about one instance (optionally of one type), in arrival order."""
        with self._cond:
            return [e for e in self.events
                    if e["payload"]["nova_object.data"].get("uuid") == uuid_
                    and (event_type is None or e["event_type"] == event_type)]

    def wait_type(self, uuid_: str, event_type: str, count: int = 1,
                  timeout: float = 20.0) -> list[Event]:
        """Wait until count events of event_type about uuid_ arrived."""
        self.wait_for(lambda _: len(self.of(uuid_, event_type)) >= count, timeout)
        return self.of(uuid_, event_type)

    def close(self) -> None:
        """Stop the tap."""
        self._stop.set()
        self._thread.join(5)


def define_test_domains(count: int, *, prefix: str = "t") -> list[str]:
    """Define and start count domains on libvirt's shared test:///default; their UUIDs."""
    conn = libvirt.open("test:///default")
    uuids = []
    try:
        for _ in range(count):
            uid = str(uuid.uuid4())
            spec = DomainSpec(name=f"{prefix}-{uid[:8]}", uuid=uid, domain_type="test")
            conn.defineXML(to_string(domain(spec))).create()
            uuids.append(uid)
    finally:
        conn.close()
    return uuids


def remove_domain(conn: libvirt.virConnect, uid: str) -> None:
    """Destroy, drop the managed-save image and undefine a domain if it is still there."""
    try:
        dom = conn.lookupByUUIDString(uid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise
    if dom.isActive():
        dom.destroy()
    if dom.hasManagedSaveImage(0):
        dom.managedSaveRemove(0)
    if dom.isPersistent():
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def remove_test_domains(uuids: list[str]) -> None:
    """Destroy and undefine test domains that are still there."""
    conn = libvirt.open("test:///default")
    try:
        for uid in uuids:
            remove_domain(conn, uid)
    finally:
        conn.close()


def domain_state(uri: str, uid: str) -> tuple[int, int] | None:
    """(state, reason) of a domain through libvirt itself; None when it does not exist."""
    conn = libvirt.open(uri)
    try:
        try:
            state, reason = conn.lookupByUUIDString(uid).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return int(state), int(reason)
    finally:
        conn.close()


def dumps(obj: Any) -> str:
    """Compact JSON."""
    return json.dumps(obj, separators=(",", ":"))


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of size mounted at path (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the README's test command runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write zeros to disk until it is full; the file to delete to free it again."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert errno.ENOSPC == exc.errno, exc
        with contextlib.suppress(OSError):
            while True:  # the last few blocks, a byte at a time
                handle.write(b"\0" * 512)
    return filler
