"""Rescue, unrescue and the console calls through a real RabbitMQ on libvirt's test driver."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import TEST_URI, state_of
from tests.helpers import check_event
from tests.taps import EventTap
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt import image_cache

pytestmark = pytest.mark.integration
# The rescue image is named by a UUID: nova's rescue_image_ref is a UUIDField (glance ids).
IMAGE, RESCUE_IMAGE = "image-1", "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


@pytest.fixture
def store(cfg: Config) -> Path:
    """images_path holding the instance's image and a rescue image (raw, 1 MiB each)."""
    images = Path(cfg.images_path)
    images.mkdir(parents=True)
    for name in (IMAGE, RESCUE_IMAGE):
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(images / name), "1M"],
                       check=True)
    return images


def _data(event: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = event["payload"]["nova_object.data"]
    return data


def _build(rpc: RpcClient, cfg: Config, tap: EventTap, built: list[str],
           image: str | None = IMAGE) -> str:
    uid = str(uuid.uuid4())
    built.append(uid)
    instance: dict[str, Any] = {"uuid": uid, "root_gb": 1, "ephemeral_gb": 1}
    if image is not None:
        instance["image_ref"] = image
    extra = {"image": {"id": image}} if image else {}
    rpc.cast(cfg.host, "build_and_run_instance", {"instance": instance, **extra})
    tap.wait_type(uid, "instance.create.end")
    return uid


def _inactive(uid: str) -> bytes:
    """The domain's definition, canonical (C14N, blank text dropped)."""
    conn = libvirt.open(TEST_URI)
    try:
        xml = conn.lookupByUUIDString(uid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    parser = etree.XMLParser(remove_blank_text=True)
    return bytes(etree.tostring(etree.fromstring(xml, parser), method="c14n"))


def _disks(uid: str) -> list[tuple[str | None, str | None, str | None]]:
    root = etree.fromstring(_inactive(uid))
    return [(d.find("source").get("file"), d.find("target").get("dev"),
             d.find("boot").get("order") if d.find("boot") is not None else None)
            for d in root.iterfind("devices/disk")]


def test_rescue_boots_the_rescue_disk_and_unrescue_restores_the_definition_exactly(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        store: Path) -> None:
    """rescue: disk.rescue (on the rescue image) vda and booting, disk vdb, state rescued;
    unrescue: the definition canonically what it was, the rescue files gone, active."""
    uid = _build(rpc, cfg, tap, built)
    home = worker.paths.root / uid
    before = _inactive(uid)

    rpc.cast(cfg.host, "rescue_instance", {"instance": {"uuid": uid, "image_ref": IMAGE},
                                           "rescue_image_ref": RESCUE_IMAGE,
                                           "rescue_password": "pw", "clean_shutdown": True})
    end = tap.wait_type(uid, "instance.rescue.end")[0]

    assert ("running", "rescued", RESCUE_IMAGE) == (
        _data(end)["power_state"], _data(end)["state"], _data(end)["rescue_image_ref"])
    assert "InstanceActionRescuePayload" == end["payload"]["nova_object.name"]
    assert [(str(home / "disk.rescue"), "vda", "1"), (str(home / "disk"), "vdb", None)] == \
        _disks(uid)
    backing = subprocess.run(["qemu-img", "info", "-U", "--output=json",
                              str(home / "disk.rescue")], capture_output=True, text=True,
                             check=True).stdout
    assert str(worker.paths.root / "_base" / image_cache.cache_name(RESCUE_IMAGE)) in backing
    assert before == etree.tostring(etree.fromstring(
        (home / "unrescue.xml").read_bytes(), etree.XMLParser(remove_blank_text=True)),
        method="c14n")
    assert "rescued" == rpc.call(cfg.host, "get_instance_info", {"instance": {"uuid": uid}},
                                 timeout=10)["vm_state"]

    rpc.cast(cfg.host, "unrescue_instance", {"instance": {"uuid": uid}})
    done = tap.wait_type(uid, "instance.unrescue.end")[0]

    assert ("running", "active") == (_data(done)["power_state"], _data(done)["state"])
    assert "InstanceActionPayload" == done["payload"]["nova_object.name"]
    assert before == _inactive(uid)
    assert not (home / "disk.rescue").exists() and not (home / "unrescue.xml").exists()
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(TEST_URI, uid)
    for event in tap.of(uid):
        check_event(event)


def test_rescuing_a_rescued_instance_and_unrescuing_a_normal_one_succeed_and_change_nothing(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        store: Path) -> None:
    """A second rescue keeps the first (and its saved definition); an unrescue of an
    instance that is not rescued leaves it as it is."""
    uid = _build(rpc, cfg, tap, built)
    home = worker.paths.root / uid
    original = _inactive(uid)

    rpc.cast(cfg.host, "unrescue_instance", {"instance": {"uuid": uid}})
    assert "active" == _data(tap.wait_type(uid, "instance.unrescue.end")[0])["state"]
    assert original == _inactive(uid)

    # The instance's own image, as nova falls back to it (no ref, no rescue_image_id).
    for count in (1, 2):
        rpc.cast(cfg.host, "rescue_instance", {"instance": {"uuid": uid, "image_ref": IMAGE}})
        end = tap.wait_type(uid, "instance.rescue.end", count=count)[-1]
        assert ("rescued", None) == (_data(end)["state"], _data(end)["rescue_image_ref"])
        if count == 1:
            rescued = _inactive(uid)
    assert rescued == _inactive(uid)
    assert original == etree.tostring(etree.fromstring(
        (home / "unrescue.xml").read_bytes(), etree.XMLParser(remove_blank_text=True)),
        method="c14n")


@pytest.mark.parametrize(("image_ref", "rescue_ref", "error"), [
    (None, None, "InstanceNotRescuable"),
    (IMAGE, "00000000-0000-4000-8000-000000000000", "ImageNotFound")])
def test_a_rescue_without_a_usable_image_fails_with_the_instance_untouched(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        store: Path, image_ref: str | None, rescue_ref: str | None, error: str) -> None:
    """Nothing to boot from: nova's error, the guest still running its own definition."""
    uid = _build(rpc, cfg, tap, built, image=image_ref)
    before = _inactive(uid)

    rpc.cast(cfg.host, "rescue_instance", {"instance": {"uuid": uid, "image_ref": image_ref},
                                           "rescue_image_ref": rescue_ref})
    failed = tap.wait_type(uid, "instance.rescue.error")[0]

    check_event(failed)
    assert (error, "active") == (
        _data(failed)["fault"]["nova_object.data"]["exception"], _data(failed)["state"])
    assert before == _inactive(uid)
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(TEST_URI, uid)
    assert [] == [p.name for p in (worker.paths.root / uid).iterdir()
                  if p.name in ("disk.rescue", "unrescue.xml")]


def test_console_output_is_the_tail_of_the_log_and_empty_without_one(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str]) -> None:
    """The last tail_length lines of console.log (here written by the test, as virtlogd
    would); "" before anything was logged; a billion lines stay bounded."""
    uid = _build(rpc, cfg, tap, built, image=None)
    inst = {"instance": {"uuid": uid}}
    assert "" == rpc.call(cfg.host, "get_console_output", {**inst, "tail_length": 5},
                          timeout=10)

    (worker.paths.root / uid / "console.log").write_bytes(
        b"".join(b"line %06d\n" % n for n in range(20000)))  # 240,000 bytes

    assert "line 019998\nline 019999\n" == rpc.call(
        cfg.host, "get_console_output", {**inst, "tail_length": 3}, timeout=10)
    everything = rpc.call(cfg.host, "get_console_output", {**inst, "tail_length": 10**9},
                          timeout=10)
    assert (100 * 1024, True) == (len(everything), everything.endswith("line 019999\n"))
    assert everything == rpc.call(cfg.host, "get_console_output", {**inst, "tail_length": None},
                                  timeout=10)


def test_console_calls_name_nova_s_errors(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str]) -> None:
    """spice is ConsoleTypeInvalid; a VNC server that does not listen (the test driver
    never gives one a port) is ConsoleTypeUnavailable; a missing instance InstanceNotFound."""
    uid = _build(rpc, cfg, tap, built, image=None)
    cases = [("get_vnc_console", {"instance": {"uuid": uid}, "console_type": "spice"},
              "ConsoleTypeInvalid"),
             ("get_vnc_console", {"instance": {"uuid": uid}, "console_type": "novnc"},
              "ConsoleTypeUnavailable"),
             ("get_serial_console", {"instance": {"uuid": uid}, "console_type": "serial"},
              "ConsoleTypeUnavailable"),
             ("get_console_output", {"instance": {"uuid": str(uuid.uuid4())},
                                     "tail_length": 1}, "InstanceNotFound")]
    for method, args, error in cases:
        with pytest.raises(RemoteError) as failure:
            rpc.call(cfg.host, method, args, timeout=10)
        assert (error, "nova.exception") == (failure.value.exc_class,
                                             failure.value.failure["module"]), method
