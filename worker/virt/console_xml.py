"""Console devices of a domain, built with lxml: a logged serial console and a VNC server.

The serial port is a ``pty`` whose output libvirt hands to virtlogd (``<log>``,
as nova's libvirt driver does it): virtlogd owns ``console.log`` and rotates it
at its ``max_size`` (2 MiB by default, ``max_backups`` 3 kept), so a guest
that prints for ever cannot fill the disk, and no thread of ours copies bytes.
``append='off'``: every boot starts a fresh log, as nova's.
"""

from __future__ import annotations

import ipaddress
import os
import re

from lxml import etree

from worker.errors import UnsafePath

#: Host names libvirt may be told to listen on (RFC 1123 labels); IP literals pass too.
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def check_listen(address: str) -> str:
    """address when it is an IP literal or a host name; UnsafePath if not."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        if isinstance(address, str) and len(address) <= 253 and _HOSTNAME.fullmatch(address):
            return address
    raise UnsafePath(f"listen address {address!r:.80} is neither an IP address nor a host name")


def serial_console(log_file: str) -> list[etree._Element]:
    """<serial type='pty'> logged to log_file (an absolute path), and the <console> on it."""
    if not os.path.isabs(log_file) or os.path.normpath(log_file) != log_file:
        raise UnsafePath(f"console log {log_file!r:.120} is not an absolute, normal path")
    serial = etree.Element("serial", type="pty")
    etree.SubElement(serial, "log", file=log_file, append="off")
    etree.SubElement(serial, "target", port="0")
    console = etree.Element("console", type="pty")
    etree.SubElement(console, "target", type="serial", port="0")
    return [serial, console]


def vnc(listen: str) -> etree._Element:
    """<graphics type='vnc'> on a port libvirt picks (from 5900), listening on listen only."""
    address = check_listen(listen)
    graphics = etree.Element("graphics", type="vnc", autoport="yes", listen=address)
    etree.SubElement(graphics, "listen", type="address", address=address)
    return graphics


def vnc_port(domain_xml: bytes | str) -> int | None:
    """The port the first VNC server of a live domain listens on; None when it has none,
    or has one that does not listen (the domain is off: libvirt says -1)."""
    root = etree.fromstring(domain_xml.encode("utf-8") if isinstance(domain_xml, str)
                            else domain_xml)
    graphics = root.find("devices/graphics[@type='vnc']")
    if graphics is None:
        return None
    try:
        port = int(graphics.get("port", "-1"))
    except ValueError:
        return None
    return port if 0 < port < 65536 else None

