"""What a broker fault means for the person at the keyboard: the problem, and what to do."""

from __future__ import annotations

import re

import amqp.exceptions

from worker.errors import WorkerError

#: RabbitMQ's words for a declaration that differs from what it holds (a 406).
_MISMATCH = re.compile(r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>exchange|queue) "
                       r"'(?P<name>[^']+)'.*received '(?P<ours>[^']*)' but current is "
                       r"'(?P<theirs>[^']*)'")


class BrokerError(WorkerError):
    """The broker cannot be reached, or refused what the client declared or sent."""


def diagnose(exc: BaseException, shown_url: str) -> tuple[str, str]:
    """What went wrong with the broker, and what to do about it."""
    text = str(exc)
    found = _MISMATCH.search(text)
    if found:
        kind, name, arg = found["kind"], found["name"], found["arg"]
        problem = (f"the broker holds {kind} {name!r} with {arg}={found['theirs']}, "
                   f"declared here with {arg}={found['ours']}")
        delete = (f"rabbitmqctl delete_queue {name}" if kind == "queue"
                  else f"rabbitmqadmin delete exchange name={name}")
        if arg == "durable":
            flag = ("--amqp-durable-queues" if found["theirs"] == "true"
                    else "--no-amqp-durable-queues")
            # rabbit_quorum_queue makes everything durable too, as oslo's does.
            quorum = ("; a deployment on quorum queues sets rabbit_quorum_queue = true, "
                      "which makes it durable too" if found["theirs"] == "true" else "")
            return problem, (f"set amqp_durable_queues = {found['theirs']} in "
                             f"[oslo_messaging_rabbit] as the deployment has it (or pass {flag})"
                             f"{quorum}, or, when nothing uses it, delete the {kind} ({delete})")
        return problem, (f"match the option that sets {arg} (rabbit_quorum_queue, "
                         "rabbit_quorum_delivery_limit, dead_letter_exchange), "
                         f"or delete the {kind} ({delete})")
    if isinstance(exc, amqp.exceptions.AccessRefused) or "ACCESS_REFUSED" in text:
        return (f"the broker at {shown_url} refused the login ({text[:200]})",
                "check the user and password in transport_url "
                "(rabbitmqctl authenticate_user USER PASSWORD)")
    if isinstance(exc, amqp.exceptions.NotAllowed) or "vhost" in text.lower():
        return (f"the broker at {shown_url} refused the virtual host ({text[:200]})",
                "check the vhost at the end of transport_url and the user's permissions "
                "(rabbitmqctl list_permissions -p VHOST)")
    if "certificate" in text.lower() or "ssl" in type(exc).__name__.lower():
        return (f"TLS with the broker at {shown_url} failed ({text[:200]})",
                "check ssl_ca_file and that the broker's certificate names the host in "
                "transport_url")
    return (f"cannot reach the broker at {shown_url} ({type(exc).__name__}: {text[:200]})",
            "start RabbitMQ there (systemctl start rabbitmq-server), or point transport_url "
            "at a broker that runs")


def explain(exc: BaseException, shown_url: str) -> str:
    """diagnose() as one line: the problem, then what to do."""
    problem, fix = diagnose(exc, shown_url)
    return f"{problem}: {fix}"


def fix_for_broker(exc: BaseException) -> str:
    """What to do about a broker fault."""
    return diagnose(exc, "")[1]
