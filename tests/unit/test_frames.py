"""worker.amqp.frames against py-amqp: frames byte for byte, and every internal it touches."""

from __future__ import annotations

import inspect
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import amqp
import pytest
from amqp import spec
from amqp.basic_message import Message as AmqpMessage
from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_writer
from amqp.serialization import dumps
from amqp.transport import TCPTransport
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


# --- the frame layout and the py-amqp internals the fast path relies on ------------------------
# worker/amqp/frames.py and worker/amqp/wire.py (FastWire) reach into py-amqp; setup.cfg pins
# amqp>=5.4,<5.5 for it. These tests say which internal went when a py-amqp release moves one.


def test_frame_types_and_method_ids_are_py_amqps() -> None:
    """The named frame types and basic-class method ids are the numbers py-amqp writes and reads."""
    assert spec.Basic.Publish == (amqp_wire.CLASS_BASIC, amqp_wire.BASIC_PUBLISH)
    assert spec.Basic.Ack == (amqp_wire.CLASS_BASIC, amqp_wire.BASIC_ACK)
    assert spec.Basic.Reject == (amqp_wire.CLASS_BASIC, amqp_wire.BASIC_REJECT)
    assert spec.Basic.Nack == (amqp_wire.CLASS_BASIC, amqp_wire.BASIC_NACK)
    stream = amqp_frames(1, spec.Basic.Publish, dumps("Bssbb", (0, "x", "rk", False, False)),
                         AmqpMessage(b"body", content_type="application/json"))
    parsed: list[tuple[int, int, bytes]] = []
    _split_frames(stream, parsed)
    assert [amqp_wire.METHOD, amqp_wire.HEADER, amqp_wire.BODY] == [t for t, _, _ in parsed]
    capture = _Capture()
    frame_writer(capture, capture)(amqp_wire.HEARTBEAT, 0, None, None, None)
    assert bytes([amqp_wire.HEARTBEAT, 0, 0, 0, 0, 0, 0, amqp_wire.FRAME_END]) == capture.chunks[0]


_PLACEHOLDER_HOST = "127.0.0.1:1"  # never connected to: the link below is a socket pair
INTERNALS = [
    ("Connection", "on_inbound_frame", "FrameReader hands each whole frame to it"),
    ("Connection", "bytes_sent", "frames.write() counts its writes there for heartbeat_check()"),
    ("Connection", "bytes_recv", "FrameReader counts the confirms it takes itself there"),
    ("Connection", "frame_max", "FastWire splits bodies into frames by it"),
    ("Connection", "transport", "frames.write() and FrameReader reach the socket through it"),
    ("Connection", "heartbeat_tick", "kombu's heartbeat_check() calls it, and it counts "
                                     "bytes_sent and bytes_recv as traffic"),
    ("TCPTransport", "_read_buffer", "FrameReader takes py-amqp's buffered bytes and hands "
                                     "its own back there"),
    ("TCPTransport", "sock", "socket_of() finds the plain socket FastWire polls and reads"),
    ("TCPTransport", "write", "frames.write() sends a batch of frames with it"),
    ("Message", "_serialize_properties", "frames.properties() encodes content headers with it"),
    ("Channel", "events", "both py-amqp wires take confirms and returns from it"),
]


@pytest.mark.parametrize(("owner", "name", "used_for"), INTERNALS,
                         ids=[f"{o}.{n}" for o, n, _ in INTERNALS])
def test_py_amqp_still_has_what_the_fast_path_uses(owner: str, name: str, used_for: str) -> None:
    """Every py-amqp attribute worker/amqp reaches into is still there, under the same name."""
    conn = amqp.Connection(_PLACEHOLDER_HOST)
    instances: dict[str, object] = {
        "Connection": conn, "TCPTransport": TCPTransport(_PLACEHOLDER_HOST),
        "Message": AmqpMessage(b""), "Channel": amqp.Channel(conn, 1)}
    try:
        inspect.getattr_static(instances[owner], name)
    except AttributeError:
        pytest.fail(f"py-amqp {amqp.__version__} has no {owner}.{name} any more, and "
                    f"{used_for}: adapt worker/amqp/frames.py and wire.py (or run with "
                    "fast_path off) before widening the amqp pin in setup.cfg")


@dataclass
class _Link:
    """A py-amqp Connection wired as connect() wires it, to a socket the test is the broker on."""

    conn: amqp.Connection
    ours: socket.socket
    broker: socket.socket
    channel: amqp.Channel


