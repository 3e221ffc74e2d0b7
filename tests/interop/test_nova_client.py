"""nova's own compute client drives the worker: nova 34's ComputeAPI, no database, real QEMU.

nova's ``rpcapi.ComputeAPI`` with ``[upgrade_levels] compute`` pinned needs no database;
it casts and calls with nova's objects (Instance, Flavor, BlockDeviceMappingList) exactly as
a conductor would. Every event the worker publishes is judged by nova's own notification
classes (tests.helpers.check_event), and a failure comes back as nova's exception.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import (
    QEMU_URI,
    TEST_URI,
    Vm,
    connection,
    define_vms,
    qemu_domain_type,
    remove_domains,
    state_of,
)
from tests.helpers import check_event
from tests.interop.nova import EXCHANGE, HOST, nova_context
from tests.taps import EventTap
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.interop
@pytest.fixture(params=["qemu", "test"], ids=["qemu:///system", "test driver"])
def cfg(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Config:
    """A worker on nova's exchange and host (real QEMU, or libvirt's test driver)."""
    return make_config(virt_type=request.param, soft_reboot_timeout=2, shutdown_timeout=2,
                       control_exchange=EXCHANGE, host=HOST)


def _uri(cfg: Config) -> str:
    return QEMU_URI if cfg.libvirt.virt_type == "qemu" else TEST_URI


def _instance(uid: str) -> Any:
    """An Instance as nova's conductor has it for a new server (64 MiB, 1 vCPU, no image)."""
    from nova import objects

    flavor = objects.Flavor(id=1, flavorid="1", name="tiny", memory_mb=64, vcpus=1, root_gb=0,
                            ephemeral_gb=0, swap=0, extra_specs={})
    return objects.Instance(uuid=uid, host=HOST, node=HOST, display_name="nova-vm",
                            hostname="nova-vm", flavor=flavor, memory_mb=64, vcpus=1,
                            root_gb=0, ephemeral_gb=0, image_ref="", vm_state="building",
                            task_state="spawning", user_id="user-1", project_id="project-1",
                            metadata={}, system_metadata={}, power_state=0)


@pytest.fixture
def built(cfg: Config) -> Iterator[list[str]]:
    """UUIDs built through nova's client; their domains are removed afterwards."""
    made: list[str] = []
    yield made
    if cfg.libvirt.virt_type == "qemu":  # the test driver's state ends with the worker
        remove_domains(QEMU_URI, made)


def _ends(tap: EventTap, uid: str, action: str, count: int) -> dict[str, Any]:
    ends = tap.wait_type(uid, f"instance.{action}.end", count=count, timeout=60)
    data: dict[str, Any] = ends[-1]["payload"]["nova_object.data"]
    return data


