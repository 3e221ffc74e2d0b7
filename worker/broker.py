"""Broker connections: the one place that knows how to open one (heartbeat, TLS, confirms)."""

from __future__ import annotations

import ssl
from typing import Any

from kombu import Connection

from worker.config import Config


def connection_for(cfg: Config, *, confirm: bool = False) -> Connection:
    """A kombu connection with heartbeats on (kombu's default negotiates them off)."""
    options: dict[str, Any] = {"confirm_publish": confirm}
    if cfg.transport_url.startswith("memory://"):
        # The in-memory transport polls; keep its latency low for the demo.
        options = {"polling_interval": 0.005}
    tls: Any = None
    if cfg.ssl_ca_file:
        tls = {"ca_certs": cfg.ssl_ca_file, "cert_reqs": ssl.CERT_REQUIRED}
    elif cfg.transport_url.startswith("amqps://"):
        tls = True  # the system's CA store
    return Connection(cfg.transport_url, heartbeat=cfg.heartbeat, transport_options=options,
                      connect_timeout=10, ssl=tls)
