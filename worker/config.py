"""Options in sections, as nova reads them; one table drives INI, COMPUTE_WORKER_* and flags.

Each option lives in one section (``[DEFAULT]``, ``[libvirt]``, ``[oslo_messaging_rabbit]``,
``[oslo_messaging_notifications]`` or our own ``[compute_worker]``) and is read from there
into a nested frozen dataclass (those are in ``worker.options``; this module is the loader):
``cfg.host``, ``cfg.libvirt.virt_type``, ``cfg.rabbit.heartbeat``. Option names are unique
across sections, so every option keeps one flag (``--heartbeat``) and one variable
(``COMPUTE_WORKER_HEARTBEAT``) named after it, and an option written flat in ``[DEFAULT]``
or ``[compute_worker]`` (the old layout) still works.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker import logs
from worker.broker_urls import node_urls
from worker.errors import ConfigError

# The option dataclasses live in worker.options; re-exported so ``from worker.config import
# Config`` (and the rest) keeps working.
from worker.options import (
    GROUPS,
    MONITORS,
    VIRT_TYPES,
    VIRT_URIS,
    Config,
    ImageCacheOptions,
    LibvirtOptions,
    NotificationOptions,
    RabbitOptions,
    VncOptions,
    WorkaroundsOptions,
    WorkerOptions,
)

__all__ = [
    "FIELDS", "GROUPS", "MONITORS", "SECTIONS", "VIRT_TYPES", "VIRT_URIS", "Config",
    "ImageCacheOptions", "LibvirtOptions", "NotificationOptions", "Option", "RabbitOptions",
    "Unknown", "VncOptions", "WorkaroundsOptions", "WorkerOptions", "build", "config_files",
    "load", "warn_unknown",
]

log = logs.get(__name__)

ENV_PREFIX = "COMPUTE_WORKER_"
#: Options of ours renamed to oslo's: a file that still has the old name is told the new one.
RENAMED = {"queue_type": "rabbit_quorum_queue",
           "quorum_delivery_limit": "rabbit_quorum_delivery_limit"}
#: Sections where any option may stand, as every option could before sections.
FLAT_SECTIONS = ("DEFAULT", "compute_worker")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Option:
    """One row of the table: its name, the section it lives in, and its field."""

    name: str
    section: str
    #: The Config attribute holding the section, None for [DEFAULT].
    group: str | None
    spec: dataclasses.Field[Any]

    @property
    def default(self) -> Any:
        """The default value."""
        return self.spec.default


def _table() -> dict[str, Option]:
    rows = {top.name: Option(top.name, "DEFAULT", None, top)
            for top in dataclasses.fields(Config) if top.name not in GROUPS}
    for group, (section, kind) in GROUPS.items():
        for inner in dataclasses.fields(kind):
            assert inner.name not in rows, f"option {inner.name} in two sections"
            rows[inner.name] = Option(inner.name, section, group, inner)
    return rows


#: Every option by name (unique across sections): the one table.
FIELDS: dict[str, Option] = _table()
SECTIONS = {"DEFAULT": None, **{section: group for group, (section, _) in GROUPS.items()}}


def _converter(row: Option) -> Callable[[str], Any]:
    kind: type = type(row.default)
    if kind is bool:
        return _bool
    if kind is int:
        return int
    if kind is float:
        return float
    return str


def _coerce(name: str, raw: Any) -> Any:
    row = FIELDS[name]
    try:
        value = _converter(row)(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ConfigError(f"option {name}: {exc}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"option {name}: {raw!r} is not a finite number")
    choices = row.spec.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"option {name}: {value!r} is not one of {', '.join(choices)}")
    minimum = row.spec.metadata.get("minimum")
    if minimum is not None and value < minimum:
        raise ConfigError(f"option {name}: {value!r} is below the minimum {minimum}")
    if isinstance(value, str) and "\x00" in value:
        raise ConfigError(f"option {name}: contains a NUL byte")
    return value


@dataclass(frozen=True)
class Unknown:
    """A section, or an option in a section, of a config file that the worker does not read."""

    path: str
    section: str
    #: None: the whole section is unknown.
    option: str | None = None

    @property
    def hint(self) -> str | None:
        """The known name closest to a misspelt one, if one is close."""
        if self.option in RENAMED:
            return RENAMED[self.option]
        known = list(FIELDS) if self.option is not None else [*SECTIONS, *FLAT_SECTIONS]
        close = difflib.get_close_matches(self.option or self.section, known, n=1, cutoff=0.8)
        return close[0] if close else None

    @property
    def text(self) -> str:
        """One line naming the file, the section and the option."""
        what = (f"unknown section [{self.section}]" if self.option is None
                else f"unknown option {self.option} in [{self.section}]")
        hint = self.hint
        if hint:
            what += f" (did you mean {f'[{hint}]' if self.option is None else hint}?)"
        return f"config file {self.path}: {what}"


def _from_ini(path: str, unknown: list[Unknown]) -> dict[str, str]:
    """The options of one file by flat name; what it holds that we do not read goes to unknown."""
    # DEFAULT read as a section of its own: configparser would merge it into every section.
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"config file {path}: {exc.message}") from None
    values: dict[str, str] = {}
    # [DEFAULT] first, so that an option's own section wins over it wherever it stands.
    for section in sorted(parser.sections(), key=lambda name: name != "DEFAULT"):
        if section not in SECTIONS and section not in FLAT_SECTIONS:
            # nova's own sections may share the file, but so may a misspelt one of ours:
            # named, never silently dropped.
            unknown.append(Unknown(path, section))
            continue
        for name, value in parser.items(section):
            row = FIELDS.get(name)
            if row is None:
                unknown.append(Unknown(path, section, name))
                continue
            if section != row.section and section not in FLAT_SECTIONS:
                raise ConfigError(f"config file {path}: option {name} belongs in "
                                  f"[{row.section}], not [{section}]")
            values[name] = value
    return values


def config_files(files: str | Sequence[str] | None = None,
                 dirs: str | Sequence[str] | None = None) -> list[str]:
    """The files to read, in order, as nova's services take them: each --config-file, then
    each --config-dir's ``*.conf`` sorted by name."""
    paths = [files] if isinstance(files, str) else list(files or ())
    for folder in [dirs] if isinstance(dirs, str) else list(dirs or ()):
        try:
            names = sorted(entry.name for entry in os.scandir(folder)
                           if entry.name.endswith(".conf") and not entry.is_dir())
        except OSError as exc:
            raise ConfigError(f"config dir {folder}: {exc.strerror}") from None
        paths += [os.path.join(folder, name) for name in names]
    return paths


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(ENV_PREFIX):].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in FIELDS
    }


