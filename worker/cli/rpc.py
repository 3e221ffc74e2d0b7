"""``cast``, ``call`` and ``events``: what an operator sends to a host, and what comes back."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from worker.cli import eventview
from worker.config import Config
from worker.errors import ConfigError

AddOptions = Callable[[argparse.ArgumentParser, Sequence[str]], None]
#: The options a client command takes from the table (flags, variables, the INI file).
CLIENT_OPTIONS = ("transport_url", "control_exchange", "topic", "amqp_durable_queues",
                  "rabbit_quorum_queue",
                  "notification_topic", "ssl_ca_file", "signing_key_file")
EXAMPLE_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"

CAST_EXAMPLES = f"""examples:
  compute-worker cast compute-01 pause_instance --arg instance.uuid={EXAMPLE_UUID}
  compute-worker cast compute-01 pause_instance --arg instance.uuid={EXAMPLE_UUID} --wait
  compute-worker cast compute-01 reboot_instance --arg instance.uuid={EXAMPLE_UUID} \\
      --arg reboot_type=HARD --wait --timeout 300
  compute-worker cast compute-01 stop_instance --args '{{"instance": {{"uuid": "{EXAMPLE_UUID}"}}}}'
  compute-worker cast compute-01 pause_instance --arg instance.uuid=... \\
      --signing-key-file /etc/compute-worker/signing.key

--arg KEY=VALUE: VALUE is read as JSON when it is JSON (5, true, null, {{...}}), else as a
string; a dotted KEY nests (instance.uuid=X is {{"instance": {{"uuid": "X"}}}}). --arg wins
over --args. Exit status: 0 sent (with --wait: ended well), 1 failed or no worker consumes
the host's queue, 2 bad arguments."""
CALL_EXAMPLES = f"""examples:
  compute-worker call compute-01 list_instances
  compute-worker call compute-01 get_instance_info --arg instance.uuid={EXAMPLE_UUID}
  compute-worker call compute-01 get_console_output --arg instance.uuid={EXAMPLE_UUID} \\
      --arg tail_length=20 --timeout 10

Prints the reply as JSON; a failure is printed as {{"failure": ...}} with exit status 1."""
EVENTS_EXAMPLES = f"""examples:
  compute-worker events                              # everything, until Ctrl-C
  compute-worker events --host compute-01 --type 'instance.*.error'
  compute-worker events --instance {EXAMPLE_UUID[:8]} --timeout 60
  compute-worker events --format json | jq .event_type

A table on a terminal, JSON lines otherwise (--format picks). Filters of one kind are
alternatives, filters of different kinds must all hold; --type is a shell glob."""


