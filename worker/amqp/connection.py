"""Broker connections: the one place that knows how to open one (nodes, heartbeat, TLS)."""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from kombu import Connection

from worker import logs
from worker.broker_urls import first_node, node_urls, spreads, with_port
from worker.config import Config

log = logs.get(__name__)

#: py-amqp's callbacks for RabbitMQ's connection.blocked (with a reason) and unblocked.
Blocked = Callable[[str], None]
Unblocked = Callable[[], None]
T = TypeVar("T")
__all__ = ["Nodes", "address", "connection_for", "first_node", "masked", "node_urls", "open_node",
           "spreads"]


def masked(url: str) -> str:
    """url with its password masked, for logs.

    By pattern, not by kombu's parser: that raises on a password with a bare "/" (read as
    a port), inside the very except block reporting the node, with part of the password
    in its message.
    """
    return logs.mask(url)


def address(url: str) -> str:
    """A node URL's ``host:port``, nothing of its credentials or vhost (memory:// is "memory")."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "memory":
        return "memory"
    return with_port(parts.netloc.rpartition("@")[2], parts.scheme)


def connection_for(cfg: Config, *, url: str | None = None, confirm: bool = False,
                   on_blocked: Blocked | None = None,
                   on_unblocked: Unblocked | None = None) -> Connection:
    """A kombu connection with heartbeats on (kombu's default negotiates them off).

    url is one node of cfg.transport_url; without it, the whole of it (kombu
    then fails over by itself, for the short-lived connections of the CLI).
    on_blocked(reason) and on_unblocked() are py-amqp's callbacks for RabbitMQ's
    connection.blocked/unblocked (py-amqp advertises the capability): kombu
    hands transport_options to ``amqp.Connection(...)`` as they are. They run
    on whichever thread reads the connection's frames.
    """
    url = ";".join(node_urls(cfg.transport_url)) if url is None else url
    options: dict[str, Any] = {"confirm_publish": confirm}
    if on_blocked is not None:
        options["on_blocked"] = on_blocked
    if on_unblocked is not None:
        options["on_unblocked"] = on_unblocked
    if url.startswith("memory://"):
        # The in-memory transport polls; keep its latency low for the demo.
        options = {"polling_interval": 0.005}
    tls: Any = None
    if cfg.rabbit.ssl_ca_file:
        tls = {"ca_certs": cfg.rabbit.ssl_ca_file, "cert_reqs": ssl.CERT_REQUIRED}
    elif url.startswith("amqps://"):
        tls = True  # the system's CA store
    return Connection(url, heartbeat=cfg.rabbit.heartbeat, transport_options=options,
                      connect_timeout=10, ssl=tls)


def open_node(cfg: Config, url: str, *, on_blocked: Blocked | None = None,
              on_unblocked: Unblocked | None = None) -> Connection:
    """connection_for(cfg, url=url), connected with one try; released again if that fails."""
    conn = connection_for(cfg, url=url, on_blocked=on_blocked, on_unblocked=on_unblocked)
    try:
        # No retries of kombu's own: Nodes tries the other nodes, reconnecting() backs off.
        conn.ensure_connection(max_retries=0)
    except Exception:
        conn.release()
        raise
    return conn


class Nodes(Generic[T]):
    """One connection's broker nodes, tried in turn, each open() starting after the last one used.

    open() tries every node once before it gives up (and reconnecting() backs
    off): with nodes a and b down, c is reached at once. A round starts after
    the node the connection was on last, which is the one that just failed.
    The consuming and the publishing connection keep a Nodes each, so each
    fails over on its own.
    """

    def __init__(self, urls: list[str], connect: Callable[[str], T], *, name: str,
                 start: int = 0) -> None:
        """connect(url) opens one node or raises; name prefixes the log events; the first
        round starts at urls[start] (first_node() says where)."""
        if not urls:
            raise ValueError("no broker URL")
        self.urls = urls
        self._connect = connect
        self._name = name
        self._start = start % len(urls)
        #: The node of the last open() that worked, its password masked ("" before any).
        self.current = ""
        #: The same node as ``host:port``, for labels and events ("" before any).
        self.address = ""

    def round(self) -> list[int]:
        """The order the next open() tries the nodes in, as indexes into urls."""
        return [(self._start + step) % len(self.urls) for step in range(len(self.urls))]

    def open(self) -> T:
        """The first node of the round that opens; the last node's error if none does."""
        error: Exception | None = None
        for index in self.round():
            try:
                conn = self._connect(self.urls[index])
            except Exception as exc:
                error = exc
                if len(self.urls) > 1:  # with one node, reconnecting() logs the error itself
                    log.warning(f"{self._name}_node_unreachable", url=masked(self.urls[index]),
                                error=f"{type(exc).__name__}: {exc}"[:300])
                continue
            self._start = (index + 1) % len(self.urls)
            self.current = masked(self.urls[index])
            self.address = address(self.urls[index])
            return conn
        assert error is not None
        raise error
