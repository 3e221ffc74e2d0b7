"""Console calls: what the serial console logged, and where a VNC console is reached."""

from __future__ import annotations

from typing import Any

from handlers.common import Args, find_guest, instance_uuid
from worker.core.context import Context
from worker.errors import ConsoleTypeInvalid, ConsoleTypeUnavailable, InvalidArguments
from worker.virt import console_xml, consoles


def _tail_length(args: Args) -> int | None:
    """nova's tail_length: an int, a string of one (nova's API passes what it was given),
    or null; -1 (nova's API allows it) and null mean every line."""
    value = args.get("tail_length")
    if value is None:
        return None
    number = int(value)  # the schema allows only integers and strings of digits
    if number < -1:
        raise InvalidArguments(f"tail_length {number} is below -1")
    return None if number == -1 else number


def get_console_output(ctx: Context, args: Args) -> str:
    """The last tail_length lines of the serial console, at most MAX_CONSOLE_BYTES of
    them; "" when nothing was logged."""
    find_guest(ctx, args)  # InstanceNotFound for an instance this host does not have
    tail_length = _tail_length(args)
    directory = ctx.paths.instance_dir(instance_uuid(args))
    return consoles.tail_lines(consoles.read_log(directory), tail_length)


def get_vnc_console(ctx: Context, args: Args) -> dict[str, Any]:
    """nova's connect info for the instance's VNC server: host, port, internal_access_path,
    token, access_url."""
    console_type = args.get("console_type")
    if console_type != "novnc":
        raise ConsoleTypeInvalid(console_type)
    guest = find_guest(ctx, args)
    port = console_xml.vnc_port(guest.xml())
    if port is None:
        # No VNC server, or one that does not listen because the domain is off.
        raise ConsoleTypeUnavailable(console_type)
    vnc = ctx.config.vnc
    return consoles.connect_info(vnc.server_proxyclient_address, port, console_type,
                                 vnc.novncproxy_base_url)


def get_serial_console(ctx: Context, args: Args) -> dict[str, Any]:
    """nova's answer where serial consoles are off: builds here log the serial port to
    console.log (get_console_output) and never offer it over TCP."""
    find_guest(ctx, args)
    raise ConsoleTypeUnavailable(args.get("console_type") or "serial")