def test_nova_compute_api_drives_every_verb(
        nova: Any, cfg: Config, worker: Service, tap: EventTap, built: list[str]) -> None:
    """build, pause, unpause, suspend, resume, reboot SOFT and HARD, stop, start, terminate."""
    from nova import objects

    api, ctxt, uid = nova.ComputeAPI(), nova_context(), str(uuid.uuid4())
    built.append(uid)
    instance = _instance(uid)
    api.build_and_run_instance(
        ctxt, instance, host=HOST, image=None, request_spec=None, filter_properties={},
        requested_networks=objects.NetworkRequestList(objects=[]), security_groups=[],
        block_device_mapping=objects.BlockDeviceMappingList(objects=[]), node=HOST,
        limits={}, host_list=[], accel_uuids=[])
    created = _ends(tap, uid, "create", 1)
    assert ("running", "active", "nova-vm", "tiny") == (
        created["power_state"], created["state"], created["display_name"],
        created["flavor"]["nova_object.data"]["name"])
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(_uri(cfg), uid)

    steps: list[tuple[str, Callable[[], None], str, str, int | None]] = [
        ("pause", lambda: api.pause_instance(ctxt, instance), "paused", "paused",
         libvirt.VIR_DOMAIN_PAUSED),
        ("unpause", lambda: api.unpause_instance(ctxt, instance), "running", "active",
         libvirt.VIR_DOMAIN_RUNNING),
        ("suspend", lambda: api.suspend_instance(ctxt, instance), "shutdown", "suspended",
         libvirt.VIR_DOMAIN_SHUTOFF),
        ("resume", lambda: api.resume_instance(ctxt, instance), "running", "active",
         libvirt.VIR_DOMAIN_RUNNING),
        ("reboot", lambda: api.reboot_instance(ctxt, instance, None, "SOFT"), "running",
         "active", libvirt.VIR_DOMAIN_RUNNING),
        ("reboot", lambda: api.reboot_instance(ctxt, instance, None, "HARD"), "running",
         "active", libvirt.VIR_DOMAIN_RUNNING),
        ("power_off", lambda: api.stop_instance(ctxt, instance), "shutdown", "stopped",
         libvirt.VIR_DOMAIN_SHUTOFF),
        ("power_on", lambda: api.start_instance(ctxt, instance), "running", "active",
         libvirt.VIR_DOMAIN_RUNNING),
        ("delete", lambda: api.terminate_instance(
            ctxt, instance, objects.BlockDeviceMappingList(objects=[])), "", "deleted", None),
    ]
    counts: dict[str, int] = {}
    for action, send, power, state, libvirt_state in steps:
        counts[action] = counts.get(action, 0) + 1
        send()
        data = _ends(tap, uid, action, counts[action])
        assert (power or None, state) == (data["power_state"], data["state"]), action
        assert ("project-1", "user-1") == (data["tenant_id"], data["action_initiator_user"])
        assert libvirt_state == state_of(_uri(cfg), uid), action
    starts = {e["event_type"] for e in tap.of(uid)}
    assert {f"instance.{a}.start" for a in counts} | {"instance.create.start"} <= starts
    for event in tap.events:
        check_event(event)  # schemas/events and nova's own classes


def test_a_call_on_a_missing_instance_raises_nova_s_own_exception(
        nova: Any, worker: Service) -> None:
    """stop_instance(do_cast=False) is a call: nova's client raises nova.exception's class."""
    from nova import exception

    missing = str(uuid.uuid4())
    with pytest.raises(exception.InstanceNotFound) as caught:
        nova.ComputeAPI().stop_instance(nova_context(), _instance(missing), do_cast=False)
    assert f"Instance {missing} could not be found." == str(caught.value).strip()


def test_every_nova_sample_message_decodes_and_fits_its_schema_or_is_refused_clearly() -> None:
    """What nova 34's client sent for each method this worker serves passes its schema."""
    import json

    from handlers.registry import TABLE
    from worker.codec.envelope import Request
    from worker.codec.nova_objects import plain_args
    from worker.core.schemas import check_args

    samples = json.loads((Path(__file__).parents[1] / "nova-wire-samples.json").read_text())
    served = 0
    for sample in samples["messages"]:
        message = sample["message"]
        method = TABLE.methods.get(message["method"])
        assert method is not None, f"nova's {message['method']} is not served"
        request = Request(message["method"], message["args"], version=message["version"])
        assert method is TABLE.lookup(request)
        plain_args(check_args(method.schema, message["args"]))
        served += 1
    assert served == len(samples["messages"]) == 27


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A loop device on an 8 MiB file (under the default /dev/loop prefix), detached after."""
    image = tmp_path / "loop.img"
    with open(image, "wb") as handle:
        handle.truncate(8 << 20)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


def _serials(uid: str, flags: int) -> list[str | None]:
    """The disk serials of a QEMU domain: live (flags 0) or its definition (INACTIVE)."""
    with connection(QEMU_URI) as conn:
        xml = conn.lookupByUUIDString(uid).XMLDesc(flags)
    return [s.text for s in etree.fromstring(xml).iterfind("devices/disk/serial")]


# QEMU only: libvirt's test driver cannot attach or detach devices.
@pytest.mark.parametrize("cfg", ["qemu"], indirect=True, ids=["qemu:///system"])
def test_nova_reserves_attaches_and_detaches_a_volume_live(
        nova: Any, cfg: Config, worker: Service, tap: EventTap, loop_device: str) -> None:
    """reserve_block_device_name answers nova's BDM object; nova sends it back to attach."""
    from nova import objects

    made: list[Vm] = []
    try:
        with connection(QEMU_URI) as conn:
            (vm,) = define_vms(conn, qemu_domain_type(conn), 1, made, prefix="cw-nova-vol-")
        api, ctxt, volume_id = nova.ComputeAPI(), nova_context(), str(uuid.uuid4())
        # nova's Instance has no settable name: the worker finds the domain by uuid.
        instance = objects.Instance(uuid=vm.uuid, host=HOST, node=HOST, vm_state="active",
                                    task_state=None)

        bdm = api.reserve_block_device_name(ctxt, instance, None, volume_id, disk_bus="scsi",
                                            device_type="disk", tag=None, multiattach=False)

        assert isinstance(bdm, objects.BlockDeviceMapping)
        assert ("/dev/sda", volume_id, vm.uuid) == (bdm.device_name, bdm.volume_id,
                                                    bdm.instance_uuid)
        bdm.connection_info = json.dumps({"driver_volume_type": "local",
                                          "data": {"device_path": loop_device},
                                          "serial": volume_id})
        api.attach_volume(ctxt, instance, bdm)
        attached = tap.wait_type(vm.uuid, "instance.volume_attach.end", timeout=60)[0]
        assert [volume_id] == _serials(vm.uuid, 0)
        assert [volume_id] == _serials(vm.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE)

        api.detach_volume(ctxt, instance, volume_id, attachment_id=str(uuid.uuid4()))
        detached = tap.wait_type(vm.uuid, "instance.volume_detach.end", timeout=60)[0]
        assert [] == _serials(vm.uuid, 0)
        assert [] == _serials(vm.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE)
        for event in (attached, detached):
            check_event(event)
            assert volume_id == event["payload"]["nova_object.data"]["volume_id"]
    finally:
        remove_domains(QEMU_URI, [v.uuid for v in made])


