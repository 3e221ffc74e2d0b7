"""Volume attach and detach on a running guest: the worker against virsh and libvirt's API.

One running QEMU guest (64 MiB, 1 vCPU, no OS, no disks) on qemu:///system,
given a virtio-scsi controller before anything is timed (the worker adds one
to a guest that has none, once; here neither side pays for it). A guest with
no OS never releases a virtio disk, but releases a SCSI disk at once, so the
volume goes on bus scsi as /dev/sdb. Volumes: a raw file of --file-mib under
the worker's volumes_path (nova's driver_volume_type ``file``) and a loop
device on another such file (``local``; with --kinds).

Each round attaches and detaches each volume once each way, the ways taking
turns at going first:
- worker: attach_volume cast to the worker in this process, to
  instance.volume_attach.end; detach_volume cast, to instance.volume_detach.end
  (the worker drops the disk from the definition, asks QEMU to unplug it and
  waits for libvirt's device-removed event);
- virsh: ``virsh attach-device <dom> <disk.xml> --live --config`` of the very
  XML the worker builds (the worker's own lxml builder, from the same bdm),
  and ``virsh detach-device ... --live --config`` followed by polling the live
  XML (the bench's own connection, every 2 ms) until the disk is gone. libvirtd
  itself waits up to 5 s for QEMU's removal inside the detach call, so the
  disk is nearly always gone at the first look: the poll only makes sure;
- api: the same two calls (attachDeviceFlags, detachDeviceFlags with
  AFFECT_LIVE | AFFECT_CONFIG) on this process's libvirt connection, the same
  poll after: the floor with no process start and no broker.
Ratios are worker / virsh (and worker / api). One untimed round comes first.
Every side's result is checked in the live XML and the definition, untimed.
The domain, the loop device and the files are removed at the end.
Run: .venv/bin/python -m bench.volumes [--rounds 10] [--kinds file,loop]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import libvirt
from kombu import Connection

from bench.common import EventCounter, append_result, bench_config, forget, machine, median
from bench.fleet import wait_events
from bench.parallel import QEMU_URI, remove_all
from tests.e2e.support import kvm_works
from worker import logs
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt import disk_xml, volumes
from worker.virt.domain_xml import DomainSpec, domain, to_string
from worker.virt.hypervisor import start_event_loop

NAME_PREFIX = "cw-bench-vol-"
SECTION = ("Volume attach and detach (running QEMU guest, scsi; worker cast->volume_*.end "
           "against virsh attach-device/detach-device --live --config)")
TARGET = "sdb"
BOTH = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
SIDES = ("worker", "virsh", "api")
POLL = 0.002


def bdm(uid: str, volume_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """nova's BlockDeviceMapping primitive of a scsi volume at /dev/sdb."""
    info = {"driver_volume_type": kind, "data": data, "serial": volume_id}
    fields = {"volume_id": volume_id, "instance_uuid": uid, "source_type": "volume",
              "destination_type": "volume", "device_name": f"/dev/{TARGET}",
              "disk_bus": "scsi", "device_type": "disk", "boot_index": None,
              "delete_on_termination": False, "attachment_id": str(uuid.uuid4()),
              "connection_info": json.dumps(info)}
    return {"nova_object.name": "BlockDeviceMapping", "nova_object.namespace": "nova",
            "nova_object.version": "1.21", "nova_object.data": fields}


def raw_file(path: Path, mib: int) -> Path:
    """A sparse raw image of mib MiB."""
    with open(path, "wb") as handle:
        handle.truncate(mib << 20)
    return path


def plugged(dom: libvirt.virDomain, serial: str) -> tuple[bool, bool]:
    """Whether the disk with this serial is in (the live XML, the definition)."""
    return (disk_xml.by_serial(dom.XMLDesc(0), serial) is not None,
            disk_xml.by_serial(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), serial) is not None)


def gone_from_live(dom: libvirt.virDomain, serial: str, timeout: float = 30.0) -> None:
    """Poll the live XML until the disk with this serial has left it."""
    deadline = time.monotonic() + timeout
    while disk_xml.by_serial(dom.XMLDesc(0), serial) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the disk {serial} is still in the live XML after {timeout} s")
        time.sleep(POLL)


