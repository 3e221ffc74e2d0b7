"""Volume policy: nova's connection_info made into checked disks, and every refusal."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.unit.test_domain_xml import canonical
from tests.validate_xml import assert_valid_domain, disk_of, in_domain
from worker import config
from worker.config import Config
from worker.errors import InvalidDevicePath, InvalidVolume, NotSupported
from worker.virt import disk_xml
from worker.virt.volumes import next_free_target, target_of, volume_disk

VOLUME = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
SECRET = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a block device needs root")


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """A private stand-in for /dev: an allowed prefix holding what a test puts there."""
    path = tmp_path / "dev"
    path.mkdir()
    return path


@pytest.fixture
def cfg(tmp_path: Path, dev: Path) -> Config:
    """Volumes under tmp_path/volumes; local devices under tmp_path/dev/."""
    (tmp_path / "volumes").mkdir()
    return config.load(None, {"volumes_path": str(tmp_path / "volumes"),
                              "volume_device_prefixes": f"{dev}/,/dev/loop"}, environ={})


def block_device(path: Path) -> Path:
    """A block device node at path (loop0's numbers; nothing opens it here)."""
    os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    return path


def bdm(kind: str, data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """nova's volume BlockDeviceMapping, made plain, with connection_info as nova's string."""
    info = {"driver_volume_type": kind, "data": data, "serial": VOLUME}
    return {"volume_id": VOLUME, "source_type": "volume", "destination_type": "volume",
            "device_name": "/dev/vdb", "disk_bus": "virtio",
            "connection_info": json.dumps(info), **fields}


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def golden_check(expected: str, element: etree._Element) -> None:
    """The <disk> built matches the expected XML, compared canonically."""
    assert canonical(expected) == canonical(etree.tostring(element, encoding="unicode"))


# --- local ---------------------------------------------------------------------------


@needs_root
def test_a_local_volume_is_the_resolved_block_device(cfg: Config, dev: Path) -> None:
    """A link under the prefixes to a block device under them gives libvirt the device itself."""
    real = block_device(dev / "loop7")
    (dev / "by-id").mkdir()
    (dev / "by-id" / "vol1").symlink_to(real)

    spec = volume_disk(cfg, bdm("local", {"device_path": str(dev / "by-id" / "vol1")}), "vdb")

    assert ("block", str(real), "vdb", "virtio", "raw", VOLUME) == (
        spec.kind, spec.source, spec.target, spec.bus, spec.fmt, spec.serial)
    golden_check(f"""
        <disk type="block" device="disk">
          <driver name="qemu" type="raw"/>
          <source dev="{real}"/>
          <target dev="vdb" bus="virtio"/>
          <serial>{VOLUME}</serial>
        </disk>""", disk_xml.disk(spec))
    assert_valid_domain(in_domain(spec))


@needs_root
@pytest.mark.parametrize("path", ["/etc/passwd", "/dev/sda", "/dev/loop0/../sda",
                                  "dev/loop0", "/dev//loop0", "/dev/loop0/", "/dev/./loop0"])
def test_local_paths_outside_the_prefixes_or_not_normalised_are_refused(
        cfg: Config, path: str) -> None:
    """Relative, '..', '.', '//' and paths under no prefix never reach libvirt."""
    with pytest.raises(InvalidVolume):
        volume_disk(cfg, bdm("local", {"device_path": path}), "vdb")


@needs_root
def test_a_link_under_the_prefixes_that_leads_out_is_refused(cfg: Config, dev: Path,
                                                             tmp_path: Path) -> None:
    """What the path resolves to must be under the prefixes too, not only the path."""
    outside = block_device(tmp_path / "elsewhere")
    (dev / "vol").symlink_to(outside)

    with pytest.raises(InvalidVolume, match="leads to"):
        volume_disk(cfg, bdm("local", {"device_path": str(dev / "vol")}), "vdb")


@needs_root
@pytest.mark.parametrize("make", ["file", "char", "missing", "dir"])
def test_a_local_volume_must_be_a_block_device(cfg: Config, dev: Path, make: str) -> None:
    """A regular file, a character device, a directory or nothing is not a local volume."""
    path = dev / "vol"
    if make == "file":
        path.write_bytes(b"\0" * 512)
    elif make == "char":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    elif make == "dir":
        path.mkdir()
    with pytest.raises(InvalidVolume):
        volume_disk(cfg, bdm("local", {"device_path": str(path)}), "vdb")


# --- file ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [None, "raw", "qcow2"])
def test_a_file_volume_is_its_image_in_the_format_nova_names(cfg: Config, fmt: str | None) -> None:
    """raw by default, qcow2 when data.format says so; the resolved path goes to libvirt."""
    root = Path(cfg.worker.volumes_path)
    image = root / "vol.img"
    qemu_img("create", "-q", "-f", fmt or "raw", str(image), "1M")
    (root / "link").symlink_to(image)
    data: dict[str, Any] = {"device_path": str(root / "link")}
    if fmt is not None:
        data["format"] = fmt

    spec = volume_disk(cfg, bdm("file", data), "vdb")

    assert ("file", str(image.resolve()), fmt or "raw") == (spec.kind, spec.source, spec.fmt)
    golden_check(f"""
        <disk type="file" device="disk">
          <driver name="qemu" type="{fmt or 'raw'}"/>
          <source file="{image.resolve()}"/>
          <target dev="vdb" bus="virtio"/>
          <serial>{VOLUME}</serial>
        </disk>""", disk_xml.disk(spec))
    assert_valid_domain(in_domain(spec))


def test_a_file_volume_on_scsi_with_a_boot_order_sits_on_a_virtio_scsi_controller(
        cfg: Config) -> None:
    """bus scsi and a boot order reach the XML; the domain gets nova's virtio-scsi controller."""
    image = Path(cfg.worker.volumes_path) / "vol.img"
    image.write_bytes(b"\0" * 65536)

    spec = volume_disk(cfg, bdm("file", {"device_path": str(image)}, disk_bus="scsi",
                                device_name="/dev/sda"), "sda", boot_order=1)

    golden_check(f"""
        <disk type="file" device="disk">
          <driver name="qemu" type="raw"/>
          <source file="{image}"/>
          <target dev="sda" bus="scsi"/>
          <serial>{VOLUME}</serial>
          <boot order="1"/>
        </disk>""", disk_xml.disk(spec))
    xml = in_domain(spec)
    assert disk_xml.has_scsi_controller(xml)
    assert_valid_domain(xml)


def test_a_link_under_volumes_path_that_leads_out_is_refused(cfg: Config,
                                                             tmp_path: Path) -> None:
    """A symlink inside volumes_path to a file outside it is refused, not followed."""
    outside = tmp_path / "secret.img"
    outside.write_bytes(b"\0" * 512)
    link = Path(cfg.worker.volumes_path) / "vol.img"
    link.symlink_to(outside)

    with pytest.raises(InvalidVolume, match="does not resolve inside volumes_path"):
        volume_disk(cfg, bdm("file", {"device_path": str(link)}), "vdb")


@pytest.mark.parametrize("where", ["/etc/passwd", "{root}/../outside.img", "{root}",
                                   "relative.img", "{root}/missing.img", "{root}/dir"])
def test_file_paths_outside_volumes_path_missing_or_not_files_are_refused(
        cfg: Config, tmp_path: Path, where: str) -> None:
    """Outside, '..', the directory itself, relative, missing or a directory: refused."""
    root = Path(cfg.worker.volumes_path)
    (root / "dir").mkdir()
    (tmp_path / "outside.img").write_bytes(b"\0" * 512)

    with pytest.raises(InvalidVolume):
        volume_disk(cfg, bdm("file", {"device_path": where.format(root=root)}), "vdb")


def test_a_qcow2_volume_with_a_backing_file_is_refused(cfg: Config, tmp_path: Path) -> None:
    """Its chain would open a file nobody checked (here one outside volumes_path)."""
    base = tmp_path / "base.img"
    qemu_img("create", "-q", "-f", "raw", str(base), "1M")
    overlay = Path(cfg.worker.volumes_path) / "vol.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay))

    with pytest.raises(InvalidVolume, match="backing file"):
        volume_disk(cfg, bdm("file", {"device_path": str(overlay), "format": "qcow2"}), "vdb")


def test_a_qcow2_volume_with_an_external_data_file_is_refused(cfg: Config,
                                                              tmp_path: Path) -> None:
    """A qcow2 v3 data_file is another file QEMU would open: refused like a backing file."""
    image = Path(cfg.worker.volumes_path) / "vol.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}",
             str(image), "1M")

    with pytest.raises(InvalidVolume, match="another file"):
        volume_disk(cfg, bdm("file", {"device_path": str(image), "format": "qcow2"}), "vdb")


@pytest.mark.parametrize("fmt", ["vmdk", "QCOW2", "host_device", 7])
def test_other_file_formats_are_refused(cfg: Config, fmt: Any) -> None:
    """Only raw and qcow2 are named to QEMU; nothing is probed."""
    image = Path(cfg.worker.volumes_path) / "vol.img"
    image.write_bytes(b"\0" * 512)
    with pytest.raises(InvalidVolume):
        volume_disk(cfg, bdm("file", {"device_path": str(image), "format": fmt}), "vdb")


def test_a_raw_file_called_qcow2_is_refused(cfg: Config) -> None:
    """data.format qcow2 on a file without the qcow2 header is refused before QEMU opens it."""
    image = Path(cfg.worker.volumes_path) / "vol.img"
    image.write_bytes(b"\0" * 512)
    with pytest.raises(InvalidVolume, match="not a qcow2 image"):
        volume_disk(cfg, bdm("file", {"device_path": str(image), "format": "qcow2"}), "vdb")


# --- network ---------------------------------------------------------------------------


def test_an_rbd_volume_is_a_network_disk_with_its_monitors_and_secret(cfg: Config) -> None:
    """nova's rbd connection_info: name, hosts and ports, and auth by a libvirt secret."""
    data = {"name": "volumes/volume-1", "hosts": ["10.0.0.1", "mon-b.example.org", "fd00::2"],
            "ports": ["6789", "6789", "3300"], "auth_enabled": True, "auth_username": "cinder",
            "secret_type": "ceph", "secret_uuid": SECRET}

    spec = volume_disk(cfg, bdm("rbd", data), "vdc")

    golden_check(f"""
        <disk type="network" device="disk">
          <driver name="qemu" type="raw"/>
          <source protocol="rbd" name="volumes/volume-1">
            <host name="10.0.0.1" port="6789"/>
            <host name="mon-b.example.org" port="6789"/>
            <host name="fd00::2" port="3300"/>
          </source>
          <auth username="cinder"><secret type="ceph" uuid="{SECRET}"/></auth>
          <target dev="vdc" bus="virtio"/>
          <serial>{VOLUME}</serial>
        </disk>""", disk_xml.disk(spec))
    assert_valid_domain(in_domain(spec))


def test_an_nbd_volume_is_a_network_disk_on_its_one_server(cfg: Config) -> None:
    """nbd: the export name on one host and port, no auth."""
    spec = volume_disk(cfg, bdm("nbd", {"name": "export1", "hosts": ["127.0.0.1"],
                                        "ports": [10809]}), "vdb")

    golden_check(f"""
        <disk type="network" device="disk">
          <driver name="qemu" type="raw"/>
          <source protocol="nbd" name="export1"><host name="127.0.0.1" port="10809"/></source>
          <target dev="vdb" bus="virtio"/>
          <serial>{VOLUME}</serial>
        </disk>""", disk_xml.disk(spec))
    assert_valid_domain(in_domain(spec))


@pytest.mark.parametrize("data", [
    {"name": "e", "hosts": ["evil host"], "ports": ["1"]},
    {"name": "e", "hosts": ["-oProxyCommand=x"], "ports": ["1"]},
    {"name": "e", "hosts": ["a;b"], "ports": ["1"]},
    {"name": "e", "hosts": ["1.2.3.4.5"], "ports": ["1"]},
    {"name": "e", "hosts": ["fe80::1%eth0"], "ports": ["1"]},
    {"name": "e", "hosts": ["host\n"], "ports": ["1"]},
    {"name": "e", "hosts": [7], "ports": ["1"]},
    {"name": "e", "hosts": [], "ports": []},
    {"name": "e", "hosts": ["a", "b"], "ports": ["1", "2"]},
    {"name": "e", "hosts": ["a"], "ports": ["1", "2"]},
    {"name": "e", "hosts": ["a"], "ports": ["0"]},
    {"name": "e", "hosts": ["a"], "ports": ["65536"]},
    {"name": "e", "hosts": ["a"], "ports": [-1]},
    {"name": "e", "hosts": ["a"], "ports": [True]},
    {"name": "e", "hosts": ["a"], "ports": ["80a"]},
    {"name": "e", "hosts": ["a"], "ports": ["١٢"]},
    {"name": "e\x00x", "hosts": ["a"], "ports": ["1"]},
    {"name": "e:exportname=x", "hosts": ["a"], "ports": ["1"]},
    {"name": "", "hosts": ["a"], "ports": ["1"]},
    {"hosts": ["a"], "ports": ["1"]},
], ids=lambda d: repr(d)[:60])
def test_bad_network_hosts_ports_and_names_are_refused(cfg: Config, data: dict[str, Any]) -> None:
    """Host names or IP literals only, ports 1-65535, names without control or option chars."""
    with pytest.raises(InvalidVolume):
        volume_disk(cfg, bdm("nbd", data), "vdb")


@pytest.mark.parametrize("auth", [
    {"auth_username": "cinder", "secret_type": "ceph", "secret_uuid": "not-a-uuid"},
    {"auth_username": "cin der", "secret_type": "ceph", "secret_uuid": SECRET},
    {"auth_username": "", "secret_type": "ceph", "secret_uuid": SECRET},
    {"auth_username": "cinder", "secret_type": "iscsi", "secret_uuid": SECRET},
])
def test_bad_rbd_credentials_are_refused(cfg: Config, auth: dict[str, Any]) -> None:
    """A user name, ceph secrets only, and a secret named by a UUID."""
    data = {"name": "v/1", "hosts": ["a"], "ports": ["6789"], "auth_enabled": True, **auth}
    with pytest.raises(InvalidVolume):
        volume_disk(cfg, bdm("rbd", data), "vdb")


def test_auth_on_an_nbd_volume_is_not_supported(cfg: Config) -> None:
    """libvirt has no secret for nbd: asking for one is refused, not ignored."""
    data = {"name": "e", "hosts": ["a"], "ports": ["1"], "auth_enabled": True,
            "auth_username": "u", "secret_uuid": SECRET}
    with pytest.raises(NotSupported):
        volume_disk(cfg, bdm("nbd", data), "vdb")


# --- the mapping itself ----------------------------------------------------------------


@pytest.mark.parametrize("info", ["not json", "[]", '{"data": {}}', '{"driver_volume_type": "x"}',
                                  '{"driver_volume_type": "nbd", "data": NaN}', None, "x" * 70000],
                         ids=lambda i: repr(i)[:30])
def test_connection_info_that_is_not_nova_s_shape_is_invalid(cfg: Config, info: Any) -> None:
    """Not JSON, not an object, no type or data, NaN, missing or huge: InvalidVolume."""
    with pytest.raises(InvalidVolume):
        volume_disk(cfg, {"volume_id": VOLUME, "connection_info": info}, "vdb")


@pytest.mark.parametrize("kind", ["iscsi", "fibre_channel", "vmdk"])
def test_other_volume_types_are_not_supported(cfg: Config, kind: str) -> None:
    """Anything but local, file, rbd and nbd is NotSupported."""
    with pytest.raises(NotSupported):
        volume_disk(cfg, bdm(kind, {"device_path": "/dev/loop0"}), "vdb")


@pytest.mark.parametrize(("fields", "error"), [
    ({"disk_bus": "ide"}, NotSupported), ({"disk_bus": "usb"}, NotSupported),
    ({"device_type": "cdrom"}, NotSupported), ({"volume_id": "../x"}, InvalidVolume),
    ({"volume_id": None}, InvalidVolume)])
def test_buses_device_types_and_ids_outside_the_policy_are_refused(
        cfg: Config, fields: dict[str, Any], error: type[Exception]) -> None:
    """Only virtio, scsi and sata disks; the volume id must be a UUID (it is the serial)."""
    with pytest.raises(error):
        volume_disk(cfg, bdm("nbd", {"name": "e", "hosts": ["a"], "ports": ["1"]}, **fields),
                    "vdb")


def test_a_serial_that_is_not_the_volume_id_is_refused(cfg: Config) -> None:
    """connection_info's serial names the same volume as the mapping, or nothing is attached."""
    info = {"driver_volume_type": "nbd", "data": {"name": "e", "hosts": ["a"], "ports": ["1"]},
            "serial": SECRET}
    with pytest.raises(InvalidVolume, match="serial"):
        volume_disk(cfg, {"volume_id": VOLUME, "connection_info": json.dumps(info)}, "vdb")


@pytest.mark.parametrize(("target", "bus"), [("sdb", "virtio"), ("vdb", "scsi"), ("/dev/vdb",
                                             "virtio"), ("hda", "virtio")])
def test_a_target_that_does_not_fit_the_bus_is_an_invalid_device_path(
        cfg: Config, target: str, bus: str) -> None:
    """vd* on virtio, sd* on scsi and sata, a bare name."""
    with pytest.raises(InvalidDevicePath):
        volume_disk(cfg, bdm("nbd", {"name": "e", "hosts": ["a"], "ports": ["1"]},
                             disk_bus=bus), target)


# --- device names ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "bus", "expected"), [
    ("/dev/vdb", "virtio", "vdb"), ("vdc", "virtio", "vdc"), ("/dev/vdaa", "virtio", "vdaa"),
    ("/dev/sdb", "scsi", "sdb"), ("/dev/sdc", "sata", "sdc"), (None, "virtio", None),
    ("", "scsi", None)])
