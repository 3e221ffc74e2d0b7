"""AMQP topology as data: the exchanges and queues oslo.messaging declares, flag for flag."""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from worker.config import Config

PRIORITIES = ("info", "error")


def durable(cfg: Config) -> bool:
    """Whether the exchange and the topic queues are durable: oslo's ``Connection.durable``.

    Quorum queues are always durable, so oslo makes everything durable with them,
    whatever amqp_durable_queues says; a worker that did not would 406 against
    nova's services on the shared exchange and event queues.
    """
    return cfg.rabbit.amqp_durable_queues or cfg.rabbit.rabbit_quorum_queue


def control_exchange(cfg: Config) -> Exchange:
    """The topic exchange RPC and events share (``nova`` by default)."""
    # RabbitMQ refuses a re-declare with other flags (406), so these must be
    # exactly oslo's: durable as durable() says, never auto-delete.
    return Exchange(cfg.control_exchange, type="topic", durable=durable(cfg), auto_delete=False)


def quorum_arguments(cfg: Config) -> dict[str, Any]:
    """oslo's ``_get_queue_arguments`` for a topic queue: the quorum type and its limits."""
    rabbit = cfg.rabbit
    if not rabbit.rabbit_quorum_queue:
        return {}
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    # Set only when asked for, as oslo does: an argument oslo leaves out and we put
    # in (or the other way round) is a 406 against nova's declaration of the queue.
    for arg, value in (("x-delivery-limit", rabbit.rabbit_quorum_delivery_limit),
                       ("x-max-in-memory-length", rabbit.rabbit_quorum_max_memory_length),
                       ("x-max-in-memory-bytes", rabbit.rabbit_quorum_max_memory_bytes)):
        if value:
            args[arg] = value
    return args


def rpc_queue_arguments(cfg: Config) -> dict[str, Any]:
    """x-arguments of the RPC queues: oslo's quorum arguments, and our dead-lettering."""
    # A queue re-declared with other arguments is refused (406): changing
    # these on a live deployment means deleting the queue first.
    args = quorum_arguments(cfg)
    if cfg.rabbit.dead_letter_exchange:
        args["x-dead-letter-exchange"] = cfg.rabbit.dead_letter_exchange
    return args


def consumer_arguments(cfg: Config, *, classic: bool = False) -> dict[str, Any] | None:
    """basic.consume arguments (oslo's enable_cancel_on_failover) of an RPC queue.

    Only on classic queues: RabbitMQ 3.10 refuses the argument on a quorum queue (406
    "invalid arg 'x-cancel-on-ha-failover' ... of queue type rabbit_quorum_queue", seen
    here), and a quorum queue moves its consumers to a new leader by itself.
    """
    rabbit = cfg.rabbit
    wanted = rabbit.enable_cancel_on_failover and (classic or not rabbit.rabbit_quorum_queue)
    return {"x-cancel-on-ha-failover": True} if wanted else None


class ConsumedQueue(Queue):  # type: ignore[misc]  # kombu is untyped here
    """A queue the worker consumes, told when the broker cancels its consumer.

    RabbitMQ sends basic.cancel when the queue is deleted, or its node goes, or (with
    x-cancel-on-ha-failover) its mirror fails over. kombu's Consumer registers no
    on_cancel, so py-amqp would raise ConsumerCancelled and cost the whole connection
    (and the settlement of every delivery on it); the consumer sets on_cancelled to
    declare the queue again and resubscribe on the same channel instead. Copies made
    by binding keep it.
    """

    #: basic.consume's exclusive bit (not kombu's ``exclusive``, which is the queue's own).
    exclusive_consumer = False
    #: Called with the queue's name when the broker cancels our consumer of it.
    on_cancelled: Any = None

    def bind(self, channel: Any) -> Any:
        """A bound copy that keeps on_cancelled (kombu copies only its own attributes)."""
        bound = super().bind(channel)
        bound.on_cancelled = self.on_cancelled
        return bound

    def consume(self, consumer_tag: str = "", callback: Any = None, no_ack: bool | None = None,
                nowait: bool = False, on_cancel: Any = None) -> Any:
        """kombu's Queue.consume, with our cancel callback and exclusive bit."""
        if on_cancel is None and self.on_cancelled is not None:
            told, name = self.on_cancelled, self.name

            def on_cancel(_tag: str) -> None:
                told(name)
        return self.channel.basic_consume(
            queue=self.name, no_ack=self.no_ack if no_ack is None else no_ack,
            consumer_tag=consumer_tag or "", callback=callback, nowait=nowait,
            arguments=self.consumer_arguments, on_cancel=on_cancel,
            exclusive=self.exclusive_consumer)


