"""Fault-injection tools, all real parts.

A private RabbitMQ node that can be restarted, the worker as a subprocess (``compute-worker
run``) that can be killed, a caster that retries every cast until the broker confirms it, an
event tap on a queue of its own that survives broker restarts, a libvirtd restart, tiny QEMU
domains, the checks every scenario shares, and the figures printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from tests.brokers import (
    cmdline,
    pid_alive,
    tail,
    wait_until,
)
from tests.domains import LIBVIRTD_SCRIPT, QEMU_URI, Vm, connection, remove_domain
from tests.helpers import WORKER_BIN, check_event, worker_env
from tests.taps import Event, Gathered, drain_until
from worker import config as config_mod
from worker.codec import envelope
from worker.codec.notifications import message_id
from worker.config import Config

SYSTEM_BROKER_URL = os.environ.get("COMPUTE_WORKER_TEST_BROKER",
                                   "amqp://guest:guest@127.0.0.1:5672//")
NAME_PREFIX = "cw-fault-"


# --- the worker as a subprocess ----------------------------------------------------------


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON records of a worker log, and the lines that were not JSON."""
    records: list[dict[str, Any]] = []
    other: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return records, other
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            other.append(line)
    return records, other


class WorkerProcess:
    """``compute-worker run`` as a child process; one log file per life."""

    def __init__(self, argv: list[str], log_dir: Path, prefix: list[str] | None = None) -> None:
        """prefix: argv run before the worker's (nsenter into a second host's namespace)."""
        self.argv = argv
        self.prefix = prefix or []
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.kills = 0
        self.exit_codes: list[int | None] = []
        self.started_at = 0.0

    def start(self, timeout: float = 30.0) -> None:
        """Start a new life and wait until it consumes."""
        assert self.proc is None or self.proc.poll() is not None, "worker already running"
        path = self.log_dir / f"worker-life{len(self.logs) + 1}.log"
        self.logs.append(path)
        with open(path, "wb") as out:
            self.proc = subprocess.Popen([*self.prefix, WORKER_BIN, "run", *self.argv],
                                         stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=worker_env(),
                                         start_new_session=True)

        def consuming() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode} while starting; "
                                     f"log {path}:\n{tail(path)}")
            return any(r.get("event") == "consuming" for r in read_log(path)[0])

        try:
            wait_until(consuming, timeout, f"the worker to consume (log {path})", 0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{tail(path)}") from None
        self.started_at = time.monotonic()

    @property
    def uptime(self) -> float:
        """Seconds since the running life started consuming."""
        return time.monotonic() - self.started_at

    @property
    def pid(self) -> int | None:
        """pid of the running life."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill(self) -> None:
        """SIGKILL the running life and reap it."""
        assert self.proc is not None and self.proc.poll() is None, "worker not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.exit_codes.append(self.proc.wait(15))
        self.kills += 1

    def terminate(self, timeout: float = 45.0) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)
            code = None
        self.exit_codes.append(code)
        return code

    def close(self) -> None:
        """Kill whatever life still runs (cleanup path)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)

    def records(self, life: int | None = None) -> list[dict[str, Any]]:
        """JSON log records of one life (0-based) or of all lives in order."""
        paths = self.logs if life is None else [self.logs[life]]
        out: list[dict[str, Any]] = []
        for path in paths:
            out.extend(read_log(path)[0])
        return out

    def non_json(self) -> list[str]:
        """Log lines of every life that were not JSON (tracebacks printed raw and the like)."""
        out: list[str] = []
        for path in self.logs:
            out.extend(read_log(path)[1])
        return out


def config_values(*, url: str, tmp: Path, tag: str, durable: bool, quorum: bool,
                  **extra: Any) -> dict[str, Any]:
    """Options of one scenario's worker: private names and directories."""
    values: dict[str, Any] = {
        "host": f"fault-{tag}",
        "transport_url": url,
        "control_exchange": f"faults_{tag}",
        "notification_topic": f"faults_notifications_{tag}",
        "virt_type": "qemu",
        "instances_path": str(tmp / "instances"),
        "state_dir": str(tmp / "state"),
        "heartbeat": 10,
        "confirm_timeout": 10,
        "amqp_durable_queues": durable,
        "rabbit_quorum_queue": quorum,
        # Past it a message is dropped: none of ours may come back that often.
        "rabbit_quorum_delivery_limit": 20 if quorum else 0,
        "log_level": "info",
        # Heartbeats (every 10 s by default) would count as the host saying it is back
        # after a fault; the heartbeat has tests of its own.
        "report_interval": 3600,
    }
    values.update(extra)
    return values


