"""Builds from nova's image cache (cold, warm, four at once) against qemu-img and libvirt by hand.

The image is a qcow2 the bench makes with qemu-img (--image-mib virtual, its
first --data-mib random data, so that filling the cache really reads and
writes), put in the worker's images_path. Every build is 64 MiB, 1 vCPU, a
1 GiB root disk, no ephemeral or swap, on qemu:///system.

Single builds, each round a cold pair then a warm pair, each pair in
alternating order:
- worker: build_and_run_instance cast with image {"id": ...} to the worker in
  this process, to instance.create.end. Cold, its _base is empty, so it
  converts the image to raw into instances_path/_base (and fsyncs it) before
  making the overlay; warm, the base of its cold build is there.
- raw: the same done by hand. Cold, it too pays for the copy into a cache of
  its own (qemu-img convert -f qcow2 -O raw), so both do like work; it does
  not fsync the copy as the worker does (the fsync is timed apart, after);
  then qemu-img create -f qcow2 -b <base> -F raw, defineXML of the same
  lxml-built XML, create(), poll until running. Warm starts at the overlay.
Four at once, each round, in alternating order: four builds of one image cast
at once to the worker with an empty _base, first cast to the last
create.end, counting image_cached log events and _base entries (one of each:
the image was read once); raw, four threads on one connection where the
first to take a lock converts the image and the others wait for it (one
fill, then four overlays, as the worker's lock does), each then overlay,
define, start, poll. Ratios: worker / raw, and four at once / one cold build.

One untimed cold build each way comes first (the first of a run costs more).
Each build's domain and files are removed once it is timed, so no build runs
beside another's guest; both caches are emptied before each cold build. The
image file stays in the page cache after its first read, for both sides alike.
Run: .venv/bin/python -m bench.cache
     .venv/bin/python -m bench.cache --rounds 1 --no-record    (a quick look)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import libvirt
import structlog
from kombu import Connection

from bench.common import EventCounter, append_result, bench_config, forget, machine, median
from bench.fleet import wait_events
from bench.parallel import QEMU_URI, remove_all
from tests.e2e.support import kvm_works
from worker import logs
from worker.amqp.client import RpcClient
from worker.service import Service
from worker.virt.disk_xml import DiskSpec
from worker.virt.domain_xml import DomainSpec, domain, to_string
from worker.virt.hypervisor import start_event_loop
from worker.virt.image_cache import ImageCache, cache_name

NAME_PREFIX = "cw-bench-cache-"
IMAGE_ID = "bench-cache-image"
MIB = 1 << 20
CREATED = ("instance.create.end", "instance.create.error")


class FillTally:
    """A structlog processor: notes each image_cached event's seconds; drops info and debug."""

    def __init__(self) -> None:
        self.fills: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, _logger: Any, method: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("event") == "image_cached":
            with self._lock:
                self.fills.append(float(event.get("seconds", 0.0)))
        if method in ("debug", "info"):
            raise structlog.DropEvent
        return event


def counting_logs() -> FillTally:
    """Logs at info for the tally, but only warnings and worse printed (as the benches do)."""
    logs.setup("info")
    tally = FillTally()
    structlog.configure(processors=[tally, *structlog.get_config()["processors"]])
    return tally


def make_image(store: Path, virtual_mib: int, data_mib: int) -> Path:
    """A qcow2 of virtual_mib whose first data_mib are random (incompressible, not holes)."""
    store.mkdir(parents=True, exist_ok=True)
    source = store / "source.raw"
    with open(source, "wb") as handle:
        for _ in range(data_mib):
            handle.write(os.urandom(MIB))
        handle.truncate(virtual_mib * MIB)
    image = store / IMAGE_ID
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(source),
                    str(image)], check=True)
    source.unlink()
    return image


def name_of(uid: str) -> str:
    """The domain name of a bench build."""
    return f"{NAME_PREFIX}{uid[:13]}"


