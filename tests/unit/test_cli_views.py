"""What events and top show of the worker's own events, built by the worker's own codec."""

from __future__ import annotations

import datetime
import io
from typing import Any

import pytest

from worker.amqp.faults import diagnose
from worker.cli import eventview
from worker.cli.topview import TopModel
from worker.codec import notifications, payloads
from worker.errors import InstanceInvalidState, InvalidArguments

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def _action(host: str, uuid: str, action: str, phase: str, power: str, state: str, *,
            error: BaseException | None = None, request_id: str = "req-1",
            name: str = "web-1") -> dict[str, Any]:
    payload = payloads.instance_action(
        instance={"uuid": uuid, "display_name": name}, host=host,
        live={"uuid": uuid, "power_state": power, "vm_state": state},
        caller=payloads.Caller(request_id), action=action, error=error,
        task_state="pausing" if phase == "start" else None)
    return notifications.notification(
        event_type=f"instance.{action}.{phase}", payload=payload,
        publisher_id=f"nova-compute:{host}", topic="versioned_notifications",
        error=error is not None).message


def _service(host: str, reason: str | None) -> dict[str, Any]:
    payload = payloads.service_status(host=host, binary="nova-compute", topic="compute",
                                      report_count=1, disabled_reason=reason,
                                      last_seen_up=datetime.datetime.now(datetime.UTC))
    return notifications.notification(event_type="service.update", payload=payload,
                                      publisher_id=f"nova-compute:{host}",
                                      topic="versioned_notifications").message


def _reject(host: str) -> dict[str, Any]:
    payload = payloads.rpc_reject(host=host, method="pause_instance", unique_id="m1",
                                  request_id="req-9", instance_uuid=U2,
                                  error=InvalidArguments("instance: 'uuid' is required"))
    return notifications.notification(event_type="rpc_message.reject.error", payload=payload,
                                      publisher_id=f"nova-compute:{host}",
                                      topic="versioned_notifications", error=True).message


def test_facts_of_an_error_event_name_the_fault() -> None:
    """An instance error event shows its host, instance, states, request and fault."""
    event = _action("cn-1", U1, "pause", "error", "shutdown", "stopped",
                    error=InstanceInvalidState("cannot pause a stopped instance"))

    seen = eventview.facts(event)

    assert ("cn-1", U1, "web-1", "stopped", "shutdown", "req-1") == (
        seen.host, seen.uuid, seen.name, seen.vm_state, seen.power_state, seen.request_id)
    assert "InstanceInvalidState: cannot pause a stopped instance" == seen.detail
    assert eventview.ends(seen) is False


def test_facts_of_a_reject_and_a_service_event() -> None:
    """A reject carries its request and instance; a disabled service its reason."""
    reject = eventview.facts(_reject("cn-2"))
    down = eventview.facts(_service("cn-2", "compute-worker stopped"))

    assert ("cn-2", U2, "req-9") == (reject.host, reject.uuid, reject.request_id)
    assert "InvalidArguments: instance: 'uuid' is required" == reject.detail
    assert ("cn-2", None, "compute-worker stopped") == (down.host, down.uuid, down.detail)


@pytest.mark.parametrize("wanted, expected", [
    (eventview.Filter(), [True, True, True]),
    (eventview.Filter(hosts=["cn-2"]), [False, True, True]),
    (eventview.Filter(instances=[U1[:8]]), [True, False, False]),
    (eventview.Filter(instances=["web-1"]), [True, False, False]),
    (eventview.Filter(types=["instance.*.end"]), [True, False, False]),
    (eventview.Filter(types=["*.error", "service.*"]), [False, True, True]),
    (eventview.Filter(hosts=["cn-1"], types=["*.error"]), [False, False, False]),
])
def test_filters_by_host_instance_and_type_glob(wanted: eventview.Filter,
                                                expected: list[bool]) -> None:
    """Filters of one kind are alternatives; of different kinds, all must hold."""
    events = [_action("cn-1", U1, "pause", "end", "paused", "paused"), _reject("cn-2"),
              _service("cn-2", None)]

    assert expected == [wanted(eventview.facts(e)) for e in events]


def test_a_table_row_lines_up_under_the_heading() -> None:
    """Each column of a row starts where its heading does."""
    row = eventview.row(eventview.facts(_action("cn-1", U1, "unpause", "end", "running",
                                                "active")))
    head = eventview.heading()

    for name, value in (("EVENT", "instance.unpause.end"), ("INSTANCE", U1[:8]),
                        ("STATE", "active"), ("POWER", "running"), ("DETAIL", "req-1")):
        assert head.index(name) == row.index(value)


