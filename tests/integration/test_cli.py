"""The compute-worker command as a user runs it: run, check, cast, call, events, SIGTERM."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kombu import Connection

from tests.brokers import wait_bound
from tests.helpers import CHECKOUT, WORKER_BIN, check_event, worker_env
from tests.taps import EventTap, went_down
from worker.amqp.client import RpcClient
from worker.amqp.topology import control_exchange, host_queue
from worker.config import Config
from worker.service import Service

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


def test_check_reports_each_problem_on_one_line_with_its_fix(cfg: Config, tmp_path: Path) -> None:
    """check says FAIL for an unreachable broker and an unwritable directory, each with a fix."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _run(["check", "--transport-url", "amqp://guest:guest@127.0.0.1:1//",
                   "--virt-type", "test", "--instances-path", str(blocker / "x"),
                   "--images-path", str(tmp_path / "images"),
                   "--state-dir", str(tmp_path / "state")])
    assert 1 == result.returncode
    lines = result.stdout.splitlines()
    checks = [line for line in lines if not line.startswith("     fix: ")]
    assert ["FAIL", "ok", "FAIL", "ok", "ok"] == [line.split()[0] for line in checks]
    assert ["broker", "libvirt", "instances_path", "images_path", "state_dir"] == [
        line.split()[1].rstrip(":") for line in checks]
    fixes = {lines[i - 1].split()[1].rstrip(":"): line for i, line in enumerate(lines)
             if line.startswith("     fix: ")}
    assert ["broker", "instances_path"] == sorted(fixes)
    assert "start RabbitMQ" in fixes["broker"]
    assert "set instances_path" in fixes["instances_path"]
    assert "guest:guest" not in result.stdout + result.stderr  # the password is masked


def test_check_names_a_durable_clash_and_a_second_worker_with_their_fixes(
        cfg: Config, worker: Service) -> None:
    """With a worker on the host queue, check fails naming it; durable flags that clash too."""
    flags = ["--host", cfg.host, *_client_flags(cfg), "--virt-type", "test",
             "--instances-path", cfg.instances_path, "--images-path", cfg.images_path,
             "--state-dir", cfg.state_dir]

    taken = _run(["check", *flags])
    clash = _run(["check", *flags, "--amqp-durable-queues"])

    assert 1 == taken.returncode
    assert (f"FAIL declarations: another worker already consumes {cfg.topic}.{cfg.host}\n"
            "     fix: stop it, or give this worker a host of its own (host option)\n"
            ) in taken.stdout
    assert 1 == clash.returncode
    assert (f"FAIL declarations: the broker holds exchange '{cfg.control_exchange}' with "
            "durable=false, declared here with durable=true\n") in clash.stdout, clash.stdout
    assert "set amqp_durable_queues = false" in clash.stdout


def test_check_tries_every_broker_node_and_names_the_one_that_answers(cfg: Config) -> None:
    """With the first two nodes down, check reaches the third and says which it is on."""
    url = f"amqp://guest:guest@127.0.0.1:1//;amqp://guest:guest@127.0.0.1:2//;{cfg.transport_url}"
    result = _run(["check", "--transport-url", url, "--virt-type", "test",
                   "--instances-path", cfg.instances_path, "--state-dir", cfg.state_dir])

    broker = result.stdout.splitlines()[0]
    assert broker.startswith("ok   broker: amqp://guest:***@127.0.0.1"), result.stdout
    assert ":1//" not in broker and ":2//" not in broker


