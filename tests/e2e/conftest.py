"""End-to-end fixtures: the worker in-process on qemu:///system, tiny no-OS QEMU domains."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import pytest

from tests.domains import QEMU_URI, Vm, define_vms, qemu_domain_type, remove_domain
from tests.e2e.support import NAME_PREFIX, Verbs
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt.hypervisor import start_event_loop


@pytest.fixture(scope="session")
def qemu() -> Iterator[libvirt.virConnect]:
    """A connection to libvirtd's QEMU driver; the test command starts it, so absence fails."""
    # The worker registers libvirt's event loop; do it before any connection opens.
    start_event_loop()
    try:
        conn = libvirt.open(QEMU_URI)
        conn.getDomainCapabilities(None, "x86_64", None, "qemu", 0)
    except libvirt.libvirtError as exc:
        pytest.fail(f"libvirtd with QEMU is not reachable at {QEMU_URI} ({exc}); "
                    "run scripts/test.sh, which installs and starts it")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def domain_type(qemu: libvirt.virConnect) -> str:
    """kvm where /dev/kvm works, else qemu (TCG); the tests pass on either."""
    return qemu_domain_type(qemu)


@pytest.fixture
def cfg(make_config: Callable[..., Config]) -> Config:
    """The per-test config on qemu:///system, with short waits for guests that never answer."""
    return make_config(virt_type="qemu", soft_reboot_timeout=2, shutdown_timeout=2,
                       max_concurrent_ops=4, libvirt_retry_seconds=5)


@pytest.fixture
def vms(qemu: libvirt.virConnect, domain_type: str) -> Iterator[Callable[..., list[Vm]]]:
    """Factory for tiny QEMU domains (started unless told not); all removed after the test."""
    made: list[Vm] = []

    def make(count: int = 1, *, start: bool = True) -> list[Vm]:
        return define_vms(qemu, domain_type, count, made, prefix=NAME_PREFIX, start=start)

    yield make
    # Destroying a QEMU domain takes about two seconds here: remove them side by side.
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(_removal_failure, [qemu] * len(made), made))
    assert [] == [failure for failure in outcomes if failure], "test domains left behind"


def _removal_failure(conn: libvirt.virConnect, vm: Vm) -> str | None:
    try:
        remove_domain(conn, vm.uuid)
    except libvirt.libvirtError as exc:
        return f"{vm.name}: {exc}"
    return None


@pytest.fixture
def worker(cfg: Config, tap: EventTap, vms: Callable[..., list[Vm]]) -> Iterator[Service]:
    """A started worker on qemu:///system; stopped before the test's domains are removed."""
    assert QEMU_URI == cfg.libvirt_uri
    service = Service(cfg)
    service.start()
    yield service
    service.stop(grace=30)


@pytest.fixture
def verb(worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config) -> Verbs:
    """Casts verbs at the running worker and checks their start and end events."""
    return Verbs(rpc, tap, cfg)


@pytest.fixture
def instances(worker: Service) -> Path:
    """The worker's instances_path."""
    return worker.paths.root
