"""The sample config (systemd/compute-worker.conf.example), written from the option table.

Every option of worker/config.py's FIELDS, by section, commented out with its help text
and its default, so the file can never name an option that does not exist or a default
that changed.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
from typing import Any

from worker.config import FIELDS, GROUPS, Config, Option

HEADER = """\
# /etc/compute-worker/compute-worker.conf: the options of `compute-worker run`.
#
# Generated from the option table (worker/config.py) by `python -m worker.cli.refs`;
# do not edit it by hand. Every option is shown commented out at its default: uncomment
# and set only what this host needs. Each option lives in a section, as nova lays them
# out; sections of nova's that this worker does not read ([api], [glance], ...) may
# stand in the same file. Every option can also be a flag (--transport-url) or an
# environment variable (COMPUTE_WORKER_TRANSPORT_URL), named after the option whatever
# its section; flags win over the environment, which wins over this file.
"""
WIDTH = 88


def shown(value: Any) -> str:
    """A default as the INI file spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ",
                         break_on_hyphens=False, break_long_words=False)


def _option(row: Option) -> list[str]:
    meta = row.spec.metadata
    help_text = meta["help"]
    notes = []
    if meta.get("choices"):
        notes.append("one of: " + ", ".join(repr(c) if c == "" else c for c in meta["choices"]))
    if meta.get("minimum") is not None:
        notes.append(f"at least {shown(meta['minimum'])}")
    # A default read from the machine (the hostname) is described, never written: a file
    # generated on one machine must not carry its name to every host.
    default = meta.get("default_text")
    if default is not None:
        notes.append(f"default: {default}")
    lines = _comment(help_text + (f" ({'; '.join(notes)})" if notes else "") + ".")
    value = "" if default is not None else shown(row.default)
    return [*lines, f"#{row.name} = {value}".rstrip(), ""]


def _section_doc(kind: type) -> str:
    text = (inspect.getdoc(kind) or "").split("\n\n", 1)[0].replace("\n", " ")
    return text.split(": ", 1)[1] if text.startswith("``[") and ": " in text else text


# Cached: the code it reads does not change while a process runs.
@functools.cache
def render() -> str:
    """The whole sample config file."""
    kinds: dict[str, type[Any]] = {"DEFAULT": Config,
                                   **{section: kind for section, kind in GROUPS.values()}}
    lines = [HEADER]
    for section, kind in kinds.items():
        rows = [row for row in FIELDS.values() if row.section == section]
        doc = "this host, the broker, the instances' directories" if kind is Config else (
            _section_doc(kind))
        lines += [f"[{section}]", *_comment(doc.rstrip(".") + "."), ""]
        for row in rows:
            lines += _option(row)
    return "\n".join(lines).rstrip() + "\n"
