"""Live migration done directly with libvirt-python, and what libvirt says about a move.

Used by the e2e tests of tests.second_host and by the baseline arm of
bench.migration: the same flags the worker is to use (issue 13), peer to
peer, so the source's libvirtd talks to the destination's itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import libvirt

#: nova's live_migration_flag, and UNSAFE: both hosts' disks are on one filesystem here,
#: which libvirt takes for shared storage with a cache mode it does not trust.
LIVE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
              | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
              | libvirt.VIR_MIGRATE_UNSAFE)
#: nova's block_migration_flag on top: copy the disks' top images to the destination's files.
BLOCK_FLAGS = LIVE_FLAGS | libvirt.VIR_MIGRATE_NON_SHARED_INC


@dataclass(frozen=True)
class Moved:
    """One finished migration: wall time of migrateToURI3 and the destination's job stats."""

    seconds: float
    #: VIR_DOMAIN_JOB_STATS_COMPLETED of the domain on the destination (time_elapsed,
    #: downtime, setup_time in ms; data_total, memory_*, disk_* in bytes; ...).
    stats: dict[str, int]

    @property
    def downtime_ms(self) -> int:
        """How long the guest was paused for the switch-over, as QEMU measured it."""
        return self.stats["downtime"]

    @property
    def elapsed_ms(self) -> int:
        """The migration job's own duration, as libvirt measured it."""
        return self.stats["time_elapsed"]


def migrate(dom: libvirt.virDomain, dest: libvirt.virConnect, dest_uri: str,
            migration_uri: str, *, flags: int = LIVE_FLAGS,
            disks: list[str] | None = None) -> Moved:
    """Move dom peer to peer to the host at dest_uri (which dest is connected to).

    migration_uri (VIR_MIGRATE_PARAM_URI, ``tcp://ADDR``) is where the source's QEMU
    sends the data: without it the destination offers its hostname, which on this
    machine resolves to the root namespace whichever host is meant.
    """
    params: dict[str, object] = {libvirt.VIR_MIGRATE_PARAM_URI: migration_uri}
    if disks is not None:
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = disks
    uid = dom.UUIDString()
    started = time.perf_counter()
    dom.migrateToURI3(dest_uri, params, flags)
    seconds = time.perf_counter() - started
    return Moved(seconds, completed_stats(dest.lookupByUUIDString(uid)))


def completed_stats(dom: libvirt.virDomain) -> dict[str, int]:
    """The stats of dom's last completed job (a migration: on the destination's domain).

    Read without KEEP_COMPLETED, libvirt hands them out once and then forgets them: a
    second read returns only the job type.
    """
    stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED
                         | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
    return {k: int(v) for k, v in stats.items()}
