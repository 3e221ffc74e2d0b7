"""What the worker publishes, as messages: events (from codec/payloads) and call replies.

The one place that turns a payload into an Outgoing on the control exchange, so every
event of the host carries the same publisher_id, topic and exchange.
"""

from __future__ import annotations

from typing import Any

from worker.codec import envelope, notifications, payloads
from worker.codec.envelope import Request
from worker.config import Config
from worker.errors import BadMessage
from worker.messages import Outgoing


class Answers:
    """Builds this host's events and replies as messages ready to publish."""

    def __init__(self, cfg: Config, version: str) -> None:
        self.cfg = cfg
        self.version = version

    def event(self, event_type: str, payload_name: str, data: dict[str, Any], *,
              error: bool = False, source_id: str | None = None) -> Outgoing:
        """One notification on the control exchange; source_id fixes its message_id."""
        event = notifications.notification(
            event_type=event_type, payload_name=payload_name, data=data,
            publisher_id=self.cfg.event_publisher_id,
            topic=self.cfg.notifications.notification_topic,
            error=error, source_id=source_id)
        return Outgoing(self.cfg.control_exchange, event.routing_key,
                        envelope.wrap(event.message))

    def instance_action(self, req: Request, action: str, phase: str, state: dict[str, Any],
                        error: BaseException | None = None) -> Outgoing:
        """instance.<action>.<phase> for the request, with the instance's state."""
        data = payloads.instance_action(
            uuid=state.get("uuid", req.instance_uuid),
            name=state.get("name", (req.args.get("instance") or {}).get("name")),
            host=self.cfg.host, power_state=state.get("power_state"),
            vm_state=state.get("vm_state"), action=action, request_id=req.request_id,
            error=error)
        return self.event(f"instance.{action}.{phase}", "InstanceActionPayload", data,
                          error=error is not None, source_id=req.unique_id)

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
        data = payloads.rpc_reject(
            host=self.cfg.host, method=partial.get("method"), unique_id=partial.get("unique_id"),
            request_id=partial.get("request_id"), instance_uuid=partial.get("instance_uuid"),
            error=exc)
        return self.event("rpc_message.reject.error", "RpcRejectPayload", data, error=True,
                          source_id=partial.get("unique_id"))

    def service_status(self, *, up: bool, disabled_reason: str | None) -> Outgoing:
        """service.update: up or down, and why the host is disabled if it is."""
        data = payloads.service_status(host=self.cfg.host, binary="compute-worker",
                                       topic=self.cfg.topic, up=up,
                                       disabled_reason=disabled_reason, version=self.version)
        return self.event("service.update", "ServiceStatusPayload", data)

    def instance_update(self, **fields: Any) -> Outgoing:
        """instance.update: a state change no verb of ours caused."""
        return self.event("instance.update", "InstanceUpdatePayload",
                          payloads.instance_update(host=self.cfg.host, **fields))
