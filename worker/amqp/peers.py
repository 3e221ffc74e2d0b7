"""Calls to other hosts' workers over the broker, as nova's compute client makes them.

Each call opens its own short connection: migrations are rare and a call may
wait minutes (pre_live_migration fetches images), so no connection is shared
between verb threads, and a broken one is never reused. Messages go to the
other host's ``<topic>-alt.<host>`` queue, where nova 6.5 sends its migration
calls, so they do not wait behind a backlog of casts on the host queue.
"""

from __future__ import annotations

from typing import Any

import amqp.exceptions
import kombu.exceptions

from worker import logs
from worker.amqp.client import CallTimeout, RemoteError, RpcClient
from worker.amqp.connection import connection_for
from worker.amqp.topology import durable
from worker.config import Config
from worker.errors import PeerError, PeerFailed, PeerTimeout

log = logs.get(__name__)
#: What a broker that cannot be reached raises through kombu and py-amqp.
_UNREACHABLE = (OSError, kombu.exceptions.KombuError, amqp.exceptions.AMQPError)
#: The RPC version the peer messages say: nova 34's client sends these as 6.0.
VERSION = "6.0"


class AmqpPeers:
    """worker.core.peers.Peers on the control exchange of this worker's broker."""

    def __init__(self, cfg: Config, *, signing_key: bytes | None = None) -> None:
        self.cfg = cfg
        self._key = signing_key
        self._topic = f"{cfg.topic}-alt"

    def _client(self, conn: Any) -> RpcClient:
        return RpcClient(conn, exchange=self.cfg.control_exchange, topic=self._topic,
                         durable=durable(self.cfg), signing_key=self._key)

    def call(self, host: str, method: str, args: dict[str, Any], *, timeout: float,
             request_id: str | None = None) -> Any:
        context = {"request_id": request_id} if request_id else None
        log.info("peer_call", peer=host, peer_method=method, timeout=timeout)
        try:
            with connection_for(self.cfg) as conn:
                return self._client(conn).call(host, method, args, timeout=timeout,
                                                version=VERSION, context=context)
        except RemoteError as exc:
            raise PeerFailed(host, method, exc.failure) from None
        except CallTimeout:
            raise PeerTimeout(f"no answer from {host} to {method} within {timeout:g} s",
                              host=host) from None
        except _UNREACHABLE as exc:
            raise PeerError(f"cannot reach the broker to call {method} on {host}: "
                            f"{type(exc).__name__}", host=host) from None

    def cast(self, host: str, method: str, args: dict[str, Any], *,
             request_id: str | None = None) -> None:
        context = {"request_id": request_id} if request_id else None
        log.info("peer_cast", peer=host, peer_method=method)
        try:
            with connection_for(self.cfg) as conn:
                self._client(conn).cast(host, method, args, version=VERSION, context=context)
        except _UNREACHABLE as exc:
            raise PeerError(f"cannot reach the broker to cast {method} to {host}: "
                            f"{type(exc).__name__}", host=host) from None