class Raw:
    """Builds done by hand: a cache and instance directories of its own, one connection."""

    def __init__(self, conn: libvirt.virConnect, root: Path, image: Path,
                 domain_type: str) -> None:
        self.conn, self.root, self.image, self.domain_type = conn, root, image, domain_type
        self.cache = root / "_base"
        self.converts: list[float] = []
        self._lock = threading.Lock()

    def base(self) -> Path:
        """The cached raw copy of the image, converted now by whoever comes first."""
        entry = self.cache / cache_name(IMAGE_ID)
        with self._lock:
            if not entry.exists():
                started = time.perf_counter()
                self.cache.mkdir(parents=True, exist_ok=True)
                subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw",
                                str(self.image), str(entry)], check=True)
                self.converts.append(time.perf_counter() - started)
        return entry

    def build(self, uid: str) -> None:
        """Overlay on the base, define the worker's XML, start, poll until running."""
        base = self.base()
        directory = self.root / uid
        directory.mkdir()
        disk = directory / "disk"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                        str(disk), "1G"], check=True)
        spec = DomainSpec(name_of(uid), uid, memory_mib=64, vcpus=1, domain_type=self.domain_type,
                          disks=(DiskSpec("file", str(disk), "vda", boot_order=1),))
        dom = self.conn.defineXML(to_string(domain(spec)))
        dom.create()
        while dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            time.sleep(0.01)

    def builds(self, uids: list[str]) -> float:
        """These builds, one thread each, released together; seconds to the last running."""
        gate = threading.Barrier(len(uids) + 1)
        errors: list[BaseException] = []

        def one(uid: str) -> None:
            gate.wait()
            try:
                self.build(uid)
            except BaseException as exc:  # re-raised below, on the bench's thread
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(u,)) for u in uids]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        gate.wait()
        for thread in threads:
            thread.join(300)
        if errors:
            raise errors[0]
        return time.perf_counter() - started


class Worker:
    """Builds cast to the in-process worker."""

    def __init__(self, client: RpcClient, counter: EventCounter, host: str) -> None:
        self.client, self.counter, self.host = client, counter, host

    def builds(self, uids: list[str]) -> float:
        """Cast a build of the image for each uid at once; seconds to the last create.end."""
        done: Callable[[str], bool] = lambda kind: kind in CREATED  # noqa: E731
        before = self.counter.count(done)
        started = time.perf_counter()
        for uid in uids:
            self.client.cast(self.host, "build_and_run_instance", {
                "instance": {"uuid": uid, "name": name_of(uid),
                             "flavor": {"memory_mb": 64, "vcpus": 1, "root_gb": 1}},
                "image": {"id": IMAGE_ID}})
        last = wait_events(self.counter, done, before + len(uids), timeout=300)
        failed = self.counter.count(lambda kind: kind == "instance.create.error")
        assert failed == 0, "a build failed: see the worker's log"
        return last - started


def fsync_seconds(path: Path) -> float:
    """Seconds an fsync of path takes now (the worker syncs its base before renaming it)."""
    started = time.perf_counter()
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return time.perf_counter() - started


