"""oslo's version rule and the method lookup, as the method table applies them."""

from __future__ import annotations

import pytest

from handlers.registry import API_VERSION, METHODS, TABLE
from worker.codec.envelope import Request
from worker.errors import NoSuchMethod, UnsupportedVersion

MAJOR, MINOR = (int(p) for p in API_VERSION.split("."))


@pytest.mark.parametrize("version", [
    API_VERSION, f"{MAJOR}.0", f"{MAJOR}.{MINOR}", f"0{MAJOR}.{MINOR}",
])
def test_same_major_and_minor_not_above_ours_is_served(version: str) -> None:
    """A version with our major and a minor up to ours is served."""
    assert METHODS["pause_instance"] is TABLE.lookup(Request("pause_instance", {}, version=version))


@pytest.mark.parametrize("version", [
    f"{MAJOR}.{MINOR + 1}", f"{MAJOR + 1}.0", f"{MAJOR - 1}.{MINOR}", f"{MAJOR + 1}.{MINOR}",
    f"{MAJOR}.{MINOR + 100}", "1.0",
])
def test_other_major_or_higher_minor_is_unsupported(version: str) -> None:
    """Another major, or a higher minor, is oslo's UnsupportedVersion naming version and method."""
    with pytest.raises(UnsupportedVersion) as caught:
        TABLE.lookup(Request("pause_instance", {}, version=version))

    assert (version, "pause_instance") == (caught.value.version, caught.value.method)
    assert (f"Endpoint does not support RPC version {version}. "
            "Attempted method: pause_instance") == caught.value.message


def test_lookup_finds_a_registered_method() -> None:
    """A known method at a served version gives its table entry."""
    assert METHODS["pause_instance"] is TABLE.lookup(Request("pause_instance", {}, version="6.0"))


def test_lookup_unknown_method_at_a_served_version_is_no_such_method() -> None:
    """Only a compatible request for a method we lack is NoSuchMethod (oslo's order)."""
    with pytest.raises(NoSuchMethod) as caught:
        TABLE.lookup(Request("no_such_verb", {}, version="6.0"))

    assert "no_such_verb" == caught.value.method


@pytest.mark.parametrize("request_", [
    Request("pause_instance", {}, namespace="baremetal"),
    Request("no_such_verb", {}, version="2.0"),
    Request("pause_instance", {}, version="1.0"),
], ids=["foreign namespace", "unknown method at another version", "known method, old version"])
def test_lookup_checks_namespace_and_version_first(request_: Request) -> None:
    """An unserved namespace or an incompatible version is UnsupportedVersion, as in oslo."""
    with pytest.raises(UnsupportedVersion):
        TABLE.lookup(request_)


@pytest.mark.parametrize("version", ["6.0.0", "6.5.0"])
def test_a_revision_part_is_accepted(version: str) -> None:
    """oslo versions may carry a third part; 6.0.0 is served like 6.0."""
    assert METHODS["pause_instance"] is TABLE.lookup(Request("pause_instance", {}, version=version))
