"""Options: defaults, INI file, COMPUTE_WORKER_* environment, explicit overrides, errors."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from worker import config
from worker.config import Config
from worker.errors import ConfigError


def write_ini(tmp_path: Path, text: str) -> str:
    """An INI file with text, returning its path."""
    path = tmp_path / "compute-worker.conf"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_are_oslo_compatible() -> None:
    """With no file, environment or overrides, the documented defaults apply."""
    cfg = config.load(environ={})

    assert Config() == cfg
    assert ("nova", "compute", "versioned_notifications") == (
        cfg.control_exchange, cfg.topic, cfg.notifications.notification_topic)
    assert ("kvm", "qemu:///system") == (cfg.libvirt.virt_type, cfg.libvirt_uri)
    assert cfg.rabbit.amqp_durable_queues is False
    assert cfg.shared_queue is False
    assert socket.gethostname() == cfg.host
    assert f"nova-compute:{socket.gethostname()}" == cfg.event_publisher_id


def test_default_environment_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit environ, load() reads the process environment."""
    monkeypatch.setenv("COMPUTE_WORKER_TOPIC", "from-process-env")

    assert "from-process-env" == config.load().topic


def test_ini_default_and_own_section_are_read(tmp_path: Path) -> None:
    """Options in [DEFAULT] and [compute_worker] are read, the section winning over DEFAULT."""
    path = write_ini(tmp_path, """
[DEFAULT]
heartbeat = 7
topic = from-default

[compute_worker]
topic = from-section
shared_queue = yes
confirm_timeout = 2.5
""")

    cfg = config.load(path, environ={})

    assert (7, "from-section", True, 2.5) == (
        cfg.rabbit.heartbeat, cfg.topic, cfg.shared_queue, cfg.rabbit.confirm_timeout)


def test_options_are_read_from_their_sections_as_nova_lays_them_out(tmp_path: Path) -> None:
    """[DEFAULT], [libvirt], [oslo_messaging_rabbit], [oslo_messaging_notifications] and ours."""
    path = write_ini(tmp_path, """
[DEFAULT]
host = h1
transport_url = amqp://u:p@b1:5672//

[libvirt]
virt_type = qemu

[oslo_messaging_rabbit]
heartbeat = 7
amqp_durable_queues = true

[oslo_messaging_notifications]
notification_topic = notes

[compute_worker]
journal_fsync = true

[vnc]
server_listen = 127.0.0.1
""")

    cfg = config.load(path, environ={})

    assert ("h1", "qemu", 7, True, "notes", True) == (
        cfg.host, cfg.libvirt.virt_type, cfg.rabbit.heartbeat, cfg.rabbit.amqp_durable_queues,
        cfg.notifications.notification_topic, cfg.worker.journal_fsync)


def test_an_option_in_another_options_section_is_refused_naming_the_right_one(
        tmp_path: Path) -> None:
    """heartbeat under [libvirt] is a mistake worth one clear line, not a silent default."""
    path = write_ini(tmp_path, "[libvirt]\nheartbeat = 5\n")

    with pytest.raises(ConfigError, match=r"heartbeat belongs in \[oslo_messaging_rabbit\]"):
        config.load(path, environ={})


def test_flags_and_variables_keep_the_flat_option_names() -> None:
    """--soft-reboot-timeout and COMPUTE_WORKER_HEARTBEAT, whatever section holds them."""
    cfg = config.load(None, {"virt_type": "test", "notification_topic": "n"},
                      environ={"COMPUTE_WORKER_HEARTBEAT": "9"})

    assert ("test", "n", 9) == (cfg.libvirt.virt_type, cfg.notifications.notification_topic,
                                cfg.rabbit.heartbeat)


def test_every_option_has_one_section_and_a_help_text() -> None:
    """The one table: each option in exactly one section, each with help for --help."""
    sections = {row.section for row in config.FIELDS.values()}

    assert {"DEFAULT", "libvirt", "oslo_messaging_rabbit", "oslo_messaging_notifications",
            "image_cache", "compute_worker", "vnc", "workarounds"} == sections
    assert all(row.spec.metadata.get("help") for row in config.FIELDS.values())


