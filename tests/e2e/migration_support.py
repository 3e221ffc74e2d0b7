"""Two hosts with a worker each, and a conductor that moves instances between them.

Host A is this machine's libvirtd; host B a SecondHost (its own network and
mount namespace and libvirtd). Both workers run as ``compute-worker run``
subprocesses, B's inside B's mount namespace (so its qemu:///system is B's
libvirtd and its instances_path may be B's own), both on the system broker.
The conductor makes nova's calls in nova's order: the destination's check
(a call), then the source's live_migration (a cast).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from tests.brokers import wait_until
from tests.domains import connection, remove_domain
from tests.faults.support import WorkerProcess, worker_argv
from tests.guest_image import GUEST_MARKER, make_guest_image
from tests.second_host import SecondHost
from tests.taps import Event, EventTap
from worker.amqp.client import RpcClient

QEMU_URI = "qemu:///system"
IMAGE = "migration-guest"


@dataclass
class Host:
    """One host of the pair: its worker, its options, its libvirt as the test reaches it."""

    name: str
    worker: WorkerProcess
    values: dict[str, Any]
    uri: str
    #: Where the test sees this host's instances_path (B's own one lies in B's namespace).
    instances: Path

    def domain_state(self, uid: str) -> tuple[int, bool] | None:
        """(libvirt state, persistent) of the instance's domain here; None when there is none."""
        conn = libvirt.open(self.uri)
        try:
            dom = conn.lookupByUUIDString(uid)
            return int(dom.state()[0]), bool(dom.isPersistent())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        finally:
            conn.close()

    def job(self, uid: str) -> dict[str, Any]:
        conn = libvirt.open(self.uri)
        try:
            return dict(conn.lookupByUUIDString(uid).jobStats(0))
        finally:
            conn.close()

    def completed_job(self, uid: str) -> dict[str, Any]:
        conn = libvirt.open(self.uri)
        try:
            return dict(conn.lookupByUUIDString(uid).jobStats(
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
        finally:
            conn.close()


@dataclass
class Pair:
    """Hosts A and B, the conductor's client and every event of both."""

    a: Host
    b: Host
    rpc: RpcClient
    tap: EventTap
    second: SecondHost
    built: list[str] = field(default_factory=list)

    def build(self, *, ephemeral_gb: int = 0,
              network_info: list[dict[str, Any]] | None = None) -> str:
        """A guest built on A through a cast; its UUID once its create.end is out."""
        uid = str(uuid.uuid4())
        self.built.append(uid)
        flavor = {"nova_object.name": "Flavor", "nova_object.namespace": "nova",
                  "nova_object.version": "1.2", "nova_object.data": {
                      "id": 1, "flavorid": "1", "name": "mig", "memory_mb": 64, "vcpus": 1,
                      "root_gb": 0, "ephemeral_gb": ephemeral_gb, "swap": 0, "extra_specs": {}}}
        self.rpc.cast(self.a.name, "build_and_run_instance", {
            "instance": instance(uid, self.a.name) | {"flavor": flavor},
            "image": {"id": IMAGE}, **({"network_info": network_info} if network_info else {})})
        end = self.tap.wait_type(uid, "instance.create.end", timeout=60)[0]
        assert end["payload"]["nova_object.data"]["power_state"] == "running", end
        return uid

    def move(self, uid: str, source: Host, dest: Host, *, block: bool | None = None,
             wait: bool = True) -> dict[str, Any]:
        """nova's conductor: the destination's check, then the source's live_migration."""
        data: dict[str, Any] = self.rpc.call(dest.name, "check_can_live_migrate_destination", {
            "instance": instance(uid, source.name), "block_migration": block,
            "disk_over_commit": False, "migration": migration(source.name, dest.name),
            "limits": None}, timeout=60)
        before = len(self.tap.of(uid, "instance.live_migration_post.end"))
        self.rpc.cast(source.name, "live_migration", {
            "instance": instance(uid, source.name), "dest": dest.name,
            "block_migration": data["nova_object.data"]["block_migration"],
            "migrate_data": data, "migration": migration(source.name, dest.name)})
        if wait:
            self.tap.wait_type(uid, "instance.live_migration_post.end", count=before + 1,
                               timeout=90)
        return data

    def ended(self, uid: str, kind: str, count: int = 1, timeout: float = 90) -> list[Event]:
        """The events of type kind about uid, once count of them arrived."""
        return self.tap.wait_type(uid, kind, count=count, timeout=timeout)


def instance(uid: str, host: str) -> dict[str, Any]:
    return {"uuid": uid, "host": host, "node": host, "vm_state": "active",
            "task_state": "migrating", "image_ref": IMAGE, "display_name": "mig",
            "flavor": {"memory_mb": 64, "vcpus": 1, "root_gb": 0, "ephemeral_gb": 0, "swap": 0}}


def migration(source: str, dest: str) -> dict[str, Any]:
    data = {"id": 7, "uuid": str(uuid.uuid4()), "source_compute": source,
            "dest_compute": dest, "migration_type": "live-migration", "status": "accepted"}
    return {"nova_object.name": "Migration", "nova_object.namespace": "nova",
            "nova_object.version": "1.8", "nova_object.data": data,
            "nova_object.changes": sorted(data)}


def runs_on_exactly(pair: Pair, uid: str, host: Host) -> None:
    """The domain runs (persistent) on host and does not exist on the other one."""
    other = pair.b if host is pair.a else pair.a
    wait_until(lambda: host.domain_state(uid) == (libvirt.VIR_DOMAIN_RUNNING, True), 30,
               f"{uid} running and persistent on {host.name}")
    assert other.domain_state(uid) is None, f"{uid} is still on {other.name}"


def console_grows(path: Path, seconds: float = 1.5) -> None:
    """The guest's console log gains markers: it runs (and prints every 0.27 s)."""
    def count() -> int:
        try:
            return path.read_bytes().count(GUEST_MARKER.encode())
        except FileNotFoundError:
            return 0
    first = count()
    wait_until(lambda: count() > first, seconds + 10, f"new markers in {path}")


@contextlib.contextmanager
def broker_user(tag: str) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user for a worker in another network namespace (guest may only log in
    over loopback); removed afterwards."""
    name, password = f"cw-mig-{tag}", uuid.uuid4().hex

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                       timeout=60)
    ctl("add_user", name, password)
    try:
        ctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield name, password
    finally:
        ctl("delete_user", name)


@contextlib.contextmanager
def pair_of_hosts(second: SecondHost, *, tag: str, broker_url: str, work: Path,
                  instances: Path, b_instances_seen: Path, images: Path,
                  b_transport_url: str | None = None, **extra: Any) -> Iterator[Pair]:
    """Workers A (here) and B (in second's namespace) on instances (the same path on both;
    b_instances_seen is where the test sees B's), with private exchange and names.

    With b_transport_url, B runs in second's network namespace too (its taps and bridges
    are made where its libvirtd is) and reaches the broker at that URL."""
    images.mkdir(parents=True, exist_ok=True)
    make_guest_image(images / IMAGE)
    common = {"transport_url": broker_url, "control_exchange": f"mig_{tag}",
              "notification_topic": f"mig_notifications_{tag}", "virt_type": "qemu",
              "instances_path": str(instances), "images_path": str(images),
              "heartbeat": 10, "confirm_timeout": 10, "log_level": "info",
              "live_migration_permit_unsafe": True, "live_migration_progress_interval": 0.5,
              "rpc_response_timeout": 8, "long_rpc_timeout": 60, "update_resources_interval": -1,
              "firewall_driver": "none", "shutdown_timeout": 2, **extra}
    a_values = {**common, "host": f"mig-a-{tag}", "state_dir": str(work / "state-a"),
                "live_migration_inbound_addr": second.root_addr}
    b_values = {**common, "host": f"mig-b-{tag}", "state_dir": str(work / "state-b"),
                "live_migration_inbound_addr": second.addr,
                "transport_url": b_transport_url or broker_url}
    (work / "logs-a").mkdir(parents=True, exist_ok=True)
    (work / "logs-b").mkdir(parents=True, exist_ok=True)
    a = Host(a_values["host"], WorkerProcess(worker_argv(a_values), work / "logs-a"), a_values,
             QEMU_URI, instances)
    b = Host(b_values["host"], WorkerProcess(worker_argv(b_values), work / "logs-b",
                                             prefix=[*second.command_prefix(
                                                 net=b_transport_url is not None), "--"]),
             b_values, second.uri, b_instances_seen)
    tap = EventTap(broker_url, common["control_exchange"], common["notification_topic"])
    from kombu import Connection
    conn = Connection(broker_url)
    pair: Pair | None = None
    try:
        a.worker.start()
        b.worker.start()
        pair = Pair(a, b, RpcClient(conn, exchange=common["control_exchange"]), tap, second)
        yield pair
    finally:
        for host in (a, b):
            host.worker.terminate(timeout=20)
            host.worker.close()
        tap.close()
        conn.release()
        _remove_guests(pair.built if pair is not None else [], a, b)


def _remove_guests(uids: list[str], *hosts: Host) -> None:
    """What a test's guests left on either host: domains and instance directories."""
    for host in hosts:
        with connection(host.uri) as conn:
            for uid in uids:
                remove_domain(conn, uid)
        for uid in uids:
            shutil.rmtree(host.instances / uid, ignore_errors=True)


#: A slow link keeps a job running long enough to act on it (64 MiB of guest memory).
SLOW_KBIT = 2000


@contextlib.contextmanager
def moving_slowly(pair: Pair, uid: str, source: Host, dest: Host) -> Iterator[None]:
    """A move of uid started on a slow link; the block runs while its job does. The link
    is fast again afterwards (the move may then finish)."""
    pair.second.limit_bandwidth(SLOW_KBIT)
    try:
        pair.move(uid, source, dest, wait=False)
        wait_migrating(source, uid)
        yield
    finally:
        pair.second.limit_bandwidth(None)


def wait_migrating(host: Host, uid: str, timeout: float = 30) -> dict[str, Any]:
    """The job stats once a migration job runs on the instance at host."""
    found: dict[str, Any] = wait_until(
        lambda: (stats if (stats := host.job(uid)).get("type", 0) != 0 else None),
        timeout, f"a migration job on {uid} at {host.name}", 0.05)
    return found


def pause(seconds: float) -> None:
    time.sleep(seconds)
