"""A second libvirt host on this machine (tests.second_host), and live migration to it and back.

Seen here (Debian 12, libvirt 9.0, QEMU 7.2, nested KVM, 2 cores), checked by
the tests below where a test can check it:

- SecondHost starts in about 0.2 s and closes in about 0.3 s (no domains).
- The times below vary by up to 1.5x with other tests running on the machine.
- Live peer-to-peer migration of a 64 MiB no-OS guest: 1.9-2.6 s for
  migrateToURI3 to return, of which libvirt's job (``time_elapsed``) is
  0.6 s; ``downtime`` 20-30 ms. Either way, root -> second and back alike.
  The rest of the wall time is the destination's preparation (a QEMU
  process started there) and the source's clean-up.
- Block migration (NON_SHARED_INC, MIGRATE_DISKS vda) of the same guest with a
  16 MiB qcow2 disk holding 1 MiB of data: about 2-3 s.
- The destination's QEMU listens for the incoming migration on every address
  (``*:49152`` in ``ss``, the first port of libvirt's migration range), not on
  the address of VIR_MIGRATE_PARAM_URI; that address is only where the
  source connects. Each host has its own network namespace, so both can use
  49152 and 5900 at once.
- Block migration: the destination's NBD server (which the source's drive
  mirror writes the disk to) listens on every address too, on the next port
  (``*:49153``). The source's job stats show ``disk_total`` as the data
  allocated in the top image (8 MiB written in a 64 MiB qcow2: 8 MiB); the
  destination's completed stats have ``disk_*`` 0: only the memory part.
- Completed job stats are handed out once: read without
  VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED, a second read gets only the job type
  (tests.migrations.completed_stats keeps them).
- VNC ``listen='127.0.0.1'`` works on the second host and survives the move:
  its QEMU listens on 127.0.0.1:5900 inside the namespace (unreachable from the
  root namespace's 127.0.0.1, as a real other host's would be).
- The jobStats keys ``time_elapsed`` and ``downtime`` exist in libvirt 9.0's
  VIR_DOMAIN_JOB_STATS_COMPLETED on the destination's domain after the move.
- ``tc`` at 2000 kbit/s on the veth pair stretches the job from 0.6 s to about
  4.5 s (1000 kbit/s: 8-13 s) and the downtime to about 2 s: the last pass runs
  at the limited rate.
- Pausing the source (``suspend()``) during the job: the source reports
  PAUSED with reason PAUSED_MIGRATION (not PAUSED_USER); the job goes on and
  completes, and the destination ends RUNNING (reason MIGRATED): libvirt
  resumes the guest on the destination. The pause counts as downtime (3-7 s
  here). ``suspend()`` itself usually returns at once, but took 5 s once in
  six under the tc limit (QEMU stuck writing to the throttled socket), long
  enough for a fast job to finish first. A guest paused before the migration
  starts arrives PAUSED (reason USER): libvirt carries that state over.
- libvirtd answers on its socket before it has reconnected to the guests it
  found running: a destroy in that window stops the guest and still fails
  with "domain is not running". ``start_libvirtd()`` returns only after a
  query on each running guest (which waits for the reconnect).
- PIDs wrap around within a minute or two on this machine, and a mount
  namespace's name (``mnt:[inode]``) is reused as soon as it is gone:
  SecondHost knows its processes by PID and start time, and its namespace by
  name only while its keeper runs in it.
- With p2p the destination advertises the machine's hostname, which resolves
  to the root namespace; VIR_MIGRATE_PARAM_URI (``tcp://ADDR``) is needed.
- The system libvirtd listens on its unix socket only; the second host reaches
  it through SecondHost's forwarder at ``qemu+tcp://ROOT_ADDR/system``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.domains import QEMU_URI, domain_state, remove_domains
from tests.migrations import BLOCK_FLAGS, Moved, migrate
from tests.ns_processes import identity, same_process
from tests.second_host import SecondHost
from worker.virt.domain_xml import DomainSpec, domain, to_string

pytestmark = pytest.mark.e2e

NAME_PREFIX = "cw-e2e-mig-"
RUNNING = libvirt.VIR_DOMAIN_RUNNING
PAUSED = libvirt.VIR_DOMAIN_PAUSED
PATTERN = "0x5a"


def _mount_points() -> set[str]:
    # iproute2 makes /run/netns a mount point of its own the first time and keeps it.
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return {line.split()[4] for line in lines if not line.split()[4].startswith("/run/netns")}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line}


def _in_mount_ns(mount_ns: str) -> list[str]:
    """identity() of every process in the mount namespace of that name."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "ns" / "mnt") == mount_ns:
                found.append(identity(int(entry.name)) or "")
        except OSError:
            continue
    return [ident for ident in found if ident]