def test_environment_overrides_ini(tmp_path: Path) -> None:
    """COMPUTE_WORKER_<OPTION> beats the INI file."""
    path = write_ini(tmp_path, "[compute_worker]\nheartbeat = 7\ntopic = ini\n")

    cfg = config.load(path, environ={"COMPUTE_WORKER_HEARTBEAT": "11"})

    assert (11, "ini") == (cfg.rabbit.heartbeat, cfg.topic)


def test_explicit_overrides_beat_environment_and_none_is_ignored(tmp_path: Path) -> None:
    """Overrides (the CLI flags) beat the environment; a None override leaves the lower layer."""
    path = write_ini(tmp_path, "[compute_worker]\ntopic = ini\n")
    environ = {"COMPUTE_WORKER_HEARTBEAT": "11", "COMPUTE_WORKER_TOPIC": "env"}

    cfg = config.load(path, {"heartbeat": "13", "topic": None}, environ=environ)

    assert (13, "env") == (cfg.rabbit.heartbeat, cfg.topic)


def test_unrelated_environment_variables_are_ignored() -> None:
    """Only COMPUTE_WORKER_<known option> variables are read."""
    cfg = config.load(environ={"COMPUTE_WORKER_NOT_AN_OPTION": "x", "HEARTBEAT": "1",
                               "PATH": "/bin"})

    assert Config() == cfg


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("true", True), ("Yes", True), ("on", True),
    ("0", False), ("false", False), ("NO", False), ("off", False),
])
def test_booleans_accept_the_usual_spellings(text: str, expected: bool) -> None:
    """Boolean options take 1/0, true/false, yes/no, on/off in any case."""
    assert expected is config.load(environ={"COMPUTE_WORKER_AMQP_DURABLE_QUEUES": text}
                                   ).rabbit.amqp_durable_queues


@pytest.mark.parametrize(("environ", "message"), [
    ({"COMPUTE_WORKER_HEARTBEAT": "twenty"},
     "option heartbeat: invalid literal for int() with base 10: 'twenty'"),
    ({"COMPUTE_WORKER_CONFIRM_TIMEOUT": "soon"},
     "option confirm_timeout: could not convert string to float: 'soon'"),
    ({"COMPUTE_WORKER_SHARED_QUEUE": "maybe"},
     "option shared_queue: expected true or false, got 'maybe'"),
    ({"COMPUTE_WORKER_VIRT_TYPE": "bogus"},
     "option virt_type: 'bogus' is not one of kvm, qemu, lxc, xen, test"),
    ({"COMPUTE_WORKER_LOG_LEVEL": "verbose"},
     "option log_level: 'verbose' is not one of debug, info, warning, error"),
    ({"COMPUTE_WORKER_PREFETCH_COUNT": "0"}, "option prefetch_count: 0 is below the minimum 1"),
    ({"COMPUTE_WORKER_HEARTBEAT": "-1"}, "option heartbeat: -1 is below the minimum 0"),
    ({"COMPUTE_WORKER_CONFIRM_TIMEOUT": "0.01"},
     "option confirm_timeout: 0.01 is below the minimum 0.1"),
    ({"COMPUTE_WORKER_TOPIC": "a\x00b"}, "option topic: contains a NUL byte"),
    ({"COMPUTE_WORKER_HOST": "host one"},
     "option host: 'host one' cannot be used in a routing key"),
    ({"COMPUTE_WORKER_HOST": "host.#"}, "option host: 'host.#' cannot be used in a routing key"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_bad_value_is_one_clear_config_error(environ: dict[str, str], message: str) -> None:
    """A bad value names its option and the problem, on one line."""
    with pytest.raises(ConfigError) as caught:
        config.load(environ=environ)

    assert message == caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("option", ["confirm_timeout", "shutdown_timeout",
                                    "libvirt_retry_seconds"])
def test_nan_is_not_a_number_of_seconds(option: str) -> None:
    """'nan' for a float option in seconds is a ConfigError, not a timeout that never ends."""
    with pytest.raises(ConfigError):
        config.load(environ={f"COMPUTE_WORKER_{option.upper()}": "nan"})


def test_unknown_ini_option_is_named(tmp_path: Path) -> None:
    """An option the worker does not know, in [DEFAULT] or our section, is an error naming it."""
    path = write_ini(tmp_path, "[DEFAULT]\ndebug = true\n[compute_worker]\nheartbeet = 5\n")

    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})

    assert f"config file {path}: unknown option(s) debug, heartbeet" == caught.value.message


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A --config path that does not exist is one ConfigError naming it."""
    path = str(tmp_path / "absent.conf")

    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})

    assert f"config file {path}: No such file or directory" == caught.value.message


def test_unparsable_config_file_is_a_config_error(tmp_path: Path) -> None:
    """An INI file without a section header is a ConfigError, not a configparser traceback."""
    path = write_ini(tmp_path, "heartbeat = 5\n")

    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})

    assert caught.value.message.startswith(f"config file {path}: ")


def test_bad_value_in_the_ini_file_names_the_option(tmp_path: Path) -> None:
    """INI values go through the same checks as the environment's."""
    path = write_ini(tmp_path, "[compute_worker]\nmax_concurrent_ops = 0\n")

    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})

    assert "option max_concurrent_ops: 0 is below the minimum 1" == caught.value.message