def test_target_of_strips_dev_and_keeps_disk_targets(name: str | None, bus: str,
                                                    expected: str | None) -> None:
    """nova's /dev/vdb is libvirt's target vdb; no name means pick one."""
    assert expected == target_of(name, bus)


@pytest.mark.parametrize(("name", "bus"), [
    ("/dev/sdb", "virtio"), ("/dev/vdb", "scsi"), ("/dev/vdb1", "virtio"),
    ("/dev/../vdb", "virtio"), ("/dev/vdabc", "virtio"), ("/dev/xvdb", "virtio"),
    ("/dev/VDB", "virtio"), ("vd", "virtio"), ("/dev/vdb\n", "virtio")])
def test_target_of_refuses_what_is_not_a_disk_target_on_the_bus(name: str, bus: str) -> None:
    """Partitions, other buses' prefixes, traversal and junk are InvalidDevicePath."""
    with pytest.raises(InvalidDevicePath):
        target_of(name, bus)


def test_target_of_an_unknown_bus_is_not_supported() -> None:
    """The bus is checked before the name."""
    with pytest.raises(NotSupported):
        target_of("/dev/hdb", "ide")


@pytest.mark.parametrize(("used", "bus", "expected"), [
    (set(), "virtio", "vda"), ({"vda"}, "virtio", "vdb"), ({"vda", "vdc"}, "virtio", "vdb"),
    ({f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1)}, "virtio", "vdaa"),
    ({"vda", "sda"}, "scsi", "sdb"), ({"vda"}, "sata", "sda")])