def _host_uuid(conn: libvirt.virConnect) -> str:
    found: str | None = etree.fromstring(conn.getCapabilities()).findtext("host/uuid")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def nonshared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instances dir the second host has a private copy of."""
    path = tmp_path_factory.mktemp("nonshared") / "instances"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def host(nonshared: Path) -> Iterator[SecondHost]:
    """One second host for the migration tests of this module."""
    with SecondHost(private_paths=[nonshared]) as second:
        yield second


@pytest.fixture
def dest(host: SecondHost) -> Iterator[libvirt.virConnect]:
    """A connection to the second host's libvirtd."""
    conn = libvirt.open(host.uri)
    yield conn
    conn.close()


@pytest.fixture
def guest(qemu: libvirt.virConnect, domain_type: str,
          host: SecondHost) -> Iterator[Callable[..., libvirt.virDomain]]:
    """Factory: a running 64 MiB no-OS guest on the root host; removed from both hosts after."""
    made: list[str] = []

    def make(*disks: str, uid: str | None = None) -> libvirt.virDomain:
        uid = uid or str(uuid.uuid4())
        spec = DomainSpec(name=f"{NAME_PREFIX}{uid[:13]}", uuid=uid, memory_mib=64,
                          vcpus=1, domain_type=domain_type, disks=disks,
                          vnc_listen="127.0.0.1")
        made.append(spec.uuid)
        dom = qemu.defineXML(to_string(domain(spec)))
        dom.create()
        return dom

    yield make
    host.limit_bandwidth(None)
    remove_domains(QEMU_URI, made)
    # A fresh connection: a test may have restarted the host's libvirtd.
    remove_domains(host.uri, made)


def _where(host: SecondHost, uid: str) -> tuple[int | None, int | None]:
    """(state on the root host, state on the second host), None where it does not exist."""
    root, second = domain_state(QEMU_URI, uid), domain_state(host.uri, uid)
    return (None if root is None else root[0]), (None if second is None else second[0])


def test_host_starts_and_closes_leaving_nothing(qemu: libvirt.virConnect) -> None:
    """A SecondHost answers with its own host UUID, and close() leaves no namespace, link,
    mount, process or file, and the system libvirtd as it was."""
    before = (_netns(), _links(), _mount_points())
    root_uuid = _host_uuid(qemu)
    with SecondHost() as second:
        conn = libvirt.open(second.uri)
        try:
            assert second.host_uuid == _host_uuid(conn)
        finally:
            conn.close()
        assert root_uuid != second.host_uuid
        assert second.netns in _netns()
        # The private mounts exist in the host's namespace only.
        assert before[2] == _mount_points()
        assert {"keeper", "virtlogd", "libvirtd"} == set(second.pids())
        inside, state = _in_mount_ns(second.mount_ns), second.dir
    assert before == (_netns(), _links(), _mount_points())
    # (A namespace's name is reused once it is gone: the processes are checked instead.)
    assert [] == [ident for ident in inside if same_process(ident)]
    assert not state.exists()
    assert root_uuid == _host_uuid(qemu), "the system libvirtd still answers, unchanged"
    second.close()  # idempotent


