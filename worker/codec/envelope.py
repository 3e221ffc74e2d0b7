"""The oslo.messaging wire format: decode requests, encode replies and notifications."""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from worker.codec import nova_objects
from worker.errors import BadMessage, InvalidEnvelope, MessageTooLarge, WorkerError

OSLO_VERSION = "2.0"
_METHOD = re.compile(r"[a-z_][a-z0-9_]{0,63}\Z")
# oslo versions are major.minor with an optional .revision.
_VERSION = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})(\.[0-9]{1,4})?\Z")
# AMQP short strings (queue names, routing keys) are at most 255 bytes.
_SHORTSTR = 255


@dataclass(frozen=True)
class Request:
    """One decoded RPC message (a cast, or a call when reply_q is set)."""

    method: str
    args: dict[str, Any]
    version: str = "1.0"
    namespace: str | None = None
    unique_id: str | None = None
    msg_id: str | None = None
    reply_q: str | None = None
    timeout: float | None = None
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def is_call(self) -> bool:
        """A call wants a reply; a cast does not."""
        return self.reply_q is not None and self.msg_id is not None

    @property
    def request_id(self) -> str | None:
        """The caller's request id (``_context_request_id``), if it sent one."""
        value = self.context.get("request_id")
        return value if isinstance(value, str) else None

    @property
    def instance_uuid(self) -> str | None:
        """The uuid of ``args.instance``, when it is there and a string."""
        return nova_objects.instance_uuid(self.args.get("instance"))


def _no_constants(name: str) -> Any:
    # Python's json takes NaN and Infinity, which JSON itself does not have;
    # a NaN timeout would compare false with every bound and wait forever.
    raise ValueError(f"{name} is not a JSON number")


def _utf8_len(value: str) -> int | None:
    """Length in UTF-8 bytes; None for text that cannot be sent (lone surrogates)."""
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        return None


# Built once: json.loads with any keyword argument builds a new decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


# Likewise json.dumps(default=...) builds an encoder per call; these are built once.
_INNER_ENCODER = json.JSONEncoder(default=str)
_ENCODER = json.JSONEncoder()