def test_check_on_an_oslo_cluster_url_says_which_nodes_answer(cfg: Config) -> None:
    """oslo's form with one node down: the node that answers, a warning naming the one that
    does not (the worker rides that out), and exit 0; with every node up, one cluster."""
    port = urlsplit(cfg.transport_url).port or 5672
    flags = ["--virt-type", "test", "--instances-path", cfg.instances_path,
             "--state-dir", cfg.state_dir]
    one_down = _run(["check", "--transport-url",
                     f"rabbit://guest:guest@127.0.0.1:{port},guest:guest@127.0.0.1:1/", *flags])
    both_up = _run(["check", "--transport-url",
                    f"rabbit://guest:guest@127.0.0.1:{port},guest:guest@localhost:{port}/",
                    *flags])

    assert 0 == one_down.returncode, one_down.stdout
    assert "WARN broker nodes: 1 of 2 answer; down: 127.0.0.1:1 (" in one_down.stdout
    assert 0 == both_up.returncode, both_up.stdout
    assert re.search(r"^ok   broker nodes: 2 of 2 answer, all of cluster \S+$", both_up.stdout,
                     flags=re.M), both_up.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--max-concurrent-ops", "0"], "max_concurrent_ops"),
    (["run", "--heartbeat", "soon"], "heartbeat"),
    (["run", "--rabbit-quorum-delivery-limit", "-1"], "rabbit_quorum_delivery_limit"),
    (["run", "--config", "/nonexistent.conf"], "/nonexistent.conf"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    """A wrong option value is one line on stderr and exit status 2, not a traceback."""
    result = subprocess.run(CLI + args, capture_output=True, text=True, timeout=30,
                            env=worker_env())
    assert 2 == result.returncode
    assert 1 == len(result.stderr.strip().splitlines())
    assert message in result.stderr


# --- the operator's commands against a worker on the test driver ----------------------

def _instance(uid: str) -> list[str]:
    return ["--arg", f"instance.uuid={uid}"]


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_cast_wait_follows_its_request_to_the_end_event(
        cfg: Config, worker: Service, domains: Callable[[int], list[str]]) -> None:
    """cast --wait prints its request's events and exits 0 at the end event."""
    (uid,) = domains(1)

    done = _run(["cast", cfg.host, "pause_instance", *_instance(uid), "--wait",
                 "--timeout", "20", *_client_flags(cfg)])

    assert 0 == done.returncode, done.stderr[-2000:]
    sent, *events = _json_lines(done.stdout)
    assert "pause_instance" == sent["cast"]
    assert ["instance.pause.start", "instance.pause.end"] == [e["event_type"] for e in events]
    assert {sent["request_id"]} == {e["payload"]["nova_object.data"]["request_id"]
                                    for e in events}
    assert "paused" == events[-1]["payload"]["nova_object.data"]["power_state"]


def test_cast_wait_exits_1_with_the_fault_of_an_error_event(
        cfg: Config, worker: Service) -> None:
    """A verb that fails ends cast --wait with status 1 and its fault on stderr."""
    missing = "0" * 8 + "-0000-4000-8000-" + "0" * 12

    done = _run(["cast", cfg.host, "pause_instance", *_instance(missing), "--wait",
                 "--timeout", "20", "--format", "table", *_client_flags(cfg)])

    assert 1 == done.returncode, done.stdout + done.stderr[-2000:]
    assert (f"compute-worker: instance.pause.error: InstanceNotFound: Instance {missing} "
            "could not be found.") == done.stderr.strip().splitlines()[-1]
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert ["TIME", "HOST", "EVENT"] == done.stdout.splitlines()[1].split()[:3]
    assert "instance.pause.error" == rows[-1][2]


def test_cast_and_call_to_a_host_nobody_consumes_exit_1_at_once(cfg: Config) -> None:
    """No queue for the host: the broker would drop the message; the CLI says so, exit 1."""
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    for verb in ("cast", "call"):
        started = time.monotonic()
        done = _run([verb, nobody, "pause_instance", *_instance(TEST_DOMAIN),
                     *_client_flags(cfg)])

        assert 1 == done.returncode, done.stdout + done.stderr
        assert done.stderr.startswith(f"compute-worker: NoConsumer: no worker consumes "
                                      f"compute.{nobody} "), done.stderr
        assert 1 == len(done.stderr.strip().splitlines())
        assert time.monotonic() - started < 15  # not the call's 60 s timeout


def test_cast_to_a_queue_without_a_consumer_is_kept_and_says_so(cfg: Config) -> None:
    """A host queue whose worker is away keeps the cast: exit 0, and a note on stderr."""
    with Connection(cfg.transport_url) as conn:
        host_queue(cfg)(conn.channel()).declare()

    done = _run(["cast", cfg.host, "pause_instance", *_instance(TEST_DOMAIN),
                 *_client_flags(cfg)])

    assert 0 == done.returncode, done.stderr
    assert (f"compute-worker: note: no worker consumes {cfg.topic}.{cfg.host} now; the cast "
            "waits in its queue until one starts") == done.stderr.strip()


@pytest.mark.parametrize("command", [
    ["cast", "h", "pause_instance"], ["call", "h", "list_instances"], ["events"],
    ["top", "--host", "h"]])
def test_a_broker_that_is_down_is_one_line_and_exit_1(command: list[str]) -> None:
    """No broker at the URL: one line saying so and what to do, no traceback, no password."""
    done = _run([*command, "--transport-url", "amqp://nova:s3cret@127.0.0.1:1//"])

    assert 1 == done.returncode
    assert ["compute-worker: BrokerError: cannot reach the broker at "
            "amqp://nova:***@127.0.0.1:1// (OperationalError: [Errno 111] Connection refused): "
            "start RabbitMQ there (systemctl start rabbitmq-server), or point transport_url at "
            "a broker that runs"] == done.stderr.strip().splitlines()[-1:]
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr + done.stdout


@pytest.mark.parametrize("command", [["cast", "HOST", "pause_instance"], ["events"]])
def test_a_durable_mismatch_is_one_line_naming_the_flag(cfg: Config, command: list[str]) -> None:
    """The exchange is non-durable on the broker: --amqp-durable-queues is told what to pass."""
    with Connection(cfg.transport_url) as conn:
        control_exchange(cfg)(conn.channel()).declare()
    command = [cfg.host if word == "HOST" else word for word in command]

    done = _run([*command, *_client_flags(cfg), "--amqp-durable-queues", "--timeout", "5"])

    assert 1 == done.returncode
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"compute-worker: BrokerError: the broker holds exchange "
                           f"'{cfg.control_exchange}' with durable=false, declared here with "
                           "durable=true: set amqp_durable_queues = false"), done.stderr
    assert "--no-amqp-durable-queues" in last
    assert "Traceback" not in done.stderr


