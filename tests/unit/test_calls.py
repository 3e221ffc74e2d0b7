"""The publisher's call bookkeeping: heartbeats at most every HEARTBEAT_FLOOR, returns once."""

from __future__ import annotations

from worker.amqp.calls import HEARTBEAT_FLOOR, RETURNED_MEMORY, CallWatches, Returns, reply_msg_id
from worker.codec import envelope


def test_a_call_is_due_each_interval_and_never_faster_than_the_floor() -> None:
    """A 1 ms _timeout still beats at most every HEARTBEAT_FLOOR; a removed call never."""
    watches = CallWatches()
    fast = watches.add("reply_a", "m1", 0.001, now=0.0)
    watches.add("reply_b", "m2", 2.0, now=0.0)

    assert HEARTBEAT_FLOOR == watches.soonest()
    assert [] == watches.due(HEARTBEAT_FLOOR / 2)
    assert ["m1"] == [w.msg_id for w in watches.due(HEARTBEAT_FLOOR)]
    assert ["m1", "m2"] == [w.msg_id for w in watches.due(2.0)]
    watches.remove(fast)
    watches.forget("reply_b", "m2")
    assert (None, []) == (watches.soonest(), watches.due(100.0))


def test_a_returned_reply_is_logged_the_first_time_only_within_memory() -> None:
    """Each call's returned reply is said once; past RETURNED_MEMORY others, once more."""
    returns = Returns()
    assert [True, False] == [returns.first("reply_a/m1") for _ in range(2)]
    for number in range(RETURNED_MEMORY):
        returns.first(f"reply_a/other-{number}")
    assert returns.first("reply_a/m1")


def test_the_msg_id_of_a_reply_and_of_anything_else() -> None:
    """A reply's _msg_id is read through the envelope; anything else is no reply."""
    assert "m1" == reply_msg_id(envelope.reply("m1", ending=False))
    assert None is reply_msg_id(b"not json")