class Volume:
    """One volume: its mapping, the disk XML the worker builds of it, and the three ways."""

    def __init__(self, label: str, cfg: Config, dom: libvirt.virDomain, xml_dir: Path,
                 kind: str, data: dict[str, Any]) -> None:
        self.label, self.dom = label, dom
        self.serial = str(uuid.uuid4())
        self.bdm = bdm(dom.UUIDString(), self.serial, kind, data)
        spec = volumes.volume_disk(cfg, self.bdm["nova_object.data"], TARGET)
        self.xml = to_string(disk_xml.disk(spec))
        self.xml_file = xml_dir / f"{label}.xml"
        self.xml_file.write_text(self.xml)

    def _virsh(self, verb: str) -> None:
        subprocess.run(["virsh", "-q", "-c", QEMU_URI, verb, self.dom.UUIDString(),
                        str(self.xml_file), "--live", "--config"], check=True,
                       capture_output=True)

    def virsh_attach(self) -> None:
        """virsh attach-device of the worker's XML, live and persistent."""
        self._virsh("attach-device")

    def virsh_detach(self) -> None:
        """virsh detach-device, live and persistent, then poll until it left the live XML."""
        self._virsh("detach-device")
        gone_from_live(self.dom, self.serial)

    def api_attach(self) -> None:
        """attachDeviceFlags of the same XML on this process's connection."""
        self.dom.attachDeviceFlags(self.xml, BOTH)

    def api_detach(self) -> None:
        """detachDeviceFlags of the same XML, then the same poll."""
        self.dom.detachDeviceFlags(self.xml, BOTH)
        gone_from_live(self.dom, self.serial)

    def check(self, side: str, want: bool) -> None:
        """Untimed: the disk is in both the live XML and the definition, or in neither."""
        found = plugged(self.dom, self.serial)
        if found != (want, want):
            raise AssertionError(f"{side} {'attach' if want else 'detach'} of {self.label}: "
                                 f"(live, definition) = {found}")


class Worker:
    """Volume casts to the in-process worker, each to its end event."""

    def __init__(self, client: RpcClient, counter: EventCounter, host: str, uid: str) -> None:
        self.client, self.counter, self.host, self.uid = client, counter, host, uid

    def _cast(self, method: str, action: str, args: dict[str, Any]) -> None:
        finished: Callable[[str], bool] = lambda kind: kind in (  # noqa: E731
            f"instance.{action}.end", f"instance.{action}.error")
        before = self.counter.count(finished)
        self.client.cast(self.host, method, {"instance": {"uuid": self.uid}, **args})
        wait_events(self.counter, finished, before + 1, timeout=60)
        failed = self.counter.count(lambda kind: kind == f"instance.{action}.error")
        assert failed == 0, f"{method} failed: see the worker's log"

    def attach(self, volume: Volume) -> None:
        """attach_volume, to instance.volume_attach.end."""
        self._cast("attach_volume", "volume_attach", {"bdm": volume.bdm})

    def detach(self, volume: Volume) -> None:
        """detach_volume, to instance.volume_detach.end."""
        self._cast("detach_volume", "volume_detach",
                   {"volume_id": volume.serial, "attachment_id": str(uuid.uuid4())})


def timed(step: Callable[[], None]) -> float:
    """Seconds step takes."""
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def make_guest(conn: libvirt.virConnect, domain_type: str, made: list[str]) -> libvirt.virDomain:
    """A running no-OS guest with a virtio-scsi controller, live and in its definition."""
    uid = str(uuid.uuid4())
    made.append(uid)  # noted first, so a failed define or start is cleaned up too
    dom = conn.defineXML(to_string(domain(DomainSpec(
        f"{NAME_PREFIX}{uid[:13]}", uid, memory_mib=64, vcpus=1, domain_type=domain_type))))
    dom.create()
    dom.attachDeviceFlags(to_string(disk_xml.scsi_controller()), BOTH)
    return dom


def loop_device(backing: Path) -> str:
    """A new loop device on backing."""
    return subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                          capture_output=True, text=True).stdout.strip()


