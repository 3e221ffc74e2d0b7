"""Fixtures the integration modules share (libvirt's test driver)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.domains import TEST_URI, remove_domains


@pytest.fixture
def built() -> Iterator[list[str]]:
    """UUIDs of instances a test builds; their domains are removed afterwards."""
    made: list[str] = []
    yield made
    remove_domains(TEST_URI, made)
