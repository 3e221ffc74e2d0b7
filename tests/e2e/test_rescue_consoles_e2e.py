"""Consoles and rescue on real QEMU: a guest's serial output read back, its VNC server
answering, and a rescue that boots another image and is undone exactly."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from kombu import Connection
from lxml import etree

from tests.domains import remove_domain
from tests.e2e.support import NAME_PREFIX
from tests.guest_image import GUEST_DOMAIN_TYPE, make_guest_image
from tests.helpers import check_event
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.e2e
PROXY = "http://proxy.example.org:6080/vnc_auto.html"
# The rescue image is named by a UUID: nova's rescue_image_ref is a UUIDField (glance ids).
GUEST, RESCUE = "guest-image", "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
GUEST_MARKER, RESCUE_MARKER = "own guest up", "rescue guest up"


@pytest.fixture
def console_cfg(make_config: Callable[..., Config]) -> Config:
    """TCG (the test guest boots about ten times faster on it than on this host's nested
    KVM), a short clean shutdown (the guest ignores ACPI), a noVNC proxy URL."""
    return make_config(virt_type=GUEST_DOMAIN_TYPE, build_timeout=60, shutdown_timeout=1,
                       novncproxy_base_url=PROXY)


@pytest.fixture
def host(console_cfg: Config, qemu: libvirt.virConnect
         ) -> Iterator[tuple[Service, EventTap, RpcClient, list[str]]]:
    """A worker on qemu:///system with the two guest images in its store; its instances
    are removed afterwards."""
    store = Path(console_cfg.images_path)
    store.mkdir(parents=True)
    make_guest_image(store / GUEST, GUEST_MARKER)
    make_guest_image(store / RESCUE, RESCUE_MARKER)
    tap = EventTap(console_cfg.transport_url, console_cfg.control_exchange,
                   console_cfg.notifications.notification_topic)
    service = Service(console_cfg)
    service.start()
    made: list[str] = []
    with Connection(console_cfg.transport_url) as conn:
        yield service, tap, RpcClient(conn, exchange=console_cfg.control_exchange,
                                      topic=console_cfg.topic), made
    service.stop(grace=30)
    tap.close()
    for uid in made:
        remove_domain(qemu, uid)


def _build(cfg: Config, tap: EventTap, rpc: RpcClient, made: list[str]) -> str:
    uid = str(uuid.uuid4())
    made.append(uid)
    rpc.cast(cfg.host, "build_and_run_instance",
             {"instance": {"uuid": uid, "name": f"{NAME_PREFIX}{uid[:13]}", "memory_mb": 64,
                           "root_gb": 1, "image_ref": GUEST}, "image": {"id": GUEST}})
    end = tap.wait_type(uid, "instance.create.end", timeout=90)[0]
    assert "running" == end["payload"]["nova_object.data"]["power_state"]
    return uid


def _output(cfg: Config, rpc: RpcClient, uid: str, tail_length: int | None) -> str:
    text: str = rpc.call(cfg.host, "get_console_output",
                         {"instance": {"uuid": uid}, "tail_length": tail_length}, timeout=10)
    return text


def _wait_for_marker(cfg: Config, rpc: RpcClient, uid: str, marker: str) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = _output(cfg, rpc, uid, None)
        if marker in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{marker!r} never reached the console: {text[-200:]!r}")


def _canonical(xml: str) -> bytes:
    parser = etree.XMLParser(remove_blank_text=True)
    return bytes(etree.tostring(etree.fromstring(xml.encode(), parser), method="c14n"))


def test_the_vnc_console_answers_and_the_guest_s_serial_output_is_read_back(
        host: tuple[Service, EventTap, RpcClient, list[str]], console_cfg: Config,
        qemu: libvirt.virConnect) -> None:
    """get_vnc_console names 127.0.0.1 and the live port, where an RFB server answers; what
    the guest printed on COM1 reaches console.log (virtlogd) and get_console_output, at
    most tail_length lines of it, and a billion lines stay within 100 KiB.

    One guest for both: each boot costs SeaBIOS's start.
    """
    service, tap, rpc, made = host
    uid = _build(console_cfg, tap, rpc, made)

    info: dict[str, Any] = rpc.call(console_cfg.host, "get_vnc_console",
                                    {"instance": {"uuid": uid}, "console_type": "novnc"},
                                    timeout=10)

    graphics = etree.fromstring(qemu.lookupByUUIDString(uid).XMLDesc(0)).find(
        "devices/graphics[@type='vnc']")
    assert ("127.0.0.1", "127.0.0.1") == (graphics.get("listen"), info["host"])
    assert (int(graphics.get("port")), None) == (info["port"], info["internal_access_path"])
    assert f"{PROXY}?path=%3Ftoken%3D{info['token']}" == info["access_url"]
    with socket.create_connection((info["host"], info["port"]), timeout=5) as sock:
        banner = sock.recv(12)
    assert banner.startswith(b"RFB 003.00"), banner

    text = _wait_for_marker(console_cfg, rpc, uid, GUEST_MARKER)

    assert (service.paths.root / uid / "console.log").is_file()
    tail = _output(console_cfg, rpc, uid, 3)
    assert GUEST_MARKER in tail and len(tail.split("\n")) <= 3
    assert "" == _output(console_cfg, rpc, uid, 0)
    assert len(_output(console_cfg, rpc, uid, 10**9)) <= 100 * 1024
    assert len(text) <= 100 * 1024


def test_rescue_boots_the_rescue_image_and_unrescue_puts_everything_back(
        host: tuple[Service, EventTap, RpcClient, list[str]], console_cfg: Config,
        qemu: libvirt.virConnect) -> None:
    """Rescued: the rescue image's marker on the console, disk.rescue vda booting, the own
    disk vdb; unrescued: the definition canonically the one before, the own marker again."""
    service, tap, rpc, made = host
    uid = _build(console_cfg, tap, rpc, made)
    home = service.paths.root / uid
    dom = qemu.lookupByUUIDString(uid)
    before = _canonical(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    rpc.cast(console_cfg.host, "rescue_instance",
             {"instance": {"uuid": uid, "image_ref": GUEST}, "rescue_image_ref": RESCUE,
              "clean_shutdown": True})
    end = tap.wait_type(uid, "instance.rescue.end", timeout=60)[0]

    assert ("running", "rescued") == (end["payload"]["nova_object.data"]["power_state"],
                                      end["payload"]["nova_object.data"]["state"])
    live = etree.fromstring(dom.XMLDesc(0))
    assert [(str(home / "disk.rescue"), "vda", "1"), (str(home / "disk"), "vdb", None)] == [
        (d.find("source").get("file"), d.find("target").get("dev"),
         d.find("boot").get("order") if d.find("boot") is not None else None)
        for d in live.iterfind("devices/disk")]
    _wait_for_marker(console_cfg, rpc, uid, RESCUE_MARKER)

    rpc.cast(console_cfg.host, "unrescue_instance", {"instance": {"uuid": uid}})
    done = tap.wait_type(uid, "instance.unrescue.end", timeout=60)[0]

    assert ("running", "active") == (done["payload"]["nova_object.data"]["power_state"],
                                     done["payload"]["nova_object.data"]["state"])
    assert before == _canonical(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert not (home / "disk.rescue").exists() and not (home / "unrescue.xml").exists()
    # append='off': the start made a fresh log, without the rescue guest's lines.
    assert RESCUE_MARKER not in _output(console_cfg, rpc, uid, None)
    for event in tap.of(uid):
        check_event(event)
