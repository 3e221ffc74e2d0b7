"""The oslo wire codec: requests in, replies out, against messages captured from oslo.messaging."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.support import (
    CALL_SAMPLES,
    PROPERTY,
    WIRE_SAMPLES,
    body_bytes,
    inner,
    json_values,
)
from worker.codec import envelope
from worker.codec.envelope import Request, decode_request
from worker.errors import (
    BadMessage,
    InstanceNotFound,
    InvalidEnvelope,
    MessageTooLarge,
    NoSuchMethod,
    UnsupportedVersion,
)

LIMIT = 1 << 20
MSG_ID = "147a17a7269f4a3e86f6c1ca8ef2fb60"
REPLY_Q = "reply_08c90c0ac22c4e899b48d0a866dd11df"
HEX32 = re.compile(r"[0-9a-f]{32}\Z")
#: A field value meaning "leave this field out of the message".
_DROP = object()


def enveloped(message: Any) -> bytes:
    """An oslo 2.0 body around any inner JSON value."""
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


def call(**fields: Any) -> bytes:
    """An enveloped call with valid defaults, overridden by fields (_DROP removes one)."""
    message: dict[str, Any] = {
        "method": "pause_instance", "args": {}, "version": "1.0",
        "_unique_id": "fbf16f16b36f49ceaf4eb34125f41780", "_msg_id": MSG_ID,
        "_reply_q": REPLY_Q, "_timeout": None, "_context_request_id": "req-1",
    }
    message.update(fields)
    return enveloped({k: v for k, v in message.items() if v is not _DROP})


def decoded_reply(body: bytes) -> dict[str, Any]:
    """The inner object of a reply body, checking the outer envelope on the way."""
    outer = json.loads(body)
    assert {"oslo.version", "oslo.message"} == set(outer)
    assert "2.0" == outer["oslo.version"]
    assert isinstance(outer["oslo.message"], str)
    result: dict[str, Any] = json.loads(outer["oslo.message"])
    return result


# --- requests as oslo sends them ---------------------------------------------------------


def test_cast_sample_decodes_to_its_method_args_and_context() -> None:
    """The captured cast gives its method, args, version, unique id and flattened context."""
    req = decode_request(body_bytes(WIRE_SAMPLES["cast"]), LIMIT)

    assert Request(
        method="pause_instance",
        args={"instance": {"uuid": "abc", "name": "vm1"}},
        version="6.0",
        namespace=None,
        unique_id="e67dd8c720d24fff9952a8d3989ee27a",
        msg_id=None,
        reply_q=None,
        timeout=None,
        context={"request_id": "req-123", "user_id": "u1", "project_id": "p1"},
    ) == req
    assert req.is_call is False
    assert "req-123" == req.request_id
    assert "abc" == req.instance_uuid


def test_fanout_cast_sample_decodes_as_a_cast() -> None:
    """The captured fanout cast decodes like a cast, with no reply address."""
    req = decode_request(body_bytes(WIRE_SAMPLES["fanout_cast"]), LIMIT)

    assert ("refresh_cache", {"x": 1}, "6.0") == (req.method, req.args, req.version)
    assert "f41c666c063f4c64b2af42a022b069d5" == req.unique_id
    assert (None, None, None) == (req.msg_id, req.reply_q, req.timeout)
    assert req.is_call is False
    assert req.instance_uuid is None


@pytest.mark.parametrize("name", CALL_SAMPLES)
def test_call_samples_decode_with_their_reply_address(name: str) -> None:
    """Every captured call gives the _msg_id and _reply_q its replies were sent with."""
    sample = WIRE_SAMPLES[name]
    sent = inner(sample["request"])

    req = decode_request(body_bytes(sample["request"]), LIMIT)

    assert req.is_call is True
    assert sent["method"] == req.method
    assert sent["args"] == req.args
    assert sent["version"] == req.version
    assert sent["_unique_id"] == req.unique_id
    assert sent["_msg_id"] == req.msg_id
    assert {r["routing_key"] for r in sample["replies"]} == {req.reply_q}
    assert {inner(r)["_msg_id"] for r in sample["replies"]} == {req.msg_id}
    assert {"request_id": sent["_context_request_id"], "user_id": "u1",
            "project_id": "p1"} == req.context


def test_call_with_null_timeout_has_no_timeout() -> None:
    """A call sent with ``"_timeout": null`` (oslo's default) has no timeout."""
    req = decode_request(body_bytes(WIRE_SAMPLES["call_ok"]["request"]), LIMIT)

    assert req.timeout is None


def test_call_monitor_sample_keeps_its_timeout_as_seconds() -> None:
    """The call-monitor call's ``_timeout`` of 2 is read as 2.0 seconds."""
    req = decode_request(body_bytes(WIRE_SAMPLES["call_monitor_heartbeats"]["request"]), LIMIT)

    assert 2.0 == req.timeout
    assert {"seconds": 3} == req.args


@pytest.mark.parametrize("name", ["cast", "fanout_cast", *CALL_SAMPLES])
def test_bare_inner_object_decodes_like_the_enveloped_one(name: str) -> None:
    """A body that is the inner object itself, with no oslo envelope, decodes the same."""
    sample = WIRE_SAMPLES[name]
    sample = sample.get("request", sample)
    bare = sample["body"]["oslo.message"]

    assert decode_request(body_bytes(sample), LIMIT) == decode_request(bare.encode(), LIMIT)
    assert decode_request(body_bytes(sample), LIMIT) == decode_request(bare, LIMIT)


def test_missing_args_and_version_take_their_defaults() -> None:
    """A bare message with only a method has empty args and version 1.0."""
    req = decode_request(b'{"method": "list_instances"}', LIMIT)

    assert ({}, "1.0", None) == (req.args, req.version, req.unique_id)


def test_namespace_is_kept() -> None:
    """An oslo ``namespace`` is passed on for the dispatcher to judge."""
    req = decode_request(call(namespace="baremetal"), LIMIT)

    assert "baremetal" == req.namespace


# --- malformed messages ------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000

MALFORMED: list[tuple[str, bytes, type[BadMessage]]] = [
    ("not JSON", b"pause the instance please", InvalidEnvelope),
    ("invalid UTF-8", b'{"method": "\xff\xfe"}', InvalidEnvelope),
    ("empty body", b"", InvalidEnvelope),
    ("JSON list", b"[1, 2]", InvalidEnvelope),
    ("JSON string", b'"pause_instance"', InvalidEnvelope),
    ("JSON null", b"null", InvalidEnvelope),
    ("oslo.version 1.0", json.dumps({"oslo.version": "1.0",
                                     "oslo.message": '{"method": "x"}'}).encode(),
     InvalidEnvelope),
    ("oslo.version missing", json.dumps({"oslo.message": '{"method": "x"}'}).encode(),
     InvalidEnvelope),
    ("oslo.version as a number", json.dumps({"oslo.version": 2.0,
                                             "oslo.message": '{"method": "x"}'}).encode(),
     InvalidEnvelope),
    ("oslo.message an object", json.dumps({"oslo.version": "2.0",
                                           "oslo.message": {"method": "x"}}).encode(),
     InvalidEnvelope),
    ("oslo.message not JSON", json.dumps({"oslo.version": "2.0",
                                          "oslo.message": "{method"}).encode(), InvalidEnvelope),
    ("inner a list", enveloped([{"method": "x"}]), InvalidEnvelope),
    ("inner a number", enveloped(7), InvalidEnvelope),
    ("inner null", enveloped(None), InvalidEnvelope),
    ("deep body", DEEP.encode(), InvalidEnvelope),
    ("deep inner", json.dumps({"oslo.version": "2.0", "oslo.message": DEEP}).encode(),
     InvalidEnvelope),
    ("deep args", ('{"method": "x", "args": {"a": ' + DEEP + "}}").encode(), InvalidEnvelope),
    ("oversize", b'{"method": "x", "pad": "' + b"x" * LIMIT + b'"}', MessageTooLarge),
]


@pytest.mark.parametrize(("body", "error"), [(b, e) for _, b, e in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_body_raises_its_bad_message(body: bytes, error: type[BadMessage]) -> None:
    """Bodies that are not an oslo message raise the matching BadMessage, nothing else."""
    with pytest.raises(BadMessage) as caught:
        decode_request(body, LIMIT)

    assert error is type(caught.value)
    assert {} == caught.value.kwargs


def test_body_one_byte_over_the_limit_is_too_large() -> None:
    """The size limit is exact: max_bytes passes the size check, max_bytes + 1 does not."""
    body = call()

    assert "pause_instance" == decode_request(body, len(body)).method
    with pytest.raises(MessageTooLarge):
        decode_request(body, len(body) - 1)


BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("method missing", {"method": _DROP}),
    ("method empty", {"method": ""}),
    ("method uppercase", {"method": "Pause_instance"}),
    ("method with a dash", {"method": "pause-instance"}),
    ("method with a space", {"method": "pause instance"}),
    ("method with a trailing newline", {"method": "pause_instance\n"}),
    ("method with a dot", {"method": "os.system"}),
    ("method starting with a digit", {"method": "1pause"}),
    ("method of 65 chars", {"method": "a" * 65}),
    ("method a number", {"method": 5}),
    ("method a list", {"method": ["pause_instance"]}),
    ("args a list", {"args": [1, 2]}),
    ("args a string", {"args": "instance=1"}),
    ("args null", {"args": None}),
    ("version one part", {"version": "1"}),
    ("version four parts", {"version": "1.0.0.0"}),
    ("version with v", {"version": "v1.0"}),
    ("version empty", {"version": ""}),
    ("version a float", {"version": 1.0}),
    ("version with letters", {"version": "1.a"}),
    ("version five digits", {"version": "12345.0"}),
    ("version trailing newline", {"version": "1.0\n"}),
    ("namespace a number", {"namespace": 5}),
    ("timeout true", {"_timeout": True}),
    ("timeout false", {"_timeout": False}),
    ("timeout negative", {"_timeout": -1}),
    ("timeout zero", {"_timeout": 0}),
    ("timeout a string", {"_timeout": "30"}),
    ("unique_id of 256 bytes", {"_unique_id": "u" * 256}),
]


@pytest.mark.parametrize("fields", [f for _, f in BAD_FIELDS], ids=[n for n, _ in BAD_FIELDS])
def test_bad_field_is_invalid_envelope_keeping_the_reply_address(fields: dict[str, Any]) -> None:
    """A call with one bad field is InvalidEnvelope, and still says where to send the error."""
    with pytest.raises(InvalidEnvelope) as caught:
        decode_request(call(**fields), LIMIT)

    assert MSG_ID == caught.value.kwargs["msg_id"]
    assert REPLY_Q == caught.value.kwargs["reply_q"]
    assert "req-1" == caught.value.kwargs["request_id"]


@pytest.mark.parametrize("reply_q", ["r" * 256, "é" * 128, "", 7],
                         ids=["256 ASCII bytes", "128 chars of 2 bytes", "empty", "a number"])
def test_reply_q_that_no_amqp_short_string_holds_is_rejected(reply_q: Any) -> None:
    """A _reply_q over 255 UTF-8 bytes (or empty) is rejected and not offered as a reply address."""
    with pytest.raises(InvalidEnvelope) as caught:
        decode_request(call(_reply_q=reply_q), LIMIT)

    assert "reply_q" not in caught.value.kwargs
    assert MSG_ID == caught.value.kwargs["msg_id"]


def test_reply_q_of_exactly_255_bytes_is_accepted() -> None:
    """255 bytes is the AMQP short-string limit and is still allowed."""
    assert "q" * 255 == decode_request(call(_reply_q="q" * 255), LIMIT).reply_q


def test_partial_kwargs_keep_only_usable_strings() -> None:
    """Partial fields of a failed message leave out non-strings and strings with NUL."""
    with pytest.raises(InvalidEnvelope) as caught:
        decode_request(call(method=5, _msg_id=42, _unique_id="a\x00b"), LIMIT)

    assert {"reply_q": REPLY_Q, "request_id": "req-1"} == caught.value.kwargs


@pytest.mark.parametrize("key", ["_msg_id", "_reply_q", "_unique_id", "method",
                                 "_context_request_id"])
def test_lone_surrogate_in_a_string_field_is_a_bad_message(key: str) -> None:
    """A JSON escape like \\ud800 in an id or the method is rejected as a BadMessage."""
    body = call(**{key: "reply_\ud800"})

    with pytest.raises(BadMessage):
        decode_request(body, LIMIT)


@pytest.mark.parametrize("version", ["１.０", "١.٠"], ids=["fullwidth", "arabic-indic"])
def test_version_with_non_ascii_digits_is_rejected(version: str) -> None:
    """Only ASCII digits make a 'major.minor' version."""
    with pytest.raises(InvalidEnvelope):
        decode_request(call(version=version), LIMIT)


# --- properties --------------------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_bad_message(body: bytes) -> None:
    """No byte string makes decode_request raise anything but a BadMessage."""
    try:
        decode_request(body, 256)
    except BadMessage:
        pass


def _mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value for a field nine times in ten, else any JSON at all."""
    return st.integers(0, 9).flatmap(lambda n: json_values if n == 0 else good)


_ids = st.text("0123456789abcdef_-reply", min_size=1, max_size=40)
#: Messages close enough to valid that many decode, each field sometimes junk.
_PLAUSIBLE = st.fixed_dictionaries(
    {"method": _mostly(st.sampled_from(["pause_instance", "list_instances", "x", "_"]))},
    optional={
        "args": _mostly(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
        "version": _mostly(st.from_regex(r"[0-9]{1,4}\.[0-9]{1,4}", fullmatch=True)),
        "namespace": _mostly(st.none() | st.text(max_size=8)),
        "_timeout": _mostly(st.none() | st.integers(1, 3600) | st.floats(0.001, 1e5)),
        "_msg_id": _mostly(_ids), "_reply_q": _mostly(_ids), "_unique_id": _mostly(_ids),
        "_context_request_id": _mostly(_ids), "_context_user_id": json_values,
    },
)


@PROPERTY
@given(st.integers(0, 3).flatmap(lambda n: json_values if n == 0 else _PLAUSIBLE))
def test_arbitrary_json_in_the_envelope_raises_only_bad_message(message: Any) -> None:
    """Any JSON value as oslo.message decodes to a sane Request or raises a BadMessage."""
    # Lone surrogates are left out here; they have their own test above.
    try:
        req = decode_request(enveloped(message), LIMIT)
    except BadMessage as exc:
        for value in exc.kwargs.values():
            assert isinstance(value, str)
            assert 0 < len(value.encode()) <= 255
        return
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,63}", req.method)
    assert message["method"] == req.method
    assert json.dumps(message.get("args", {}), sort_keys=True) == json.dumps(req.args,
                                                                             sort_keys=True)
    assert re.fullmatch(r"\d+\.\d+", req.version)
    # Any positive finite _timeout is the caller's to choose (oslo sets no upper bound).
    assert req.timeout is None or (0 < req.timeout and math.isfinite(req.timeout))
    assert (message.get("_msg_id"), message.get("_reply_q"), message.get("_unique_id")) == (
        req.msg_id, req.reply_q, req.unique_id)


# --- replies -----------------------------------------------------------------------------


def _types(message: dict[str, Any]) -> dict[str, type]:
    return {key: type(value) for key, value in message.items()}


def test_result_reply_has_the_shape_of_the_captured_one() -> None:
    """A result reply has the captured reply's keys, types, result and ending flag."""
    captured = inner(WIRE_SAMPLES["call_ok"]["replies"][0])

    ours = decoded_reply(envelope.reply(captured["_msg_id"], captured["result"]))

    assert _types(captured) == _types(ours)
    assert captured["result"] == ours["result"]
    assert ours["failure"] is None
    assert ours["ending"] is True
    assert captured["_msg_id"] == ours["_msg_id"]
    assert HEX32.match(ours["_unique_id"])
    assert captured["_unique_id"] != ours["_unique_id"]


def test_failure_reply_has_the_shape_of_the_captured_one() -> None:
    """An InstanceNotFound reply carries a failure string shaped as oslo's, with no traceback."""
    captured = inner(WIRE_SAMPLES["call_failure"]["replies"][0])
    captured_failure = json.loads(captured["failure"])
    missing = "00000000-0000-0000-0000-000000000000"

    ours = decoded_reply(envelope.reply(captured["_msg_id"], error=InstanceNotFound(missing)))
    failure = json.loads(ours["failure"])

    assert _types(captured) == _types(ours)
    assert ours["result"] is None
    assert ours["ending"] is True
    assert _types(captured_failure) == _types(failure)
    assert captured_failure["class"] == failure["class"]
    # nova's wording and module, so nova's client rebuilds nova's own exception from it.
    message = f"Instance {missing} could not be found."
    assert (message, [message], "nova.exception") == (
        failure["message"], failure["args"], failure["module"])
    assert [] == failure["tb"]
    assert {} == failure["kwargs"]


def test_no_such_method_reply_equals_oslos_own() -> None:
    """NoSuchMethod is answered exactly as oslo's dispatcher answers it."""
    captured = inner(WIRE_SAMPLES["call_no_such_method"]["replies"][0])

    ours = decoded_reply(envelope.reply(captured["_msg_id"], error=NoSuchMethod("no_such_verb")))

    assert json.loads(captured["failure"]) == json.loads(ours["failure"])
    assert {**captured, "_unique_id": None, "failure": None} == {
        **ours, "_unique_id": None, "failure": None}


def test_unsupported_version_failure_names_oslos_class_and_module() -> None:
    """UnsupportedVersion is sent under oslo's class and module names so clients map it."""
    failure = json.loads(envelope.failure(UnsupportedVersion("2.0", "pause_instance")))

    assert ("UnsupportedVersion", "oslo_messaging.rpc.dispatcher") == (
        failure["class"], failure["module"])
    assert [failure["message"]] == failure["args"]


def test_heartbeat_and_final_replies_match_the_call_monitor_sample() -> None:
    """ending=False heartbeats, then the result with ending=True, as oslo's call monitor sends."""
    captured = [inner(r) for r in WIRE_SAMPLES["call_monitor_heartbeats"]["replies"]]
    msg_id = captured[0]["_msg_id"]

    ours = [decoded_reply(envelope.reply(msg_id, ending=False)),
            decoded_reply(envelope.reply(msg_id, ending=False)),
            decoded_reply(envelope.reply(msg_id, {"slept": 3}))]

    assert [{**c, "_unique_id": None} for c in captured] == [
        {**o, "_unique_id": None} for o in ours]
    assert 3 == len({o["_unique_id"] for o in ours})


def test_error_wins_over_a_result() -> None:
    """A reply given both a result and an error sends only the failure."""
    ours = decoded_reply(envelope.reply(MSG_ID, {"secret": 1}, error=InstanceNotFound("x")))

    assert ours["result"] is None
    assert "InstanceNotFound" == json.loads(ours["failure"])["class"]


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_failure_never_carries_a_traceback() -> None:
    """An exception with a live traceback is sent with ``tb`` empty and no trace text."""
    exc = _raised(InstanceNotFound("abc"))
    assert exc.__traceback__ is not None

    text = envelope.failure(exc)

    assert [] == json.loads(text)["tb"]
    assert "Traceback" not in text
    assert "test_envelope" not in text


def test_internal_error_does_not_leak_its_message() -> None:
    """A non-worker exception is named only as an internal error: its text stays home."""
    exc = _raised(KeyError("/var/lib/secret <domain><password>hunter2</password>"))

    text = envelope.failure(exc)
    failure = json.loads(text)

    assert {"class": "Exception", "module": "builtins", "message": "internal error (KeyError)",
            "tb": [], "args": ["internal error (KeyError)"], "kwargs": {}} == failure
    assert "hunter2" not in text
    assert "/var/lib" not in text


def test_reply_is_json_even_for_results_json_cannot_hold() -> None:
    """Results with non-JSON values are sent as their string form, not a crash."""
    ours = decoded_reply(envelope.reply(MSG_ID, {"when": _Opaque()}))

    assert {"when": "opaque"} == ours["result"]


class _Opaque:
    def __str__(self) -> str:
        return "opaque"


def test_nova_object_arguments_keep_their_envelope_for_the_schema() -> None:
    """The decoder leaves a nova object whole (the schema checks its envelope), uuid found."""
    uid = "11111111-2222-3333-4444-555555555555"
    body = enveloped({"method": "pause_instance", "version": "1.0", "args": {"instance": {
        "nova_object.name": "Instance", "nova_object.namespace": "nova",
        "nova_object.version": "2.7", "nova_object.data": {"uuid": uid, "name": "vm1"}}}})

    req = decode_request(body, LIMIT)

    assert "Instance" == req.args["instance"]["nova_object.name"]
    assert uid == req.instance_uuid


@pytest.mark.parametrize("raw, reason", [
    ("1e999", "finite"), ("-1e999", "finite"), ("1" + "0" * 400, "finite"), ("-0.5", "above 0"),
    ("0", "above 0"), ('"30"', "not str"), ("true", "not bool"), ("[1]", "not list"),
])
def test_a_timeout_out_of_range_is_refused_with_the_real_reason(raw: str, reason: str) -> None:
    """An infinite, huge-integer, negative or non-number _timeout says which of these it is."""
    inner = json.loads(json.loads(call())["oslo.message"])
    text = json.dumps({**inner, "_timeout": "@T@"}).replace('"@T@"', raw)
    body = json.dumps({"oslo.version": "2.0", "oslo.message": text}).encode()

    with pytest.raises(InvalidEnvelope) as caught:
        decode_request(body, LIMIT)

    assert reason in caught.value.message


@pytest.mark.parametrize("timeout", [1e12, 1e6, 0.0002, 3600])
def test_any_positive_finite_timeout_is_taken_as_sent(timeout: float) -> None:
    """A long or a tiny _timeout is the caller's choice; the heartbeat floor is the worker's."""
    assert timeout == decode_request(call(_timeout=timeout), LIMIT).timeout


def test_named_gives_what_a_reject_event_may_name_and_never_where_to_reply() -> None:
    """A refused body still names its method, ids and request; its reply queue is left out."""
    body = envelope.wrap({"method": "pause_instance", "_unique_id": "u1", "_msg_id": "m1",
                          "_reply_q": "reply_x", "_context_request_id": "req-1", "args": {}})

    assert {"method": "pause_instance", "unique_id": "u1", "request_id": "req-1"} == (
        envelope.named(body, 1 << 20))
    assert {} == envelope.named(b"not json", 1 << 20)
