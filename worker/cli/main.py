"""The ``compute-worker`` command: run, check, demo, cast, call, events, top."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from worker import config as config_mod
from worker import logs
from worker.cli import help_text, rpc, top
from worker.config import FIELDS, Config
from worker.errors import ConfigError, WorkerError


def _add_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    parser.add_argument("--config-file", "--config", dest="config_file", action="append",
                        metavar="FILE",
                        help="INI file; each option in its [section] as --help groups them "
                             "(any option may also stand in [DEFAULT] or [compute_worker]); "
                             "repeatable: read in order, a later file wins")
    parser.add_argument("--config-dir", action="append", metavar="DIR",
                        help="directory whose *.conf files are read, sorted by name, after "
                             "the --config-file files (repeatable)")
    parser.add_argument("--strict-config", action="store_true",
                        help="an unknown section or option in a config file is an error "
                             "(exit 2), not a warning")
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
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {help_text.package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the worker until SIGTERM or SIGINT",
                         epilog=help_text.RUN, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(run, list(FIELDS))
    run.add_argument("--grace", type=float, default=30.0,
                     help="seconds to let running verbs finish on stop; default 30")
    check = sub.add_parser("check", help="preflight: broker, libvirt and directories",
                           epilog=help_text.CHECK,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(check, list(FIELDS))
    sub.add_parser("demo", help="worker, scripted scheduler and event tracker in one process "
                                "(in-memory broker, libvirt test driver)",
                   epilog=help_text.DEMO, formatter_class=argparse.RawDescriptionHelpFormatter)
    rpc.add_parsers(sub, _add_options)
    top.add_parser(sub, _add_options)
    return parser


def _config(ns: argparse.Namespace) -> Config:
    """The Config of the flags, files and environment; logging set up from it."""
    overrides = {k: getattr(ns, k) for k in FIELDS if getattr(ns, k, None) is not None}
    unknown: list[config_mod.Unknown] = []
    cfg = config_mod.load(ns.config_file, overrides, config_dir=ns.config_dir,
                          strict=ns.strict_config, unknown=unknown)
    logs.setup(cfg.log_level, cfg.log_format)
    config_mod.warn_unknown(unknown)  # only now: logs.setup decides where warnings go
    return cfg


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    if argv is None:  # the command itself, not a caller (a test) that keeps its own hooks
        # A traceback no one caught, on this thread or another, is masked too.
        sys.excepthook = logs.masked_excepthook
        threading.excepthook = logs.masked_thread_excepthook
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "demo":
            from worker.cli.demo import run_demo

            return run_demo()
        cfg = _config(ns)
        if ns.command == "run":
            return _run(cfg, ns.grace)
        if ns.command == "check":
            from worker.cli.check import run_checks

            return run_checks(cfg)
        if ns.command == "top":
            return top.run(ns, cfg)
        return rpc.run(ns, cfg)
    except ConfigError as exc:
        print(logs.mask(f"compute-worker: error: {exc.message}"), file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(logs.mask(f"compute-worker: {type(exc).__name__}: {exc.message}"),
              file=sys.stderr)
        return 1
    except OSError as exc:  # broker unreachable and the like: one line, no traceback
        print(logs.mask(f"compute-worker: {exc}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