def worker_argv(values: dict[str, Any]) -> list[str]:
    """Flags for ``compute-worker run`` from option values."""
    argv: list[str] = []
    for name, value in values.items():
        if name == "amqp_durable_queues":
            argv.append("--durable-queues" if value else "--no-durable-queues")
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv + ["--grace", "15"]


def load_config(values: dict[str, Any]) -> Config:
    """The same options as a Config (for topology names), ignoring the environment."""
    return config_mod.load(None, values, environ={})


# --- casting with confirms ---------------------------------------------------------------


@dataclass(frozen=True)
class Cast:
    """One planned cast: which domain, which verb, and the ids that identify its events."""

    index: int
    vm: Vm
    method: str
    action: str
    unique_id: str
    request_id: str
    #: The worker's publisher_id: part of every event's message_id (one per host).
    publisher_id: str

    def event_id(self, event_type: str) -> str:
        """message_id an event of this cast must carry: uuid5 of publisher, _unique_id, type."""
        return message_id(self.unique_id, event_type, self.publisher_id)

    @property
    def end_id(self) -> str:
        """message_id its end event must carry."""
        return self.event_id(f"instance.{self.action}.end")

    @property
    def error_id(self) -> str:
        """message_id its error event would carry."""
        return self.event_id(f"instance.{self.action}.error")

    @property
    def target(self) -> str:
        """The power state this cast asks for."""
        return "paused" if self.action == "pause" else "running"

    def body(self) -> bytes:
        """The oslo 2.0 envelope, as an oslo RPCClient would send it."""
        return envelope.wrap({
            "method": self.method, "version": "6.0", "_unique_id": self.unique_id,
            "args": self.vm.args,
            "_context_request_id": self.request_id,
        })


