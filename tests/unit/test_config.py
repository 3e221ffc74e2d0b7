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


def test_unknown_ini_option_is_named_with_its_file_and_section(tmp_path: Path) -> None:
    """An option the worker does not know is kept aside, naming the file, section and option."""
    path = write_ini(tmp_path, "[DEFAULT]\ndebug = true\n[compute_worker]\nheartbeet = 5\n")
    unknown: list[config.Unknown] = []

    cfg = config.load(path, environ={}, unknown=unknown)

    assert [f"config file {path}: unknown option debug in [DEFAULT]",
            f"config file {path}: unknown option heartbeet in [compute_worker] "
            "(did you mean heartbeat?)"] == [item.text for item in unknown]
    assert Config() == cfg  # the rest of the file still counts; here there is none


def test_unknown_and_misspelt_sections_are_named_not_silently_dropped(tmp_path: Path) -> None:
    """[api] (nova's) and [oslo_messaging_rabit] (ours, misspelt) are each one Unknown."""
    path = write_ini(tmp_path, "[api]\nauth_strategy = keystone\n"
                               "[oslo_messaging_rabit]\nheartbeat = 5\n")
    unknown: list[config.Unknown] = []

    cfg = config.load(path, environ={}, unknown=unknown)

    assert [f"config file {path}: unknown section [api]",
            f"config file {path}: unknown section [oslo_messaging_rabit] "
            "(did you mean [oslo_messaging_rabbit]?)"] == [item.text for item in unknown]
    assert 20 == cfg.rabbit.heartbeat  # the misspelt section's value is not read


def test_unknowns_are_logged_as_warnings_when_nobody_collects_them(
        tmp_path: Path, info_logs: list[dict[str, Any]]) -> None:
    """load() without an unknown list logs one warning each, naming file, section and option."""
    path = write_ini(tmp_path, "[libvirt]\nimages_type = rbd\n[glance]\napi_servers = x\n")

    config.load(path, environ={})

    assert [("config_option_unknown", path, "libvirt", "images_type"),
            ("config_section_unknown", path, "glance", None)] == [
        (e["event"], e["file"], e["section"], e.get("option")) for e in info_logs
        if e["event"].startswith("config_")]
    assert {"warning"} == {e["log_level"] for e in info_logs if e["event"].startswith("config_")}


def test_strict_config_makes_unknowns_one_error_line(tmp_path: Path) -> None:
    """With strict, the same file is a ConfigError naming every unknown on one line."""
    path = write_ini(tmp_path, "[DEFAULT]\ndebug = true\n[glance]\napi_servers = x\n")

    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={}, strict=True)

    assert (f"config file {path}: unknown option debug in [DEFAULT]; "
            f"config file {path}: unknown section [glance] (--strict-config)"
            ) == caught.value.message


def test_strict_config_accepts_a_file_with_only_known_options(tmp_path: Path) -> None:
    """strict refuses only what the worker does not read."""
    path = write_ini(tmp_path, "[DEFAULT]\nhost = h1\n[libvirt]\nvirt_type = test\n")

    assert ("h1", "test") == (lambda c: (c.host, c.libvirt.virt_type))(
        config.load(path, environ={}, strict=True))


def test_several_config_files_are_read_in_order_and_a_later_one_wins(tmp_path: Path) -> None:
    """--config-file a --config-file b: b's values beat a's, a's others stay."""
    first = tmp_path / "a.conf"
    first.write_text("[DEFAULT]\nhost = h1\ntopic = t1\n", encoding="utf-8")
    second = tmp_path / "b.conf"
    second.write_text("[DEFAULT]\ntopic = t2\n", encoding="utf-8")

    cfg = config.load([str(first), str(second)], environ={})

    assert ("h1", "t2") == (cfg.host, cfg.topic)


