"""Optional message authentication: HMAC-SHA256 over the body, in an AMQP header."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from worker.errors import BadSignature, ConfigError

HEADER = "x-signature"
_MIN_KEY_BYTES = 16


def load_key(path: str) -> bytes:
    """The shared key from a file (surrounding whitespace ignored)."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"signing_key_file {path}: {exc.strerror}") from None
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(f"signing_key_file {path}: key shorter than {_MIN_KEY_BYTES} bytes")
    return key


def sign(key: bytes, body: bytes) -> str:
    """Hex HMAC-SHA256 of body."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, signature: object, *, required: bool) -> None:
    """Raise BadSignature for a wrong signature, or a missing one when required."""
    if signature is None:
        if required:
            raise BadSignature("message is not signed")
        return
    if not isinstance(signature, str) or not hmac.compare_digest(sign(key, body), signature):
        raise BadSignature("message signature does not match")