@pytest.fixture
def link() -> Iterator[_Link]:
    """py-amqp's own Connection, transport, frame handler and writer and a channel 1, no broker."""
    listener = socket.create_server(("127.0.0.1", 0))
    broker = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    conn = amqp.Connection(_PLACEHOLDER_HOST)
    transport = TCPTransport(_PLACEHOLDER_HOST)
    transport.sock = ours
    transport._setup_transport()
    conn.transport = transport
    conn.on_inbound_frame = conn.frame_handler_cls(conn, conn.on_inbound_method)
    conn.frame_writer = conn.frame_writer_cls(conn, transport)
    conn.heartbeat = 10  # what connection.tune would have settled
    with broker, ours:
        yield _Link(conn, ours, broker, amqp.Channel(conn, 1))


def test_frames_read_in_a_batch_reach_py_amqps_channel(link: _Link) -> None:
    """A delivery (method, header and body frames) and an ack, read in one recv, reach channel 1."""
    deliveries: list[AmqpMessage] = []
    acks: list[tuple[int, bool]] = []
    link.channel.callbacks["ctag"] = deliveries.append
    link.channel.events["basic_ack"].add(lambda tag, multiple: acks.append((tag, multiple)))
    deliver = amqp_frames(1, spec.Basic.Deliver, dumps("sLbss", ("ctag", 5, False, "x", "rk")),
                          AmqpMessage(b"b" * (2 * FRAME_MAX), content_type="application/json"))
    stream = deliver + amqp_frames(1, spec.Basic.Ack, dumps("Lb", (9, True)))
    sent: list[tuple[int, int, bytes]] = []
    _split_frames(stream, sent)  # method, header, three body frames, the ack
    link.broker.sendall(stream)
    reader = amqp_wire.FrameReader(link.conn, link.ours)

    count = 0
    while count < len(sent):
        count += reader.pump()

    assert [b"b" * (2 * FRAME_MAX)] == [m.body for m in deliveries]
    assert 5 == deliveries[0].delivery_info["delivery_tag"]
    assert [(9, True)] == acks
    assert len(sent) == link.conn.bytes_recv  # py-amqp's handler counted every frame


def test_bytes_handed_back_are_what_py_amqp_reads_first(link: _Link) -> None:
    """After release(), py-amqp's own read_frame() finishes the frame our reader had begun."""
    frame = amqp_wire.ack(1, 5)
    reader = amqp_wire.FrameReader(link.conn, link.ours)
    link.broker.sendall(frame[:6])
    while not link.conn.transport._read_buffer:
        assert 0 == reader.pump()
        reader.release()
    link.broker.sendall(frame[6:])

    assert (amqp_wire.METHOD, 1, frame[7:-1]) == link.conn.transport.read_frame()


def test_our_writes_and_our_confirm_reads_count_as_heartbeat_traffic(link: _Link) -> None:
    """heartbeat_tick() sees frames.write() as sent traffic and confirms we read as received."""
    link.conn.heartbeat_tick()  # first look: both directions count as just now
    long_ago = time.monotonic() - 60

    # Given nothing heard for a minute but a confirm our reader took itself
    link.conn.last_heartbeat_sent = link.conn.last_heartbeat_received = long_ago
    amqp_wire.write(link.conn, amqp_wire.ack(1, 1))
    link.broker.sendall(amqp_frames(1, spec.Basic.Ack, dumps("Lb", (1, False))))
    reader = amqp_wire.FrameReader(link.conn, link.ours, lambda *_confirm: None)
    while not reader.pump():
        pass
    # Then the check neither sends a heartbeat nor calls the broker gone
    link.conn.heartbeat_tick()
    assert amqp_wire.ack(1, 1) == link.broker.recv(100)

    # And with nothing sent since, a heartbeat frame goes out
    link.conn.last_heartbeat_sent = long_ago
    link.conn.heartbeat_tick()
    assert amqp_wire.HEARTBEAT == link.broker.recv(100)[0]


def test_publish_frames_fit_the_connections_frame_max(link: _Link) -> None:
    """Bodies split by connection.frame_max as py-amqp's own writer splits them."""
    link.conn.frame_max = FRAME_MAX  # what connection.tune settles
    body = b"x" * (3 * FRAME_MAX)
    ours = amqp_wire.publish(1, link.conn.frame_max, "x", "rk", False, body,
                             amqp_wire.properties("application/json", "utf-8", 2))
    link.conn.frame_writer(1, 1, spec.Basic.Publish, dumps("Bssbb", (0, "x", "rk", False, False)),
                           AmqpMessage(body, content_type="application/json",
                                       content_encoding="utf-8", delivery_mode=2))
    received = b""
    while len(received) < len(ours):
        received += link.broker.recv(1 << 16)
    assert ours == received
