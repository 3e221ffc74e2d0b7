"""The dispatcher's paths that a broker cannot provoke on demand, in milliseconds."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import libvirt

from handlers import power
from handlers.registry import TABLE
from tests.core.conftest import Core
from tests.core.support import RecordingOutbox, call, cast, reply_of
from worker.core.context import Context
from worker.core.methods import Method, MethodTable
from worker.errors import PublishError


def _slow_pause_table(gate: threading.Event, started: threading.Event,
                      runs: list[str]) -> MethodTable:
    """TABLE with a pause_instance that waits for gate before pausing (and counts its runs)."""
    def slow_pause(ctx: Context, args: dict[str, Any]) -> Any:
        runs.append(args["instance"]["uuid"])
        started.set()
        assert gate.wait(10), "the test never opened the gate"
        return power.pause_instance(ctx, args)

    methods = dict(TABLE.methods)
    methods["pause_instance"] = Method("pause_instance", slow_pause, "pause")
    return MethodTable(TABLE.version, methods)


def _held_pause(make_core: Callable[..., Core], gate: threading.Event
                ) -> tuple[Core, list[str]]:
    """A core whose pause_instance waits for gate, with one pause delivered (number 1) and
    running; the uuids its slow pause ran for."""
    started, runs = threading.Event(), []
    core = make_core(table=_slow_pause_table(gate, started, runs))
    core.deliver(cast("pause_instance", core.uuids[0]), 1)
    assert started.wait(5)
    return core, runs


def _state(core: Core, uid: str) -> int:
    with core.hypervisor.calls() as conn:
        return int(conn.lookupByUUIDString(uid).state()[0])


def test_a_verb_is_acked_only_once_its_events_are_confirmed(
        make_core: Callable[..., Core]) -> None:
    """The end event published is not enough: the ack waits for the broker's confirm."""
    core = make_core(auto_confirm=False)
    core.deliver(cast("pause_instance", core.uuids[0]), 1)

    sent = core.outbox.wait(lambda s: len(s) == 2)
    assert ["instance.pause.start", "instance.pause.end"] == core.outbox.kinds()
    assert [] == core.settles.done[1]
    for item in sent:
        item.future.set_result(None)

    assert ["ack"] == core.settles.wait(1)


def test_a_nacked_confirm_requeues_and_the_redelivery_replays_instead_of_rerunning(
        make_core: Callable[..., Core]) -> None:
    """A nack after the journal write: requeued; the redelivery republishes the same end event."""
    core = make_core(auto_confirm=False)
    message = cast("pause_instance", core.uuids[0])
    core.deliver(message, 1)
    start, end = core.outbox.wait(lambda s: len(s) == 2)
    start.future.set_result(None)
    end.future.set_exception(PublishError("nacked by broker"))
    assert ["requeue"] == core.settles.wait(1)

    core.outbox.auto = True
    core.deliver(message, 2)  # the broker's redelivery of the same message

    assert ["ack"] == core.settles.wait(2)
    replayed = core.outbox.sent[2:]
    assert ["instance.pause.end"] == [RecordingOutbox.kind(s) for s in replayed]
    assert end.inner["message_id"] == replayed[0].inner["message_id"]
    assert libvirt.VIR_DOMAIN_PAUSED == _state(core, core.uuids[0])


def test_a_redelivery_joins_the_running_verb_and_both_are_acked(
        make_core: Callable[..., Core], gate: threading.Event) -> None:
    """The same _unique_id delivered again while its verb runs does not run a second time."""
    started, runs = threading.Event(), []
    core = make_core(table=_slow_pause_table(gate, started, runs))
    message = cast("pause_instance", core.uuids[0])
    core.deliver(message, 1)
    assert started.wait(5)

    core.deliver(message, 2)
    gate.set()

    assert (["ack"], ["ack"]) == (core.settles.wait(1), core.settles.wait(2))
    assert [core.uuids[0]] == runs
    assert 1 == core.outbox.kinds().count("instance.pause.end")


def test_draining_requeues_what_has_not_started_and_finishes_what_has(
        make_core: Callable[..., Core], gate: threading.Event) -> None:
    """At a stop, the running verb completes and the one queued behind it goes back, unrun."""
    core, _ = _held_pause(make_core, gate)
    uid = core.uuids[0]
    core.deliver(cast("unpause_instance", uid), 2)

    core.dispatcher.draining = True
    gate.set()

    assert (["ack"], ["requeue"]) == (core.settles.wait(1), core.settles.wait(2))
    assert libvirt.VIR_DOMAIN_PAUSED == _state(core, uid)
    assert "instance.unpause.start" not in core.outbox.kinds()


