"""What compute-worker prints, read from real subprocesses: JSON when piped, console on a
terminal, the libraries' records as JSON, and never the broker password.

No service is needed: the broker URL points at closed ports of this machine, libvirt is
its built-in test driver.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import CHECKOUT, worker_env

CLI = [sys.executable, "-m", "worker.cli"]
PASSWORD = "s3cretPw"
#: Two nodes on closed ports: each unreachable node is logged by its (masked) URL.
URL = f"amqp://nova:{PASSWORD}@127.0.0.1:1//;amqp://nova:{PASSWORD}@127.0.0.1:9//"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config file with the password, an unknown section and a misspelt option."""
    path = tmp_path / "compute-worker.conf"
    path.write_text(f"[DEFAULT]\nhost = logs-test\ntransport_url = {URL}\n"
                    f"instances_path = {tmp_path / 'instances'}\nstate_dir = {tmp_path / 'state'}\n"
                    "[libvirt]\nvirt_type = test\n[oslo_messaging_rabbit]\nheartbeet = 5\n"
                    "[glance]\napi_servers = http://glance:9292\n", encoding="utf-8")
    return path


def _run(args: list[str], **extra: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=60, cwd=CHECKOUT,
                          env=worker_env(), **extra)  # type: ignore[call-overload]


def _json_lines(text: str) -> list[dict[str, object]]:
    """Every line parsed as JSON: a line that is not fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_check_piped_logs_json_names_unknowns_and_masks_the_password(conf: Path) -> None:
    """check: FAIL broker with masked URLs on stdout; stderr JSON lines naming file and section."""
    done = _run(["check", "--config-file", str(conf)])

    assert 1 == done.returncode
    assert PASSWORD not in done.stdout + done.stderr
    [broker] = [line for line in done.stdout.splitlines() if line.startswith("FAIL broker")]
    assert "amqp://nova:***@127.0.0.1:1//;amqp://nova:***@127.0.0.1:9//" in broker
    warned = {(e["event"], e["section"], e.get("option")) for e in _json_lines(done.stderr)
              if str(e["event"]).startswith("config_")}
    assert {("config_option_unknown", "oslo_messaging_rabbit", "heartbeet"),
            ("config_section_unknown", "glance", None)} == warned
    assert all(e["file"] == str(conf) for e in _json_lines(done.stderr)
               if str(e["event"]).startswith("config_"))


def test_strict_config_refuses_the_same_file_in_one_line(conf: Path) -> None:
    """--strict-config: exit 2, one line naming each unknown, nothing tried."""
    done = _run(["check", "--config", str(conf), "--strict-config"])

    assert 2 == done.returncode
    assert "" == done.stdout
    [line] = done.stderr.splitlines()
    assert line.startswith(f"compute-worker: error: config file {conf}: unknown option "
                           "heartbeet in [oslo_messaging_rabbit] (did you mean heartbeat?)")
    assert "unknown section [glance]" in line


def test_check_on_a_terminal_logs_readable_console_lines(conf: Path) -> None:
    """stderr a pty: the warnings are structlog's coloured console lines, not JSON."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(CLI + ["check", "--config-file", str(conf)], cwd=CHECKOUT,
                                env=worker_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert 1 == proc.wait(60)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = seen.decode("utf-8", "replace")
    [line] = [line for line in text.splitlines() if "config_option_unknown" in line]
    assert "\x1b[" in line  # coloured
    assert "warning" in line and "heartbeet" in line
    assert not any(line.lstrip().startswith("{") for line in text.splitlines())


def test_run_logs_each_unreachable_node_masked_and_only_json(conf: Path) -> None:
    """run with the broker down: node_unreachable lines name both nodes, no password anywhere."""
    proc = subprocess.Popen(CLI + ["run", "--config-file", str(conf)], cwd=CHECKOUT,
                            env=worker_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        urls: set[object] = set()
        while time.monotonic() < deadline and len(urls) < 2:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            record = json.loads(line)  # every line is JSON
            if str(record["event"]).endswith("_node_unreachable"):
                urls.add(record["url"])
    finally:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    assert {"amqp://nova:***@127.0.0.1:1//", "amqp://nova:***@127.0.0.1:9//"} == urls
    assert PASSWORD not in "".join(lines) + out + err


def test_cast_with_the_broker_down_prints_no_password(conf: Path) -> None:
    """cast fails (exit non-zero) and neither stdout nor stderr carries the password."""
    done = _run(["cast", "logs-test", "pause_instance", "--config-file", str(conf),
                 "--args", '{"instance": {"uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f"}}'])

    assert 0 != done.returncode
    assert PASSWORD not in done.stdout + done.stderr


def test_under_journald_check_s_warnings_carry_priority_4(conf: Path) -> None:
    """JOURNAL_STREAM naming the stderr pipe: each line is <N> then the JSON object."""
    read_end, write_end = os.pipe()
    found = os.fstat(write_end)
    env = {**worker_env(), "JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"}
    try:
        proc = subprocess.Popen(CLI + ["check", "--config-file", str(conf)], cwd=CHECKOUT,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=write_end)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, encoding="utf-8") as stream:
            read_end = -1
            lines = stream.read().splitlines()
        proc.wait(60)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert lines
    warnings = [line for line in lines if "config_" in line]
    assert 2 == len(warnings)
    assert all(line.startswith("<4>{") for line in warnings), warnings
    assert all(json.loads(line[3:])["level"] for line in lines)


def test_a_kombu_warning_reaches_stderr_as_our_json() -> None:
    """kombu's own logger.warning, after the CLI's logs.setup, is a JSON line, not WARNING:kombu."""
    code = ("from worker import logs; logs.setup('info')\n"
            "import kombu\n"
            f"kombu.Connection('amqp://nova:{PASSWORD}@:5672//').as_uri()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=CHECKOUT, env=worker_env())

    [record] = _json_lines(done.stderr)
    assert ("warning", "kombu.connection") == (record["level"], record["logger"])
    assert str(record["event"]).startswith("No hostname was supplied")
    assert "WARNING:" not in done.stderr
