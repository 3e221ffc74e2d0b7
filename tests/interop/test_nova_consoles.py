"""nova's own ComputeAPI reads a console, gets a VNC console, rescues and unrescues (QEMU)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import QEMU_URI, connection, remove_domains
from tests.guest_image import GUEST_DOMAIN_TYPE, make_guest_image
from tests.helpers import check_event
from tests.interop.nova import EXCHANGE, HOST, nova_context
from tests.taps import EventTap
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.interop
# The rescue image is named by a UUID: nova's rescue_image_ref is a UUIDField (glance ids).
GUEST, RESCUE = "guest-image", "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


@pytest.fixture
def cfg(make_config: Callable[..., Config]) -> Config:
    """A worker on nova's exchange and host, on QEMU (TCG: the test guest boots faster there),
    with the two guest images stored."""
    config = make_config(virt_type=GUEST_DOMAIN_TYPE, shutdown_timeout=1, control_exchange=EXCHANGE,
                         host=HOST)
    store = Path(config.images_path)
    store.mkdir(parents=True)
    make_guest_image(store / GUEST, "nova guest up")
    make_guest_image(store / RESCUE, "nova rescue up")
    return config


@pytest.fixture
def built() -> Iterator[list[str]]:
    """UUIDs built through nova's client; their domains are removed afterwards."""
    made: list[str] = []
    yield made
    remove_domains(QEMU_URI, made)


def _instance(uid: str) -> Any:
    from nova import objects

    flavor = objects.Flavor(id=1, flavorid="1", name="tiny", memory_mb=64, vcpus=1, root_gb=0,
                            ephemeral_gb=0, swap=0, extra_specs={})
    return objects.Instance(uuid=uid, host=HOST, node=HOST, display_name="nova-vm",
                            hostname="nova-vm", flavor=flavor, memory_mb=64, vcpus=1,
                            root_gb=0, ephemeral_gb=0, image_ref=GUEST, vm_state="building",
                            task_state="spawning", user_id="user-1", project_id="project-1",
                            metadata={}, system_metadata={}, power_state=0)


def _definition(uid: str) -> bytes:
    with connection(QEMU_URI) as conn:
        xml = conn.lookupByUUIDString(uid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    parser = etree.XMLParser(remove_blank_text=True)
    return bytes(etree.tostring(etree.fromstring(xml.encode(), parser), method="c14n"))


def test_nova_reads_the_console_and_rescues_and_unrescues_an_instance(
        nova: Any, cfg: Config, worker: Service, tap: EventTap, built: list[str]) -> None:
    """nova's get_console_output, get_vnc_console, rescue_instance and unrescue_instance,
    each answered or evented as nova's own manager would; errors as nova's classes."""
    from nova import exception, objects

    api, ctxt, uid = nova.ComputeAPI(), nova_context(), str(uuid.uuid4())
    built.append(uid)
    instance = _instance(uid)
    api.build_and_run_instance(
        ctxt, instance, host=HOST, image={"id": GUEST}, request_spec=None,
        filter_properties={}, requested_networks=objects.NetworkRequestList(objects=[]),
        security_groups=[], block_device_mapping=objects.BlockDeviceMappingList(objects=[]),
        node=HOST, limits={}, host_list=[], accel_uuids=[])
    tap.wait_type(uid, "instance.create.end", timeout=60)

    deadline = time.monotonic() + 20
    while "nova guest up" not in api.get_console_output(ctxt, instance, 5):
        assert time.monotonic() < deadline, "the guest's marker never reached nova"
        time.sleep(0.2)
    info = api.get_vnc_console(ctxt, instance, "novnc")
    assert ("127.0.0.1", None) == (info["host"], info["access_url"])
    assert 5900 <= info["port"] < 65536
    with pytest.raises(exception.ConsoleTypeInvalid):
        api.get_vnc_console(ctxt, instance, "spice")

    before = _definition(uid)
    api.rescue_instance(ctxt, instance, "secret", rescue_image_ref=RESCUE, clean_shutdown=True)
    rescued = tap.wait_type(uid, "instance.rescue.end", timeout=60)[0]["payload"]
    assert ("InstanceActionRescuePayload", "rescued", RESCUE) == (
        rescued["nova_object.name"], rescued["nova_object.data"]["state"],
        rescued["nova_object.data"]["rescue_image_ref"])
    api.unrescue_instance(ctxt, instance)
    done = tap.wait_type(uid, "instance.unrescue.end", timeout=60)[0]["payload"]
    assert "active" == done["nova_object.data"]["state"]
    assert before == _definition(uid)
    for event in tap.of(uid):
        check_event(event)
