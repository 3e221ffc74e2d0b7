"""AMQP topology as data: the exchanges and queues oslo.messaging declares, flag for flag."""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from worker.config import Config

# oslo's rabbit_transient_queues_ttl default: an abandoned fanout queue goes
# away after 30 minutes without consumers.
FANOUT_QUEUE_EXPIRES_MS = 1800 * 1000
PRIORITIES = ("info", "error")


def control_exchange(cfg: Config) -> Exchange:
    """The topic exchange RPC and events share (``nova`` by default)."""
    # RabbitMQ refuses a re-declare with other flags (406), so these must be
    # exactly oslo's: durable only with amqp_durable_queues, never auto-delete.
    return Exchange(cfg.control_exchange, type="topic", durable=cfg.rabbit.amqp_durable_queues,
                    auto_delete=False)


def rpc_queue_arguments(cfg: Config) -> dict[str, Any]:
    """x-arguments of the RPC queues: queue type and dead-lettering."""
    # A queue re-declared with other arguments is refused (406): changing
    # these on a live deployment means deleting the queue first.
    args: dict[str, Any] = {}
    if cfg.rabbit.queue_type == "quorum":
        args["x-queue-type"] = "quorum"
        args["x-delivery-limit"] = cfg.rabbit.quorum_delivery_limit
    if cfg.rabbit.dead_letter_exchange:
        args["x-dead-letter-exchange"] = cfg.rabbit.dead_letter_exchange
    return args


class ExclusiveQueue(Queue):  # type: ignore[misc]  # kombu is untyped here
    """A queue consumed exclusively: the broker refuses a second consumer (403)."""

    def consume(self, consumer_tag: str = "", callback: Any = None, no_ack: bool | None = None,
                nowait: bool = False, on_cancel: Any = None) -> Any:
        """kombu's Queue.consume, with basic.consume's exclusive bit set."""
        return self.channel.basic_consume(
            queue=self.name, no_ack=self.no_ack if no_ack is None else no_ack,
            consumer_tag=consumer_tag or "", callback=callback, nowait=nowait,
            arguments=self.consumer_arguments, on_cancel=on_cancel, exclusive=True)


def host_queue(cfg: Config) -> Queue:
    """``<topic>.<host>``: what a scheduler casts to for this host; one worker consumes it.

    Two workers given the same host would split its casts and break
    per-instance order, so the consumer is exclusive: a second one is refused.
    """
    name = f"{cfg.topic}.{cfg.host}"
    return ExclusiveQueue(name, control_exchange(cfg), routing_key=name,
                          durable=cfg.rabbit.amqp_durable_queues, auto_delete=False,
                          queue_arguments=rpc_queue_arguments(cfg) or None)


def alt_host_queue(cfg: Config) -> Queue:
    """``<topic>-alt.<host>``: where nova 6.5 sends migration and volume-connection calls.

    nova's second RPC server on its own topic, so those calls do not wait behind
    the host's other work in the broker; ours serves it like the host queue.
    """
    name = f"{cfg.topic}-alt.{cfg.host}"
    return ExclusiveQueue(name, control_exchange(cfg), routing_key=name,
                          durable=cfg.rabbit.amqp_durable_queues, auto_delete=False,
                          queue_arguments=rpc_queue_arguments(cfg) or None)


def shared_queue(cfg: Config) -> Queue:
    """``<topic>``: shared by every worker of the topic (off unless asked for)."""
    return Queue(cfg.topic, control_exchange(cfg), routing_key=cfg.topic,
                 durable=cfg.rabbit.amqp_durable_queues, auto_delete=False,
                 queue_arguments=rpc_queue_arguments(cfg) or None)


def dead_letter_queue(cfg: Config) -> Queue | None:
    """The queue that keeps rejected messages, when a dead-letter exchange is set."""
    if not cfg.rabbit.dead_letter_exchange:
        return None
    exchange = Exchange(cfg.rabbit.dead_letter_exchange, type="fanout", durable=True,
                        auto_delete=False)
    return Queue(cfg.rabbit.dead_letter_exchange, exchange, durable=True, auto_delete=False)


def fanout_exchange(cfg: Config) -> Exchange:
    """``<topic>_fanout``: a cast to every host of the topic."""
    return Exchange(f"{cfg.topic}_fanout", type="fanout", durable=False, auto_delete=True)


def fanout_queue(cfg: Config, unique: str) -> Queue:
    """``<topic>_fanout_<unique>``: this process's own copy of fanout casts."""
    return Queue(f"{cfg.topic}_fanout_{unique}", fanout_exchange(cfg), routing_key=cfg.topic,
                 durable=False, auto_delete=False,
                 queue_arguments={"x-expires": FANOUT_QUEUE_EXPIRES_MS})


def rpc_queues(cfg: Config, fanout_unique: str) -> list[Queue]:
    """Every queue the worker consumes."""
    queues = [host_queue(cfg), alt_host_queue(cfg), fanout_queue(cfg, fanout_unique)]
    if cfg.shared_queue:
        queues.append(shared_queue(cfg))
    return queues


def declared_only(cfg: Config) -> list[Queue]:
    """Queues the worker declares but does not consume."""
    dlq = dead_letter_queue(cfg)
    return [dlq] if dlq is not None else []


def notification_queues(cfg: Config) -> list[Queue]:
    """``<notification_topic>.<priority>``, declared so early events are kept (as oslo does)."""
    return [
        Queue(f"{cfg.notifications.notification_topic}.{p}", control_exchange(cfg),
              routing_key=f"{cfg.notifications.notification_topic}.{p}",
              durable=cfg.rabbit.amqp_durable_queues,
              auto_delete=False)
        for p in PRIORITIES
    ]
