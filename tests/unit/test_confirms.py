"""A publisher connection's unconfirmed table and its blocked-time clock."""

from __future__ import annotations

import time
from concurrent.futures import Future

from worker.amqp.confirms import Block, Item, Unconfirmed, complete
from worker.errors import PublishError
from worker.messages import Outgoing


def _items(count: int) -> list[Item]:
    return [(Outgoing("x", "rk", str(n).encode()), Future()) for n in range(count)]


def test_a_multiple_ack_settles_every_tag_up_to_it() -> None:
    """basic.ack with multiple set confirms the prefix of tags, and nothing after it."""
    table = Unconfirmed()
    items = _items(3)
    for item in items:
        table.add(item, 0.0)
    table.settle(2, True, None)
    assert [True, True, False] == [future.done() for _, future in items]
    assert [3] == list(table.items)


def test_a_late_ack_after_take_all_completes_nothing() -> None:
    """Once its items are taken (to queue again), a given-up connection's acks settle nothing."""
    table = Unconfirmed()
    items = _items(2)
    for item in items:
        table.add(item, 0.0)
    assert items == table.take_all()
    table.settle(2, True, None)
    assert {} == table.items
    assert [False, False] == [future.done() for _, future in items]


def test_completing_a_done_future_again_does_not_raise() -> None:
    """A second confirm of the same future is ignored: the frame reader must never raise on it."""
    future: Future[None] = Future()
    complete(future, None)
    complete(future, "nacked by broker")
    assert future.result(0) is None
    failed: Future[None] = Future()
    complete(failed, "nacked by broker")
    assert isinstance(failed.exception(0), PublishError)


def test_the_clock_stands_still_while_blocked() -> None:
    """Time blocked does not count: the clock moves only while the broker takes publishes."""
    block = Block()
    assert block.begin("low on memory")
    assert not block.begin("again")
    stopped = block.clock()
    time.sleep(0.03)
    assert stopped == block.clock()
    assert block.end()
    assert not block.end()
    assert block.clock() - stopped < 0.02
    time.sleep(0.01)
    assert block.clock() > stopped
