"""Options: one table drives the INI file, COMPUTE_WORKER_* variables and CLI flags."""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.errors import ConfigError

ENV_PREFIX = "COMPUTE_WORKER_"
INI_SECTION = "compute_worker"
VIRT_TYPES = ("kvm", "qemu", "lxc", "xen", "test")
# virt_type -> libvirt URI, as the 2011 driver chose them.
VIRT_URIS = {
    "kvm": "qemu:///system",
    "qemu": "qemu:///system",
    "lxc": "lxc:///",
    "xen": "xen:///",
    "test": "test:///default",
}


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Config:
    """Every option the worker reads; defaults are oslo-compatible."""

    host: str = _opt(socket.gethostname(), "this host's name: the queue is <topic>.<host>")
    transport_url: str = _opt(
        "amqp://guest:guest@localhost:5672//",
        "broker URL (amqp://, amqps://, or memory:// for the embedded demo)",
    )
    control_exchange: str = _opt("nova", "topic exchange that RPC and events use")
    topic: str = _opt("compute", "RPC topic; the worker consumes <topic>.<host>")
    shared_queue: bool = _opt(False, "also consume the shared <topic> queue")
    virt_type: str = _opt("kvm", "hypervisor type, picks the libvirt URI", choices=VIRT_TYPES)
    connection_uri: str = _opt("", "libvirt URI; overrides the one virt_type picks")
    instances_path: str = _opt(
        "/var/lib/compute-worker/instances", "directory holding <uuid>/ per instance"
    )
    images_path: str = _opt(
        "/var/lib/compute-worker/images",
        "base images for builds, one file per image id; the worker only reads them",
    )
    state_dir: str = _opt("/var/lib/compute-worker/state", "directory for the journal")
    max_concurrent_ops: int = _opt(8, "verbs running at once across instances", minimum=1)
    prefetch_count: int = _opt(64, "unacked messages the broker may hand over", minimum=1)
    heartbeat: int = _opt(20, "AMQP heartbeat in seconds (0 turns it off)", minimum=0)
    confirm_timeout: float = _opt(30.0, "seconds to wait for a publisher confirm", minimum=0.1)
    fast_path: bool = _opt(
        True, "plain-TCP broker connections read and write frames in batches on the socket; "
        "off: every frame through kombu and py-amqp's own calls (as over TLS)"
    )
    notification_topic: str = _opt("versioned_notifications", "events go to <topic>.<priority>")
    publisher_id: str = _opt("", "publisher_id of events (default compute-worker:<host>)")
    amqp_durable_queues: bool = _opt(
        False, "durable exchange and queues, persistent messages (oslo's option)"
    )
    queue_type: str = _opt(
        "classic", "host queue type; quorum needs amqp_durable_queues",
        choices=("classic", "quorum"),
    )
    quorum_delivery_limit: int = _opt(
        20, "quorum queues: deliveries before a message is dead-lettered", minimum=1
    )
    dead_letter_exchange: str = _opt(
        "", "exchange that rejected messages go to (and a queue of that name keeps them)"
    )
    signing_key_file: str = _opt("", "file with the HMAC-SHA256 key for signed messages")
    require_signature: bool = _opt(False, "reject messages without a valid signature")
    signature_max_age: float = _opt(
        300.0, "seconds a signature stays good (refused older, or dated that far ahead)",
        minimum=1,
    )
    ssl_ca_file: str = _opt("", "CA bundle to verify the broker's certificate (amqps://)")
    max_message_bytes: int = _opt(1048576, "larger bodies are rejected", minimum=256)
    soft_reboot_timeout: float = _opt(
        120.0, "seconds a SOFT reboot waits for the guest before a hard one", minimum=0
    )
    shutdown_timeout: float = _opt(
        60.0, "seconds stop_instance waits for a clean shutdown", minimum=0
    )
    build_timeout: float = _opt(
        120.0, "seconds a build waits for its new domain to be running", minimum=1
    )
    journal_max_entries: int = _opt(100000, "completed message ids kept", minimum=10)
    journal_max_age: float = _opt(7 * 86400.0, "seconds a completed id is kept", minimum=60)
    journal_fsync: bool = _opt(
        False, "journal survives power loss too (SQLite synchronous=FULL), not only a kill"
    )
    libvirt_retry_seconds: float = _opt(
        10.0, "longest wait between retries of a verb waiting for libvirt", minimum=0.1
    )
    log_level: str = _opt(
        "info", "log level", choices=("debug", "info", "warning", "error")
    )

    @property
    def libvirt_uri(self) -> str:
        """The URI to open: connection_uri, else the one virt_type picks."""
        return self.connection_uri or VIRT_URIS[self.virt_type]

    @property
    def event_publisher_id(self) -> str:
        """publisher_id for events."""
        return self.publisher_id or f"compute-worker:{self.host}"


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}


def _converter(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    kind: type = type(f.default)
    if kind is bool:
        return _bool
    if kind is int:
        return int
    if kind is float:
        return float
    return str


def _coerce(name: str, raw: Any) -> Any:
    f = FIELDS[name]
    try:
        value = _converter(f)(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ConfigError(f"option {name}: {exc}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"option {name}: {raw!r} is not a finite number")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"option {name}: {value!r} is not one of {', '.join(choices)}")
    minimum = f.metadata.get("minimum")
    if minimum is not None and value < minimum:
        raise ConfigError(f"option {name}: {value!r} is below the minimum {minimum}")
    if isinstance(value, str) and "\x00" in value:
        raise ConfigError(f"option {name}: contains a NUL byte")
    return value


def _from_ini(path: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"config file {path}: {exc.message}") from None
    values: dict[str, str] = dict(parser.defaults())
    if parser.has_section(INI_SECTION):
        values.update({k: v for k, v in parser.items(INI_SECTION)})
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    return values


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(ENV_PREFIX):].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in FIELDS
    }


def load(
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a Config: defaults < INI file < environment < explicit overrides."""
    layered: dict[str, Any] = {}
    if config_file:
        layered.update(_from_ini(config_file))
    layered.update(_from_env(os.environ if environ is None else environ))
    layered.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values = {name: _coerce(name, raw) for name, raw in layered.items()}
    config = Config(**values)
    if config.queue_type == "quorum" and not config.amqp_durable_queues:
        raise ConfigError("option queue_type: quorum queues are durable; "
                          "set amqp_durable_queues (--durable-queues) too")
    if config.require_signature and not config.signing_key_file:
        raise ConfigError("option require_signature: needs signing_key_file")
    if config.signature_max_age >= config.journal_max_age:
        # Past the journal's memory a replay inside the window would run again.
        raise ConfigError("option signature_max_age: must be shorter than journal_max_age "
                          f"({config.journal_max_age:g}s)")
    if not config.host or any(c in config.host for c in "#* \t"):
        raise ConfigError(f"option host: {config.host!r} cannot be used in a routing key")
    # Exchange names, queue names and routing keys are AMQP short strings: at
    # most 255 bytes, or every publish and declare on them fails.
    for option, name in (("control_exchange", config.control_exchange),
                         ("topic", f"{config.topic}_fanout_{'0' * 32}"),
                         ("host", f"{config.topic}.{config.host}"),
                         ("notification_topic", f"{config.notification_topic}.error"),
                         ("dead_letter_exchange", config.dead_letter_exchange)):
        if len(name.encode("utf-8")) > 255:
            raise ConfigError(f"option {option}: makes the AMQP name {name[:40]!r}... longer "
                              "than 255 bytes")
    return config
