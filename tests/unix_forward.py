"""A TCP address that forwards each connection to a unix socket.

The system libvirtd listens on its unix socket only (and must not be
reconfigured), so a second host in a network namespace cannot reach it for a
peer-to-peer migration back. This forwarder, on the root end of the
namespace's veth, makes the root libvirtd answer on ``qemu+tcp://ADDR/system``
as a real host's would; it is a client of the socket like any other.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class UnixForward:
    """Listens on (host, port); every accepted connection is relayed to socket_path."""

    def __init__(self, host: str, port: int, socket_path: str) -> None:
        self._path = socket_path
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name=f"forward-{host}",
                                          daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        """Stop listening and end every relayed connection; idempotent."""
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
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self._path)
            except OSError:
                # The daemon is down: the client sees its connection refused as it would.
                client.close()
                upstream.close()
                continue
            thread = threading.Thread(target=pump, args=(client, upstream, self._stop),
                                      name="forward-link", daemon=True)
            self._threads.append(thread)
            thread.start()


def pump(client: socket.socket, upstream: socket.socket, stop: threading.Event) -> None:
    """Copy bytes both ways between two connected sockets until either ends or stop is set;
    both are closed then."""
    other = {client: upstream, upstream: client}
    with contextlib.suppress(OSError), client, upstream:
        while not stop.is_set():
            ready, _, _ = select.select([client, upstream], [], [], 0.2)
            for sock in ready:
                data = sock.recv(1 << 16)
                if not data:
                    return
                other[sock].sendall(data)