def build(values: Mapping[str, Any]) -> Config:
    """A Config from flat, already coerced option values (name -> value)."""
    groups: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for name, value in values.items():
        group = FIELDS[name].group
        if group is None:
            top[name] = value
        else:
            groups.setdefault(group, {})[name] = value
    for group, (_, kind) in GROUPS.items():
        top[group] = kind(**groups.get(group, {}))
    return Config(**top)


def load(
    config_file: str | Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    config_dir: str | Sequence[str] | None = None,
    strict: bool = False,
    unknown: list[Unknown] | None = None,
) -> Config:
    """Build a Config: defaults < INI files < environment < explicit overrides (flat names).

    config_file is one file or several, read in order (a later one wins), then each
    config_dir's ``*.conf``. What the files hold that the worker does not read is an
    error when strict, else appended to unknown (logged as warnings when unknown is None).
    """
    layered: dict[str, Any] = {}
    found: list[Unknown] = []
    for path in config_files(config_file, config_dir):
        layered.update(_from_ini(path, found))
    if found and strict:
        raise ConfigError("; ".join(item.text for item in found) + " (--strict-config)")
    if unknown is not None:
        unknown.extend(found)
    else:
        warn_unknown(found)
    layered.update(_from_env(os.environ if environ is None else environ))
    wrong = sorted(k for k, v in (overrides or {}).items() if k not in FIELDS and v is not None)
    if wrong:
        raise ConfigError(f"unknown option(s) {', '.join(wrong)}")
    layered.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = build({name: _coerce(name, raw) for name, raw in layered.items()})
    _check(config)
    return config


def warn_unknown(found: Sequence[Unknown]) -> None:
    """One warning per unknown section or option, naming the file (after logs.setup)."""
    for item in found:
        named = {"option": item.option} if item.option is not None else {}
        hint = {"did_you_mean": item.hint} if item.hint else {}
        log.warning("config_section_unknown" if item.option is None else "config_option_unknown",
                    file=item.path, section=item.section, **named, **hint)


