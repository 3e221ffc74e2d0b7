"""Fixtures for the interop tier: an in-process worker driven by unmodified oslo.messaging."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import oslo_messaging
import pytest
from kombu import Connection, Exchange, Queue

from tests.domains import QEMU_URI, Vm, connection, define_vms, qemu_domain_type, remove_domains
from tests.interop.nova import EXCHANGE
from tests.interop.support import (
    Recorder,
    notification_listener,
    rpc_client,
    rpc_transport,
)
from worker.config import Config
from worker.service import Service


def _delete_names(service: Service) -> None:
    """Remove the queues and exchange a test's worker and listener declared on the broker."""
    cfg = service.cfg
    queues = [f"{cfg.topic}.{cfg.host}", f"{cfg.topic}_fanout_{service.consumer.fanout_unique}",
              f"{cfg.notifications.notification_topic}.info",
              f"{cfg.notifications.notification_topic}.error"]
    if cfg.shared_queue:
        queues.append(cfg.topic)
    with Connection(cfg.transport_url, connect_timeout=5) as conn:
        channel = conn.channel()
        for name in queues:
            Queue(name, channel=channel).delete()
        if cfg.control_exchange != "nova":  # the real name is shared: leave it
            Exchange(cfg.control_exchange, channel=channel).delete()


@pytest.fixture
def start_worker(cfg: Config) -> Iterator[Callable[..., Service]]:
    """Starts in-process workers (as tests/conftest.py's worker fixture does); stops them after."""
    started: list[Service] = []

    def start(config: Config | None = None) -> Service:
        service = Service(config or cfg, retry_sleep=lambda _s: None)
        service.start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        if not service.stopped.is_set():  # a test may have stopped one itself
            service.stop(grace=10)
    for service in started:
        _delete_names(service)


@pytest.fixture
def worker(start_worker: Callable[..., Service]) -> Service:
    """A started worker for cfg (no event tap: oslo's listener is the consumer here)."""
    return start_worker()


@pytest.fixture
def transport(cfg: Config) -> Iterator[oslo_messaging.Transport]:
    """oslo's RPC transport for cfg's broker and control exchange."""
    with rpc_transport(cfg) as oslo_transport:
        yield oslo_transport


@pytest.fixture
def client(transport: oslo_messaging.Transport, cfg: Config) -> oslo_messaging.RPCClient:
    """oslo.messaging RPCClient(Target(topic='compute', server=<host>, version='1.0'))."""
    return rpc_client(transport, cfg)


@pytest.fixture
def listener(cfg: Config, worker: Service) -> Iterator[Recorder]:
    """oslo's notification listener on cfg's topic, started after the worker; its events."""
    recorder = Recorder()
    with notification_listener(cfg, recorder):
        yield recorder


@pytest.fixture(scope="session")
def domain_type() -> str:
    """kvm where /dev/kvm works, else qemu (TCG); COMPUTE_WORKER_TEST_DOMAIN_TYPE forces one."""
    with connection(QEMU_URI) as conn:
        return qemu_domain_type(conn)


@pytest.fixture
def qemu_domains(domain_type: str) -> Iterator[Callable[[int], list[str]]]:
    """Factory for running tiny no-OS domains (64 MiB, 1 vCPU) on qemu:///system; removed after."""
    made: list[Vm] = []

    def make(count: int = 1) -> list[str]:
        with connection(QEMU_URI) as conn:
            new = define_vms(conn, domain_type, count, made, prefix="cw-interop-")
        return [vm.uuid for vm in new]

    yield make
    remove_domains(QEMU_URI, [vm.uuid for vm in made])


@pytest.fixture(scope="session")
def nova_conf(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> Iterator[Any]:
    """nova's CONF parsed once (it is global) from a file with our broker and exchange."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nova's imports warn about eventlet and friends
        from nova import config, objects, rpc
    conf = tmp_path_factory.mktemp("nova") / "nova.conf"
    conf.write_text(f"[DEFAULT]\ntransport_url = {broker_url.replace('amqp://', 'rabbit://')}\n"
                    f"control_exchange = {EXCHANGE}\n[upgrade_levels]\ncompute = 6.0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config.parse_args(["nova-test", "--config-file", str(conf)], configure_db=False)
        objects.register_all()
    yield config.CONF
    rpc.cleanup()


@pytest.fixture(params=["6.0", "6.5"], ids=["cap 6.0", "cap 6.5"])
def nova(request: pytest.FixtureRequest, nova_conf: Any) -> Iterator[Any]:
    """nova's rpcapi module, its ComputeAPI capped at 6.0 or at 6.5 ([upgrade_levels])."""
    from nova.compute import rpcapi

    nova_conf.set_override("compute", request.param, group="upgrade_levels")
    yield rpcapi
    nova_conf.clear_override("compute", group="upgrade_levels")
