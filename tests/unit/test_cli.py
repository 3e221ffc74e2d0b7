"""The compute-worker command line, up to the point where it would need services."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.cli.main import main

SUBCOMMANDS = ["run", "check", "demo", "cast", "call", "events"]


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
