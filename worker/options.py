"""The options, section by section: one frozen dataclass a section, each field with its help.

Every field's metadata holds its help text (for --help and the sample config) and, where
it has them, its choices and minimum; worker.config reads the INI file, the environment
and the flags into these. Option names are unique across sections.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

VIRT_TYPES = ("kvm", "qemu", "lxc", "xen", "test")
# virt_type -> libvirt URI, as the 2011 driver chose them.
VIRT_URIS = {
    "kvm": "qemu:///system",
    "qemu": "qemu:///system",
    "lxc": "lxc:///",
    "xen": "xen:///",
    "test": "test:///default",
}
#: nova's monitors the worker has (compute_monitors; "cpu." is assumed, as nova assumes it).
MONITORS = ("cpu.virt_driver", "virt_driver")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A field with its help text and checks (choices, minimum) in its metadata."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class LibvirtOptions:
    """``[libvirt]``: which hypervisor, and how long a verb waits for it."""

    virt_type: str = _opt("kvm", "hypervisor type, picks the libvirt URI", choices=VIRT_TYPES)
    connection_uri: str = _opt("", "libvirt URI; overrides the one virt_type picks")
    libvirt_retry_seconds: float = _opt(
        10.0, "longest wait between retries of a verb waiting for libvirt", minimum=0.1
    )
    snapshot_image_format: str = _opt(
        "", "format of snapshot images (default: the format of the instance's root disk)",
        choices=("", "raw", "qcow2", "vmdk", "vdi"),
    )
    device_detach_attempts: int = _opt(
        8, "times a volume detach is asked of a running guest before it fails", minimum=1
    )
    device_detach_timeout: float = _opt(
        20.0, "seconds each detach attempt waits for libvirt's device-removed event",
        minimum=0.1,
    )
    use_virtio_for_bridges: bool = _opt(
        True, "interfaces get the virtio model (off: the hypervisor's default model)"
    )
    rescue_image_id: str = _opt(
        "", "image (in images_path) a rescue boots when the request names none "
        "(default: the instance's own image), as nova's"
    )
    live_migration_scheme: str = _opt(
        "", "scheme of the destination's libvirt URI for live migration "
        "(qemu+<scheme>://<addr>/system; default tcp), as nova's"
    )
    live_migration_inbound_addr: str = _opt(
        "", "address other hosts reach this host's libvirt and QEMU at for live migration "
        "(default: the host name), as nova's"
    )
    live_migration_uri: str = _opt(
        "", "old form of the two above: a URI template with %s for the destination "
        "(qemu+tcp://%s/system); overrides live_migration_scheme, as nova's"
    )
    live_migration_bandwidth: int = _opt(
        0, "most MiB/s a live migration may use (0: no limit), as nova's", minimum=0
    )
    live_migration_completion_timeout: int = _opt(
        800, "seconds per GiB of guest memory and copied disk a live migration may take "
        "before live_migration_timeout_action (0: no limit), as nova's", minimum=0
    )
    live_migration_timeout_action: str = _opt(
        "abort", "what a live migration past its completion timeout does: abort it, or "
        "force_complete (pause the guest so the copy converges), as nova's",
        choices=("abort", "force_complete"),
    )
    live_migration_permit_unsafe: bool = _opt(
        False, "let libvirt migrate disks it cannot prove shared (VIR_MIGRATE_UNSAFE): for "
        "hosts that share one page cache (one machine) or storage you vouch for"
    )
    live_migration_progress_interval: float = _opt(
        5.0, "seconds between instance.live_migration.progress events (ours) while a "
        "migration runs", minimum=0.1
    )


@dataclass(frozen=True)
class RabbitOptions:
    """``[oslo_messaging_rabbit]``: queues, heartbeats, confirms and TLS, as oslo names them."""

    heartbeat: int = _opt(20, "AMQP heartbeat in seconds (0 turns it off)", minimum=0)
    amqp_durable_queues: bool = _opt(
        False, "durable exchange and queues, persistent messages (oslo's option)"
    )
    # oslo's names and defaults: nova's services declare the same event queues (and nova-compute
    # the same host queue), and RabbitMQ refuses a second declaration with other arguments.
    rabbit_quorum_queue: bool = _opt(
        False, "quorum queues (replicated, x-queue-type quorum) for the host, compute-alt, shared "
        "and event queues; makes them and the exchange durable whatever amqp_durable_queues says "
        "(oslo's option)"
    )
    rabbit_quorum_delivery_limit: int = _opt(
        0, "quorum queues: deliveries of a message before it is dropped or dead-lettered "
        "(x-delivery-limit; 0: no limit, as oslo)", minimum=0
    )
    rabbit_quorum_max_memory_length: int = _opt(
        0, "quorum queues: messages kept in memory (x-max-in-memory-length; 0: no limit; "
        "RabbitMQ 3.x only)", minimum=0
    )
    rabbit_quorum_max_memory_bytes: int = _opt(
        0, "quorum queues: bytes kept in memory (x-max-in-memory-bytes; 0: no limit; "
        "RabbitMQ 3.x only)", minimum=0
    )
    rabbit_transient_queues_ttl: int = _opt(
        1800, "seconds an unused fanout queue lives (x-expires; 0: forever, as oslo)", minimum=0
    )
    enable_cancel_on_failover: bool = _opt(
        False, "ask the broker to cancel our consumers when a mirrored queue fails over "
        "(x-cancel-on-ha-failover); the worker then declares and consumes again. Classic "
        "queues only: quorum queues refuse it and move their consumers themselves"
    )
    dead_letter_exchange: str = _opt(
        "", "exchange that rejected messages go to (and a queue of that name keeps them)"
    )
    prefetch_count: int = _opt(64, "unacked messages the broker may hand over", minimum=1)
    confirm_timeout: float = _opt(30.0, "seconds to wait for a publisher confirm", minimum=0.1)
    fast_path: bool = _opt(
        True, "plain-TCP broker connections read and write frames in batches on the socket; "
        "off: every frame through kombu and py-amqp's own calls (as over TLS)"
    )
    ssl_ca_file: str = _opt("", "CA bundle to verify the broker's certificate (amqps://)")


@dataclass(frozen=True)
class NotificationOptions:
    """``[oslo_messaging_notifications]``: where events go and who they say sent them."""

    notification_topic: str = _opt("versioned_notifications", "events go to <topic>.<priority>")
    publisher_id: str = _opt("", "publisher_id of events (default nova-compute:<host>, as nova's)")


@dataclass(frozen=True)
class ImageCacheOptions:
    """``[image_cache]``: nova's base-image cache under ``instances_path/_base``."""

    manager_interval: int = _opt(
        2400, "seconds between image cache sweeps (0: every 60 s, -1: never), as nova's",
        minimum=-1,
    )
    remove_unused_base_images: bool = _opt(True, "the sweep removes base images no instance uses")
    remove_unused_original_minimum_age_seconds: int = _opt(
        86400, "an unused base image is removed only when unused and older than this",
        minimum=0,
    )