def plan_casts(vms: list[Vm], count: int, publisher_id: str) -> list[Cast]:
    """count casts, round robin over vms; each domain alternates pause, unpause, pause..."""
    plan = []
    for index in range(count):
        vm = vms[index % len(vms)]
        pause = (index // len(vms)) % 2 == 0
        plan.append(Cast(index, vm, "pause_instance" if pause else "unpause_instance",
                         "pause" if pause else "unpause", uuid.uuid4().hex,
                         f"req-{uuid.uuid4()}", publisher_id))
    return plan


def last_targets(plan: list[Cast]) -> dict[str, str]:
    """Domain uuid -> the power state its last cast asks for."""
    return {cast.vm.uuid: cast.target for cast in plan}


class Caster:
    """Publishes casts with publisher confirms; retries each until confirmed (or time runs out)."""

    def __init__(self, url: str, exchange: str, routing_key: str, *, durable: bool) -> None:
        self.url = url
        self.exchange = Exchange(exchange, type="topic", durable=durable, auto_delete=False)
        self.routing_key = routing_key
        self.retries = 0
        self.returned = 0
        self.errors: Counter[str] = Counter()
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._was_returned = False

    def _connect(self) -> Producer:
        conn = Connection(self.url, transport_options={"confirm_publish": True},
                          connect_timeout=2, heartbeat=0)
        try:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.channel()
            self.exchange(channel).declare()
            producer = Producer(channel, on_return=self._on_return)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.release()
            raise
        self._conn, self._producer = conn, producer
        return producer

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._was_returned = True

    def _drop(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()

    def send(self, body: bytes, timeout: float, stop: threading.Event) -> None:
        """Publish body until the broker confirms it routed; AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                producer = self._producer or self._connect()
                self._was_returned = False
                producer.publish(body, exchange=self.exchange.name, routing_key=self.routing_key,
                                 mandatory=True, delivery_mode=2, retry=False,
                                 content_type="application/json", content_encoding="utf-8",
                                 confirm_timeout=5)
                if not self._was_returned:
                    return
                self.returned += 1
                self.errors["returned unroutable"] += 1
            except Exception as exc:  # broker away, confirm lost, channel closed: retry
                self.errors[type(exc).__name__] += 1
                self._drop()
            self.retries += 1
            if stop.is_set():
                raise AssertionError("casting aborted")
            if time.monotonic() >= deadline:
                raise AssertionError(f"a cast was not confirmed within {timeout:.0f}s "
                                     f"(errors: {dict(self.errors)})")
            time.sleep(0.1)

    def close(self) -> None:
        """Close the connection."""
        self._drop()


class Load:
    """Sends a plan of casts at a steady rate on its own thread; counts confirmed casts."""

    def __init__(self, caster: Caster, plan: list[Cast], rate: float,
                 cast_timeout: float = 90.0) -> None:
        self.caster, self.plan, self.rate, self.cast_timeout = caster, plan, rate, cast_timeout
        self.sent = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.done = threading.Event()
        self._cond = threading.Condition()
        self.began = 0.0
        self.ended = 0.0
        self._thread = threading.Thread(target=self._run, name="faults-load", daemon=True)

    def start(self) -> None:
        """Start casting."""
        self.began = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        try:
            interval = 1.0 / self.rate
            due = time.monotonic()
            for cast in self.plan:
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                due = max(due + interval, time.monotonic() - 0.5)  # bounded catch-up burst
                if self.stop.is_set():
                    raise AssertionError("casting aborted")
                self.caster.send(cast.body(), self.cast_timeout, self.stop)
                with self._cond:
                    self.sent += 1
                    self._cond.notify_all()
        except BaseException as exc:  # reported by join(); a thread must not raise
            self.error = exc
        finally:
            self.ended = time.monotonic()
            self.done.set()
            with self._cond:
                self._cond.notify_all()

    def end_after(self, count: int) -> int:
        """Cast no more than count (and at least those confirmed or on their way); the plan
        itself is cut there, so every check on it sees only what was meant to be sent.

        The casting thread walks the plan list by index: cut in place, its loop ends at the
        new length. The number of casts the plan keeps.
        """
        with self._cond:
            keep = max(count, self.sent + 1)
            del self.plan[keep:]
            return len(self.plan)

    def wait_sent(self, count: int, timeout: float) -> None:
        """Block until count casts are confirmed (or casting failed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.sent < count and not self.done.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {self.sent} of {count} casts confirmed "
                                         f"after {timeout:.0f}s")
                self._cond.wait(left)
        if self.error is not None:
            raise AssertionError(f"casting failed: {self.error}")

    def join(self, timeout: float) -> None:
        """Wait for the last cast; raise what went wrong."""
        if not self.done.wait(timeout):
            self.stop.set()
            raise AssertionError(f"casting did not finish in {timeout:.0f}s ({self.sent} sent)")
        if self.error is not None:
            raise AssertionError(f"casting failed after {self.sent} casts: {self.error}")

    def abort(self) -> None:
        """Stop casting (cleanup path) and wait a little for the thread."""
        self.stop.set()
        self.done.wait(10)


# --- an event tap that survives broker restarts ------------------------------------------


@dataclass(frozen=True)
class Tapped:
    """One event as the tap received it."""

    event: Event
    redelivered: bool
    #: Wall-clock time it arrived (time.time()).
    at: float = 0.0


class ResilientTap(Gathered[Tapped]):
    """A queue of our own bound to ``<topic>.*``, consumed with reconnects; every event kept.

    Or, given queues, those (the worker's own event queues: on a cluster they are quorum
    queues, replicated, where a queue of the tap's own would live on one node and lose
    what was routed while that node was down); they are left in place on close().
    """

    def __init__(self, url: str, exchange: str, topic: str, *, durable: bool,
                 queues: list[Queue] | None = None) -> None:
        super().__init__()
        self.url = url
        ex = Exchange(exchange, type="topic", durable=durable, auto_delete=False)
        self._own = not queues
        self.queues = queues or [Queue(f"faults_tap_{uuid.uuid4().hex[:12]}", ex,
                                       routing_key=f"{topic}.*", durable=durable,
                                       auto_delete=False)]
        self.queue = self.queues[0]
        self.undecodable: list[bytes] = []
        self.reconnects = 0
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        # Declared and bound before the worker starts: no event can miss it.
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=3, timeout=5)
            channel = conn.channel()
            for queue in self.queues:
                queue(channel).declare()
        self._thread = threading.Thread(target=self._run, name="faults-tap", daemon=True)
        self._thread.start()
        assert self._ready.wait(15), "the event tap did not start consuming"

    def _received(self, message: Message) -> None:
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        try:
            event = envelope.unwrap(body, 1 << 30)
        except Exception:
            event = None
        if event is None:
            self.undecodable.append(body)
        else:
            self.add(Tapped(event, bool(message.delivery_info.get("redelivered")), time.time()))
        message.ack()

    def _serve(self) -> None:
        with Connection(self.url, heartbeat=10, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.channel()
            queues = [queue(channel) for queue in self.queues]
            for queue in queues:
                queue.declare()
            with Consumer(channel, queues, on_message=self._received, no_ack=False):
                self._ready.set()
                drain_until(conn, self._stop)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except Exception as exc:  # the broker went away: reconnect
                if self._stop.is_set():
                    return
                self.reconnects += 1
                self.errors[type(exc).__name__] += 1
                time.sleep(0.3)

    @property
    def records(self) -> list[Tapped]:
        """Every event so far, as received (the live list)."""
        return self.items

    def wait_for(self, predicate: Callable[[list[Tapped]], bool], timeout: float) -> bool:
        """Block until predicate(records) holds; False at the timeout."""
        return self.until(predicate, timeout) is not None

    @property
    def alive(self) -> bool:
        """True while the consuming thread runs."""
        return self._thread.is_alive()

    def close(self, delete: bool = True) -> None:
        """Stop consuming; delete the queue (a queue of its own only)."""
        self._stop.set()
        self._thread.join(10)
        if delete and self._own:
            with contextlib.suppress(Exception), Connection(self.url, connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
                conn.channel().queue_delete(self.queue.name)


# --- libvirt: tiny domains, their state, the daemon -------------------------------------


def _remove(vm: Vm, timeout: float = 60.0) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connection(QEMU_URI) as conn:
                remove_domain(conn, vm.uuid)
            return None
        except libvirt.libvirtError as exc:  # libvirtd restarting or the domain busy
            if time.monotonic() >= deadline:
                return f"{vm.name}: {exc}"
            time.sleep(0.5)


def remove_vms(vms: Iterable[Vm]) -> list[str]:
    """Destroy and undefine every domain, side by side; the failures."""
    vms = list(vms)
    if not vms:
        return []
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [f for f in pool.map(_remove, vms) if f]


@dataclass(frozen=True)
class VmState:
    """What libvirt says of a domain at the end of a scenario."""

    state: int
    reason: int
    job: int
    saved: bool

    @property
    def power(self) -> str:
        """running / paused / other."""
        return {libvirt.VIR_DOMAIN_RUNNING: "running",
                libvirt.VIR_DOMAIN_PAUSED: "paused"}.get(self.state, f"state{self.state}")

    @property
    def transitional(self) -> bool:
        """Caught between states: a job running, paused for anything but the user, no state."""
        if self.job != libvirt.VIR_DOMAIN_JOB_NONE:
            return True
        if self.state == libvirt.VIR_DOMAIN_PAUSED:
            return bool(self.reason != libvirt.VIR_DOMAIN_PAUSED_USER)
        return self.state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_SHUTOFF)


def vm_states(vms: Iterable[Vm]) -> dict[str, VmState | None]:
    """Each domain's state, reason, job and managed-save flag (None: missing)."""
    out: dict[str, VmState | None] = {}
    with connection(QEMU_URI) as conn:
        for vm in vms:
            try:
                dom = conn.lookupByUUIDString(vm.uuid)
            except libvirt.libvirtError:
                out[vm.uuid] = None
                continue
            state, reason = dom.state()
            out[vm.uuid] = VmState(int(state), int(reason), int(dom.jobInfo()[0]),
                                   bool(dom.hasManagedSaveImage(0)))
    return out


def libvirtd_answers() -> bool:
    """True when ``virsh -c qemu:///system version`` answers."""
    try:
        done = subprocess.run(["virsh", "-c", QEMU_URI, "version"], capture_output=True,
                              timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def libvirtd_pids() -> list[int]:
    """pids of running libvirtd processes (exact name)."""
    done = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True,
                          check=False)
    return [int(p) for p in done.stdout.split()]


def others_using_libvirtd() -> list[str]:
    """Command lines of other pytest runs that use the system libvirtd (e2e, interop, or all).

    A restart would break them. Runs of only unit, integration or faults tests do not count.
    """
    done = subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True,
                          check=False)
    mine = {os.getpid(), os.getppid()}
    found = []
    for line in done.stdout.splitlines():
        pid, _, cmd = line.partition(" ")
        if not pid.isdigit() or int(pid) in mine or not re.search(r"(^|[ /])pytest( |$)", cmd):
            continue
        paths = [a.rstrip("/") for a in cmd.split() if a.startswith("tests")]
        if any(p.startswith(("tests/e2e", "tests/interop")) or p == "tests" for p in paths) \
                or not paths:
            found.append(line)
    return found


def _start_libvirtd(check: bool = True) -> None:
    # Detached from our stdio and without test-run variables: it outlives the run.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "COMPUTE_WORKER_", "PYTHON"))}
    subprocess.run(["bash", str(LIBVIRTD_SCRIPT)], check=check, timeout=30, env=env, cwd="/",
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def restart_libvirtd(down_for: float = 0.5, timeout: float = 40.0) -> float:
    """Stop libvirtd (SIGTERM to its pid), keep it down a moment, start it; seconds it took."""
    begun = time.monotonic()
    pids = libvirtd_pids()
    assert pids, "no libvirtd is running"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not any(pid_alive(p) for p in pids), 20, "libvirtd to exit", 0.05)
    except AssertionError:
        for pid in pids:
            if pid_alive(pid) and "libvirtd" in cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 10, "libvirtd to die", 0.05)
    time.sleep(down_for)
    _start_libvirtd()
    wait_until(libvirtd_answers, timeout, "libvirtd to answer again", 0.2)
    return time.monotonic() - begun


