"""oslo's version rule and the method lookup, as the dispatcher applies them."""

from __future__ import annotations

import pytest

from handlers.registry import API_VERSION, METHODS
from worker.dispatcher import lookup, served
from worker.envelope import Request
from worker.errors import NoSuchMethod, UnsupportedVersion

MAJOR, MINOR = (int(p) for p in API_VERSION.split("."))


@pytest.mark.parametrize("version", [
    API_VERSION, f"{MAJOR}.0", f"{MAJOR}.{MINOR}", f"0{MAJOR}.{MINOR}",
])
def test_same_major_and_minor_not_above_ours_is_served(version: str) -> None:
    """A version with our major and a minor up to ours is served."""
    served(version, "pause_instance")


@pytest.mark.parametrize("version", [
    f"{MAJOR}.{MINOR + 1}", f"{MAJOR + 1}.0", f"{MAJOR - 1}.{MINOR}", f"{MAJOR + 1}.{MINOR}",
    f"{MAJOR}.{MINOR + 100}", "6.0",
])
def test_other_major_or_higher_minor_is_unsupported(version: str) -> None:
    """Another major, or a higher minor, is oslo's UnsupportedVersion naming version and method."""
    with pytest.raises(UnsupportedVersion) as caught:
        served(version, "pause_instance")

    assert (version, "pause_instance") == (caught.value.version, caught.value.method)
    assert (f"Endpoint does not support RPC version {version}. "
            "Attempted method: pause_instance") == caught.value.message


def test_api_version_is_1_0() -> None:
    """The table serves 1.0, the version the captured oslo calls were sent with."""
    assert "1.0" == API_VERSION


def test_lookup_finds_a_registered_method() -> None:
    """A known method at a served version gives its table entry."""
    assert METHODS["pause_instance"] is lookup(Request("pause_instance", {}, version="1.0"))


@pytest.mark.parametrize("request_", [
    Request("no_such_verb", {}),
    Request("pause_instance", {}, namespace="baremetal"),
], ids=["unknown method", "foreign namespace"])
def test_lookup_unknown_method_or_namespace_is_no_such_method(request_: Request) -> None:
    """An unknown method, or any namespace (we serve only the default), is NoSuchMethod."""
    with pytest.raises(NoSuchMethod) as caught:
        lookup(request_)

    assert request_.method == caught.value.method


def test_lookup_checks_the_version_after_the_method() -> None:
    """A known method at an unserved version is UnsupportedVersion, not NoSuchMethod."""
    with pytest.raises(UnsupportedVersion):
        lookup(Request("pause_instance", {}, version="6.0"))
