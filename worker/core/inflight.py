"""One record per message from delivery to settlement, across the three threads it crosses.

The consumer thread opens it (and a redelivery of the same ``_unique_id`` joins it instead of
running again), a verb thread runs and publishes it, and the publisher thread settles it
when the broker has confirmed the last of its messages. It carries what used to live in
three dicts and a counter under one lock: whom to settle, the call-monitor watch, and the
confirms still owed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from worker import logs
from worker.codec.envelope import Request
from worker.core.outbox import Outbox
from worker.messages import Outgoing, Settle, Settlement

log = logs.get(__name__)


class InFlight:
    """One message: the settle functions of its deliveries, its heartbeats, its confirms."""

    def __init__(self, table: InFlightTable, req: Request | None, settle: Settle) -> None:
        self.req = req
        #: The broker marked the delivery that opened it redelivered.
        self.redelivered = False
        self._table = table
        self._settles = [settle]
        self._watch: int | None = None
        self._owed = 0  # confirms not yet in, once published
        self._done = False
        self._lock = threading.Lock()

    def join(self, settle: Settle) -> bool:
        """A redelivery of this message joins the run; False when it was already settled."""
        with self._lock:
            if self._done:
                return False
            self._settles.append(settle)
            return True

    def watch(self, outbox: Outbox, interval: float) -> None:
        """Send call-monitor heartbeats from now until the final reply."""
        assert self.req is not None and self.req.reply_q is not None
        assert self.req.msg_id is not None
        with self._lock:
            if self._watch is None and not self._done:
                self._watch = outbox.watch_call(self.req.reply_q, self.req.msg_id, interval)

    def unwatch(self, outbox: Outbox) -> None:
        """No heartbeat may follow the final reply."""
        with self._lock:
            handle, self._watch = self._watch, None
        if handle is not None:
            outbox.unwatch_call(handle)

    def settle(self, action: Settlement) -> None:
        """Settle every delivery of the message, once."""
        self.unwatch(self._table.outbox)
        with self._lock:
            if self._done:
                return
            self._done = True
            settles = list(self._settles)
        self._table.forget(self)
        for settle in settles:
            settle(action)

    def publish(self, outgoing: list[Outgoing], on_success: Settlement,
                then: Callable[[InFlight, Settlement, BaseException | None], None]) -> None:
        """Send outgoing in order; settle on the last confirm (requeue on the first failure).

        The verb thread does not wait: the publisher's thread calls back ``then``.
        """
        self.unwatch(self._table.outbox)
        with self._lock:
            self._owed = len(outgoing)
        self._table.publishing(+1)
        if not outgoing:
            self._confirmed(on_success, then, None)
            return
        for out in outgoing:
            future = self._table.outbox.send(out)
            future.add_done_callback(
                lambda f: self._confirm(f, on_success, then))

    def _confirm(self, future: Future[None], on_success: Settlement,
                 then: Callable[[InFlight, Settlement, BaseException | None], None]) -> None:
        error = future.exception()
        with self._lock:
            if self._owed <= 0:
                return  # already settled by an earlier failure
            self._owed = 0 if error is not None else self._owed - 1
            last = self._owed == 0
        if last:
            self._confirmed(on_success, then, error)

    def _confirmed(self, on_success: Settlement,
                   then: Callable[[InFlight, Settlement, BaseException | None], None],
                   error: BaseException | None) -> None:
        try:
            then(self, on_success, error)
        finally:
            self._table.publishing(-1)


class InFlightTable:
    """Every message between delivery and settlement; the ones with an id by their id."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._by_id: dict[str, InFlight] = {}
        self._lock = threading.Lock()
        self._publishing = 0  # published, confirms not all in
        self._quiet = threading.Condition(self._lock)

    def open(self, req: Request | None, settle: Settle) -> InFlight | None:
        """A record for a new delivery; None when it joined a run of the same message."""
        uid = req.unique_id if req is not None else None
        with self._lock:
            running = self._by_id.get(uid) if uid is not None else None
        if running is not None and running.join(settle):
            log.info("redelivery_joined_running", unique_id=uid)
            return None
        record = InFlight(self, req, settle)
        if uid is not None:
            with self._lock:
                self._by_id[uid] = record
        return record

    def forget(self, record: InFlight) -> None:
        """A settled record: a later delivery of its id is a new run (or a journal hit)."""
        uid = record.req.unique_id if record.req is not None else None
        if uid is None:
            return
        with self._lock:
            if self._by_id.get(uid) is record:
                del self._by_id[uid]

    def publishing(self, change: int) -> None:
        """Count records whose confirms are still owed."""
        with self._lock:
            self._publishing += change
            if self._publishing == 0:
                self._quiet.notify_all()

    def wait_settled(self, timeout: float) -> bool:
        """Block until no published message awaits its confirms; False on timeout."""
        with self._quiet:
            return self._quiet.wait_for(lambda: self._publishing == 0, timeout)
