"""The unit and the tmpfiles entry as systemd reads them: verified, hardened, directories made."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import CHECKOUT, WORKER_BIN

UNIT = CHECKOUT / "systemd" / "compute-worker.service"
TMPFILES = CHECKOUT / "systemd" / "compute-worker.tmpfiles"
#: What `systemd-analyze security` said of the unit with its hardening (8.9 before it).
EXPOSURE_AT_MOST = 2.5


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: install Debian's systemd package (scripts/services.sh)")
    return found


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit, its ExecStart pointed at this venv's compute-worker (verify wants it to exist)."""
    text = UNIT.read_text().replace("/usr/local/bin/compute-worker", WORKER_BIN)
    path = tmp_path / "compute-worker.service"
    path.write_text(text)
    return path


def test_systemd_analyze_verify_finds_nothing_wrong(unit: Path) -> None:
    """systemd-analyze verify reads the unit without a warning or an error."""
    done = subprocess.run([_tool("systemd-analyze"), "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)

    assert (0, "") == (done.returncode, (done.stdout + done.stderr).strip())


def test_the_unit_is_a_notify_service_with_a_watchdog_and_a_start_limit() -> None:
    """Type=notify, NotifyAccess=main, a WatchdogSec, Restart=on-failure with a start limit."""
    text = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))

    assert {"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure"} == {
        k: settings[k] for k in ("Type", "NotifyAccess", "Restart")}
    assert int(settings["WatchdogSec"]) > 0
    assert int(settings["StartLimitBurst"]) > 0 and int(settings["StartLimitIntervalSec"]) > 0
    assert "--config /etc/compute-worker/compute-worker.conf" in settings["ExecStart"]
    assert settings["EnvironmentFile"].lstrip("-") == "/etc/default/compute-worker"


def test_hardening_keeps_the_exposure_low(unit: Path) -> None:
    """systemd-analyze security --offline rates the unit at most EXPOSURE_AT_MOST (was 8.9)."""
    done = subprocess.run([_tool("systemd-analyze"), "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)

    assert found is not None, done.stdout[-500:] + done.stderr[-500:]
    assert float(found.group(1)) <= EXPOSURE_AT_MOST, done.stdout


def test_the_tmpfiles_entry_makes_the_directories_with_their_modes(tmp_path: Path) -> None:
    """systemd-tmpfiles --create, in a root of the test's own, makes each directory as said."""
    done = subprocess.run([_tool("systemd-tmpfiles"), "--create", f"--root={tmp_path}",
                           str(TMPFILES)], capture_output=True, text=True, timeout=60,
                          check=False)

    assert 0 == done.returncode, done.stderr
    modes = {path: stat.S_IMODE((tmp_path / path.lstrip("/")).stat().st_mode)
             for path in ("/etc/compute-worker", "/var/lib/compute-worker",
                          "/var/lib/compute-worker/instances", "/var/lib/compute-worker/volumes",
                          "/var/lib/compute-worker/images", "/var/lib/compute-worker/state")}
    assert {"/etc/compute-worker": 0o750, "/var/lib/compute-worker": 0o755,
            "/var/lib/compute-worker/instances": 0o755, "/var/lib/compute-worker/volumes": 0o755,
            "/var/lib/compute-worker/images": 0o750,
            "/var/lib/compute-worker/state": 0o700} == modes