class ExclusiveQueue(ConsumedQueue):
    """A queue consumed exclusively: the broker refuses a second consumer (403)."""

    exclusive_consumer = True


def host_queue(cfg: Config) -> Queue:
    """``<topic>.<host>``: what a scheduler casts to for this host; one worker consumes it.

    Two workers given the same host would split its casts and break
    per-instance order, so the consumer is exclusive: a second one is refused.
    """
    name = f"{cfg.topic}.{cfg.host}"
    return ExclusiveQueue(name, control_exchange(cfg), routing_key=name,
                          durable=durable(cfg), auto_delete=False,
                          queue_arguments=rpc_queue_arguments(cfg) or None,
                          consumer_arguments=consumer_arguments(cfg))


def alt_host_queue(cfg: Config) -> Queue:
    """``<topic>-alt.<host>``: where nova 6.5 sends migration and volume-connection calls.

    nova's second RPC server on its own topic, so those calls do not wait behind
    the host's other work in the broker; ours serves it like the host queue.
    """
    name = f"{cfg.topic}-alt.{cfg.host}"
    return ExclusiveQueue(name, control_exchange(cfg), routing_key=name,
                          durable=durable(cfg), auto_delete=False,
                          queue_arguments=rpc_queue_arguments(cfg) or None,
                          consumer_arguments=consumer_arguments(cfg))


def shared_queue(cfg: Config) -> Queue:
    """``<topic>``: shared by every worker of the topic (off unless asked for)."""
    return ConsumedQueue(cfg.topic, control_exchange(cfg), routing_key=cfg.topic,
                         durable=durable(cfg), auto_delete=False,
                         queue_arguments=rpc_queue_arguments(cfg) or None,
                         consumer_arguments=consumer_arguments(cfg))


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
    """``<topic>_fanout_<unique>``: this process's own copy of fanout casts.

    Classic and transient whatever rabbit_quorum_queue says, as oslo's (a quorum
    queue cannot be transient): its exchange is auto-delete and the queue goes
    rabbit_transient_queues_ttl after its last consumer. On a cluster it lives on
    one node; when that node goes, the consumer declares it again on another.
    """
    ttl = cfg.rabbit.rabbit_transient_queues_ttl
    return ConsumedQueue(f"{cfg.topic}_fanout_{unique}", fanout_exchange(cfg),
                         routing_key=cfg.topic, durable=False, auto_delete=False,
                         queue_arguments={"x-expires": ttl * 1000} if ttl else None,
                         consumer_arguments=consumer_arguments(cfg, classic=True))


def rpc_queues(cfg: Config, fanout_unique: str) -> list[ConsumedQueue]:
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
    """``<notification_topic>.<priority>``, declared so early events are kept (as oslo does).

    With oslo's own arguments (its notifier declares them too): quorum ones
    when rabbit_quorum_queue is on, never our dead-letter exchange.
    """
    return [
        Queue(f"{cfg.notifications.notification_topic}.{p}", control_exchange(cfg),
              routing_key=f"{cfg.notifications.notification_topic}.{p}",
              durable=durable(cfg), auto_delete=False,
              queue_arguments=quorum_arguments(cfg) or None)
        for p in PRIORITIES
    ]
