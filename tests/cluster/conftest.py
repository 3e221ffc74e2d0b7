"""The cluster tier's fixtures (a three-node RabbitMQ cluster, tiny QEMU domains) and figures.

Run alone with ``.venv/bin/python -m pytest tests/cluster -q``. The figures print at the end,
whatever pytest captured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.broker_cluster import BrokerCluster
from tests.cluster.failover import CLUSTER_FIGURES
from tests.faults.fixtures import domain_type, vms  # noqa: F401 - fixtures of this tier

#: Node names and the first AMQP port; the bench's cluster is on 5710 and up.
CLUSTER_NAME, CLUSTER_PORT = "cwcluster", 5690


@pytest.fixture
def booting_cluster() -> Iterator[Future[BrokerCluster]]:
    """Three RabbitMQ nodes in one cluster of the test's own, booting on a thread (the test
    makes its domains meanwhile; result() waits); stopped and removed at the end, always."""
    nodes = BrokerCluster(3, name=CLUSTER_NAME, port=CLUSTER_PORT)
    pool = ThreadPoolExecutor(1, thread_name_prefix="cluster-boot")

    def boot() -> BrokerCluster:
        nodes.start()
        return nodes

    try:
        booting = pool.submit(boot)
        yield booting
    finally:
        # A boot still under way would start nodes after close() stopped them: let it end.
        with contextlib.suppress(Exception):
            booting.result(timeout=300)
        pool.shutdown(wait=True)
        nodes.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    """Print each run's counts and each fault's failover, whatever pytest captured."""
    if not CLUSTER_FIGURES:
        return
    tr = terminalreporter
    tr.section("cluster figures")
    tr.write_line(f"{'run':<18}{'casts':>6}{'retries':>8}{'ends':>6}{'distinct':>9}"
                  f"{'repeat':>7}{'tap-rd':>7}{'absorbed':>9}{'joined':>7}{'errors':>7}"
                  f"{'secs':>7}  reconnects")
    for run in CLUSTER_FIGURES:
        f = run.figures
        again = ", ".join(f"{role} {n}" for role, n in run.reconnects.items())
        tr.write_line(f"{f.scenario:<18}{f.casts_sent:>6}{f.publish_retries:>8}"
                      f"{f.end_events:>6}{f.distinct_completed:>9}{f.repeated_events:>7}"
                      f"{f.tap_redeliveries:>7}{f.absorbed:>9}{f.joined:>7}"
                      f"{f.error_events:>7}{f.elapsed:>7.1f}  {again}, tap {run.tap_reconnects}")
        for number, fault in enumerate(run.faults, 1):
            tr.write_line(f"  fault {number}: {fault.describe()}")
        for note in f.notes:
            tr.write_line(f"  {note}")
    tr.write_line("casts: confirmed by the broker; retries: cast publishes repeated until "
                  "confirmed; ends: end/error events received; distinct: casts answered; "
                  "repeat: end events seen again with the same message_id; tap-rd: the tap's "
                  "own redeliveries; absorbed: redeliveries the journal skipped; joined: "
                  "redeliveries that joined a running verb; reconnects: after the first "
                  "connection. failover: the longest gap between end events from the fault on, "
                  "as the tap received them and as the worker made them (event timestamps), "
                  "with its ends relative to the fault's start")
