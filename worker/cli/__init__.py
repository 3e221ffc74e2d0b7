"""The command line: parses options, builds the service; nothing imports it."""

from worker.cli.main import main

__all__ = ["main"]