def run_rounds(worker: Worker, found: dict[str, Volume], rounds: int,
               times: dict[tuple[str, str, str], list[float]]) -> None:
    """An untimed round, then rounds timed ones, into times[(kind, side, op)] (seconds)."""
    for number in range(rounds + 1):
        turn = number % len(SIDES)
        for kind, volume in found.items():
            ways: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
                "worker": (partial(worker.attach, volume), partial(worker.detach, volume)),
                "virsh": (volume.virsh_attach, volume.virsh_detach),
                "api": (volume.api_attach, volume.api_detach)}
            for side in SIDES[turn:] + SIDES[:turn]:
                attach, detach = ways[side]
                took = timed(attach)
                volume.check(side, True)
                gone = timed(detach)
                volume.check(side, False)
                if number:
                    times[(kind, side, "attach")].append(took)
                    times[(kind, side, "detach")].append(gone)
        if number:
            print(f"round {number} ({SIDES[turn]} first): " + "; ".join(
                f"{k} " + ", ".join(f"{s} {times[(k, s, 'attach')][-1] * 1000:.0f}/"
                                    f"{times[(k, s, 'detach')][-1] * 1000:.0f}" for s in SIDES)
                for k in found) + " ms (attach/detach)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Each round: per volume, attach then detach once through the worker, once "
               "with virsh and once with libvirt's API, the order turning each round. "
               "Prints medians and the ratios worker / virsh and worker / api.")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--kinds", default="file,loop",
                        help="comma-separated volumes: file (a raw file, nova's 'file'), loop "
                             "(a loop device, nova's 'local'); default file,loop")
    parser.add_argument("--file-mib", type=int, default=8,
                        help="size of each volume's raw file (default 8)")
    parser.add_argument("--domain-type", choices=("kvm", "qemu"), default=None,
                        help="default: kvm when /dev/kvm works, else qemu (TCG)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ns = parser.parse_args()
    kinds = [k.strip() for k in ns.kinds.split(",") if k.strip()]
    if not kinds or any(k not in ("file", "loop") for k in kinds) or ns.rounds < 1:
        parser.error("--kinds takes file and/or loop; --rounds at least 1")
    logs.setup("error")
    start_event_loop()  # before any connection opens, as the worker does
    conn = libvirt.open(QEMU_URI)
    domain_type = ns.domain_type or ("kvm" if kvm_works(conn) else "qemu")
    times: dict[tuple[str, str, str], list[float]] = {
        (k, s, op): [] for k in kinds for s in SIDES for op in ("attach", "detach")}
    made: list[str] = []
    loops: list[str] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-vol-") as tmp:
        root = Path(tmp)
        (root / "volumes").mkdir()
        cfg = bench_config(tmp, virt_type=domain_type, topic=f"benchvol{uuid.uuid4().hex[:8]}",
                           volumes_path=str(root / "volumes"), volume_device_prefixes="/dev/loop")
        counter = EventCounter(cfg.transport_url, cfg.control_exchange,
                               cfg.notifications.notification_topic)
        service = Service(cfg)
        service.start()
        try:
            dom = make_guest(conn, domain_type, made)
            found: dict[str, Volume] = {}
            for kind in kinds:
                image = raw_file(root / "volumes" / f"{kind}.img", ns.file_mib)
                if kind == "file":
                    found[kind] = Volume(kind, cfg, dom, root, "file",
                                         {"device_path": str(image), "format": "raw"})
                else:
                    loops.append(loop_device(image))
                    found[kind] = Volume(kind, cfg, dom, root, "local",
                                         {"device_path": loops[-1]})
            with Connection(cfg.transport_url) as amqp_conn:
                worker = Worker(RpcClient(amqp_conn, exchange=cfg.control_exchange,
                                          topic=cfg.topic), counter, cfg.host, dom.UUIDString())
                run_rounds(worker, found, ns.rounds, times)
        finally:
            counter.close()
            service.stop(grace=30)
            failures += remove_all(made)
            for device in loops:
                if subprocess.run(["losetup", "-d", device], check=False).returncode:
                    failures.append(f"loop device {device}")
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            forget(cfg, [service.consumer.fanout_unique])
            if failures:
                print(f"WARNING: left behind: {failures}")
    for kind in kinds:
        ms = {key[1:]: median(v) * 1000 for key, v in times.items() if key[0] == kind}
        what = (f"{domain_type}, running 64 MiB guest, {ns.file_mib} MiB raw "
                f"{'file (file)' if kind == 'file' else 'loop device (local)'} on scsi")
        parts = []
        for op, end in (("attach", "volume_attach.end"), ("detach", "volume_detach.end")):
            w, v, a = (ms[(s, op)] for s in SIDES)
            parts.append(f"{op}: worker {w:.1f} ms cast->{end}, virsh {v:.1f} ms, api "
                         f"{a:.1f} ms | ratio {w / v:.2f} (worker / api {w / a:.2f})")
        figures = " | ".join(parts) + f" | median of {ns.rounds}"
        print(f"volume {kind} ({what}): {figures}")
        if not ns.no_record:
            append_result(SECTION, f"{machine()} | {what} | {figures} | `.venv/bin/python -m "
                          f"bench.volumes --rounds {ns.rounds} --kinds {ns.kinds}`")


if __name__ == "__main__":
    main()
