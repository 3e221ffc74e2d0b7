"""Shared pieces of the unit tier: the captured oslo wire samples and hypothesis strategies."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from tests.helpers import wire_samples

WIRE_SAMPLES = wire_samples()
CALL_SAMPLES = ("call_ok", "call_failure", "call_no_such_method", "call_monitor_heartbeats")

#: Enough examples to find shape bugs, few enough to keep the tier fast; no example database
#: so a run leaves nothing behind outside tests/unit.
PROPERTY = settings(max_examples=200, deadline=None, database=None)

UUID = "11111111-2222-3333-4444-555555555555"


def inner(sample: dict[str, Any]) -> dict[str, Any]:
    """The decoded ``oslo.message`` of one captured body."""
    data: dict[str, Any] = json.loads(sample["body"]["oslo.message"])
    return data


def body_bytes(sample: dict[str, Any]) -> bytes:
    """A captured body as the bytes a consumer receives."""
    return json.dumps(sample["body"]).encode()


# JSON as Python's json module can produce it from the wire: NaN and Infinity included,
# since json.loads accepts them. Text leaves out lone surrogates (see surrogate_text).
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
#: Text that may hold lone surrogates: valid JSON escapes ("\\ud800") that no UTF-8 can encode.
surrogate_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=40)
