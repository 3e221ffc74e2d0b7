"""The house rules: which package may import what, read from every module's own imports.

Each package holds one side and keeps one rule (README "How it is built"). The rules are
checked here on the source, so the picture cannot drift: break one by hand and this fails.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("worker", "handlers")


@dataclass(frozen=True)
class Rule:
    """Modules under ``where`` must not import anything starting with one of ``forbidden``."""

    where: str
    forbidden: tuple[str, ...]
    why: str


THIRD_PARTY_SIDES = (
    Rule("", ("kombu", "amqp"), "only worker/amqp/ imports kombu or py-amqp"),
    Rule("", ("libvirt", "subprocess"), "only worker/virt/ imports libvirt or runs qemu-img"),
)
RULES = (
    Rule("worker/amqp", ("libvirt", "lxml", "handlers", "worker.core", "worker.virt",
                         "worker.cli", "worker.service"),
         "the AMQP side knows messages, not hypervisors or dispatch"),
    Rule("worker/codec", ("kombu", "amqp", "libvirt", "lxml", "handlers", "worker.amqp",
                          "worker.core", "worker.virt", "worker.cli", "worker.service"),
         "codecs are pure: bytes and dicts in and out"),
    Rule("worker/core", ("kombu", "amqp", "libvirt", "handlers", "worker.amqp", "worker.cli",
                         "worker.service"),
         "the core is handed its method table and its outbox; it opens nothing itself"),
    Rule("worker/virt", ("kombu", "amqp", "handlers", "worker.amqp", "worker.core",
                         "worker.codec", "worker.cli", "worker.service"),
         "the hypervisor side knows libvirt, not the wire or dispatch"),
    Rule("worker/ops", ("kombu", "amqp", "libvirt", "lxml", "handlers", "worker.amqp",
                        "worker.codec", "worker.core", "worker.virt", "worker.cli",
                        "worker.service"),
         "operations (systemd, metrics) are told the worker's state; they reach into nothing"),
    Rule("handlers", ("kombu", "amqp", "libvirt", "worker.amqp", "worker.cli",
                      "worker.service", "worker.core.dispatcher", "worker.core.journal",
                      "worker.core.state_watch"),
         "a handler calls the context's hypervisor and returns what the event needs"),
)
#: The one owner of netlink: taps and bridges are made there and nowhere else.
NETLINK_HOME = "worker/virt/netdev.py"
#: Only the operations package speaks Prometheus: the rest reports through the service.
METRICS_HOME = "worker/ops/"
GROUND = ("worker/broker_urls.py", "worker/config.py", "worker/errors.py", "worker/logs.py",
          "worker/messages.py", "worker/options.py", "worker/retry.py")
# The ground imports nothing of ours above it; messages.py nothing of ours at all.
GROUND_MAY = ("worker.broker_urls", "worker.config", "worker.errors", "worker.logs",
              "worker.messages", "worker.options")


def _modules() -> list[Path]:
    return sorted(p for top in PRODUCT for p in (ROOT / top).rglob("*.py"))


def imports(path: Path) -> list[str]:
    """Every module name path imports, at any depth (lazy imports inside functions too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _hits(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def breaches(paths: list[Path]) -> list[str]:
    """Every import in paths that breaks a rule, as 'file: name (why)'."""
    found = []
    for path in paths:
        rel = path.relative_to(ROOT).as_posix()
        names = imports(path)
        for rule in THIRD_PARTY_SIDES:
            home = "worker/amqp/" if "kombu" in rule.forbidden else "worker/virt/"
            if not rel.startswith(home):
                found += [f"{rel}: {n} ({rule.why})" for n in names if _hits(n, rule.forbidden)]
        for rule in RULES:
            if rel.startswith(rule.where + "/") or rel == rule.where:
                found += [f"{rel}: {n} ({rule.why})" for n in names if _hits(n, rule.forbidden)]
        if rel in GROUND:
            allowed = () if rel == "worker/messages.py" else GROUND_MAY
            found += [f"{rel}: {n} (the ground stands on nothing of ours above it)"
                      for n in names if _hits(n, ("worker", "handlers"))
                      and not _hits(n, allowed) and n != "worker"]
        if rel != NETLINK_HOME:
            found += [f"{rel}: {n} (only {NETLINK_HOME} talks netlink)"
                      for n in names if _hits(n, ("pyroute2",))]
        if not rel.startswith(METRICS_HOME):
            found += [f"{rel}: {n} (only {METRICS_HOME} imports prometheus_client)"
                      for n in names if _hits(n, ("prometheus_client",))]
        if not rel.startswith("worker/cli/"):
            found += [f"{rel}: {n} (nothing imports the command line)"
                      for n in names if _hits(n, ("worker.cli",))]
    return found


def test_worker_is_packages_not_a_flat_directory() -> None:
    """ls worker/ shows the sides apart: the packages and the ground, nothing else."""
    entries = {p.name for p in (ROOT / "worker").iterdir() if p.name != "__pycache__"}

    assert {"amqp", "codec", "core", "virt", "cli", "ops", "__init__.py", "service.py",
            *(Path(g).name for g in GROUND)} == entries


def test_every_module_keeps_its_package_rule() -> None:
    """No module imports what its package's rule forbids."""
    assert [] == breaches(_modules())


@pytest.mark.parametrize("package, line", [
    ("worker/core", "import libvirt"),
    ("worker/core", "from handlers import registry"),
    ("worker/codec", "from kombu import Connection"),
    ("worker/virt", "from worker.core.dispatcher import Dispatcher"),
    ("worker/amqp", "from worker.virt.guest import Guest"),
    ("handlers", "from worker.amqp.publisher import Publisher"),
    ("worker/core", "    from worker.cli.main import main"),
    ("worker/virt", "from pyroute2 import IPRoute"),
    ("worker/core", "from prometheus_client import Counter"),
    ("worker/ops", "from worker.core.dispatcher import Dispatcher"),
    ("worker/ops", "from worker.amqp.consumer import Consumer"),
])
def test_a_rule_broken_by_hand_is_caught(tmp_path: Path, package: str, line: str) -> None:
    """Write a module that breaks a rule into a copy of its package: the checker names it."""
    bad = ROOT / package / "_rule_breaker_for_test.py"
    body = f"def f() -> None:\n{line}\n" if line.startswith(" ") else f"{line}\n"
    bad.write_text(body)
    try:
        found = breaches([bad])
    finally:
        bad.unlink()

    assert 1 <= len(found) and all("_rule_breaker_for_test.py" in f for f in found)