def test_next_free_target_counts_as_libvirt_does(used: set[str], bus: str, expected: str) -> None:
    """vda..vdz, then vdaa; sd* on scsi and sata."""
    assert expected == next_free_target(used, bus)


def test_next_free_target_runs_out_after_vdzz() -> None:
    """Every one- and two-letter name taken: InvalidDevicePath, not a three-letter name."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    used = {f"vd{a}" for a in letters} | {f"vd{a}{b}" for a in letters for b in letters}
    with pytest.raises(InvalidDevicePath):
        next_free_target(used, "virtio")


def test_every_disk_kind_together_makes_a_valid_domain(cfg: Config) -> None:
    """file, network and scsi disks side by side pass virt-xml-validate."""
    image = Path(cfg.worker.volumes_path) / "vol.img"
    image.write_bytes(b"\0" * 512)
    specs = (volume_disk(cfg, bdm("file", {"device_path": str(image)}), "vdb"),
             volume_disk(cfg, bdm("nbd", {"name": "e", "hosts": ["nbd.example"],
                                          "ports": ["10809"]}, disk_bus="scsi"), "sda"))
    xml = in_domain(*specs)
    assert ["vdb", "sda"] == [d.find("target").get("dev") for d in disk_of(xml)]  # type: ignore[union-attr]
    assert_valid_domain(xml)
