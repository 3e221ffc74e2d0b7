"""From a delivered body to a settled message: checks, order, journal, handler, events."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import structlog

from handlers.common import describe
from handlers.registry import API_VERSION, METHODS, Method
from worker import envelope, events, logs, signing
from worker.config import Config
from worker.context import Context
from worker.delivery import Delivery, Settle, Settlement
from worker.errors import (
    BadMessage,
    BadSignature,
    HypervisorUnavailable,
    InvalidEnvelope,
    JournalUnavailable,
    NoSuchMethod,
    UnsupportedVersion,
    WorkerError,
)
from worker.hypervisor import Hypervisor
from worker.journal import Journal, Outgoing
from worker.ordering import KeyedExecutor
from worker.outbox import Confirms, Outbox
from worker.paths import InstancePaths, canonical_uuid
from worker.retry import journal_policy, libvirt_policy
from worker.schemas import check_args

log = logs.get(__name__)
_T = TypeVar("_T")
_unordered = itertools.count()
# A verb's start event waits at most this long to leave with its end event.
START_HOLD = 0.05


def _parts(version: str) -> tuple[int, int, int]:
    numbers = [int(p) for p in version.split(".")] + [0]
    return numbers[0], numbers[1], numbers[2]


def compatible(version: str) -> bool:
    """oslo's rule: same major; minor (then revision) not above ours."""
    major, minor, rev = _parts(version)
    our_major, our_minor, our_rev = _parts(API_VERSION)
    return major == our_major and (minor, rev) <= (our_minor, our_rev)


def served(version: str, method: str) -> None:
    """UnsupportedVersion unless version is compatible with ours."""
    if not compatible(version):
        raise UnsupportedVersion(version, method)


def lookup(req: envelope.Request) -> Method:
    """The table entry for a request, checked in oslo's order.

    A namespace we do not serve, or an incompatible version, is
    UnsupportedVersion; only a compatible request for a method we lack is
    NoSuchMethod. Clients branch on these names.
    """
    if req.namespace is not None or not compatible(req.version):
        raise UnsupportedVersion(req.version, req.method)
    method = METHODS.get(req.method)
    if method is None:
        raise NoSuchMethod(req.method)
    return method


