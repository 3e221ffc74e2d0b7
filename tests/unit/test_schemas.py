"""JSON Schemas of RPC args and event payloads, as compiled by worker.core.schemas."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from handlers.registry import METHODS
from tests.unit.support import PROPERTY, UUID, WIRE_SAMPLES, inner, json_values, surrogate_text
from worker.codec import envelope
from worker.core import schemas
from worker.errors import InvalidArguments, InvalidEnvelope
from worker.virt import domain_xml


def instance(**fields: Any) -> dict[str, Any]:
    """An ``args.instance`` with a valid uuid unless fields override it."""
    return {"uuid": UUID, **fields}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_registered_method_has_a_compiling_schema(method: str) -> None:
    """Each method of the table has schemas/rpc/<name>.json, and it compiles."""
    assert METHODS[method].schema in schemas.names("rpc")
    assert callable(schemas.validator("rpc", METHODS[method].schema))


@pytest.mark.parametrize("name", schemas.names("events"))
def test_every_event_schema_compiles(name: str) -> None:
    """Each schema in schemas/events/ compiles to a validator."""
    assert callable(schemas.validator("events", name))


def test_definitions_file_is_not_a_method_schema() -> None:
    """The shared definitions are merged in, not listed as a schema of their own."""
    assert "definitions" not in schemas.names("rpc")
    assert {"uuid", "domain_name", "instance"} <= set(
        schemas.raw("rpc", "pause_instance")["$defs"])


def test_reboot_type_defaults_to_soft() -> None:
    """reboot_instance without reboot_type gets SOFT filled in."""
    checked = schemas.check_args("reboot_instance", {"instance": instance()})

    assert {"instance": instance(), "reboot_type": "SOFT"} == checked


def test_explicit_reboot_type_is_kept() -> None:
    """An explicit HARD is not overwritten by the default."""
    checked = schemas.check_args("reboot_instance", {"instance": instance(), "reboot_type": "HARD"})

    assert "HARD" == checked["reboot_type"]


def test_stop_instance_defaults_to_a_clean_shutdown() -> None:
    """stop_instance without clean_shutdown asks the guest first."""
    checked = schemas.check_args("stop_instance", {"instance": instance()})

    assert checked["clean_shutdown"] is True
    assert "timeout" not in checked


def test_list_instances_takes_no_arguments() -> None:
    """list_instances accepts {} and refuses anything else."""
    assert {} == schemas.check_args("list_instances", {})
    with pytest.raises(InvalidArguments):
        schemas.check_args("list_instances", {"all": True})


def test_nova_sends_extra_instance_fields_which_pass() -> None:
    """Extra fields inside args.instance (nova sends many) are accepted."""
    args = {"instance": instance(name="vm1", vm_state="active", flavor={"ram": 64})}

    assert args == schemas.check_args("pause_instance", copy.deepcopy(args))


@pytest.mark.parametrize("uuid", [
    UUID, UUID.upper(), "abcdef01-2345-6789-abcd-ef0123456789",
])
def test_uuid_in_hyphenated_form_passes(uuid: str) -> None:
    """A hyphenated 8-4-4-4-12 hex UUID passes, in either case."""
    assert uuid == schemas.check_args("pause_instance", {"instance": {"uuid": uuid}})[
        "instance"]["uuid"]


@pytest.mark.parametrize("uuid", [
    UUID + "\n", "\n" + UUID, UUID + "\x00", UUID[:8] + "\n" + UUID[9:], " " + UUID,
    "{" + UUID + "}", "urn:uuid:" + UUID, UUID.replace("-", ""), UUID[:-1], UUID + "0",
    UUID.replace("1", "g"), "", "abc", "../" + UUID, UUID + "/../x", 11111111,
], ids=repr)
def test_uuid_pattern_rejects_junk(uuid: Any) -> None:
    """Newlines, NUL, braces, URNs, missing hyphens, wrong lengths and paths are not UUIDs."""
    with pytest.raises(InvalidArguments) as caught:
        schemas.check_args("pause_instance", {"instance": {"uuid": uuid}})

    assert caught.value.message.startswith("pause_instance: ")


@pytest.mark.parametrize("name", ["vm1", "instance-00000001", "a" * 64, "web-1.example_2",
                                  "0", "A..b"])
def test_conservative_names_pass(name: str) -> None:
    """ASCII letters, digits, '.', '_' and '-' from a letter or digit, up to 64, pass."""
    assert name == schemas.check_args("pause_instance", {"instance": instance(name=name)})[
        "instance"]["name"]


@pytest.mark.parametrize("name", [
    ".", "..", ".hidden", "-rf", "--help", "_x", "vm/1", "/", "../etc", "", "a" * 65,
    "vm\n1", "vm1\n", "vm\x001", "vm\x7f", "vm\t1", "vm\r", "\x1b[31m", "a b", " ", "   ",
    "ünïcødé", "vm\ufffe", "vm\ud800", "\udfff", "a\u202eb", "a\u200bb", "\u200b", "a\u00a0b",
    "vm:1", "vm@1", "vm*", "vm\\1", 5, None,
], ids=repr)
def test_names_unsafe_as_a_file_name_fail(name: Any) -> None:
    """Dot names, leading dots and dashes, control, bidi, zero-width, space and non-ASCII fail."""
    with pytest.raises(InvalidArguments):
        schemas.check_args("pause_instance", {"instance": instance(name=name)})


def test_schema_and_xml_builder_share_one_name_rule() -> None:
    """The domain_name pattern of the schema is the builder's own check, character for character."""
    pattern = schemas.raw("rpc", "pause_instance")["$defs"]["domain_name"]["pattern"]

    assert f"^{domain_xml.DOMAIN_NAME.pattern}$" == pattern


