"""Declaring our exchanges and queues, and saying what a refused declaration means.

RabbitMQ refuses to declare a queue or exchange again with other flags (406
PRECONDITION_FAILED): ``inequivalent arg 'durable' for queue
'versioned_notifications.info' in vhost '/': received 'false' but current is 'true'``.
Retrying cannot help; the operator must delete the old one or match its flags.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from amqp.exceptions import PreconditionFailed

from worker.errors import TopologyMismatch

# RabbitMQ's wording, 3.x: what differs, on what, what we sent and what it holds.
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' "
    r"in vhost '(?P<vhost>[^']*)': received (?P<ours>.*?) but current is (?P<theirs>.*)$")
#: Seconds between declaring again, after a reconnect found a clash: has someone acted?
MISMATCH_RECHECK = 30.0
#: The argument RabbitMQ names -> the option of ours that sets it.
OPTIONS = {
    "durable": "amqp_durable_queues",
    "x-queue-type": "rabbit_quorum_queue",
    "x-delivery-limit": "rabbit_quorum_delivery_limit",
    "x-max-in-memory-length": "rabbit_quorum_max_memory_length",
    "x-max-in-memory-bytes": "rabbit_quorum_max_memory_bytes",
    "x-expires": "rabbit_transient_queues_ttl",
    "x-dead-letter-exchange": "dead_letter_exchange",
}


def _value(text: str) -> str:
    """RabbitMQ's rendering of a value ('true', none, the value 'quorum' of type 'longstr')."""
    text = text.strip()
    if text == "none":
        return "unset"
    quoted = re.match(r"(?:the value )?'([^']*)'", text)
    return quoted.group(1) if quoted else text


def explain(exc: PreconditionFailed) -> TopologyMismatch:
    """One sentence for a refused declaration: which one, which argument, what to do."""
    text = str(exc)
    found = _INEQUIVALENT.search(text)
    if found is None:
        return TopologyMismatch(f"the broker refused a declaration: {text[:300]}")
    arg, kind, name = found["arg"], found["kind"], found["name"]
    ours, theirs = _value(found["ours"]), _value(found["theirs"])
    option = OPTIONS.get(arg)
    if kind == "queue":
        delete = f"delete the queue (rabbitmqctl delete_queue {name} -p {found['vhost']})"
    else:
        delete = f"delete the exchange (rabbitmqadmin delete exchange name={name})"
    if arg == "x-queue-type" and theirs in ("quorum", "classic", "unset"):
        match = f" or set {option} = {'true' if theirs == 'quorum' else 'false'}"
    elif option:
        match = f" or set {option} so that {arg} is {theirs}"
    else:
        match = f" or stop whatever declared it with {arg} {theirs}"
    return TopologyMismatch(
        f"{kind} {name!r} on the broker has {arg} {theirs} but this worker declares "
        f"{arg} {ours}" + (f" (option {option})" if option else "") + f": {delete}{match}")


def declare(entities: Iterable[Any]) -> None:
    """Declare each kombu Queue or Exchange (bound); TopologyMismatch when one clashes."""
    for entity in entities:
        try:
            entity.declare()
        except PreconditionFailed as exc:
            raise explain(exc) from None
