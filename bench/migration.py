"""Live migration A -> B -> A: total time and the guest's downtime, per move, arm against arm.

Host A is the system libvirtd (qemu:///system), host B a second libvirtd in
its own network and mount namespace on this machine (tests.second_host),
reached at qemu+tcp://169.254.X.2/system; B reaches A at
qemu+tcp://169.254.X.1/system. Each arm moves its own running guest (64 MiB,
1 vCPU, no OS, VNC on 127.0.0.1, no disk: nothing to copy but memory) A -> B
and back, --rounds times. The arms take turns within a round, first by
turns, so neither always runs on a machine the other just warmed or loaded.

Per move: total seconds (wall time of the move as the arm's caller sees it)
and the downtime QEMU measured for the switch-over, read with
``jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)`` on the destination's domain
after the move (libvirt 9.0 has ``downtime`` and ``time_elapsed`` there, in
ms; read with KEEP_COMPLETED, since a plain read consumes them; ``time_elapsed``
is the migration job alone, without the destination's
preparation and the source's clean-up that the total includes).

Arms, all peer to peer with the flags the worker uses (LIVE, PEER2PEER,
PERSIST_DEST, UNDEFINE_SOURCE, UNSAFE) and VIR_MIGRATE_PARAM_URI tcp://ADDR:
- ``virsh`` (the baseline, as issue 13 names it): ``virsh -c SRC migrate
  --live --p2p --persistent --undefinesource --unsafe --migrateuri
  tcp://ADDR DOM DESTURI`` as a subprocess;
- ``libvirt``: ``migrateToURI3`` from this process, the call the worker makes;
- ``workers``: the same move through two workers (A's here, B's in B's mount
  namespace; tests.e2e.migration_support), as nova's conductor asks for it:
  check_can_live_migrate_destination (a call to B, which asks A), then
  live_migration (a cast to A, which calls B's pre and post), timed until
  A's instance.live_migration_post.end arrives.
An arm is any ``Callable[[], Move]`` that makes the next move of its guest;
``run_arms`` takes a dict of them, so "through the workers" is one more entry.
Run: .venv/bin/python -m bench.migration [--rounds 5] [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libvirt

from bench.common import append_result, machine
from tests.domains import QEMU_URI, qemu_domain_type, remove_domains
from tests.e2e.migration_support import Pair, pair_of_hosts
from tests.migrations import LIVE_FLAGS, completed_stats, migrate
from tests.second_host import SecondHost
from worker.virt.domain_xml import DomainSpec, domain, to_string
from worker.virt.hypervisor import start_event_loop

NAME_PREFIX = "cw-bench-mig-"
SECTION = ("Live migration (64 MiB no-OS guest, A -> B -> A between the system libvirtd and a "
           "second one in a namespace; total s and downtime ms per move, median)")
BASELINE = "virsh"


@dataclass(frozen=True)
class Move:
    """One move of a guest between the hosts."""

    #: Wall time of the whole move, as the arm's caller waits for it.
    seconds: float
    #: Downtime of the switch-over (the guest paused), from the destination's job stats.
    downtime_ms: int
    #: "A->B" or "B->A".
    direction: str = ""
    #: The migration job alone (time_elapsed of the same stats).
    job_ms: int = 0


Arm = Callable[[], Move]


@dataclass
class Side:
    """One host as the arms see it."""

    name: str
    #: This process's connection to it.
    conn: libvirt.virConnect
    #: Its URI from this process (virsh -c).
    uri: str
    #: Its URI as the other host's libvirtd opens it for a peer-to-peer migration.
    peer_uri: str
    #: VIR_MIGRATE_PARAM_URI (--migrateuri): where the other host's QEMU sends the data.
    migration_uri: str


class Guest:
    """A guest that moves to the other side each time it is asked; knows where it is."""

    def __init__(self, uid: str, here: Side, there: Side) -> None:
        self.uid, self.here, self.there = uid, here, there

    def moved(self, seconds: float) -> Move:
        """Swap sides after a move of seconds; the Move with the new host's job stats."""
        self.here, self.there = self.there, self.here
        stats = completed_stats(self.here.conn.lookupByUUIDString(self.uid))
        return Move(seconds, int(stats["downtime"]), f"{self.there.name}->{self.here.name}",
                    int(stats["time_elapsed"]))


def libvirt_arm(guest: Guest) -> Arm:
    """Each call: migrateToURI3 of the guest to the other side, from this process."""
    def move() -> Move:
        dom = guest.here.conn.lookupByUUIDString(guest.uid)
        moved = migrate(dom, guest.there.conn, guest.there.peer_uri,
                        guest.there.migration_uri, flags=LIVE_FLAGS)
        return guest.moved(moved.seconds)
    return move


def virsh_arm(guest: Guest) -> Arm:
    """Each call: ``virsh migrate --live --p2p ...`` of the guest to the other side."""
    def move() -> Move:
        argv = ["virsh", "-q", "-c", guest.here.uri, "migrate", "--live", "--p2p",
                "--persistent", "--undefinesource", "--unsafe", "--migrateuri",
                guest.there.migration_uri, guest.uid, guest.there.peer_uri]
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
        return guest.moved(time.perf_counter() - started)
    return move