def test_top_follows_a_verb_from_start_to_end_and_forgets_a_deleted_instance() -> None:
    """TASK shows the verb between its start and end; delete.end removes the row."""
    model = TopModel(["cn-1"])
    model.seed("cn-1", [{"uuid": U1, "name": "web-1", "power_state": "running",
                         "vm_state": "active"}], now=0.0)

    model.apply(_action("cn-1", U1, "pause", "start", "running", "active"), now=1.0)
    during = (model.instances[U1].task, model.instances[U1].power_state)
    model.apply(_action("cn-1", U1, "pause", "end", "paused", "paused"), now=2.0)
    after = (model.instances[U1].task, model.instances[U1].power_state,
             model.instances[U1].last_event)
    model.apply(_action("cn-1", U1, "delete", "end", "shutdown", "deleted"), now=3.0)

    assert ("pause", "running") == during
    assert (None, "paused", "pause.end") == after
    assert {} == model.instances


def test_top_of_one_host_ignores_the_others_and_keeps_faults() -> None:
    """Events of unwatched hosts change nothing; errors go to the fault list."""
    model = TopModel(["cn-1"])

    model.apply(_action("cn-2", U2, "pause", "end", "paused", "paused"), now=1.0)
    model.apply(_action("cn-1", U1, "pause", "error", "shutdown", "stopped",
                        error=InstanceInvalidState("cannot pause")), now=2.0)
    model.apply(_service("cn-1", "compute-worker stopped"), now=3.0)

    assert [U1] == list(model.instances)
    assert "InstanceInvalidState: cannot pause" == model.instances[U1].fault
    assert 1 == len(model.faults) and "cannot pause" in model.faults[0]
    assert (False, "compute-worker stopped") == (model.services["cn-1"].up,
                                                 model.services["cn-1"].reason)


def test_fleet_top_takes_every_host() -> None:
    """With no hosts named, top watches each host whose events arrive."""
    model = TopModel()

    model.apply(_action("cn-1", U1, "pause", "end", "paused", "paused"), now=1.0)
    model.apply(_action("cn-2", U2, "unpause", "end", "running", "active", name="db-1"), now=1.0)

    assert [("cn-1", "paused"), ("cn-2", "running")] == [
        (r.host, r.power_state) for r in model.rows()]
    assert {"paused": 1, "running": 1} == dict(model.power_counts())


@pytest.mark.parametrize("text, problem, fix", [
    ("Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg 'durable' for exchange "
     "'nova' in vhost '/': received 'false' but current is 'true'",
     "the broker holds exchange 'nova' with durable=true, declared here with durable=false",
     "--amqp-durable-queues"),
    ("Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
     "'compute.cn-1' in vhost '/': received 'quorum' but current is 'classic'",
     "the broker holds queue 'compute.cn-1' with x-queue-type=classic",
     "rabbitmqctl delete_queue compute.cn-1"),
    ("[Errno 111] Connection refused", "cannot reach the broker at URL",
     "systemctl start rabbitmq-server"),
])
def test_broker_faults_say_what_to_do(text: str, problem: str, fix: str) -> None:
    """A 406 names the thing, the argument and both values; each fault gets its fix."""
    got_problem, got_fix = diagnose(Exception(text), "URL")

    assert got_problem.startswith(problem), got_problem
    assert fix in got_fix


def test_top_screen_shows_hosts_instances_and_faults() -> None:
    """The rendered screen has a row per host and per instance, and the last fault."""
    from rich.console import Console

    from worker.cli.top import render

    model = TopModel(["cn-1"])
    model.apply(_service("cn-1", None), now=1.0)
    model.apply(_action("cn-1", U1, "pause", "start", "running", "active"), now=1.0)
    model.apply(_action("cn-1", U2, "pause", "error", "shutdown", "stopped", name="db-1",
                        error=InstanceInvalidState("cannot pause")), now=2.0)
    console = Console(record=True, width=160, file=io.StringIO())

    console.print(render(model, 5.0, "compute-worker top: cn-1", ["a note"]))
    lines = console.export_text().splitlines()

    rows = {line.split()[1]: line.split() for line in lines if line.startswith("cn-1 ") and
            len(line.split()) > 5}
    assert ["cn-1", U1[:8], "web-1", "active", "running", "pause", "pause.start", "4s"] == rows[
        U1[:8]]
    assert ["cn-1", U2[:8], "db-1", "stopped", "shutdown", "pause.error", "3s"] == rows[U2[:8]]
    assert any(line.split()[:3] == ["cn-1", "up", "4s"] for line in lines), lines
    assert "a note" in lines
    assert lines[-1].endswith("cn-1 db-1 instance.pause.error: InstanceInvalidState: cannot pause")


def test_a_live_migration_ends_at_its_post_or_rollback_not_at_the_destinations_pre() -> None:
    """cast --wait live_migration waits past live_migration_pre.end to post or rollback."""
    pre = eventview.facts(_action("cn-2", U1, "live_migration_pre", "end", "paused", "active"))
    post = eventview.facts(_action("cn-1", U1, "live_migration_post", "end", "running",
                                   "active"))
    back = eventview.facts(_action("cn-1", U1, "live_migration_rollback", "end", "running",
                                   "active"))

    assert [None, True, False] == [eventview.outcome("live_migration", e)
                                   for e in (pre, post, back)]
    assert True is eventview.outcome("pause_instance", pre)
    assert False is eventview.outcome("live_migration", eventview.facts(_reject("cn-1")))
