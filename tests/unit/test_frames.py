"""Frames built by worker.amqp.frames, byte for byte against py-amqp's own writer and reader."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from amqp import spec
from amqp.basic_message import Message as AmqpMessage
from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_writer
from amqp.serialization import dumps
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.support import PROPERTY
from worker.amqp import frames as amqp_wire

FRAME_MAX = 4096  # small, so that bodies split into several frames


@dataclass
class _Capture:
    """What py-amqp's frame writer needs of a connection and a transport; keeps the bytes."""

    frame_max: int = FRAME_MAX
    bytes_sent: int = 0
    chunks: list[bytes] = field(default_factory=list)

    def write(self, data: Any) -> None:
        self.chunks.append(bytes(data))


def amqp_frames(channel: int, method: tuple[int, int], args: bytes,
                content: AmqpMessage | None = None) -> bytes:
    capture = _Capture()
    frame_writer(capture, capture)(1, channel, method, args, content)
    return b"".join(capture.chunks)


names = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
headers = st.none() | st.dictionaries(st.sampled_from(["x-sig", "a"]), st.text(max_size=20),
                                      min_size=1)


@PROPERTY
@given(channel=st.integers(1, 2047), exchange=names, routing_key=names,
       mandatory=st.booleans(), body=st.binary(max_size=3 * FRAME_MAX), extra=headers)
def test_publish_frames_are_py_amqps(channel: int, exchange: str, routing_key: str,
                                     mandatory: bool, body: bytes,
                                     extra: dict[str, str] | None) -> None:
    props: dict[str, Any] = {"content_type": "application/json", "content_encoding": "utf-8",
                             "delivery_mode": 2}
    if extra is not None:
        props["application_headers"] = extra
    expected = amqp_frames(channel, spec.Basic.Publish,
                           dumps("Bssbb", (0, exchange, routing_key, mandatory, False)),
                           AmqpMessage(body, **props))
    ours = amqp_wire.publish(channel, FRAME_MAX, exchange, routing_key, mandatory, body,
                             amqp_wire.properties("application/json", "utf-8", 2, extra))
    assert ours == expected


@given(channel=st.integers(1, 2047), tag=st.integers(1, 2**64 - 1), requeue=st.booleans())
def test_ack_and_reject_frames_are_py_amqps(channel: int, tag: int, requeue: bool) -> None:
    assert amqp_wire.ack(channel, tag) == amqp_frames(
        channel, spec.Basic.Ack, dumps("Lb", (tag, False)))
    assert amqp_wire.reject(channel, tag, requeue) == amqp_frames(
        channel, spec.Basic.Reject, dumps("Lb", (tag, requeue)))


def test_a_routing_key_too_long_for_amqp_is_refused_before_the_wire() -> None:
    with pytest.raises(ValueError, match="255 bytes"):
        amqp_wire.publish(1, FRAME_MAX, "", "q" * 256, False, b"{}", b"")


@dataclass
class _Transport:
    _read_buffer: bytes = b""


@dataclass
class _Receiver:
    """The two things FrameReader uses of a py-amqp connection: its handler and its buffer."""

    transport: _Transport = field(default_factory=_Transport)
    frames: list[tuple[int, int, bytes]] = field(default_factory=list)

    def on_inbound_frame(self, frame: tuple[int, int, bytes]) -> None:
        self.frames.append(frame)


def _pair() -> tuple[socket.socket, socket.socket]:
    left, right = socket.socketpair()
    return left, right


@PROPERTY
@given(bodies=st.lists(st.binary(max_size=3 * FRAME_MAX), min_size=1, max_size=5),
       cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_reader_dispatches_whole_frames_however_the_bytes_arrive(
        bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(amqp_wire.publish(7, FRAME_MAX, "x", "rk", False, body, b"\x00\x00")
                      for body in bodies)
    expected = _Receiver()
    _split_frames(stream, expected.frames)
    ours = _Receiver()
    left, right = _pair()
    with left, right:
        reader = amqp_wire.FrameReader(ours, right)
        points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
        for start, end in zip(points, points[1:], strict=False):
            left.sendall(stream[start:end])
            while reader.pump():
                pass
    assert ours.frames == expected.frames


def _split_frames(stream: bytes, out: list[tuple[int, int, bytes]]) -> None:
    """The reference: frames as py-amqp's read_frame returns them."""
    position = 0
    while position < len(stream):
        frame_type = stream[position]
        channel = int.from_bytes(stream[position + 1:position + 3], "big")
        size = int.from_bytes(stream[position + 3:position + 7], "big")
        out.append((frame_type, channel, stream[position + 7:position + 7 + size]))
        assert stream[position + 7 + size] == 0xCE
        position += 8 + size


def test_reader_gives_back_a_half_frame_to_py_amqp_and_takes_it_again() -> None:
    frame = amqp_wire.ack(1, 5)
    receiver = _Receiver()
    left, right = _pair()
    with left, right:
        reader = amqp_wire.FrameReader(receiver, right)
        left.sendall(frame[:6])
        assert reader.pump() == 0
        reader.release()
        assert receiver.transport._read_buffer == frame[:6]
        left.sendall(frame[6:])
        assert reader.pump() == 1
        assert receiver.transport._read_buffer == b""
    assert receiver.frames == [(1, 1, frame[7:-1])]


def test_reader_refuses_a_bad_frame_end_and_reports_a_closed_socket() -> None:
    frame = bytearray(amqp_wire.ack(1, 5))
    frame[-1] = 0x00
    left, right = _pair()
    with right:
        reader = amqp_wire.FrameReader(_Receiver(), right)
        left.sendall(bytes(frame))
        with pytest.raises(UnexpectedFrame):
            reader.pump()
        left.close()
        with pytest.raises(ConnectionError):
            reader.pump()


def test_reader_hands_confirms_to_the_publisher_and_other_frames_to_py_amqp() -> None:
    """basic.ack and basic.nack (as py-amqp would write them) reach on_confirm; the rest do not."""
    acks = amqp_frames(1, spec.Basic.Ack, dumps("Lb", (7, True)))
    nack = amqp_frames(1, spec.Basic.Nack, dumps("Lbb", (9, False, True)))
    other = amqp_wire.reject(1, 3, True)  # a method frame of the same size that is not a confirm
    confirms: list[tuple[int, bool, bool]] = []
    receiver = _Receiver()
    receiver_bytes: dict[str, int] = {}
    left, right = _pair()
    with left, right:
        reader = amqp_wire.FrameReader(_Counting(receiver, receiver_bytes), right,
                                       lambda *confirm: confirms.append(confirm))
        left.sendall(acks + other + nack)
        assert 3 == reader.pump()
    assert [(7, True, False), (9, False, True)] == confirms
    assert [(1, 1, other[7:-1])] == receiver.frames
    assert 2 == receiver_bytes["recv"]  # confirms still count as traffic for heartbeats


class _Counting:
    """A receiver with py-amqp's bytes_recv counter, which confirms must keep moving."""

    def __init__(self, receiver: _Receiver, counts: dict[str, int]) -> None:
        self.transport = receiver.transport
        self.on_inbound_frame = receiver.on_inbound_frame
        self._counts = counts
        counts["recv"] = 0

    @property
    def bytes_recv(self) -> int:
        return self._counts["recv"]

    @bytes_recv.setter
    def bytes_recv(self, value: int) -> None:
        self._counts["recv"] = value
