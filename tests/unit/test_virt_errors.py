"""libvirt errors to the worker's own, from real errors provoked on libvirt's test driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from worker.errors import HypervisorError, HypervisorUnavailable, InstanceNotFound, WorkerError
from worker.virt.errors import is_connection_error, libvirt_errors, translate

DOMAIN_UUID = "11111111-2222-3333-4444-555555555555"
MISSING = "00000000-0000-0000-0000-000000000000"
NODE_XML = f"""<node>
  <domain type="test">
    <name>t1</name>
    <uuid>{DOMAIN_UUID}</uuid>
    <memory>65536</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
"""


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[libvirt.virConnect]:
    """A test-driver connection with private state: one running domain, t1."""
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML, encoding="utf-8")
    connection = libvirt.open(f"test://{node}")
    yield connection
    connection.close()


def provoke(call: Callable[[], Any]) -> libvirt.libvirtError:
    """The libvirtError that call raises."""
    with pytest.raises(libvirt.libvirtError) as caught:
        call()
    return caught.value


def test_missing_domain_is_instance_not_found(conn: libvirt.virConnect) -> None:
    """VIR_ERR_NO_DOMAIN from a UUID lookup becomes InstanceNotFound for that UUID."""
    exc = provoke(lambda: conn.lookupByUUIDString(MISSING))
    assert libvirt.VIR_ERR_NO_DOMAIN == exc.get_error_code()

    translated = translate(exc, MISSING)

    assert isinstance(translated, InstanceNotFound)
    assert MISSING == translated.uuid
    assert is_connection_error(exc) is False


def test_missing_domain_without_a_uuid_is_a_hypervisor_error(conn: libvirt.virConnect) -> None:
    """Without a UUID to name, a NO_DOMAIN error stays a HypervisorError with its code."""
    exc = provoke(lambda: conn.lookupByName("nope"))

    translated = translate(exc)

    assert HypervisorError is type(translated)
    assert libvirt.VIR_ERR_NO_DOMAIN == translated.code


@pytest.mark.parametrize(("verb", "code"), [
    (lambda d: d.create(), libvirt.VIR_ERR_INTERNAL_ERROR),
    (lambda d: d.resume(), libvirt.VIR_ERR_INTERNAL_ERROR),
    (lambda d: d.setMemory(10**12), libvirt.VIR_ERR_INVALID_ARG),
    (lambda d: d.attachDevice("<disk type='file'/>"), libvirt.VIR_ERR_NO_SUPPORT),
], ids=["start a running domain", "resume a running domain", "memory above max",
        "attach on the test driver"])
def test_refused_operation_is_a_hypervisor_error(conn: libvirt.virConnect, verb: Any,
                                                 code: int) -> None:
    """A call libvirt refuses on a live connection is HypervisorError with libvirt's code."""
    exc = provoke(lambda: verb(conn.lookupByName("t1")))

    translated = translate(exc, DOMAIN_UUID)

    assert HypervisorError is type(translated)
    assert code == translated.code
    assert exc.get_error_message() == translated.message
    assert is_connection_error(exc) is False


def test_internal_error_from_the_domain_driver_is_not_a_lost_connection(
        conn: libvirt.virConnect) -> None:
    """INTERNAL_ERROR counts as a lost connection only from REMOTE or RPC, not the driver."""
    exc = provoke(lambda: conn.lookupByName("t1").create())

    assert (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_TEST) == (
        exc.get_error_code(), exc.get_error_domain())
    assert is_connection_error(exc) is False


def test_read_only_refusal_is_a_hypervisor_error(tmp_path: Path) -> None:
    """A write on a read-only connection is refused as a HypervisorError."""
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML, encoding="utf-8")
    ro = libvirt.openReadOnly(f"test://{node}")
    try:
        exc = provoke(lambda: ro.lookupByName("t1").destroy())
    finally:
        ro.close()

    assert libvirt.VIR_ERR_OPERATION_DENIED == exc.get_error_code()
    assert HypervisorError is type(translate(exc, DOMAIN_UUID))


def test_socket_that_is_not_there_is_unavailable(tmp_path: Path) -> None:
    """A remote URI whose socket does not exist: SYSTEM_ERROR from RPC, i.e. unavailable."""
    exc = provoke(lambda: libvirt.open(f"test+unix:///default?socket={tmp_path}/no-sock"))

    assert (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC) == (
        exc.get_error_code(), exc.get_error_domain())
    assert is_connection_error(exc) is True
    assert isinstance(translate(exc, DOMAIN_UUID), HypervisorUnavailable)


def test_closed_connection_is_unavailable(tmp_path: Path) -> None:
    """A call on a closed connection is INVALID_CONN, i.e. unavailable, even naming a UUID."""
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML, encoding="utf-8")
    closed = libvirt.open(f"test://{node}")
    closed.close()

    exc = provoke(lambda: closed.lookupByUUIDString(MISSING))

    assert libvirt.VIR_ERR_INVALID_CONN == exc.get_error_code()
    assert is_connection_error(exc) is True
    assert isinstance(translate(exc, MISSING), HypervisorUnavailable)


def test_context_manager_raises_the_translation_without_chaining(
        conn: libvirt.virConnect) -> None:
    """libvirt_errors() raises the WorkerError with no libvirt exception chained to it."""
    with pytest.raises(WorkerError) as caught, libvirt_errors(MISSING):
        conn.lookupByUUIDString(MISSING)

    assert isinstance(caught.value, InstanceNotFound)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


def test_context_manager_lets_other_exceptions_through() -> None:
    """Non-libvirt exceptions pass through libvirt_errors() unchanged."""
    original = KeyError("k")

    with pytest.raises(KeyError) as caught, libvirt_errors(MISSING):
        raise original

    assert original is caught.value
