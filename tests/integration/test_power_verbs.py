"""Power verbs through a real RabbitMQ on libvirt's test driver, checked through libvirt."""

from __future__ import annotations

from collections.abc import Callable

import libvirt
import pytest

from tests.domains import TEST_URI, domain_state, state_of
from tests.helpers import check_event
from tests.taps import EventTap
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration


def _inst(uid: str) -> dict[str, str]:
    return {"instance": {"uuid": uid}}


def test_pause_cast_pauses_domain_and_emits_start_and_end(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """A pause cast leaves the domain paused and yields instance.pause.start then .end."""
    (uid,) = domains(1)
    rpc.cast(cfg.host, "pause_instance", _inst(uid))
    tap.wait_type(uid, "instance.pause.end")
    assert ["instance.pause.start", "instance.pause.end"] == [
        e["event_type"] for e in tap.of(uid) if e["event_type"].startswith("instance.pause.")]
    assert (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER) == domain_state(
        TEST_URI, uid)
    end = tap.of(uid, "instance.pause.end")[0]
    assert "paused" == end["payload"]["nova_object.data"]["power_state"]
    for event in tap.events:
        check_event(event)


def test_each_verb_reaches_its_state(worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
                                     domains: Callable[[int], list[str]]) -> None:
    """Every power verb, cast in sequence on one instance, ends in the state it promises."""
    (uid,) = domains(1)
    steps = [
        ("pause_instance", {}, "pause", "paused", "paused"),
        ("pause_instance", {}, "pause", "paused", "paused"),  # already paused: success
        ("unpause_instance", {}, "unpause", "running", "active"),
        ("suspend_instance", {}, "suspend", "shutdown", "suspended"),
        ("resume_instance", {}, "resume", "running", "active"),
        ("reboot_instance", {"reboot_type": "HARD"}, "reboot", "running", "active"),
        ("reboot_instance", {"reboot_type": "SOFT"}, "reboot", "running", "active"),
        ("stop_instance", {"clean_shutdown": False}, "power_off", "shutdown", "stopped"),
        ("stop_instance", {}, "power_off", "shutdown", "stopped"),
        ("start_instance", {}, "power_on", "running", "active"),
    ]
    for number, (method, extra, action, power, vm) in enumerate(steps, 1):
        rpc.cast(cfg.host, method, {**_inst(uid), **extra})
        ends = tap.wait_type(uid, f"instance.{action}.end",
                             count=sum(1 for s in steps[:number] if s[2] == action))
        data = ends[-1]["payload"]["nova_object.data"]
        assert (power, vm) == (data["power_state"], data["state"]), method
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(TEST_URI, uid)
    assert [] == [e for e in tap.of(uid) if e["event_type"].endswith(".error")]


def test_terminate_removes_domain_and_only_its_dir(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """terminate_instance destroys and undefines the domain and removes instances_path/<uuid>."""
    keep, gone = domains(2)
    for uid in (keep, gone):
        (worker.paths.root / uid).mkdir(parents=True)
        (worker.paths.root / uid / "disk").write_text("x")
    rpc.cast(cfg.host, "terminate_instance", _inst(gone))
    end = tap.wait_type(gone, "instance.delete.end")[0]
    assert "deleted" == end["payload"]["nova_object.data"]["state"]
    assert None is domain_state(TEST_URI, gone)
    assert not (worker.paths.root / gone).exists()
    assert (worker.paths.root / keep / "disk").exists()
    # Terminating again: the domain is missing, which is success.
    rpc.cast(cfg.host, "terminate_instance", _inst(gone))
    tap.wait_type(gone, "instance.delete.end", count=2)


def test_missing_instance_is_instance_not_found(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config) -> None:
    """A verb on an unknown UUID fails with InstanceNotFound: error event and call failure."""
    uid = "0f0e0d0c-0b0a-4909-8807-060504030201"
    rpc.cast(cfg.host, "pause_instance", _inst(uid))
    error = tap.wait_type(uid, "instance.pause.error")[0]
    fault = error["payload"]["nova_object.data"]["fault"]["nova_object.data"]
    assert ("InstanceNotFound", "nova.exception") == (fault["exception"], fault["module_name"])
    assert "ERROR" == error["priority"]
    check_event(error)
    with pytest.raises(RemoteError) as caught:
        rpc.call(cfg.host, "get_instance_info", _inst(uid), timeout=10)
    assert "InstanceNotFound" == caught.value.exc_class


def test_queries_report_domains(worker: Service, rpc: RpcClient, cfg: Config,
                                domains: Callable[[int], list[str]]) -> None:
    """get_instance_info and list_instances report what libvirt has."""
    uids = domains(2)
    info = rpc.call(cfg.host, "get_instance_info", _inst(uids[0]), timeout=10)
    assert {"uuid", "name", "power_state", "max_mem_kb", "mem_kb", "num_cpu",
            "cpu_time_ns"} <= set(info)
    assert (uids[0], "running") == (info["uuid"], info["power_state"])
    assert 64 * 1024 == info["max_mem_kb"]
    listed = {i["uuid"]: i for i in rpc.call(cfg.host, "list_instances", {}, timeout=10)}
    assert set(uids) <= set(listed)
    assert {"uuid", "name", "power_state"} <= set(listed[uids[1]])
