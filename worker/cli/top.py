"""``compute-worker top``: a live terminal view of instances and their states, from events."""

from __future__ import annotations

import argparse
import contextlib
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.cli import help_text
from worker.cli.rpc import CLIENT_OPTIONS, AddOptions
from worker.cli.topview import TopModel
from worker.config import Config

#: Colours of the power states (rich style names); others are plain.
POWER_STYLES = {"running": "green", "paused": "yellow", "suspended": "cyan",
                "shutdown": "dim", "crashed": "bold red"}
REFRESH = 0.25


def add_parser(sub: Any, add_options: AddOptions) -> None:
    """The top subcommand."""
    p = sub.add_parser("top", help="live view of a host's (or the fleet's) instances, from events",
                       description="A live view of instances and their states, kept up to date "
                                   "by the events the workers publish.",
                       epilog=help_text.TOP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", action="append", default=[], dest="hosts", metavar="HOST",
                   help="a host to watch (repeatable); default: the host option")
    p.add_argument("--all", action="store_true", dest="fleet",
                   help="watch every host whose events arrive (the --host ones are listed first)")
    p.add_argument("--list-timeout", type=float, default=5.0,
                   help="seconds each host's list_instances may take at start; default 5")
    p.add_argument("--timeout", type=float, default=None,
                   help="quit after N seconds (default: when q or Ctrl-C is pressed)")
    add_options(p, CLIENT_OPTIONS)


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def render(model: TopModel, now: float, title: str, notes: Sequence[str]) -> Group:
    """The whole screen: a heading, the hosts, the instances, the last faults."""
    counts = model.power_counts()
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
    head = Text(f"{title}   instances: {len(model.instances)} ({summary})   "
                f"events: {model.events}   q quits", style="bold")
    hosts = Table(box=None, pad_edge=False, header_style="bold reverse")
    for name in ("HOST", "SERVICE", "SEEN", "INSTANCES"):
        hosts.add_column(name)
    per_host = {h: sum(1 for r in model.instances.values() if r.host == h)
                for h in model.services}
    for host, row in sorted(model.services.items()):
        status = ("up" if row.up else f"down: {row.reason}") if row.up is not None else "?"
        hosts.add_row(host, Text(status, style="green" if row.up else "red" if row.up is False
                                 else ""), _ago(now, row.seen_at), str(per_host[host]))
    table = Table(box=None, pad_edge=False, header_style="bold reverse")
    for name in ("HOST", "UUID", "NAME", "STATE", "POWER", "TASK", "LAST", "AGO"):
        table.add_column(name, no_wrap=True)
    for r in model.rows():
        table.add_row(r.host, r.uuid[:8], r.name or "-", r.vm_state or "-",
                      Text(r.power_state or "-", style=POWER_STYLES.get(r.power_state or "", "")),
                      Text(r.task or "", style="bold yellow"),
                      Text(r.last_event or "-", style="red" if r.fault else ""),
                      _ago(now, r.seen_at))
    parts: list[Any] = [head, Text(""), hosts, Text(""), table]
    if model.faults or notes:
        parts.append(Text(""))
    parts += [Text(note, style="yellow") for note in notes]
    parts += [Text(fault, style="red") for fault in model.faults]
    return Group(*parts)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """A function returning the keys pressed so far ("" off a terminal); cbreak mode meanwhile."""
    if not sys.stdin.isatty():
        yield lambda: ""
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed() -> str:
        keys = ""
        while select.select([fd], [], [], 0)[0]:
            keys += sys.stdin.read(1)
        return keys

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _seed(rpc: Any, model: TopModel, hosts: Sequence[str], timeout: float) -> list[str]:
    from worker.amqp.client import CallTimeout, NoConsumer, RemoteError

    notes = []
    for host in hosts:
        try:
            model.seed(host, rpc.call(host, "list_instances", {}, timeout=timeout),
                       time.monotonic())
        except (NoConsumer, CallTimeout, RemoteError) as exc:
            notes.append(f"{host}: list_instances: {exc.message}")
    return notes


def run(ns: argparse.Namespace, cfg: Config) -> int:
    """Show the view until q, Ctrl-C or --timeout; 0."""
    from worker.amqp import client as amqp_client
    from worker.amqp.topology import durable
    from worker.codec.signing import load_key

    named = list(ns.hosts) or ([] if ns.fleet else [cfg.host])
    model = TopModel(() if ns.fleet else named)
    title = (f"compute-worker top: {'every host' if ns.fleet else ', '.join(named)} "
             f"on {cfg.control_exchange}")
    key = load_key(cfg.worker.signing_key_file) if cfg.worker.signing_key_file else None
    console = Console()
    with amqp_client.session(cfg) as conn:
        # The tail is bound before the listings: no event between the two is lost.
        tail = amqp_client.EventTail(conn, exchange=cfg.control_exchange,
                                     topic=cfg.notifications.notification_topic,
                                     durable=durable(cfg))
        rpc = amqp_client.RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic,
                                    durable=durable(cfg), signing_key=key,
                                    mandatory=True)
        notes = _seed(rpc, model, named, ns.list_timeout)
        deadline = None if ns.timeout is None else time.monotonic() + ns.timeout
        with _keys() as pressed, Live(render(model, time.monotonic(), title, notes),
                                      console=console, screen=True, auto_refresh=False) as live:
            seeded = set(named)
            while deadline is None or time.monotonic() < deadline:
                for event in tail.poll(REFRESH):
                    model.apply(event, time.monotonic())
                # The fleet grows as hosts are heard from: list each one's instances once.
                fresh = sorted(set(model.services) - seeded)
                seeded.update(fresh)
                notes += _seed(rpc, model, fresh, ns.list_timeout)
                live.update(render(model, time.monotonic(), title, notes), refresh=True)
                if "q" in pressed().lower():
                    break
    return 0
