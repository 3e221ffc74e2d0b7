"""A transport URL's broker nodes, in both forms deployments write (ground floor: no kombu)."""

from __future__ import annotations

import urllib.parse
import zlib

#: The AMQP port oslo gives a host written without one; amqps:// (TLS) is on 5671.
DEFAULT_PORT = 5672
TLS_PORT = 5671


def node_urls(transport_url: str) -> list[str]:
    """The broker nodes of a transport URL, one kombu URL each, in the order written.

    Both forms a deployment writes: oslo's ``rabbit://u:p@h1:p1,u:p@h2:p2/vhost`` (one
    URL, hosts comma-separated, turned into ``amqp://u:p@h1:p1/vhost;...`` as oslo's
    driver does) and kombu's ``url1;url2;...``. ``rabbit://`` is oslo's name for
    ``amqp://``; a host without a port is on 5672 (amqps: 5671).
    """
    nodes: list[str] = []
    for url in (part.strip() for part in transport_url.split(";")):
        if url:
            nodes.extend(_expanded(url))
    return nodes


def spreads(transport_url: str) -> bool:
    """Whether the URL is oslo's comma form, whose hosts a fleet spreads its connections over.

    oslo shuffles those hosts in every process so that a fleet does not pile onto
    the first; kombu's ``;`` list is kept in the order written, as kombu keeps it.
    """
    return any("," in urllib.parse.urlsplit(part.strip()).netloc
               for part in transport_url.split(";") if "://" in part)


def first_node(transport_url: str, host: str, role: int = 0) -> int:
    """Where a connection's first round starts: 0, or for oslo's form a place by host.

    oslo shuffles; a rotation by a hash of the host spreads a fleet as evenly and
    keeps each host's order the same from one start to the next (logs and tests
    can tell which node it will try). role 1 (the publisher) starts one node on
    from role 0 (the consumer), so one node's loss costs a host one connection.
    """
    count = len(node_urls(transport_url))
    if count < 2 or not spreads(transport_url):
        return 0
    return (zlib.crc32(host.encode("utf-8")) + role) % count


def _expanded(url: str) -> list[str]:
    """One written URL as kombu URLs: a comma list of hosts is one URL per host."""
    parts = urllib.parse.urlsplit(url)
    scheme = "amqp" if parts.scheme in ("rabbit", "kombu+rabbit") else parts.scheme
    if parts.scheme == scheme and "," not in parts.netloc:
        return [url]
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    nodes = []
    for host in (item for item in parts.netloc.split(",") if item):
        credentials, at, address = host.rpartition("@")
        # oslo's default port, where kombu would pick its own.
        nodes.append(f"{scheme}://{credentials}{at}{with_port(address, scheme)}{tail}")
    return nodes


def with_port(host: str, scheme: str = "amqp") -> str:
    """``host`` or ``[v6]`` with the default port added when it has none (5671 for amqps)."""
    has_port = "]:" in host if host.startswith("[") else ":" in host
    return host if has_port else f"{host}:{TLS_PORT if scheme == 'amqps' else DEFAULT_PORT}"
