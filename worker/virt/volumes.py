"""Volumes as nova describes them, made into checked DiskSpecs: policy only, no libvirt calls.

nova hands a volume over as a BlockDeviceMapping whose ``connection_info`` is a
JSON string ``{"driver_volume_type", "data", "serial"}``. Everything in it came
over the wire, so each kind is checked here, before libvirt (or QEMU, which
opens network disks itself) sees any of it:

- ``local``: a block device at ``data.device_path``; the path and what it
  resolves to must both start with one of ``volume_device_prefixes``;
- ``file``: a raw or qcow2 image at ``data.device_path`` that resolves inside
  ``volumes_path``; a qcow2 one with a backing or external data file is refused
  (that chain would reach files nobody checked);
- ``rbd`` and ``nbd``: ``data.name`` on ``data.hosts``/``data.ports``, host
  names or IP literals only; rbd may name a libvirt secret for its key.

libvirt is given the resolved path: what was checked is what it opens.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

from worker.config import Config
from worker.errors import InvalidDevicePath, InvalidVolume, NotSupported, UnsafePath
from worker.virt.disk_xml import BUS_PREFIXES, FORMATS, TARGET, Auth, DiskSpec, NetworkHost
from worker.virt.paths import canonical_uuid, inside

#: nova's driver_volume_type values this worker opens.
TYPES = ("local", "file", "rbd", "nbd")
DEFAULT_BUS = "virtio"
#: connection_info is small; a huge one is not a volume but an attack on the parser.
MAX_CONNECTION_INFO = 65536
MAX_HOSTS = 16
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: QEMU's legacy rbd and nbd filename syntax splits options on these; never let a name
#: carry one, whichever syntax libvirt picks.
_OPTION_CHARS = re.compile(r"[:,=\\]")
_QCOW2_MAGIC = b"QFI\xfb"
#: qcow2 v3 incompatible feature bit 2: the guest data lives in another (named) file.
_QCOW2_EXTERNAL_DATA = 1 << 2


def bus_of(bdm: dict[str, Any]) -> str:
    """The bus a mapping asks for: virtio by default, scsi or sata; NotSupported otherwise."""
    bus = bdm.get("disk_bus") or DEFAULT_BUS
    if bus not in BUS_PREFIXES:
        raise NotSupported(f"disk_bus {bus!r:.40} is not supported "
                           f"(only {', '.join(BUS_PREFIXES)})")
    return str(bus)


def target_of(device_name: str | None, bus: str) -> str | None:
    """"/dev/vdb" (or "vdb") as the target name "vdb"; None when no name is given.

    InvalidDevicePath when it is not a disk target on bus (vd* for virtio, sd* for
    scsi and sata).
    """
    if device_name is None or device_name == "":
        return None
    if not isinstance(device_name, str):
        raise InvalidDevicePath(f"device name {device_name!r:.40} is not a string")
    name = device_name.removeprefix("/dev/")
    prefix = BUS_PREFIXES.get(bus)
    if prefix is None:
        raise NotSupported(f"disk_bus {bus!r:.40} is not supported")
    if not TARGET.fullmatch(name) or not name.startswith(prefix):
        raise InvalidDevicePath(f"The supplied device path ({device_name!r:.40}) is invalid: "
                                f"not a {prefix}* disk on bus {bus}")
    return name


def _letters(index: int) -> str:
    """libvirt's disk letters: 0 -> a, 25 -> z, 26 -> aa, 701 -> zz."""
    text = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        text = chr(ord("a") + rest) + text
    return text


def next_free_target(used: set[str], bus: str) -> str:
    """The first target name on bus not in used: vda..vdz, vdaa..vdzz (sd* for scsi, sata)."""
    prefix = BUS_PREFIXES.get(bus)
    if prefix is None:
        raise NotSupported(f"disk_bus {bus!r:.40} is not supported")
    for index in range(26 + 26 * 26):
        name = prefix + _letters(index)
        if name not in used:
            return name
    raise InvalidDevicePath(f"no free device name left on bus {bus}")


def connection_info(bdm: dict[str, Any]) -> dict[str, Any]:
    """nova's connection_info of a mapping, parsed; InvalidVolume when it is not one."""
    raw = bdm.get("connection_info")
    if not isinstance(raw, str):
        raise InvalidVolume("the block device mapping has no connection_info")
    if len(raw) > MAX_CONNECTION_INFO:
        raise InvalidVolume(f"connection_info is longer than {MAX_CONNECTION_INFO} characters")

    def no_constants(name: str) -> Any:
        raise InvalidVolume(f"connection_info holds {name}, which is not JSON")

    try:
        info = json.loads(raw, parse_constant=no_constants)
    except (ValueError, RecursionError):
        raise InvalidVolume("connection_info is not JSON") from None
    if not isinstance(info, dict) or not isinstance(info.get("data"), dict):
        raise InvalidVolume("connection_info is not {driver_volume_type, data, serial}")
    if not isinstance(info.get("driver_volume_type"), str):
        raise InvalidVolume("connection_info has no driver_volume_type")
    return info


