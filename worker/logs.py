"""structlog set-up: JSON lines for machines, coloured lines on a terminal, one pipeline for all.

structlog's own events and the stdlib records of the libraries (py-amqp, kombu, anything
that logs through ``logging``) end in the same processors: a timestamp, the level,
credentials masked, one renderer. Under journald each line starts with sd-daemon(3)'s
``<N>`` priority prefix, so ``journalctl -p warning`` shows the warnings.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
import types
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

FORMATS = ("auto", "json", "console")

#: sd-daemon(3) (syslog) priorities by the name a logger method or stdlib level goes by.
PRIORITIES = {"debug": 7, "info": 6, "msg": 6, "warning": 4, "warn": 4, "error": 3,
              "exception": 3, "critical": 2, "fatal": 2}

# scheme://user:password@ -> scheme://user:***@. The password runs to the last "@" before a
# blank, a quote or the ";" between broker nodes, so one written with a bare "@", "/" or ":"
# (py-amqp reads "u:p@ss@host" as user u, password p@ss) is masked whole, not half.
_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:;\"']*:)[^\s;\"']*@")
_MASK = r"\1***@"

Processor = Callable[[Any, str, MutableMapping[str, Any]], Any]


def mask(text: str) -> str:
    """text with the password of every ``scheme://user:password@`` in it masked."""
    return _CREDENTIALS.sub(_MASK, text) if "://" in text else text


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {key: _masked(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(inner) for inner in value]
    # Anything else (an exception, a kombu Connection) is rendered as its text anyway.
    text = repr(value)
    return mask(text) if "://" in text else value


def mask_credentials(_logger: Any, _name: str,
                     event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Processor: no event value carries a URL's password, whoever logged it."""
    for key, value in event_dict.items():
        if key not in ("exc_info", "_record", "_from_structlog"):
            event_dict[key] = _masked(value)
    return event_dict


def _on_journal(stream: TextIO) -> bool:
    """stream is journald's: JOURNAL_STREAM names its device and inode, as systemd.exec(5) says.

    Checking the inode, not just the variable, keeps a child whose stderr was
    redirected (a pipe to a test, a file) from writing prefixes there.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        found = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (found.st_dev, found.st_ino)
    except (ValueError, OSError):  # no variable, or a stream without a file (pytest's capture)
        return False


def _finish(journal: bool) -> Processor:
    """The last step after rendering: mask the whole line (tracebacks too), prefix <N>."""
    def finish(_logger: Any, name: str, rendered: Any) -> str:
        line = mask(str(rendered))
        if journal:
            # Every line of a multi-line record (a console traceback) keeps the priority.
            prefix = f"<{PRIORITIES.get(name, 6)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line
    return finish


def setup(level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to stream (stderr) through one set of processors.

    fmt ``auto`` is ``console`` (readable, coloured unless NO_COLOR is set) when stream
    is a terminal and ``json`` (one JSON object a line) otherwise.
    """
    out = sys.stderr if stream is None else stream
    numeric = getattr(logging, level.upper(), logging.INFO)
    tty = out.isatty()
    console = fmt == "console" or (fmt == "auto" and tty)
    renderer: Processor
    before: list[Processor] = []
    if console:
        # Plain tracebacks: rich's (picked when installed) print local variables.
        renderer = structlog.dev.ConsoleRenderer(
            colors=tty and "NO_COLOR" not in os.environ,
            exception_formatter=structlog.dev.plain_traceback)
    else:
        before = [structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer()
    tail: list[Processor] = [*before, mask_credentials, renderer, _finish(_on_journal(out))]
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    stamp, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write() per line, so lines of two threads never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                           structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(),
                           stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail]))
    root = logging.getLogger()
    root.handlers = [handler]
    # The libraries' info and debug (py-amqp's frames, kombu's connects) are noise even
    # when ours is wanted: they start at warning.
    root.setLevel(max(numeric, logging.WARNING))


def masked_excepthook(kind: type[BaseException], value: BaseException,
                      tb: types.TracebackType | None) -> None:
    """sys.excepthook that prints the usual traceback, credentials masked."""
    sys.stderr.write(mask("".join(traceback.format_exception(kind, value, tb))))


def masked_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook that prints what a dying thread raised, credentials masked."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(mask(f"Exception in thread {name}:\n{text}"))


def get(name: str) -> Any:
    """A structlog logger named for its module."""
    return structlog.get_logger(name)