@pytest.mark.parametrize(("virt_type", "uri"), [
    ("kvm", "qemu:///system"), ("qemu", "qemu:///system"), ("lxc", "lxc:///"),
    ("xen", "xen:///"), ("test", "test:///default"),
])
def test_libvirt_uri_follows_virt_type(virt_type: str, uri: str) -> None:
    """Each virt_type opens the URI the 2011 driver chose for it."""
    assert uri == config.load(None, {"virt_type": virt_type}, environ={}).libvirt_uri


@pytest.mark.parametrize("virt_type", ["kvm", "test"])
def test_connection_uri_overrides_virt_type(virt_type: str) -> None:
    """A connection_uri wins over whatever virt_type would pick."""
    cfg = config.load(None, {"virt_type": virt_type, "connection_uri": "qemu+tcp://10.0.0.2/system"},
                      environ={})

    assert "qemu+tcp://10.0.0.2/system" == cfg.libvirt_uri


def test_publisher_id_option_replaces_the_default() -> None:
    """An explicit publisher_id is used as is."""
    overrides: dict[str, Any] = {"publisher_id": "nova-compute:h1", "host": "h1"}

    assert "nova-compute:h1" == config.load(None, overrides, environ={}).event_publisher_id


@pytest.mark.parametrize("option", ["control_exchange", "topic", "host", "notification_topic",
                                    "dead_letter_exchange"])
def test_names_too_long_for_amqp_are_refused_at_start(option: str) -> None:
    """Every exchange, queue and routing key built from these must fit an AMQP short string."""
    with pytest.raises(ConfigError, match=f"option {option}: .*longer than 255 bytes"):
        config.load(overrides={option: "n" * 256}, environ={})
    config.load(overrides={option: "n" * 150}, environ={})  # long, but every name still fits


def test_every_option_the_example_config_shows_is_one_the_worker_reads(tmp_path: Path) -> None:
    """The example, every commented option switched on (host aside), loads as the defaults."""
    example = Path(__file__).parents[2] / "systemd" / "compute-worker.conf.example"
    text = re.sub(r"^#([a-z_]+ =)", r"\1", example.read_text(encoding="utf-8"), flags=re.M)
    path = tmp_path / "all.conf"
    path.write_text(text.replace("\nhost =\n", "\n"), encoding="utf-8")

    cfg = config.load(str(path), environ={})

    assert set(config.FIELDS) == set(re.findall(r"^([a-z_]+) =", text, flags=re.M))
    assert config.load(None, environ={}) == cfg