def volume_id(bdm: dict[str, Any]) -> str:
    """The mapping's volume id, canonical: the disk's <serial>, how it is found again."""
    try:
        return canonical_uuid(str(bdm.get("volume_id")).lower())
    except UnsafePath:
        raise InvalidVolume(f"volume_id {bdm.get('volume_id')!r:.60} is not a UUID") from None


def volume_disk(cfg: Config, bdm: dict[str, Any], target: str, *,
                boot_order: int | None = None) -> DiskSpec:
    """The checked disk for a volume mapping (nova's BlockDeviceMapping, made plain).

    target is the target name it gets ("vdb"); its serial is the volume id.
    InvalidVolume, InvalidDevicePath or NotSupported before anything is opened.
    """
    bus = bus_of(bdm)
    if bdm.get("device_type") not in (None, "disk"):
        raise NotSupported(f"device_type {bdm.get('device_type')!r:.40} is not supported "
                           "for volumes (only disk)")
    if target_of(target, bus) != target:
        raise InvalidDevicePath(f"target {target!r:.40} is not a bare disk target name")
    serial = volume_id(bdm)
    info = connection_info(bdm)
    given = info.get("serial")
    if given is not None and str(given).lower() != serial:
        raise InvalidVolume(f"connection_info serial {info.get('serial')!r:.60} is not the "
                            f"volume id {serial}")
    kind, data = info["driver_volume_type"], info["data"]
    common: dict[str, Any] = {"target": target, "bus": bus, "serial": serial,
                              "boot_order": boot_order}
    if kind == "local":
        return DiskSpec("block", _local_device(cfg, data), fmt="raw", **common)
    if kind == "file":
        path, fmt = _file_image(cfg, data)
        return DiskSpec("file", path, fmt=fmt, **common)
    if kind in ("rbd", "nbd"):
        name, hosts, auth = _network(kind, data)
        return DiskSpec("network", name, fmt="raw", protocol=kind, hosts=hosts, auth=auth,
                        **common)
    raise NotSupported(f"driver_volume_type {kind!r:.40} is not supported "
                       f"(only {', '.join(TYPES)})")


def _absolute(data: dict[str, Any]) -> str:
    path = data.get("device_path")
    if not isinstance(path, str) or not path:
        raise InvalidVolume("connection_info data has no device_path")
    if _CONTROL.search(path) or len(path) > 4096:
        raise InvalidVolume(f"device_path {path!r:.80} holds control characters or is too long")
    if not path.startswith("/") or path.startswith("//") or os.path.normpath(path) != path:
        # No "..", ".", "//" or trailing "/": what is checked is the path as written.
        raise InvalidVolume(f"device_path {path!r:.80} is not an absolute, normalised path")
    return path


def _local_device(cfg: Config, data: dict[str, Any]) -> str:
    """The resolved block device of a local volume, both ends under the allowed prefixes."""
    path = _absolute(data)
    prefixes = cfg.worker.device_prefixes
    if not path.startswith(prefixes):
        raise InvalidVolume(f"device_path {path!r:.80} is not under the allowed prefixes "
                            f"({', '.join(prefixes)})")
    resolved = os.path.realpath(path)
    if not resolved.startswith(prefixes):
        raise InvalidVolume(f"device_path {path!r:.80} leads to {resolved!r:.80}, which is not "
                            "under the allowed prefixes")
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        raise InvalidVolume(f"device_path {path!r:.80} does not exist") from None
    if not stat.S_ISBLK(mode):
        raise InvalidVolume(f"device_path {path!r:.80} is not a block device")
    return resolved