def test_cast_signs_with_the_key_a_worker_requires(
        make_config: Callable[..., Config], domains: Callable[[int], list[str]],
        tmp_path: Path) -> None:
    """A worker with require_signature runs the CLI's signed cast and refuses an unsigned one."""
    key = tmp_path / "signing.key"
    key.write_text("a shared key of more than sixteen bytes\n")
    cfg = make_config(signing_key_file=str(key), require_signature=True)
    (uid,) = domains(1)
    service = Service(cfg, retry_sleep=lambda _s: None)
    service.start()
    try:
        unsigned = _run(["cast", cfg.host, "pause_instance", *_instance(uid), "--wait",
                         "--timeout", "20", *_client_flags(cfg)])
        signed = _run(["cast", cfg.host, "pause_instance", *_instance(uid), "--wait",
                       "--timeout", "20", "--signing-key-file", str(key), *_client_flags(cfg)])
    finally:
        service.stop(grace=5)

    assert 1 == unsigned.returncode, unsigned.stdout + unsigned.stderr
    assert ("compute-worker: rpc_message.reject.error: BadSignature: message is not signed"
            == unsigned.stderr.strip().splitlines()[-1])
    assert 0 == signed.returncode, signed.stdout + signed.stderr
    assert "instance.pause.end" == _json_lines(signed.stdout)[-1]["event_type"]


