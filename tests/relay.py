"""A TCP relay in front of a broker that can hold back what the broker sends.

Holding the broker's side makes a publisher see no confirms (its confirm
timeout fires) while the broker does receive, route and ack everything; on
release the held acks arrive late, on a connection the publisher has given up.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class Relay:
    """Forwards 127.0.0.1:port to a broker; hold() keeps the broker's bytes until release()."""

    def __init__(self, broker_url: str) -> None:
        parts = urlsplit(broker_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        netloc = f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        self.connections = 0
        self._buffers: list[bytearray] = []  # what each connection holds back now
        #: What each client sent first (up to 64 KiB), by link number from 1.
        self.client_bytes: dict[int, bytearray] = {}
        self._held = threading.Event()
        self._held_links: set[int] = set()
        self._cut_links: set[int] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="relay", daemon=True)]
        self._threads[0].start()

    def hold(self, link: int | None = None) -> None:
        """Keep what the broker sends from now on, on one link or on all; clients still reach it."""
        if link is None:
            self._held.set()
        else:
            self._held_links.add(link)

    def holding(self, data: bytes) -> bool:
        """True when some connection holds back bytes from the broker that contain data."""
        return any(data in bytes(buffer) for buffer in list(self._buffers))

    def cut(self, link: int) -> None:
        """Close one link, both ways, as a network failure would: its client reconnects."""
        self._cut_links.add(link)

    def release(self) -> None:
        """Deliver everything held, and forward at once again."""
        self._held_links.clear()
        self._held.clear()

    def link_that_sent(self, marker: bytes) -> int | None:
        """The first link whose client has sent marker (a method's class and method id, say)."""
        for number, sent in sorted(self.client_bytes.items()):
            if marker in sent:
                return number
        return None

    def close(self) -> None:
        """Stop relaying and close every connection."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self._target, timeout=5)
            self.connections += 1
            self.client_bytes[self.connections] = bytearray()
            thread = threading.Thread(target=self._link, args=(client, upstream, self.connections),
                                      name=f"relay-{self.connections}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _link(self, client: socket.socket, upstream: socket.socket, number: int) -> None:
        held = bytearray()
        self._buffers.append(held)
        upstream_open = True
        first = self.client_bytes[number]
        with contextlib.suppress(OSError), client, upstream:
            while not self._stop.is_set() and number not in self._cut_links:
                holding = self._held.is_set() or number in self._held_links
                if held and not holding:
                    client.sendall(held)
                    held.clear()
                if not upstream_open and not held:
                    return
                sources = [client] + ([upstream] if upstream_open else [])
                ready, _, _ = select.select(sources, [], [], 0.05)
                if client in ready:
                    data = client.recv(1 << 16)
                    if not data:
                        return
                    if len(first) < 1 << 16:
                        first += data
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(1 << 16)
                    if data:
                        held += data
                    else:
                        upstream_open = False
