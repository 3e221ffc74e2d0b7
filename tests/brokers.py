"""Private RabbitMQ nodes for tests that restart, reconfigure or break a broker.

DESIGN.md's recipe: a node of our own name, ports and directories, owned by
the rabbitmq user (the server drops to it), so the system broker is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange

from worker.amqp.topology import PRIORITIES
from worker.codec import envelope
from worker.config import Config

HOSTNAME = socket.gethostname()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """Poll predicate until it returns something true; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _node_registered(name: str) -> bool:
    """True when epmd already knows an Erlang node of this short name."""
    try:
        done = subprocess.run(["epmd", "-names"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(line.split()[1:2] == [name] for line in done.stdout.splitlines())


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<{path}: {exc}>"


class PrivateBroker:
    """A RabbitMQ node of our own (DESIGN.md's recipe), on its own ports and directories."""

    def __init__(self, name: str = "rabbitfault", port: int = 5682, dist_port: int = 25682) -> None:
        if not (_port_free(port) and _port_free(dist_port)) or _node_registered(name):
            # A leftover or a neighbour holds the usual ports: take another pair.
            tag = uuid.uuid4().hex[:6]
            name = f"{name}{tag}"
            port, dist_port = self._free_pair()
        self.node = f"{name}@{HOSTNAME}"
        self.port, self.dist_port = port, dist_port
        # Not under pytest's tmp dir: that is root-only and the server runs as rabbitmq.
        self.base = Path(tempfile.mkdtemp(prefix="cw-faults-rabbit-"))
        os.chmod(self.base, 0o755)
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        for path in (self.base, self.base / "mnesia", self.base / "log",
                     self.base / "enabled_plugins"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.pid_file = self.base / "rabbit.pid"
        self.log_file = self.base / "log" / f"{self.node}.log"
        self.stops = 0
        #: Extra environment for the node (a config file, say), set before start().
        self.extra_env: dict[str, str] = {}

    @staticmethod
    def _free_pair() -> tuple[int, int]:
        for port in range(5700, 5800):
            if _port_free(port) and _port_free(port + 20000):
                return port, port + 20000
        raise AssertionError("no free port pair for a private RabbitMQ node")

    @property
    def url(self) -> str:
        """AMQP URL of the node (guest is allowed from localhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        """Environment for rabbitmq-server and rabbitmqctl talking about this node."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
        )
        env.update(self.extra_env)
        return env

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``rabbitmqctl -n NODE args``; its stdout."""
        done = subprocess.run(["rabbitmqctl", "-n", self.node, *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                                 f"{done.stdout[-500:]} {done.stderr[-500:]}")
        return done.stdout

    def pid(self) -> int | None:
        """The node's OS pid while it runs (its environment names this node)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and _environ(pid).get("RABBITMQ_NODENAME") == self.node:
            return pid
        return None

    def start(self, timeout: float = 90.0) -> None:
        """Boot the node and wait until it serves AMQP."""
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env(), timeout=30,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until an AMQP connection opens and the node says it has booted."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with Connection(self.url, connect_timeout=1) as conn:
                    conn.ensure_connection(max_retries=1, timeout=1)
                break
            except Exception as exc:  # refused while booting
                if time.monotonic() >= deadline:
                    raise AssertionError(f"private RabbitMQ {self.node} did not come up in "
                                         f"{timeout:.0f}s ({exc!r}); log:\n"
                                         f"{tail(self.log_file)}") from None
                time.sleep(0.2)
        left = max(5, int(deadline - time.monotonic()))
        self.ctl("await_startup", "--timeout", str(left), timeout=left + 15)

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (the Erlang VM stays): every connection drops."""
        self.ctl("stop_app")
        self.stops += 1

    def start_app(self, timeout: float = 60.0) -> None:
        """Start the application again and wait until it serves."""
        self.ctl("start_app", timeout=timeout)
        self.wait_ready(timeout)

    def stop_node(self, timeout: float = 60.0) -> None:
        """Stop the whole node (the VM exits) and wait for its process to be gone."""
        pid = self.pid()
        self.ctl("stop", timeout=timeout, check=False)
        if pid is not None:
            wait_until(lambda: not pid_alive(pid), timeout, f"{self.node} (pid {pid}) to exit")
        self.stops += 1

    def queue_counts(self, name: str) -> tuple[int, int] | None:
        """(ready, unacked) of a queue on this node; None if it does not exist."""
        return queue_counts(name, node=self.node, env=self.env())

    def ssl_connections(self) -> int:
        """How many client connections to this node use TLS."""
        rows = json.loads(self.ctl("list_connections", "ssl", "--formatter", "json") or "[]")
        return sum(1 for row in rows if row.get("ssl"))

    def close(self) -> None:
        """Stop the node (killing it if it will not stop) and remove its directories."""
        pid = self.pid()
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=60, check=False)  # by name: works without the pid too
        if pid is not None:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not pid_alive(pid), 20, "the private node to exit")
            if pid_alive(pid) and _environ(pid).get("RABBITMQ_NODENAME") == self.node:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def queue_counts(name: str, *, node: str | None = None,
                 env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(messages ready, messages unacknowledged) of a queue, as rabbitmqctl reports them."""
    argv = ["rabbitmqctl"] + (["-n", node] if node else []) + [
        "list_queues", "name", "messages_ready", "messages_unacknowledged", "--formatter", "json"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl list_queues failed: {done.stderr[-300:]}")
    for row in json.loads(done.stdout or "[]"):
        if row.get("name") == name:
            return int(row["messages_ready"]), int(row["messages_unacknowledged"])
    return None


def wait_bound(url: str, exchange: Exchange, routing_key: str, timeout: float = 20.0) -> None:
    """Block until some queue is bound for routing_key: a mandatory probe is no longer returned.

    The probe (``event_type`` ``probe``) reaches whoever is bound, so they see it too.
    """
    returned: list[object] = []
    body = envelope.wrap({"event_type": "probe", "payload": {}})
    deadline = time.monotonic() + timeout
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer(on_return=lambda exc, *_: returned.append(exc))
        while True:
            returned.clear()
            # Confirmed publishes: a basic.return comes before the ack, so within publish().
            producer.publish(body, exchange=exchange, routing_key=routing_key, mandatory=True,
                             declare=[exchange], retry=False, content_type="application/json",
                             content_encoding="utf-8")
            if not returned:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"nobody bound {routing_key} on {exchange.name} "
                                     f"within {timeout:.0f}s")
            time.sleep(0.02)


def free_port(start: int) -> int:
    """The first free TCP port from start on."""
    for port in range(start, start + 200):
        if _port_free(port):
            return port
    raise AssertionError(f"no free port from {start}")


# --- the names a worker (or a test or bench config) leaves on a shared broker ------------

def service_names(cfg: Config, fanout_uniques: Iterable[str]) -> list[str]:
    """The queues a worker declares for itself: its two host queues and its fanout queues."""
    return [f"{cfg.topic}.{cfg.host}", f"{cfg.topic}-alt.{cfg.host}"] + [
        f"{cfg.topic}_fanout_{u}" for u in fanout_uniques]


def notification_names(cfg: Config) -> list[str]:
    """The event queues the publisher declares (they keep every event nobody consumes)."""
    return [f"{cfg.notifications.notification_topic}.{p}" for p in PRIORITIES]


def delete_names(url: str, queues: Iterable[str], exchanges: Iterable[str] = (),
                 exchange_prefixes: tuple[str, ...] = ("bench",)) -> int:
    """Delete queues, then exchanges, by name (missing ones are fine); how many failed.

    Only exchanges whose names start with one of exchange_prefixes are
    deleted: never a shared one such as nova.
    """
    failed = 0
    with Connection(url) as conn:
        channel = conn.channel()
        for kind, name in [("q", q) for q in queues] + [("x", x) for x in exchanges]:
            if kind == "x" and not name.startswith(exchange_prefixes):
                continue  # only the benches' own exchanges, never a shared one
            try:
                if kind == "q":
                    channel.queue_delete(name)
                else:
                    channel.exchange_delete(name)
            except Exception:  # noqa: BLE001 - a failed delete closes the channel
                failed += 1
                channel = conn.channel()
    return failed