def test_a_host_left_by_a_killed_owner_is_swept() -> None:
    """When the process owning a SecondHost dies without close(), the next SecondHost to
    start removes the old one's namespace, link, processes and state dir."""
    owner = subprocess.Popen(
        [sys.executable, "-c", "import time; from tests.second_host import SecondHost; "
         "h = SecondHost(); h.start(); print(h.netns, h.mount_ns, h.dir, flush=True); "
         "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        netns, mount_ns, state = owner.stdout.readline().split()
        left = _in_mount_ns(mount_ns)
        assert netns in _netns() and 3 <= len(left), "keeper, virtlogd and libvirtd run"
    finally:
        owner.kill()
        owner.communicate(timeout=10)
    # Given its processes, namespace and state dir left behind by the killed owner,
    with SecondHost() as second:
        # (another process starting a SecondHost meanwhile may be the one sweeping it, and
        # still be waiting for the processes to die)
        deadline = time.monotonic() + 10
        while any(same_process(ident) for ident in left) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [] == [ident for ident in left if same_process(ident)]
        assert netns not in _netns() or netns == second.netns
        assert not Path(state).exists() or Path(state) == second.dir


def test_command_prefix_reaches_the_second_libvirtd(host: SecondHost, nonshared: Path,
                                                    qemu: libvirt.virConnect) -> None:
    """A process run with command_prefix() gets the second host's libvirtd on qemu:///system
    and its private dirs, and stays in the root network namespace."""
    (host.private_dir(nonshared) / "marker").write_text("inside")
    (nonshared / "marker").write_text("outside")
    script = ("import libvirt, os, sys; c = libvirt.open('qemu:///system'); "
              "print(c.getCapabilities().split('<uuid>')[1].split('</uuid>')[0]); "
              f"print(open({str(nonshared / 'marker')!r}).read()); "
              "print(os.readlink('/proc/self/ns/net'))")
    try:
        out = subprocess.run([*host.command_prefix(), sys.executable, "-c",
                              script], capture_output=True, text=True, check=True, timeout=30)
    finally:
        (nonshared / "marker").unlink()
        (host.private_dir(nonshared) / "marker").unlink()
    uuid_inside, marker, net_ns = out.stdout.split()
    assert host.host_uuid == uuid_inside
    assert _host_uuid(qemu) != uuid_inside
    assert "inside" == marker
    assert os.readlink("/proc/self/ns/net") == net_ns


def test_live_migration_there_and_back(host: SecondHost, qemu: libvirt.virConnect,
                                       dest: libvirt.virConnect,
                                       guest: Callable[..., libvirt.virDomain]) -> None:
    """A running guest moves live, peer to peer, to the second host and back: running on
    exactly one host each time, persistent there, gone from the other."""
    uid = str(uuid.uuid4())
    dom = guest(uid=uid)
    there = migrate(dom, dest, host.uri, host.migration_uri)
    assert (None, RUNNING) == _where(host, uid)
    assert dest.lookupByUUIDString(uid).isPersistent()
    # Its VNC server came along and listens on 127.0.0.1 inside the second host.
    vnc = etree.fromstring(dest.lookupByUUIDString(uid).XMLDesc()).find("devices/graphics")
    assert vnc is not None and "127.0.0.1" == vnc.get("listen")
    assert f"127.0.0.1:{vnc.get('port')}" in _listening(host)
    back = migrate(dest.lookupByUUIDString(uid), qemu, host.root_uri, host.root_migration_uri)
    assert (RUNNING, None) == _where(host, uid)
    assert qemu.lookupByUUIDString(uid).isPersistent()
    for moved in (there, back):
        assert 0 < moved.downtime_ms <= moved.elapsed_ms <= moved.seconds * 1000
    print(f"live there {_fmt(there)}; back {_fmt(back)}")


def test_block_migration_copies_a_private_disk(host: SecondHost, nonshared: Path,
                                               dest: libvirt.virConnect,
                                               guest: Callable[..., libvirt.virDomain]) -> None:
    """A guest whose qcow2 disk is in a non-shared dir block-migrates into the second
    host's own file at the same path, which ends up with the source's data."""
    uid = str(uuid.uuid4())
    disk = nonshared / uid / "disk"
    disk.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -q -P {PATTERN} 0 1M", str(disk)],
                   check=True)
    inside = [*host.command_prefix()]
    # Given the destination's empty disk, made inside the host at the same path,
    subprocess.run([*inside, "sh", "-c", f"mkdir {disk.parent} && qemu-img create -q -f "
                    f"qcow2 {disk} 16M"], check=True)
    theirs = subprocess.run([*inside, "stat", "-c", "%d %i", str(disk)], capture_output=True,
                            text=True, check=True).stdout.split()
    ours = os.stat(disk)
    assert [str(ours.st_dev), str(ours.st_ino)] != theirs, "a different file"
    dom = guest(str(disk), uid=uid)
    # When it moves with its disk,
    moved = migrate(dom, dest, host.uri, host.migration_uri, flags=BLOCK_FLAGS, disks=["vda"])
    # Then it runs there only, on the destination's file, which now holds the data.
    assert (None, RUNNING) == _where(host, uid)
    read = subprocess.run([*inside, "qemu-io", "-U", "-r", "-f", "qcow2", "-c",
                           f"read -P {PATTERN} 0 1M", str(disk)], capture_output=True,
                          text=True, check=True).stdout
    assert "Pattern verification failed" not in read and "read 1048576/1048576" in read
    print(f"block {_fmt(moved)}")


def test_bandwidth_limit_slows_migration(host: SecondHost, qemu: libvirt.virConnect,
                                         dest: libvirt.virConnect,
                                         guest: Callable[..., libvirt.virDomain]) -> None:
    """limit_bandwidth stretches a migration job several times; None lifts it again."""
    uid = str(uuid.uuid4())
    dom = guest(uid=uid)
    free = migrate(dom, dest, host.uri, host.migration_uri)
    host.limit_bandwidth(2000)
    slow = migrate(dest.lookupByUUIDString(uid), qemu, host.root_uri, host.root_migration_uri)
    host.limit_bandwidth(None)
    free_again = migrate(qemu.lookupByUUIDString(uid), dest, host.uri, host.migration_uri)
    assert slow.elapsed_ms > 3 * max(free.elapsed_ms, free_again.elapsed_ms)
    print(f"free {_fmt(free)}; 2000 kbit {_fmt(slow)}; free again {_fmt(free_again)}")


def test_pausing_the_source_mid_migration_ends_running(
        host: SecondHost, dest: libvirt.virConnect,
        guest: Callable[..., libvirt.virDomain]) -> None:
    """A source paused while its migration job runs still migrates, and the destination
    ends running: libvirt resumes it there."""
    uid = str(uuid.uuid4())
    dom = guest(uid=uid)
    # 1 Mbit/s: the job takes about 10 s, and suspend() itself can take 5 s while the
    # source's QEMU is stuck writing to the throttled socket.
    host.limit_bandwidth(1000)
    outcome: list[Moved | BaseException] = []

    def move() -> None:
        try:
            outcome.append(migrate(dom, dest, host.uri, host.migration_uri))
        except BaseException as exc:
            outcome.append(exc)

    mover = threading.Thread(target=move)
    mover.start()
    try:
        # The incoming migration listens on every address of the host, not the URI's only:
        # "*:49152", the first port of libvirt's migration range. Once it does, the job
        # is under way.
        deadline = time.monotonic() + 30
        while "*:49152" not in _listening(host):
            assert time.monotonic() < deadline, "the destination never listened"
            time.sleep(0.02)
        asked = time.perf_counter()
        dom.suspend()
        suspend_s = time.perf_counter() - asked
        assert (PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION) == tuple(dom.state())
    finally:
        mover.join(60)
    assert 1 == len(outcome) and isinstance(outcome[0], Moved), outcome
    assert (RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED) == tuple(
        dest.lookupByUUIDString(uid).state())
    assert (None, RUNNING) == _where(host, uid)
    print(f"paused mid-job {_fmt(outcome[0])}, suspend() took {suspend_s:.2f} s")


def test_a_guest_paused_before_the_move_arrives_paused(
        host: SecondHost, dest: libvirt.virConnect,
        guest: Callable[..., libvirt.virDomain]) -> None:
    """A guest paused when its migration starts is paused (by the user) on the
    destination afterwards."""
    dom = guest()
    dom.suspend()
    migrate(dom, dest, host.uri, host.migration_uri)
    assert (PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER) == tuple(
        dest.lookupByUUIDString(dom.UUIDString()).state())


def test_guests_outlive_a_stopped_libvirtd(host: SecondHost, dest: libvirt.virConnect,
                                           guest: Callable[..., libvirt.virDomain]) -> None:
    """stop_libvirtd leaves the host's guests running and its URI refusing; start_libvirtd
    brings it back with the guest still running."""
    uid = str(uuid.uuid4())
    migrate(guest(uid=uid), dest, host.uri, host.migration_uri)
    qemu_pid = int((host.dir / "run" / "qemu" / f"{NAME_PREFIX}{uid[:13]}.pid").read_text())
    host.stop_libvirtd()
    try:
        assert not host.libvirtd_running()
        with pytest.raises(libvirt.libvirtError):
            libvirt.open(host.uri)
        assert Path(f"/proc/{qemu_pid}").exists()
    finally:
        host.start_libvirtd()
    assert (None, RUNNING) == _where(host, uid)


def _listening(host: SecondHost) -> list[str]:
    """Local addresses of the TCP sockets listening inside the host's network namespace."""
    out = subprocess.run([*host.command_prefix(net=True), "ss", "-ltnH"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def _fmt(moved: Moved) -> str:
    return (f"{moved.seconds:.2f} s wall, job {moved.elapsed_ms} ms, "
            f"downtime {moved.downtime_ms} ms")
