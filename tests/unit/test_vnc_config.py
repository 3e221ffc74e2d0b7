"""[vnc] and [libvirt] rescue_image_id: nova's names, safe defaults, bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import config
from worker.errors import ConfigError


def test_vnc_listens_on_loopback_unless_told_otherwise() -> None:
    """Defaults: 127.0.0.1 for the listen and proxy-client addresses, no proxy URL."""
    cfg = config.load(None, {}, environ={})

    assert ("127.0.0.1", "127.0.0.1", "", "") == (
        cfg.vnc.server_listen, cfg.vnc.server_proxyclient_address,
        cfg.vnc.novncproxy_base_url, cfg.libvirt.rescue_image_id)


def test_the_options_are_read_from_nova_s_sections(tmp_path: Path) -> None:
    """[vnc] server_listen and novncproxy_base_url, [libvirt] rescue_image_id, as nova's."""
    ini = tmp_path / "w.conf"
    ini.write_text("[vnc]\nserver_listen = 0.0.0.0\n"
                   "novncproxy_base_url = http://proxy:6080/vnc_auto.html\n"
                   "[libvirt]\nrescue_image_id = rescue-1\n")

    cfg = config.load(str(ini), {}, environ={})

    assert ("0.0.0.0", "http://proxy:6080/vnc_auto.html", "rescue-1") == (
        cfg.vnc.server_listen, cfg.vnc.novncproxy_base_url, cfg.libvirt.rescue_image_id)


@pytest.mark.parametrize(("option", "value"), [
    ("server_listen", "127.0.0.1'/><x"), ("server_listen", ""), ("server_listen", "a b"),
    ("server_proxyclient_address", "-host"), ("novncproxy_base_url", "javascript:alert(1)"),
    ("novncproxy_base_url", "http://p/vnc.html#frag"), ("novncproxy_base_url", "proxy:6080"),
])
def test_an_address_or_url_that_is_none_is_refused(option: str, value: str) -> None:
    """One line naming the option, before anything starts."""
    with pytest.raises(ConfigError, match=option):
        config.load(None, {option: value}, environ={})
