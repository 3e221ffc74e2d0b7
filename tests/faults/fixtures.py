"""The QEMU fixtures the faults and cluster tiers share: the domain type, tiny domains."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import libvirt
import pytest

from tests.domains import QEMU_URI, Vm, connection, define_vms, qemu_domain_type
from tests.faults.support import NAME_PREFIX, ensure_libvirtd, remove_vms


@pytest.fixture(scope="session")
def domain_type() -> str:
    """kvm where /dev/kvm works, else qemu (TCG); COMPUTE_WORKER_TEST_DOMAIN_TYPE forces one."""
    try:
        with connection(QEMU_URI) as conn:
            return qemu_domain_type(conn)
    except libvirt.libvirtError as exc:
        pytest.fail(f"libvirtd with QEMU is not reachable at {QEMU_URI} ({exc}); "
                    "run scripts/test.sh, which installs and starts it")


@pytest.fixture
def vms(domain_type: str) -> Iterator[Callable[[int], list[Vm]]]:
    """Factory for running 64 MiB, 1 vCPU QEMU domains with no OS; all removed afterwards."""
    made: list[Vm] = []

    def make(count: int) -> list[Vm]:
        with connection(QEMU_URI) as conn:
            return define_vms(conn, domain_type, count, made, prefix=NAME_PREFIX)

    yield make
    ensure_libvirtd()
    assert [] == remove_vms(made), "fault-test domains left behind"
