"""Waker: lets another thread wake the one that owns a connection, asleep in poll()."""

from __future__ import annotations

import select
import socket


def readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
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
    """Lets another thread wake one blocked in poll() on a broker socket (or on nothing)."""

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
        ready = readable([self._read, sock], timeout)
        if self._read in ready:
            self._seen()
        return sock in ready

    def wait_alone(self, timeout: float) -> bool:
        """Block until woken or timeout (for transports without a socket); True when woken."""
        if readable([self._read], timeout):
            self._seen()
            return True
        return False

    def _seen(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except BlockingIOError:
            pass
        # Only after draining: cleared first, a wake landing between the two
        # would have its byte drained and leave the flag set, with no byte to
        # wake the next wait.
        self._pending = False

    def close(self) -> None:
        """Release the socket pair."""
        self._read.close()
        self._write.close()
