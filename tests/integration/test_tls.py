"""TLS to the broker: a private RabbitMQ node with a TLS listener the test configures."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu import Connection

from tests.brokers import PrivateBroker, free_port
from tests.taps import EventTap
from worker import config as config_mod
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=compute-worker test CA", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=localhost", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
             cwd=folder)
    return {name: folder / f"{name}" for name in ("ca.pem", "server.pem", "server.key")}


class TlsBroker(PrivateBroker):
    """A private node that also listens for AMQP over TLS."""

    def __init__(self) -> None:
        super().__init__(name="rabbittls")
        self.tls_port = free_port(5900)
        certs = make_certificates(self.base)
        for path in certs.values():
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.ca = certs["ca.pem"]
        conf = self.base / "rabbitmq.conf"
        conf.write_text(
            f"listeners.ssl.default = {self.tls_port}\n"
            f"ssl_options.cacertfile = {certs['ca.pem']}\n"
            f"ssl_options.certfile = {certs['server.pem']}\n"
            f"ssl_options.keyfile = {certs['server.key']}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n")
        shutil.chown(conf, "rabbitmq", "rabbitmq")
        self.extra_env["RABBITMQ_CONFIG_FILE"] = str(conf)

    @property
    def tls_url(self) -> str:
        """amqps URL of the TLS listener."""
        return f"amqps://guest:guest@localhost:{self.tls_port}//"


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[TlsBroker]:
    """The TLS node, for this module only."""
    broker = TlsBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def test_worker_serves_over_tls_with_a_ca_file(
        tls_broker: TlsBroker, tmp_path: Path,
        domains: Callable[[int], list[str]]) -> None:
    """With amqps:// and ssl_ca_file the worker consumes, answers and publishes over TLS."""
    tag = uuid.uuid4().hex[:8]
    cfg: Config = config_mod.load(None, {
        "host": f"tls-{tag}", "transport_url": tls_broker.tls_url,
        "ssl_ca_file": str(tls_broker.ca), "control_exchange": f"nova_{tag}",
        "notification_topic": f"notifications_{tag}", "virt_type": "test",
        "instances_path": str(tmp_path / "instances"), "state_dir": str(tmp_path / "state"),
        "metrics_listen": "",
    }, environ={})
    service = Service(cfg, retry_sleep=lambda _s: None)
    service.start()
    # The test's own clients use plain AMQP on the same node: the worker's side is what is tested.
    tap = EventTap(tls_broker.url, cfg.control_exchange, cfg.notifications.notification_topic)
    try:
        (uid,) = domains(1)
        with Connection(tls_broker.url) as conn:
            rpc = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)
            rpc.cast(cfg.host, "pause_instance", {"instance": {"uuid": uid}})
            tap.wait_type(uid, "instance.pause.end")
            info = rpc.call(cfg.host, "get_instance_info", {"instance": {"uuid": uid}},
                            timeout=10)
        assert "paused" == info["power_state"]
        assert tls_broker.ssl_connections() >= 2  # the worker's consumer and publisher
    finally:
        tap.close()
        service.stop(grace=5)


def test_wrong_ca_is_refused(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """A broker certificate not signed by the configured CA fails the TLS handshake."""
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca = make_certificates(other)["ca.pem"]
    with Connection(tls_broker.tls_url, connect_timeout=5,
                    ssl={"ca_certs": str(wrong_ca), "cert_reqs": ssl.CERT_REQUIRED}) as conn:
        with pytest.raises(ssl.SSLError):
            conn.connect()
