"""From a delivered body to a settled message: checks, order, journal, handler, answers."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from worker import logs
from worker.codec import envelope, nova_objects, signing
from worker.codec.envelope import Request
from worker.config import Config
from worker.core.answers import Answers
from worker.core.context import Context
from worker.core.inflight import InFlight, InFlightTable
from worker.core.journal import Journal
from worker.core.meter import Meter, NoMeter
from worker.core.methods import Answer, Method, MethodTable
from worker.core.ordering import KeyedExecutor
from worker.core.outbox import Outbox
from worker.core.peers import Arrivals, Peers
from worker.core.schemas import check_args
from worker.errors import (
    BadMessage,
    BadSignature,
    HypervisorUnavailable,
    InvalidEnvelope,
    JournalUnavailable,
    WorkerError,
)
from worker.messages import Delivery, Outgoing, Settlement
from worker.retry import Sleep, journal_policy, libvirt_policy
from worker.virt.hypervisor import Hypervisor
from worker.virt.paths import InstancePaths, canonical_uuid

log = logs.get(__name__)
_T = TypeVar("_T")
_unordered = itertools.count()
# A verb's start event waits at most this long to leave with its end event.
START_HOLD = 0.05


@dataclass(frozen=True)
class Ran:
    """What running a handler gave: the answers, and whether they go in the journal."""

    answers: list[Outgoing]
    #: A verb that failed before changing anything (instance missing, wrong state).
    changed: bool
    failed: bool
    #: Milliseconds the handler ran (retries while libvirt was away included).
    duration_ms: float = 0.0


def _ms_since(started: float) -> float:
    """Milliseconds since the monotonic time started, to 0.01 ms."""
    return round((time.monotonic() - started) * 1000, 2)


@dataclass(frozen=True)
class Lines:
    """Where tasks wait: ordered verbs in their instance's line, the rest in a pool of their own."""

    ordered: KeyedExecutor
    unordered: KeyedExecutor