def _file_image(cfg: Config, data: dict[str, Any]) -> tuple[str, str]:
    """The resolved image file of a file volume inside volumes_path, and its format."""
    path = _absolute(data)
    root = Path(os.path.realpath(cfg.worker.volumes_path))
    try:
        # path is absolute, so this resolves path itself (symlinks and all) and checks
        # that it lands inside root.
        resolved = inside(root, path)
    except UnsafePath:
        # Said the same whether the path or a symlink on the way leads out.
        raise InvalidVolume(f"device_path {path!r:.80} does not resolve inside volumes_path "
                            f"({root})") from None
    fmt = data.get("format") or "raw"
    if fmt not in FORMATS:
        raise InvalidVolume(f"file volume format {fmt!r:.40} is not one of {', '.join(FORMATS)}")
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        raise InvalidVolume(f"device_path {path!r:.80} does not exist") from None
    if not stat.S_ISREG(mode):
        raise InvalidVolume(f"device_path {path!r:.80} is not a regular file")
    if fmt == "qcow2":
        _check_qcow2(resolved, path)
    return str(resolved), str(fmt)


def _check_qcow2(resolved: Path, shown: str) -> None:
    """A qcow2 image that opens no other file: no backing file, no external data file."""
    try:
        with open(resolved, "rb") as handle:
            header = handle.read(80)
    except OSError as exc:
        raise InvalidVolume(f"device_path {shown!r:.80} cannot be read ({exc.strerror})") \
            from None
    if len(header) < 72 or header[:4] != _QCOW2_MAGIC:
        raise InvalidVolume(f"device_path {shown!r:.80} is not a qcow2 image")
    version, backing_offset = struct.unpack_from(">IQ", header, 4)
    if backing_offset != 0:
        raise InvalidVolume(f"qcow2 volume {shown!r:.80} has a backing file: its chain would "
                            "reach files that were never checked")
    if version >= 3:
        if len(header) < 80:
            raise InvalidVolume(f"device_path {shown!r:.80} has a truncated qcow2 header")
        (incompatible,) = struct.unpack_from(">Q", header, 72)
        if incompatible & _QCOW2_EXTERNAL_DATA:
            raise InvalidVolume(f"qcow2 volume {shown!r:.80} keeps its data in another file")


def _network(kind: str, data: dict[str, Any]) -> tuple[str, tuple[NetworkHost, ...],
                                                      Auth | None]:
    """name, hosts and auth of an rbd or nbd volume, each checked."""
    name = data.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 1024:
        raise InvalidVolume(f"{kind} volume has no name")
    if _CONTROL.search(name) or _OPTION_CHARS.search(name):
        raise InvalidVolume(f"{kind} volume name {name!r:.80} holds control or option "
                            "characters")
    names, ports = data.get("hosts"), data.get("ports")
    if not isinstance(names, list) or not names or len(names) > MAX_HOSTS:
        raise InvalidVolume(f"{kind} volume needs 1 to {MAX_HOSTS} hosts")
    if ports is None:
        ports = [None] * len(names)
    if not isinstance(ports, list) or len(ports) != len(names):
        raise InvalidVolume(f"{kind} volume has {len(names)} hosts but not as many ports")
    if kind == "nbd" and len(names) != 1:
        raise InvalidVolume("an nbd volume has exactly one host")
    hosts = tuple(NetworkHost(_host(h), _port(p)) for h, p in zip(names, ports, strict=True))
    return name, hosts, _auth(kind, data)


def _host(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidVolume(f"volume host {name!r:.60} is not a string")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None and "%" not in name:
        return str(address)
    if _HOSTNAME.fullmatch(name) and not name.replace(".", "").isdigit():
        return name
    raise InvalidVolume(f"volume host {name!r:.80} is neither a host name nor an IP address")


def _port(port: Any) -> int | None:
    if port is None:
        return None
    if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) <= 5:
        port = int(port)
    if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
        return port
    raise InvalidVolume(f"volume port {port!r:.40} is not a number from 1 to 65535")


def _auth(kind: str, data: dict[str, Any]) -> Auth | None:
    """nova's auth_enabled, auth_username, secret_type, secret_uuid as a libvirt secret."""
    if not data.get("auth_enabled"):
        return None
    if kind != "rbd":
        raise NotSupported(f"authentication is not supported for {kind} volumes")
    username, secret_type = data.get("auth_username"), data.get("secret_type") or "ceph"
    if (not isinstance(username, str) or not 0 < len(username) <= 255
            or _CONTROL.search(username) or _OPTION_CHARS.search(username)
            or " " in username):
        raise InvalidVolume(f"auth_username {username!r:.60} is not a user name")
    if secret_type != "ceph":
        raise InvalidVolume(f"secret_type {secret_type!r:.40} is not ceph")
    try:
        secret = canonical_uuid(str(data.get("secret_uuid")).lower())
    except UnsafePath:
        raise InvalidVolume("secret_uuid is not a UUID (the key stays in libvirt's secret "
                            "store, named by its UUID)") from None
    return Auth(username, secret_type, secret)
