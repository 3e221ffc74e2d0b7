"""What a publisher connection owes: unconfirmed publishes, and the clock they are timed on."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError

from worker.errors import PublishError
from worker.messages import Outgoing

#: A message to publish and the future its confirm resolves.
Item = tuple[Outgoing, "Future[None]"]
#: Told each message the broker settled: with None when confirmed, else why not.
Tally = Callable[[Outgoing, "str | None"], None]


def complete(future: Future[None], error: str | None) -> None:
    """Resolve a publish's future, unless it already is (a repeat must not raise in the reader)."""
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(PublishError(error))
    except InvalidStateError:
        pass


class Unconfirmed:
    """One connection's publishes not yet acked: delivery tag -> (item, when published)."""

    def __init__(self, tally: Tally | None = None) -> None:
        self.items: dict[int, tuple[Item, float]] = {}
        self._tally = tally
        self.next_tag = 1
        self._closed = False
        #: Publishes the broker nacked: kept in the table, to be published again.
        self.nacked = 0

    def add(self, item: Item, at: float) -> None:
        self.items[self.next_tag] = (item, at)
        self.next_tag += 1

    def settle(self, tag: int, multiple: bool, error: str | None) -> None:
        if self._closed:
            # A late ack of a connection given up (py-amqp reads while releasing
            # it): its items are queued again, their futures are the next one's.
            return
        # Tags are keys in publish order, so "all up to tag" is a prefix.
        tags = list(itertools.takewhile(lambda t: t <= tag, self.items)) if multiple else [tag]
        for t in tags:
            entry = self.items.pop(t, None)
            if entry is not None:
                complete(entry[0][1], error)
                if self._tally is not None:
                    self._tally(entry[0][0], error)

    def nack(self, tag: int, multiple: bool) -> None:
        """The broker refused these: count them and keep them, unsettled, in publish order.

        Never failed back to the caller: a nack is the broker's trouble (a quorum queue
        between leaders, a queue full), and a completed cast whose event failed would be
        requeued, run into the journal, republished and nacked again, until a delivery
        limit dropped it. The publisher opens a new connection and publishes them again.
        """
        if self._closed:
            return
        tags = list(itertools.takewhile(lambda t: t <= tag, self.items)) if multiple else [tag]
        self.nacked += sum(1 for t in tags if t in self.items)

    def take_all(self) -> list[Item]:
        """Close the table: its items in publish order; nothing settles here any more."""
        self._closed = True
        items = [item for item, _ in self.items.values()]
        self.items.clear()
        return items

    def oldest(self) -> float | None:
        # One connection's items, added in publish order: the first is the oldest.
        for _, at in self.items.values():
            return at
        return None


class Block:
    """Whether the broker blocks publishing, and a clock that stands still while it does."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._since = 0.0
        self._before = 0.0  # blocked seconds of every block that has ended

    def begin(self, reason: str) -> bool:
        """True if this starts a block (not already blocked)."""
        if self.reason is not None:
            return False
        self.reason, self._since = reason, time.monotonic()
        return True

    def end(self) -> bool:
        """True if this ends a block."""
        if self.reason is None:
            return False
        self.reason = None
        self._before += time.monotonic() - self._since
        return True

    def clock(self) -> float:
        """Unblocked seconds on a monotonic scale: publishes are timed on it."""
        now = self._since if self.reason is not None else time.monotonic()
        return now - self._before