def test_events_filters_and_prints_a_table_when_asked(
        cfg: Config, worker: Service, rpc: RpcClient,
        domains: Callable[[int], list[str]]) -> None:
    """--instance and --type keep one instance's pause events; --format table prints rows."""
    uid, other = domains(2)
    events = subprocess.Popen(CLI + ["events", "--format", "table", "--instance", uid[:8],
                                     "--type", "instance.pause.*", "--timeout", "30",
                                     *_client_flags(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert events.stdout is not None
        heading = events.stdout.readline().split()  # printed once its queue is bound
        rpc.cast(cfg.host, "pause_instance", {"instance": {"uuid": other}})
        rpc.cast(cfg.host, "pause_instance", {"instance": {"uuid": uid}})
        rows = []
        for line in events.stdout:
            rows.append(line.split())
            if "instance.pause.end" in rows[-1]:
                break
    finally:
        events.kill()
        events.communicate(timeout=30)

    assert ["TIME", "HOST", "EVENT", "INSTANCE", "NAME", "STATE", "POWER", "DETAIL"] == heading
    assert [[cfg.host, "instance.pause.start", uid[:8]],
            [cfg.host, "instance.pause.end", uid[:8]]] == [r[1:4] for r in rows]
    assert "paused" == rows[-1][heading.index("POWER")]


class Tmux:
    """A tmux server of the test's own, one window running a command; its screen as text."""

    def __init__(self, command: list[str], name: str) -> None:
        self._base = ["tmux", "-L", name]
        env = worker_env()
        wrapped = ["env", f"PYTHONPATH={env['PYTHONPATH']}", "TERM=xterm-256color", *command]
        subprocess.run([*self._base, "-f", "/dev/null", "new-session", "-d", "-s", "top",
                        "-x", "160", "-y", "45", "-c", str(CHECKOUT), shlex.join(wrapped)],
                       check=True, env=env, timeout=10)

    def screen(self) -> str:
        """What the window shows now ("" once it is gone)."""
        done = subprocess.run([*self._base, "capture-pane", "-p", "-t", "top"],
                              capture_output=True, text=True, timeout=10)
        return done.stdout

    def wait(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        """The screen once predicate(screen) holds; AssertionError with the screen if not."""
        deadline = time.monotonic() + timeout
        while not predicate(text := self.screen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never matched:\n{text}")
            time.sleep(0.1)
        return text

    def keys(self, keys: str) -> None:
        """Type keys into the window."""
        subprocess.run([*self._base, "send-keys", "-t", "top", keys], check=True, timeout=10)

    def alive(self) -> bool:
        """The window's command still runs."""
        return 0 == subprocess.run([*self._base, "has-session", "-t", "top"],
                                   capture_output=True, timeout=10).returncode

    def close(self) -> None:
        """Kill the server and everything in it."""
        subprocess.run([*self._base, "kill-server"], capture_output=True, timeout=10)


def _row(screen: str, uid: str) -> list[str]:
    return next((line.split() for line in screen.splitlines() if uid[:8] in line), [])


def test_top_shows_the_hosts_instances_and_follows_their_events(
        cfg: Config, worker: Service, rpc: RpcClient, tap: EventTap,
        domains: Callable[[int], list[str]]) -> None:
    """top lists the host's instances, shows a pause and a stop as they happen, and quits on q."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: scripts/services.sh installs it")
    uid, other = domains(2)
    screen = Tmux([*CLI, "top", "--host", cfg.host, *_client_flags(cfg)],
                  f"cw-{uuid.uuid4().hex[:8]}")
    try:
        listed = screen.wait(lambda s: bool(_row(s, uid)) and bool(_row(s, other)))
        assert [cfg.host, uid[:8]] == _row(listed, uid)[:2]
        assert "running" in _row(listed, uid), listed

        rpc.cast(cfg.host, "pause_instance", {"instance": {"uuid": uid}})
        rpc.cast(cfg.host, "stop_instance", {"instance": {"uuid": other},
                                             "clean_shutdown": False})
        tap.wait_type(uid, "instance.pause.end")
        tap.wait_type(other, "instance.power_off.end")
        after = screen.wait(lambda s: "pause.end" in _row(s, uid)
                            and "power_off.end" in _row(s, other))

        assert {"paused"} <= set(_row(after, uid)), after
        assert {"stopped", "shutdown"} <= set(_row(after, other)), after
        assert f"compute-worker top: {cfg.host}" in after
        screen.keys("q")
        deadline = time.monotonic() + 10
        while screen.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not screen.alive(), screen.screen()
    finally:
        screen.close()


def test_top_all_shows_each_host_of_the_fleet_as_it_comes_and_goes(
        make_config: Callable[..., Config], tmp_path: Path,
        domains: Callable[[int], list[str]]) -> None:
    """top --all lists a host once it is heard from, with its instances, and marks it down."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: scripts/services.sh installs it")
    (uid,) = domains(1)
    first = make_config()
    second = make_config(host=f"{first.host}-b", state_dir=str(tmp_path / "state-b"))
    screen = Tmux([*CLI, "top", "--all", *_client_flags(first)], f"cw-{uuid.uuid4().hex[:8]}")
    services = []
    try:
        screen.wait(lambda s: "compute-worker top: every host" in s)
        for cfg in (first, second):
            services.append(Service(cfg, retry_sleep=lambda _s: None))
            services[-1].start()

        def hosts(text: str) -> dict[str, list[str]]:
            # The hosts table's rows: HOST SERVICE SEEN INSTANCES (instance rows: HOST UUID ...).
            return {words[0]: words[1:] for words in map(str.split, text.splitlines())
                    if len(words) > 1 and words[1] in ("up", "down:", "?")}

        both = screen.wait(lambda s: {first.host, second.host} <= set(hosts(s))
                           and all(h[0] == "up" for h in hosts(s).values())
                           and bool(_row(s, uid)))
        assert "running" in _row(both, uid), both
        services.pop().stop(grace=5)
        gone = screen.wait(lambda s: hosts(s).get(second.host, [""])[0] == "down:")

        assert ["down:", "compute-worker", "stopped"] == hosts(gone)[second.host][:3], gone
        assert "up" == hosts(gone)[first.host][0]
    finally:
        screen.close()
        for service in services:
            service.stop(grace=5)
