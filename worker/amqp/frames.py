"""AMQP 0-9-1 frames for the two hot loops, written and read in batches on py-amqp's socket.

py-amqp spends most of a small message's cost in per-frame Python work and
syscalls: three recv() calls to read one frame, a socket timeout set and reset
around every read, one sendall() per published message. The consumer and the
publisher threads handle hundreds of messages a second, so here they instead
read whatever the socket holds in one recv() and hand each complete frame to
py-amqp's own frame handler (so channels, consumers, confirms, returns and
heartbeats all behave as py-amqp defines them), and they build the frames of
many publishes and acks into one buffer written with one sendall().

Only the frame layout lives here (AMQP 0-9-1 section 4.2.3 and the basic
class); the connection handshake, channel state and everything rare stay
with py-amqp. ``tests/unit/test_frames.py`` checks every frame built here
byte for byte against py-amqp's own writer, and every py-amqp internal this
module touches (its frame handler, its read buffer, its traffic counters).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from struct import Struct
from typing import Any

from amqp.basic_message import Message as AmqpMessage
from amqp.exceptions import UnexpectedFrame

# Frame types (AMQP 0-9-1 section 4.2.3; py-amqp writes them as bare numbers).
METHOD, HEADER, BODY, HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
# The basic class and the methods of it written or read here (py-amqp's spec.Basic).
CLASS_BASIC = 60
BASIC_PUBLISH, BASIC_ACK, BASIC_REJECT, BASIC_NACK = 40, 80, 90, 120

_FRAME_HEADER = Struct(">BHI")  # type, channel, payload size
_METHOD_HEAD = Struct(">BHIHH")  # frame header, then class id and method id
_CONTENT_HEADER = Struct(">BHIHHQ")  # frame header, class, weight, body size
_TAG_AND_BIT = Struct(">QB")
# Size of a basic.ack, basic.nack or basic.reject payload: class, method, tag, bits.
_TAG_METHOD_SIZE = 4 + _TAG_AND_BIT.size
_ACK_METHOD = Struct(">HH").pack(CLASS_BASIC, BASIC_ACK)
_NACK_METHOD = Struct(">HH").pack(CLASS_BASIC, BASIC_NACK)
_END = bytes([FRAME_END])
_properties_cache: dict[tuple[str, str, int], bytes] = {}


def _shortstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        # AMQP short strings are at most 255 bytes; the broker would close the channel.
        raise ValueError(f"AMQP short string longer than 255 bytes: {raw[:40]!r}...")
    return bytes([len(raw)]) + raw


def properties(content_type: str, content_encoding: str, delivery_mode: int,
               headers: dict[str, Any] | None = None) -> bytes:
    """The property flags and list of a basic content header (cached when there are no headers)."""
    key = (content_type, content_encoding, delivery_mode)
    if headers is None:
        cached = _properties_cache.get(key)
        if cached is not None:
            return cached
    props: dict[str, Any] = {"content_type": content_type, "content_encoding": content_encoding,
                             "delivery_mode": delivery_mode}
    if headers is not None:
        props["application_headers"] = headers
    # py-amqp's own encoder: the field-table format is not worth writing twice.
    encoded: bytes = AmqpMessage(**props)._serialize_properties()
    if headers is None:
        _properties_cache[key] = encoded
    return encoded


def publish(channel: int, frame_max: int, exchange: str, routing_key: str, mandatory: bool,
            body: bytes, props: bytes) -> bytes:
    """The method, header and body frames of one basic.publish, as one byte string."""
    args = (b"\x00\x00" + _shortstr(exchange) + _shortstr(routing_key)
            + (b"\x01" if mandatory else b"\x00"))
    parts = [_METHOD_HEAD.pack(METHOD, channel, 4 + len(args), CLASS_BASIC, BASIC_PUBLISH),
             args, _END,
             _CONTENT_HEADER.pack(HEADER, channel, 12 + len(props), CLASS_BASIC, 0, len(body)),
             props, _END]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        piece = body[start:start + chunk]
        parts += [_FRAME_HEADER.pack(BODY, channel, len(piece)), piece, _END]
    return b"".join(parts)


def ack(channel: int, delivery_tag: int) -> bytes:
    """A basic.ack frame for one delivery."""
    return _METHOD_HEAD.pack(METHOD, channel, _TAG_METHOD_SIZE, CLASS_BASIC,
                             BASIC_ACK) + _TAG_AND_BIT.pack(delivery_tag, 0) + _END


def reject(channel: int, delivery_tag: int, requeue: bool) -> bytes:
    """A basic.reject frame: back to the queue, or (requeue False) dead-lettered or dropped."""
    return _METHOD_HEAD.pack(METHOD, channel, _TAG_METHOD_SIZE, CLASS_BASIC,
                             BASIC_REJECT) + _TAG_AND_BIT.pack(delivery_tag, int(requeue)) + _END


def write(connection: Any, data: bytes) -> None:
    """Send frames built here on a py-amqp connection (any transport, TLS included)."""
    connection.transport.write(data)
    connection.bytes_sent += 1  # py-amqp's heartbeat bookkeeping: we did send


class FrameReader:
    """Reads what a plain-TCP py-amqp connection's socket holds and dispatches whole frames.

    Use only on a connection whose socket nobody else reads (the thread that
    owns it): py-amqp's own reads would miss the bytes buffered here.
    """

    def __init__(self, connection: Any, sock: socket.socket,
                 on_confirm: Callable[[int, bool, bool], None] | None = None) -> None:
        """on_confirm(delivery_tag, multiple, nacked) takes publisher confirms directly.

        With it, basic.ack and basic.nack frames skip py-amqp's method
        dispatch (the publisher reads one per published message); every other
        frame still goes to py-amqp.
        """
        self._connection = connection
        self._sock = sock
        self.on_confirm = on_confirm
        self._buffer = bytearray()

    def pump(self) -> int:
        """Read without waiting and dispatch every complete frame; how many were dispatched.

        Raises ConnectionError when the broker has closed the socket, and
        whatever py-amqp raises for a frame (a channel or connection close).
        """
        transport = self._connection.transport
        if transport._read_buffer:  # left by py-amqp's own reads since release()
            self._buffer[:0] = transport._read_buffer
            transport._read_buffer = b""
        try:
            data = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            data = None
        if data == b"":
            raise ConnectionResetError("the broker closed the connection")
        if data:
            self._buffer += data
        return self._dispatch()

    def release(self) -> None:
        """Hand buffered bytes back to py-amqp before it reads the socket itself.

        py-amqp's synchronous calls (basic.consume waiting for consume-ok)
        read from the socket; a frame half in our buffer would leave them
        reading from the middle of it.
        """
        if self._buffer:
            transport = self._connection.transport
            transport._read_buffer = bytes(self._buffer) + transport._read_buffer
            self._buffer.clear()

    def _dispatch(self) -> int:
        buffer = self._buffer
        position = 0
        count = 0
        on_frame = self._connection.on_inbound_frame
        on_confirm = self.on_confirm
        try:
            while len(buffer) - position >= 8:
                frame_type, channel, size = _FRAME_HEADER.unpack_from(buffer, position)
                end = position + 7 + size
                if len(buffer) <= end:
                    break
                if buffer[end] != FRAME_END:
                    raise UnexpectedFrame(f"frame end {buffer[end]:#04x}, expected 0xce")
                start = position + 7
                position = end + 1
                count += 1
                if on_confirm is not None and frame_type == METHOD and size == _TAG_METHOD_SIZE:
                    method = buffer[start:start + 4]
                    if method == _ACK_METHOD or method == _NACK_METHOD:
                        tag, bits = _TAG_AND_BIT.unpack_from(buffer, start + 4)
                        self._connection.bytes_recv += 1  # py-amqp's heartbeat bookkeeping
                        on_confirm(tag, bool(bits & 1), method == _NACK_METHOD)
                        continue
                on_frame((frame_type, channel, bytes(buffer[start:end])))
        finally:
            del buffer[:position]  # handled frames are gone even if a handler raised
        return count
