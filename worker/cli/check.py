"""``compute-worker check``: can this host run the worker? One line per check, and the fix."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from worker.amqp.client import declaration_clashes
from worker.amqp.connection import Nodes, address, masked, node_urls, open_node
from worker.amqp.faults import diagnose, fix_for_broker
from worker.config import Config
from worker.errors import ConfigError
from worker.logs import mask
from worker.virt.hypervisor import Hypervisor

#: A check's answer: None when it passes, else (the problem, how to fix it).
Problem = tuple[str, str] | None


def _dir_writable(option: str, path: str) -> Problem:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return (f"{path}: {exc.strerror}",
                f"create it writable by the worker's user (install -d -m 0750 {path}), or "
                f"set {option} to a directory that is")
    return None


def _libvirt_fix(uri: str, reason: str) -> str:
    lowered = reason.lower()
    if "no such file" in lowered or "connection refused" in lowered:
        return ("start libvirtd (systemctl start libvirtd), or set virt_type / connection_uri "
                f"to the hypervisor this host has (now {uri})")
    if "permission denied" in lowered or "authentication" in lowered:
        return "run the worker as root, or as a user in the libvirt group"
    return f"check that {uri} is the right URI (virsh -c {uri} version) and libvirtd's log"


class Report:
    """Prints ok/FAIL lines, a fix under each FAIL, and counts the failures."""

    def __init__(self) -> None:
        self.failures = 0

    def __call__(self, name: str, problem: Problem, detail: str = "") -> None:
        # Masked: the unit runs check as ExecStartPre, so its lines land in the journal.
        if problem is None:
            print(mask(f"ok   {name}{': ' + detail if detail else ''}"))
            return
        self.failures += 1
        print(mask(f"FAIL {name}: {problem[0]}"[:500]))
        print(mask(f"     fix: {problem[1]}"))

    def warn(self, name: str, problem: tuple[str, str]) -> None:
        """A problem the worker rides out (a cluster node down): said, not counted."""
        print(mask(f"WARN {name}: {problem[0]}"[:500]))
        print(mask(f"     fix: {problem[1]}"))


def _broker(cfg: Config, report: Report) -> None:
    # Every node in turn, as the worker does: with a and b down, c still counts.
    urls = node_urls(cfg.transport_url)
    nodes = Nodes(urls, lambda url: open_node(cfg, url), name="check")
    shown = ";".join(masked(url) for url in urls)  # never the password
    try:
        conn = nodes.open()
    except Exception as exc:  # any failure here is the answer, not a crash
        report("broker", (f"no node of {shown} answers: {type(exc).__name__}: {exc}"[:400],
                          fix_for_broker(exc)))
        return  # the declarations cannot be checked without one
    report("broker", None, nodes.current)
    if len(urls) > 1:
        _cluster(cfg, urls, report)
    try:
        clashes = declaration_clashes(conn, cfg)
    except Exception as exc:  # the broker went away between the two checks
        clashes = [diagnose(exc, nodes.current)]
    finally:
        conn.release()
    for clash in clashes:
        report("declarations", clash)
    if not clashes:
        report("declarations", None, f"exchange {cfg.control_exchange}, queue "
                                      f"{cfg.topic}.{cfg.host} and the event queues as the "
                                      "worker declares them, no other worker on the host queue")


def _cluster(cfg: Config, urls: list[str], report: Report) -> None:
    """Every node of a cluster URL, each asked once: which answer, and are they one cluster?

    The worker runs while one node answers, so a node down is a warning; nodes of two
    clusters (a typo in one host) is a failure: the host's queues would be split.
    """
    down: list[str] = []
    clusters: dict[str, list[str]] = {}
    for url in urls:
        try:
            conn = open_node(cfg, url)
        except Exception as exc:  # a node down is what this check is for
            down.append(f"{address(url)} ({type(exc).__name__}: {exc})"[:200])
            continue
        try:
            properties = getattr(conn.connection, "server_properties", None) or {}
            name = properties.get("cluster_name", "")
            name = name.decode() if isinstance(name, bytes) else str(name)
            clusters.setdefault(name, []).append(address(url))
        finally:
            conn.release()
    up = sum(len(found) for found in clusters.values())
    if len(clusters) > 1:
        report("broker nodes", (
            "the nodes belong to different clusters: " + "; ".join(
                f"{name or '(unnamed)'}: {', '.join(found)}" for name, found in clusters.items()),
            "list the nodes of one cluster in transport_url (rabbitmqctl cluster_status on "
            "each shows its cluster)"))
    elif down:
        report.warn("broker nodes", (
            f"{up} of {len(urls)} answer; down: {'; '.join(down)}",
            "start the node that is down, or drop it from transport_url; the worker runs "
            "on the others meanwhile"))
    else:
        name = next(iter(clusters), "")
        report("broker nodes", None,
               f"{up} of {len(urls)} answer" + (f", all of cluster {name}" if name else ""))


def _libvirt(cfg: Config, report: Report) -> None:
    hv = Hypervisor(cfg.libvirt_uri)
    try:
        info = hv.host_info()
        report("libvirt", None, f"{cfg.libvirt_uri} ({info['cpu_model']}, {info['vcpus']} vCPUs, "
                                f"{info['memory_mb']} MiB)")
    except Exception as exc:  # same: report, do not crash
        report("libvirt", (f"cannot use {cfg.libvirt_uri}: {exc}",
                           _libvirt_fix(cfg.libvirt_uri, str(exc))))
    finally:
        hv.close()


def _signing_key(cfg: Config) -> Problem:
    from worker.codec.signing import load_key

    try:
        load_key(cfg.worker.signing_key_file)
    except ConfigError as exc:
        return (exc.message, "write a key of 16 bytes or more there (head -c 32 /dev/urandom "
                             "| base64 > FILE), readable by the worker's user only")
    return None


def run_checks(cfg: Config) -> int:
    """Print ok/FAIL for the broker, libvirt and each directory; 0 when all pass."""
    report = Report()
    checks: list[Callable[[Config, Report], Any]] = [_broker, _libvirt]
    for check in checks:
        check(cfg, report)
    for option in ("instances_path", "images_path", "state_dir"):
        path = getattr(cfg, option)
        report(option, _dir_writable(option, path), path)
    if cfg.worker.signing_key_file:
        report("signing_key_file", _signing_key(cfg), cfg.worker.signing_key_file)
    return 1 if report.failures else 0