class Dispatcher:
    """Turns deliveries into handler runs in per-instance order, and settles each one."""

    def __init__(self, cfg: Config, table: MethodTable, hypervisor: Hypervisor, journal: Journal,
                 outbox: Outbox, lines: Lines, paths: InstancePaths, answers: Answers, *,
                 retry_sleep: Sleep | None = None,
                 on_verb_end: Callable[[str, Any], None] | None = None,
                 signing_key: bytes | None = None,
                 on_fault: Callable[[str, str | None], None] | None = None,
                 peers: Peers | None = None, arrivals: Arrivals | None = None,
                 meter: Meter | None = None) -> None:
        """on_fault(kind, reason or None): a fault the worker cannot ride through began or ended.

        peers: how handlers reach other hosts' workers; arrivals: the instances
        coming in by live migration (shared with the state watch); meter: told
        each message's outcome (metrics).
        """
        self.cfg = cfg
        self.table = table
        self.hypervisor = hypervisor
        self.journal = journal
        self.outbox = outbox
        self.lines = lines
        self.paths = paths
        self.answers = answers
        self.inflight = InFlightTable(outbox)
        self._retry_sleep = retry_sleep
        self._on_verb_end = on_verb_end
        self._signing_key = signing_key
        self._on_fault = on_fault
        self.peers = peers
        self.arrivals = arrivals if arrivals is not None else Arrivals()
        self.bad_signatures = 0
        self.draining = False
        self._count_lock = threading.Lock()  # confirms settle from the publisher's thread
        self.completed = 0
        self.rejected = 0
        self.meter: Meter = meter if meter is not None else NoMeter()

    # --- on the consumer thread: cheap, never blocks ------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """Accept one delivery: decode it and queue it behind its instance's earlier ones."""
        try:
            signed = self._signing_key is not None and self._check_signature(delivery)
            req = envelope.decode_request(delivery.body, self.cfg.worker.max_message_bytes)
            if signed and req.unique_id is None:
                # Without an id the journal cannot tell a replay from the original.
                self.bad_signatures += 1
                raise BadSignature("a signed message must carry _unique_id")
        except Exception as exc:  # a decoder bug must not stall the queue either
            if not isinstance(exc, BadMessage):
                log.exception("decode_crashed")
                exc = InvalidEnvelope(f"undecodable message ({type(exc).__name__})")
            bad = exc  # ``exc`` is unbound when the except block ends; the task runs later
            record = InFlight(self.inflight, None, delivery.settle)
            self.lines.unordered.submit(("bad", next(_unordered)),
                                        self._guarded(record, lambda: self._reject(record, bad)))
            return
        opened = self.inflight.open(req, delivery.settle)
        if opened is None:  # a redelivery joined the run of its message
            self.meter.message(req.method, "duplicate")
            if delivery.redelivered:
                self.meter.redelivery_absorbed()
            return
        record = opened
        record.redelivered = delivery.redelivered
        if req.is_call and req.timeout:
            # Heartbeats start as soon as the call is ours, not when it runs:
            # a call waiting behind a slow verb must not time out its caller.
            record.watch(self.outbox, req.timeout / 2)
        method = self.table.methods.get(req.method)
        if req.instance_uuid and (method is None or method.ordered):
            self.lines.ordered.submit(req.instance_uuid.lower(),
                                      self._guarded(record, lambda: self._handle(record)))
        else:
            # A query answers while a slow verb holds its instance's line.
            key: Hashable = ("any", next(_unordered))
            self.lines.unordered.submit(key, self._guarded(record, lambda: self._handle(record)))

    def _check_signature(self, delivery: Delivery) -> bool:
        """True when the delivery is signed (and the signature good); BadSignature if bad."""
        assert self._signing_key is not None
        try:
            return signing.verify(self._signing_key, delivery.body, delivery.headers,
                                  exchange=delivery.exchange, routing_key=delivery.routing_key,
                                  max_age=self.cfg.worker.signature_max_age,
                                  required=self.cfg.worker.require_signature)
        except BadSignature as exc:
            self.bad_signatures += 1
            # Named in the reject event, so that its sender (compute-worker cast --wait)
            # learns why; no reply to an unsigned call: it must not make us publish anywhere.
            exc.kwargs.update(envelope.named(delivery.body, self.cfg.worker.max_message_bytes))
            raise

    @staticmethod
    def _guarded(record: InFlight, task: Callable[[], None]) -> Callable[[], None]:
        """Wrap a task so that even a bug in it settles the message (dead-letters it)."""
        def run() -> None:
            structlog.contextvars.clear_contextvars()  # nothing bound by the thread's last task
            try:
                task()
            except Exception:
                # Requeueing would loop on the same bug; reject sends it to the
                # dead-letter exchange where one is configured.
                log.exception("dispatch_crashed_message_rejected")
                record.settle("reject")
        return run

    # --- on a verb thread -----------------------------------------------------------

    def _handle(self, record: InFlight) -> None:
        req = record.req
        assert req is not None
        structlog.contextvars.bind_contextvars(
            request_id=req.request_id, method=req.method, instance=req.instance_uuid,
            unique_id=req.unique_id)
        if self.draining:
            # Stopping: a message that has not started goes back to the queue.
            record.settle("requeue")
            return
        uid = req.unique_id
        try:
            entry = self._journal_call(lambda: self.journal.get(uid)) if uid else None
        except JournalUnavailable:
            record.settle("requeue")  # stopping while the journal is unreadable
            return
        if entry is not None:
            log.info("duplicate_skipped_already_completed")
            self.meter.message(req.method, "duplicate")
            if record.redelivered:
                self.meter.redelivery_absorbed()
            self._finish(record, list(entry.outgoing))
            return
        try:
            method = self.table.lookup(req)
            # The schema sees nova's object envelopes; the handler gets their data.
            args = nova_objects.plain_args(check_args(method.schema, req.args))
        except BadMessage as exc:
            self._reject(record, exc)
            return
        ran = self._run(req, method, args)
        if ran is None:
            record.settle("requeue")
            return
        if method.mutating and ran.changed and uid is not None:
            # Outbox: the completion and what it must publish are on disk before
            # publishing; a crash after this re-publishes the same events.
            try:
                self._journal_call(lambda: self.journal.record(uid, ran.answers))
            except JournalUnavailable:
                # Stopping with the journal still unwritable: nothing is acked
                # or published; the redelivery runs the (idempotent) verb again.
                log.error("journal_unwritable_at_stop_message_requeued")
                record.settle("requeue")
                return
        # Logged once recorded: a kill before this line leaves the verb to run
        # again (idempotently), and the log never claims a completion the
        # journal would not know after a restart.
        if not ran.failed:
            log.info("verb_completed", action=method.action, duration_ms=ran.duration_ms)
        self.meter.message(req.method, "error" if ran.failed else "ok", ran.duration_ms / 1000)
        self._finish(record, ran.answers)

    def _journal_call(self, call: Callable[[], _T]) -> _T:
        """call() on the journal, waiting out a journal that cannot be used (a full disk).

        Meanwhile the worker takes no messages and says why (on_fault); this
        message keeps its place in its instance's line and its events wait.
        Raises JournalUnavailable only when stopping.
        """
        try:
            return call()
        except JournalUnavailable as exc:
            reason = exc.message
        log.error("journal_unusable_consuming_paused", reason=reason)
        if self._on_fault is not None:
            self._on_fault("journal", f"journal unusable: {reason}")
        result = journal_policy(lambda: self.draining)(call)
        log.info("journal_usable_again")
        if self._on_fault is not None:
            self._on_fault("journal", None)
        return result

    def _context(self, req: Request, instance: dict[str, Any] | None = None,
                 args: dict[str, Any] | None = None) -> Context:
        def notify(action: str, phase: str, state: dict[str, Any]) -> None:
            # Sent at once, outside the journal: a phase event repeated after a
            # crash says again what happened; the verb's end is what is journaled.
            self.outbox.send(self.answers.instance_action(
                req, instance or {}, action, phase, state, args=args,
                once=phase != "progress"))
        return Context(self.hypervisor, self.cfg, self.paths, req.request_id, peers=self.peers,
                       notify=notify, arrivals=self.arrivals)

    def _run(self, req: Request, method: Method, args: dict[str, Any]) -> Ran | None:
        """Run the handler and build its answers; None to requeue (libvirt away at a stop)."""
        given = args.get("instance")
        instance: dict[str, Any] = given if isinstance(given, dict) else {}
        ctx = self._context(req, instance, args)
        if instance and req.instance_uuid:
            self.answers.remember(req.instance_uuid.lower(), instance)
        held = None
        if method.action:
            held = self.outbox.hold(self.answers.instance_action(
                req, instance, method.action, "start", self._peek(req, ctx), args=args),
                START_HOLD)
        result: Any = None
        ran: Ran | None
        started = time.monotonic()
        try:
            try:
                result = method.handler(ctx, args)
            except HypervisorUnavailable:
                # Only now build the retry policy: the common path pays nothing for it.
                # Wait for libvirt here, holding this instance's place in line;
                # only a stop gives up (and then every later verb of the
                # instance goes back to the queue too, in order).
                policy = libvirt_policy(lambda: self.draining,
                                        self.cfg.libvirt.libvirt_retry_seconds,
                                        **({"sleep": self._retry_sleep} if self._retry_sleep
                                           else {}))
                # A fresh Context each try: the domains ctx looked up belong to
                # the connection that broke, and would fail the same way again.
                result = policy(lambda: method.handler(self._context(req, instance, args), args))
            ran = Ran(self._answers(req, method, instance, args, result=result), changed=True,
                      failed=False, duration_ms=_ms_since(started))
        except HypervisorUnavailable as exc:
            log.error("libvirt_unavailable_at_stop_message_requeued", error=exc.message)
            ran = None
        except Exception as exc:  # every failure is answered, none crashes the worker
            took = _ms_since(started)
            if isinstance(exc, WorkerError) and exc.expected:
                log.warning("verb_failed", error=type(exc).__name__, reason=exc.message,
                            duration_ms=took)
            else:
                log.exception("verb_crashed", duration_ms=took)
            ran = Ran(self._answers(req, method, instance, args, error=exc),
                      changed=not (isinstance(exc, WorkerError) and exc.changes_nothing),
                      failed=True, duration_ms=took)
        if held is not None:
            # Queued now, without a wake-up: the end event sent next carries it
            # along, so a quick verb's two events leave in one write.
            self.outbox.release(held)
        if self._on_verb_end is not None and (method.action or method.tracks_state) \
                and req.instance_uuid:
            self._on_verb_end(req.instance_uuid.lower(),
                              result.state if isinstance(result, Answer) else result)
        return ran

    def _peek(self, req: Request, ctx: Context | None = None) -> dict[str, Any]:
        """The instance as it is now, for a start or error event; best effort.

        With the handler's ctx, the domain looked up here is the one the
        handler gets: one lookup per message, not two.
        """
        try:
            uuid = canonical_uuid(str(req.instance_uuid).lower())
            guest = ctx.guest(uuid) if ctx is not None else self.hypervisor.guest(uuid)
            return guest.describe()
        except WorkerError:
            return {}

    def _answers(self, req: Request, method: Method, instance: dict[str, Any],
                 args: dict[str, Any], result: Any = None,
                 error: BaseException | None = None) -> list[Outgoing]:
        out: list[Outgoing] = []
        reply = result
        if isinstance(result, Answer):
            result, reply = result.state, result.reply
        if method.action:
            # An error event still says what state the instance is in now.
            state = result if isinstance(result, dict) else self._peek(req)
            if error is not None and method.vm_state_on_error is not None:
                state = {**state, "vm_state": method.vm_state_on_error}
            out.append(self.answers.instance_action(
                req, instance, method.action, "error" if error else "end", state, error,
                args))
            if error is None and state.get("vm_state") == "deleted" and req.instance_uuid:
                self.answers.remember(req.instance_uuid.lower(), None)
        if req.is_call:
            out.append(self.answers.reply(req, reply, error))
        return out

    def _reject(self, record: InFlight, exc: BadMessage) -> None:
        """Answer a message that cannot be served, then reject it (no requeue)."""
        self.rejected += 1
        req = record.req
        # Any name (or none): the meter keeps a method off its labels unless the table has it.
        self.meter.message(req.method if req else str(exc.kwargs.get("method") or ""),
                           "rejected")
        log.warning("message_rejected", error=type(exc).__name__, reason=exc.message[:300],
                    method=req.method if req else exc.kwargs.get("method"),
                    unique_id=req.unique_id if req else exc.kwargs.get("unique_id"))
        self._finish(record, [self.answers.rejection(req, exc)], on_success="reject")

    def _finish(self, record: InFlight, outgoing: list[Outgoing],
                on_success: Settlement = "ack") -> None:
        """Publish, then settle once the broker has confirmed all of it; unconfirmed: requeue.

        The verb thread does not wait for the confirms: the last one settles
        the message from the publisher's thread, and the verb thread is free
        for the instance's next message. Order still holds: the publisher
        sends in the order given, and a requeued mutating message is found in
        the journal when it comes back, so it never runs again after a later one.
        """
        record.publish(outgoing, on_success, self._confirmed)

    def _confirmed(self, record: InFlight, on_success: Settlement,
                   error: BaseException | None) -> None:
        if error is not None:  # unconfirmed or refused: it must be delivered again
            log.error("publish_unconfirmed_message_requeued", error=str(error)[:200])
            record.settle("requeue")
            return
        record.settle(on_success)
        if on_success == "ack":
            with self._count_lock:
                self.completed += 1

    def wait_settled(self, timeout: float) -> bool:
        """Block until every finished message is settled (its confirms are in); False on timeout."""
        return self.inflight.wait_settled(timeout)
