"""Shared test tools: event schema checks, the captured oslo wire samples, a small disk."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# bench/parallel.py imports remove_domain from here; tests take it from tests.domains.
from tests.domains import remove_domain as remove_domain
from tests.nova_judge import judge
from tests.taps import Event
from worker.core import schemas

#: The console script of the environment running the tests (the README's .venv/bin/compute-worker).
WORKER_BIN = str(Path(sys.executable).with_name("compute-worker"))
#: The checkout these tests belong to: a worker subprocess runs its code.
CHECKOUT = Path(__file__).resolve().parents[1]
#: A copy of /work/shared/wire-samples.json: messages oslo.messaging 18.3.1 put on RabbitMQ 3.10.
WIRE_SAMPLES_FILE = Path(__file__).with_name("wire-samples.json")
#: Runs a test on the worker's fast path and again on kombu's (fast_path off); the
#: test, or a fixture it uses (conftest's cfg), takes the fast_path fixture.
BOTH_PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "kombu-path"])


def check_event(event: Event) -> None:
    """Validate an event against schemas/events/ and, where nova has its class, nova's own."""
    schemas.validator("events", "notification")(event)
    payload = event["payload"]
    schemas.validator("events", payload["nova_object.name"])(payload["nova_object.data"])
    if payload["nova_object.namespace"] == "nova":
        judge(payload)


def wire_samples() -> dict[str, Any]:
    """The captured oslo messages by name, parsed afresh so a test may change its copy."""
    samples: dict[str, Any] = json.loads(WIRE_SAMPLES_FILE.read_text("utf-8"))
    return samples


def worker_env() -> dict[str, str]:
    """Environment for a compute-worker subprocess: this checkout's code, no COMPUTE_WORKER_*
    but one that turns the metrics endpoint off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTE_WORKER_")}
    env["PYTHONUNBUFFERED"] = "1"
    # Workers of tests run side by side: none takes the metrics port unless a test says so.
    env["COMPUTE_WORKER_METRICS_LISTEN"] = ""
    env["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT)] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of size mounted at path (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the README's test command runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write zeros to disk until it is full; the file to delete to free it again."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert errno.ENOSPC == exc.errno, exc
        with contextlib.suppress(OSError):
            while True:  # the last few blocks, a byte at a time
                handle.write(b"\0" * 512)
    return filler