def ensure_libvirtd() -> None:
    """Cleanup path: a libvirtd is running and answers (start one if a restart failed midway)."""
    if not libvirtd_pids():
        _start_libvirtd(check=False)
    with contextlib.suppress(AssertionError):
        wait_until(libvirtd_answers, 30, "libvirtd to answer", 0.3)


# --- outcome: events against casts, logs against lives ------------------------------------


@dataclass
class Outcome:
    """What the tap saw, held against the plan."""

    missing: list[Cast] = field(default_factory=list)
    errors: list[tuple[Cast, Any]] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    end_events: int = 0
    distinct_completed: int = 0
    repeated: int = 0
    tap_repeats: int = 0
    first_order: dict[str, list[int]] = field(default_factory=dict)


def _is_final(event_type: str) -> bool:
    return event_type.startswith("instance.") and event_type.rsplit(".", 1)[-1] in ("end",
                                                                                   "error")


def analyse(plan: list[Cast], records: list[Tapped]) -> Outcome:
    """Match every end/error event to its cast by message_id; validate every event."""
    out = Outcome()
    by_id: dict[str, Cast] = {}
    for cast in plan:
        by_id[cast.end_id] = cast
        by_id[cast.error_id] = cast
    by_request = {cast.request_id: cast for cast in plan}
    counts: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for record in records:
        event = record.event
        try:
            check_event(event)
        except Exception as exc:
            out.invalid.append(f"{event.get('event_type')}: {exc}")
        event_type = str(event.get("event_type", ""))
        if not _is_final(event_type):
            continue
        key = (str(event.get("message_id")), str(event.get("_unique_id")))
        if record.redelivered and key in seen:
            out.tap_repeats += 1  # our own tap's ack was lost in a restart: not the worker's
            continue
        seen.add(key)
        data = event.get("payload", {}).get("nova_object.data", {})
        matched = by_id.get(key[0])
        owner = by_request.get(data.get("request_id"))
        if matched is None:
            what = f"for cast #{owner.index}" if owner else "of no cast"
            out.strays.append(f"{event_type} {what} with unexpected message_id {key[0]}")
            continue
        cast = matched
        if (owner is not cast or data.get("uuid") != cast.vm.uuid
                or event_type.split(".")[1] != cast.action
                or event.get("message_id") != cast.event_id(event_type)):
            out.strays.append(f"{event_type} with message_id of cast #{cast.index} does not "
                              f"match it: {data}")
            continue
        counts[key[0]] += 1
        if counts[key[0]] == 1:
            out.first_order.setdefault(cast.vm.uuid, []).append(cast.index)
        if event_type.endswith(".error"):
            out.errors.append((cast, data.get("fault")))
    for cast in plan:
        if counts[cast.end_id] and counts[cast.error_id]:
            out.strays.append(f"cast #{cast.index} has both an end and an error event")
    out.missing = [c for c in plan if not (counts[c.end_id] or counts[c.error_id])]
    out.end_events = sum(counts.values())
    out.distinct_completed = len(plan) - len(out.missing)
    out.repeated = out.end_events - sum(1 for c in plan if counts[c.end_id] or counts[c.error_id])
    return out


