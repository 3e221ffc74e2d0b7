"""A NOTIFY_SOCKET of the test's own: what systemd would hear from a Type=notify service."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Note:
    """One datagram: when it came (monotonic) and its KEY=VALUE lines."""

    at: float
    fields: dict[str, str]


class NotifySocket:
    """A datagram socket bound where NOTIFY_SOCKET says, collecting every message on a thread."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        """A socket file at path, or one in the abstract namespace (NOTIFY_SOCKET=@name)."""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self._sock.bind("\0" + abstract)
            self.address = "@" + abstract
        else:
            assert path is not None
            self._sock.bind(str(path))
            self.address = str(path)
        self._sock.settimeout(0.1)
        self.notes: list[Note] = []
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines()
                          if line)
            with self._lock:
                self.notes.append(Note(time.monotonic(), fields))
                self._lock.notify_all()

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0) -> Note:
        """The first note carrying key (=value), waiting for it; AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for note in self.notes:
                    if key in note.fields and (value is None or note.fields[key] == value):
                        return note
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value or '*'} within {timeout:.0f}s; "
                                         f"got {[n.fields for n in self.notes]}")
                self._lock.wait(left)

    def keys(self) -> list[str]:
        """Every key in arrival order (STATUS and the like included)."""
        with self._lock:
            return [key for note in self.notes for key in note.fields]

    def times(self, key: str) -> list[float]:
        """Arrival times of the notes carrying key."""
        with self._lock:
            return [note.at for note in self.notes if key in note.fields]

    def statuses(self) -> list[str]:
        """Every STATUS= text, in order."""
        with self._lock:
            return [n.fields["STATUS"] for n in self.notes if "STATUS" in n.fields]

    def close(self) -> None:
        """Stop reading and close."""
        self._closed = True
        self._thread.join(2)
        with contextlib.suppress(OSError):
            self._sock.close()
