"""Console output read back within nova's bound, and nova's VNC connect info."""

from __future__ import annotations

import os
import urllib.parse
import uuid as uuidlib
import warnings
from pathlib import Path

import pytest

from worker.errors import UnsafePath
from worker.virt import consoles
from worker.virt.consoles import CONSOLE_LOG, MAX_CONSOLE_BYTES


def _lines(count: int, width: int = 9) -> bytes:
    return b"".join(f"{n:0{width}d}\n".encode() for n in range(count))


def test_no_log_reads_as_nothing(tmp_path: Path) -> None:
    """An instance that never logged (or was built before consoles) has an empty console."""
    assert "" == consoles.tail_lines(consoles.read_log(tmp_path), 10)


def test_a_large_log_is_read_from_its_end_and_no_further_than_the_bound(tmp_path: Path) -> None:
    """A 1 MiB log gives its last 100 KiB, and asking for a billion lines changes nothing."""
    (tmp_path / CONSOLE_LOG).write_bytes(_lines(100_000))  # 1,000,000 bytes

    read = consoles.read_log(tmp_path)
    text = consoles.tail_lines(read, 10**9)

    assert MAX_CONSOLE_BYTES == len(read)
    assert text.endswith("000099999\n")
    assert MAX_CONSOLE_BYTES == len(text)


def test_tail_length_counts_lines_as_nova_s_manager_does(tmp_path: Path) -> None:
    """nova splits on newlines: the last N pieces (a trailing newline makes an empty one)."""
    (tmp_path / CONSOLE_LOG).write_bytes(b"one\ntwo\nthree\n")
    read = consoles.read_log(tmp_path)

    assert ("three\n", "two\nthree\n", "", "one\ntwo\nthree\n") == (
        consoles.tail_lines(read, 2), consoles.tail_lines(read, 3),
        consoles.tail_lines(read, 0), consoles.tail_lines(read, None))


def test_bytes_that_are_not_ascii_become_replacement_characters(tmp_path: Path) -> None:
    """Whatever the guest wrote, the answer is text (nova decodes ascii with replace)."""
    (tmp_path / CONSOLE_LOG).write_bytes(b"ok \xff\xfe\x00 end")

    assert "ok \ufffd\ufffd\x00 end" == consoles.tail_lines(consoles.read_log(tmp_path), None)


def test_just_after_a_rotation_the_tail_continues_into_the_rotated_file(tmp_path: Path) -> None:
    """virtlogd moved the log to console.log.0: its end comes before the new log."""
    (tmp_path / f"{CONSOLE_LOG}.0").write_bytes(_lines(20_000))  # 200,000 bytes
    (tmp_path / CONSOLE_LOG).write_bytes(b"after rotation\n")

    read = consoles.read_log(tmp_path)

    assert MAX_CONSOLE_BYTES == len(read)
    assert read.endswith(b"000019999\nafter rotation\n")
    assert "000019999\nafter rotation\n" == consoles.tail_lines(read, 3)


def test_a_link_in_place_of_the_log_is_not_followed(tmp_path: Path) -> None:
    """A symlink planted as console.log (to a host file) is refused, not read."""
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    home = tmp_path / "instance"
    home.mkdir()
    (home / CONSOLE_LOG).symlink_to(secret)

    with pytest.raises(UnsafePath):
        consoles.read_log(home)


def test_a_fifo_in_place_of_the_log_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO would block a plain read for ever: it is opened non-blocking and refused."""
    os.mkfifo(tmp_path / CONSOLE_LOG)

    with pytest.raises(UnsafePath):
        consoles.read_log(tmp_path)


def _nova_access_url(base: str, token: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nova import objects

        objects.register_all()
        auth = objects.ConsoleAuthToken(console_type="novnc", access_url_base=base, token=token,
                                        id=1)
    url: str = auth.access_url
    return url


@pytest.mark.parametrize("base", ["http://127.0.0.1:6080/vnc_auto.html",
                                  "https://proxy.example.org/vnc_lite.html?path=%3Fa%3Db",
                                  "http://proxy:6080/vnc_auto.html?lang=en"])
def test_the_access_url_is_the_one_nova_builds(base: str) -> None:
    """nova's own ConsoleAuthToken.access_url, for the same base and token."""
    token = str(uuidlib.uuid4())

    assert _nova_access_url(base, token) == consoles.access_url(base, "novnc", token)


def test_connect_info_has_nova_s_keys_and_a_fresh_token_each_time() -> None:
    """host, port, internal_access_path (null), token (random) and access_url."""
    first = consoles.connect_info("127.0.0.1", 5900, "novnc", "http://p:6080/vnc_auto.html")
    second = consoles.connect_info("127.0.0.1", 5900, "novnc", "http://p:6080/vnc_auto.html")

    assert ["access_url", "host", "internal_access_path", "port", "token"] == sorted(first)
    assert ("127.0.0.1", 5900, None) == (first["host"], first["port"],
                                         first["internal_access_path"])
    assert first["token"] != second["token"]
    assert first["token"] == urllib.parse.quote(first["token"], safe="")
    assert first["access_url"].endswith(f"?path=%3Ftoken%3D{first['token']}")
    assert None is consoles.connect_info("h", 5900, "novnc", "")["access_url"]
