"""Fixtures on real parts: RabbitMQ on localhost, libvirt's test driver, the worker in-process."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import libvirt
import pytest
import structlog
from kombu import Connection
from structlog.testing import capture_logs

from tests.brokers import delete_names, notification_names, service_names
from tests.domains import TEST_URI, Vm, define_vms, remove_domains
from tests.taps import EventTap
from worker import config as config_mod
from worker import logs
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service

BROKER_URL = os.environ.get("COMPUTE_WORKER_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")

logs.setup("warning", "json")
# Loggers stay uncached, so that info_logs can lower the level for one test: a cached
# logger keeps the level it was first used at.
structlog.configure(cache_logger_on_first_use=False)


@pytest.fixture(autouse=True)
def _fresh_log_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def info_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log event from info up while the test runs (the suite logs warnings and worse)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


@pytest.fixture(scope="session")
def broker_url() -> str:
    """A reachable RabbitMQ; the README's test command starts one, so absence is a failure."""
    try:
        with Connection(BROKER_URL, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=2, timeout=5)
    except Exception as exc:
        pytest.fail(f"RabbitMQ is not reachable at {BROKER_URL} ({exc}); "
                    "run scripts/test.sh, which starts it")
    return BROKER_URL


@pytest.fixture
def make_config(tmp_path: Path, broker_url: str) -> Iterator[Callable[..., Config]]:
    """Config factory with private names (exchange, host, topic) and private dirs per test.

    Afterwards the names are deleted from the broker: the event queues keep
    every event nobody consumed, and a shared broker would pile them up.
    """
    tag = uuid.uuid4().hex[:10]
    made: list[Config] = []

    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "host": f"host-{tag}",
            "transport_url": broker_url,
            "control_exchange": f"nova_{tag}",
            "notification_topic": f"notifications_{tag}",
            "virt_type": "test",
            "instances_path": str(tmp_path / "instances"),
            "images_path": str(tmp_path / "images"),
            "state_dir": str(tmp_path / "state"),
            "heartbeat": 10,
            "confirm_timeout": 10,
            # Off unless a test asks: many workers at once cannot share one port.
            "metrics_listen": "",
        }
        values.update(overrides)
        made.append(config_mod.load(None, values, environ={}))
        return made[-1]

    yield make
    # Only on the shared broker: a test's private node is gone with its queues by now.
    mine = [cfg for cfg in made if cfg.transport_url == broker_url]
    if mine:
        delete_names(broker_url,
                     [q for cfg in mine for q in service_names(cfg, []) + notification_names(cfg)],
                     {cfg.control_exchange for cfg in mine}, exchange_prefixes=("nova_",))


@pytest.fixture
def fast_path() -> bool:
    """The worker's fast_path option; a module parametrizes it to run on kombu's path too."""
    return True


@pytest.fixture
def cfg(make_config: Callable[..., Config], fast_path: bool) -> Config:
    """The default per-test config (test driver, real broker)."""
    return make_config(fast_path=fast_path)


@pytest.fixture
def tap(cfg: Config) -> Iterator[EventTap]:
    """Every event the worker of this test publishes."""
    event_tap = EventTap(cfg.transport_url, cfg.control_exchange,
                         cfg.notifications.notification_topic)
    yield event_tap
    event_tap.close()


@pytest.fixture
def worker(cfg: Config, tap: EventTap) -> Iterator[Service]:
    """A started worker service for cfg, stopped after the test."""
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    service.start()
    yield service
    service.stop(grace=10)


@pytest.fixture
def rpc(cfg: Config) -> Iterator[RpcClient]:
    """A client for cfg's exchange."""
    with Connection(cfg.transport_url) as conn:
        yield RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)


@pytest.fixture(scope="session")
def test_driver() -> Iterator[libvirt.virConnect]:
    """Holds test:///default open: its shared state lives only while a connection does."""
    conn = libvirt.open(TEST_URI)
    yield conn
    conn.close()


@pytest.fixture
def domains(test_driver: libvirt.virConnect) -> Iterator[Callable[[int], list[str]]]:
    """Factory for running domains on test:///default, removed after the test."""
    made: list[Vm] = []

    def make(count: int = 1) -> list[str]:
        return [vm.uuid for vm in define_vms(test_driver, "test", count, made, prefix="cw-test-")]

    yield make
    remove_domains(TEST_URI, [vm.uuid for vm in made])
