"""The wheel as pip builds it: no warnings, the data files, the license, one version.

Built from a copy of the checkout in a temporary directory (a build writes build/ and
*.egg-info beside the sources), with pip's build isolation as ``pip install .`` uses it,
so the setuptools that judges it is the one an operator's pip fetches.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import worker

ROOT = Path(__file__).resolve().parents[2]
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                      "__pycache__", ".*_cache", ".hypothesis")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel and the build's whole output."""
    where = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, where / "src", ignore=_NOT_SOURCES)
    # PYTHONDONTWRITEBYTECODE makes setuptools say "byte-compiling is disabled": the
    # environment's choice, not the package's.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-v", "-w", str(where / "out"), str(where / "src")],
        capture_output=True, text=True, env=env, timeout=170, check=False)
    output = run.stdout + run.stderr
    assert 0 == run.returncode, output[-3000:]
    (wheel,) = (where / "out").glob("compute_worker-*.whl")
    return wheel, output


def _backend_warnings(output: str) -> list[str]:
    # pip's own notes on this machine's index configuration are not the build's.
    return [line for line in output.splitlines()
            if re.search(r"warn", line, re.I) and "Location 'file:" not in line]


@pytest.mark.timeout(180)
def test_the_wheel_builds_without_a_warning(built: tuple[Path, str]) -> None:
    """Nothing setuptools or pip says about the package is a warning."""
    _, output = built

    assert [] == _backend_warnings(output)


@pytest.mark.timeout(180)
def test_the_wheel_ships_systemd_and_the_docs_as_data_files(built: tuple[Path, str]) -> None:
    """Everything in systemd/ lands in share/compute-worker/systemd/, the docs in share/doc."""
    wheel, _ = built
    data = f"compute_worker-{worker.__version__}.data/data/"
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{data}share/compute-worker/systemd/{p.name}"
                for p in (ROOT / "systemd").iterdir() if p.is_file()}

    assert f"{data}share/compute-worker/systemd/compute-worker.service" in expected
    assert expected <= names
    assert {f"{data}share/doc/compute-worker/README.md",
            f"{data}share/doc/compute-worker/reference.md"} <= names
    assert "schemas/rpc/pause_instance.json" in names
    assert "schemas/events/InstanceActionPayload.json" in names


@pytest.mark.timeout(180)
def test_the_wheel_carries_the_license_and_the_one_version(built: tuple[Path, str]) -> None:
    """Apache-2.0 with its text; the metadata's version is worker.__version__."""
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = archive.read(meta_name).decode()
        licenses = [n for n in archive.namelist() if "dist-info" in n and n.endswith("LICENSE")]
        text = archive.read(licenses[0]).decode() if licenses else ""

    assert f"Version: {worker.__version__}\n" in meta
    assert re.search(r"^License(-Expression)?: Apache-2\.0$", meta, re.M)
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_the_version_is_written_once() -> None:
    """setup.cfg reads the version from worker/__init__.py instead of repeating it."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")

    assert "attr: worker.__version__" == cfg["metadata"]["version"]
