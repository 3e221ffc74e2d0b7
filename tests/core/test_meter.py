"""What the dispatcher tells the metrics, read back from the exposition a scrape gets."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from handlers.registry import TABLE
from tests.core.conftest import Core
from tests.core.support import cast
from tests.scrape import Samples
from worker.codec import envelope
from worker.ops.metrics import Metrics, Readings


def _metrics() -> Metrics:
    """Metrics over the real method table, with readings that say nothing is connected."""
    return Metrics(TABLE.methods, Readings(
        up=lambda: True, libvirt_connected=lambda: False, broker_connected=lambda: False,
        verbs_in_flight=lambda: 0, queue_depth=lambda: 0, reconnects=lambda: {},
        events_published=lambda: {}, confirm_failures=lambda: 0, power_states=lambda: {}))


def _messages(metrics: Metrics) -> Samples:
    return Samples(metrics.exposition().decode())


def test_each_outcome_is_counted_by_method(make_core: Callable[..., Core]) -> None:
    """ok, error (a missing instance), rejected (bad args) and duplicate (journal) each count."""
    metrics = _metrics()
    core = make_core(meter=metrics)
    paused = cast("pause_instance", core.uuids[0])
    core.deliver(paused, 1)
    core.deliver(cast("pause_instance", str(uuid.uuid4())), 2)
    core.deliver(cast("pause_instance", core.uuids[1], surprise="an argument nova never sends"), 3)
    assert (["ack"], ["ack"], ["reject"]) == tuple(core.settles.wait(n) for n in (1, 2, 3))
    core.deliver(paused, 4, redelivered=True)  # the broker's redelivery of a completed one
    core.deliver(paused, 5)  # the same message published again by its sender
    assert (["ack"], ["ack"]) == (core.settles.wait(4), core.settles.wait(5))

    seen = _messages(metrics)
    name = "compute_worker_rpc_messages_total"
    assert {("ok", 1.0), ("error", 1.0), ("rejected", 1.0), ("duplicate", 2.0)} == {
        (outcome, seen.get(name, method="pause_instance", outcome=outcome))
        for outcome in ("ok", "error", "rejected", "duplicate")}
    # Only the redelivery the broker marked so counts as absorbed; both were duplicates.
    assert 1.0 == seen.get("compute_worker_redeliveries_absorbed_total")
    # Timed: the verb that ran and the one that failed; not the refused or repeated ones.
    assert 2.0 == seen.get("compute_worker_verb_duration_seconds_count", method="pause_instance")
    assert 0 < seen.get("compute_worker_verb_duration_seconds_sum", method="pause_instance")


def test_methods_from_the_wire_do_not_make_new_label_values(
        make_core: Callable[..., Core]) -> None:
    """A thousand invented method names, and bodies with none, all count as method="other"."""
    metrics = _metrics()
    core = make_core(meter=metrics)
    for number in range(1000):
        core.deliver(envelope.wrap({"method": f"invented_{number}", "args": {},
                                    "version": "6.0", "_unique_id": uuid.uuid4().hex}), number)
    core.deliver(b"not json at all", 1000)
    for number in range(1001):
        assert ["reject"] == core.settles.wait(number)

    seen = _messages(metrics)
    assert {"other"} == seen.labels("compute_worker_rpc_messages_total", "method")
    assert 1001.0 == seen.get("compute_worker_rpc_messages_total", method="other",
                              outcome="rejected")
