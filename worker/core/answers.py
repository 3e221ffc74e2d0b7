"""What the worker publishes, as messages: nova's notifications (codec/payloads) and replies.

The one place that turns a payload into an Outgoing on the control exchange, so every
event of the host carries the same publisher_id, topic and exchange.
"""

from __future__ import annotations

import datetime
import itertools
import threading
from collections import OrderedDict
from typing import Any

from worker.codec import envelope, notifications, payloads
from worker.codec.envelope import Request
from worker.config import Config
from worker.errors import BadMessage
from worker.messages import Outgoing

#: Instances whose nova Instance the worker keeps (for events no request carries).
_REMEMBERED = 10000


def caller(req: Request) -> payloads.Caller:
    """Who asked: the request id and the user and project of the message's context."""
    def text(key: str) -> str | None:
        value = req.context.get(key)
        return value if isinstance(value, str) else None
    return payloads.Caller(req.request_id, text("user_id"), text("project_id"))


class Answers:
    """Builds this host's events and replies as messages ready to publish."""

    def __init__(self, cfg: Config, version: str) -> None:
        self.cfg = cfg
        self.version = version
        self._reports = itertools.count(1)
        # uuid -> nova's Instance as the last request about it carried it: what
        # an instance.update (which no request carries) says besides the domain.
        self._instances: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, uuid: str, instance: dict[str, Any] | None) -> None:
        """Keep the latest nova Instance of an instance (None forgets it)."""
        with self._lock:
            if instance is None:
                self._instances.pop(uuid, None)
                return
            self._instances[uuid] = instance
            self._instances.move_to_end(uuid)
            while len(self._instances) > _REMEMBERED:
                self._instances.popitem(last=False)

    def instance(self, uuid: str) -> dict[str, Any]:
        """The remembered nova Instance of uuid, or just its uuid."""
        with self._lock:
            return dict(self._instances.get(uuid) or {"uuid": uuid})

    def event(self, event_type: str, payload: dict[str, Any], *, error: bool = False,
              source_id: str | None = None) -> Outgoing:
        """One notification on the control exchange; source_id fixes its message_id."""
        event = notifications.notification(
            event_type=event_type, payload=payload, publisher_id=self.cfg.event_publisher_id,
            topic=self.cfg.notifications.notification_topic, error=error, source_id=source_id)
        return Outgoing(self.cfg.control_exchange, event.routing_key,
                        envelope.wrap(event.message))

    def instance_action(self, req: Request, instance: dict[str, Any], action: str, phase: str,
                        live: dict[str, Any], error: BaseException | None = None,
                        args: dict[str, Any] | None = None, once: bool = True) -> Outgoing:
        """instance.<action>.<phase> for the request, with the instance's state now.

        args (the verb's, plain): where nova's payload class takes a field from them
        (a volume id, a snapshot's image id). once: the request causes this event once,
        so a replay carries the same message_id; False for one of many (progress).
        """
        payload = payloads.instance_action(
            instance=instance or {"uuid": req.instance_uuid}, live=live, host=self.cfg.host,
            caller=caller(req), action=action,
            task_state=instance.get("task_state") if phase == "start" else None,
            error=error, domain_name=live.get("name"), function_name=req.method, args=args)
        return self.event(f"instance.{action}.{phase}", payload, error=error is not None,
                          source_id=req.unique_id if once else None)

    def reply(self, req: Request, result: Any = None,
              error: BaseException | None = None) -> Outgoing:
        """The final reply to a call (mandatory: an unroutable one is reported)."""
        assert req.reply_q is not None and req.msg_id is not None
        return Outgoing("", req.reply_q, envelope.reply(req.msg_id, result, error), True)

    def rejection(self, req: Request | None, exc: BadMessage) -> Outgoing:
        """The answer to a message that cannot be served: an error reply, or a reject event."""
        partial = dict(exc.kwargs)
        if req is not None:
            partial.update(msg_id=req.msg_id, reply_q=req.reply_q, method=req.method,
                           unique_id=req.unique_id, request_id=req.request_id,
                           instance_uuid=req.instance_uuid)
        if partial.get("reply_q") and partial.get("msg_id"):
            return Outgoing("", partial["reply_q"], envelope.reply(partial["msg_id"], error=exc),
                            True)
        payload = payloads.rpc_reject(
            host=self.cfg.host, method=partial.get("method"), unique_id=partial.get("unique_id"),
            request_id=partial.get("request_id"), instance_uuid=partial.get("instance_uuid"),
            error=exc)
        return self.event("rpc_message.reject.error", payload, error=True,
                          source_id=partial.get("unique_id"))

    def service_status(self, *, disabled_reason: str | None,
                       broker: dict[str, str] | None = None) -> Outgoing:
        """service.update: nova's compute service on this host, disabled with a reason or not;
        broker: the node each broker connection is on (ours, beside nova's payload)."""
        payload = payloads.service_status(
            host=self.cfg.host, binary="nova-compute", topic=self.cfg.topic,
            report_count=next(self._reports), disabled_reason=disabled_reason,
            last_seen_up=datetime.datetime.now(datetime.UTC), broker=broker)
        return self.event("service.update", payload)

    def instance_update(self, uuid: str, live: dict[str, Any],
                        old_state: str | None) -> Outgoing:
        """instance.update: a state change no verb of ours caused."""
        now = datetime.datetime.now(datetime.UTC)
        # nova's default audit period: the month so far.
        month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        payload = payloads.instance_update(instance=self.instance(uuid), live=live,
                                           host=self.cfg.host, old_state=old_state,
                                           audit_from=month, now=now)
        return self.event("instance.update", payload)
