"""Broker connections: the one place that knows how to open one (heartbeat, TLS, confirms)."""

from __future__ import annotations

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
    if cfg.ssl_ca_file:
        tls = {"ca_certs": cfg.ssl_ca_file, "cert_reqs": ssl.CERT_REQUIRED}
    elif cfg.transport_url.startswith("amqps://"):
        tls = True  # the system's CA store
    return Connection(cfg.transport_url, heartbeat=cfg.heartbeat, transport_options=options,
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
