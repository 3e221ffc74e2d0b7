"""AMQP topology as data: the exchanges and queues oslo.messaging declares, flag for flag."""

from __future__ import annotations

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
    return Exchange(cfg.control_exchange, type="topic", durable=cfg.amqp_durable_queues,
                    auto_delete=False)


def host_queue(cfg: Config) -> Queue:
    """``<topic>.<host>``: what a scheduler casts to for this host."""
    name = f"{cfg.topic}.{cfg.host}"
    return Queue(name, control_exchange(cfg), routing_key=name, durable=cfg.amqp_durable_queues,
                 auto_delete=False)


def shared_queue(cfg: Config) -> Queue:
    """``<topic>``: shared by every worker of the topic (off unless asked for)."""
    return Queue(cfg.topic, control_exchange(cfg), routing_key=cfg.topic,
                 durable=cfg.amqp_durable_queues, auto_delete=False)


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
    queues = [host_queue(cfg), fanout_queue(cfg, fanout_unique)]
    if cfg.shared_queue:
        queues.append(shared_queue(cfg))
    return queues


def notification_queues(cfg: Config) -> list[Queue]:
    """``<notification_topic>.<priority>``, declared so early events are kept (as oslo does)."""
    return [
        Queue(f"{cfg.notification_topic}.{p}", control_exchange(cfg),
              routing_key=f"{cfg.notification_topic}.{p}", durable=cfg.amqp_durable_queues,
              auto_delete=False)
        for p in PRIORITIES
    ]
