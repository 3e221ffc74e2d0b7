"""A state directory that fills up mid-run: the worker stops taking work, loses nothing, resumes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection
from structlog.testing import capture_logs

from tests.brokers import wait_until
from tests.helpers import check_event, fill, small_disk
from tests.taps import EventTap, went_down
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration


def _disabled(event: dict[str, object]) -> object:
    data = event["payload"]["nova_object.data"]  # type: ignore[index]
    return data["disabled_reason"] if data["disabled"] else None  # type: ignore[index]


def test_a_full_state_dir_pauses_the_worker_and_every_cast_still_ends_once(
        make_config: Callable[..., Config], domains: Callable[[int], list[str]],
        tmp_path: Path) -> None:
    """Casts during a full journal disk wait (none lost, none twice); the host says it is disabled.

    Given a worker whose state directory is a 4 MiB tmpfs, when the disk fills while casts
    arrive and is freed later, then every cast gets exactly one end event, a service.update
    said the journal was unusable and a later one that it is enabled again, and the state watch
    is still alive.
    """
    with small_disk(tmp_path / "state") as state, capture_logs() as logs:
        cfg = make_config(state_dir=str(state))
        tap = EventTap(cfg.transport_url, cfg.control_exchange,
                       cfg.notifications.notification_topic)
        service = Service(cfg, retry_sleep=lambda _s: None, sync_interval=0.5)
        service.start()
        running = True
        try:
            uids = domains(4)
            sent: list[str] = []
            with Connection(cfg.transport_url) as conn:
                rpc = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)

                def cast(count: int) -> None:
                    """Pause all four, unpause all four, and so on."""
                    for _ in range(count):
                        uid = uids[len(sent) % len(uids)]
                        method = ("pause_instance", "unpause_instance")[(len(sent) // 4) % 2]
                        msg = rpc.cast(cfg.host, method, {"instance": {"uuid": uid}})
                        sent.append(msg["_unique_id"])

                cast(8)
                tap.wait_for(lambda evs: sum(e["event_type"].endswith(".end")
                                             for e in evs) >= 8)
                filler = fill(state)
                cast(40)
                tap.wait_for(lambda evs: any(e["event_type"] == "service.update"
                                             and "journal" in str(_disabled(e))
                                             for e in evs), timeout=20)
                # The state watch syncs every 0.5 s and saves what it knows: it cannot now.
                wait_until(lambda: any(e["event"] == "power_states_not_saved" for e in logs),
                           10, "the state watch to fail a save on the full disk")
                ended_while_full = sum(e["event_type"].endswith(".end") for e in tap.events)
                assert service.faults.keys() == {"journal"}
                filler.unlink()
                events = tap.wait_for(lambda evs: sum(e["event_type"].endswith(".end")
                                                      for e in evs) >= len(sent), timeout=60)
            statuses = [_disabled(e) for e in events if e["event_type"] == "service.update"]
            faults, watching = dict(service.faults), service.watch._thread.is_alive()
            service.stop(grace=10)
            running = False
            everything = tap.wait_for(went_down)  # so an end published twice is in by now
            ends = Counter(e["message_id"] for e in everything
                           if e["event_type"].endswith(".end"))
            errors = [e for e in everything if e["event_type"].endswith(".error")]

            assert ([], len(sent)) == (errors, len(ends))
            assert {1} == set(ends.values()), "an end event was published twice"
            assert ended_while_full < len(sent)
            assert (None, {}) == (statuses[-1], faults)
            assert watching
            assert len(sent) == service.dispatcher.completed
            for event in everything:
                check_event(event)
        finally:
            if running:
                service.stop(grace=10)
            tap.close()