def all_answered(plan: list[Cast]) -> Callable[[list[Tapped]], bool]:
    """Predicate: every cast has an end or error event among the records."""
    wanted = {c.end_id for c in plan} | {c.error_id for c in plan}
    need = len(plan)

    def check(records: list[Tapped]) -> bool:
        got = {r.event.get("message_id") for r in records} & wanted
        # Each cast contributes one of its two ids (both would be a stray, caught later).
        return len(got) >= need and all(c.end_id in got or c.error_id in got for c in plan)
    return check


def completions(records: list[dict[str, Any]]) -> list[str]:
    """unique_ids of ``verb_completed`` lines, in log order."""
    return [str(r.get("unique_id")) for r in records if r.get("event") == "verb_completed"]


def count_events(records: list[dict[str, Any]], *names: str) -> int:
    """How many log records have one of these event names."""
    return sum(1 for r in records if r.get("event") in names)


#: Log events the worker emits when it went wrong itself (a crash, a rejection) or lost a
#: publish (refused by the broker: the message goes back to be delivered again).
ALARMS = ("consumer_crashed", "decode_crashed", "dispatch_crashed_message_rejected",
          "verb_crashed", "task_crashed", "broker_blocked_callback_crashed",
          "settlement_repeated_ignored", "message_rejected",
          "publish_unconfirmed_message_requeued")