def _check(config: Config) -> None:
    """The rules between options."""
    rabbit, worker = config.rabbit, config.worker
    if worker.require_signature and not worker.signing_key_file:
        raise ConfigError("option require_signature: needs signing_key_file")
    if worker.signature_max_age >= worker.journal_max_age:
        # Past the journal's memory a replay inside the window would run again.
        raise ConfigError("option signature_max_age: must be shorter than journal_max_age "
                          f"({worker.journal_max_age:g}s)")
    monitors = [m.strip() for m in config.compute_monitors.split(",") if m.strip()]
    unknown = [m for m in monitors if m not in MONITORS]
    if unknown:
        raise ConfigError(f"option compute_monitors: unknown monitor {unknown[0]!r:.60} "
                          f"(known: {', '.join(sorted(MONITORS))})")
    if not config.host or any(c in config.host for c in "#* \t"):
        raise ConfigError(f"option host: {config.host!r} cannot be used in a routing key")
    # Exchange names, queue names and routing keys are AMQP short strings: at
    # most 255 bytes, or every publish and declare on them fails.
    topic = config.notifications.notification_topic
    for option, name in (("control_exchange", config.control_exchange),
                         ("topic", f"{config.topic}_fanout_{'0' * 32}"),
                         ("host", f"{config.topic}.{config.host}"),
                         ("notification_topic", f"{topic}.error"),
                         ("dead_letter_exchange", rabbit.dead_letter_exchange)):
        if len(name.encode("utf-8")) > 255:
            raise ConfigError(f"option {option}: makes the AMQP name {name[:40]!r}... longer "
                              "than 255 bytes")
    _check_transport_url(config.transport_url)
    _check_vnc(config.vnc)
    _check_metrics(worker)


def _check_transport_url(transport_url: str) -> None:
    """Each node is a URL kombu can take apart; the error never shows the value."""
    try:
        nodes = node_urls(transport_url)
    except ValueError:  # a port that is not a number: said below, node by node
        nodes = [url.strip() for url in transport_url.split(";") if url.strip()]
    if not nodes:
        raise ConfigError("option transport_url: no broker URL")
    for number, url in enumerate(nodes, 1):
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            # A bare "/" in a password ends the host part early: kombu would then fail
            # on a "port" that is the password's beginning, and say so with it.
            raise ConfigError(f"option transport_url: node {number} is not a URL kombu can "
                              "read: its port must be a number up to 65535, and a password "
                              "with '/', '?' or '#' in it percent-encoded (%2F, %3F, %23)"
                              ) from None
        if not parts.scheme:
            raise ConfigError(f"option transport_url: node {number} has no scheme "
                              "(rabbit://, amqp://, amqps:// or memory://)")
    # oslo only warns, then logs in as guest on the hosts without: a login refused there
    # would look like a node that is down.
    bare = [number for number, url in enumerate(nodes, 1)
            if "@" not in urllib.parse.urlsplit(url).netloc]
    if bare and len(bare) < len(nodes) and not transport_url.startswith("memory://"):
        raise ConfigError(f"option transport_url: node {bare[0]} has no user:password@ but "
                          "others have: give every host its own (u:p@h1:p1,u:p@h2:p2)")


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def host_port(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT) as (host, port); ConfigError when it is not one."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{text!r:.80} is not HOST:PORT")
    return host, int(port)


def _check_metrics(worker: WorkerOptions) -> None:
    if worker.metrics_listen:
        try:
            host_port(worker.metrics_listen)
        except ConfigError as exc:
            raise ConfigError(f"option metrics_listen: {exc.message} (empty turns it "
                              "off)") from None
    if worker.metrics_textfile and not worker.metrics_textfile.endswith(".prom"):
        # node_exporter's textfile collector reads *.prom files only.
        raise ConfigError(f"option metrics_textfile: {worker.metrics_textfile!r:.80} must end "
                          "in .prom")


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _check_vnc(vnc: VncOptions) -> None:
    """Addresses are IP literals or host names; the proxy URL is http(s) or empty."""
    for option in ("server_listen", "server_proxyclient_address"):
        value = getattr(vnc, option)
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.fullmatch(value):
                raise ConfigError(f"option {option}: {value!r:.80} is neither an IP address "
                                  "nor a host name") from None
    url = vnc.novncproxy_base_url
    if url:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.fragment:
            raise ConfigError(f"option novncproxy_base_url: {url!r:.80} is not an http(s) "
                              "URL without a fragment")
