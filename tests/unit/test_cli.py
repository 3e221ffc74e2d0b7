"""The compute-worker command line, up to the point where it would need services."""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.cli.main import main
from worker.cli.rpc import parse_args
from worker.errors import ConfigError

SUBCOMMANDS = ["run", "check", "demo", "cast", "call", "events", "top"]
ROOT = Path(__file__).resolve().parents[2]
SETUP_CFG = ROOT / "setup.cfg"


@pytest.fixture(autouse=True)
def _no_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """COMPUTE_WORKER_* variables of the machine running the tests do not leak in."""
    for key in list(os.environ):
        if key.startswith("COMPUTE_WORKER_"):
            monkeypatch.delenv(key)


def test_bad_option_value_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An impossible --virt-type returns 2 and says why on exactly one stderr line."""
    code = main(["run", "--virt-type", "bogus"])

    out, err = capsys.readouterr()
    assert 2 == code
    assert "" == out
    assert ["compute-worker: error: option virt_type: 'bogus' is not one of kvm, qemu, lxc, "
            "xen, test"] == err.splitlines()


def test_bad_environment_value_exits_2_before_connecting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad COMPUTE_WORKER_* value fails the check subcommand the same way."""
    monkeypatch.setenv("COMPUTE_WORKER_PREFETCH_COUNT", "none")

    code = main(["check"])

    assert 2 == code
    assert 1 == len(capsys.readouterr().err.splitlines())


def test_missing_config_file_exits_2(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--config naming no file is one error line and exit 2."""
    code = main(["run", "--config", str(tmp_path / "absent.conf")])

    assert 2 == code
    assert capsys.readouterr().err.startswith("compute-worker: error: config file ")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``<subcommand> --help`` prints its usage and exits 0."""
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])

    assert 0 == caught.value.code
    assert capsys.readouterr().out.startswith(f"usage: compute-worker {command}")


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` names each subcommand."""
    with pytest.raises(SystemExit) as caught:
        main(["--help"])

    out = capsys.readouterr().out
    assert 0 == caught.value.code
    assert [] == [c for c in SUBCOMMANDS if c not in out]


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a subcommand argparse exits 2 with a usage message."""
    with pytest.raises(SystemExit) as caught:
        main([])

    assert 2 == caught.value.code
    assert "usage: compute-worker" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "check", "cast", "call", "events"])
def test_config_files_and_dirs_are_taken_as_nova_s_services_take_them(command: str) -> None:
    """--config (the old name) and --config-file repeat in order; --config-dir repeats too."""
    from worker.cli.main import build_parser

    positional = ["h", "m"] if command in ("cast", "call") else []
    ns = build_parser().parse_args([command, *positional, "--config", "a.conf",
                                    "--config-file", "b.conf", "--config-dir", "d1",
                                    "--config-dir", "d2", "--strict-config"])

    assert (["a.conf", "b.conf"], ["d1", "d2"], True) == (
        ns.config_file, ns.config_dir, ns.strict_config)


def test_a_later_config_file_wins_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two --config-file with a bad value in the first only: the second's good value wins."""
    first = tmp_path / "a.conf"
    first.write_text("[DEFAULT]\nmax_concurrent_ops = 0\n", encoding="utf-8")
    second = tmp_path / "b.conf"
    second.write_text("[DEFAULT]\nmax_concurrent_ops = 2\nlog_level = bogus\n", encoding="utf-8")

    code = main(["run", "--config-file", str(first), "--config-file", str(second)])

    assert 2 == code  # stopped by the second file's log_level, not the first's 0
    assert ("compute-worker: error: option log_level: 'bogus' is not one of debug, info, "
            "warning, error") == capsys.readouterr().err.strip()


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_shows_examples_of_itself(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``--help`` ends with an examples section whose lines run that very subcommand."""
    with pytest.raises(SystemExit):
        main([command, "--help"])

    out = capsys.readouterr().out
    assert "\nexamples:\n" in out
    examples = out.split("\nexamples:\n", 1)[1].splitlines()
    assert any(line.strip().startswith(f"compute-worker {command}") for line in examples), out


def test_version_is_the_package_version_of_setup_cfg(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` prints the installed distribution's version, which setup.cfg reads from
    worker.__version__ (the one place it is written)."""
    from worker import __version__

    ini = configparser.ConfigParser()
    ini.read(SETUP_CFG)

    with pytest.raises(SystemExit) as caught:
        main(["--version"])

    assert 0 == caught.value.code
    assert "attr: worker.__version__" == ini["metadata"]["version"]
    assert f"compute-worker {__version__}\n" == capsys.readouterr().out
    assert __version__ == importlib.metadata.version("compute-worker")


@pytest.mark.parametrize("pairs, expected", [
    (["reboot_type=HARD"], {"reboot_type": "HARD"}),
    (["timeout=5", "clean_shutdown=false", "image=null"],
     {"timeout": 5, "clean_shutdown": False, "image": None}),
    (['instance={"uuid": "u1"}'], {"instance": {"uuid": "u1"}}),
    (["instance.uuid=u1", "instance.name=web-1"], {"instance": {"uuid": "u1", "name": "web-1"}}),
    (["note=a=b"], {"note": "a=b"}),
    (["port_id=00000000-0000-4000-8000-000000000000"],
     {"port_id": "00000000-0000-4000-8000-000000000000"}),
])
def test_arg_pairs_are_json_values_else_strings(pairs: list[str], expected: dict[str, object]
                                                ) -> None:
    """--arg KEY=VALUE reads VALUE as JSON when it is JSON, else as the string typed."""
    assert expected == parse_args("{}", pairs)


def test_arg_pairs_go_over_args_json() -> None:
    """--arg overrides and extends --args, nested keys included."""
    got = parse_args('{"instance": {"uuid": "a", "host": "h"}, "reboot_type": "SOFT"}',
                     ["instance.uuid=b", "reboot_type=HARD"])

    assert {"instance": {"uuid": "b", "host": "h"}, "reboot_type": "HARD"} == got


@pytest.mark.parametrize("text, pairs", [
    ("[1]", []), ("{", []), ("{}", ["novalue"]), ("{}", ["=x"]), ("{}", ["a..b=1"]),
    ('{"instance": "u"}', ["instance.uuid=x"]),
])
def test_bad_args_are_option_errors(text: str, pairs: list[str]) -> None:
    """Arguments that make no keyword object are a ConfigError (exit 2), not a traceback."""
    with pytest.raises(ConfigError):
        parse_args(text, pairs)


def test_bad_arg_exits_2_before_connecting() -> None:
    """A malformed --arg is one line and exit 2, even with no broker at the URL."""
    # A subprocess: main() sets logging up on the stderr it finds, which capsys would close.
    done = subprocess.run([sys.executable, "-m", "worker.cli", "cast", "h", "pause_instance",
                           "--arg", "instance", "--transport-url",
                           "amqp://guest:guest@127.0.0.1:1//"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)

    assert 2 == done.returncode
    assert ["compute-worker: error: --arg 'instance': expected KEY=VALUE"] == (
        done.stderr.splitlines())
