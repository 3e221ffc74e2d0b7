"""Optional message authentication: HMAC-SHA256 over where a message goes, when, and its body.

Threat model: whoever can publish on the broker but does not hold the key
must not make a worker run anything. A captured signed message is the
attack left: the signature therefore covers the exchange and routing key it
was published to (a message signed for host A does not run on host B), the
time it was signed (it is refused outside ``signature_max_age`` seconds,
shorter than the journal remembers completed ids), and the body, whose
``_unique_id`` a signed message must carry (inside the window, the journal
absorbs a replay as a duplicate). Signatures do not hide anything: use TLS
for that.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from pathlib import Path
from typing import Any

from worker.errors import BadSignature, ConfigError

HEADER = "x-signature"
TIME_HEADER = "x-signature-time"
_MIN_KEY_BYTES = 16
_VERSION = b"compute-worker-signature-v2"


def load_key(path: str) -> bytes:
    """The shared key from a file (surrounding whitespace ignored)."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"signing_key_file {path}: {exc.strerror}") from None
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(f"signing_key_file {path}: key shorter than {_MIN_KEY_BYTES} bytes")
    return key


def _digest(key: bytes, exchange: str, routing_key: str, signed_at: str, body: bytes) -> str:
    # Lengths first: no two different (exchange, key, time) triples give the same bytes.
    head = "\n".join((exchange, routing_key, signed_at)).encode()
    framing = f"{len(exchange)}:{len(routing_key)}:{len(signed_at)}:".encode()
    return hmac.new(key, _VERSION + framing + head + b"\n" + body, hashlib.sha256).hexdigest()


def headers(key: bytes, exchange: str, routing_key: str, body: bytes,
            now: float | None = None) -> dict[str, str]:
    """The AMQP headers that sign body for this exchange and routing key, now."""
    signed_at = f"{time.time() if now is None else now:.3f}"
    return {HEADER: _digest(key, exchange, routing_key, signed_at, body), TIME_HEADER: signed_at}


def verify(key: bytes, body: bytes, message_headers: dict[str, Any], *, exchange: str,
           routing_key: str, max_age: float, required: bool, now: float | None = None) -> bool:
    """True for a good signature, False for none (when not required); BadSignature otherwise."""
    signature = message_headers.get(HEADER)
    if signature is None:
        if required:
            raise BadSignature("message is not signed")
        return False
    signed_at = message_headers.get(TIME_HEADER)
    if not isinstance(signed_at, str) or not isinstance(signature, str):
        raise BadSignature(f"a signed message needs {HEADER} and {TIME_HEADER} as strings")
    expected = _digest(key, exchange, routing_key, signed_at, body)
    if not hmac.compare_digest(expected, signature):
        raise BadSignature("message signature does not match (body, exchange or routing key "
                           "differ from what was signed)")
    try:
        age = (time.time() if now is None else now) - float(signed_at)
    except ValueError:
        raise BadSignature(f"{TIME_HEADER} is not a number") from None
    if not math.isfinite(age) or abs(age) > max_age:
        raise BadSignature(f"signature is {age:.0f}s old; signatures are good for {max_age:.0f}s")
    return True
