"""Where the metrics go: an HTTP endpoint for Prometheus, a textfile for node_exporter."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import start_http_server, write_to_textfile
from prometheus_client.registry import CollectorRegistry

from worker import logs
from worker.config import host_port

log = logs.get(__name__)


class Exporter:
    """Serves the registry on listen (HOST:PORT, empty: not) and writes it to textfile.

    The textfile (empty: none) is written at start, every interval seconds and at
    stop, each time whole to a temporary file renamed over it, so node_exporter
    never reads half of one.
    """

    def __init__(self, registry: CollectorRegistry, *, listen: str, textfile: str,
                 interval: float) -> None:
        self._registry = registry
        self._listen = host_port(listen) if listen else None
        self._textfile = textfile
        self._interval = interval
        self._server: Any = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._write_failing = False

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the endpoint listens (the port chosen when 0 was asked), None when off."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Listen and start writing; a port taken costs the endpoint, not the worker."""
        if self._listen is not None:
            host, port = self._listen
            try:
                self._server, _ = start_http_server(port, host, registry=self._registry)
            except OSError as exc:
                # Metrics are for watching the worker; a compute host keeps serving without.
                log.error("metrics_listen_failed", listen=f"{host}:{port}", error=str(exc))
            else:
                log.info("metrics_listening", address=self.address)
        if self._textfile:
            self.write()
            self._writer = threading.Thread(target=self._keep_writing, name="metrics-textfile",
                                            daemon=True)
            self._writer.start()

    def write(self) -> None:
        """Write the textfile now; a failure is logged (once until it works again)."""
        if not self._textfile:
            return
        try:
            write_to_textfile(self._textfile, self._registry)
        except OSError as exc:
            if not self._write_failing:
                log.error("metrics_textfile_not_written", path=self._textfile, error=str(exc))
            self._write_failing = True
            return
        if self._write_failing:
            log.info("metrics_textfile_written_again", path=self._textfile)
        self._write_failing = False

    def _keep_writing(self) -> None:
        while not self._stop.wait(self._interval):
            self.write()

    def stop(self) -> None:
        """Stop serving and writing; the textfile gets a last write (what stopping left)."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(5)
        self.write()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
