"""Broker connections: the one place that knows how to open one (heartbeat, TLS, confirms)."""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Callable
from typing import Any

from kombu import Connection

from worker.config import Config

#: py-amqp's callbacks for RabbitMQ's connection.blocked (with a reason) and unblocked.
Blocked = Callable[[str], None]
Unblocked = Callable[[], None]


def connection_for(cfg: Config, *, confirm: bool = False, on_blocked: Blocked | None = None,
                   on_unblocked: Unblocked | None = None) -> Connection:
    """A kombu connection with heartbeats on (kombu's default negotiates them off).

    on_blocked(reason) and on_unblocked() are py-amqp's callbacks for RabbitMQ's
    connection.blocked/unblocked (py-amqp advertises the capability): kombu
    hands transport_options to ``amqp.Connection(...)`` as they are. They run
    on whichever thread reads the connection's frames.
    """
    options: dict[str, Any] = {"confirm_publish": confirm}
    if on_blocked is not None:
        options["on_blocked"] = on_blocked
    if on_unblocked is not None:
        options["on_unblocked"] = on_unblocked
    if cfg.transport_url.startswith("memory://"):
        # The in-memory transport polls; keep its latency low for the demo.
        options = {"polling_interval": 0.005}
    tls: Any = None
    if cfg.rabbit.ssl_ca_file:
        tls = {"ca_certs": cfg.rabbit.ssl_ca_file, "cert_reqs": ssl.CERT_REQUIRED}
    elif cfg.transport_url.startswith("amqps://"):
        tls = True  # the system's CA store
    return Connection(cfg.transport_url, heartbeat=cfg.rabbit.heartbeat, transport_options=options,
                      connect_timeout=10, ssl=tls)


def open_connection(cfg: Config, *, on_blocked: Blocked | None = None,
                    on_unblocked: Unblocked | None = None) -> Connection:
    """connection_for(cfg), connected with one try; released again if that fails.

    For reconnecting(), which owns the retries and the backoff between them.
    """
    conn = connection_for(cfg, on_blocked=on_blocked, on_unblocked=on_unblocked)
    try:
        conn.ensure_connection(max_retries=1)
    except Exception:
        conn.release()
        raise
    return conn


# The smallest wait py-amqp handles as a wait: with 0 its socket turns
# non-blocking and a short read spins on EAGAIN instead of timing out.
_POLL = 0.0001


def socket_of(conn: Connection) -> socket.socket | None:
    """The raw socket of a plain-TCP py-amqp connection, for select(); None otherwise.

    TLS keeps decrypted bytes in its own buffer, which select() cannot see,
    and the in-memory transport has no socket: both are polled instead.
    """
    if conn.transport.driver_type != "amqp" or conn.ssl:
        return None
    sock = getattr(getattr(conn.connection, "transport", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def drain_ready(conn: Connection, sock: socket.socket | None = None) -> int:
    """Handle every frame that has already arrived, without waiting; how many were read.

    With the socket, readiness is asked of select() with a zero timeout: a
    socket timeout of 0.1 ms would really wait 1 ms, because Python rounds
    socket waits up to whole milliseconds.
    """
    count = 0
    while True:
        if sock is not None:
            transport = getattr(conn.connection, "transport", None)
            buffered = bool(getattr(transport, "_read_buffer", b""))
            if not buffered and not _readable([sock], 0.0):
                return count
            try:
                conn.drain_events(timeout=1.0)  # bytes are there: the frame is complete or near
            except TimeoutError:
                return count
        else:
            try:
                conn.drain_events(timeout=_POLL)
            except TimeoutError:
                return count
        count += 1


def _readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets readable within timeout seconds.

    poll(), not select(): select() refuses descriptors numbered 1024 or more,
    which a busy process reaches.
    """
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    events = poller.poll(max(0, int(timeout * 1000 + 0.999)) if timeout > 0 else 0)
    return [by_fd[fd] for fd, _ in events if fd in by_fd]


class Waker:
    """Lets another thread wake one blocked in select() on a broker socket."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        # True from a wake until the waiting thread sees it: wakes in between
        # need no byte of their own, since the waiter looks at everything
        # queued after it clears this flag.
        self._pending = False

    def wake(self) -> None:
        """Wake the waiting thread (cheap; repeated wakes coalesce)."""
        if self._pending:
            return
        self._pending = True
        try:
            self._write.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # full of wake-ups already, or closed because the thread has ended

    def wait(self, sock: socket.socket, timeout: float) -> bool:
        """Block until woken, sock is readable, or timeout; True when sock is readable."""
        ready = _readable([self._read, sock], timeout)
        if self._read in ready:
            self._drain()
            # Only after draining: cleared first, a wake landing between the
            # two would have its byte drained and leave the flag set, with no
            # byte to wake the next wait.
            self._pending = False
        return sock in ready

    def wait_alone(self, timeout: float) -> None:
        """Block until woken or timeout (for transports without a socket)."""
        if _readable([self._read], timeout):
            self._drain()
            self._pending = False

    def _drain(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Release the socket pair."""
        self._read.close()
        self._write.close()