def test_a_query_answers_while_a_slow_verb_holds_its_instance(
        make_core: Callable[..., Core], gate: threading.Event) -> None:
    """get_instance_info is not ordered: it answers before the pause it overtakes finishes."""
    core, _ = _held_pause(make_core, gate)
    uid = core.uuids[0]

    query = call("get_instance_info", uid)
    core.deliver(query, 2)
    core.settles.wait(2)

    assert not gate.is_set() and [] == core.settles.done[1]  # the pause is still waiting
    assert "running" == reply_of(core.outbox.sent, query)["result"]["power_state"]
    gate.set()
    assert ["ack"] == core.settles.wait(1)


def test_verbs_of_one_instance_run_in_arrival_order_others_beside_them(
        make_core: Callable[..., Core], gate: threading.Event) -> None:
    """A second verb on the held instance waits; a verb on another instance does not."""
    core, _ = _held_pause(make_core, gate)
    held, free = core.uuids
    core.deliver(cast("unpause_instance", held), 2)
    core.deliver(cast("stop_instance", free, clean_shutdown=False), 3)

    assert ["ack"] == core.settles.wait(3)
    assert [] == core.settles.done[2]
    gate.set()
    assert (["ack"], ["ack"]) == (core.settles.wait(1), core.settles.wait(2))
    assert libvirt.VIR_DOMAIN_RUNNING == _state(core, held)  # paused, then unpaused


def test_a_verb_that_changed_nothing_is_answered_but_not_journaled(
        make_core: Callable[..., Core]) -> None:
    """A pause of a missing instance gets its error event and leaves the journal as it was."""
    core = make_core()
    core.deliver(cast("pause_instance", "00000000-0000-4000-8000-000000000000"), 1)
    core.deliver(cast("pause_instance", core.uuids[0]), 2)

    assert (["ack"], ["ack"]) == (core.settles.wait(1), core.settles.wait(2))
    assert "instance.pause.error" in core.outbox.kinds()
    assert 1 == len(core.journal)


def test_a_call_is_watched_from_delivery_until_its_final_reply(
        make_core: Callable[..., Core]) -> None:
    """Heartbeats start when the call is delivered and stop before the final reply goes."""
    core = make_core()
    query = call("get_instance_info", core.uuids[0], timeout=4)
    core.deliver(query, 1)

    assert ["ack"] == core.settles.wait(1)
    assert [("reply_core", query["_msg_id"], 2.0)] == list(core.outbox.watches.values())
    assert list(core.outbox.watches) == core.outbox.unwatched


def test_an_undecodable_body_is_rejected_and_answered_with_a_reject_event(
        make_core: Callable[..., Core]) -> None:
    """Bytes that are not JSON never reach a handler; the cast's sender hears why."""
    core = make_core()
    core.deliver(b"\xff not json", 1)

    assert ["reject"] == core.settles.wait(1)
    assert ["rpc_message.reject.error"] == core.outbox.kinds()


def test_an_answer_splits_a_call_s_reply_from_the_state_its_event_carries(
        make_core: Callable[..., Core]) -> None:
    """attach_interface's shape: the reply is nova's VIF, the end event says the instance."""
    from worker.core.methods import Answer

    def attach(ctx: Context, args: dict[str, Any]) -> Answer:
        guest = ctx.guest(args["instance"]["uuid"])
        return Answer(guest.describe(), {"id": "port-1", "type": "bridge"})

    methods = dict(TABLE.methods)
    methods["attach_interface"] = Method("attach_interface", attach, "interface_attach")
    core = make_core(table=MethodTable(TABLE.version, methods))
    message = call("attach_interface", core.uuids[0])
    core.deliver(message, 1)

    assert ["ack"] == core.settles.wait(1)
    sent = core.outbox.wait(lambda s: len(s) == 3)
    assert {"id": "port-1", "type": "bridge"} == reply_of(sent, message)["result"]
    end = next(s.inner for s in sent if s.inner.get("event_type") ==
               "instance.interface_attach.end")
    assert ("running", "active") == (end["payload"]["nova_object.data"]["power_state"],
                                     end["payload"]["nova_object.data"]["state"])


def test_each_verb_s_completion_line_carries_its_duration(
        make_core: Callable[..., Core], info_logs: list[dict[str, Any]]) -> None:
    """verb_completed and verb_failed say how long the handler ran, in milliseconds."""
    core = make_core()
    core.deliver(cast("pause_instance", core.uuids[0]), 1)
    core.deliver(cast("pause_instance", "00000000-0000-4000-8000-000000000000"), 2)
    assert (["ack"], ["ack"]) == (core.settles.wait(1), core.settles.wait(2))

    lines = {e["event"]: e for e in info_logs if e["event"] in ("verb_completed", "verb_failed")}
    assert {"verb_completed", "verb_failed"} == set(lines)
    for line in lines.values():
        assert isinstance(line["duration_ms"], float)
        assert 0 < line["duration_ms"] < 10_000
    assert "pause" == lines["verb_completed"]["action"]
