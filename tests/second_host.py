"""A second libvirt host on this machine: its own network and mount namespace and libvirtd.

As DESIGN.md's "Two hosts on one machine" has it. ``SecondHost`` makes a
network namespace with a veth pair (``tests.host_link``), then a process
that keeps a private mount namespace alive inside it (the keeper: ``ip
netns exec NS unshare -m --propagation private``, which bind-mounts private
dirs over /run/libvirt, /var/lib/libvirt, /var/log/libvirt, /etc/libvirt and
every path of ``private_paths``, then sleeps). virtlogd and libvirtd are
started in both namespaces with ``nsenter`` on the keeper, so the daemons
can be stopped and started again while the mounts stay. The root namespace
reaches the host at ``qemu+tcp://ADDR/system``; the host reaches the root
libvirtd at ``qemu+tcp://ROOT_ADDR/system`` through a forwarder to its unix
socket (``tests.unix_forward``), so peer-to-peer migration works both ways.

``command_prefix()`` runs a process in the host's mount namespace but the
root network namespace: its ``qemu:///system`` is this host's libvirtd (the
socket under /run/libvirt is the private one) and 127.0.0.1 is the root's
RabbitMQ. Paths not in private_paths are shared with the root host.

The system libvirtd and its files are never touched: the copy of
/etc/libvirt is made with its domain definitions and autostart links left
out, and every mount is made inside the private namespace only. close()
destroys and undefines the host's domains (through its libvirtd, which also
removes their cgroups), stops the daemons, kills whatever else still runs in
the host's namespaces, and removes the namespace, the veth pair and the
state dir. A host whose owning process died without close() is swept by the
next SecondHost to start (without its libvirtd: its guests' cgroup dirs stay).

Each host is known by X, the third octet of its addresses, claimed first by
its state dir under STATE_ROOT (which stays until the host is closed or
swept, so no other host takes X meanwhile) and then by ``ip netns add
cw-host-X``. Processes are known by PID and start time (PIDs wrap around
quickly here) and the mount namespace by its name only while the keeper
runs in it (the name of a namespace that is gone is reused): close() and the
sweep never signal a process that is not the host's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import libvirt

from tests.domains import LIBVIRTD_SCRIPT
from tests.host_link import HostLink, candidates
from tests.ns_processes import alive, end, identity, kill_namespace, mount_ns_of, same_process
from tests.unix_forward import UnixForward

#: Where every SecondHost keeps its state dir, named by its X.
STATE_ROOT = Path(tempfile.gettempdir()) / "cw-second-hosts"
#: The system daemons' dirs that each host gets a private copy of, by state subdir.
SYSTEM_DIRS = {"run": Path("/run/libvirt"), "lib": Path("/var/lib/libvirt"),
               "log": Path("/var/log/libvirt"), "etc": Path("/etc/libvirt")}
ROOT_SOCKET = "/run/libvirt/libvirt-sock"
LIBVIRT_PORT = 16509
#: Mounts its arguments (source, target pairs), says so, and keeps the namespace alive.
KEEPER = ('set -e; while [ "$#" -gt 0 ]; do mount --bind "$1" "$2"; shift 2; done; '
          'echo "ready $$"; exec sleep infinity')
START_TIMEOUT = 30.0


class SecondHost:
    """A second hypervisor host: libvirtd in its own network and mount namespace."""

    def __init__(self, private_paths: list[Path] | tuple[Path, ...] = ()) -> None:
        self.private_paths = [Path(p) for p in private_paths]
        self.host_uuid = str(uuid.uuid4())
        self._link: HostLink | None = None
        self._forward: UnixForward | None = None
        #: ``ip netns exec``, which waits for its child, the keeper (pid keeper_pid).
        self._keeper: subprocess.Popen[str] | None = None
        self._keeper_pid: int | None = None
        self._made_mountpoints: list[Path] = []
        self._closed = False
        self.dir = Path()

    # -- what callers use -------------------------------------------------------------

    @property
    def link(self) -> HostLink:
        """The namespace and veth pair (RuntimeError before start)."""
        if self._link is None:
            raise RuntimeError("SecondHost not started")
        return self._link

    @property
    def addr(self) -> str:
        """The host's address (its end of the veth pair)."""
        return self.link.addr

    @property
    def uri(self) -> str:
        """Its libvirtd, from the root namespace (and from inside the host)."""
        return f"qemu+tcp://{self.addr}/system"

    @property
    def migration_uri(self) -> str:
        """VIR_MIGRATE_PARAM_URI for a migration to this host."""
        return f"tcp://{self.addr}"

    @property
    def root_addr(self) -> str:
        """The root host's address as this host sees it (the root end of the veth pair)."""
        return self.link.root_addr

    @property
    def root_uri(self) -> str:
        """The root libvirtd as this host reaches it (through the forwarder)."""
        return f"qemu+tcp://{self.root_addr}/system"

    @property
    def root_migration_uri(self) -> str:
        """VIR_MIGRATE_PARAM_URI for a migration from this host to the root one."""
        return f"tcp://{self.root_addr}"

    @property
    def netns(self) -> str:
        """The network namespace's name (for ``ip netns exec``)."""
        return self.link.netns

    @property
    def mount_ns_pid(self) -> int:
        """A process in the host's mount (and network) namespace, for nsenter --target."""
        if self._keeper_pid is None:
            raise RuntimeError("SecondHost not started")
        return self._keeper_pid

    @property
    def mount_ns(self) -> str:
        """The mount namespace as /proc/PID/ns/mnt names it (``mnt:[4026532...]``)."""
        found = self._read("mnt_ns")
        if found is None:
            raise RuntimeError("SecondHost not started")
        return found

    def pids(self) -> dict[str, int]:
        """The host's own processes that run now: keeper, virtlogd, libvirtd."""
        found = {name: pid for name in ("virtlogd", "libvirtd")
                 if (pid := self._daemon_pid(name)) is not None}
        if self._keeper_pid is not None and alive(self._keeper_pid):
            found["keeper"] = self._keeper_pid
        return found

    @property
    def log_path(self) -> Path:
        """The host's libvirtd log, as the root namespace sees it."""
        return self.dir / "log" / "libvirtd.log"

    def command_prefix(self, *, net: bool = False) -> list[str]:
        """argv prefix that runs a command in the host's mount namespace, in the caller's
        working directory; in the root network namespace unless net."""
        prefix = ["nsenter", f"--target={self.mount_ns_pid}", "--mount", f"--wd={os.getcwd()}"]
        return prefix + (["--net"] if net else [])

    def private_dir(self, path: Path) -> Path:
        """Where the root namespace sees what the host sees at path (one of private_paths)."""
        return self.dir / "private" / str(self.private_paths.index(Path(path)))

    def __enter__(self) -> SecondHost:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        """Make the namespaces, start virtlogd and libvirtd, wait until libvirtd answers."""
        sweep_stale()
        try:
            self._link = self._claim()
            self._prepare_dirs()
            self._forward = UnixForward(self.root_addr, LIBVIRT_PORT, ROOT_SOCKET)
            self._start_keeper()
            self.start_libvirtd()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    def _claim(self) -> HostLink:
        """Take a free X: first its state dir (renamed into place whole, with its owner, so
        X stays taken until a sweep is done with it), then its network namespace."""
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        for x in candidates():
            fresh = Path(tempfile.mkdtemp(dir=STATE_ROOT, prefix=".new-"))
            # "owner" holds the bare PID, as the first version of this module (which may be
            # running beside this one) reads it; "owner_id" tells a reused PID apart.
            (fresh / "owner").write_text(str(os.getpid()))
            (fresh / "owner_id").write_text(identity(os.getpid()) or "")
            try:
                fresh.rename(STATE_ROOT / str(x))  # fails when X has a dir, stale or not
            except OSError:
                shutil.rmtree(fresh)
                continue
            link = HostLink.create(x)
            if link is not None:
                self.dir = STATE_ROOT / str(x)
                return link
            shutil.rmtree(STATE_ROOT / str(x))  # a namespace of that name not ours
        raise RuntimeError("no free 169.254.X.0/30 for a SecondHost")

    def _prepare_dirs(self) -> None:
        for sub in ("run", "lib", "log"):
            (self.dir / sub).mkdir()
        etc = self.dir / "etc"
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        # The root host's domains and autostarted networks are not this host's.
        for stale in [*etc.glob("qemu/*.xml"), *etc.glob("qemu/autostart/*"),
                      *etc.glob("qemu/networks/autostart/*")]:
            stale.unlink()
        with (etc / "libvirtd.conf").open("a") as conf:
            conf.write("\n# SecondHost: a TCP listener on its own address, no auth (link-local).\n"
                       f'listen_tcp = 1\nlisten_tls = 0\nauth_tcp = "none"\n'
                       f'listen_addr = "{self.addr}"\nhost_uuid = "{self.host_uuid}"\n'
                       'unix_sock_rw_perms = "0770"\n')
        for index, path in enumerate(self.private_paths):
            (self.dir / "private" / str(index)).mkdir(parents=True)
            if not path.exists():
                # A bind mount needs its mount point; remembered so close() removes it.
                missing = [p for p in (path, *path.parents) if not p.exists()]
                path.mkdir(parents=True)
                self._made_mountpoints.extend(missing)

    def _start_keeper(self) -> None:
        pairs: list[str] = []
        for sub, target in SYSTEM_DIRS.items():
            pairs += [str(self.dir / sub), str(target)]
        for index, path in enumerate(self.private_paths):
            pairs += [str(self.dir / "private" / str(index)), str(path)]
        self._keeper = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private",
             "--", "sh", "-c", KEEPER, "sh", *pairs],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert self._keeper.stdout is not None
        ready, _, _ = select.select([self._keeper.stdout], [], [], START_TIMEOUT)
        words = (self._keeper.stdout.readline() if ready else "").split()
        if len(words) != 2 or words[0] != "ready":
            self._keeper.kill()
            _, err = self._keeper.communicate(timeout=10)
            raise RuntimeError(f"the mount namespace keeper failed: {err.strip()}")
        self._keeper_pid = int(words[1])
        mount_ns = mount_ns_of(self._keeper_pid)
        if mount_ns is None or mount_ns == mount_ns_of(os.getpid()):
            raise RuntimeError(f"keeper {self._keeper_pid} is not in a mount namespace of its own")
        # For close and the sweep: the namespace is known by its name while the keeper runs.
        (self.dir / "mnt_ns").write_text(mount_ns)
        (self.dir / "keeper").write_text(identity(self._keeper_pid) or "")

    # -- daemons ------------------------------------------------------------------------

    def _daemon_pid(self, name: str) -> int | None:
        try:
            pid = int((self.dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        # A daemon that died leaves its PID file; the number may be another process's now.
        mine = _verified_mount_ns(self.dir)
        return pid if mine is not None and alive(pid) and mount_ns_of(pid) == mine else None

    def libvirtd_running(self) -> bool:
        """True while the host's libvirtd process lives."""
        return self._daemon_pid("libvirtd") is not None

    def start_libvirtd(self) -> None:
        """Start virtlogd (when it is not running) and libvirtd; return once libvirtd answers."""
        inside = ["nsenter", f"--target={self.mount_ns_pid}", "--mount", "--net", "--"]
        if self._daemon_pid("virtlogd") is None:
            subprocess.run([*inside, "virtlogd", "-d", "-p", str(self.dir / "virtlogd.pid")],
                           check=True, timeout=30)
        if self._daemon_pid("libvirtd") is None:
            # Under a subreaper, as the root host's (scripts/libvirtd.sh says why).
            subprocess.run([*inside, "bash", str(LIBVIRTD_SCRIPT), "--listen", "-p",
                            str(self.dir / "libvirtd.pid")], check=True, timeout=30,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                conn = libvirt.open(self.uri)
                break
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            _await_reconnects(conn)
        finally:
            conn.close()

    def stop_libvirtd(self, sig: int = signal.SIGTERM) -> None:
        """Stop the host's libvirtd (SIGKILL for a crash); its guests keep running, as on a
        real host. Returns once the process is gone."""
        pid = self._daemon_pid("libvirtd")
        if pid is not None:
            end(pid, sig)

    def limit_bandwidth(self, kbit: int | None) -> None:
        """Shape the host's link both ways to kbit (1000 bit/s units); None lifts it."""
        self.link.limit(kbit)

    # -- close --------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the host and everything it made; idempotent. Every step is tried; a
        RuntimeError afterwards names those that failed."""
        if self._closed:
            return
        failures: list[str] = []

        def step(name: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:  # each step must run whatever the one before did
                failures.append(f"{name}: {exc!r}")

        if self.dir != Path() and _verified_mount_ns(self.dir):  # the keeper still runs
            step("remove domains", self._remove_domains)
            step("stop daemons", self._stop_daemons)
        if self._keeper is not None:
            step("kill processes", lambda: kill_namespace(_verified_mount_ns(self.dir),
                                                          self._link))
            step("reap keeper", self._reap_keeper)
        if self._forward is not None:
            step("stop forwarder", self._forward.close)
        if self._link is not None:
            step("remove link", self._link.remove)
        for path in reversed(self._made_mountpoints):
            step(f"remove {path}", functools.partial(_remove_if_empty, path))
        if self.dir != Path():
            step("remove state dir", lambda: shutil.rmtree(self.dir))
        self._closed = True
        if failures:
            raise RuntimeError(f"SecondHost.close: {'; '.join(failures)}")

    def _reap_keeper(self) -> None:
        if self._keeper is not None:
            self._keeper.communicate(timeout=10)  # waits, and closes its pipes

    def _read(self, name: str) -> str | None:
        try:
            return (self.dir / name).read_text()
        except OSError:
            return None

    def _remove_domains(self) -> None:
        # Through libvirtd, so it also removes the guests' cgroups and state files.
        self.start_libvirtd()
        conn = libvirt.open(self.uri)
        try:
            for dom in conn.listAllDomains():
                try:
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                          | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                                          | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                except libvirt.libvirtError as exc:
                    # Gone or stopped meanwhile (a migration ending): the kill sweep follows.
                    if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                                    libvirt.VIR_ERR_OPERATION_INVALID):
                        raise
        finally:
            conn.close()

    def _stop_daemons(self) -> None:
        for name in ("libvirtd", "virtlogd"):
            pid = self._daemon_pid(name)
            if pid is not None:
                end(pid, signal.SIGTERM)


def _await_reconnects(conn: libvirt.virConnect) -> None:
    """Return once libvirtd has reconnected to the guests it found running at its start.

    It answers before that: a destroy during the reconnect kills the guest and still
    fails with "domain is not running". A query job waits for the reconnect's job.
    """
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        with contextlib.suppress(libvirt.libvirtError):
            dom.memoryStats()


def _remove_if_empty(path: Path) -> None:
    """rmdir path unless something was put there from the root side (the caller's to keep)."""
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def _verified_mount_ns(state: Path) -> str | None:
    """The host's mount namespace name while its keeper runs in it; None otherwise (the
    name may be a newer namespace's by now)."""
    try:
        mount_ns, keeper = (state / "mnt_ns").read_text(), (state / "keeper").read_text()
    except OSError:
        return None
    pid = same_process(keeper)
    return mount_ns if pid is not None and mount_ns_of(pid) == mount_ns else None


def _owner_alive(state: Path) -> bool:
    try:
        return same_process((state / "owner_id").read_text()) is not None
    except OSError:
        pass
    try:
        return alive(int((state / "owner").read_text()))
    except (OSError, ValueError):
        return False


def sweep_stale() -> None:
    """Remove the hosts whose owning process died without closing them."""
    if not STATE_ROOT.is_dir():
        return
    for state in STATE_ROOT.iterdir():
        if _owner_alive(state) or (not (state / "owner").exists() and state.name[0] == "."):
            continue  # alive, or a dir still being made (its owner is written next)
        # X stays claimed by this dir until it goes, so cw-host-X is the stale host's.
        link = HostLink(int(state.name)) if state.name.isdigit() else None
        kill_namespace(_verified_mount_ns(state), link)
        if link is not None:
            link.remove()
        shutil.rmtree(state, ignore_errors=True)