class Dispatcher:
    """Turns deliveries into handler runs in per-instance order, and settles each one."""

    def __init__(self, cfg: Config, hypervisor: Hypervisor, journal: Journal, outbox: Outbox,
                 executor: KeyedExecutor, paths: InstancePaths,
                 retry_sleep: Callable[[float], None] | None = None,
                 on_verb_end: Callable[[str, Any], None] | None = None,
                 signing_key: bytes | None = None,
                 on_fault: Callable[[str, str | None], None] | None = None) -> None:
        """on_fault(kind, reason or None): a fault the worker cannot ride through began or ended."""
        self.cfg = cfg
        self.hypervisor = hypervisor
        self.journal = journal
        self.outbox = outbox
        self.executor = executor
        self.paths = paths
        self._retry_sleep = retry_sleep
        self._on_verb_end = on_verb_end
        self._signing_key = signing_key
        self._on_fault = on_fault
        self.bad_signatures = 0
        self._lock = threading.Lock()
        # unique_id -> settle functions of every delivery of that message now
        # queued or running: a redelivery joins the run instead of repeating it.
        self._inflight: dict[str, list[Settle]] = {}
        # msg_id -> call-monitor handle, from delivery until the final reply.
        self._watches: dict[str, int] = {}
        # Messages finished and published, whose confirms are not all in yet.
        self._awaiting = 0
        self._no_awaiting = threading.Condition(self._lock)
        self.draining = False
        self.completed = 0
        self.rejected = 0

    # --- on the consumer thread: cheap, never blocks ------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """Accept one delivery: decode it and queue it behind its instance's earlier ones."""
        try:
            signed = self._signing_key is not None and self._check_signature(delivery)
            req = envelope.decode_request(delivery.body, self.cfg.max_message_bytes)
            if signed and req.unique_id is None:
                # Without an id the journal cannot tell a replay from the original.
                self.bad_signatures += 1
                raise BadSignature("a signed message must carry _unique_id")
        except Exception as exc:  # a decoder bug must not stall the queue either
            if not isinstance(exc, BadMessage):
                log.exception("decode_crashed")
                exc = InvalidEnvelope(f"undecodable message ({type(exc).__name__})")
            bad = exc  # ``exc`` is unbound when the except block ends; the task runs later
            self.executor.submit(("bad", next(_unordered)), self._guarded(
                None, delivery.settle, lambda: self._reject(None, bad, [delivery.settle])))
            return
        uid = req.unique_id
        if uid is not None:
            with self._lock:
                joined = self._inflight.get(uid)
                if joined is not None:
                    joined.append(delivery.settle)
                    log.info("redelivery_joined_running", unique_id=uid)
                    return
                self._inflight[uid] = [delivery.settle]
        if req.is_call and req.timeout:
            # Heartbeats start as soon as the call is ours, not when it runs:
            # a call waiting behind a slow verb must not time out its caller.
            assert req.reply_q is not None and req.msg_id is not None
            with self._lock:
                if req.msg_id not in self._watches:
                    self._watches[req.msg_id] = self.outbox.watch_call(
                        req.reply_q, req.msg_id, req.timeout / 2)
        key: Hashable = (req.instance_uuid.lower() if req.instance_uuid
                         else ("any", next(_unordered)))
        self.executor.submit(key, self._guarded(
            req, delivery.settle, lambda: self._handle(req, delivery.settle)))

    def _check_signature(self, delivery: Delivery) -> bool:
        """True when the delivery is signed (and the signature good); BadSignature if bad."""
        assert self._signing_key is not None
        try:
            return signing.verify(self._signing_key, delivery.body, delivery.headers,
                                  exchange=delivery.exchange, routing_key=delivery.routing_key,
                                  max_age=self.cfg.signature_max_age,
                                  required=self.cfg.require_signature)
        except BadSignature:
            self.bad_signatures += 1
            raise

    def _guarded(self, req: envelope.Request | None, settle: Settle,
                 task: Callable[[], None]) -> Callable[[], None]:
        """Wrap a task so that even a bug in it settles the message (dead-letters it)."""
        def run() -> None:
            structlog.contextvars.clear_contextvars()  # nothing bound by the thread's last task
            try:
                task()
            except Exception:
                # Requeueing would loop on the same bug; reject sends it to the
                # dead-letter exchange where one is configured.
                log.exception("dispatch_crashed_message_rejected")
                self._settle(req, settle, "reject")
        return run

    # --- on a verb thread -----------------------------------------------------------

    def _unwatch(self, req: envelope.Request | None) -> None:
        if req is not None and req.msg_id is not None:
            with self._lock:
                handle = self._watches.pop(req.msg_id, None)
            if handle is not None:
                self.outbox.unwatch_call(handle)

    def _settle(self, req: envelope.Request | None, first: Settle,
                action: Settlement) -> None:
        self._unwatch(req)
        settles = [first]
        if req is not None and req.unique_id is not None:
            with self._lock:
                settles = self._inflight.pop(req.unique_id, settles)
        for settle in settles:
            settle(action)

    def _handle(self, req: envelope.Request, settle: Settle) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=req.request_id, method=req.method, instance=req.instance_uuid,
            unique_id=req.unique_id)
        if self.draining:
            # Stopping: a message that has not started goes back to the queue.
            self._settle(req, settle, "requeue")
            return
        uid = req.unique_id
        try:
            entry = self._journal_call(lambda: self.journal.get(uid)) if uid else None
        except JournalUnavailable:
            self._settle(req, settle, "requeue")  # stopping while the journal is unreadable
            return
        if entry is not None:
            log.info("duplicate_skipped_already_completed")
            self._finish(req, settle, list(entry.outgoing))
            return
        try:
            method = lookup(req)
            args = check_args(method.schema, req.args)
        except BadMessage as exc:
            self._reject(req, exc, [settle])
            return
        ran = self._run(req, method, args)
        if ran is None:
            self._settle(req, settle, "requeue")
            return
        outgoing, changed, failed = ran
        if method.mutating and changed and uid is not None:
            # Outbox: the completion and what it must publish are on disk before
            # publishing; a crash after this re-publishes the same events.
            try:
                self._journal_call(lambda: self.journal.record(uid, outgoing))
            except JournalUnavailable:
                # Stopping with the journal still unwritable: nothing is acked
                # or published; the redelivery runs the (idempotent) verb again.
                log.error("journal_unwritable_at_stop_message_requeued")
                self._settle(req, settle, "requeue")
                return
        # Logged once recorded: a kill before this line leaves the verb to run
        # again (idempotently), and the log never claims a completion the
        # journal would not know after a restart.
        if not failed:
            log.info("verb_completed", action=method.action)
        self._finish(req, settle, outgoing)

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

    def _run(self, req: envelope.Request, method: Method,
             args: dict[str, Any]) -> tuple[list[Outgoing], bool, bool] | None:
        """Run the handler: the answers, whether it may have changed anything, whether it failed.

        None to requeue (libvirt away at a stop). A verb that failed saying it
        changed nothing (instance missing, wrong state) need not fill the journal.
        """
        ctx = Context(self.hypervisor, self.cfg, self.paths, req.request_id)
        held = None
        if method.action:
            held = self.outbox.hold(
                self._instance_event(req, method.action, "start", self._peek(req, ctx)),
                START_HOLD)
        result: Any = None
        answers: list[Outgoing] | None
        changed, failed = True, False
        try:
            try:
                result = method.handler(ctx, args)
            except HypervisorUnavailable:
                # Only now build the retry policy: the common path pays nothing for it.
                # Wait for libvirt here, holding this instance's place in line;
                # only a stop gives up (and then every later verb of the
                # instance goes back to the queue too, in order).
                policy = libvirt_policy(lambda: self.draining, self.cfg.libvirt_retry_seconds,
                                        **({"sleep": self._retry_sleep} if self._retry_sleep
                                           else {}))
                # A fresh Context each try: the domains ctx looked up belong to
                # the connection that broke, and would fail the same way again.
                result = policy(lambda: method.handler(
                    Context(self.hypervisor, self.cfg, self.paths, req.request_id), args))
            answers = self._answers(req, method, result=result)
        except HypervisorUnavailable as exc:
            log.error("libvirt_unavailable_at_stop_message_requeued", error=exc.message)
            answers = None
        except Exception as exc:  # every failure is answered, none crashes the worker
            if isinstance(exc, WorkerError) and exc.expected:
                log.warning("verb_failed", error=type(exc).__name__, reason=exc.message)
            else:
                log.exception("verb_crashed")
            answers = self._answers(req, method, error=exc)
            changed = not (isinstance(exc, WorkerError) and exc.changes_nothing)
            failed = True
        if held is not None:
            # Queued now, without a wake-up: the end event sent next carries it
            # along, so a quick verb's two events leave in one write.
            self.outbox.release(held)
        if self._on_verb_end is not None and method.action and req.instance_uuid:
            self._on_verb_end(req.instance_uuid.lower(), result)
        return None if answers is None else (answers, changed, failed)

    def _peek(self, req: envelope.Request, ctx: Context | None = None) -> dict[str, Any]:
        """The instance as it is now, for a start or error event; best effort.

        With the handler's ctx, the domain looked up here is the one the
        handler gets: one lookup per message, not two.
        """
        try:
            uuid = canonical_uuid(str(req.instance_uuid).lower())
            return describe(ctx.guest(uuid) if ctx is not None else self.hypervisor.guest(uuid))
        except WorkerError:
            return {}

    def _answers(self, req: envelope.Request, method: Method, result: Any = None,
                 error: BaseException | None = None) -> list[Outgoing]:
        out: list[Outgoing] = []
        if method.action:
            # An error event still says what state the instance is in now.
            state = result if isinstance(result, dict) else self._peek(req)
            if error is not None and method.vm_state_on_error is not None:
                state = {**state, "vm_state": method.vm_state_on_error}
            out.append(self._instance_event(req, method.action, "error" if error else "end",
                                            state, error))
        if req.is_call:
            assert req.reply_q is not None and req.msg_id is not None
            out.append(Outgoing("", req.reply_q, envelope.reply(req.msg_id, result, error), True))
        return out

    def _instance_event(self, req: envelope.Request, action: str, phase: str,
                        state: dict[str, Any], error: BaseException | None = None) -> Outgoing:
        data = {
            "uuid": state.get("uuid", req.instance_uuid),
            "name": state.get("name", (req.args.get("instance") or {}).get("name")),
            "host": self.cfg.host,
            "power_state": state.get("power_state"),
            "vm_state": state.get("vm_state"),
            "action": action,
            "request_id": req.request_id,
            "fault": events.fault(error) if error is not None else None,
        }
        event = events.notification(
            event_type=f"instance.{action}.{phase}", payload_name="InstanceActionPayload",
            data=data, publisher_id=self.cfg.event_publisher_id,
            topic=self.cfg.notification_topic, error=error is not None, source_id=req.unique_id)
        return self.event_outgoing(event)

    def event_outgoing(self, event: events.Event) -> Outgoing:
        """An event as a message on the control exchange."""
        return Outgoing(self.cfg.control_exchange, event.routing_key, envelope.wrap(event.message))

    def _reject(self, req: envelope.Request | None, exc: BadMessage,
                settles: list[Settle]) -> None:
        """Answer a message that cannot be served, then reject it (no requeue)."""
        self.rejected += 1
        partial = dict(exc.kwargs)
        if req is not None:
            partial.update(msg_id=req.msg_id, reply_q=req.reply_q, method=req.method,
                           unique_id=req.unique_id, request_id=req.request_id,
                           instance_uuid=req.instance_uuid)
        log.warning("message_rejected", error=type(exc).__name__, reason=exc.message[:300],
                    method=partial.get("method"), unique_id=partial.get("unique_id"))
        if partial.get("reply_q") and partial.get("msg_id"):
            body = envelope.reply(partial["msg_id"], error=exc)
            out = Outgoing("", partial["reply_q"], body, True)
        else:
            instance = partial.get("instance_uuid")
            data = {
                "host": self.cfg.host,
                "method": partial.get("method"),
                "unique_id": partial.get("unique_id"),
                "request_id": partial.get("request_id"),
                "instance_uuid": instance if isinstance(instance, str) else None,
                "fault": events.fault(exc),
            }
            out = self.event_outgoing(events.notification(
                event_type="rpc_message.reject.error", payload_name="RpcRejectPayload", data=data,
                publisher_id=self.cfg.event_publisher_id, topic=self.cfg.notification_topic,
                error=True, source_id=partial.get("unique_id")))
        self._finish(req, settles[0], [out], on_success="reject")

    def _finish(self, req: envelope.Request | None, settle: Settle,
                outgoing: list[Outgoing], on_success: Settlement = "ack") -> None:
        """Publish, then settle once the broker has confirmed all of it; unconfirmed: requeue.

        The verb thread does not wait for the confirms: the last one settles
        the message from the publisher's thread, and the verb thread is free
        for the instance's next message. Order still holds: the publisher
        sends in the order given, and a requeued mutating message is found in
        the journal when it comes back, so it never runs again after a later one.
        """
        self._unwatch(req)  # no heartbeat may follow the final reply
        with self._lock:
            self._awaiting += 1
        confirms = Confirms(len(outgoing),
                             lambda error: self._confirmed(req, settle, on_success, error))
        for out in outgoing:
            self.outbox.send(out).add_done_callback(confirms.done)

    def _confirmed(self, req: envelope.Request | None, settle: Settle, on_success: Settlement,
                   error: BaseException | None) -> None:
        try:
            if error is not None:  # unconfirmed or refused: it must be delivered again
                log.error("publish_unconfirmed_message_requeued", error=str(error)[:200])
                self._settle(req, settle, "requeue")
            else:
                self._settle(req, settle, on_success)
        finally:
            with self._lock:
                if on_success == "ack" and error is None:
                    self.completed += 1
                self._awaiting -= 1
                self._no_awaiting.notify_all()

    def wait_settled(self, timeout: float) -> bool:
        """Block until every finished message is settled (its confirms are in); False on timeout."""
        with self._no_awaiting:
            return self._no_awaiting.wait_for(lambda: self._awaiting == 0, timeout)