@PROPERTY
@given(surrogate_text | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,70}\Z"))
def test_every_name_the_schema_accepts_is_a_file_name_and_survives_the_xml_round_trip(
        name: str) -> None:
    """Whatever the build schema accepts as a name is one safe file name component and XML text."""
    args = {"instance": instance(name=name)}
    try:
        schemas.check_args("build_and_run_instance", args)
    except InvalidArguments:
        return
    assert name not in (".", "..") and not name.startswith((".", "-"))
    assert os.path.basename(name) == name and "\x00" not in name
    assert len(os.fsencode(name)) <= 255
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, name).write_text("x")
        assert [name] == os.listdir(tmp)
        assert Path(tmp) == Path(tmp, name).resolve().parent
    xml = domain_xml.to_string(domain_xml.domain(domain_xml.DomainSpec(name=name, uuid=UUID)))
    assert name == etree.fromstring(xml).findtext("name")


@pytest.mark.parametrize("args", [
    {}, {"instance": UUID}, {"instance": {}}, {"instance": None}, {"instance": instance(),
                                                                    "force": True},
], ids=repr)
def test_instance_verbs_need_an_instance_object_and_nothing_else(args: dict[str, Any]) -> None:
    """A missing or malformed instance, or an unknown argument, is InvalidArguments."""
    with pytest.raises(InvalidArguments):
        schemas.check_args("terminate_instance", args)


def test_the_oslo_cast_sample_args_fail_the_uuid_pattern() -> None:
    """The captured cast's ``uuid: "abc"`` is no UUID, so the worker would reject it."""
    args = inner(WIRE_SAMPLES["cast"])["args"]

    with pytest.raises(InvalidArguments) as caught:
        schemas.check_args("pause_instance", args)

    assert "uuid" in caught.value.message


@pytest.mark.parametrize("args", [
    {"reboot_type": "soft"}, {"reboot_type": "WARM"}, {"reboot_type": None},
], ids=repr)
def test_reboot_type_is_soft_or_hard_only(args: dict[str, Any]) -> None:
    """reboot_type is the enum SOFT|HARD, case-sensitive."""
    with pytest.raises(InvalidArguments):
        schemas.check_args("reboot_instance", {"instance": instance(), **args})


@pytest.mark.parametrize("timeout", [-1, 3601, "60", True, float("inf")], ids=repr)
def test_stop_timeout_is_a_number_within_an_hour(timeout: Any) -> None:
    """stop_instance's timeout is a number from 0 to 3600 seconds."""
    with pytest.raises(InvalidArguments):
        schemas.check_args("stop_instance", {"instance": instance(), "timeout": timeout})


def test_stop_timeout_nan_never_reaches_the_schema() -> None:
    """A NaN timeout (which Python's json reads from 'NaN') is refused by the decoder already."""
    body = envelope.wrap({"method": "stop_instance", "version": "6.0",
                          "args": {"instance": instance(), "timeout": 0}}).replace(
        b'\\"timeout\\": 0', b'\\"timeout\\": NaN')
    assert b"NaN" in body
    with pytest.raises(InvalidEnvelope):
        envelope.decode_request(body, 1 << 20)


@PROPERTY
@given(st.sampled_from(sorted(METHODS)),
       json_values | st.dictionaries(st.sampled_from(["instance", "reboot_type", "timeout",
                                                      "clean_shutdown"]), json_values))
def test_arbitrary_json_args_raise_only_invalid_arguments(method: str, args: Any) -> None:
    """Whatever JSON arrives as args, check_args returns a dict or raises InvalidArguments."""
    try:
        checked = schemas.check_args(method, args)
    except InvalidArguments:
        return
    assert isinstance(checked, dict)


@PROPERTY
@given(st.sampled_from(sorted(METHODS)),
       st.fixed_dictionaries({"instance": st.fixed_dictionaries(
           {"uuid": surrogate_text | st.just(UUID)},
           optional={"name": surrogate_text})}))
def test_arbitrary_instance_strings_raise_only_invalid_arguments(method: str,
                                                                 args: dict[str, Any]) -> None:
    """Any text (lone surrogates too) as uuid or name passes or raises InvalidArguments."""
    try:
        schemas.check_args(method, args)
    except InvalidArguments:
        pass


def test_captured_oslo_notification_passes_the_notification_schema() -> None:
    """The notification oslo's Notifier put on the wire fits notification.json."""
    schemas.validator("events", "notification")(inner(WIRE_SAMPLES["notification"]))


def test_an_event_s_uuid_is_checked_at_every_fastjsonschema() -> None:
    """A payload uuid that is no UUID is refused: a pattern, where draft-07 has no uuid format
    (fastjsonschema 2.22 skips the format unchecked, 2.19 refuses to compile it)."""
    check = schemas.validator("events", "ServiceStatusPayload")
    good = {"host": "h", "binary": "nova-compute", "topic": "compute", "report_count": 1,
            "disabled": False, "disabled_reason": None, "availability_zone": None,
            "last_seen_up": "2026-01-01T00:00:00Z", "forced_down": False, "version": 74,
            "uuid": "9b7e4bd2-34c5-4d1e-8d0a-6f0b1d2c3e4f"}
    check(good)

    with pytest.raises(fastjsonschema.JsonSchemaValueException, match="uuid"):
        check({**good, "uuid": "not-a-uuid"})
