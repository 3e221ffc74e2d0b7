"""A private unix socket in front of the system libvirtd's, which a test can cut.

The worker reaches libvirtd through it (``test+unix:///<node.xml>?socket=<path>``: the
daemon's own test driver, a private state per connection), so a test can lose libvirt
for one worker, as a dying daemon would (the connection ends, libvirt's close callback
fires), without touching the daemon every other test uses.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

from tests.unix_forward import pump

#: The system libvirtd's read-write socket.
DAEMON_SOCKET = "/var/run/libvirt/libvirt-sock"


class LibvirtLink:
    """Listens on path; relays each connection to libvirtd until cut(); refuses while down."""

    def __init__(self, path: Path, upstream: str = DAEMON_SOCKET) -> None:
        self.path = str(path)
        self._upstream = upstream
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self._down = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._links: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name="libvirt-link", daemon=True)
        self._thread.start()

    def uri(self, node_xml: Path) -> str:
        """The libvirt URI of the daemon's test driver on node_xml, through this link."""
        return f"test+unix://{node_xml}?socket={self.path}"

    def cut(self) -> None:
        """End every relayed connection and refuse new ones until restore()."""
        self._down.set()
        with self._lock:
            links, self._links = self._links, []
        for pair in links:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        """Relay new connections again."""
        self._down.clear()

    def close(self) -> None:
        """Cut everything and stop listening; idempotent."""
        self.cut()
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        with contextlib.suppress(OSError):
            Path(self.path).unlink()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down.is_set():
                client.close()  # the daemon is "gone": the client's open fails
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self._upstream)
            except OSError:
                client.close()
                upstream.close()
                continue
            self.accepted += 1
            with self._lock:
                self._links.append((client, upstream))
            threading.Thread(target=pump, args=(client, upstream, self._stop),
                             name="libvirt-link-relay", daemon=True).start()