def _loads(data: bytes | str, what: str) -> Any:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _DECODER.decode(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEnvelope(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidEnvelope(f"{what} is nested too deeply") from None


def _short(value: Any, name: str, partial: dict[str, Any]) -> str | None:
    if value is None:
        return None
    size = _utf8_len(value) if isinstance(value, str) else None
    if size is None or not 0 < size <= _SHORTSTR or "\x00" in value:
        raise InvalidEnvelope(f"{name} must be a non-empty string of at most 255 bytes",
                              **partial)
    return str(value)


def _timeout(value: Any, partial: dict[str, Any]) -> float | None:
    """A call's ``_timeout`` in seconds: any positive finite number (null: none)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEnvelope(f"_timeout must be a number of seconds, not {type(value).__name__}",
                              **partial)
    try:
        seconds = float(value)
    except OverflowError:  # an integer of hundreds of digits
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidEnvelope("_timeout must be a finite number of seconds", **partial)
    if seconds <= 0:
        raise InvalidEnvelope(f"_timeout must be above 0 seconds, got {value!r:.40}", **partial)
    return seconds


def _partial(inner: dict[str, Any]) -> dict[str, Any]:
    """What an error answer can still use from a message that fails later checks."""
    out: dict[str, Any] = {}
    for key, name in (("_msg_id", "msg_id"), ("_reply_q", "reply_q"), ("_unique_id", "unique_id"),
                      ("method", "method"), ("_context_request_id", "request_id")):
        value = inner.get(key)
        if isinstance(value, str) and 0 < (_utf8_len(value) or 0) <= _SHORTSTR \
                and "\x00" not in value:
            out[name] = value
    return out


def named(body: bytes | str, max_bytes: int) -> dict[str, Any]:
    """The method, unique id and request id a body names, as far as it can be read ({} if not).

    For the reject event of a message refused before it is decoded (a bad
    signature): the sender can find its request by them. Never where to reply.
    """
    try:
        inner = unwrap(body, max_bytes)
    except BadMessage:
        return {}
    return {k: v for k, v in _partial(inner).items()
            if k in ("method", "unique_id", "request_id")}


def unwrap(body: bytes | str, max_bytes: int) -> dict[str, Any]:
    """Body bytes to the inner message object, enveloped or bare."""
    if len(body) > max_bytes:
        raise MessageTooLarge(f"message of {len(body)} bytes exceeds the limit of {max_bytes}")
    outer = _loads(body, "body")
    if not isinstance(outer, dict):
        raise InvalidEnvelope("body is not a JSON object")
    if "oslo.message" in outer:
        if outer.get("oslo.version") != OSLO_VERSION:
            raise InvalidEnvelope(f"unsupported oslo.version {outer.get('oslo.version')!r}")
        if not isinstance(outer["oslo.message"], str):
            raise InvalidEnvelope("oslo.message is not a string")
        inner = _loads(outer["oslo.message"], "oslo.message")
        if not isinstance(inner, dict):
            raise InvalidEnvelope("oslo.message is not a JSON object")
        return inner
    return outer


def decode_request(body: bytes | str, max_bytes: int) -> Request:
    """Decode and shape-check one inbound RPC body; raise a BadMessage on anything odd."""
    inner = unwrap(body, max_bytes)
    partial = _partial(inner)
    method = inner.get("method")
    if not isinstance(method, str) or not _METHOD.match(method):
        raise InvalidEnvelope("method must be a lowercase identifier of at most 64 chars",
                              **partial)
    args = inner.get("args", {})
    if not isinstance(args, dict):
        raise InvalidEnvelope("args must be an object", **partial)
    version = inner.get("version", "1.0")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise InvalidEnvelope("version must be 'major.minor' or 'major.minor.revision'",
                              **partial)
    namespace = inner.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise InvalidEnvelope("namespace must be a string", **partial)
    timeout = _timeout(inner.get("_timeout"), partial)
    msg_id = _short(inner.get("_msg_id"), "_msg_id", partial)
    reply_q = _short(inner.get("_reply_q"), "_reply_q", partial)
    unique_id = _short(inner.get("_unique_id"), "_unique_id", partial)
    # The request id is echoed into every event and log line: it must be sane.
    _short(inner.get("_context_request_id"), "_context_request_id", partial)
    context = {k[len("_context_"):]: v for k, v in inner.items() if k.startswith("_context_")}
    return Request(
        method=method, args=args, version=version, namespace=namespace, unique_id=unique_id,
        msg_id=msg_id, reply_q=reply_q, timeout=timeout,
        context=context,
    )


def new_unique_id() -> str:
    """A fresh ``_unique_id`` as oslo makes them: uuid4 hex."""
    return uuid.uuid4().hex


def wrap(inner: dict[str, Any]) -> bytes:
    """Inner object to body bytes in the oslo 2.0 envelope."""
    text = _INNER_ENCODER.encode(inner)
    return _ENCODER.encode({"oslo.version": OSLO_VERSION, "oslo.message": text}).encode()


def failure(exc: BaseException) -> str:
    """An exception as oslo's failure JSON string, never with a traceback."""
    if isinstance(exc, WorkerError):
        module, message = exc.wire_module, exc.message
    else:
        # Internal faults are named but not detailed: their text may hold paths or XML.
        module, message = "builtins", f"internal error ({type(exc).__name__})"
    return json.dumps({
        # wire_name: an error that passes on another host's failure under its class.
        "class": (exc.wire_name or type(exc).__name__)
        if isinstance(exc, WorkerError) else "Exception",
        "module": module,
        "message": message,
        "tb": [],
        "args": [message],
        "kwargs": {},
    })


def reply(msg_id: str, result: Any = None, error: BaseException | None = None,
          ending: bool = True) -> bytes:
    """A reply body: a result, a failure, or (ending=False) a call-monitor heartbeat."""
    return wrap({
        "result": None if error is not None else result,
        "failure": failure(error) if error is not None else None,
        "ending": ending,
        "_msg_id": msg_id,
        "_unique_id": new_unique_id(),
    })
