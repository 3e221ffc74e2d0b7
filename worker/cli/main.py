"""The ``compute-worker`` command: run, demo, cast, call, events, check."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from worker import config as config_mod
from worker import logs
from worker.config import FIELDS, Config
from worker.errors import ConfigError, WorkerError

CLIENT_OPTIONS = ("transport_url", "control_exchange", "topic", "amqp_durable_queues",
                  "notification_topic", "ssl_ca_file", "signing_key_file")


def _add_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="INI file; each option in its [section] as --help groups them "
                             "(any option may also stand in [DEFAULT] or [compute_worker])")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in names:
        row = FIELDS[name]
        group = groups.get(row.section)
        if group is None:
            group = groups[row.section] = parser.add_argument_group(f"[{row.section}]")
        flag = "--" + name.replace("_", "-")
        extra: dict[str, Any] = {"dest": name, "default": None}
        if isinstance(row.default, bool):
            extra["action"] = argparse.BooleanOptionalAction
        else:
            extra["metavar"] = name.upper()
        choices = row.spec.metadata.get("choices")
        text = row.spec.metadata["help"] + (f" ({'|'.join(choices)})" if choices else "")
        # argparse %-formats help: a literal % (a URI template's %s) is written %%.
        help_text = f"{text}; default {row.default!r}".replace("%", "%%")
        group.add_argument(flag, help=help_text, **extra)
        if name == "amqp_durable_queues":
            group.add_argument("--durable-queues", dest=name, default=None,
                               action=argparse.BooleanOptionalAction, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="compute-worker",
        description="Per-host compute agent: takes oslo.messaging RPC for <topic>.<host> off "
                    "RabbitMQ, runs each verb on libvirt, publishes events. Every option can "
                    "also be set as COMPUTE_WORKER_<OPTION> or in the --config INI file.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the worker until SIGTERM or SIGINT")
    _add_options(run, list(FIELDS))
    run.add_argument("--grace", type=float, default=30.0,
                     help="seconds to let running verbs finish on stop; default 30")
    check = sub.add_parser("check", help="preflight: broker, libvirt and directories")
    _add_options(check, list(FIELDS))
    sub.add_parser("demo", help="worker, scripted scheduler and event tracker in one process "
                                "(in-memory broker, libvirt test driver)")
    for verb, text in (("cast", "send a cast (no reply)"),
                       ("call", "send a call, print the reply")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("target_host", metavar="HOST")
        p.add_argument("method", metavar="METHOD")
        p.add_argument("--args", default="{}", metavar="JSON", help="keyword arguments as JSON")
        p.add_argument("--version", dest="rpc_version", default="6.0",
                       help="RPC version sent (nova compute API 6.x)")
        if verb == "call":
            p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
        _add_options(p, CLIENT_OPTIONS)
    events = sub.add_parser("events", help="print events as JSON lines")
    events.add_argument("--timeout", type=float, default=None, help="stop after N seconds")
    _add_options(events, CLIENT_OPTIONS)
    return parser


def _config(ns: argparse.Namespace) -> Config:
    overrides = {k: getattr(ns, k) for k in FIELDS if getattr(ns, k, None) is not None}
    return config_mod.load(ns.config, overrides)


def _run(cfg: Config, grace: float) -> int:
    from worker.service import Service

    # Before anything that may wait: a stop signal ends the worker in every state,
    # also while start() is still waiting for the broker.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service = Service(cfg)
    service.start(cancel=stop)
    while not stop.wait(0.2):
        refused = service.refused
        if refused is not None:  # found on a first connection made after start() returned
            service.abandon()
            raise refused
        if service.stopped.is_set():
            return 1
    service.stop(grace)
    return 0


def _client(ns: argparse.Namespace, cfg: Config) -> int:
    from worker.amqp.client import RemoteError, RpcClient, tail_events
    from worker.amqp.connection import connection_for

    with connection_for(cfg) as conn:
        conn.ensure_connection(max_retries=3)
        if ns.command == "events":
            for event in tail_events(conn, exchange=cfg.control_exchange,
                                     topic=cfg.notifications.notification_topic,
                                     durable=cfg.rabbit.amqp_durable_queues, timeout=ns.timeout):
                print(json.dumps(event), flush=True)
            return 0
        try:
            args = json.loads(ns.args)
        except ValueError as exc:
            raise ConfigError(f"--args is not valid JSON: {exc}") from None
        if not isinstance(args, dict):
            raise ConfigError("--args must be a JSON object")
        from worker.codec.signing import load_key

        key = load_key(cfg.worker.signing_key_file) if cfg.worker.signing_key_file else None
        client = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic,
                           durable=cfg.rabbit.amqp_durable_queues, signing_key=key)
        if ns.command == "cast":
            sent = client.cast(ns.target_host, ns.method, args, version=ns.rpc_version)
            print(json.dumps({"cast": ns.method, "_unique_id": sent["_unique_id"]}))
            return 0
        try:
            result = client.call(ns.target_host, ns.method, args, timeout=ns.timeout,
                                 version=ns.rpc_version)
        except RemoteError as exc:
            print(json.dumps({"failure": exc.failure}))
            return 1
        print(json.dumps(result, indent=2))
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "demo":
            from worker.cli.demo import run_demo

            return run_demo()
        cfg = _config(ns)
        logs.setup(cfg.log_level)
        if ns.command == "run":
            return _run(cfg, ns.grace)
        if ns.command == "check":
            from worker.cli.check import run_checks

            return run_checks(cfg)
        return _client(ns, cfg)
    except ConfigError as exc:
        print(f"compute-worker: error: {exc.message}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"compute-worker: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # broker unreachable and the like: one line, no traceback
        print(f"compute-worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