#: Errors that, ending a connection (``<name>_connection_lost``), are the worker's own bug
#: rather than the broker's doing: InvalidStateError is a confirm completed twice.
BUG_ERRORS = ("InvalidStateError", "AttributeError", "TypeError", "KeyError", "IndexError",
              "NameError", "AssertionError", "UnexpectedFrame")


def alarms(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records that report a crash, a refused publish or a rejection (none are expected here).

    A lost connection is the fault's doing, and so is a requeue after a confirm timeout
    (``no confirm within``): neither is an alarm unless a bug of ours ended the connection.
    """
    def crashed(record: dict[str, Any]) -> bool:
        event, error = str(record.get("event", "")), str(record.get("error", ""))
        return event.endswith("_connection_lost") and error.split(":", 1)[0] in BUG_ERRORS

    return [r for r in records if r.get("event") in ALARMS or crashed(r)]


def order_violations(plan: list[Cast], completed: list[str]) -> list[str]:
    """Per domain, completions (first of each id) must follow cast order."""
    index = {c.unique_id: c for c in plan}
    last: dict[str, int] = {}
    seen: set[str] = set()
    bad = []
    for uid in completed:
        cast = index.get(uid)
        if cast is None or uid in seen:
            continue
        seen.add(uid)
        before = last.get(cast.vm.uuid, -1)
        if cast.index < before:
            bad.append(f"{cast.vm.name}: cast #{cast.index} ({cast.action}) completed after "
                       f"cast #{before}")
        last[cast.vm.uuid] = max(before, cast.index)
    return bad


# --- figures printed at the end of the run -------------------------------------------------


@dataclass
class Figures:
    """Per scenario: what was sent, seen and done."""

    scenario: str
    casts_sent: int = 0
    publish_retries: int = 0
    end_events: int = 0
    distinct_completed: int = 0
    repeated_events: int = 0
    tap_redeliveries: int = 0
    absorbed: int = 0
    joined: int = 0
    error_events: int = 0
    faults: str = ""
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)


FIGURES: list[Figures] = []


def fill_figures(fig: Figures, load: Load, caster: Caster, outcome: Outcome,
                 records: list[dict[str, Any]], began: float) -> None:
    """Copy a scenario's counts into its figures (done before any assertion)."""
    fig.casts_sent = load.sent
    fig.publish_retries = caster.retries
    fig.end_events = outcome.end_events
    fig.distinct_completed = outcome.distinct_completed
    fig.repeated_events = outcome.repeated
    fig.tap_redeliveries = outcome.tap_repeats
    fig.absorbed = count_events(records, "duplicate_skipped_already_completed")
    fig.joined = count_events(records, "redelivery_joined_running")
    fig.error_events = len(outcome.errors)
    fig.elapsed = time.monotonic() - began


def describe_errors(outcome: Outcome, limit: int = 5) -> str:
    """A short list of error events for messages."""
    return "; ".join(f"#{c.index} {c.action} on {c.vm.name}: {fault}"
                     for c, fault in outcome.errors[:limit])