@dataclass(frozen=True)
class VncOptions:
    """``[vnc]``: where each instance's VNC server listens and how a console is reached."""

    server_listen: str = _opt(
        "127.0.0.1", "address the VNC server of every new instance listens on (nova's; "
        "0.0.0.0 or :: only when set so)"
    )
    server_proxyclient_address: str = _opt(
        "127.0.0.1", "address of this host that a VNC proxy connects to: the host of "
        "get_vnc_console's answer (nova's)"
    )
    novncproxy_base_url: str = _opt(
        "", "noVNC proxy URL (e.g. http://proxy:6080/vnc_auto.html): get_vnc_console's "
        "access_url is built on it; empty: access_url is null"
    )


@dataclass(frozen=True)
class WorkaroundsOptions:
    """``[workarounds]``: nova's switches for hosts where a check gets it wrong."""

    skip_cpu_compare_on_dest: bool = _opt(
        False, "the destination of a live migration does not compare the source's CPU with "
        "its own (nested hosts report their own CPU incompatible), as nova's"
    )


@dataclass(frozen=True)
class WorkerOptions:
    """``[compute_worker]``: what nova has no option for (journal, signatures, limits)."""

    journal_max_entries: int = _opt(100000, "completed message ids kept", minimum=10)
    journal_max_age: float = _opt(7 * 86400.0, "seconds a completed id is kept", minimum=60)
    journal_fsync: bool = _opt(
        False, "journal survives power loss too (SQLite synchronous=FULL), not only a kill"
    )
    signing_key_file: str = _opt("", "file with the HMAC-SHA256 key for signed messages")
    require_signature: bool = _opt(False, "reject messages without a valid signature")
    signature_max_age: float = _opt(
        300.0, "seconds a signature stays good (refused older, or dated that far ahead)",
        minimum=1,
    )
    max_message_bytes: int = _opt(1048576, "larger bodies are rejected", minimum=256)
    volumes_path: str = _opt(
        "/var/lib/compute-worker/volumes",
        "directory that file volumes (driver_volume_type file) must resolve into",
    )
    volume_device_prefixes: str = _opt(
        "/dev/disk/,/dev/mapper/,/dev/dm-,/dev/loop,/dev/nbd",
        "comma-separated prefixes a local volume's device path, and what it resolves to, "
        "must start with",
    )
    bridge_mappings: str = _opt(
        "", "comma-separated <network id or label>:<bridge> pairs: the bridge a requested "
        "network is plugged into (as neutron's linuxbridge mappings)",
    )
    manage_bridges: bool = _opt(
        False, "a missing bridge is created, and removed again when the worker made it and "
        "no interface is left on it"
    )
    metrics_listen: str = _opt(
        "127.0.0.1:9469", "HOST:PORT the Prometheus metrics endpoint listens on (empty: off)"
    )
    metrics_textfile: str = _opt(
        "", "file (*.prom) the metrics are also written to, whole and atomically, for "
        "node_exporter's textfile collector (empty: none)"
    )
    metrics_textfile_interval: float = _opt(
        15.0, "seconds between writes of metrics_textfile", minimum=0.1
    )

    @property
    def device_prefixes(self) -> tuple[str, ...]:
        """volume_device_prefixes as a tuple, blanks dropped."""
        return tuple(p.strip() for p in self.volume_device_prefixes.split(",") if p.strip())


