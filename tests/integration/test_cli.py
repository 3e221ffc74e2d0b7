"""The compute-worker command as a user runs it: run, check, cast, call, events, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers import wait_bound
from tests.helpers import WORKER_BIN, check_event, worker_env
from tests.taps import EventTap, went_down
from worker.amqp.topology import control_exchange
from worker.config import Config

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "worker.cli"]
TEST_DOMAIN = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # test:///default's own domain


def _client_flags(cfg: Config) -> list[str]:
    return ["--transport-url", cfg.transport_url, "--control-exchange", cfg.control_exchange,
            "--notification-topic", cfg.notifications.notification_topic]


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def config_file(cfg: Config, tmp_path: Path) -> Path:
    """An INI file with cfg's values, as an operator would write it."""
    path = tmp_path / "compute-worker.conf"
    path.write_text(
        "[compute_worker]\n"
        f"host = {cfg.host}\ntransport_url = {cfg.transport_url}\n"
        f"control_exchange = {cfg.control_exchange}\n"
        f"notification_topic = {cfg.notifications.notification_topic}\nvirt_type = test\n"
        f"instances_path = {cfg.instances_path}\nstate_dir = {cfg.state_dir}\n")
    return path


def test_run_serves_calls_and_stops_cleanly_on_sigterm(
        cfg: Config, tap: EventTap, config_file: Path) -> None:
    """A worker started from an INI file answers cast and call, and exits 0 on SIGTERM."""
    proc = subprocess.Popen(CLI + ["run", "--config", str(config_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tap.wait_for(lambda evs: any(e["event_type"] == "service.update" for e in evs))
        cast = _run(["cast", cfg.host, "pause_instance", "--args",
                     json.dumps({"instance": {"uuid": TEST_DOMAIN}}), *_client_flags(cfg)])
        assert 0 == cast.returncode, cast.stderr
        tap.wait_type(TEST_DOMAIN, "instance.pause.end")
        call = _run(["call", cfg.host, "get_instance_info", "--args",
                     json.dumps({"instance": {"uuid": TEST_DOMAIN}}), *_client_flags(cfg)])
        assert 0 == call.returncode, call.stderr
        assert "paused" == json.loads(call.stdout)["power_state"]
        missing = _run(["call", cfg.host, "get_instance_info", "--args",
                        json.dumps({"instance": {"uuid": "0" * 8 + "-0000-4000-8000-" + "0" * 12}}),
                        *_client_flags(cfg)])
        assert 1 == missing.returncode
        assert "InstanceNotFound" == json.loads(missing.stdout)["failure"]["class"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert 0 == proc.returncode, stderr[-2000:]
    statuses = tap.wait_for(went_down)
    reasons = [e["payload"]["nova_object.data"]["disabled_reason"] for e in statuses
               if e["event_type"] == "service.update"]
    # Up at start (and in every heartbeat since), then the last word: stopped.
    assert ({None}, "compute-worker stopped") == (set(reasons[:-1]), reasons[-1]), reasons
    for event in statuses:
        check_event(event)
    assert any(json.loads(line).get("event") == "worker_stopped"
               for line in stderr.splitlines() if line.startswith("{"))


def test_a_second_worker_for_the_same_host_fails_at_start_naming_the_host(
        cfg: Config, tap: EventTap, config_file: Path, tmp_path: Path) -> None:
    """Two workers with one --host would split its casts: the second exits 1 with one line."""
    first = subprocess.Popen(CLI + ["run", "--config", str(config_file)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tap.wait_for(lambda evs: any(e["event_type"] == "service.update" for e in evs))
        second = _run(["run", "--config", str(config_file), "--state-dir",
                       str(tmp_path / "second-state")], timeout=60)

        assert 1 == second.returncode
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("compute-worker: HostQueueTaken: another worker already consumes "
                               f"{cfg.topic}.{cfg.host}"), second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        # The first is untouched: it still serves, and nobody announced the host down.
        cast = _run(["cast", cfg.host, "pause_instance", "--args",
                     json.dumps({"instance": {"uuid": TEST_DOMAIN}}), *_client_flags(cfg)])
        assert 0 == cast.returncode, cast.stderr
        tap.wait_type(TEST_DOMAIN, "instance.pause.end")
        assert {False} == {e["payload"]["nova_object.data"]["disabled"] for e in tap.events
                           if e["event_type"] == "service.update"}
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)


def test_events_command_prints_json_lines(cfg: Config, config_file: Path) -> None:
    """`compute-worker events` prints each event as one JSON line."""
    events = subprocess.Popen(CLI + ["events", "--timeout", "30", *_client_flags(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    lines: list[dict[str, object]] = []
    try:
        # Its queue is bound before the worker starts, so it sees the worker's first event.
        wait_bound(cfg.transport_url, control_exchange(cfg),
                   f"{cfg.notifications.notification_topic}.probe")
        worker = subprocess.Popen(CLI + ["run", "--config", str(config_file)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert events.stdout is not None
        for line in events.stdout:  # ends at the latest when --timeout does
            lines.append(json.loads(line))
            if lines[-1]["event_type"] == "service.update":
                break
    finally:
        events.kill()
        events.communicate(timeout=30)
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    types = [e["event_type"] for e in lines]
    assert ("probe", "service.update") == (types[0], types[-1]), types


#: The actions of worker/cli/demo.py's script, in the order each instance gets them.
DEMO_ACTIONS = ["create", "pause", "unpause", "suspend", "resume", "reboot", "power_off",
                "power_on", "pause", "delete"]


def test_demo_ends_every_verb_of_both_instances_and_exits_0() -> None:
    """`compute-worker demo`, the README's first command, prints every end event and 0 failed."""
    done = subprocess.run([WORKER_BIN, "demo"], capture_output=True, text=True, timeout=60,
                          env=worker_env())
    assert 0 == done.returncode, done.stdout + done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    ends = {name: [row[2] for row in rows
                   if len(row) > 2 and row[1] == name and row[2].endswith(".end")]
            for name in ("web-1", "db-1")}
    expected = [f"instance.{action}.end" for action in DEMO_ACTIONS]
    assert {"web-1": expected, "db-1": expected} == ends, done.stdout
    assert f"{2 * len(DEMO_ACTIONS)} verbs, 0 failed," in done.stdout.splitlines()[-1], done.stdout


def test_check_reports_each_problem_on_one_line(cfg: Config, tmp_path: Path) -> None:
    """check says FAIL for an unreachable broker and an unwritable directory, and exits 1."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _run(["check", "--transport-url", "amqp://guest:guest@127.0.0.1:1//",
                   "--virt-type", "test", "--instances-path", str(blocker / "x"),
                   "--state-dir", str(tmp_path / "state")])
    assert 1 == result.returncode
    lines = result.stdout.splitlines()
    assert ["FAIL", "ok", "FAIL", "ok"] == [line.split()[0] for line in lines]
    assert ["broker", "libvirt", "instances_path", "state_dir"] == [
        line.split()[1].rstrip(":") for line in lines]
    assert "guest:guest" not in result.stdout + result.stderr  # the password is masked


def test_check_tries_every_broker_node_and_names_the_one_that_answers(cfg: Config) -> None:
    """With the first two nodes down, check reaches the third and says which it is on."""
    url = f"amqp://guest:guest@127.0.0.1:1//;amqp://guest:guest@127.0.0.1:2//;{cfg.transport_url}"
    result = _run(["check", "--transport-url", url, "--virt-type", "test",
                   "--instances-path", cfg.instances_path, "--state-dir", cfg.state_dir])

    broker = result.stdout.splitlines()[0]
    assert broker.startswith("ok   broker: amqp://guest:***@127.0.0.1"), result.stdout
    assert ":1//" not in broker and ":2//" not in broker


@pytest.mark.parametrize("args, message", [
    (["run", "--max-concurrent-ops", "0"], "max_concurrent_ops"),
    (["run", "--heartbeat", "soon"], "heartbeat"),
    (["run", "--queue-type", "quorum"], "quorum queues are durable"),
    (["run", "--config", "/nonexistent.conf"], "/nonexistent.conf"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    """A wrong option value is one line on stderr and exit status 2, not a traceback."""
    result = subprocess.run(CLI + args, capture_output=True, text=True, timeout=30,
                            env=worker_env())
    assert 2 == result.returncode
    assert 1 == len(result.stderr.strip().splitlines())
    assert message in result.stderr