def workers_arm(pair: Pair, guest: Guest) -> Arm:
    """Each call: nova's conductor calls through the two workers (the destination's check,
    the source's live_migration cast), timed until the source's live_migration_post.end."""
    hosts = {"A": pair.a, "B": pair.b}

    def move() -> Move:
        started = time.perf_counter()
        pair.move(guest.uid, hosts[guest.here.name], hosts[guest.there.name])
        return guest.moved(time.perf_counter() - started)
    return move


def run_arms(arms: dict[str, Arm], rounds: int) -> dict[str, list[Move]]:
    """Each round, every arm moves its guest there and back; the arms take turns, the
    first arm changing each round. Every arm's moves, in order."""
    moves: dict[str, list[Move]] = {name: [] for name in arms}
    names = list(arms)
    for number in range(rounds):
        order = names[number % len(names):] + names[:number % len(names)]
        for name in order:
            for _ in range(2):
                moves[name].append(arms[name]())
                last = moves[name][-1]
                print(f"round {number + 1} {name:<8} {last.direction}: {last.seconds:.2f} s, "
                      f"job {last.job_ms} ms, downtime {last.downtime_ms} ms", flush=True)
    return moves


def table(moves: dict[str, list[Move]], baseline: str = BASELINE) -> list[str]:
    """One line per arm and direction: median total and downtime, and the ratios of both
    to the baseline arm's in the same direction."""
    def med(name: str, direction: str, value: Callable[[Move], float]) -> float:
        return statistics.median(value(m) for m in moves[name] if m.direction == direction)

    lines = [f"{'arm':<10}{'move':<6}{'n':>3}{'total s':>9}{'job ms':>8}{'down ms':>9}"
             f"{'total/base':>12}{'down/base':>11}"]
    directions = sorted({m.direction for m in moves[baseline]})
    for name in moves:
        for direction in directions:
            count = sum(1 for m in moves[name] if m.direction == direction)
            total = med(name, direction, lambda m: m.seconds)
            down = med(name, direction, lambda m: m.downtime_ms)
            base_total = med(baseline, direction, lambda m: m.seconds)
            base_down = med(baseline, direction, lambda m: m.downtime_ms)
            lines.append(f"{name:<10}{direction:<6}{count:>3}{total:>9.2f}"
                         f"{med(name, direction, lambda m: m.job_ms):>8.0f}{down:>9.0f}"
                         f"{total / base_total:>12.2f}{down / max(base_down, 1):>11.2f}")
    return lines


def start_guest(conn: libvirt.virConnect, domain_type: str) -> str:
    """A running 64 MiB no-OS guest on conn; its UUID."""
    uid = str(uuid.uuid4())
    spec = DomainSpec(f"{NAME_PREFIX}{uid[:13]}", uid, memory_mib=64, vcpus=1,
                      domain_type=domain_type, vnc_listen="127.0.0.1")
    conn.defineXML(to_string(domain(spec))).create()
    return uid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="A -> B -> A trips per arm")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//",
                        help="RabbitMQ for the workers' arm")
    ns = parser.parse_args()
    start_event_loop()  # before any connection opens, as the worker does
    made: list[str] = []
    with SecondHost() as host:
        # B's libvirtd reaches A through SecondHost's forwarder to A's unix socket.
        a = Side("A", libvirt.open(QEMU_URI), QEMU_URI, host.root_uri, host.root_migration_uri)
        b = Side("B", libvirt.open(host.uri), host.uri, host.uri, host.migration_uri)
        domain_type = qemu_domain_type(a.conn)
        try:
            with tempfile.TemporaryDirectory(prefix="cw-bench-mig-") as work, pair_of_hosts(
                    host, tag=uuid.uuid4().hex[:8], broker_url=ns.broker_url,
                    work=Path(work), instances=Path(work) / "instances",
                    b_instances_seen=Path(work) / "instances",
                    images=Path(work) / "images") as pair:
                arms: dict[str, Arm] = {}
                for name, make in ((BASELINE, virsh_arm), ("libvirt", libvirt_arm)):
                    made.append(start_guest(a.conn, domain_type))
                    arms[name] = make(Guest(made[-1], a, b))
                made.append(start_guest(a.conn, domain_type))
                arms["workers"] = workers_arm(pair, Guest(made[-1], a, b))
                moves = run_arms(arms, ns.rounds)
        finally:
            for uri in (QEMU_URI, host.uri):  # the host's close() would remove its own too
                with contextlib.suppress(libvirt.libvirtError):
                    remove_domains(uri, made)
            for side in (a, b):
                side.conn.close()
    lines = table(moves)
    print("\n".join(lines))
    if not ns.no_record:
        cells = []
        for name in moves:
            for direction in ("A->B", "B->A"):
                picked = [m for m in moves[name] if m.direction == direction]
                cells.append(f"{name} {direction} "
                             f"{statistics.median(m.seconds for m in picked):.2f} s, down "
                             f"{statistics.median(m.downtime_ms for m in picked):.0f} ms")
        append_result(SECTION, f"{machine()} | {domain_type} | " + " | ".join(cells)
                      + f" | {ns.rounds} rounds | `.venv/bin/python -m bench.migration "
                        f"--rounds {ns.rounds}`")


if __name__ == "__main__":
    main()