@dataclass(frozen=True)
class Config:
    """Every option the worker reads: ``[DEFAULT]`` here, the other sections nested."""

    # default_text: how generated files write a default that is the machine's own.
    host: str = _opt(socket.gethostname(), "this host's name: the queue is <topic>.<host>",
                     default_text="this machine's hostname")
    transport_url: str = _opt(
        "amqp://guest:guest@localhost:5672//",
        "broker URL (amqp://, amqps://, or memory:// for the embedded demo); a cluster as "
        "oslo writes it (rabbit://u:p@h1:5672,u:p@h2:5672,u:p@h3:5672/) or as kombu's "
        "url1;url2;url3, every node tried in turn",
    )
    control_exchange: str = _opt("nova", "topic exchange that RPC and events use")
    topic: str = _opt("compute", "RPC topic; the worker consumes <topic>.<host>")
    shared_queue: bool = _opt(False, "also consume the shared <topic> queue")
    instances_path: str = _opt(
        "/var/lib/compute-worker/instances", "directory holding <uuid>/ per instance"
    )
    images_path: str = _opt(
        "/var/lib/compute-worker/images",
        "the image store: one file per image id; builds read it, snapshots add to it",
    )
    state_dir: str = _opt("/var/lib/compute-worker/state", "directory for the journal")
    max_concurrent_ops: int = _opt(8, "verbs running at once across instances", minimum=1)
    soft_reboot_timeout: float = _opt(
        120.0, "seconds a SOFT reboot waits for the guest before a hard one", minimum=0
    )
    shutdown_timeout: float = _opt(
        60.0, "seconds stop_instance waits for a clean shutdown", minimum=0
    )
    build_timeout: float = _opt(
        120.0, "seconds a build waits for its new domain to be running", minimum=1
    )
    use_cow_images: bool = _opt(
        True, "root disks are qcow2 overlays on the cached base image (else full copies)"
    )
    default_ephemeral_format: str = _opt(
        "ext4", "file system of ephemeral disks", choices=("ext4", "ext3", "ext2", "vfat")
    )
    log_level: str = _opt(
        "info", "log level", choices=("debug", "info", "warning", "error")
    )
    update_resources_interval: int = _opt(
        0, "seconds between host.resources.update (and metrics.update) reports "
        "(0: every 60 s, below 0: only at start and when instances come or go), as nova's",
    )
    compute_monitors: str = _opt(
        "", "comma-separated monitors, as nova's: cpu.virt_driver sends metrics.update "
        "with the host's CPU use every update_resources_interval"
    )
    my_ip: str = _opt("", "host_ip of metrics.update (default: the address of the default "
                      "route, as nova's)")
    firewall_driver: str = _opt(
        "nwfilter", "traffic filter of each VIF: libvirt's nwfilter (clean-traffic), or none",
        choices=("nwfilter", "none"),
    )
    allow_same_net_traffic: bool = _opt(
        True, "instances on one subnet may reach each other (off: only the gateway may)"
    )
    rpc_response_timeout: float = _opt(
        60.0, "seconds a call to another host's worker waits for its reply, as oslo's",
        minimum=1
    )
    long_rpc_timeout: float = _opt(
        1800.0, "seconds the slow calls of a live migration (the checks and "
        "pre_live_migration) wait for the other host, as nova's", minimum=1
    )
    report_interval: float = _opt(
        10.0, "seconds between service.update heartbeats (report_count grows, last_seen_up "
        "is now): a host silent for several is down, as nova's", minimum=0.1
    )
    libvirt: LibvirtOptions = field(default_factory=LibvirtOptions)
    rabbit: RabbitOptions = field(default_factory=RabbitOptions)
    notifications: NotificationOptions = field(default_factory=NotificationOptions)
    image_cache: ImageCacheOptions = field(default_factory=ImageCacheOptions)
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    vnc: VncOptions = field(default_factory=VncOptions)
    workarounds: WorkaroundsOptions = field(default_factory=WorkaroundsOptions)
    log_format: str = _opt(
        "auto", "log lines: json (one object a line), console (readable), or auto: console "
        "on a terminal, json otherwise", choices=("auto", "json", "console")
    )

    @property
    def libvirt_uri(self) -> str:
        """The URI to open: connection_uri, else the one virt_type picks."""
        return self.libvirt.connection_uri or VIRT_URIS[self.libvirt.virt_type]

    @property
    def cpu_monitor(self) -> bool:
        """compute_monitors names nova's cpu.virt_driver: metrics.update is sent."""
        return any(m.strip() in MONITORS for m in self.compute_monitors.split(","))

    @property
    def event_publisher_id(self) -> str:
        """publisher_id for events."""
        return self.notifications.publisher_id or f"nova-compute:{self.host}"


#: Config attribute -> (INI section, its dataclass), for every section but [DEFAULT].
GROUPS: dict[str, tuple[str, type[Any]]] = {
    "libvirt": ("libvirt", LibvirtOptions),
    "rabbit": ("oslo_messaging_rabbit", RabbitOptions),
    "notifications": ("oslo_messaging_notifications", NotificationOptions),
    "image_cache": ("image_cache", ImageCacheOptions),
    "worker": ("compute_worker", WorkerOptions),
    "vnc": ("vnc", VncOptions),
    "workarounds": ("workarounds", WorkaroundsOptions),
}
