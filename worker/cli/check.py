"""``compute-worker check``: can this host run the worker? One line per check."""

from __future__ import annotations

import os
import tempfile

from worker.amqp.connection import Nodes, masked, node_urls, open_node
from worker.config import Config
from worker.logs import mask
from worker.virt.hypervisor import Hypervisor


def _dir_writable(path: str) -> str | None:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return None


def run_checks(cfg: Config) -> int:
    """Print ok/FAIL for the broker, libvirt and each directory; 0 when all pass."""
    failures = 0

    def report(name: str, problem: str | None, detail: str = "") -> None:
        nonlocal failures
        # Masked: the unit runs check as ExecStartPre, so its lines land in the journal.
        if problem:
            failures += 1
            print(mask(f"FAIL {name}: {problem}"))
        else:
            print(mask(f"ok   {name}{': ' + detail if detail else ''}"))

    # Every node in turn, as the worker does: with a and b down, c still counts.
    urls = node_urls(cfg.transport_url)
    nodes = Nodes(urls, lambda url: open_node(cfg, url), name="check")
    try:
        nodes.open().release()
        report("broker", None, nodes.current)
    except Exception as exc:  # any failure here is the answer, not a crash
        shown = ";".join(masked(url) for url in urls)  # never the password
        report("broker", f"no node of {shown} answers: {type(exc).__name__}: {exc}"[:400])
    hv = Hypervisor(cfg.libvirt_uri)
    try:
        info = hv.host_info()
        report("libvirt", None, f"{cfg.libvirt_uri} ({info['cpu_model']}, {info['vcpus']} vCPUs, "
                                f"{info['memory_mb']} MiB)")
    except Exception as exc:  # same: report, do not crash
        report("libvirt", f"cannot use {cfg.libvirt_uri}: {exc}")
    finally:
        hv.close()
    report("instances_path", _dir_writable(cfg.instances_path), cfg.instances_path)
    report("state_dir", _dir_writable(cfg.state_dir), cfg.state_dir)
    return 1 if failures else 0
