"""structlog set-up: JSON lines on stderr, context bound per message."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def setup(level: str = "info", *, json: bool = True) -> None:
    """Route structlog (and stdlib logging) to stderr as JSON lines."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get(name: str) -> Any:
    """A structlog logger named for its module."""
    return structlog.get_logger(name)