# QEMU only, as volumes: the test driver has no nwfilters and cannot attach devices.
@pytest.mark.parametrize("cfg", ["qemu"], indirect=True, ids=["qemu:///system"])
def test_nova_attaches_an_interface_and_gets_the_vif_back(
        nova: Any, cfg: Config, make_config: Callable[..., Config],
        start_worker: Callable[..., Service], tap: EventTap) -> None:
    """attach_interface through nova's client: the answer is nova's VIF, the guest has it."""
    from pyroute2 import IPRoute

    network_id, port_id = str(uuid.uuid4()), str(uuid.uuid4())
    bridge = f"cwn{uuid.uuid4().hex[:6]}"
    start_worker(make_config(virt_type="qemu", control_exchange=EXCHANGE, host=HOST,
                             bridge_mappings=f"{network_id}:{bridge}", manage_bridges=True))
    made: list[Vm] = []
    try:
        with connection(QEMU_URI) as conn:
            (vm,) = define_vms(conn, qemu_domain_type(conn), 1, made, prefix="cw-nova-net-")
        from nova import objects

        instance = objects.Instance(uuid=vm.uuid, host=HOST, node=HOST, vm_state="active",
                                    task_state=None)
        answer = nova.ComputeAPI().attach_interface(nova_context(), instance, network_id,
                                                    port_id, "10.20.0.5", tag=None)

        assert (port_id, "bridge", f"tap{port_id}"[:14], bridge) == (
            answer["id"], answer["type"], answer["devname"], answer["network"]["bridge"])
        assert ["10.20.0.5"] == [ip["address"] for s in answer["network"]["subnets"]
                                 for ip in s["ips"]]
        attached = tap.wait_type(vm.uuid, "instance.interface_attach.end", timeout=60)[0]
        check_event(attached)
        assert "InstanceActionPayload" == attached["payload"]["nova_object.name"]
        with connection(QEMU_URI) as conn:
            live = etree.fromstring(conn.lookupByUUIDString(vm.uuid).XMLDesc(0))
        (element,) = live.iterfind("devices/interface")
        source, mac = element.find("source"), element.find("mac")
        assert source is not None and mac is not None
        assert (bridge, answer["address"]) == (source.get("bridge"), mac.get("address"))
    finally:
        remove_domains(QEMU_URI, [v.uuid for v in made])
        with connection(QEMU_URI) as conn:
            if f"compute-worker-{port_id}" in conn.listNWFilters():
                conn.nwfilterLookupByName(f"compute-worker-{port_id}").undefine()
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=bridge):
                ipr.link("del", index=index)