def clear(uids: list[str], directories: list[Path]) -> list[str]:
    """Remove the domains and directories; what could not be removed."""
    failures = remove_all(uids)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Each round: a cold and a warm build each way, then four at once each way.")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--image-mib", type=int, default=256,
                        help="virtual size of the qcow2 image (default 256)")
    parser.add_argument("--data-mib", type=int, default=128,
                        help="random data written at the image's start (default 128)")
    parser.add_argument("--domain-type", choices=("kvm", "qemu"), default=None,
                        help="default: kvm when /dev/kvm works, else qemu (TCG)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ns = parser.parse_args()
    if not 0 <= ns.data_mib <= ns.image_mib <= 1024:
        parser.error("need 0 <= --data-mib <= --image-mib <= 1024 (the root disk is 1 GiB)")
    tally = counting_logs()
    start_event_loop()  # before any connection opens, as the worker does
    conn = libvirt.open(QEMU_URI)
    domain_type = ns.domain_type or ("kvm" if kvm_works(conn) else "qemu")
    times: dict[str, list[float]] = {k: [] for k in (
        "cold_w", "cold_r", "warm_w", "warm_r", "four_w", "four_r")}
    reads: list[tuple[int, int]] = []  # (image_cached events, _base entries) per four-at-once
    worker_fills: list[float] = []
    raw_syncs: list[float] = []  # an fsync of raw's fresh base, after (not in) its time
    made: list[str] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        image = make_image(Path(tmp) / "images", ns.image_mib, ns.data_mib)
        file_mib = image.stat().st_size / MIB
        cfg = bench_config(tmp, virt_type=domain_type, topic=f"benchcache{uuid.uuid4().hex[:8]}")
        instances = Path(cfg.instances_path)
        raw = Raw(conn, Path(tmp) / "raw", image, domain_type)
        raw.root.mkdir()
        cache = ImageCache(cfg.instances_path, cfg.images_path)
        counter = EventCounter(cfg.transport_url, cfg.control_exchange,
                               cfg.notifications.notification_topic)
        service = Service(cfg)
        service.start()
        try:
            with Connection(cfg.transport_url) as amqp_conn:
                worker = Worker(RpcClient(amqp_conn, exchange=cfg.control_exchange,
                                          topic=cfg.topic), counter, cfg.host)

                def run(key: str, count: int) -> None:
                    """count builds one way, timed, then their domains and disks removed."""
                    uids = [str(uuid.uuid4()) for _ in range(count)]
                    made.extend(uids)
                    side, root = (worker, instances) if key.endswith("_w") else (raw, raw.root)
                    if not key.startswith("warm"):
                        shutil.rmtree(root / "_base", ignore_errors=True)  # a cold cache
                    fills = len(tally.fills)
                    times[key].append(side.builds(uids))
                    if key == "cold_w":
                        worker_fills.extend(tally.fills[fills:])
                    if key == "cold_r":
                        raw_syncs.append(fsync_seconds(raw.base()))
                    if key == "four_w":
                        reads.append((len(tally.fills) - fills, len(cache.entries())))
                    failures.extend(clear(uids, [root / u for u in uids]))

                # One untimed cold build each way first: the worker's first message and
                # libvirtd's first QEMU start of a run cost more than the later ones.
                run("cold_w", 1)
                run("cold_r", 1)
                for kept in (*times.values(), worker_fills, raw.converts, raw_syncs):
                    kept.clear()
                for number in range(ns.rounds):
                    for pair in (("cold_w", "cold_r"), ("warm_w", "warm_r"),
                                 ("four_w", "four_r")):
                        for key in pair if number % 2 == 0 else pair[::-1]:
                            run(key, 4 if key.startswith("four") else 1)
                    for root in (instances, raw.root):
                        shutil.rmtree(root / "_base", ignore_errors=True)
                    print(f"round {number + 1}: " + ", ".join(
                        f"{k} {v[-1] * 1000:.0f} ms" for k, v in times.items())
                        + f"; four at once read the image {reads[-1][0]}x, _base entries "
                        f"{reads[-1][1]}", flush=True)
        finally:
            counter.close()
            service.stop(grace=30)
            failures += remove_all(made)  # those a failed round left
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            forget(cfg, [service.consumer.fanout_unique])
            if failures:
                print(f"WARNING: domains left behind: {failures}")
    ms = {k: median(v) * 1000 for k, v in times.items()}
    once = all(r == (1, 1) for r in reads)
    what = (f"{domain_type}, 64 MiB, 1 GiB overlay; image qcow2 {ns.image_mib} MiB virtual, "
            f"{ns.data_mib} MiB random data, {file_mib:.0f} MiB file")
    fill = (f"fill: worker convert+fsync {median(worker_fills) * 1000:.0f} ms, raw convert "
            f"{median(raw.converts) * 1000:.0f} ms (an fsync after it, not in raw's time: "
            f"{median(raw_syncs) * 1000:.0f} ms)")
    single = (f"cold: worker {ms['cold_w']:.0f} ms, raw convert+overlay+define+start "
              f"{ms['cold_r']:.0f} ms, ratio {ms['cold_w'] / ms['cold_r']:.2f} | warm: worker "
              f"{ms['warm_w']:.0f} ms, raw overlay+define+start {ms['warm_r']:.0f} ms, ratio "
              f"{ms['warm_w'] / ms['warm_r']:.2f} | {fill} | median of {ns.rounds}")
    seen = (f"1 image_cached event and 1 _base entry in each of {len(reads)} rounds" if once
            else ", ".join(f"{a} image_cached/{b} entries" for a, b in reads))
    four = (f"worker 4 casts -> last create.end {ms['four_w']:.0f} ms, image read once: "
            f"{'yes' if once else 'NO'} ({seen}) "
            f"| raw 4 threads, one fill under a lock then 4 overlays {ms['four_r']:.0f} ms | "
            f"ratio {ms['four_w'] / ms['four_r']:.2f} | 4 at once / 1 cold: worker "
            f"{ms['four_w'] / ms['cold_w']:.2f}, raw {ms['four_r'] / ms['cold_r']:.2f} | "
            f"median of {ns.rounds}")
    print(f"build from the image cache ({what}): {single}")
    print(f"four builds of one new image at once: {four}")
    if not ns.no_record:
        append_result("Build from the image cache (cold and warm; ratio worker / raw)",
                      f"{machine()} | {what} | {single}")
        append_result("Four concurrent builds of one new image (cold cache; ratio worker / raw)",
                      f"{machine()} | {what} | {four}")


if __name__ == "__main__":
    main()