def test_config_dir_is_read_sorted_after_the_files(tmp_path: Path) -> None:
    """--config-dir's *.conf come after every --config-file, by name; other files are skipped."""
    main = tmp_path / "main.conf"
    main.write_text("[DEFAULT]\nhost = h1\ntopic = from-file\n", encoding="utf-8")
    folder = tmp_path / "conf.d"
    folder.mkdir()
    (folder / "20-late.conf").write_text("[DEFAULT]\ntopic = from-20\n", encoding="utf-8")
    (folder / "10-early.conf").write_text("[DEFAULT]\ntopic = from-10\n"
                                          "control_exchange = from-10\n", encoding="utf-8")
    (folder / "30-ignored.conf.dpkg-old").write_text("[DEFAULT]\ntopic = x\n",
                                                    encoding="utf-8")

    cfg = config.load(str(main), environ={}, config_dir=str(folder))

    assert [str(main), str(folder / "10-early.conf"), str(folder / "20-late.conf")] == (
        config.config_files(str(main), str(folder)))
    assert ("h1", "from-20", "from-10") == (cfg.host, cfg.topic, cfg.control_exchange)


def test_missing_config_dir_is_a_config_error(tmp_path: Path) -> None:
    """A --config-dir that does not exist is one ConfigError naming it, as oslo refuses it."""
    folder = str(tmp_path / "absent.d")

    with pytest.raises(ConfigError) as caught:
        config.load(None, environ={}, config_dir=folder)

    assert f"config dir {folder}: No such file or directory" == caught.value.message


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

    cfg = config.load(str(path), environ={}, strict=True)

    assert set(config.FIELDS) == set(re.findall(r"^([a-z_]+) =", text, flags=re.M))
    assert config.load(None, environ={}) == cfg



def test_the_example_config_leaves_host_to_the_hostname() -> None:
    """Copied as it is to every host, the example names no host: each consumes its own queue."""
    example = Path(__file__).parents[2] / "systemd" / "compute-worker.conf.example"

    cfg = config.load(str(example), environ={}, strict=True)

    assert socket.gethostname() == cfg.host
    assert [] == re.findall(r"^host\s*=.*", example.read_text(encoding="utf-8"), flags=re.M)


@pytest.mark.parametrize("url", ["amqp://nova:s3c/ret@rabbit:5672//",
                                 "amqp://g:g@a:1//;amqp://nova:s3c/ret@rabbit:5672//",
                                 "amqp://nova:s3cret@rabbit:99999//",
                                 "rabbit://nova:s3c/ret@h1:5672,nova:s3c/ret@h2:5672/"])
def test_a_transport_url_kombu_cannot_read_is_refused_without_showing_it(url: str) -> None:
    """A bare "/" in the password made kombu fail on the "port" s3c, printing it: refused here."""
    with pytest.raises(ConfigError) as caught:
        config.load(overrides={"transport_url": url}, environ={})

    assert caught.value.message.startswith("option transport_url: node ")
    assert "s3c" not in caught.value.message


def test_a_transport_url_without_a_scheme_is_refused() -> None:
    """A host name alone is not a broker URL."""
    with pytest.raises(ConfigError, match="has no scheme"):
        config.load(overrides={"transport_url": "rabbit"}, environ={})


def test_an_oslo_url_with_credentials_on_some_hosts_only_is_refused() -> None:
    """oslo warns and logs in as guest on the bare hosts (refused: it looks like a node down)."""
    with pytest.raises(ConfigError, match="node 2 has no user:password@ but others have"):
        config.load(overrides={"transport_url": "rabbit://nova:pw@h1,h2:5672,nova:pw@h3/"},
                    environ={})

    cfg = config.load(overrides={"transport_url": "rabbit://nova:pw@h1,nova:pw@h2/"}, environ={})
    assert "rabbit://nova:pw@h1,nova:pw@h2/" == cfg.transport_url


def test_an_old_quorum_option_is_told_its_oslo_name() -> None:
    """queue_type and quorum_delivery_limit became oslo's rabbit_quorum_*: the warning says so."""
    old = config.Unknown("/etc/compute-worker/worker.conf", "oslo_messaging_rabbit", "queue_type")
    assert old.text.endswith("(did you mean rabbit_quorum_queue?)")
