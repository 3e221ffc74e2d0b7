"""Message signatures: what they cover, and how long they stay good."""

from __future__ import annotations

import pytest

from worker.codec import signing
from worker.errors import BadSignature

KEY = b"0123456789abcdef0123456789abcdef"
BODY = b'{"oslo.version": "2.0", "oslo.message": "{}"}'
NOW = 1_800_000_000.0


def _verify(headers: dict[str, object], *, exchange: str = "nova", routing_key: str = "compute.a",
            body: bytes = BODY, now: float = NOW, required: bool = True) -> bool:
    return signing.verify(KEY, body, headers, exchange=exchange, routing_key=routing_key,
                          max_age=300, required=required, now=now)


def test_a_fresh_signature_for_this_exchange_and_routing_key_is_good() -> None:
    """Signed now for nova/compute.a, checked as delivered there: good."""
    assert _verify(signing.headers(KEY, "nova", "compute.a", BODY, now=NOW - 10)) is True


@pytest.mark.parametrize("change", [
    {"routing_key": "compute.b"}, {"exchange": ""}, {"body": BODY + b" "},
], ids=["another host", "the default exchange", "another body"])
def test_a_signature_covers_exchange_routing_key_and_body(change: dict[str, object]) -> None:
    """A message signed for host A and published to host B (or altered) is refused."""
    headers = signing.headers(KEY, "nova", "compute.a", BODY, now=NOW)

    with pytest.raises(BadSignature, match="does not match"):
        _verify(headers, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize("offset", [-301, 301, -86400])
def test_a_signature_outside_its_window_is_refused(offset: float) -> None:
    """Too old (a replay after the journal forgot it) or dated ahead: refused."""
    headers = signing.headers(KEY, "nova", "compute.a", BODY, now=NOW + offset)

    with pytest.raises(BadSignature, match="good for 300s"):
        _verify(headers)


def test_the_signing_time_cannot_be_changed_without_breaking_the_signature() -> None:
    """Moving x-signature-time forward to look fresh breaks the signature."""
    headers = signing.headers(KEY, "nova", "compute.a", BODY, now=NOW - 1000)
    headers[signing.TIME_HEADER] = f"{NOW:.3f}"

    with pytest.raises(BadSignature, match="does not match"):
        _verify(headers)


@pytest.mark.parametrize("headers", [
    {signing.HEADER: "00" * 32}, {signing.HEADER: 5, signing.TIME_HEADER: "1"},
    {signing.HEADER: "00" * 32, signing.TIME_HEADER: "soon"},
], ids=["no time", "signature not a string", "time not a number"])
def test_malformed_signature_headers_are_refused(headers: dict[str, object]) -> None:
    """Half a signature is no signature."""
    with pytest.raises(BadSignature):
        _verify(headers)


def test_unsigned_is_refused_only_when_signatures_are_required() -> None:
    """No headers: BadSignature when required, else simply not signed."""
    with pytest.raises(BadSignature, match="not signed"):
        _verify({})
    assert _verify({}, required=False) is False
