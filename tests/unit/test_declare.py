"""A declaration RabbitMQ refuses (406) becomes one sentence: which, what differs, what to do."""

from __future__ import annotations

import pytest
from amqp.exceptions import PreconditionFailed

from worker.amqp.declare import explain

# RabbitMQ 3.10's own wording, as it answered here.
DURABLE = ("PRECONDITION_FAILED - inequivalent arg 'durable' for queue "
           "'versioned_notifications.info' in vhost '/': received 'false' but current is 'true'")
QUORUM = ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'compute.h1' in "
          "vhost '/': received none but current is the value 'quorum' of type 'longstr'")
EXCHANGE = ("PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'nova' in vhost '/': "
            "received 'topic' but current is 'fanout'")


@pytest.mark.parametrize("text, expected", [
    (DURABLE, "queue 'versioned_notifications.info' on the broker has durable true but this "
              "worker declares durable false (option amqp_durable_queues): delete the queue "
              "(rabbitmqctl delete_queue versioned_notifications.info -p /) or set "
              "amqp_durable_queues so that durable is true"),
    (QUORUM, "queue 'compute.h1' on the broker has x-queue-type quorum but this worker declares "
             "x-queue-type unset (option rabbit_quorum_queue): delete the queue (rabbitmqctl "
             "delete_queue compute.h1 -p /) or set rabbit_quorum_queue = true"),
    (EXCHANGE, "exchange 'nova' on the broker has type fanout but this worker declares type "
               "topic: delete the exchange (rabbitmqadmin delete exchange name=nova) or stop "
               "whatever declared it with type fanout"),
])
def test_the_refusal_names_the_queue_the_argument_and_the_fix(text: str, expected: str) -> None:
    """Each 406 wording RabbitMQ uses turns into its sentence."""
    assert expected == explain(PreconditionFailed(text, (50, 10), reply_code=406)).message


def test_a_refusal_of_another_wording_is_passed_on_whole() -> None:
    """A 406 this module cannot parse still says what the broker said."""
    exc = PreconditionFailed("PRECONDITION_FAILED - something new", (50, 10), reply_code=406)

    assert explain(exc).message.startswith("the broker refused a declaration: ")
    assert "something new" in explain(exc).message
