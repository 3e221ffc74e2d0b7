"""Every event payload, held to its schema and to nova's own notification classes."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from tests.nova_judge import judge, missing
from worker.codec import notifications, payloads
from worker.codec.payloads import EXTRA_KEY
from worker.core import schemas
from worker.errors import InstanceNotFound, InvalidArguments

SAMPLES = json.loads((Path(__file__).parents[2] / "tests" / "nova-wire-samples.json").read_text())
UUID = "0d6f3f4e-8a5b-4c1e-9f7a-3b2c1d0e9f8a"
NOW = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.UTC)
LIVE = {"uuid": UUID, "name": "instance-x", "power_state": "paused", "vm_state": "paused"}
CALLER = payloads.Caller("req-1", "8c9f1e0a", "4d2a7b31")


def nova_instance() -> dict[str, Any]:
    """The Instance nova's build_and_run_instance sent, as the dispatcher makes it plain."""
    from worker.codec.nova_objects import plain

    build = next(m["message"] for m in SAMPLES["messages"]
                 if m["message"]["method"] == "build_and_run_instance")
    instance: dict[str, Any] = plain(build["args"]["instance"])
    return instance


def _check(payload: dict[str, Any]) -> None:
    schemas.validator("events", payload["nova_object.name"])(payload["nova_object.data"])
    if payload["nova_object.namespace"] == "nova":
        judge(payload)


@pytest.mark.parametrize("instance", [nova_instance(), {"uuid": UUID}],
                         ids=["nova's Instance", "a bare uuid"])
@pytest.mark.parametrize("action", ["pause", "create", "delete"])
@pytest.mark.parametrize("error", [None, InstanceNotFound(UUID), RuntimeError("/etc/x")],
                         ids=["end", "expected error", "internal error"])
def test_instance_action_payload_is_what_nova_accepts_and_leaves_nothing_out(
        instance: dict[str, Any], action: str, error: BaseException | None) -> None:
    """InstanceActionPayload (InstanceCreatePayload for create): every field of nova's class."""
    payload = payloads.instance_action(instance=instance, live=LIVE, host="compute-01",
                                       caller=CALLER, action=action, error=error)

    _check(payload)
    assert [] == missing(payload)
    expected = "InstanceCreatePayload" if action == "create" else "InstanceActionPayload"
    assert expected == payload["nova_object.name"]


def test_the_payload_says_what_nova_said_of_the_instance_and_libvirt_of_its_state() -> None:
    """display_name, flavor, image, tenant come from nova's Instance; state from the domain."""
    data = payloads.instance_action(instance=nova_instance(), live=LIVE, host="compute-01",
                                    caller=CALLER, action="pause")["nova_object.data"]

    assert ("vm1", "m1.tiny", 512, 64, "cirros-0.6", "4d2a7b31") == (
        data["display_name"], data["flavor"]["nova_object.data"]["name"],
        data["flavor"]["nova_object.data"]["memory_mb"], data["flavor"]["nova_object.data"]["swap"],
        data["image_uuid"], data["tenant_id"])
    assert ("paused", "paused", "req-1", "8c9f1e0a") == (
        data["state"], data["power_state"], data["request_id"], data["action_initiator_user"])


def test_a_fault_names_nova_s_exception_module_and_never_a_traceback() -> None:
    """An expected error is nova.exception's class; an internal one keeps its text to itself."""
    known = payloads.exception(InstanceNotFound(UUID), "pause_instance")["nova_object.data"]
    inner = payloads.exception(RuntimeError("/etc/secret"), "pause_instance")["nova_object.data"]

    assert ("InstanceNotFound", "nova.exception", "") == (
        known["exception"], known["module_name"], known["traceback"])
    assert "/etc/secret" not in json.dumps(inner)


def test_instance_update_and_service_status_are_what_nova_accepts() -> None:
    """instance.update with its state_update and audit period; service.update for this host."""
    update = payloads.instance_update(instance={"uuid": UUID}, live=LIVE, host="h",
                                      old_state="active", audit_from=NOW, now=NOW)
    status = payloads.service_status(host="h", binary="nova-compute", topic="compute",
                                     report_count=3, disabled_reason="libvirt lost",
                                     last_seen_up=NOW,
                                     broker={"consume": "10.0.0.1:5672", "publish": ""})

    for payload in (update, status):
        _check(payload)
        assert [] == missing(payload)
    # Which cluster node each connection is on: ours, beside nova's data.
    assert {"broker": {"consume": "10.0.0.1:5672", "publish": ""}} == status[EXTRA_KEY]
    assert ("active", "paused") == (
        update["nova_object.data"]["state_update"]["nova_object.data"]["old_state"],
        update["nova_object.data"]["state_update"]["nova_object.data"]["state"])


def test_our_reject_payload_keeps_our_namespace() -> None:
    """nova has no event for an unservable message: ours says so by its namespace."""
    payload = payloads.rpc_reject(host="h", method=None, unique_id=None, request_id=None,
                                  instance_uuid=7, error=InvalidArguments("bad"))
    _check(payload)

    assert "compute_worker" == payload["nova_object.namespace"]


def test_the_notification_around_a_payload_passes_its_schema() -> None:
    """The oslo notifier envelope around a nova payload."""
    event = notifications.notification(
        event_type="instance.pause.end", publisher_id="nova-compute:h1",
        payload=payloads.instance_action(instance={"uuid": UUID}, live=LIVE, host="h1",
                                         caller=CALLER, action="pause"),
        topic="versioned_notifications", source_id="e67dd8c720d24fff9952a8d3989ee27a")

    schemas.validator("events", "notification")(event.message)


def test_a_fault_names_the_rpc_method_that_failed() -> None:
    """power_off's fault names stop_instance, the function nova's client called."""
    payload = payloads.instance_action(instance={"uuid": UUID}, live=LIVE, host="h",
                                       caller=CALLER, action="power_off",
                                       error=InstanceNotFound(UUID), function_name="stop_instance")

    assert "stop_instance" == payload["nova_object.data"]["fault"]["nova_object.data"][
        "function_name"]