def add_parsers(sub: Any, add_options: AddOptions) -> None:
    """The cast, call and events subcommands."""
    for verb, text, epilog in (("cast", "send a cast (no reply); --wait follows its events",
                                CAST_EXAMPLES),
                               ("call", "send a call, print the reply", CALL_EXAMPLES)):
        p = sub.add_parser(verb, help=text, description=text, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("target_host", metavar="HOST")
        p.add_argument("method", metavar="METHOD")
        p.add_argument("--args", default="{}", metavar="JSON", help="keyword arguments as JSON")
        p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                       dest="arg_pairs", help="one keyword argument (repeatable); VALUE as "
                                              "JSON, else a string; KEY may be dotted")
        p.add_argument("--version", dest="rpc_version", default="6.0",
                       help="RPC version sent (nova compute API 6.x); default 6.0")
        if verb == "cast":
            p.add_argument("--wait", action="store_true",
                           help="follow the cast's events (by its request_id) to its end "
                                "event (exit 0) or error event (exit 1, fault printed)")
            p.add_argument("--timeout", type=float, default=180.0,
                           help="seconds --wait waits for the end; default 180")
            p.add_argument("--format", choices=("auto", "table", "json"), default="auto",
                           help="how --wait prints events; default auto (table on a terminal)")
        else:
            p.add_argument("--timeout", type=float, default=60.0,
                           help="seconds to wait for the reply; default 60")
        add_options(p, CLIENT_OPTIONS)
    events = sub.add_parser("events", help="print events, filtered; a table on a terminal",
                            description="Print the events every worker publishes.",
                            epilog=EVENTS_EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    events.add_argument("--host", action="append", default=[], dest="hosts", metavar="HOST",
                        help="only events of this host (repeatable)")
    events.add_argument("--instance", action="append", default=[], dest="instances",
                        metavar="UUID|NAME",
                        help="only events of this instance: its UUID, the UUID's first "
                             "characters, or its display name (repeatable)")
    events.add_argument("--type", action="append", default=[], dest="types", metavar="GLOB",
                        help="only event types matching this glob, e.g. 'instance.*.end' "
                             "(repeatable)")
    events.add_argument("--format", choices=("auto", "table", "json"), default="auto",
                        help="table or JSON lines; default auto (table on a terminal)")
    events.add_argument("--timeout", type=float, default=None, help="stop after N seconds")
    add_options(events, CLIENT_OPTIONS)


def _set(args: dict[str, Any], key: str, value: Any) -> None:
    *outer, last = key.split(".")
    here = args
    for part in outer:
        inner = here.setdefault(part, {})
        if not isinstance(inner, dict):
            raise ConfigError(f"--arg {key}: {part} is already set to a non-object")
        here = inner
    here[last] = value


def parse_args(text: str, pairs: Sequence[str]) -> dict[str, Any]:
    """--args JSON, then each --arg KEY=VALUE over it."""
    try:
        args = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--args is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ConfigError("--args must be a JSON object")
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--arg {pair!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # not JSON: the string as typed
        _set(args, key, value)
    return args


class Printer:
    """Events out: a table on a terminal (or when asked), JSON lines otherwise."""

    def __init__(self, fmt: str, out: TextIO = sys.stdout) -> None:
        self.table = fmt == "table" or (fmt == "auto" and out.isatty())
        self.out = out
        self._headed = False

    def head(self) -> None:
        """The table's heading, once (nothing for JSON lines)."""
        if self.table and not self._headed:
            print(eventview.heading(), file=self.out, flush=True)
            self._headed = True

    def show(self, event: eventview.Event, seen: eventview.Facts | None = None) -> None:
        """Print one event."""
        if not self.table:
            print(json.dumps(event), file=self.out, flush=True)
            return
        self.head()
        print(eventview.row(seen or eventview.facts(event)), file=self.out, flush=True)


def _load_key(cfg: Config) -> bytes | None:
    from worker.codec.signing import load_key

    return load_key(cfg.worker.signing_key_file) if cfg.worker.signing_key_file else None


def run(ns: argparse.Namespace, cfg: Config) -> int:
    """Run cast, call or events; the exit status."""
    from worker.amqp import client as amqp_client
    from worker.amqp.topology import durable

    args = parse_args(ns.args, ns.arg_pairs) if ns.command != "events" else {}
    key = _load_key(cfg)  # a bad key file is an option error before anything is sent
    with amqp_client.session(cfg) as conn:
        if ns.command == "events":
            return _events(ns, cfg, amqp_client.EventTail(
                conn, exchange=cfg.control_exchange, durable=durable(cfg),
                topic=cfg.notifications.notification_topic))
        # Bound before the cast goes out, so none of its events can be missed.
        tail = (amqp_client.EventTail(conn, exchange=cfg.control_exchange,
                                      topic=cfg.notifications.notification_topic,
                                      durable=durable(cfg))
                if ns.command == "cast" and ns.wait else None)
        rpc = amqp_client.RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic,
                                    durable=durable(cfg), signing_key=key,
                                    mandatory=True)
        if ns.command == "call":
            try:
                result = rpc.call(ns.target_host, ns.method, args, timeout=ns.timeout,
                                  version=ns.rpc_version)
            except amqp_client.RemoteError as exc:
                print(json.dumps({"failure": exc.failure}))
                return 1
            print(json.dumps(result, indent=2))
            return 0
        sent = rpc.cast(ns.target_host, ns.method, args, version=ns.rpc_version)
        request_id = sent["_context_request_id"]
        print(json.dumps({"cast": ns.method, "_unique_id": sent["_unique_id"],
                          "request_id": request_id}), flush=True)
        if not rpc.consumers(ns.target_host):
            print(f"compute-worker: note: no worker consumes {cfg.topic}.{ns.target_host} now; "
                  "the cast waits in its queue until one starts", file=sys.stderr)
        if tail is None:
            return 0
        return _wait(ns, tail, request_id)


def _events(ns: argparse.Namespace, cfg: Config, tail: Any) -> int:
    wanted = eventview.Filter(ns.hosts, ns.instances, ns.types)
    printer = Printer(ns.format)
    printer.head()  # at once: the columns, and a sign that the queue is bound
    for event in tail.until(ns.timeout):
        seen = eventview.facts(event)
        if wanted(seen):
            printer.show(event, seen)
    return 0


def _wait(ns: argparse.Namespace, tail: Any, request_id: str) -> int:
    printer = Printer(ns.format)
    for event in tail.until(ns.timeout):
        seen = eventview.facts(event)
        if seen.request_id != request_id:
            continue
        printer.show(event, seen)
        outcome = eventview.outcome(ns.method, seen)
        if outcome is True:
            return 0
        if outcome is False:
            print(f"compute-worker: {seen.event_type}: {seen.detail or 'failed'}",
                  file=sys.stderr)
            return 1
    print(f"compute-worker: no end event for {request_id} within {ns.timeout:g} s "
          f"(compute-worker events --type 'instance.*' shows what the host does)",
          file=sys.stderr)
    return 1
